// tlcpu: Keras ImageDataGenerator augmentation (rotation, shifts, zoom, horizontal flip)
// as one affine warp with bilinear sampling and edge clamping (fill_mode="nearest"), fused
// with the ImageNet preprocessing so each training sample is written in one pass.
//
// Geometry follows keras_preprocessing's apply_affine_transform in (row, col) coordinates:
// input = c + R(theta) * (Z * (output - c) + t), Z = diag(zx, zy), t = (tx, ty), then the
// horizontal flip of the result. So tx moves along rows (Keras draws it from
// height_shift_range), zx scales rows, and zx < 1 zooms in. The centre c is (S - 1) / 2, the
// true pixel centre, as in keras-preprocessing's later code and tf.keras; release 1.1.2 used
// S / 2 + 0.5, one pixel off. (Later tf.keras also transposes the matrix to (x, y), which
// there swaps the roles of the two shifts and the sign of theta; with symmetric ranges the
// distributions are the same.)
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "tlcpu/core/error.hpp"
#include "tlcpu/core/random.hpp"
#include "tlcpu/io/image.hpp"

namespace tlcpu::data {

struct AugmentOptions {
    float rotation = 0;      // degrees: theta uniform in [-rotation, rotation]
    float width_shift = 0;   // fractions of the side, in [0, 1) (Keras' floats < 1)
    float height_shift = 0;
    float zoom = 0;          // zx, zy independently uniform in [1 - zoom, 1 + zoom]
    bool horizontal_flip = false;
    bool any() const { return rotation != 0 || width_shift != 0 || height_shift != 0 || zoom != 0 || horizontal_flip; }
};

// tx, ty are fractions of the side (pixels / size), so a draw does not depend on the image
// size; the warp multiplies them by the size.
struct AffineDraw {
    float theta_deg = 0, tx = 0, ty = 0, zx = 1, zy = 1;
    bool flip = false;
    bool is_mirror_or_identity() const { return theta_deg == 0 && tx == 0 && ty == 0 && zx == 1 && zy == 1; }
};

// A pure function of (seed, epoch, index): each parameter has its own stream, so enabling one
// augmentation leaves the others' draws unchanged.
inline AffineDraw draw(const AugmentOptions& o, uint64_t seed, uint64_t epoch, uint64_t index) {
    if (!(o.width_shift >= 0 && o.width_shift < 1 && o.height_shift >= 0 && o.height_shift < 1))
        fail("augmentation shifts are fractions of the image side in [0, 1), got width " +
             std::to_string(o.width_shift) + ", height " + std::to_string(o.height_shift));
    if (!(o.zoom >= 0 && o.zoom < 1 && o.rotation >= 0))
        fail("augmentation zoom must be in [0, 1) and rotation non-negative, got zoom " + std::to_string(o.zoom) +
             ", rotation " + std::to_string(o.rotation));
    auto u = [&](uint64_t param) { return uniform01(seed, splitmix64(epoch * 16 + param), index); };
    auto sym = [&](uint64_t param, float r) { return r == 0 ? 0.f : (2.f * u(param) - 1.f) * r; };
    AffineDraw d;
    d.theta_deg = sym(1, o.rotation);
    d.tx = sym(2, o.height_shift);
    d.ty = sym(3, o.width_shift);
    if (o.zoom != 0) {
        d.zx = 1.f + sym(4, o.zoom);
        d.zy = 1.f + sym(5, o.zoom);
    }
    d.flip = o.horizontal_flip && u(6) < 0.5f;
    return d;
}

namespace detail {

// Output pixel (r, c) samples input (r0 + r * dr_r + c * dr_c, c0 + r * dc_r + c * dc_c).
struct InverseMap {
    double r0, dr_r, dr_c, c0, dc_r, dc_c;
};

inline InverseMap inverse_map(int size, const AffineDraw& d) {
    const double s = size, mid = (s - 1) / 2, th = double(d.theta_deg) * 3.14159265358979323846 / 180;
    const double cs = std::cos(th), sn = std::sin(th);
    auto at = [&](double r, double c) {
        if (d.flip) c = s - 1 - c;  // Keras flips the warped image, i.e. mirrors the output
        const double ur = double(d.zx) * (r - mid) + double(d.tx) * s, uc = double(d.zy) * (c - mid) + double(d.ty) * s;
        return std::array<double, 2>{mid + cs * ur - sn * uc, mid + sn * ur + cs * uc};
    };
    const auto o = at(0, 0), r1 = at(1, 0), c1 = at(0, 1);
    return {o[0], r1[0] - o[0], c1[0] - o[0], o[1], r1[1] - o[1], c1[1] - o[1]};
}

// Bilinear sampling with clamped coordinates (scipy's mode="nearest" at order 1), in
// integers: coordinates with 32 fractional bits (no drift along a row), weights with 11, so
// put(pixel, r, g, b) receives values scaled by 2^22: exact whenever the weights are (shifts
// by whole or half pixels, right angles), otherwise within 1/8 of a grey level (weights are
// truncated to 11 bits). Integers keep it at ~5 ns a pixel where floats took twice that.
constexpr int kValueBits = 22;

template <class Put>
inline void sample(const uint8_t* rgb, int size, const AffineDraw& d, Put&& put) {
    const InverseMap m = inverse_map(size, d);
    constexpr double one = 4294967296.0;  // 2^32
    auto fixed = [](double v) { return int64_t(std::llround(v * one)); };
    const int64_t hi = int64_t(size - 1) << 32, step_r = fixed(m.dr_c), step_c = fixed(m.dc_c);
    const size_t row_bytes = size_t(size) * 3;
    // y, x already clamped; dx, dy: offsets of the right and lower neighbours (0 on the last column/row)
    auto one_pixel = [&](size_t i, int64_t y, int64_t x, size_t dx, size_t dy) {
        const int fy = int((y >> 21) & 2047), fx = int((x >> 21) & 2047);
        const uint8_t* p = rgb + size_t(y >> 32) * row_bytes + size_t(x >> 32) * 3;
        const uint8_t *q = p + dx, *s = p + dy, *t = p + dy + dx;
        int v[3];
        for (int ch = 0; ch < 3; ++ch) {
            const int top = (int(p[ch]) << 11) + (int(q[ch]) - int(p[ch])) * fx;
            const int bot = (int(s[ch]) << 11) + (int(t[ch]) - int(s[ch])) * fx;
            v[ch] = (top << 11) + (bot - top) * fy;
        }
        put(i, v[0], v[1], v[2]);
    };
    for (int r = 0; r < size; ++r) {
        const int64_t br = fixed(m.r0 + r * m.dr_r), bc = fixed(m.c0 + r * m.dc_r);
        const size_t base = size_t(r) * size_t(size);
        auto edge = [&](int c) {
            const int64_t y = std::clamp(br + c * step_r, int64_t(0), hi);
            const int64_t x = std::clamp(bc + c * step_c, int64_t(0), hi);
            one_pixel(base + size_t(c), y, x, x < hi ? 3 : 0, y < hi ? row_bytes : 0);
        };
        // The columns whose four neighbours are all inside form one interval (the coordinates
        // are linear in c); there nothing needs clamping. Estimated in double, then made exact.
        auto inside = [&](int c) {
            const int64_t y = br + c * step_r, x = bc + c * step_c;
            return y >= 0 && y < hi && x >= 0 && x < hi;
        };
        double lo = 0, up = size;
        for (auto [b, st] : {std::pair{double(br), double(step_r)}, std::pair{double(bc), double(step_c)}}) {
            if (st == 0) {
                if (b < 0 || b >= double(hi)) up = 0;
            } else {
                const double a = -b / st, z = (double(hi) - b) / st;
                lo = std::max(lo, std::min(a, z));
                up = std::min(up, std::max(a, z));
            }
        }
        int c0 = int(std::clamp(std::ceil(lo), 0.0, double(size)));
        int c1 = int(std::clamp(std::ceil(up), 0.0, double(size)));
        while (c0 < c1 && !inside(c0)) ++c0;
        while (c1 > c0 && !inside(c1 - 1)) --c1;
        if (c0 >= c1) c0 = c1 = size;
        for (int c = 0; c < c0; ++c) edge(c);
        for (int c = c0; c < c1; ++c) one_pixel(base + size_t(c), br + c * step_r, bc + c * step_c, 3, row_bytes);
        for (int c = c1; c < size; ++c) edge(c);
    }
}

template <bool Bgr>
inline void sample_preprocess(const uint8_t* rgb, int size, const AffineDraw& d, const float (&scale)[3],
                              const float (&bias)[3], float* dst) {
    const size_t hw = size_t(size) * size_t(size);
    float *o0 = dst, *o1 = dst + hw, *o2 = dst + 2 * hw;
    sample(rgb, size, d, [&](size_t i, int r, int g, int b) {
        o0[i] = float(Bgr ? b : r) * scale[0] + bias[0];
        o1[i] = float(g) * scale[1] + bias[1];
        o2[i] = float(Bgr ? r : b) * scale[2] + bias[2];
    });
}

}  // namespace detail

// One [3, S, S] float image at dst: `rgb` (S x S x 3) warped by `d`, then preprocessed.
// Identity and flip-only draws copy pixels through a lookup table built with
// preprocess_value, so they equal preprocess() bit for bit; warped pixels are fractional and
// take v * scale + bias. No allocation.
inline void augment_preprocess(const uint8_t* rgb, int size, const AffineDraw& d, Preprocess mode,
                               const std::array<float, 3>& caffe_mean_bgr, float* dst) {
    const size_t hw = size_t(size) * size_t(size);
    float* out[3] = {dst, dst + hw, dst + 2 * hw};
    const int src[3] = {mode == Preprocess::caffe ? 2 : 0, 1, mode == Preprocess::caffe ? 0 : 2};
    if (d.is_mirror_or_identity()) {
        float lut[3][256];
        for (int c = 0; c < 3; ++c)
            for (int v = 0; v < 256; ++v) lut[c][v] = preprocess_value(mode, c, float(v), caffe_mean_bgr);
        for (int r = 0; r < size; ++r) {
            const uint8_t* row = rgb + size_t(r) * size_t(size) * 3;
            const size_t base = size_t(r) * size_t(size);
            for (int c = 0; c < size; ++c) {
                const uint8_t* p = row + size_t(d.flip ? size - 1 - c : c) * 3;
                for (int k = 0; k < 3; ++k) out[k][base + size_t(c)] = lut[k][p[src[k]]];
            }
        }
        return;
    }
    float scale[3], bias[3];  // per output channel, for values scaled by 2^22
    for (int c = 0; c < 3; ++c) {
        const double unit = std::ldexp(1.0, -detail::kValueBits);
        if (mode == Preprocess::caffe) {
            scale[c] = float(unit);
            bias[c] = -caffe_mean_bgr[size_t(c)];
        } else {
            const double sd = torch_std_rgb[size_t(c)];
            scale[c] = float(unit / (255.0 * sd));
            bias[c] = float(-double(torch_mean_rgb[size_t(c)]) / sd);
        }
    }
    if (mode == Preprocess::caffe) detail::sample_preprocess<true>(rgb, size, d, scale, bias, dst);
    else detail::sample_preprocess<false>(rgb, size, d, scale, bias, dst);
}

// The warp alone, uint8 in and out (rounded to nearest), for tests and montages.
inline void warp(const uint8_t* rgb, int size, const AffineDraw& d, uint8_t* out) {
    if (d.is_mirror_or_identity()) {
        for (int r = 0; r < size; ++r)
            for (int c = 0; c < size; ++c)
                std::memcpy(out + (size_t(r) * size_t(size) + size_t(c)) * 3,
                            rgb + (size_t(r) * size_t(size) + size_t(d.flip ? size - 1 - c : c)) * 3, 3);
        return;
    }
    constexpr int half = 1 << (detail::kValueBits - 1);
    detail::sample(rgb, size, d, [&](size_t i, int r, int g, int b) {
        out[3 * i] = uint8_t((r + half) >> detail::kValueBits);
        out[3 * i + 1] = uint8_t((g + half) >> detail::kValueBits);
        out[3 * i + 2] = uint8_t((b + half) >> detail::kValueBits);
    });
}

}  // namespace tlcpu::data
