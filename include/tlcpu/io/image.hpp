// tlcpu: decoding an image file to 8-bit RGB, resizing it, and the two ImageNet
// preprocessing conventions. The format is detected from the bytes, not the file name.
#pragma once
#include <array>
#include <cstdint>
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
};

inline Image decode_image(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    check(bool(in), path + ": cannot open the file");
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
    check(!bytes.empty(), path + ": the file is empty");
    int w = 0, h = 0, c = 0;
    // Forcing 3 components makes stb convert gray and RGBA to RGB.
    unsigned char* px = stbi_load_from_memory(bytes.data(), int(bytes.size()), &w, &h, &c, 3);
    if (!px) fail(path + ": not a decodable image (" + std::string(stbi_failure_reason()) + ")");
    Image im{w, h, std::vector<uint8_t>(px, px + size_t(w) * h * 3)};
    stbi_image_free(px);
    return im;
}

// Antialiased resize (stb's default filters), so downscaling a 512 px scan to 224 averages
// instead of skipping pixels.
inline Image resize(const Image& im, int width, int height) {
    Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
    if (!stbir_resize_uint8(im.rgb.data(), im.width, im.height, 0, out.rgb.data(), width, height, 0, 3))
        fail("resizing a " + std::to_string(im.width) + "x" + std::to_string(im.height) + " image failed");
    return out;
}

// caffe: BGR, 0..255, minus a per-channel mean (given in B, G, R order); no scaling.
// torch: RGB, /255, minus the ImageNet mean, divided by its std.
enum class Preprocess { caffe, torch };
inline constexpr std::array<float, 3> keras_caffe_mean_bgr{103.939f, 116.779f, 123.68f};

// Writes one preprocessed image as [3, H, W] floats at `dst`.
inline void preprocess(const Image& im, Preprocess mode, float* dst,
                       std::array<float, 3> caffe_mean_bgr = keras_caffe_mean_bgr) {
    const size_t hw = size_t(im.width) * im.height;
    for (size_t i = 0; i < hw; ++i) {
        const uint8_t* p = &im.rgb[3 * i];
        if (mode == Preprocess::caffe) {
            for (int c = 0; c < 3; ++c) dst[c * hw + i] = float(p[2 - c]) - caffe_mean_bgr[c];
        } else {
            static constexpr float mean[3] = {0.485f, 0.456f, 0.406f}, sd[3] = {0.229f, 0.224f, 0.225f};
            for (int c = 0; c < 3; ++c) dst[c * hw + i] = (float(p[c]) / 255.f - mean[c]) / sd[c];
        }
    }
}

}  // namespace tlcpu
