// Winograd F(4x4, 3x3) 3x3 convolutions (Backend::winograd, on by default): forward, input
// gradient and weight gradient within a few millionths of the range of a double-precision
// loop, really a different computation from the direct conv, repeatable bit for bit; shapes it
// does not cover (stride 2, 1x1, bf16) fall back to the direct conv.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>

#include "fixtures.hpp"

namespace tlcpu_test_winograd {

using namespace tlcpu;

namespace {

Tensor randn(Shape s, uint64_t seed, float sd = 1.f) {
    Tensor t(std::move(s));
    for (int64_t i = 0; i < t.size(); ++i) t[i] = sd * normal01(seed, 21, uint64_t(i));
    return t;
}

// A ReLU's output, as a bottleneck's 3x3 conv reads.
Tensor relu_randn(Shape s, uint64_t seed) {
    Tensor t = randn(std::move(s), seed);
    for (float& v : t) v = std::max(v, 0.f);
    return t;
}

// A BatchNorm with running statistics to fold in, drawn from seeds seed .. seed + 2.
template <int C>
void randomize(BatchNorm2d<C>& bn, uint64_t seed) {
    bn.weight.value = randn({C}, seed, 0.3f);
    bn.bias.value = randn({C}, seed + 1, 0.1f);
    bn.running_mean.value = randn({C}, seed + 2, 0.1f);
    for (float& v : bn.running_var.value) v = 0.5f;
}

struct WinogradGuard {
    bool saved = Backend::get().winograd;
    ~WinogradGuard() { Backend::get().winograd = saved; }
};

// y = conv(x, w) (stride 1, padding 1), dx and dw for an output gradient dy, in double.
struct Reference {
    Tensor y, dx, dw;
};
Reference conv3x3_loop(const Tensor& x, const Tensor& w, const Tensor& dy) {
    const int64_t n = x.dim(0), ci = x.dim(1), h = x.dim(2), wd = x.dim(3), co = w.dim(0);
    std::vector<double> y(size_t(n * co * h * wd)), dx(size_t(x.size())), dw(size_t(w.size()));
    for (int64_t b = 0; b < n; ++b)
        for (int64_t o = 0; o < co; ++o)
            for (int64_t i = 0; i < h; ++i)
                for (int64_t j = 0; j < wd; ++j) {
                    const int64_t yi = ((b * co + o) * h + i) * wd + j;
                    for (int64_t c = 0; c < ci; ++c)
                        for (int64_t u = 0; u < 3; ++u)
                            for (int64_t v = 0; v < 3; ++v) {
                                const int64_t r = i + u - 1, q = j + v - 1;
                                if (r < 0 || r >= h || q < 0 || q >= wd) continue;
                                const int64_t xi = ((b * ci + c) * h + r) * wd + q, wi = ((o * ci + c) * 3 + u) * 3 + v;
                                y[size_t(yi)] += double(x[xi]) * w[wi];
                                dx[size_t(xi)] += double(dy[yi]) * w[wi];
                                dw[size_t(wi)] += double(dy[yi]) * x[xi];
                            }
                }
    auto as_tensor = [](const std::vector<double>& v, Shape s) {
        Tensor t(std::move(s));
        for (int64_t i = 0; i < t.size(); ++i) t[i] = float(v[size_t(i)]);
        return t;
    };
    return {as_tensor(y, {n, co, h, wd}), as_tensor(dx, x.shape()), as_tensor(dw, w.shape())};
}

struct Run {
    Tensor y, dx, dw;
};
template <class Conv>
Run run(Conv& conv, const Tensor& x, const Tensor& dy) {
    Run r;
    r.y = to_tensor(conv.forward(view(x), Mode::training));
    const dnnl::memory* dxm = conv.backward(view(dy), true);
    REQUIRE(dxm != nullptr);
    Backend::get().wait();
    r.dx = to_tensor(*dxm);
    r.dw = conv.weight.grad;
    return r;
}

bool same_bits(const Tensor& a, const Tensor& b) {
    return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.bytes()) == 0;
}

}  // namespace

