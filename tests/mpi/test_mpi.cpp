// Data parallelism over MPI, run by CTest as `mpirun --oversubscribe -np N tlcpu_mpi_tests`
// for N = 1, 2 and 3. Every rank also trains the same model alone (no replicas) on the same
// global batch: that single-process run is the reference each N is held to, so 1, 2 and 3
// ranks agree with each other through it.
//
// The equivalence cases synchronise the head's BatchNorm, which trains on batch statistics:
// with local statistics a rank normalises its slice by the slice's own mean, a different
// function from one process normalising the whole batch. Local statistics get their own
// case, for what they do guarantee. The network is the tiny ResNet-50 with stand-in
// pretrained weights, every weight trainable and the backbone's BatchNorms on running
// statistics, as in fine-tuning. (From scratch, with batch statistics in all 53 BatchNorms
// and a layer4 of 1x1 pixels, the float rounding of two ways of computing the same mean
// and variance grows to 1e-4 by the logits, whatever the number of ranks; the
// synchronised BatchNorm2d is therefore checked layer by layer, below.)
//
// With TLCPU_TEST_FAIL_RANK=R set, the binary instead trains with rank R's data source
// failing mid-epoch, and must end the whole job with that rank's reason (CTest checks the
// output and the time it took).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <tlcpu/dist/mpi.hpp>

#include "../fixtures.hpp"

using namespace tlcpu;
namespace fs = std::filesystem;

