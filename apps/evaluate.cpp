// evaluate: a trained model (best.safetensors from train_cpu) on a folder of class
// subfolders: confusion matrix and a scikit-learn-style classification report.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <CLI/CLI.hpp>

#include "common.hpp"

namespace fs = std::filesystem;
using namespace tlcpu;

int main(int argc, char** argv) {
    std::string model, dir, json, exclude, split, subset = "val";
    int batch = 32, decode_mb = 0;
    CLI::App app{"Evaluate a trained tlcpu model on a folder of class subfolders"};
    app.add_option("--model", model, "best.safetensors written by train_cpu")->required();
    app.add_option("--data", dir, "Folder of class subfolders; names must be the model's classes")->required();
    app.add_option("--json", json, "Also write the metrics as JSON here");
    app.add_option("--exclude", exclude, "Duplicates list (groups TSV) whose redundant copies are left out");
    app.add_option("--split", split, "split.tsv of a train_cpu run: evaluate only its --subset files");
    app.add_option("--subset", subset, "With --split: train or val")->check(CLI::IsMember({"train", "val"}))->capture_default_str();
    app.add_option("--batch", batch, "Images per forward pass")->capture_default_str();
    app.add_option("--decode-mb", decode_mb, "Cap in MB on the decoded images kept in memory (0: half the physical memory); over it, images are decoded from disk as they are evaluated")
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    try {
        const auto f = io::SafeTensors::open(model);
        app::precision_of(f.meta("frozen_precision", "f32"));  // a precision this CPU lacks fails before the decode
        const auto classes = app::split_list(f.meta("classes"));
        check(classes.size() >= 2, model + ": no class names in the metadata (not a train_cpu model?)");
        auto folder = data::ImageFolder::scan(dir);
        if (folder.classes != classes) {
            std::string have, want;
            for (auto& c : folder.classes) have += (have.empty() ? "" : ", ") + c;
            for (auto& c : classes) want += (want.empty() ? "" : ", ") + c;
            fail(dir + ": class folders (" + have + ") differ from the model's classes (" + want + ")");
        }
        data::DecodeOptions dopt;
        dopt.size = std::stoi(f.meta("input_size", "224"));
        dopt.resize = f.meta("resize", "antialias") == "nearest" ? data::Resize::nearest : data::Resize::antialias;
        if (!exclude.empty()) dopt.exclude = data::read_exclude_list(exclude);
        dopt.over_cap = data::OverCap::stream;
        dopt.max_bytes = decode_mb > 0 ? uint64_t(decode_mb) << 20
                                       : uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(sysconf(_SC_PAGE_SIZE)) / 2;
        if (!split.empty()) {
            // Only the subset is decoded; files the split does not list (a run on a subset)
            // are simply not evaluated.
            const auto subsets = data::read_split_tsv(split);
            std::vector<data::FileEntry> keep;
            for (const auto& e : folder.files) {
                auto it = subsets.find(data::detail::relative_to(e.path, dir));
                if (it != subsets.end() && it->second == subset) keep.push_back(e);
            }
            check(!keep.empty(), split + ": lists no " + subset + " file of " + dir);
            folder.files = std::move(keep);
        }
        const auto set = data::decode_folder(folder, dopt);
        std::vector<int64_t> idx;
        for (size_t i = 0; i < set.files.size(); ++i) idx.push_back(int64_t(i));
        check(!idx.empty(), dir + ": no images to evaluate");
        const Preprocessing pre = preprocessing_of(f);
        ClassificationReport rep;
        app::with_model(f, [&](auto& net) {
            data::FolderSource src(set, idx, pre);
            auto p = app::predict(net, src, batch);
            rep = classification_report(p.truth, p.predicted, set.classes);
        });
        std::printf("%s (%lld images)\n\n%s\n%s", dir.c_str(), (long long)rep.n, rep.confusion_text().c_str(), rep.text(3).c_str());
        if (!json.empty()) {
            std::ofstream o(json);
            o << rep.to_json().dump(2) << "\n";
            check(bool(o), json + ": cannot write");
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
