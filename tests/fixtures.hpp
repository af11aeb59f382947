// Paths into ../shared and small helpers shared by the tests.
#pragma once
#include <memory>
#include <string>
#include <vector>

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

// The 1/16-width ResNet-50 with a 4-class head: what the training tests train.
using TinyNet = Classifier<ResNet50<Layout::v1_5, 4>, 4>;

// Four classes told apart by where a bright square sits, on noise. 32x32 keeps it fast.
inline TensorSource synthetic_squares(int n, uint64_t seed) {
    Tensor x({n, 3, 32, 32});
    std::vector<int> y(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
        const int c = i % 4;
        y[size_t(i)] = c;
        for (int64_t j = 0; j < 3 * 32 * 32; ++j) x[i * 3072 + j] = 0.3f * normal01(seed, uint64_t(i), uint64_t(j));
        const int r0 = (c / 2) * 16 + 4, c0 = (c % 2) * 16 + 4;
        for (int ch = 0; ch < 3; ++ch)
            for (int r = r0; r < r0 + 8; ++r)
                for (int q = c0; q < c0 + 8; ++q) x[((int64_t(i) * 3 + ch) * 32 + r) * 32 + q] += 1.5f;
    }
    return TensorSource(std::move(x), std::move(y));
}

// He-normal weights, trained from scratch, so every BatchNorm uses batch statistics.
inline std::unique_ptr<TinyNet> fresh_tiny(uint64_t seed) {
    auto net = std::make_unique<TinyNet>();
    net->visit("", [&](const std::string& n, Param& p) {
        if (p.value.rank() > 1) init_he_normal(p.value, seed, hash_name(n));
        p.touch();
    });
    set_bn_mode(net->backbone, BNMode::batch);
    return net;
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