TEST_CASE("Winograd 3x3 convs: forward and both gradients match a double loop, and differ from the direct conv") {
    WinogradGuard guard;
    Conv2d<64, 64, 3, 1, 1> conv;  // ResNet-50 layer1's 3x3 width: oneDNN blocks channels by 16
    conv.weight.value = randn({64, 64, 3, 3}, 1, 1.f / 24.f);
    conv.weight.touch();
    const Tensor x = relu_randn({2, 64, 12, 10}, 2);
    const Tensor dy = randn({2, 64, 12, 10}, 3);
    const Reference ref = conv3x3_loop(x, conv.weight.value, dy);

    Backend::get().winograd = false;
    const Run direct = run(conv, x, dy);
    CHECK(conv.kernels().find("wino") == std::string::npos);
    Backend::get().winograd = true;
    const Run wino = run(conv, x, dy);
    const Run again = run(conv, x, dy);
    if (!Backend::get().has_winograd()) {  // a CPU without AVX-512: no oneDNN Winograd ...
        const std::string k = conv.kernels();
        CAPTURE(k);
        CHECK(k.find("jit_wino") == std::string::npos);
        CHECK(same_bits(wino.y, direct.y));
        CHECK(same_bits(wino.dx, direct.dx));
        if (!Backend::get().own_winograd()) {
            CHECK(same_bits(wino.dw, direct.dw));
            return;
        }
        // ... but on AVX2 tlcpu's computes this thinner conv's weight gradient
        CHECK(k.find(std::string("forward ") + Winograd2x3::name) == std::string::npos);
        CHECK(k.find(std::string("backward-weights ") + Winograd2x3::name) != std::string::npos);
        CAPTURE(max_rel_diff(direct.dw, ref.dw));
        CAPTURE(max_rel_diff(wino.dw, ref.dw));
        CHECK(max_rel_diff(wino.dw, ref.dw) < 1e-5);
        CHECK_FALSE(same_bits(wino.dw, direct.dw));
        CHECK(same_bits(wino.dw, again.dw));
        return;
    }
    // The Winograd kernels ran in all three passes ...
    const std::string k = conv.kernels();
    CAPTURE(k);
    CHECK(k.find("forward jit_wino") != std::string::npos);
    CHECK(k.find("backward-weights jit_wino") != std::string::npos);
    CHECK(k.find("backward-data jit_wino") != std::string::npos);

    CAPTURE(max_rel_diff(direct.y, ref.y));
    CAPTURE(max_rel_diff(wino.y, ref.y));
    CAPTURE(max_rel_diff(wino.dx, ref.dx));
    CAPTURE(max_rel_diff(wino.dw, ref.dw));
    CHECK(max_rel_diff(direct.y, ref.y) < 1e-5);
    CHECK(max_rel_diff(direct.dx, ref.dx) < 1e-5);
    CHECK(max_rel_diff(direct.dw, ref.dw) < 1e-5);
    // Winograd's transforms add rounding (measured ~3e-6 of the range here and on 256 channels)
    CHECK(max_rel_diff(wino.y, ref.y) < 3e-5);
    CHECK(max_rel_diff(wino.dx, ref.dx) < 3e-5);
    CHECK(max_rel_diff(wino.dw, ref.dw) < 3e-5);
    // ... and computed otherwise than the direct conv ...
    CHECK_FALSE(same_bits(wino.y, direct.y));
    CHECK_FALSE(same_bits(wino.dx, direct.dx));
    CHECK_FALSE(same_bits(wino.dw, direct.dw));
    // ... and repeat bit for bit, as the direct conv does.
    CHECK(same_bits(wino.y, again.y));
    CHECK(same_bits(wino.dx, again.dx));
    CHECK(same_bits(wino.dw, again.dw));
}

TEST_CASE("Winograd in a frozen conv with BatchNorm folded in and a ReLU post-op") {
    WinogradGuard guard;
    Conv2d<64, 64, 3, 1, 1> conv;
    BatchNorm2d<64> bn;
    conv.weight.value = randn({64, 64, 3, 3}, 4, 1.f / 24.f);
    randomize(bn, 5);
    const Tensor x = relu_randn({2, 64, 9, 14}, 8);
    Backend::get().winograd = false;
    const Tensor direct = to_tensor(conv.forward_folded(view(x), bn, true, nullptr, false, dt::f32));
    CHECK(conv.folded_kernel().find("wino") == std::string::npos);
    Backend::get().winograd = true;
    const Tensor wino = to_tensor(conv.forward_folded(view(x), bn, true, nullptr, false, dt::f32));
    if (!Backend::get().has_winograd()) return;  // (checked by the test above)
    CAPTURE(conv.folded_kernel());
    CHECK(conv.folded_kernel().find("wino") != std::string::npos);  // (here its F(2x2, 3x3) kernel: small batch)
    CAPTURE(max_rel_diff(wino, direct));
    CHECK(max_rel_diff(wino, direct) < 3e-5);
    CHECK_FALSE(same_bits(wino, direct));
    CHECK(same_bits(to_tensor(conv.forward_folded(view(x), bn, true, nullptr, false, dt::f32)), wino));
    for (float v : wino) REQUIRE(v >= 0.f);  // the ReLU post-op ran
}

