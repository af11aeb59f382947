// tlcpu: counter-based random numbers. A draw is a pure function of (seed, stream, index),
// so results never depend on thread count or timing, and a resumed run replays them exactly.
#pragma once
#include <cmath>
#include <cstdint>

#include "tlcpu/core/fingerprint.hpp"
#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

inline uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

inline uint64_t hash3(uint64_t seed, uint64_t stream, uint64_t index) {
    return splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ index);
}

// Uniform in [0, 1) with 24 random bits: exactly representable as float.
inline float uniform01(uint64_t seed, uint64_t stream, uint64_t index) {
    return float(hash3(seed, stream, index) >> 40) * (1.0f / 16777216.0f);
}

// Standard normal by Box-Muller on two independent uniforms.
inline float normal01(uint64_t seed, uint64_t stream, uint64_t index) {
    uint64_t h = hash3(seed, stream, index);
    double u1 = (double((h >> 11) & ((1ull << 26) - 1)) + 0.5) / double(1ull << 26);
    double u2 = double(h >> 37) / double(1ull << 27);
    return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// He (Kaiming) normal initialisation, fan-in mode: std = sqrt(2 / fan_in), as torchvision's
// kaiming_normal_ for convs followed by ReLU. fan_in = elements per output channel.
inline void init_he_normal(Tensor& w, uint64_t seed, uint64_t stream) {
    int64_t fan_in = w.rank() > 1 ? w.size() / w.dim(0) : w.size();
    float sd = std::sqrt(2.0f / float(fan_in));
    for (int64_t i = 0; i < w.size(); ++i) w[i] = sd * normal01(seed, stream, uint64_t(i));
}

// A stable stream id per parameter name: FNV-1a from 1469598103934665603, the offset basis
// short of its last digit. Kept so: every seeded draw (initialisations, the split) hangs on it.
inline uint64_t hash_name(const std::string& s) { return fnv1a64(s.data(), s.size(), 1469598103934665603ull); }

}  // namespace tlcpu
