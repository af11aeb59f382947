// Frozen blocks run folded (BN in the conv weights, ReLU and residual sum as post-ops,
// the sum in place): the same numbers as the layer-by-layer path, repeatable call after
// call, and close to them in bf16.
#include <doctest/doctest.h>

#include <cstring>

#include "fixtures.hpp"

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