TEST_CASE("convs Winograd does not cover run a direct conv") {
    WinogradGuard guard;
    // f32: a direct conv, on nChw16c activations (Winograd's layout) instead of the layout
    // oneDNN would pick, so another kernel: the same sums, rounded otherwise.
    auto both = [](auto& conv, Shape xs, uint64_t seed, bool f32) {
        conv.weight.value = randn(conv.weight.value.shape(), seed, 0.05f);
        conv.weight.touch();
        const Tensor x = randn(xs, seed + 1);
        Backend::get().winograd = false;
        const Tensor dy = randn(to_tensor(conv.forward(view(x), Mode::training)).shape(), seed + 2);
        const Run direct = run(conv, x, dy);
        Backend::get().winograd = true;
        const Run wino = run(conv, x, dy);
        CAPTURE(conv.kernels());
        CHECK(conv.kernels().find("wino") == std::string::npos);
        CAPTURE(max_rel_diff(wino.y, direct.y));
        CAPTURE(max_rel_diff(wino.dx, direct.dx));
        CAPTURE(max_rel_diff(wino.dw, direct.dw));
        const double tol = f32 ? 1e-6 : 0.0;  // the direct conv's own rounding (Winograd's: ~1e-6 to 3e-6)
        CHECK(max_rel_diff(wino.y, direct.y) <= tol);
        CHECK(max_rel_diff(wino.dx, direct.dx) <= tol);
        CHECK(max_rel_diff(wino.dw, direct.dw) <= tol);
    };
    Conv2d<64, 64, 3, 2, 1> strided;  // torchvision's layer2-4 first 3x3
    both(strided, {2, 64, 12, 12}, 10, true);
    Conv2d<64, 128, 1, 1, 0> pointwise;
    both(pointwise, {2, 64, 8, 8}, 20, true);
    // bf16 training convs have no Winograd kernel in oneDNN (where it has bf16 at all)
    if (!Backend::get().has_bf16()) return;
    Backend::get().train_precision = dt::bf16;
    struct Restore {
        ~Restore() { Backend::get().train_precision = dt::f32; }
    } restore;
    Conv2d<64, 64, 3, 1, 1> bf;
    both(bf, {2, 64, 8, 8}, 30, false);
}