namespace {

using Tiny = test::TinyNet;

struct Run {
    std::vector<EpochLogs> history;
    std::vector<Tensor> weights;  // every parameter and running statistic
    uint64_t digest = 0;
};

struct Setup {
    int epochs = 2, batch = 12, images = 30;
    bool adam = false, sync_bn = true, plateau = false;
    bool head_batch_stats = true;  // false: the head's BatchNorm on running statistics too
    bool head_only = false;        // the backbone frozen
    bool decisive = false;         // callbacks that must act: the learning rate halves and training stops early
    float dropout = 0.3f;
    std::string checkpoint, resume;
    std::function<void(const std::string&)> save_model;
};

// By default 30 training and 10 validation images, global batch 12: batches of 12, 12
// and 6.
Run train(Replicas* world, const Setup& s) {
    auto data = test::synthetic_squares(s.images, 3), val = test::synthetic_squares(10, 4);
    auto net = std::make_unique<Tiny>();
    test::randomize_pretrained(*net, 17);
    net->head.drop.p = s.dropout;
    if (!s.head_batch_stats) net->head.bn.config.mode = BNMode::inference;
    if (s.head_only)
        net->visit("", [](const std::string& n, Param& p) {
            if (n.find("head_") == std::string::npos) p.trainable = false;
        });
    if (s.sync_bn) sync_batchnorm(*net, world);
    std::unique_ptr<Optimizer> opt;
    if (s.adam)
        opt = std::make_unique<Adam>(1e-4);
    else
        opt = std::make_unique<SGD>(1e-4, 0.9);
    ReduceLROnPlateau::Options ro;
    ro.monitor = "val_loss";
    ro.patience = 1;
    ro.factor = 0.5;
    ReduceLROnPlateau plateau(ro);
    ModelCheckpoint best({"unused", "val_loss", "auto", true});
    // Decisive: no epoch counts as an improvement after the first, so the rate halves after
    // every epoch from the second and training stops after the third.
    ReduceLROnPlateau::Options hro = ro;
    hro.patience = 0;
    hro.min_delta = 1e9;
    ReduceLROnPlateau halve(hro);
    EarlyStopping::Options eo;
    eo.min_delta = 1e9;
    eo.patience = 2;
    EarlyStopping stop(eo);
    std::vector<Callback*> cbs;
    if (s.plateau) cbs = {&plateau, &best};
    if (s.decisive) cbs = {&halve, &stop, &best};
    Trainer<Tiny> trainer(*net, *opt, cbs);
    trainer.replicas = world;
    trainer.save_model = s.save_model;
    if (!trainer.save_model) trainer.save_model = [](const std::string&) {};
    FitOptions o;
    o.epochs = s.epochs;
    o.batch = s.batch;
    o.seed = 5;
    o.checkpoint = s.checkpoint;
    ResumePoint from;
    if (!s.resume.empty()) from = trainer.load_checkpoint(s.resume);
    Run r;
    r.history = trainer.fit(data, &val, o, from);
    r.weights = get_weights(*net);
    r.digest = fingerprint(*net);
    return r;
}

double max_weight_diff(const Run& a, const Run& b) {
    double worst = 0;
    for (size_t i = 0; i < a.weights.size(); ++i) worst = std::max(worst, max_rel_diff(a.weights[i], b.weights[i]));
    return worst;
}

// The same for what training changed (weights minus their start), per tensor relative to
// the largest change: far more demanding than the weights themselves, which a small
// learning rate moves little.
double max_update_diff(const Run& a, const Run& b, const Run& start) {
    double worst = 0;
    for (size_t i = 0; i < a.weights.size(); ++i) {
        Tensor da = a.weights[i], db = b.weights[i];
        for (int64_t j = 0; j < da.size(); ++j) da[j] -= start.weights[i][j], db[j] -= start.weights[i][j];
        if (std::any_of(db.begin(), db.end(), [](float v) { return v != 0.f; })) worst = std::max(worst, max_rel_diff(da, db));
    }
    return worst;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

dist::MPIReplicas& world() {
    static dist::MPIReplicas w;
    return w;
}

// A directory every rank names the same: rank 0's process id, broadcast.
fs::path shared_tmp() {
    long id = ::getpid();
    MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    return fs::temp_directory_path() / ("tlcpu-mpi-" + std::to_string(id));
}

Run start_of(Setup s) {
    s.epochs = 0;
    return train(nullptr, s);
}

}  // namespace

TEST_CASE("after k steps the weights equal one process training on the global batch (sync head BN)") {
    const int ranks = world().size();
    Setup s;  // SGD with momentum, 2 epochs of batches 12, 12, 6: k = 6 steps
    const Run start = start_of(s), alone = train(nullptr, s), dp = train(&world(), s);
    const double d = max_weight_diff(dp, alone), u = max_update_diff(dp, alone, start);
    MESSAGE(ranks << " ranks, 6 SGD steps, sync head BN: max relative difference of the weights " << d
                  << ", of the weight updates " << u);
    CHECK(d <= 1e-5);
    // The backbone's gradients under a head BatchNorm on batch statistics are what is left
    // after that BatchNorm removes the batch mean: small differences of large terms, whose
    // float rounding is large relative to themselves (measured: updates agree to 4.3e-4 on 2
    // ranks, 5.1e-4 on 3). The weights, which those tiny updates barely move, agree to 1e-6.
    CHECK(u <= 1e-2);
    CHECK(world().agree(dp.digest));  // and the ranks hold the very same bits
    if (ranks == 1) CHECK(d == 0.0);  // one rank is the single-process computation
    // Both comparisons can fail: a model that trained 4 steps instead of 6 is far away.
    Setup shorter = s;
    shorter.batch = 18;  // batches 18, 12
    const Run four = train(&world(), shorter);
    CHECK(max_weight_diff(four, alone) > 1e-4);
    CHECK(max_update_diff(four, alone, start) > 0.1);

    // Again with buckets of 4 KB: many allreduces per step, most started while backward is
    // still in the blocks below, interleaved with the synchronised head BatchNorm's sums.
    dist::MPIReplicas small(MPI_COMM_WORLD, {4096, true}), after(MPI_COMM_WORLD, {4096, false});
    const Run many = train(&small, s), late = train(&after, s);
    MESSAGE(ranks << " ranks, 4 KB buckets: " << small.stats.calls << " allreduces in " << small.stats.steps << " steps, "
                  << small.stats.early << " started during backward");
    CHECK(max_weight_diff(many, alone) <= 1e-5);
    CHECK(world().agree(many.digest));
    if (ranks > 1) {
        REQUIRE(small.stats.steps == 6);
        CHECK(small.stats.calls > 2 * small.stats.steps);  // more than one bucket per step
        CHECK(small.stats.early > 0);
        CHECK(after.stats.early == 0);
        CHECK(after.stats.calls == small.stats.calls);
    }
    // The same buckets summed the same way: starting them early changes no bit.
    CHECK(many.digest == late.digest);
}

TEST_CASE("1, 2 and 3 ranks give the epoch metrics and callback decisions of one process") {
    const int ranks = world().size();
    Setup s;
    s.decisive = true;  // ReduceLROnPlateau halves the rate, EarlyStopping ends the phase
    s.epochs = 6;
    const Run alone = train(nullptr, s), dp = train(&world(), s);
    // The decisions themselves: epochs 1 and 2 train at the first rate, epoch 3 at half of
    // it, and then training stops, 3 epochs short of the 6 asked for, on every rank count.
    REQUIRE(alone.history.size() == 3);
    CHECK(alone.history[0].get("lr") == doctest::Approx(1e-4));
    CHECK(alone.history[1].get("lr") == doctest::Approx(1e-4));
    CHECK(alone.history[2].get("lr") == doctest::Approx(5e-5));
    REQUIRE(dp.history.size() == alone.history.size());
    CHECK(world().agree(dp.history.size()));
    for (size_t e = 0; e < alone.history.size(); ++e) CHECK(dp.history[e].get("lr") == alone.history[e].get("lr"));
    // Each rank sums its slice's weight gradient, then the ranks sum theirs: float
    // reassociation, which three epochs carry into the metrics. Measured on 3 ranks: 1.0e-5
    // at epoch 3's val_loss (3.06) since the small 3x3 convs' weight gradient is a matmul over
    // the slice's pixels (f32 on AVX2, Conv2d::make_backward); under 1e-5 with oneDNN's kernel.
    double worst = 0;
    for (size_t e = 0; e < alone.history.size(); ++e)
        for (const char* k : {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}) {
            const double a = alone.history[e].get(k), b = dp.history[e].get(k);
            worst = std::max(worst, rel(b, a));
            CHECK_MESSAGE(rel(b, a) <= 3e-5, "epoch " << e + 1 << " " << k << ": " << b << " on " << ranks << " ranks, " << a << " alone");
        }
    MESSAGE(ranks << " ranks: max relative difference of epoch metrics " << worst << "; epoch 3 loss "
                  << dp.history.back().get("loss") << " accuracy " << dp.history.back().get("accuracy") << " val_loss "
                  << dp.history.back().get("val_loss") << " lr " << dp.history.back().get("lr"));
    CHECK(dp.history.back().get("loss") < dp.history.front().get("loss"));  // it did train
    CHECK(max_weight_diff(dp, alone) <= 1e-5);
}

TEST_CASE("local BatchNorm statistics: every rank holds the same model; one rank is one process") {
    const int ranks = world().size();
    Setup s;
    s.sync_bn = false;
    const Run start = start_of(s), alone = train(nullptr, s), dp = train(&world(), s);
    CHECK(world().agree(dp.digest));  // weights by averaged gradients, running statistics averaged
    const double u = max_update_diff(dp, alone, start);
    MESSAGE(ranks << " ranks, local BN: max relative difference of the weight updates from one process " << u);
    if (ranks == 1)
        CHECK(u == 0.0);
    else
        CHECK(u > 1e-2);  // each rank normalised its own slice: not the global batch's result
}

TEST_CASE("rank 0 alone writes checkpoints and best models; every rank resumes from them") {
    const int rank = world().rank();
    const fs::path dir = shared_tmp();
    if (rank == 0) fs::create_directories(dir);
    MPI_Barrier(MPI_COMM_WORLD);
    Setup s;
    s.adam = s.plateau = true;
    s.epochs = 4;
    const Run whole = train(&world(), s);

    int saves = 0;
    Setup first = s;
    first.epochs = 2;
    first.checkpoint = (dir / ("ckpt-from-rank-" + std::to_string(rank))).string();
    first.save_model = [&](const std::string&) { ++saves; };
    train(&world(), first);
    CHECK(fs::exists(first.checkpoint) == (rank == 0));
    CHECK((saves > 0) == (rank == 0));
    MPI_Barrier(MPI_COMM_WORLD);  // rank 0's file is complete before anyone reads it

    Setup rest = s;
    rest.resume = (dir / "ckpt-from-rank-0").string();
    const Run resumed = train(&world(), rest);
    CHECK(resumed.digest == whole.digest);
    CHECK(resumed.history.size() == 2);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) fs::remove_all(dir);
}

