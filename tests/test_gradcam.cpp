// Grad-CAM: the closed-form channel weights are the gradient of the class logit with
// respect to the last stage's activation (checked by finite differences through the real
// head), and the map lights up where the evidence is.
#include <doctest/doctest.h>

#include "fixtures.hpp"

namespace tlcpu_test_gradcam {

using namespace tlcpu;

TEST_CASE("gradcam weights are d logit / d activation of the recipe's head (finite differences)") {
    constexpr int C = 8, H = 3, W = 4, K = 3;
    Head<C, K> head;
    for (int k = 0; k < C; ++k) {
        head.bn.weight.value[k] = 0.5f + uniform01(1, 1, uint64_t(k));
        head.bn.bias.value[k] = normal01(1, 2, uint64_t(k));
        head.bn.running_mean.value[k] = normal01(1, 3, uint64_t(k));
        head.bn.running_var.value[k] = 0.2f + uniform01(1, 4, uint64_t(k));
    }
    head.bn.config = {1e-3f, 0.01f, BNMode::batch};  // inference forward uses the running stats
    for (int64_t i = 0; i < head.fc.weight.value.size(); ++i) head.fc.weight.value[i] = normal01(1, 5, uint64_t(i));
    head.drop.p = 0.3f;  // identity at inference, as Grad-CAM assumes
    Tensor a({1, C, H, W});
    for (int64_t i = 0; i < a.size(); ++i) a[i] = 1 + uniform01(1, 6, uint64_t(i));
    auto logit = [&](const Tensor& t, int cls) { return double(head.forward(view(t), Mode::inference)[cls]); };
    for (int cls = 0; cls < K; ++cls) {
        const auto alpha = gradcam_weights(head, cls, H * W);
        for (int k = 0; k < C; ++k)
            for (int pos : {0, 5, 11}) {
                const double h = 1e-2;
                Tensor up = a, down = a;
                up[k * H * W + pos] += float(h), down[k * H * W + pos] -= float(h);
                const double fd = (logit(up, cls) - logit(down, cls)) / (2 * h);
                CAPTURE(cls);
                CAPTURE(k);
                CAPTURE(pos);
                CHECK(std::abs(fd - alpha[size_t(k)]) < 2e-3 * std::max(1.0, std::abs(fd)));
            }
    }
}

TEST_CASE("the gradcam map peaks where the class evidence is and the overlay keeps the image's size") {
    constexpr int C = 2, H = 4, W = 4;
    std::vector<float> act(size_t(C * H * W), 0.f);
    act[size_t(0 * H * W + 1 * W + 2)] = 3.f;  // channel 0 (evidence for) fires at (1, 2)
    act[size_t(1 * H * W + 3 * W + 0)] = 5.f;  // channel 1 (evidence against) fires at (3, 0)
    const auto cam = gradcam_map(act.data(), C, H, W, {0.5f, -1.f});
    CHECK(cam[size_t(1 * W + 2)] == doctest::Approx(1.0));
    for (size_t i = 0; i < cam.size(); ++i)
        if (i != size_t(1 * W + 2)) CHECK(cam[i] == 0.f);  // ReLU drops the negative evidence
    const auto none = gradcam_map(act.data(), C, H, W, {-1.f, -1.f});
    CHECK(std::all_of(none.begin(), none.end(), [](float v) { return v == 0.f; }));

    Image im{40, 20, std::vector<uint8_t>(40 * 20 * 3, 100)};
    const Image o = gradcam_overlay(im, cam, H, W);
    REQUIRE(o.width == 40);
    REQUIRE(o.height == 20);
    // The hot cell (row 1 of 4, column 2 of 4) maps to pixel (x 25, y 7): coloured; a far
    // corner keeps the scan's gray.
    const uint8_t* hot = &o.rgb[(7 * 40 + 25) * 3];
    const uint8_t* cold = &o.rgb[(19 * 40 + 0) * 3];
    CHECK((hot[0] != hot[1] || hot[1] != hot[2]));
    CHECK(cold[0] == 100);
    CHECK(cold[1] == 100);
    CHECK(cold[2] == 100);
    CHECK_THROWS_WITH(gradcam_map(act.data(), C, H, W, {1.f}), doctest::Contains("1 weights for 2 channels"));
}

}  // namespace tlcpu_test_gradcam