// tlcpu's own F(2x2, 3x3) (backend/winograd.hpp), where oneDNN has no Winograd kernel: the
// forward, the input gradient and the weight gradient of the 3x3 convs of 256 channels and
// more (the weight gradient alone from 64: the first test case, and the next).
TEST_CASE("tlcpu's Winograd F(2x2, 3x3) on AVX2: forward and both gradients match a double loop") {
    WinogradGuard guard;
    Conv2d<256, 256, 3, 1, 1> conv;  // layer3's 3x3 width
    conv.weight.value = randn({256, 256, 3, 3}, 40, 1.f / 48.f);
    conv.weight.touch();
    const Tensor x = relu_randn({2, 256, 9, 7}, 41);  // odd sides: the last tile row and column stick out
    const Tensor dy = randn({2, 256, 9, 7}, 42);
    Backend::get().winograd = false;
    const Run direct = run(conv, x, dy);
    CHECK(conv.kernels().find(Winograd2x3::name) == std::string::npos);
    Backend::get().winograd = true;
    const Run wino = run(conv, x, dy);
    const Run again = run(conv, x, dy);
    const std::string k = conv.kernels();
    CAPTURE(k);
    if (Backend::get().has_winograd() || !Backend::get().own_winograd()) {  // oneDNN's (AVX-512), or neither
        CHECK(k.find(Winograd2x3::name) == std::string::npos);
        return;
    }
    CHECK(k.find(std::string("forward ") + Winograd2x3::name) != std::string::npos);
    CHECK(k.find(std::string("backward-data ") + Winograd2x3::name) != std::string::npos);
    CHECK(k.find(std::string("backward-weights ") + Winograd2x3::name) != std::string::npos);
    const Reference ref = conv3x3_loop(x, conv.weight.value, dy);
    CAPTURE(max_rel_diff(direct.y, ref.y));
    CAPTURE(max_rel_diff(wino.y, ref.y));
    CAPTURE(max_rel_diff(wino.dx, ref.dx));
    CHECK(max_rel_diff(wino.y, ref.y) < 1e-5);
    CHECK(max_rel_diff(wino.dx, ref.dx) < 1e-5);
    CAPTURE(max_rel_diff(direct.dw, ref.dw));
    CAPTURE(max_rel_diff(wino.dw, ref.dw));
    CHECK(max_rel_diff(wino.dw, ref.dw) < 1e-5);
    CHECK_FALSE(same_bits(wino.y, direct.y));
    CHECK_FALSE(same_bits(wino.dx, direct.dx));
    CHECK_FALSE(same_bits(wino.dw, direct.dw));
    CHECK(same_bits(wino.y, again.y));
    CHECK(same_bits(wino.dx, again.dx));
    CHECK(same_bits(wino.dw, again.dw));
    Backend::get().winograd = false;  // the plans are remade: direct again, bit for bit
    const Run back = run(conv, x, dy);
    CHECK(conv.kernels().find(Winograd2x3::name) == std::string::npos);
    CHECK(same_bits(back.y, direct.y));
    CHECK(same_bits(back.dx, direct.dx));
    CHECK(same_bits(back.dw, direct.dw));

    // 15 images: the weight gradient's products in two chunks of 8 and 7 images (its 8 MiB),
    // the second added to the first's
    const Tensor x15 = relu_randn({15, 256, 9, 7}, 46), dy15 = randn({15, 256, 9, 7}, 47);
    const Run direct15 = run(conv, x15, dy15);
    Backend::get().winograd = true;
    const Run wino15 = run(conv, x15, dy15);
    CHECK(conv.kernels().find(std::string("backward-weights ") + Winograd2x3::name) != std::string::npos);
    CAPTURE(max_rel_diff(wino15.dw, direct15.dw));
    CHECK(max_rel_diff(wino15.dw, direct15.dw) < 1e-5);
    CHECK_FALSE(same_bits(wino15.dw, direct15.dw));
    Backend::get().winograd = false;

    // layer4's width, 9 images of 7x7 in chunks of 8 and 1: the forward and the input
    // gradient (the transformed weights read turned) against the direct conv's
    Conv2d<512, 512, 3, 1, 1> wide;
    wide.weight.value = randn({512, 512, 3, 3}, 43, 1.f / 68.f);
    wide.weight.touch();
    const Tensor x9 = randn({9, 512, 7, 7}, 44), dy9 = randn({9, 512, 7, 7}, 45);
    const Run direct9 = run(wide, x9, dy9);  // (winograd is off here)
    Backend::get().winograd = true;
    const Run wino9 = run(wide, x9, dy9);
    CAPTURE(wide.kernels());
    CHECK(wide.kernels().find(std::string("backward-data ") + Winograd2x3::name) != std::string::npos);
    CHECK(wide.kernels().find("backward-weights matmul") != std::string::npos);  // 7x7: the im2col matmul's
    CAPTURE(max_rel_diff(wino9.y, direct9.y));
    CAPTURE(max_rel_diff(wino9.dx, direct9.dx));
    CHECK(max_rel_diff(wino9.y, direct9.y) < 1e-5);
    CHECK(max_rel_diff(wino9.dx, direct9.dx) < 1e-5);
    CHECK_FALSE(same_bits(wino9.dx, direct9.dx));
}

