// Chapter 9: the two phases. Phase 1 trains the head on a frozen backbone at 2e-4; phase 2
// thaws layer3.5 and fine-tunes it with the head at 1e-5.
#include "lesson.hpp"

namespace {
int64_t trainable_params(lesson::Net& net) {
    int64_t n = 0;
    for (const auto& r : tlcpu::summary_rows(net, {1, 3, 224, 224}))
        if (r.leaf) n += r.trainable;
    return n;
}
}  // namespace

void lesson::phases() {
    auto net = recipe_net();
    std::vector<std::string> files;
    for (const auto& f : one_per_class) files.push_back(f), files.push_back(f.substr(0, f.size() - 6) + "11.jpg");
    TensorSource scans(images(files), {0, 0, 1, 1, 2, 2, 3, 3});
    auto& l3 = net->backbone.get<3>();
    auto below = [&] {  // everything under layer3.5
        uint64_t h = fnv1a64_offset;
        net->visit("", [&](const std::string& n, Param& p) {
            if (!n.starts_with("layer3.5.") && !n.starts_with("head_")) h = fnv1a64(p.value.data(), p.value.bytes(), h);
        });
        return h;
    };
    const uint64_t backbone0 = fingerprint(net->backbone), head0 = fingerprint(net->head);
    const int64_t p1 = trainable_params(*net);
    std::printf("phase 1: %lld trainable parameters of %lld (head_bn gamma and beta 2,048, head_fc 4,100)\n",
                (long long)p1, (long long)count_params(*net));
    check(p1 == 6148, "phase 1 trains the head's 6,148 parameters");

    // With the whole backbone frozen, each scan's pooled features are computed once and the
    // head trains on them alone (HeadOnly), as train_cpu does without augmentation.
    TensorSource feats = pooled_features(*net, Cut{0, 0}, scans, 8);
    HeadOnly<1024, dynamic> head(net->head);
    Adam adam1(2e-4);
    Trainer<HeadOnly<1024, dynamic>> t1(head, adam1);
    t1.weights_fingerprint = [&] { return fingerprint(*net); };
    FitOptions o;
    o.epochs = 5, o.batch = 4, o.seed = 1;
    for (const auto& e : t1.fit(feats, nullptr, o))
        std::printf("  phase 1 epoch %d: loss %.4f accuracy %.2f fingerprint %s\n", e.epoch + 1, e.get("loss"),
                    e.get("accuracy"), e.text.at("fingerprint").c_str());
    check(fingerprint(net->backbone) == backbone0 && fingerprint(net->head) != head0,
          "phase 1 moved the head and left every backbone bit as loaded");
    const Tensor head_fc1 = net->head.fc.weight.value;

    const int thawed = unfreeze(*net, {"layer3.5."});
    const int64_t p2 = trainable_params(*net);
    std::printf("phase 2: unfreeze layer3.5 (%d tensors): %lld trainable parameters\n", thawed, (long long)p2);
    check(p2 == 6148 + 1117184, "phase 2 trains 1,123,332: the head and layer3.5's 1,117,184");
    const Tensor conv2 = l3.rest[4].conv2.weight.value;
    const uint64_t below2 = below();
    Adam adam2(1e-5);
    Trainer<Net> t2(*net, adam2);
    o.epochs = 1, o.phase = 2;
    for (const auto& e : t2.fit(scans, nullptr, o))
        std::printf("  phase 2 epoch %d: loss %.4f accuracy %.2f fingerprint %s\n", e.epoch + 1, e.get("loss"),
                    e.get("accuracy"), e.text.at("fingerprint").c_str());
    const int64_t steps = adam2.steps;
    float moved = 0, head_moved = 0;
    for (int64_t i = 0; i < conv2.size(); ++i) moved = std::max(moved, std::abs(l3.rest[4].conv2.weight.value[i] - conv2[i]));
    for (int64_t i = 0; i < head_fc1.size(); ++i) head_moved = std::max(head_moved, std::abs(net->head.fc.weight.value[i] - head_fc1[i]));
    std::printf("after %lld steps at 1e-5: layer3.5.conv2 weights moved at most %.3g, head_fc at most %.3g\n", (long long)steps,
                moved, head_moved);
    check(moved > 0 && moved <= 1.01e-5f * float(steps) && head_moved <= 1.01e-5f * float(steps),
          "each weight moved by at most the learning rate per step (Adam's bound): small steps keep the pretrained features");
    check(below() == below2, "everything below layer3.5 still holds its loaded bits");
}
