// Chapter 4: what freezing means for backward. Phase 2 trains layer3.5 and the head; below
// layer3.5 no backward primitive runs, no gradient is allocated, no weight moves.
#include "lesson.hpp"

namespace {
template <class L>
uint64_t backward_runs(L& l) {
    uint64_t n = 0;
    tlcpu::for_each_layer(l, [&](auto& leaf) {
        if constexpr (requires { leaf.backward_runs; }) n += leaf.backward_runs;
    });
    return n;
}
template <class L>
uint64_t statistics(L& l) {  // a fingerprint of the running statistics alone
    uint64_t h = tlcpu::fnv1a64_offset;
    l.visit("", [&](const std::string&, tlcpu::Param& p) {
        if (p.kind == tlcpu::ParamKind::buffer) h = tlcpu::fnv1a64(p.value.data(), p.value.bytes(), h);
    });
    return h;
}
template <class L>
bool any_gradient(L& l) {
    bool any = false;
    l.visit("", [&](const std::string&, tlcpu::Param& p) { any |= p.grad.size() > 0; });
    return any;
}
}  // namespace

void lesson::freeze() {
    auto net = recipe_net();
    const int thawed = unfreeze(*net, {"layer3.5."});
    std::printf("unfreeze(net, {\"layer3.5.\"}): %d tensors trainable again (3 conv weights, 3 BatchNorm gammas and betas)\n", thawed);
    check(thawed == 9, "9 tensors thawed; the running statistics stay out of training");

    auto& layer3 = net->backbone.get<3>();
    auto& b4 = layer3.rest[3];  // layer3.4
    auto& b5 = layer3.rest[4];  // layer3.5
    const Tensor x = images(one_per_class);
    const std::vector<int> y{0, 1, 2, 3};
    const uint64_t stats_before = statistics(b5);
    auto& be = Backend::get();
    const uint64_t e0 = be.executed();
    const LossResult r = softmax_cross_entropy(net->forward(x, Mode::training), y);
    const uint64_t e1 = be.executed();
    net->backward(r.grad);
    const uint64_t e2 = be.executed();
    std::printf("a training step on 4 scans: forward ran %llu oneDNN primitives (the frozen part as folded\n"
                "convolutions in inference mode), backward %llu (layer3.5 and the pool's, reorders included)\n",
                (unsigned long long)(e1 - e0), (unsigned long long)(e2 - e1));

    std::printf("backward primitives per layer of layer3.5:");
    for_each_layer(b5, [&](auto& l) {
        if constexpr (requires { l.backward_runs; }) std::printf(" %llu", (unsigned long long)l.backward_runs);
    });
    std::printf("  (conv1 bn1+ReLU conv2 bn2+ReLU conv3 bn3 relu3)\n");
    bool each_once = true;
    for_each_layer(b5, [&](auto& l) {
        if constexpr (requires { l.backward_runs; }) each_once &= l.backward_runs == 1;
    });
    check(each_once, "every layer of layer3.5 ran its backward once");
    check(b5.conv1.weight.grad.size() > 0 && max_abs(b5.conv1.weight.grad) > 0,
          fmt("layer3.5.conv1.weight has a gradient, largest |g| %.3g", max_abs(b5.conv1.weight.grad)));
    std::printf("backward primitives below layer3.5: stem %llu, layer1 %llu, layer2 %llu, layer3.0-4 %llu\n",
                (unsigned long long)backward_runs(net->backbone.get<0>()), (unsigned long long)backward_runs(net->backbone.get<1>()),
                (unsigned long long)backward_runs(net->backbone.get<2>()),
                (unsigned long long)(backward_runs(layer3) - backward_runs(b5)));
    check(backward_runs(net->backbone) == backward_runs(b5), "no backward primitive ran below layer3.5");
    bool below = false;
    for (int i = 0; i < 5; ++i) layer3.with_block(i, [&](auto& blk) { below |= any_gradient(blk); });
    check(!below && !any_gradient(net->backbone.get<0>()) && !any_gradient(net->backbone.get<1>()) && !any_gradient(net->backbone.get<2>()),
          "no gradient buffer exists below layer3.5");

    const uint64_t frozen_before = fingerprint(b4), stem_before = fingerprint(net->backbone.get<0>()), b5_before = fingerprint(b5);
    const float w0 = b5.conv1.weight.value[0];
    Adam adam(1e-5);
    adam.step(*net);
    std::printf("after one Adam step at 1e-5: layer3.5.conv1.weight[0] %.9f -> %.9f\n", w0, b5.conv1.weight.value[0]);
    check(fingerprint(b4) == frozen_before && fingerprint(net->backbone.get<0>()) == stem_before,
          "layer3.4 and the stem hold the same bits (fingerprints " + fingerprint_hex(frozen_before) + ", " +
              fingerprint_hex(stem_before) + ")");
    check(fingerprint(b5) != b5_before, "layer3.5 moved");
    check(statistics(b5) == stats_before, "layer3.5's running statistics did not move (its BatchNorms stay in inference mode)");
}
