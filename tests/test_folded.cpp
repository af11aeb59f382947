// Frozen blocks run folded (BN in the conv weights, ReLU and residual sum as post-ops,
// the sum in place): the same numbers as the layer-by-layer path, repeatable call after
// call, and close to them in bf16.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <map>

#include "fixtures.hpp"

namespace tlcpu_test_folded {

using namespace tlcpu;

namespace {

using Tiny = Classifier<ResNet50<Layout::v1_5, 4>, 3>;

std::unique_ptr<Tiny> pretrained(uint64_t seed) {
    auto net = std::make_unique<Tiny>();
    test::randomize_pretrained(*net, seed);
    net->head.bn.config.mode = BNMode::inference;  // so a training-mode forward computes the same function
    return net;
}

Tensor images(int n, uint64_t seed) {
    Tensor x({n, 3, 48, 48});
    for (int64_t i = 0; i < x.size(); ++i) x[i] = normal01(seed, 9, uint64_t(i));
    return x;
}

// f32 to bf16 and back, rounding to nearest even as oneDNN's reorder does.
float bf16_round(float f) {
    uint32_t u = std::bit_cast<uint32_t>(f);
    u += 0x7FFF + ((u >> 16) & 1);
    return std::bit_cast<float>(u & 0xFFFF0000u);
}

// A random problem for conv on n images of h x (h + 2) (rows and columns must not be swapped
// anywhere): weights from seed, the input x from seed + 1, the output gradient dy from seed + 2.
template <class C>
std::pair<Tensor, Tensor> conv_problem(C& conv, int n, int h, uint64_t seed) {
    constexpr int K = C::kernel, S = C::stride, P = C::padding;
    init_he_normal(conv.weight.value, 1, seed);
    conv.weight.touch();
    const int w = h + 2;
    Tensor x({n, C::in_channels, h, w}), dy({n, C::out_channels, conv_out(h, K, S, P), conv_out(w, K, S, P)});
    for (int64_t i = 0; i < x.size(); ++i) x[i] = normal01(seed + 1, 0, uint64_t(i));
    for (int64_t i = 0; i < dy.size(); ++i) dy[i] = normal01(seed + 2, 0, uint64_t(i));
    return {x, dy};
}

// A conv's weight gradient [O][I][K][K] as a double-precision sum over the batch, x and dy
// NCHW, each value passed through q first (bf16_round, or as it is).
template <class Round>
std::vector<double> weight_grad_sum(const Tensor& x, const Tensor& dy, int K, int S, int P, Round q) {
    const int N = int(x.shape()[0]), I = int(x.shape()[1]), h = int(x.shape()[2]), w = int(x.shape()[3]);
    const int O = int(dy.shape()[1]), oh = int(dy.shape()[2]), ow = int(dy.shape()[3]);
    std::vector<double> g(size_t(O) * I * K * K);
    for (int o = 0; o < O; ++o)
        for (int i = 0; i < I; ++i)
            for (int ky = 0; ky < K; ++ky)
                for (int kx = 0; kx < K; ++kx) {
                    double sum = 0;
                    for (int n = 0; n < N; ++n)
                        for (int y = 0; y < oh; ++y)
                            for (int z = 0; z < ow; ++z) {
                                const int iy = y * S - P + ky, ix = z * S - P + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                                sum += double(q(dy[((int64_t(n) * O + o) * oh + y) * ow + z])) *
                                       q(x[((int64_t(n) * I + i) * h + iy) * w + ix]);
                            }
                    g[((size_t(o) * I + i) * K + ky) * K + kx] = sum;
                }
    return g;
}

struct PrecisionGuard {
    ~PrecisionGuard() { Backend::get().frozen_precision = dt::f32; }
};

}  // namespace

TEST_CASE("folded inference equals the layer-by-layer forward and repeats bit for bit") {
    auto net = pretrained(4);
    const Tensor x = images(3, 5), x2 = images(2, 6);
    const Tensor layered = net->forward(x, Mode::training);  // every layer, BN on running statistics
    const Tensor folded = net->forward(x, Mode::inference);
    CHECK(max_rel_diff(layered, folded) < 1e-5);
    CHECK(max_rel_diff(layered, folded) > 0);  // it is another computation, not the same one
    // The residual sums accumulate in place into earlier blocks' outputs: nothing of one call
    // may leak into the next, whatever ran in between.
    net->forward(x2, Mode::inference);
    net->forward(x, Mode::training);
    const Tensor again = net->forward(x, Mode::inference);
    CHECK(std::memcmp(again.data(), folded.data(), folded.bytes()) == 0);
    // Changing a weight refolds it.
    net->backbone.get<2>().rest[0].bn2.weight.value[0] += 0.5f;
    net->backbone.get<2>().rest[0].bn2.weight.touch();
    CHECK(max_rel_diff(net->forward(x, Mode::training), net->forward(x, Mode::inference)) < 1e-5);
    CHECK(max_rel_diff(net->forward(x, Mode::inference), folded) > 1e-4);
}

TEST_CASE("bf16 frozen blocks stay close to f32 and leave trainable layers in f32") {
    PrecisionGuard guard;
    auto net = pretrained(7);
    freeze_all(net->backbone);  // frozen layers are what runs in bf16
    const Tensor x = images(4, 8);
    const Tensor f32 = net->forward(x, Mode::inference);
    Backend::get().frozen_precision = dt::bf16;
    if (!Backend::get().has_bf16()) {  // a CPU without AVX-512: refused by name
        CHECK_THROWS_WITH_AS(net->forward(x, Mode::inference), doctest::Contains("bf16 needs a CPU with AVX-512"), Error);
        return;
    }
    const Tensor bf = net->forward(x, Mode::inference);
    CAPTURE(max_rel_diff(f32, bf));
    CHECK(max_rel_diff(f32, bf) < 5e-2);
    CHECK(max_rel_diff(f32, bf) > 1e-5);  // the bf16 kernels did run
    // A trainable network evaluated in inference mode keeps the f32 it trains in.
    unfreeze(*net, {"stem", "layer1.", "layer2.", "layer3.", "layer4."});
    const Tensor all_trainable = net->forward(x, Mode::inference);
    CHECK(std::memcmp(all_trainable.data(), f32.data(), f32.bytes()) == 0);
    // Phase-2 shape: layer4 trains in f32 on the bf16 prefix's output.
    freeze_all(net->backbone);
    CHECK(max_rel_diff(net->forward(x, Mode::inference), bf) == 0);
    unfreeze(*net, {"layer4."});
    std::vector<int> y{0, 1, 2, 0};
    net->backward(softmax_cross_entropy(net->forward(x, Mode::training), y).grad);
    const Tensor g_bf = net->backbone.get<4>().first.conv1.weight.grad;
    Backend::get().frozen_precision = dt::f32;
    net->backward(softmax_cross_entropy(net->forward(x, Mode::training), y).grad);
    const Tensor g_f32 = net->backbone.get<4>().first.conv1.weight.grad;
    CAPTURE(max_rel_diff(g_f32, g_bf));
    CHECK(max_rel_diff(g_f32, g_bf) < 1e-1);
    CHECK(max_rel_diff(g_f32, g_bf) > 0);
}

// f32 computes small 3x3 convs' weight gradients as a matmul over im2col rows where the
// activations are nChw8c (AVX2's layout; Conv2d::make_backward); whichever path runs, the
// weight and input gradients are double-precision sums to f32 rounding, and repeat bit for bit.
TEST_CASE("f32 weight gradients, by oneDNN's conv kernel or a matmul, equal a double-precision sum") {
    struct Guard {
        bool winograd = Backend::get().winograd;
        ~Guard() { Backend::get().winograd = winograd; }
    } guard;
    Backend::get().winograd = false;  // the direct conv's passes (Winograd's rounding is its own test)
    const bool avx2 = dnnl::get_effective_cpu_isa() == dnnl::cpu_isa::avx2;
    auto rel = [](const Tensor& got, const std::vector<double>& want) {
        double e = 0, r = 0;
        for (size_t i = 0; i < want.size(); ++i) {
            const double d = got[int64_t(i)] - want[i];
            e += d * d, r += want[i] * want[i];
        }
        return std::sqrt(e / r);
    };
    auto check_conv = [&](auto& conv, int h, bool matmul) {
        using C = std::remove_reference_t<decltype(conv)>;
        constexpr int K = C::kernel, S = C::stride, P = C::padding, I = C::in_channels, O = C::out_channels;
        CAPTURE(K);
        CAPTURE(S);
        CAPTURE(h);
        const auto [x, dy] = conv_problem(conv, 3, h, 5);
        const int w = h + 2, oh = int(dy.shape()[2]), ow = int(dy.shape()[3]);
        bool blocks8 = false;  // activations in blocks of 8 channels, which the matmul reads
        auto pass = [&] {
            const dnnl::memory& y = conv.forward(view(x), Mode::training);
            blocks8 = y.get_desc() == dnnl::memory::desc(y.get_desc().dims(), dt::f32, dnnl::memory::format_tag::aBcd8b);
            // with the input gradient too: backward-data runs after the matmul, on pool buffers
            const Tensor dx = to_tensor(*conv.backward(view(dy), true));
            return std::pair{conv.weight.grad, dx};
        };
        const auto [g, dx] = pass();
        const auto [g2, dx2] = pass();
        CHECK(std::memcmp(g.data(), g2.data(), g.bytes()) == 0);
        CHECK(std::memcmp(dx.data(), dx2.data(), dx.bytes()) == 0);
        const bool ran = conv.kernels().find("backward-weights matmul") != std::string::npos;
        CAPTURE(conv.kernels());
        if (avx2) CHECK(blocks8);  // so on this kind of CPU the matmul must run where the rule says
        CHECK(ran == (matmul && blocks8));
        CAPTURE(rel(g, weight_grad_sum(x, dy, K, S, P, [](float v) { return v; })));
        CHECK(rel(g, weight_grad_sum(x, dy, K, S, P, [](float v) { return v; })) < 1e-6);
        // dx[n][i][iy][ix] = sum of dy[n][o][y][z] W[o][i][ky][kx] over iy = y S - P + ky, ix likewise
        std::vector<double> want_dx(size_t(dx.size()), 0.0);
        const Tensor& W = conv.weight.value;
        for (int n = 0; n < 3; ++n)
            for (int o = 0; o < O; ++o)
                for (int y = 0; y < oh; ++y)
                    for (int z = 0; z < ow; ++z)
                        for (int ky = 0; ky < K; ++ky)
                            for (int kx = 0; kx < K; ++kx) {
                                const int iy = y * S - P + ky, ix = z * S - P + kx;
                                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                                const double d = dy[((int64_t(n) * O + o) * oh + y) * ow + z];
                                for (int i = 0; i < I; ++i)
                                    want_dx[size_t(((int64_t(n) * I + i) * h + iy) * w + ix)] +=
                                        d * W[((int64_t(o) * I + i) * K + ky) * K + kx];
                            }
        CAPTURE(rel(dx, want_dx));
        CHECK(rel(dx, want_dx) < 1e-6);
    };
    Conv2d<24, 40, 3, 1, 1> c3;
    check_conv(c3, 15, false);  // 15 x 17 out: oneDNN's kernel
    check_conv(c3, 5, true);    // 5 x 7 out: the matmul
    Conv2d<24, 40, 3, 2, 1> c3s2;
    check_conv(c3s2, 15, true);  // strided
    Conv2d<24, 40, 1> c1;
    check_conv(c1, 5, false);  // f32 1x1s keep oneDNN's kernel
    Conv2d<20, 40, 3, 1, 1> c20;
    check_conv(c20, 5, false);  // 20 channels are not whole blocks of 8
}

TEST_CASE("bf16 trainable convolutions: close to f32, f32 weight gradients, repeatable") {
    struct Guard {
        ~Guard() { Backend::get().train_precision = dt::f32; }
    } guard;
    auto rel = [](const Tensor& a, const Tensor& b) {
        double e = 0, r = 0;
        for (int64_t i = 0; i < a.size(); ++i) e += double(a[i] - b[i]) * (a[i] - b[i]), r += double(a[i]) * a[i];
        return std::sqrt(e / r);
    };
    // One conv: output, input gradient and weight gradient against f32. bf16 keeps 8 bits
    // of mantissa, accumulation stays f32: relative L2 errors of a few 1e-3. The weight
    // gradient, by oneDNN's conv kernel or by a matmul (Conv2d::make_backward), must also
    // equal a double-precision sum of the same bf16 products to f32 rounding.
    const unsigned isa = unsigned(dnnl::get_effective_cpu_isa()), with_amx = unsigned(dnnl::cpu_isa::avx512_core_amx);
    const bool amx = (isa & with_amx) == with_amx;  // (each ISA's bits include those of the ones below it)
    // Images are h x (h + 2): rows and columns must not be swapped anywhere.
    auto check_conv = [&](auto& conv, int h, bool matmul) {
        using C = std::remove_reference_t<decltype(conv)>;
        constexpr int K = C::kernel, S = C::stride, P = C::padding;
        CAPTURE(K);
        CAPTURE(S);
        CAPTURE(h);
        const auto [x, dy] = conv_problem(conv, 4, h, 2);
        auto pass = [&] {
            std::array<Tensor, 3> r;
            r[0] = to_tensor(conv.forward(view(x), Mode::training));
            r[1] = to_tensor(*conv.backward(view(dy), true));
            r[2] = conv.weight.grad;
            return r;
        };
        Backend::get().train_precision = dt::f32;
        const auto f32 = pass();
        Backend::get().train_precision = dt::bf16;
        const auto bf = pass(), again = pass();
        // The matmul needs NHWC bf16 activations and a non-reference bf16 matmul: what oneDNN
        // gives on AMX. Elsewhere it may fall back, but never where the rule says no.
        const bool ran = conv.kernels().find("backward-weights matmul") != std::string::npos;
        CAPTURE(conv.kernels());
        if (amx) CHECK(ran == matmul);
        else CHECK((!ran || matmul));
        for (int k = 0; k < 3; ++k) {
            CAPTURE(k);
            CAPTURE(rel(f32[size_t(k)], bf[size_t(k)]));
            CHECK(rel(f32[size_t(k)], bf[size_t(k)]) < 1e-2);
            CHECK(rel(f32[size_t(k)], bf[size_t(k)]) > 1e-5);  // the bf16 kernels did run
            CHECK(std::memcmp(bf[size_t(k)].data(), again[size_t(k)].data(), bf[size_t(k)].bytes()) == 0);
        }
        // the weight gradient against a double-precision sum of the same bf16 products
        Tensor want(conv.weight.grad.shape());
        const std::vector<double> sum = weight_grad_sum(x, dy, K, S, P, bf16_round);
        for (size_t i = 0; i < sum.size(); ++i) want[int64_t(i)] = float(sum[i]);
        CAPTURE(rel(want, bf[2]));
        CHECK(rel(want, bf[2]) < 1e-6);
    };
    if (!Backend::get().has_bf16()) {  // a CPU without AVX-512: refused by name
        Conv2d<32, 48, 3, 1, 1> c;
        Backend::get().train_precision = dt::bf16;
        CHECK_THROWS_WITH_AS(c.forward(view(Tensor({1, 32, 5, 5})), Mode::training),
                             doctest::Contains("bf16 needs a CPU with AVX-512"), Error);
        return;
    }
    // oneDNN's kernel where the image is large, a matmul where it is small (at most 7x7
    // out), strided or 1x1; a 7x7 kernel (the stem's) always oneDNN's
    Conv2d<32, 48, 3, 1, 1> c3;
    check_conv(c3, 15, false);
    check_conv(c3, 5, true);  // 5 x 7 out
    Conv2d<32, 48, 3, 2, 1> c3s2;
    check_conv(c3s2, 15, true);
    Conv2d<32, 48, 1> c1;
    check_conv(c1, 15, true);
    Conv2d<32, 48, 1, 2> c1s2;
    check_conv(c1s2, 15, true);
    Conv2d<3, 16, 7, 2, 3> stem;
    check_conv(stem, 9, false);
    // A phase-2 step of the whole network runs, repeats bit for bit, and every trainable
    // weight gets a gradient (this random net amplifies any rounding, so no closeness here:
    // the recipe's accuracy is the end-to-end check, see README).
    auto net = pretrained(9);
    freeze_all(net->backbone);
    unfreeze(*net, {"layer3.5.", "layer4."});
    const Tensor xs = images(4, 10);
    std::vector<int> y{0, 1, 2, 0};
    std::vector<std::string> names;
    auto step = [&] {
        std::vector<Tensor> g;
        names.clear();
        net->backward(softmax_cross_entropy(net->forward(xs, Mode::training), y).grad);
        net->visit("", [&](const std::string& n, Param& p) {
            if (p.trainable && p.kind == ParamKind::weight) g.push_back(p.grad), names.push_back(n);
        });
        return g;
    };
    const auto g1 = step(), g2 = step();
    REQUIRE(g1.size() == g2.size());
    for (size_t i = 0; i < g1.size(); ++i) {
        CAPTURE(names[i]);
        CHECK(std::memcmp(g1[i].data(), g2[i].data(), g1[i].bytes()) == 0);
        CHECK(rel(g1[i], Tensor(g1[i].shape())) > 0);  // not all zero
    }
}

}  // namespace tlcpu_test_folded
