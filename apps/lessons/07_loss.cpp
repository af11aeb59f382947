// Chapter 7: softmax cross-entropy and its gradient, the signal backward starts from.
#include "lesson.hpp"

void lesson::loss() {
    auto net = recipe_net();
    const Tensor x = images(one_per_class);
    const std::vector<int> y{0, 1, 2, 3};
    const Tensor z = net->forward(x, Mode::inference);
    const LossResult r = softmax_cross_entropy(z, y);
    const Tensor p = softmax(z);
    const char* names[4] = {"glioma", "meningioma", "notumor", "pituitary"};
    double hand = 0;
    for (int i = 0; i < 4; ++i) {
        double lse = 0;
        for (int j = 0; j < 4; ++j) lse += std::exp(double(z[i * 4 + j]));
        lse = std::log(lse);
        hand += (lse - z[i * 4 + y[size_t(i)]]) / 4;
        std::printf("%-10s logits %8.4f %8.4f %8.4f %8.4f  softmax %.4f %.4f %.4f %.4f  -log p[true] %.4f\n", names[i],
                    z[i * 4], z[i * 4 + 1], z[i * 4 + 2], z[i * 4 + 3], p[i * 4], p[i * 4 + 1], p[i * 4 + 2], p[i * 4 + 3],
                    lse - z[i * 4 + y[size_t(i)]]);
    }
    std::printf("loss = mean of -log p[true] = %.6f (by hand %.6f; a uniform guess scores ln 4 = %.6f)\n", r.loss, hand,
                std::log(4.0));
    check(std::abs(r.loss - hand) <= 1e-6 * hand, "the loss is the batch mean of -log softmax(z)[label]");

    // dL/dz = (softmax(z) - onehot(label)) / N: each row sums to 0, only the true class's
    // entry is negative (raise it), the others push their logits down in proportion to p.
    bool formula = true, sums = true;
    for (int i = 0; i < 4; ++i) {
        double row = 0;
        for (int j = 0; j < 4; ++j) {
            const double g = (p[i * 4 + j] - (j == y[size_t(i)] ? 1.0 : 0.0)) / 4;
            formula &= std::abs(r.grad[i * 4 + j] - g) <= 1e-7;
            row += r.grad[i * 4 + j];
        }
        sums &= std::abs(row) <= 1e-7;
    }
    std::printf("dL/dz for the glioma scan: %.6f %.6f %.6f %.6f\n", r.grad[0], r.grad[1], r.grad[2], r.grad[3]);
    check(formula, "dL/dz = (softmax - onehot) / 4, entry by entry");
    check(sums, "each row of dL/dz sums to 0");

    // The same derivative measured: nudge one logit both ways.
    const float h = 1e-2f;
    Tensor up = z, down = z;
    up[6] += h, down[6] -= h;  // meningioma scan, notumor logit
    const double numeric = (softmax_cross_entropy(up, y).loss - softmax_cross_entropy(down, y).loss) / (double(up[6]) - down[6]);
    std::printf("dL/dz[1][2]: central difference %.7f, formula %.7f\n", numeric, r.grad[6]);
    check(std::abs(numeric - r.grad[6]) <= 1e-4 * (std::abs(r.grad[6]) + 1e-3), "the formula is the derivative");
}
