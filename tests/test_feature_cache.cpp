// Feature caching: where the frozen prefix ends, and that training from its cached output
// gives the same logits and gradients as running the whole network on the images.
#include <doctest/doctest.h>

#include <cstring>

#include "fixtures.hpp"

namespace tlcpu_test_feature_cache {

using namespace tlcpu;

namespace {

using Tiny = Classifier<ResNet50<Layout::v1, 4>, 3>;

std::unique_ptr<Tiny> pretrained(uint64_t seed) {
    auto net = std::make_unique<Tiny>();
    test::randomize_pretrained(*net, seed);
    freeze_all(net->backbone);
    return net;
}

TensorSource images(int n, uint64_t seed) {
    Tensor x({n, 3, 40, 40});
    std::vector<int> y(static_cast<size_t>(n));
    for (int64_t i = 0; i < x.size(); ++i) x[i] = normal01(seed, 7, uint64_t(i));
    for (int i = 0; i < n; ++i) y[size_t(i)] = i % 3;
    return TensorSource(std::move(x), std::move(y));
}

// One training step's logits and every trainable parameter's gradient.
struct Step {
    Tensor logits;
    std::map<std::string, Tensor> grads;
};
template <class M>
Step step(M& model, Tiny& net, const Tensor& x, const std::vector<int>& y) {
    Step s;
    s.logits = model.forward(x, Mode::training);
    model.backward(softmax_cross_entropy(s.logits, y).grad);
    net.visit("", [&](const std::string& n, Param& p) {
        if (p.trainable) s.grads[n] = p.grad;
    });
    return s;
}

}  // namespace

TEST_CASE("frozen_prefix ends before the first block that trains or uses batch statistics") {
    auto net = pretrained(1);
    CHECK(frozen_prefix(net->backbone) == Cut{5, 0});  // all frozen: the whole backbone
    unfreeze(*net, {"layer3.5."});
    CHECK(frozen_prefix(net->backbone) == Cut{3, 5});
    unfreeze(*net, {"layer3.2.conv2."});
    CHECK(frozen_prefix(net->backbone) == Cut{3, 2});
    freeze_all(net->backbone);
    set_bn_mode(net->backbone.get<4>(), BNMode::batch);  // frozen weights, batch statistics
    CHECK(frozen_prefix(net->backbone) == Cut{4, 0});
    unfreeze(*net, {"stem"});
    CHECK(frozen_prefix(net->backbone) == Cut{0, 0});
}

TEST_CASE("training from a cached prefix equals training the whole network on the images") {
    auto src = images(6, 3);
    Tensor x;
    std::vector<int> y;
    src.load({0, 1, 2, 3, 4, 5}, 0, x, y);
    // Mid-stage cut with inference-mode BN, and a stage-boundary cut whose stage trains
    // with batch statistics (the --backbone c5 recipe with a fresh layer4).
    for (int variant = 0; variant < 2; ++variant) {
        CAPTURE(variant);
        auto whole = pretrained(2), cached = pretrained(2);
        for (Tiny* n : {whole.get(), cached.get()}) {
            if (variant == 0) {
                unfreeze(*n, {"layer3.4.", "layer3.5.", "layer4."});
            } else {
                unfreeze(*n, {"layer4."});
                set_bn_mode(n->backbone.get<4>(), BNMode::batch);
            }
        }
        const Cut cut = frozen_prefix(cached->backbone);
        CHECK(cut == (variant == 0 ? Cut{3, 4} : Cut{4, 0}));
        auto acts = cache_prefix(*cached, cut, src, 4);  // two batches, the last one short
        CHECK(prefix_bytes(*cached, cut, 6, 40) == 6 * 64 * 3 * 3 * 4);  // layer3's output at 40 px: 64 x 3 x 3
        Tensor a;
        std::vector<int> ay;
        acts.load({0, 1, 2, 3, 4, 5}, 0, a, ay);
        CHECK(ay == y);
        FromCut from(*cached, cut);
        const Step s1 = step(*whole, *whole, x, y), s2 = step(from, *cached, a, y);
        // (the cache ran batches of 4 and 2, the whole network one of 6: Winograd convs round
        // an image's output differently in another batch, ~1e-5 here)
        CHECK(max_rel_diff(s1.logits, s2.logits) < 3e-5);
        REQUIRE(s1.grads.size() == s2.grads.size());
        CHECK(s1.grads.size() > 10);
        for (const auto& [n, g] : s1.grads) {
            CAPTURE(n);
            CHECK(max_rel_diff(g, s2.grads.at(n)) < 1e-4);
        }
        // Inference: pooled features from the cache are the head's input of a full forward.
        auto pooled = pooled_features(*cached, cut, acts, 4);
        whole->forward(x, Mode::inference);
        Tensor f;
        std::vector<int> fy;
        pooled.load({0, 1, 2, 3, 4, 5}, 0, f, fy);
        CHECK(max_rel_diff(f, whole->head.features()) < 1e-5);
    }
}

TEST_CASE("the cache keeps a bf16 or int8 prefix's output in its own type, losing nothing") {
    struct Guard {
        ~Guard() { Backend::get().frozen_precision = dt::f32; }
    } guard;
    auto net = pretrained(5);
    unfreeze(*net, {"layer3.5."});
    const Cut cut = frozen_prefix(net->backbone);
    auto src = images(5, 4);
    Tensor x;
    std::vector<int> y;
    src.load({0, 1, 2, 3, 4}, 0, x, y);
    calibrate_int8(net->backbone, {x});
    for (dt t : {dt::f32, dt::bf16, dt::s8}) {
        CAPTURE(int(t));
        Backend::get().frozen_precision = t;
        if (t == dt::bf16 && !Backend::get().has_bf16()) {  // a CPU without AVX-512: refused by name
            CHECK_THROWS_WITH_AS(cache_prefix(*net, cut, src, 2), doctest::Contains("bf16 needs a CPU with AVX-512"), Error);
            continue;
        }
        const size_t elem = t == dt::f32 ? 4 : t == dt::bf16 ? 2 : 1;
        auto acts = cache_prefix(*net, cut, src, 2);  // three batches, the last one short
        CHECK(acts.type() == (t == dt::s8 ? dt::u8 : t));
        CHECK(acts.bytes() == 5 * 64 * 3 * 3 * elem);
        CHECK(prefix_bytes(*net, cut, 5, 40) == int64_t(acts.bytes()));
        Tensor a;
        std::vector<int> ay;
        acts.load({4, 0, 2}, 0, a, ay);
        CHECK(ay == std::vector<int>{y[4], y[0], y[2]});
        // The same numbers as the prefix's output converted to f32 at the network's edge, for
        // the same batches (Winograd convs round an image's output differently in another batch).
        const int64_t per = 64 * 3 * 3, img = x.size() / x.dim(0);
        Tensor direct({5, 64, 3, 3});
        for (int64_t from = 0; from < 5; from += 2) {
            const int64_t n = std::min<int64_t>(2, 5 - from);
            Tensor part({n, x.dim(1), x.dim(2), x.dim(3)});
            std::memcpy(part.data(), x.data() + from * img, size_t(n * img) * sizeof(float));
            const Tensor out = to_tensor(forward_prefix(net->backbone, view(part), cut));
            std::memcpy(direct.data() + from * per, out.data(), out.bytes());
        }
        for (int i : {0, 1, 2}) {
            const int from = i == 0 ? 4 : i == 1 ? 0 : 2;
            CHECK(std::memcmp(a.data() + i * per, direct.data() + from * per, size_t(per) * sizeof(float)) == 0);
        }
    }
}

}  // namespace tlcpu_test_feature_cache