TEST_CASE("a dataset and batch that do not divide by the rank count: every sample trains, as in one process") {
    const int ranks = world().size();
    // 42 images, global batch 8: five batches of 8 (3 + 3 + 2 samples on 3 ranks) and a
    // last one of 2, shorter than 3 ranks, so one rank has no sample of it.
    Setup s;
    s.images = 42;
    s.batch = 8;
    // The synchronised head BatchNorm: the rank without samples runs a stand-in one whose
    // sums count for nothing, and joins every collective. The backbone is frozen here: under
    // a BatchNorm on batch statistics of 2 samples the gradient it passes down is exactly
    // zero in theory (each normalised value is +-1), so the backbone would train on float
    // noise, which no two ways of summing reproduce (measured: 0.13 on 2 ranks).
    s.head_only = true;
    {
        const Run alone = train(nullptr, s), dp = train(&world(), s);
        const double d = max_weight_diff(dp, alone);
        MESSAGE(ranks << " ranks, 42 images in batches of 8, sync head BN: max relative difference of the weights " << d);
        CHECK(d <= 1e-5);
        CHECK(world().agree(dp.digest));
        for (size_t e = 0; e < alone.history.size(); ++e)
            CHECK(rel(dp.history[e].get("loss"), alone.history[e].get("loss")) <= 1e-5);
    }
    // No batch statistics anywhere: the rank without samples skips forward and backward and
    // contributes zeros to the gradient sums.
    s.sync_bn = false;
    s.head_batch_stats = false;
    s.head_only = false;
    {
        const Run alone = train(nullptr, s), dp = train(&world(), s);
        const double d = max_weight_diff(dp, alone);
        MESSAGE(ranks << " ranks, 42 images in batches of 8, no batch statistics: max relative difference of the weights " << d);
        CHECK(d <= 1e-5);
        CHECK(world().agree(dp.digest));
        for (size_t e = 0; e < alone.history.size(); ++e)
            CHECK(rel(dp.history[e].get("loss"), alone.history[e].get("loss")) <= 1e-5);
    }
}

