// bench_augment: augmented, preprocessed images per second on one thread, from the decoded
// cache — the data pipeline's cost per image once decoding is done, to set against the
// model's throughput. Repeats, reports min / median / max.
//   bench_augment [DATA_DIR] [images=512] [repeats=7]
// With DATA_DIR, the first images of each class folder (decoded and resized to 224 once);
// without, random pixels.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <tlcpu/data/augment.hpp>
#include <tlcpu/data/folder.hpp>

using namespace tlcpu;

int main(int argc, char** argv) {
    const int n = argc > 2 ? std::atoi(argv[2]) : 512, repeats = argc > 3 ? std::atoi(argv[3]) : 7, s = 224;
    std::vector<uint8_t> cache;
    if (argc > 1) {
        auto folder = data::ImageFolder::scan(argv[1]);
        std::vector<data::FileEntry> keep;  // the first n / k of every class
        std::vector<int> count(folder.classes.size(), 0);
        for (const auto& f : folder.files)
            if (count[size_t(f.label)]++ < n / int(folder.classes.size())) keep.push_back(f);
        folder.files = keep;
        data::DecodeOptions o;
        o.size = s;
        auto set = data::decode_folder(folder, o);
        cache = set.pixels;
    } else {
        cache.resize(size_t(n) * s * s * 3);
        for (size_t i = 0; i < cache.size(); ++i) cache[i] = uint8_t(hash3(1, 2, i));
    }
    const int images = int(cache.size() / (size_t(s) * s * 3));
    data::AugmentOptions aug{15.f, 0.1f, 0.1f, 0.1f, true};  // the recipe's ranges
    std::vector<float> out(size_t(3) * s * s);
    auto rate = [&](bool augment) {
        std::vector<double> r;
        for (int k = 0; k < repeats; ++k) {
            const auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < images; ++i) {
                const data::AffineDraw d = augment ? data::draw(aug, 7, uint64_t(k), uint64_t(i)) : data::AffineDraw{};
                data::augment_preprocess(cache.data() + size_t(i) * s * s * 3, s, d, Preprocess::caffe,
                                         keras_caffe_mean_bgr, out.data());
            }
            r.push_back(images / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::sort(r.begin(), r.end());
        std::printf("%-34s %8.0f img/s median  (min %.0f, max %.0f; %d images x %d repeats, 1 thread)\n",
                    augment ? "augment + caffe preprocess 224px" : "caffe preprocess only 224px", r[r.size() / 2], r.front(),
                    r.back(), images, repeats);
    };
    rate(true);
    rate(false);
    return 0;
}