// The weight gradient's own paths: a conv with a bias (its gradient summed from the
// transformed dy), odd sides, two chunks (5 images of 29x27 at 64 channels: 210 tiles each,
// over the 8 MiB of transformed tiles), and backward without the input gradient.
TEST_CASE("tlcpu's Winograd weight gradient: bias, odd sides, two chunks, no input gradient") {
    WinogradGuard guard;
    Backend::get().winograd = true;
    Conv2d<64, 64, 3, 1, 1, true> conv;
    conv.weight.value = randn({64, 64, 3, 3}, 60, 1.f / 24.f);
    conv.bias.value = randn({64}, 61, 0.1f);
    conv.weight.touch(), conv.bias.touch();
    const Tensor x = relu_randn({5, 64, 29, 27}, 62), dy = randn({5, 64, 29, 27}, 63);
    conv.forward(view(x), Mode::training);
    grad_of(conv.bias).fill(123.f);  // overwritten, not added to
    CHECK(conv.backward(view(dy), false) == nullptr);
    Backend::get().wait();
    const std::string k = conv.kernels();
    CAPTURE(k);
    if (!Backend::get().own_winograd() || Backend::get().has_winograd()) {
        CHECK(k.find(Winograd2x3::name) == std::string::npos);
        return;
    }
    CHECK(k.find(std::string("backward-weights ") + Winograd2x3::name) != std::string::npos);
    const Reference ref = conv3x3_loop(x, conv.weight.value, dy);
    Tensor db({64});
    for (int64_t i = 0; i < dy.size(); ++i) db[(i / (29 * 27)) % 64] += dy[i];
    CAPTURE(max_rel_diff(conv.weight.grad, ref.dw));
    CAPTURE(max_rel_diff(conv.bias.grad, db));
    CHECK(max_rel_diff(conv.weight.grad, ref.dw) < 1e-5);
    CHECK(max_rel_diff(conv.bias.grad, db) < 1e-5);
}

TEST_CASE("tlcpu's Winograd F(2x2, 3x3) in a frozen conv: folded BatchNorm, ReLU, images in chunks") {
    WinogradGuard guard;
    Conv2d<512, 512, 3, 1, 1> conv;  // layer4's
    BatchNorm2d<512> bn;
    conv.weight.value = randn({512, 512, 3, 3}, 50, 1.f / 68.f);
    randomize(bn, 51);
    // 9 images of 7x7: 16 tiles each, chunks of 8 images (Winograd2x3's 4 MiB), so a chunk of 1 follows
    const Tensor x = relu_randn({9, 512, 7, 7}, 54);
    Backend::get().winograd = false;
    const Tensor direct = to_tensor(conv.forward_folded(view(x), bn, true, nullptr, false, dt::f32));
    Backend::get().winograd = true;
    const Tensor wino = to_tensor(conv.forward_folded(view(x), bn, true, nullptr, false, dt::f32));
    CAPTURE(conv.folded_kernel());
    if (Backend::get().has_winograd() || !Backend::get().own_winograd()) {
        CHECK(conv.folded_kernel() != Winograd2x3::name);
        return;
    }
    REQUIRE(conv.folded_kernel() == Winograd2x3::name);
    CHECK(Winograd2x3(512, 512, 7, 7).chunk() == 8);
    CAPTURE(max_rel_diff(wino, direct));
    CHECK(max_rel_diff(wino, direct) < 1e-5);
    CHECK_FALSE(same_bits(wino, direct));
    CHECK(same_bits(to_tensor(conv.forward_folded(view(x), bn, true, nullptr, false, dt::f32)), wino));
    CHECK(std::all_of(wino.begin(), wino.end(), [](float v) { return v >= 0.f; }));  // the ReLU ran ...
    CHECK(std::count(wino.begin(), wino.end(), 0.f) > wino.size() / 10);             // ... on real work
    // Its rule: thinner convs, and a batch of too few tiles, stay direct.
    Conv2d<128, 128, 3, 1, 1> thin;
    BatchNorm2d<128> bn128;
    thin.forward_folded(view(randn({2, 128, 28, 28}, 55)), bn128, true, nullptr, false, dt::f32);
    CHECK(thin.folded_kernel() != Winograd2x3::name);
    Tensor one({1, 512, 7, 7});
    std::copy(x.data(), x.data() + one.size(), one.data());
    const Tensor y1 = to_tensor(conv.forward_folded(view(one), bn, true, nullptr, false, dt::f32));
    CHECK(conv.folded_kernel() != Winograd2x3::name);  // 16 tiles
    Tensor first({1, 512, 7, 7});
    std::copy(wino.data(), wino.data() + first.size(), first.data());
    CHECK(max_rel_diff(y1, first) < 1e-5);
}

}  // namespace tlcpu_test_winograd
