// forward_cpu: the pretrained backbone on real images, before any training.
//
// Decodes a stratified, seeded sample of a class-folder dataset, runs the ImageNet
// ResNet-50 through layer3 (the part the shared weights hold exactly), pools the 1024
// features per image and classifies held-out images by their nearest class centroid.
// A frozen ImageNet backbone already separating MRI classes is the premise of transfer
// learning; this prints how well it does and how fast the forward pass runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <numeric>

#include <omp.h>

#include <CLI/CLI.hpp>
#include <tlcpu/tlcpu.hpp>

namespace fs = std::filesystem;
using namespace tlcpu;

namespace {

struct Sample {
    std::string path;
    int label;
};

std::vector<std::string> class_folders(const fs::path& root) {
    check(fs::is_directory(root), root.string() + ": no such data folder");
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(root))
        if (e.is_directory()) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());  // Keras' flow_from_directory order
    check(!names.empty(), root.string() + ": no class subfolders");
    return names;
}

// Up to `per_class` files of each class, drawn with the seed, then split per class into
// fit and held-out parts (stratified).
void sample(const fs::path& root, const std::vector<std::string>& classes, int per_class, double held_out,
            uint64_t seed, std::vector<Sample>& fit, std::vector<Sample>& test) {
    for (int c = 0; c < int(classes.size()); ++c) {
        std::vector<std::string> files;
        for (const auto& e : fs::directory_iterator(root / classes[c]))
            if (e.is_regular_file()) files.push_back(e.path().string());
        check(!files.empty(), (root / classes[c]).string() + ": class folder has no files");
        std::sort(files.begin(), files.end());
        std::vector<uint64_t> key(files.size());
        for (size_t i = 0; i < files.size(); ++i) key[i] = hash3(seed, uint64_t(c), i);
        std::vector<size_t> idx(files.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return key[a] < key[b]; });
        const size_t n = std::min(files.size(), size_t(per_class));
        const size_t n_test = std::max<size_t>(1, size_t(double(n) * held_out + 0.5));
        for (size_t i = 0; i < n; ++i) (i < n_test ? test : fit).push_back({files[idx[i]], c});
    }
}

