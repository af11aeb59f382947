// tlcpu: decoding an image file to 8-bit RGB, resizing it, and the two ImageNet
// preprocessing conventions. The format is detected from the bytes, not the file name.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <stb_image.h>
#include <stb_image_resize.h>

#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;  // height x width x 3, row-major
    int channels = 3;          // in the file, before conversion: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
};

// Images with more pixels than this are refused from their header, before any pixel memory
// is allocated: a small file can declare a huge canvas (a decompression bomb). The value is
// Pillow's MAX_IMAGE_PIXELS; MRI slices are far below it.
inline int64_t max_image_pixels = 89'478'485;

// Decodes without throwing, so it can run inside an OpenMP loop: returns "" on success,
// otherwise why the file is unusable (the caller names the file).
inline std::string try_decode_image(const std::string& path, Image& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return "cannot open the file";
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
    if (in.bad()) return "read error";
    if (bytes.empty()) return "the file is empty";
    int w = 0, h = 0, c = 0;
    if (stbi_info_from_memory(bytes.data(), int(bytes.size()), &w, &h, &c) && int64_t(w) * h > max_image_pixels)
        return std::to_string(w) + "x" + std::to_string(h) + " pixels is over the limit of " +
               std::to_string(max_image_pixels) + " (tlcpu::max_image_pixels); refused before decoding";
    // Forcing 3 components makes stb convert gray and RGBA to RGB (alpha dropped, as PIL's
    // convert("RGB") does); c still reports what the file holds.
    unsigned char* px = stbi_load_from_memory(bytes.data(), int(bytes.size()), &w, &h, &c, 3);
    if (!px) {
        const char* why = stbi_failure_reason();  // a static string, thread-local since stb 2.26
        return std::string("not a decodable image (") + (why ? why : "unknown reason") + ")";
    }
    out.width = w;
    out.height = h;
    out.channels = c;
    out.rgb.assign(px, px + size_t(w) * size_t(h) * 3);
    stbi_image_free(px);
    return "";
}

inline Image decode_image(const std::string& path) {
    Image im;
    if (std::string why = try_decode_image(path, im); !why.empty()) fail(path + ": " + why);
    return im;
}

// Antialiased resize into `dst` (width x height x 3). stb's defaults (Mitchell when shrinking,
// Catmull-Rom when enlarging) are chosen per axis; an axis kept at its size gets Catmull-Rom,
// which is exactly the identity there (stb's default would pick Mitchell and blur it).
inline void resize_into(const Image& im, int width, int height, uint8_t* dst) {
    if (im.width == width && im.height == height) {
        std::memcpy(dst, im.rgb.data(), size_t(width) * size_t(height) * 3);
        return;
    }
    auto filter = [](int from, int to) { return to < from ? STBIR_FILTER_MITCHELL : STBIR_FILTER_CATMULLROM; };
    if (!stbir_resize(im.rgb.data(), im.width, im.height, 0, dst, width, height, 0, STBIR_TYPE_UINT8, 3,
                      STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_EDGE_CLAMP, filter(im.width, width),
                      filter(im.height, height), STBIR_COLORSPACE_LINEAR, nullptr))
        fail("resizing a " + std::to_string(im.width) + "x" + std::to_string(im.height) + " image failed");
}

inline Image resize(const Image& im, int width, int height) {
    Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
    resize_into(im, width, height, out.rgb.data());
    return out;
}

// Nearest-neighbour resize exactly as PIL's Image.resize(NEAREST) (what Keras' load_img
// uses by default): source x = floor(x_in_centre), with the centre stepped by in/out in
// double precision the way Pillow's ImagingScaleAffine accumulates it.
inline void resize_nearest_into(const Image& im, int width, int height, uint8_t* dst) {
    std::vector<int> xs(size_t(width), 0);
    const double ax = double(im.width) / width, ay = double(im.height) / height;
    double xo = ax * 0.5;
    for (int x = 0; x < width; ++x, xo += ax) xs[size_t(x)] = std::min(int(xo), im.width - 1);
    double yo = ay * 0.5;
    for (int y = 0; y < height; ++y, yo += ay) {
        const uint8_t* row = im.rgb.data() + size_t(std::min(int(yo), im.height - 1)) * size_t(im.width) * 3;
        uint8_t* out = dst + size_t(y) * size_t(width) * 3;
        for (int x = 0; x < width; ++x) std::memcpy(out + 3 * x, row + 3 * xs[size_t(x)], 3);
    }
}

inline Image resize_nearest(const Image& im, int width, int height) {
    Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
    resize_nearest_into(im, width, height, out.rgb.data());
    return out;
}

// caffe: BGR, 0..255, minus a per-channel mean (given in B, G, R order); no scaling.
// torch: RGB, /255, minus the ImageNet mean, divided by its std.
enum class Preprocess { caffe, torch };
inline constexpr std::array<float, 3> keras_caffe_mean_bgr{103.939f, 116.779f, 123.68f};
inline constexpr std::array<float, 3> torch_mean_rgb{0.485f, 0.456f, 0.406f}, torch_std_rgb{0.229f, 0.224f, 0.225f};

// The value output channel c (0..2, in the mode's channel order) takes for the 8-bit input
// v of source channel (caffe ? 2 - c : c). One expression, so every path agrees bit for bit.
inline float preprocess_value(Preprocess mode, int c, float v, const std::array<float, 3>& caffe_mean_bgr) {
    return mode == Preprocess::caffe ? v - caffe_mean_bgr[size_t(c)]
                                     : (v / 255.f - torch_mean_rgb[size_t(c)]) / torch_std_rgb[size_t(c)];
}

// Writes one preprocessed image as [3, H, W] floats at `dst`.
inline void preprocess(const Image& im, Preprocess mode, float* dst,
                       std::array<float, 3> caffe_mean_bgr = keras_caffe_mean_bgr) {
    const size_t hw = size_t(im.width) * im.height;
    for (size_t i = 0; i < hw; ++i) {
        const uint8_t* p = &im.rgb[3 * i];
        for (int c = 0; c < 3; ++c) {
            const int src = mode == Preprocess::caffe ? 2 - c : c;
            dst[size_t(c) * hw + i] = preprocess_value(mode, c, float(p[src]), caffe_mean_bgr);
        }
    }
}

}  // namespace tlcpu
