// libFuzzer target: an image file through what train_cpu does with it. The input is the one
// file of class "a" of a two-class folder whose class "b" holds a 1x1 PNG: decode_folder at
// 224x224 with the pixel limit and a DecodeOptions::max_bytes cap, so the images are cached
// or (over the cap) streamed from disk again, then read_image and the augmented
// preprocessing of the training batches. The input's size picks the variant (its parity:
// antialias or nearest resize; size / 2 % 2: cached or streamed), so every byte stays the file's.
//
// Seeds (corpus/image): small real images of the Training folder (cropped with jpegtran to
// stay fast: baseline, progressive, one-component, restart markers; and two PNGs named .jpg),
// tiny files from stb_image_write (1x1 PNG and JPEG, BMP, TGA, gray+alpha, 1x300) and broken
// ones (truncated JPEG and PNG, garbage entropy data, empty, text, a 10000x10000 header).
//
// The pixel limit is lowered to 1 M pixels: what is under test is that the limit holds
// before stb allocates, not its value, and at 1 M pixels no decode needs more than some tens
// of MB, so run with -malloc_limit_mb=256 and a bypassed limit is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <vector>

#include "tlcpu/data/augment.hpp"
#include "tlcpu/data/folder.hpp"

namespace fs = std::filesystem;
using namespace tlcpu;

namespace {

void write(const fs::path& p, const uint8_t* data, size_t size) {
    std::FILE* f = std::fopen(p.c_str(), "wb");
    if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) __builtin_trap();
}

struct Scratch {
    fs::path root, input;
    Scratch() {
        // The folder's name reaches comparisons libFuzzer learns from, so a name with the pid
        // in it would make runs of one seed differ: run.sh sets a fixed relative one.
        const char* fixed = std::getenv("TLCPU_FUZZ_SCRATCH");
        root = fixed ? fs::path(fixed) : fs::temp_directory_path() / ("tlcpu-fuzz-image-" + std::to_string(::getpid()));
        fs::remove_all(root);
        fs::create_directories(root / "a");
        fs::create_directories(root / "b");
        input = root / "a" / "input.jpg";
        static const uint8_t one_pixel_png[] = {  // stb_image_write, RGB 200, 100, 50
            0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
            0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0x5e, 0x63, 0x38, 0x91, 0x62, 0x04,
            0x00, 0x03, 0x56, 0x01, 0x5f, 0x11, 0xd2, 0x11, 0xe3, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
            0x44, 0xae, 0x42, 0x60, 0x82};
        write(root / "b" / "one.png", one_pixel_png, sizeof one_pixel_png);
        max_image_pixels = 1 << 20;
    }
    ~Scratch() {
        std::error_code ec;
        fs::remove_all(root, ec);
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static Scratch s;
    write(s.input, data, size);
    const int side = 224;
    const size_t px = size_t(side) * side * 3;
    data::DecodeOptions o;
    o.size = side;
    o.resize = size % 2 ? data::Resize::nearest : data::Resize::antialias;
    o.warnings = nullptr;
    o.over_cap = data::OverCap::stream;
    o.max_bytes = (size / 2) % 2 ? px : 0;  // one image's worth: the two are over it
    try {
        const auto folder = data::ImageFolder::scan(s.root);
        const auto set = data::decode_folder(folder, o);
        std::vector<uint8_t> im(px), first(px);
        std::vector<float> x(3 * size_t(side) * side);
        const data::AugmentOptions aug{.rotation = 15, .width_shift = 0.1f, .height_shift = 0.1f, .zoom = 0.1f,
                                       .horizontal_flip = true};
        // Both images are read (streamed, both decode again), the input's is preprocessed as a
        // training batch is; a decoded set always has it first (class "a" must hold a readable image).
        for (size_t i = 0; i < set.files.size(); ++i) set.read_image(i, i ? im.data() : first.data());
        data::augment_preprocess(first.data(), side, data::draw(aug, size, 0, 0), Preprocess::caffe,
                                 keras_caffe_mean_bgr, x.data());
    } catch (const Error& e) {
        if (std::string_view(e.what()).find(s.root.string()) == std::string_view::npos) __builtin_trap();
    }
    return 0;
}
