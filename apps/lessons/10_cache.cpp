// Chapter 10: feature caching. Without augmentation the frozen prefix maps each scan to the
// same activation every epoch: compute it once and train from there.
#include "lesson.hpp"

void lesson::cache() {
    auto net = recipe_net();
    unfreeze(*net, {"layer3.5."});  // phase 2's configuration: what stays frozen in both phases
    const Cut cut = frozen_prefix(net->backbone);
    std::printf("frozen_prefix: child %d (layer3), block %d: the stem, layer1, layer2 and layer3.0-4 never change\n",
                cut.child, cut.block);
    check(cut == Cut{3, 5}, "the cut sits before layer3.5");
    const int64_t per = prefix_bytes(*net, cut, 1, 224);
    std::printf("the cache holds %lld bytes per scan (1024 x 14 x 14 floats); the 5,712 training scans: %.2f GB\n",
                (long long)per, double(per) * 5712 / 1e9);
    check(per == 1024 * 14 * 14 * 4, "802,816 bytes per scan");

    const Tensor x = images(one_per_class);
    const std::vector<int> y{0, 1, 2, 3};
    TensorSource scans(x, y);
    ActivationCache cached = cache_prefix(*net, cut, scans, 4);
    FromCut<Net> from_cut(*net, cut);
    Tensor a;
    std::vector<int> labels;
    cached.load({0, 1, 2, 3}, 0, a, labels);
    std::printf("cached activations %s\n", to_string(a.shape()).c_str());
    const Tensor whole = net->forward(x, Mode::inference);
    const Tensor resumed = from_cut.forward(a, Mode::inference);
    const double d = max_rel_diff(resumed, whole);
    std::printf("logits from the cache vs from the scans: max relative difference %.2g\n", d);
    check(d <= 1e-6, "the network run from the cache gives the logits of the whole network");

    // Training from the cache: the same gradients for layer3.5 as from the scans.
    auto grads = [&](auto& model, const Tensor& input) {
        seed_dropout(*net, 1, 0);
        model.backward(softmax_cross_entropy(model.forward(input, Mode::training), y).grad);
        return net->backbone.get<3>().rest[4].conv2.weight.grad;
    };
    const Tensor g_whole = grads(*net, x), g_cached = grads(from_cut, a);
    const double dg = max_rel_diff(g_cached, g_whole);
    std::printf("layer3.5.conv2 gradient from the cache vs from the scans: max relative difference %.2g\n", dg);
    check(max_abs(g_whole) > 0 && dg <= 1e-5, "training from the cache trains the same function");
}
