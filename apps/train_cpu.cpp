// train_cpu: the two-phase transfer-learning recipe on a folder of class subfolders.
//
// Phase 1 trains the head (global average pool, BatchNorm, Dropout, Dense) on a frozen
// ImageNet ResNet-50; phase 2 unfreezes the last block and fine-tunes from phase 1's best
// weights at a lower learning rate. Both phases use Keras' callbacks (EarlyStopping with
// best-weight restore, ReduceLROnPlateau, ModelCheckpoint on val_loss). Everything needed
// to repeat, evaluate or resume the run is written to --out.
//
// Built with TLCPU_WITH_MPI it also runs as `mpirun -np N train_cpu ...` (or under srun):
// every rank trains on its slice of each global batch of --batch, gradients are averaged,
// rank 0 alone prints and writes, and all ranks take the callbacks' decisions together.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <omp.h>

#include <CLI/CLI.hpp>

#include "common.hpp"
#ifdef TLCPU_WITH_MPI
#include <tlcpu/dist/mpi.hpp>
#endif

namespace fs = std::filesystem;
using namespace tlcpu;

namespace {

struct Config {
    std::string data, weights, out, exclude, backbone = "auto", layout = "auto", preprocess = "auto";
    std::string split = "stratified", resize = "antialias", init_missing, unfreeze, frozen_precision = "f32", precision = "f32", conv = "winograd";
    int size = 224, batch = 32, calibration_images = 256, cache_mb = 8192, decode_mb = 0, epochs1 = 20, epochs2 = 20, max_per_class = 0, patience = 4, plateau_patience = 2;
    double val_split = 0.2, lr1 = 2e-4, lr2 = 1e-5, dropout = 0.3, plateau_factor = 0.2, min_lr = 1e-7;
    double rotation = 15, shift = 0.1, zoom = 0.1;
    bool augment = true, flip = true, resume = false, sync_bn = false;
    uint64_t seed = 1;
};

std::string fmt(double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.6g", v);
    return b;
}

// What an uninterrupted run's bits depend on besides the weights and the flags a resume
// must keep: a checkpoint records them, and a resume with others goes on with a note.
std::vector<std::pair<std::string, std::string>> bit_settings(const Config& c, const Replicas* replicas) {
    return {{"seed", std::to_string(c.seed)},
            {"batch", std::to_string(c.batch)},
            {"threads", std::to_string(omp_get_max_threads())},
            {"mpi_ranks", std::to_string(replicas ? replicas->size() : 1)},
            {"cpu_isa", Backend::cpu_isa()}};
}

// What main establishes about the run before building the network, for its metadata.
struct Provenance {
    std::string split;     // fingerprint of the split's split.tsv text
    std::string diverged;  // the bit settings resumes changed, "batch 8 -> batch 4; ...", kept by later checkpoints
};

template <class M>
std::vector<EpochLogs> phase(M& model, Optimizer& opt, BatchSource& train, BatchSource& val, int number, int epochs,
                             const Config& c, ModelCheckpoint& best, CSVLogger* csv, std::function<void(const std::string&)> save,
                             const std::map<std::string, std::string>& meta, const std::string& ckpt, bool resume,
                             Replicas* replicas, std::function<uint64_t()> whole) {
    EarlyStopping early({"val_loss", "auto", 0, c.patience, true, 0});
    ReduceLROnPlateau plateau({"val_loss", "auto", c.plateau_factor, c.plateau_patience, 1e-4, 0, c.min_lr, true});
    ProgressBar bar(stdout, false, epochs);
    std::vector<Callback*> callbacks{&best, &early, &plateau, &bar};
    if (csv) callbacks.push_back(csv);  // rank 0's
    Trainer<M> trainer(model, opt, callbacks);
    trainer.save_model = std::move(save);
    trainer.replicas = replicas;
    trainer.weights_fingerprint = whole;  // of the whole network, whatever part of it trains here
    FitOptions o;
    o.phase = number;
    o.epochs = epochs;
    o.batch = c.batch;
    o.seed = c.seed;
    o.checkpoint = ckpt;
    o.metadata = meta;
    ResumePoint from;
    if (resume) {
        from = trainer.load_checkpoint(ckpt);
        if (csv) csv->resume_at(from.phase, from.epochs_done);
        std::printf("resuming phase %d after epoch %d, fingerprint %s\n", from.phase, from.epochs_done,
                    fingerprint_hex(whole()).c_str());
    }
    auto h = trainer.fit(train, &val, o, from);
    std::printf("phase %d: %zu epochs, best val_loss %.4f\n", number, h.size(), early.best());
    return h;
}

template <Layout L, Depth D>
void run(const Config& c, const io::SafeTensors& weights, const Preprocessing& pre, const data::DecodedSet& set,
         const data::Split& split, const Provenance& prov, Replicas* replicas) {
    const bool rank0 = !replicas || replicas->rank() == 0;
    using Net = Classifier<ResNet50<L, 64, D>, dynamic>;
    const int k = int(set.classes.size());
    auto net = std::make_unique<Net>(k);
    LoadOptions lo;
    lo.seed = c.seed;
    lo.init_missing = app::split_list(c.init_missing);
    std::printf("weights: %s\n", load_weights(net->backbone, weights, lo).summary().c_str());

    init_keras_head(net->head, float(c.dropout), c.seed);

    // Backbone parts initialised fresh (layer4 for --backbone c5 on partial weights) train
    // from phase 1 on, with batch statistics: they have no running statistics to trust.
    freeze_all(net->backbone);
    std::vector<std::string> fresh;
    for (const auto& p : lo.init_missing)
        if (p.starts_with("layer")) fresh.push_back(p);
    if (!fresh.empty()) {
        unfreeze(*net, fresh);
        if constexpr (D == Depth::c5) set_bn_mode(net->backbone.template get<4>(), BNMode::batch);
    }
    // The head's BatchNorm (and fresh layer4's) train with batch statistics: each rank's own
    // slice by default, as PyTorch's DDP; --sync-bn: the global batch's.
    if (c.sync_bn) sync_batchnorm(*net, replicas);

    // int8: the frozen blocks' activation scales from training images spread over the split
    // (every rank the same ones, so the same scales), in f32 before any training.
    std::string ranges;
    if (Backend::get().frozen_precision == dt::s8) {
        const auto t = std::chrono::steady_clock::now();
        const size_t n = std::min(split.train.size(), size_t(c.calibration_images));
        std::vector<int64_t> pick;
        for (size_t i = 0; i < n; ++i) pick.push_back(split.train[i * split.train.size() / n]);
        data::FolderSource src(set, pick, pre);
        std::vector<Tensor> batches;
        for_each_batch(src, c.batch, [&](int64_t, const Tensor& x, const std::vector<int>&) { batches.push_back(x); });
        calibrate_int8(net->backbone, batches);
        ranges = int8_ranges(net->backbone);
        std::printf("int8: frozen blocks calibrated on %zu training images in %.1f s; %d-bit weights\n", n,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(),
                    Backend::get().int8_bits());
    }

    std::string classes;
    for (const auto& n : set.classes) classes += (classes.empty() ? "" : ",") + n;
    const auto groups2 = c.unfreeze.empty() ? std::vector<std::string>{D == Depth::c4 ? "layer3.5." : "layer4."}
                                            : app::split_list(c.unfreeze);
    // What trained (so evaluate and predict run the frozen rest as it ran here).
    std::string trained;
    for (const auto& g : fresh) trained += g + ",";
    if (c.epochs2 > 0)
        for (const auto& g : groups2) trained += g + ",";
    std::map<std::string, std::string> meta{
        {"trained", trained},
        {"architecture", std::string("tlcpu ResNet-50 ") + (D == Depth::c4 ? "c4" : "c5") + " + head"},
        {"layout", L == Layout::v1 ? "v1" : "v1.5"},
        {"depth", D == Depth::c4 ? "c4" : "c5"},
        {"classes", classes},
        {"input_size", std::to_string(c.size)},
        {"resize", c.resize},
        {"frozen_precision", c.frozen_precision},
        {"precision", c.precision},
        {"conv", c.conv},
        {"preprocessing", pre.mode == Preprocess::caffe ? "caffe B=" + fmt(pre.caffe_mean_bgr[0]) + " G=" +
                                                              fmt(pre.caffe_mean_bgr[1]) + " R=" + fmt(pre.caffe_mean_bgr[2])
                                                        : "torch"},
        {"head_bn_eps", fmt(net->head.bn.config.eps)},
        {"split", prov.split}};
    for (const auto& [key, value] : bit_settings(c, replicas)) meta[key] = value;
    if (!prov.diverged.empty()) meta["diverged"] = prov.diverged;
    if (!ranges.empty()) {
        meta["int8_ranges"] = ranges;
        meta["int8_weight_bits"] = std::to_string(Backend::get().int8_bits());
    }
    const fs::path out(c.out);
    auto whole = [&] { return fingerprint(*net); };
    auto save_best = [&](const std::string& path) {
        std::vector<std::pair<std::string, const Tensor*>> t;
        net->visit("", [&](const std::string& n, Param& p) { t.push_back({n, &p.value}); });
        io::save_safetensors(path, t, meta);
    };

    data::AugmentOptions aug;
    if (c.augment) aug = {float(c.rotation), float(c.shift), float(c.shift), float(c.zoom), c.flip};
    data::FolderSource train(set, split.train, pre, aug, c.seed), val(set, split.val, pre);
    const std::string ckpt = (out / "checkpoint.safetensors").string();
    int resume_phase = 0;
    if (c.resume) {  // (main has checked that it exists)
        resume_phase = std::stoi(io::SafeTensors::open(ckpt).meta("phase"));
    }
    ModelCheckpoint best({(out / "best.safetensors").string(), "val_loss", "auto", true});
    std::optional<CSVLogger> history;
    if (rank0) history.emplace((out / "history.csv").string(), std::vector<std::string>{"loss", "accuracy", "val_loss", "val_accuracy", "lr", "fingerprint"}, c.resume);
    CSVLogger* csv = history ? &*history : nullptr;

    // Without augmentation, the part of the backbone that stays frozen through both phases
    // (everything below phase 2's unfrozen block) maps each image to the same activation in
    // every epoch: compute it once, then both phases train from the cache.
    Cut cut{0, 0};
    if (!c.augment && c.cache_mb > 0) {
        std::vector<bool> was;
        net->visit("", [&](const std::string&, Param& p) { was.push_back(p.trainable); });
        if (c.epochs2 > 0) unfreeze(*net, groups2);
        cut = frozen_prefix(net->backbone);
        size_t i = 0;
        net->visit("", [&](const std::string&, Param& p) { p.trainable = was[i++]; });
        const double mb = double(prefix_bytes(*net, cut, train.size() + val.size(), c.size)) / 1e6;
        if (mb > c.cache_mb) {
            std::printf("feature cache: %.0f MB would exceed --cache-mb %d; every step runs the whole network\n", mb, c.cache_mb);
            cut = {0, 0};
        } else if (cut != Cut{0, 0}) {
            std::printf("feature cache: the frozen prefix's output (%.0f MB) for %lld + %lld images\n", mb,
                        (long long)train.size(), (long long)val.size());
        }
    }
    const bool cached = cut != Cut{0, 0};
    const auto t0 = std::chrono::steady_clock::now();
    std::optional<ActivationCache> acts_train, acts_val;
    if (cached) {
        acts_train = cache_prefix(*net, cut, train, c.batch);
        acts_val = cache_prefix(*net, cut, val, c.batch);
        std::printf("feature cache: %.1f s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::vector<double> phase_seconds;
    FromCut<Net> from_cut(*net, cut);
    // Phase 1: backbone frozen (but for freshly initialised parts). With nothing in the
    // backbone to train, the head alone trains on the pooled features.
    const Shape batch_shape{c.batch, 3, c.size, c.size};
    if (resume_phase <= 1) {
        std::printf("phase 1 model:\n%s", summary(*net, batch_shape).c_str());
        Adam adam(c.lr1);
        if (!c.augment && frozen_prefix(net->backbone) == Cut{int(decltype(Net::backbone)::size), 0}) {
            // from the cache, or (over --cache-mb) straight from the images, once
            BatchSource& ts = cached ? static_cast<BatchSource&>(*acts_train) : train;
            BatchSource& vs = cached ? static_cast<BatchSource&>(*acts_val) : val;
            TensorSource tf = pooled_features(*net, cut, ts, c.batch), vf = pooled_features(*net, cut, vs, c.batch);
            HeadOnly head(net->head);
            phase(head, adam, tf, vf, 1, c.epochs1, c, best, csv, save_best, meta, ckpt, resume_phase == 1, replicas, whole);
        } else if (cached) {
            phase(from_cut, adam, *acts_train, *acts_val, 1, c.epochs1, c, best, csv, save_best, meta, ckpt, resume_phase == 1, replicas, whole);
        } else {
            phase(*net, adam, train, val, 1, c.epochs1, c, best, csv, save_best, meta, ckpt, resume_phase == 1, replicas, whole);
        }
        phase_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    // Phase 2: unfreeze the last block (or what --unfreeze names) and fine-tune from the best
    // phase-1 weights (EarlyStopping restored them) at the lower rate.
    const auto t1 = std::chrono::steady_clock::now();
    if (c.epochs2 > 0) {
        std::printf("phase 2: unfreezing %d tensors (%s)\n", unfreeze(*net, groups2), c.unfreeze.empty() ? groups2[0].c_str() : c.unfreeze.c_str());
        std::printf("phase 2 model:\n%s", summary(*net, batch_shape).c_str());
        Adam adam(c.lr2);
        if (cached)
            phase(from_cut, adam, *acts_train, *acts_val, 2, c.epochs2, c, best, csv, save_best, meta, ckpt, resume_phase == 2, replicas, whole);
        else
            phase(*net, adam, train, val, 2, c.epochs2, c, best, csv, save_best, meta, ckpt, resume_phase == 2, replicas, whole);
    }
    phase_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
    acts_train.reset(), acts_val.reset();
    if (!rank0) return;  // the evaluation and the report are rank 0's

    // Evaluate the best model on the validation split.
    {
        const auto bestf = io::SafeTensors::open((out / "best.safetensors").string());
        load_weights(*net, bestf);
    }
    auto pred = app::predict(*net, val, c.batch);
    auto rep = classification_report(pred.truth, pred.predicted, set.classes);
    {
        std::ofstream m(out / "metrics.json");
        m << rep.to_json().dump(2) << "\n";
    }
    std::printf("\nvalidation split (%lld images; not test accuracy)\n%s\n%s\n", (long long)rep.n, rep.confusion_text().c_str(),
                rep.text(3).c_str());

    // The report: curves from history.csv (complete even after a resume), the confusion
    // matrix and the misclassified validation images.
    ReportInput in;
    in.title = "tlcpu train_cpu — " + fs::path(c.data).filename().string() + ", ResNet-50 " + (D == Depth::c4 ? "c4" : "c5");
    std::ifstream hist(out / "history.csv");
    std::string line;
    std::getline(hist, line);
    const auto header = app::split_list(line);
    auto col = [&](const std::string& name) { return size_t(std::find(header.begin(), header.end(), name) - header.begin()); };
    const size_t at[8] = {col("phase"), col("epoch"), col("loss"), col("accuracy"), col("val_loss"), col("val_accuracy"), col("lr"), col("seconds")};
    while (std::getline(hist, line)) {
        auto f = app::split_list(line);
        if (f.size() != header.size()) continue;
        auto num = [&](size_t i) { return i >= f.size() || f[i] == "NA" ? std::nan("") : std::stod(f[i]); };
        in.history.push_back({int(num(at[0])), int(num(at[1])), num(at[2]), num(at[3]), num(at[4]), num(at[5]), num(at[6]), num(at[7])});
    }
    in.validation = rep;
    for (size_t i = 0; i < pred.truth.size() && in.misclassified.size() < 24; ++i) {
        if (pred.truth[i] == pred.predicted[i]) continue;
        const size_t file = size_t(split.val[i]);
        Image im{set.size, set.size, std::vector<uint8_t>(set.image_bytes())};
        set.read_image(file, im.rgb.data());
        Image th = resize(im, 112, 112);
        in.misclassified.push_back({set.files[file].path, pred.truth[i], pred.predicted[i], pred.probs[i], th.rgb, 112, 112});
    }
    for (const auto& [key, v] : meta) in.settings.push_back({key, v});
    in.settings.push_back({"phase seconds", [&] { std::string s; for (double t : phase_seconds) s += fmt(t) + " "; return s; }()});
    in.notes = "Accuracy here is on a validation split carved from the training folder (seed " + std::to_string(c.seed) +
               "); it chose the epochs and learning rates, so it is optimistic. It is not test accuracy.";
    write_html((out / "report.html").string(), in);
    std::printf("wrote %s (best.safetensors, checkpoint.safetensors, history.csv, metrics.json, split.tsv, config.toml, report.html)\n",
                c.out.c_str());
}

}  // namespace

int main(int argc, char** argv) {
    Replicas* replicas = nullptr;
#ifdef TLCPU_WITH_MPI
    dist::Environment mpi(argc, argv);
    dist::MPIReplicas world;
    if (world.size() > 1) replicas = &world;
    // Rank 0 speaks for the job; the others' errors still reach stderr.
    if (world.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) dist::abort("cannot silence stdout");
#endif
    const bool rank0 = !replicas || replicas->rank() == 0;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress shows up line by line in a log too
    Config c;
    CLI::App app{"Two-phase transfer learning of an ImageNet ResNet-50 on a folder of class subfolders"};
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // a later flag overrides
    app.set_config("--config", "", "Read options from a TOML file (config.toml of a previous run works)");
    app.add_option("--data", c.data, "Folder of class subfolders")->required();
    app.add_option("--weights", c.weights, "ImageNet ResNet-50 weights (safetensors, torchvision names)")->required();
    app.add_option("--out", c.out, "Run folder for every output")->required();
    app.add_option("--backbone", c.backbone, "c4: end after layer3; c5: full; auto: c5 when the weights hold layer4")
        ->check(CLI::IsMember({"auto", "c4", "c5"}))->capture_default_str();
    app.add_option("--init-missing", c.init_missing, "Comma-separated name prefixes that may be missing from the weights and are He-initialised (e.g. layer4.,fc.)");
    app.add_option("--layout", c.layout, "v1 (caffe/Keras), v1.5 (torchvision/timm), auto: from the weights' metadata")
        ->check(CLI::IsMember({"auto", "v1", "v1.5"}))->capture_default_str();
    app.add_option("--preprocess", c.preprocess, "caffe, torch, auto: from the weights' metadata")
        ->check(CLI::IsMember({"auto", "caffe", "torch"}))->capture_default_str();
    app.add_option("--size", c.size, "Input side in pixels")->capture_default_str();
    app.add_option("--resize", c.resize, "antialias, or nearest (Keras' default)")->check(CLI::IsMember({"antialias", "nearest"}))->capture_default_str();
#ifdef TLCPU_WITH_MPI
    app.add_option("--batch", c.batch, "Global batch size, split over the MPI ranks")->capture_default_str();
    app.add_flag("--sync-bn", c.sync_bn, "BatchNorms that train with batch statistics use the global batch's (an allreduce per layer) instead of each rank's own");
#else
    app.add_option("--batch", c.batch, "Batch size")->capture_default_str();
#endif
    app.add_option("--val-split", c.val_split, "Fraction of each class held out for validation")->capture_default_str();
    app.add_option("--split", c.split, "stratified (seeded) or keras (first files of each class)")->check(CLI::IsMember({"stratified", "keras"}))->capture_default_str();
    app.add_option("--seed", c.seed, "Seed of the split, shuffles, augmentation, dropout and fresh weights")->capture_default_str();
    app.add_option("--epochs1", c.epochs1, "Phase 1 (frozen backbone) epochs at most")->capture_default_str();
    app.add_option("--epochs2", c.epochs2, "Phase 2 (fine-tuning) epochs at most; 0 skips it")->capture_default_str();
    app.add_option("--lr1", c.lr1, "Phase 1 Adam learning rate")->capture_default_str();
    app.add_option("--lr2", c.lr2, "Phase 2 Adam learning rate")->capture_default_str();
    app.add_option("--unfreeze", c.unfreeze, "Comma-separated groups phase 2 unfreezes (default: layer3.5. for c4, layer4. for c5)");
    app.add_option("--dropout", c.dropout, "Head dropout rate")->capture_default_str();
    app.add_option("--patience", c.patience, "EarlyStopping patience (val_loss)")->capture_default_str();
    app.add_option("--plateau-patience", c.plateau_patience, "ReduceLROnPlateau patience")->capture_default_str();
    app.add_option("--plateau-factor", c.plateau_factor, "ReduceLROnPlateau factor")->capture_default_str();
    app.add_option("--min-lr", c.min_lr, "ReduceLROnPlateau minimum learning rate")->capture_default_str();
    // CLI11 2.1 writes an unset flag as "false" in config_to_str whatever its default, so
    // a rerun from config.toml would silently drop augmentation or flips: give the default.
    app.add_flag("--augment,!--no-augment", c.augment, "Augment training images (rotation, shifts, zoom, flip)")
        ->default_str(c.augment ? "true" : "false");
    app.add_option("--rotation", c.rotation, "Rotation range in degrees")->capture_default_str();
    app.add_option("--shift", c.shift, "Width and height shift range (fraction)")->capture_default_str();
    app.add_option("--zoom", c.zoom, "Zoom range")->capture_default_str();
    app.add_flag("--flip,!--no-flip", c.flip, "Random horizontal flips")->default_str(c.flip ? "true" : "false");
    app.add_option("--exclude", c.exclude, "Duplicates list (groups TSV) whose redundant copies are left out");
    app.add_option("--max-per-class", c.max_per_class, "Use at most this many images per class (0: all)")->capture_default_str();
    app.add_option("--frozen-precision", c.frozen_precision, "Precision of the frozen layers' folded convolutions: f32, bf16 (AMX/AVX512_BF16), or int8 (calibrated on training images; 8-bit weights with VNNI/AMX, 7-bit without; stem in bf16, f32 without AVX-512); trainable layers follow --precision")
        ->check(CLI::IsMember({"f32", "bf16", "int8"}))->capture_default_str();
    app.add_option("--precision", c.precision, "Precision of the trainable convolutions: f32, or bf16 (f32 master weights and weight gradients, f32 accumulation)")
        ->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
    app.add_option("--conv", c.conv, "f32 3x3 stride-1 convolutions: winograd (fewer multiplies: oneDNN's F(4x4,3x3) on AVX-512, tlcpu's F(2x2,3x3) for 256+ channels on AVX2; an image's output rounds differently with its batch) or direct (as PyTorch; batch-independent bits)")
        ->check(CLI::IsMember({"winograd", "direct"}))->capture_default_str();
    app.add_option("--calibration-images", c.calibration_images, "With --frozen-precision int8: training images the activation scales are calibrated on")
        ->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--decode-mb", c.decode_mb, "Cap in MB on the decoded images kept in memory (0: half the physical memory); over it, images are decoded from disk every epoch instead")
        ->capture_default_str();
    app.add_option("--cache-mb", c.cache_mb, "Without augmentation, cache the frozen prefix's output up to this many MB (0: never)")->capture_default_str();
    app.add_flag("--resume", c.resume, "Continue from RUN_DIR/checkpoint.safetensors");
    CLI11_PARSE(app, argc, argv);

    std::string resume_notes;
    Provenance prov;
    try {
        const std::string ckpt = (fs::path(c.out) / "checkpoint.safetensors").string();
        std::string ckpt_split;  // the split the checkpoint trained on (runs from before it was recorded: "")
        if (c.resume) {
            // Checked before anything in the run folder is rewritten, so a refusal changes nothing.
            check(fs::exists(ckpt), ckpt + ": nothing to resume from");
            const auto file = io::SafeTensors::open(ckpt);
            // The bits of an uninterrupted run need the same conv kernels (runs from before
            // --conv: direct).
            const std::string conv = file.meta("conv", "direct");
            check(conv == c.conv, ckpt + ": the run trained with --conv " + conv +
                                      "; resume it with the same (this call has --conv " + c.conv + ")");
            // and its int8 blocks' weights: 7 bits run anywhere, 8 only with VNNI
            const int bits = app::int8_bits_of(file);
            if (c.frozen_precision == "int8" && bits == 7) Backend::get().int8_weight_bits = 7;
            check(c.frozen_precision != "int8" || bits != 8 || Backend::get().has_vnni(),
                  ckpt + ": the run's int8 blocks have 8-bit weights, which this CPU (no VNNI) cannot run "
                         "exactly; resume it on a CPU with VNNI");
            // The rest may change (another machine after a crash, a smaller batch): the run goes
            // on, saying it will not end as an uninterrupted one would; said after the split's
            // check below, which may still refuse.
            auto said = [](const std::string& key, const std::string& v) {
                return key == "threads"     ? v + (v == "1" ? " thread" : " threads")
                       : key == "mpi_ranks" ? v + (v == "1" ? " MPI rank" : " MPI ranks")
                       : key == "cpu_isa"   ? "oneDNN's " + v + " kernels"
                                            : key + " " + v;
            };
            prov.diverged = file.meta("diverged");
            for (const auto& [key, value] : bit_settings(c, replicas))
                if (const std::string was = file.meta(key, value); was != value) {
                    resume_notes += "note: " + ckpt + ": the run trained with " + said(key, was) + ", this call has " +
                                    said(key, value) + ": it goes on, but its bits will differ from an uninterrupted run's\n";
                    prov.diverged += (prov.diverged.empty() ? "" : "; ") + said(key, was) + " -> " + said(key, value);
                }
            if (resume_notes.empty() && !prov.diverged.empty())
                resume_notes = "note: " + ckpt + ": an earlier resume changed " + prov.diverged +
                               ", so its bits already differ from an uninterrupted run's\n";
            ckpt_split = file.meta("split");
        }
        if (std::error_code ec; !fs::create_directories(c.out, ec) && ec)
            fail(c.out + ": cannot create the output folder (" + ec.message() + ")");
        Backend::get().frozen_precision = app::precision_of(c.frozen_precision);  // (refused before the rewrite too)
        Backend::get().train_precision = app::precision_of(c.precision);
        Backend::get().winograd = c.conv == "winograd";
        const auto weights = io::SafeTensors::open(c.weights);
        const Layout layout = c.layout == "auto" ? layout_of(weights) : c.layout == "v1" ? Layout::v1 : Layout::v1_5;
        Preprocessing pre = preprocessing_of(weights);
        if (c.preprocess != "auto") pre.mode = c.preprocess == "caffe" ? Preprocess::caffe : Preprocess::torch;
        const bool c5 = c.backbone == "c5" || (c.backbone == "auto" && weights.contains("layer4.2.conv3.weight"));

        auto folder = data::ImageFolder::scan(c.data);
        if (c.max_per_class > 0) {
            std::vector<data::FileEntry> keep;
            std::vector<int> count(folder.classes.size(), 0);
            for (const auto& f : folder.files)
                if (count[size_t(f.label)]++ < c.max_per_class) keep.push_back(f);
            folder.files = keep;
        }
        data::DecodeOptions dopt;
        dopt.size = c.size;
        dopt.resize = c.resize == "nearest" ? data::Resize::nearest : data::Resize::antialias;
        if (!c.exclude.empty()) dopt.exclude = data::read_exclude_list(c.exclude);
        // Decoded images stay in memory for the whole run; a folder over the cap is decoded
        // from disk every epoch instead (decode_folder prints a notice), so memory stays bounded.
        dopt.over_cap = data::OverCap::stream;
        dopt.max_bytes = c.decode_mb > 0 ? uint64_t(c.decode_mb) << 20
                                         : uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(sysconf(_SC_PAGE_SIZE)) / 2;
        const auto t0 = std::chrono::steady_clock::now();
        const auto set = data::decode_folder(folder, dopt);
        std::printf("tlcpu train_cpu: %zu images in %zu classes decoded in %.1f s (%zu unreadable, %d excluded), %s; "
                    "ResNet-50 %s, layout %s, %s preprocessing, frozen layers in %s, trainable in %s, %s 3x3 convs, %d threads%s\n",
                    set.files.size(), set.classes.size(),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), set.skipped.size(),
                    set.excluded,
                    set.streamed ? "streamed from disk every epoch" : (std::to_string(std::llround(double(set.bytes()) / 1e6)) + " MB cached").c_str(), c5 ? "c5" : "c4", layout == Layout::v1 ? "v1" : "v1.5",
                    pre.mode == Preprocess::caffe ? "caffe" : "torch", c.frozen_precision.c_str(), c.precision.c_str(), Backend::get().winograd_key() ? "winograd" : "direct", omp_get_max_threads(),
                    replicas ? (" x " + std::to_string(replicas->size()) + " MPI ranks").c_str() : "");
        const int k = int(set.classes.size());
        const auto split = c.split == "keras" ? data::split_keras(set.files, k, c.val_split)
                                              : data::split_stratified(set.files, k, c.val_split, c.seed);
        check(!split.train.empty() && !split.val.empty(), "the split left no training or no validation images");
        const std::string split_tsv = (fs::path(c.out) / "split.tsv").string();
        const std::string split_text = data::split_tsv_text(split_tsv, set, split, c.data);
        prov.split = fingerprint_hex(fnv1a64(split_text.data(), split_text.size()));
        if (rank0 && c.resume) {
            if (fs::exists(split_tsv))  // names what moved
                data::check_same_split(split_tsv, set, split, c.data,
                                       "resume with the run's --data, --max-per-class, --exclude, --split, --val-split and "
                                       "--seed (its config.toml has them: --config " + (fs::path(c.out) / "config.toml").string() + ")");
            // split.tsv may be a later run's, started in this folder without --resume and
            // stopped before its first checkpoint
            check(ckpt_split.empty() || ckpt_split == prov.split,
                  ckpt + ": the run trained on another split than this call carves" +
                      (fs::exists(split_tsv) ? " and " + split_tsv + " lists (a later run's, started in this folder without --resume?)" : "") +
                      "; resume it with its own settings, or start a new run in another folder");
            if (ckpt_split.empty() && !fs::exists(split_tsv))
                std::fprintf(stderr, "note: %s is missing, so nothing shows this split is the run's\n", split_tsv.c_str());
        }
        if (rank0) {  // after the resume's checks, so a refusal leaves the run folder as it was
            std::fputs(resume_notes.c_str(), stderr);
            const std::string cfg = app.config_to_str(true, false);
            write_atomically((fs::path(c.out) / "config.toml").string(),
                             [&](FILE* f) { return std::fwrite(cfg.data(), 1, cfg.size(), f) == cfg.size(); });
            data::write_split_tsv(split_tsv, set, split, c.data);
        }
        std::printf("split: %zu train, %zu validation\n", split.train.size(), split.val.size());

        if (layout == Layout::v1)
            c5 ? run<Layout::v1, Depth::c5>(c, weights, pre, set, split, prov, replicas)
               : run<Layout::v1, Depth::c4>(c, weights, pre, set, split, prov, replicas);
        else
            c5 ? run<Layout::v1_5, Depth::c5>(c, weights, pre, set, split, prov, replicas)
               : run<Layout::v1_5, Depth::c4>(c, weights, pre, set, split, prov, replicas);
    } catch (const std::exception& e) {
#ifdef TLCPU_WITH_MPI
        if (replicas) dist::abort(e.what());  // the other ranks may be waiting in a collective
#endif
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