template <Layout L>
Tensor extract(const io::SafeTensors& weights, const std::vector<Sample>& samples, int batch, int size,
               const Preprocessing& pre, double& seconds) {
    auto net = std::make_unique<ResNet50<L, 64, Depth::c4>>();
    auto report = load_weights(*net, weights);
    std::printf("weights: %s\n", report.summary().c_str());
    const int64_t n = int64_t(samples.size());
    Tensor feats({n, 1024});
    GlobalAvgPool pool;
    Tensor x;
    seconds = 0;
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t nb = std::min<int64_t>(batch, n - b0);
        if (x.shape() != Shape{nb, 3, size, size}) x = Tensor({nb, 3, size, size});
        // Decoding is independent per file, so it runs in parallel; results land by index.
        std::vector<std::string> errors(static_cast<size_t>(nb));
#pragma omp parallel for schedule(dynamic)
        for (int64_t i = 0; i < nb; ++i) {
            try {
                Image im = resize(decode_image(samples[size_t(b0 + i)].path), size, size);
                preprocess(im, pre.mode, x.data() + i * 3 * size * size, pre.caffe_mean_bgr);
            } catch (const Error& e) {
                errors[size_t(i)] = e.what();
            }
        }
        for (const auto& e : errors) check(e.empty(), e);
        auto t0 = std::chrono::steady_clock::now();
        const Tensor& f = pool.forward(net->forward(view(x), Mode::inference), Mode::inference);
        seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::copy(f.begin(), f.end(), feats.data() + b0 * 1024);
    }
    return feats;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Run the pretrained ResNet-50 (through layer3) on real images and probe its features"};
    std::string data, weights_path, layout = "auto";
    int per_class = 100, batch = 32, size = 224;
    double held_out = 0.2;
    uint64_t seed = 1;
    app.add_option("--data", data, "Folder of class subfolders (e.g. ../shared/data/brain-tumor-mri/Training)")->required();
    app.add_option("--weights", weights_path, "ImageNet ResNet-50 weights (safetensors, torchvision names)")->required();
    app.add_option("--per-class", per_class, "Images drawn per class")->capture_default_str();
    app.add_option("--held-out", held_out, "Fraction of each class kept out of the centroids")->capture_default_str();
    app.add_option("--batch", batch, "Images per forward pass")->capture_default_str();
    app.add_option("--size", size, "Input side in pixels")->capture_default_str();
    app.add_option("--seed", seed, "Seed for the sample and the split")->capture_default_str();
    app.add_option("--layout", layout, "Stride layout: v1 (caffe/Keras), v1.5 (torchvision), auto (from the file's metadata)")
        ->check(CLI::IsMember({"auto", "v1", "v1.5"}))
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    try {
        const auto weights = io::SafeTensors::open(weights_path);
        const bool v1 = layout == "auto" ? layout_of(weights) == Layout::v1 : layout == "v1";
        const Preprocessing pre = preprocessing_of(weights);
        const auto classes = class_folders(data);
        std::vector<Sample> fit, test;
        sample(data, classes, per_class, held_out, seed, fit, test);
        std::printf("tlcpu forward_cpu: %zu classes, %zu + %zu images, layout %s, %s preprocessing, %d threads\n",
                    classes.size(), fit.size(), test.size(), v1 ? "v1" : "v1.5",
                    pre.mode == Preprocess::caffe ? "caffe" : "torch", omp_get_max_threads());

        std::vector<Sample> all = fit;
        all.insert(all.end(), test.begin(), test.end());
        double seconds = 0;
        Tensor f = v1 ? extract<Layout::v1>(weights, all, batch, size, pre, seconds)
                      : extract<Layout::v1_5>(weights, all, batch, size, pre, seconds);
        std::printf("forward: %.1f images/s (%.2f s for %zu images, decoding excluded)\n", double(all.size()) / seconds,
                    seconds, all.size());

        // Nearest centroid in standardised feature space (statistics from the fit part only).
        const int64_t d = f.dim(1), k = int64_t(classes.size()), nf = int64_t(fit.size());
        std::vector<double> mu(size_t(d), 0), sd(size_t(d), 0);
        for (int64_t i = 0; i < nf; ++i)
            for (int64_t j = 0; j < d; ++j) mu[size_t(j)] += f[i * d + j] / double(nf);
        for (int64_t i = 0; i < nf; ++i)
            for (int64_t j = 0; j < d; ++j) sd[size_t(j)] += std::pow(f[i * d + j] - mu[size_t(j)], 2) / double(nf);
        for (auto& s : sd) s = std::sqrt(s) + 1e-6;
        auto z = [&](int64_t i, int64_t j) { return (f[i * d + j] - mu[size_t(j)]) / sd[size_t(j)]; };
        std::vector<double> centroid(size_t(k * d), 0);
        std::vector<int> count(size_t(k), 0);
        for (int64_t i = 0; i < nf; ++i) {
            ++count[size_t(fit[size_t(i)].label)];
            for (int64_t j = 0; j < d; ++j) centroid[size_t(fit[size_t(i)].label * d + j)] += z(i, j);
        }
        for (int64_t c = 0; c < k; ++c)
            for (int64_t j = 0; j < d; ++j) centroid[size_t(c * d + j)] /= std::max(1, count[size_t(c)]);
        std::vector<int> confusion(size_t(k * k), 0);
        int correct = 0;
        for (size_t t = 0; t < test.size(); ++t) {
            const int64_t i = nf + int64_t(t);
            int best = 0;
            double best_d = 1e300;
            for (int64_t c = 0; c < k; ++c) {
                double dist = 0;
                for (int64_t j = 0; j < d; ++j) dist += std::pow(z(i, j) - centroid[size_t(c * d + j)], 2);
                if (dist < best_d) best_d = dist, best = int(c);
            }
            ++confusion[size_t(test[t].label * k + best)];
            correct += best == test[t].label;
        }
        std::printf("\nnearest-centroid probe on frozen layer3 features, held-out images (rows: true class)\n%12s", "");
        for (const auto& c : classes) std::printf(" %10.10s", c.c_str());
        std::printf("\n");
        for (int64_t r = 0; r < k; ++r) {
            std::printf("%12.12s", classes[size_t(r)].c_str());
            for (int64_t c = 0; c < k; ++c) std::printf(" %10d", confusion[size_t(r * k + c)]);
            std::printf("\n");
        }
        std::printf("held-out accuracy %.3f (%d/%zu; chance %.3f)\n", double(correct) / double(test.size()), correct,
                    test.size(), 1.0 / double(k));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