TEST_CASE("synchronised BatchNorm2d: each rank's slice normalised as in the whole batch, exact gradients") {
    // With and without the fused ReLU of a bottleneck's bn1 and bn2: the correction for the
    // global statistics then works on dy masked by it.
    for (const bool relu : {false, true}) {
        CAPTURE(relu);
        const int ranks = world().size(), rank = world().rank();
        const int64_t n = 6, c = 8, side = 5;  // 6 images split over 1, 2 or 3 ranks
        Tensor x({n, c, side, side}), dy(x.shape());
        for (int64_t i = 0; i < x.size(); ++i) {
            x[i] = 0.5f + (i / (side * side)) % c * 0.3f + normal01(1, 0, uint64_t(i));  // per-channel offsets
            dy[i] = normal01(2, 0, uint64_t(i));
        }
        auto bn = [relu](BatchNorm2d<8>& l) {
            l.config = {1e-3f, 0.1f, BNMode::batch};
            l.relu = relu;
            for (int i = 0; i < 8; ++i) l.weight.value[i] = 0.5f + 0.1f * float(i), l.bias.value[i] = 0.05f * float(i);
        };
        BatchNorm2d<8> whole, part;
        bn(whole), bn(part);
        if (ranks > 1) part.sync = [](std::span<double> v) { world().sum(v); };
        const Tensor y_all = to_tensor(whole.forward(view(x), Mode::training));
        const Tensor dx_all = to_tensor(*whole.backward(view(dy), true));
        const int64_t per = n / ranks * c * side * side;
        Tensor xs({n / ranks, c, side, side}), dys(xs.shape());
        std::copy_n(x.data() + rank * per, per, xs.data());
        std::copy_n(dy.data() + rank * per, per, dys.data());
        const Tensor y = to_tensor(part.forward(view(xs), Mode::training));
        const Tensor dx = to_tensor(*part.backward(view(dys), true));
        Tensor y_ref(xs.shape()), dx_ref(xs.shape());
        std::copy_n(y_all.data() + rank * per, per, y_ref.data());
        std::copy_n(dx_all.data() + rank * per, per, dx_ref.data());
        std::vector<double> dgamma(part.weight.grad.begin(), part.weight.grad.end()), dbeta(part.bias.grad.begin(), part.bias.grad.end());
        world().sum(dgamma), world().sum(dbeta);  // each rank holds its slice's share
        Tensor dg({c}), db({c});
        for (int64_t i = 0; i < c; ++i) dg[i] = float(dgamma[size_t(i)]), db[i] = float(dbeta[size_t(i)]);
        const double e[5] = {max_rel_diff(y, y_ref), max_rel_diff(dx, dx_ref), max_rel_diff(dg, whole.weight.grad),
                             max_rel_diff(db, whole.bias.grad), max_rel_diff(part.running_var.value, whole.running_var.value)};
        MESSAGE(ranks << " ranks, BatchNorm2d" << std::string(relu ? " + ReLU" : "") << ": relative differences y " << e[0]
                      << ", dx " << e[1] << ", dgamma " << e[2] << ", dbeta " << e[3] << ", running_var " << e[4]);
        for (double v : e) CHECK(v <= 1e-5);
        if (relu) CHECK(std::count(y.begin(), y.end(), 0.f) > y.size() / 20);  // the ReLU clipped, and dy was masked
        CHECK(max_rel_diff(part.running_mean.value, whole.running_mean.value) <= 1e-5);
        // Local statistics would be another function of the slice (the channel offsets differ
        // little, the noise a lot, so slices have their own means).
        if (ranks > 1) {
            BatchNorm2d<8> local;
            bn(local);
            CHECK(max_rel_diff(to_tensor(local.forward(view(xs), Mode::training)), y_ref) > 1e-3);
        }
    }
}

