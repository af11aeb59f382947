// Each oneDNN-backed layer against a plain loop implementation on odd shapes: kernels 1, 3
// and 7, strides 1 and 2, padding, ceil mode, batch > 1, H != W.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "fixtures.hpp"

namespace tlcpu_test_layers_reference {

using namespace tlcpu;

namespace {

Tensor random_tensor(Shape s, uint64_t seed) {
    Tensor t(std::move(s));
    for (int64_t i = 0; i < t.size(); ++i) t[i] = normal01(seed, 7, uint64_t(i));
    return t;
}

Tensor conv_loop(const Tensor& x, const Tensor& w, const Tensor* b, int s, int p) {
    const int64_t n = x.dim(0), ci = x.dim(1), h = x.dim(2), wd = x.dim(3);
    const int64_t co = w.dim(0), k = w.dim(2);
    const int64_t oh = (h + 2 * p - k) / s + 1, ow = (wd + 2 * p - k) / s + 1;
    Tensor y({n, co, oh, ow});
    for (int64_t b_ = 0; b_ < n; ++b_)
        for (int64_t o = 0; o < co; ++o)
            for (int64_t i = 0; i < oh; ++i)
                for (int64_t j = 0; j < ow; ++j) {
                    double acc = b ? (*b)[o] : 0.0;
                    for (int64_t c = 0; c < ci; ++c)
                        for (int64_t u = 0; u < k; ++u)
                            for (int64_t v = 0; v < k; ++v) {
                                int64_t r = i * s - p + u, q = j * s - p + v;
                                if (r < 0 || r >= h || q < 0 || q >= wd) continue;
                                acc += double(x[((b_ * ci + c) * h + r) * wd + q]) * w[((o * ci + c) * k + u) * k + v];
                            }
                    y[((b_ * co + o) * oh + i) * ow + j] = float(acc);
                }
    return y;
}

// PyTorch's max_pool2d: padding never wins, ceil mode adds windows that start inside.
Tensor maxpool_loop(const Tensor& x, int k, int s, int p, bool ceil) {
    const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
    auto out = [&](int64_t in) {
        int64_t o = ceil ? (in + 2 * p - k + s - 1) / s + 1 : (in + 2 * p - k) / s + 1;
        if (ceil && (o - 1) * s >= in + p) --o;
        return o;
    };
    const int64_t oh = out(h), ow = out(w);
    Tensor y({n, c, oh, ow});
    for (int64_t plane = 0; plane < n * c; ++plane)
        for (int64_t i = 0; i < oh; ++i)
            for (int64_t j = 0; j < ow; ++j) {
                float m = -std::numeric_limits<float>::infinity();
                for (int64_t u = 0; u < k; ++u)
                    for (int64_t v = 0; v < k; ++v) {
                        int64_t r = i * s - p + u, q = j * s - p + v;
                        if (r >= 0 && r < h && q >= 0 && q < w) m = std::max(m, x[(plane * h + r) * w + q]);
                    }
                y[(plane * oh + i) * ow + j] = m;
            }
    return y;
}

template <int In, int Out, int K, int S, int P, bool Bias>
void check_conv(int64_t n, int64_t h, int64_t w, uint64_t seed) {
    Conv2d<In, Out, K, S, P, Bias> conv;
    conv.weight.value = random_tensor({Out, In, K, K}, seed);
    if constexpr (Bias) conv.bias.value = random_tensor({Out}, seed + 1);
    Tensor x = random_tensor({n, In, h, w}, seed + 2);
    Tensor got = to_tensor(conv.forward(view(x), Mode::inference));
    Tensor want = conv_loop(x, conv.weight.value, Bias ? &conv.bias.value : nullptr, S, P);
    INFO("Conv2d<", In, ",", Out, ",", K, ",", S, ",", P, ",", Bias, "> on ", to_string(x.shape()));
    REQUIRE(got.shape() == want.shape());
    CHECK(max_rel_diff(got, want) < 1e-5);

    // A changed weight must reach the primitive (the blocked copy is refreshed by version).
    for (float& v : conv.weight.value) v *= -2.f;
    conv.weight.touch();
    Tensor got2 = to_tensor(conv.forward(view(x), Mode::inference));
    CHECK(max_rel_diff(got2, conv_loop(x, conv.weight.value, Bias ? &conv.bias.value : nullptr, S, P)) < 1e-5);
}

template <int K, int S, int P, bool Ceil>
void check_maxpool(int64_t h, int64_t w) {
    MaxPool2d<K, S, P, Ceil> pool;
    Tensor x = random_tensor({2, 5, h, w}, uint64_t(h * 100 + w));
    Tensor got = to_tensor(pool.forward(view(x), Mode::inference));
    Tensor want = maxpool_loop(x, K, S, P, Ceil);
    INFO("MaxPool2d<", K, ",", S, ",", P, ",", Ceil, "> on ", h, "x", w);
    REQUIRE(got.shape() == want.shape());
    CHECK(max_rel_diff(got, want) == 0.0);
    // Training mode keeps a workspace for backward but must compute the same values.
    CHECK(max_rel_diff(to_tensor(pool.forward(view(x), Mode::training)), want) == 0.0);
}

}  // namespace

TEST_CASE("Conv2d matches a plain loop for kernels 1, 3, 7, strides 1, 2, padding and bias") {
    check_conv<3, 5, 1, 1, 0, false>(2, 9, 7, 1);
    check_conv<3, 5, 1, 2, 0, false>(2, 9, 7, 2);
    check_conv<4, 6, 3, 1, 1, false>(3, 11, 13, 3);
    check_conv<4, 6, 3, 2, 1, true>(3, 11, 13, 4);
    check_conv<3, 8, 7, 2, 3, false>(2, 17, 15, 5);
    check_conv<5, 3, 3, 2, 0, true>(1, 10, 9, 6);
    check_conv<16, 32, 3, 1, 1, false>(2, 7, 5, 7);  // channel counts oneDNN blocks by 16
}

TEST_CASE("MaxPool2d matches PyTorch's rule with padding and ceil mode") {
    check_maxpool<3, 2, 0, true>(112, 112);   // caffe stem: 112 -> 56
    check_maxpool<3, 2, 1, false>(112, 112);  // torchvision stem: 112 -> 56
    check_maxpool<3, 2, 0, true>(8, 9);       // ceil adds a partial last window
    check_maxpool<3, 2, 0, false>(8, 9);
    check_maxpool<2, 2, 0, true>(5, 7);
    check_maxpool<3, 3, 1, true>(10, 11);     // ceil window that would start in the padding is dropped
    check_maxpool<1, 1, 0, false>(4, 3);
    CHECK(pool_out(112, 3, 2, 0, true) == 56);
    CHECK(pool_out(10, 3, 3, 1, true) == 4);
}

TEST_CASE("BatchNorm2d, ReLU, global average pool and the residual add match their formulas") {
    constexpr int C = 6;
    Tensor x = random_tensor({3, C, 5, 7}, 11);
    BatchNorm2d<C> bn;
    bn.weight.value = random_tensor({C}, 12);
    bn.bias.value = random_tensor({C}, 13);
    bn.running_mean.value = random_tensor({C}, 14);
    for (int c = 0; c < C; ++c) bn.running_var.value[c] = 0.5f + 0.1f * float(c);
    bn.config.eps = 1e-3f;
    Tensor y = to_tensor(bn.forward(view(x), Mode::inference));
    Tensor want(x.shape());
    for (int64_t i = 0; i < x.size(); ++i) {
        int64_t c = (i / 35) % C;
        want[i] = (x[i] - bn.running_mean.value[c]) / std::sqrt(bn.running_var.value[c] + 1e-3f) * bn.weight.value[c] +
                  bn.bias.value[c];
    }
    CHECK(max_rel_diff(y, want) < 1e-5);

    ReLU relu;
    Tensor r = to_tensor(relu.forward(view(x), Mode::inference));
    for (int64_t i = 0; i < x.size(); ++i) REQUIRE(r[i] == std::max(x[i], 0.f));

    GlobalAvgPool gap;
    CHECK(max_rel_diff(gap.forward(view(x), Mode::inference), test::spatial_mean(x)) < 1e-6);

    Add add;
    Tensor x2 = random_tensor(x.shape(), 15);
    Tensor s = to_tensor(add.forward(view(x), view(x2)));
    for (int64_t i = 0; i < x.size(); ++i) REQUIRE(s[i] == x[i] + x2[i]);
}

TEST_CASE("Dense, BatchNorm1d and softmax on the head") {
    Dense<5, 3> fc;
    fc.weight.value = random_tensor({3, 5}, 21);
    fc.bias.value = random_tensor({3}, 22);
    Tensor x = random_tensor({4, 5}, 23);
    const Tensor& y = fc.forward(x, Mode::inference);
    for (int i = 0; i < 4; ++i)
        for (int o = 0; o < 3; ++o) {
            double acc = fc.bias.value[o];
            for (int k = 0; k < 5; ++k) acc += double(x[i * 5 + k]) * fc.weight.value[o * 5 + k];
            CHECK(y[i * 3 + o] == doctest::Approx(acc).epsilon(1e-5));
        }

    BatchNorm1d<5> bn;  // batch mode in training: zero mean, unit (biased) variance per feature
    const Tensor& z = bn.forward(x, Mode::training);
    for (int k = 0; k < 5; ++k) {
        double m = 0, v = 0;
        for (int i = 0; i < 4; ++i) m += z[i * 5 + k] / 4.0;
        for (int i = 0; i < 4; ++i) v += (z[i * 5 + k] - m) * (z[i * 5 + k] - m) / 4.0;
        CHECK(m == doctest::Approx(0).scale(1));
        CHECK(v == doctest::Approx(1.0 / (1.0 + 1e-5 / v)).epsilon(1e-3));
    }

    Tensor logits({2, 3});
    float vals[6] = {1000.f, 1001.f, 999.f, -5.f, 0.f, 5.f};  // large logits must not overflow
    std::copy(vals, vals + 6, logits.data());
    Tensor p = softmax(logits);
    CHECK(p[0] + p[1] + p[2] == doctest::Approx(1.0));
    CHECK(p[1] == doctest::Approx(std::exp(1.0) / (1 + std::exp(1.0) + std::exp(-1.0))));
    CHECK(std::isfinite(p[3]));
    CHECK(p[5] > p[4]);

    Dropout drop;
    drop.p = 0.5f;
    Tensor ones({64, 32}, 1.f);
    const Tensor& d = drop.forward(ones, Mode::training);
    int zeros = 0;
    for (float v : d) {
        REQUIRE((v == 0.f || v == 2.f));
        zeros += v == 0.f;
    }
    CHECK(zeros > 900);
    CHECK(zeros < 1150);
    CHECK(&drop.forward(ones, Mode::inference) == &ones);
}

TEST_CASE("copying a default tensor (an unallocated gradient) gives an empty tensor") {
    Param p({3}, 1.f);
    Param q = p;  // p.grad was never allocated
    CHECK(q.grad.size() == 0);
    CHECK(q.value[2] == 1.f);
    Tensor x({3}, 2.f);
    x = Tensor{};
    CHECK(x.size() == 0);
    x = q.value;
    CHECK(x.size() == 3);
}

}  // namespace tlcpu_test_layers_reference
