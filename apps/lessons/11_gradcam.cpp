// Chapter 11: Grad-CAM, and why for this head it needs no backward pass.
#include "lesson.hpp"

void lesson::gradcam() {
    auto net = recipe_net();
    auto& h = net->head;
    const Tensor x = images({the_image});
    const int cls = 0;  // glioma
    const Tensor logits = net->forward(x, Mode::inference);
    const Tensor A = to_tensor(net->backbone.output());  // [1, 1024, 14, 14]
    const std::vector<float> alpha = gradcam_weights(h, cls, 14 * 14);

    // The gradient backward computes: d logit / d A, a training-mode pass through the head
    // with its BatchNorm on running statistics and Dropout off (what inference computes).
    h.bn.config.mode = BNMode::inference;
    h.drop.p = 0;
    net->forward(x, Mode::training);
    Tensor onehot({1, 4});
    onehot[cls] = 1;
    const Tensor dA = to_tensor(*h.backward(onehot, true));
    double worst = 0;
    for (int k = 0; k < 1024; ++k)
        for (int j = 0; j < 196; ++j)
            worst = std::max(worst, double(std::abs(dA[k * 196 + j] - alpha[size_t(k)])) / (std::abs(alpha[size_t(k)]) + 1e-12));
    std::printf("d logit[glioma] / dA: %s, the same at all 196 positions of a channel; alpha[0] = %.4g\n",
                to_string(dA.shape()).c_str(), alpha[0]);
    check(worst <= 1e-4, fmt("alpha_k = W[c,k] gamma_k / sqrt(var_k + eps) / 196 is backward's gradient (max relative difference %.2g)", worst));

    // The map: ReLU(sum_k alpha_k A_k), scaled to a maximum of 1. Summed over the grid before
    // the ReLU it is the logit less a constant: Grad-CAM of a pooled linear head is CAM.
    std::vector<double> raw(196, 0);
    for (int k = 0; k < 1024; ++k)
        for (int j = 0; j < 196; ++j) raw[size_t(j)] += double(alpha[size_t(k)]) * A[k * 196 + j];
    double total = 0, constant = h.fc.bias.value[cls];
    for (double v : raw) total += v;
    for (int k = 0; k < 1024; ++k) {
        const double s = h.bn.weight.value[k] / std::sqrt(h.bn.running_var.value[k] + h.bn.config.eps);
        constant += double(h.fc.weight.value[cls * 1024 + k]) * (h.bn.bias.value[k] - s * h.bn.running_mean.value[k]);
    }
    std::printf("sum of the map before the ReLU %.5f + constant %.5f = %.5f, the glioma logit %.5f\n", total, constant,
                total + constant, logits[cls]);
    check(std::abs(total + constant - logits[cls]) <= 1e-4 * (std::abs(logits[cls]) + 1), "the map decomposes the logit over positions");

    const std::vector<float> cam = gradcam_map(A.data(), 1024, 14, 14, alpha);
    const double top = *std::max_element(raw.begin(), raw.end());
    bool same = top > 0;
    for (int j = 0; j < 196; ++j) same &= std::abs(cam[size_t(j)] - std::max(raw[size_t(j)], 0.0) / top) <= 1e-5;
    check(same, "gradcam_map is ReLU(sum_k alpha_k A_k) / its maximum");
    std::printf("the map over the 14x14 grid (each cell 16x16 input pixels; ' .:-=+*#%%@' from 0 to 1):\n");
    const char* shade = " .:-=+*#%@";
    for (int r = 0; r < 14; ++r) {
        std::printf("  ");
        for (int c = 0; c < 14; ++c) std::printf("%c%c", shade[std::min(9, int(cam[size_t(r * 14 + c)] * 10))], ' ');
        std::printf("\n");
    }
    std::printf("(the head here is as initialised, so the map shows arithmetic, not medicine: after train_cpu,\n"
                " predict --gradcam draws it over the scan)\n");
}
