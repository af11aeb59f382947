// Paths into ../shared and small helpers shared by the tests.
#pragma once
#include <string>

#include <tlcpu/tlcpu.hpp>

namespace tlcpu::test {

inline std::string shared(const std::string& rel) { return std::string(TLCPU_SHARED_DIR) + "/" + rel; }

// Mean over H and W of a [N, C, H, W] tensor: the fixtures' "pool.*" keys.
inline Tensor spatial_mean(const Tensor& t) {
    const int64_t n = t.dim(0), c = t.dim(1), hw = t.dim(2) * t.dim(3);
    Tensor m({n, c});
    for (int64_t i = 0; i < n * c; ++i) {
        double s = 0;
        for (int64_t j = 0; j < hw; ++j) s += t[i * hw + j];
        m[i] = float(s / double(hw));
    }
    return m;
}

// Stand-in for pretrained weights: He-normal convs and dense layers, BN scales and
// running variances in [0.5, 1.5), shifts and means small; the dropout off.
template <class Net>
void randomize_pretrained(Net& net, uint64_t seed) {
    net.visit("", [&](const std::string& n, Param& p) {
        if (p.value.rank() > 1)
            init_he_normal(p.value, seed, hash_name(n));
        else if (n.ends_with("running_var") || n.ends_with(".weight"))
            for (int64_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.5f + uniform01(seed, hash_name(n), uint64_t(i));
        else
            for (int64_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.2f * normal01(seed, hash_name(n), uint64_t(i));
        p.touch();
    });
    net.head.drop.p = 0;
}

// The message of the tlcpu::Error that fn throws, or "" when it throws none.
inline std::string error_of(auto&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

}  // namespace tlcpu::test