namespace {

// Rank `bad`'s data source fails at the second batch of the first epoch, while the other
// ranks go on into the step's collectives.
class FailingSource : public TensorSource {
public:
    FailingSource(TensorSource s, bool bad) : TensorSource(std::move(s)), bad_(bad) {}
    void load(const std::vector<int64_t>& idx, int epoch, Tensor& x, std::vector<int>& y) override {
        if (bad_ && ++calls_ == 2) fail("test: this rank's data source broke on purpose");
        TensorSource::load(idx, epoch, x, y);
    }

private:
    bool bad_;
    int calls_ = 0;
};

int fail_on_rank(int bad) {
    try {
        FailingSource data(test::synthetic_squares(30, 3), world().rank() == bad);
        auto net = test::fresh_tiny(17);
        SGD sgd(0.05);
        Trainer<Tiny> trainer(*net, sgd);
        trainer.replicas = &world();
        FitOptions o;
        o.epochs = 2;
        o.batch = 12;
        trainer.fit(data, nullptr, o);  // with replicas, fit itself ends the job on a failure
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: fit threw instead of aborting: %s\n", world().rank(), e.what());
        return 1;
    }
    std::fprintf(stderr, "rank %d: training ended without the planned failure\n", world().rank());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    dist::Environment env(argc, argv);
    if (const char* bad = std::getenv("TLCPU_TEST_FAIL_RANK")) return fail_on_rank(std::atoi(bad));
    doctest::Context ctx(argc, argv);
    // Only rank 0 reports what passed; a failure is reported by the rank that saw it.
    ctx.setOption("no-colors", true);
    if (world().rank() != 0) ctx.setOption("minimal", true);
    int rc = ctx.run();
    // The job fails when any rank failed; MPI_Allreduce also keeps ranks from leaving early.
    MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return rc;
}

