// tlcpu: Grad-CAM (Selvaraju et al., 2017): where in the image the last convolutional
// stage saw evidence for a class.
//
//   cam(i, j) = ReLU( sum_k alpha_k A_k(i, j) ),   alpha_k = mean_ij d score / d A_k(i, j)
//
// A is the backbone's output [C, h, w] (layer3's for c4, layer4's for c5) and the score is
// the class's logit. The recipe's head begins with a global average pool, followed by
// BatchNorm (inference: a per-feature affine map), Dropout (identity at inference) and
// Dense, so d logit_c / d A_k(i, j) is the same at every position:
//
//   alpha_k = W[c, k] * gamma_k / sqrt(running_var_k + eps) / (h w)
//
// which is exactly the gradient backward would produce, without running it.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "tlcpu/io/image.hpp"
#include "tlcpu/models/classifier.hpp"

namespace tlcpu {

template <int In, int Classes>
std::vector<float> gradcam_weights(const Head<In, Classes>& head, int cls, int64_t positions) {
    check(cls >= 0 && cls < head.classes(), "gradcam: class " + std::to_string(cls) + " out of range");
    std::vector<float> alpha(static_cast<size_t>(In));
    const auto& bn = head.bn;
    for (int k = 0; k < In; ++k)
        alpha[size_t(k)] = head.fc.weight.value[int64_t(cls) * In + k] * bn.weight.value[k] /
                           std::sqrt(bn.running_var.value[k] + bn.config.eps) / float(positions);
    return alpha;
}

// The class activation map of one sample: a [C, h, w] activation, its alpha; h*w values,
// ReLU'd and scaled so the largest is 1 (all zero when nothing speaks for the class).
inline std::vector<float> gradcam_map(const float* act, int channels, int h, int w, const std::vector<float>& alpha) {
    check(alpha.size() == size_t(channels), "gradcam: " + std::to_string(alpha.size()) + " weights for " +
                                                std::to_string(channels) + " channels");
    const size_t n = size_t(h) * size_t(w);
    std::vector<double> m(n, 0.0);  // double: thousands of signed terms per position
    for (int k = 0; k < channels; ++k) {
        const float* a = act + size_t(k) * n;
        for (size_t i = 0; i < n; ++i) m[i] += double(alpha[size_t(k)]) * a[i];
    }
    double top = 0;
    for (double v : m) top = std::max(top, v);
    std::vector<float> cam(n, 0.f);
    if (top > 0)
        for (size_t i = 0; i < n; ++i) cam[i] = float(std::max(m[i], 0.0) / top);
    return cam;
}

// Turbo colour map (Google, 2019; polynomial fit by its author): perceptually ordered, so
// a clinician reads "more" as "hotter" without the banding of jet.
inline std::array<uint8_t, 3> turbo(float t) {
    t = std::clamp(t, 0.f, 1.f);
    auto poly = [t](std::array<double, 6> c) {
        return c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * c[5]))));
    };
    const double r = poly({0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943});
    const double g = poly({0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604});
    const double b = poly({0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973});
    auto u8 = [](double v) { return uint8_t(std::lround(255 * std::clamp(v, 0.0, 1.0))); };
    return {u8(r), u8(g), u8(b)};
}

// The map over the image: bilinear upsampling of the h x w grid to the image (the model saw
// the image stretched to a square, so the grid stretches back the same way), the scan in
// gray, the colour's opacity growing with the map so cold regions show the scan itself.
inline Image gradcam_overlay(const Image& im, const std::vector<float>& cam, int h, int w) {
    check(cam.size() == size_t(h) * size_t(w), "gradcam: map is not " + std::to_string(h) + "x" + std::to_string(w));
    Image out{im.width, im.height, std::vector<uint8_t>(size_t(im.width) * im.height * 3)};
    for (int y = 0; y < im.height; ++y) {
        const float fy = std::clamp((y + 0.5f) * float(h) / float(im.height) - 0.5f, 0.f, float(h - 1));
        const int y0 = int(fy), y1 = std::min(y0 + 1, h - 1);
        const float wy = fy - float(y0);
        for (int x = 0; x < im.width; ++x) {
            const float fx = std::clamp((x + 0.5f) * float(w) / float(im.width) - 0.5f, 0.f, float(w - 1));
            const int x0 = int(fx), x1 = std::min(x0 + 1, w - 1);
            const float wx = fx - float(x0);
            const float v = (1 - wy) * ((1 - wx) * cam[size_t(y0) * w + x0] + wx * cam[size_t(y0) * w + x1]) +
                            wy * ((1 - wx) * cam[size_t(y1) * w + x0] + wx * cam[size_t(y1) * w + x1]);
            const size_t p = (size_t(y) * im.width + x) * 3;
            const float gray = 0.299f * im.rgb[p] + 0.587f * im.rgb[p + 1] + 0.114f * im.rgb[p + 2];
            const auto c = turbo(v);
            const float a = 0.65f * std::sqrt(v);
            for (int ch = 0; ch < 3; ++ch) out.rgb[p + ch] = uint8_t(std::lround((1 - a) * gray + a * c[size_t(ch)]));
        }
    }
    return out;
}

}  // namespace tlcpu
