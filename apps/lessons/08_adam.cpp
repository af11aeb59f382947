// Chapter 8: Adam's update of one weight, by hand, against the optimizer.
#include "lesson.hpp"

void lesson::adam() {
    auto net = recipe_net();
    const Tensor x = images(one_per_class);
    const std::vector<int> y{0, 1, 2, 3};
    Adam adam(2e-4);  // phase 1's rate; beta1 0.9, beta2 0.999, epsilon 1e-7 (Keras' defaults and placement)
    Param& w = net->head.fc.weight;
    const int64_t k = 5;  // weight from feature 5 to the glioma logit
    double m = 0, v = 0;
    for (int step = 1; step <= 2; ++step) {
        seed_dropout(*net, 1, uint64_t(step - 1));
        net->backward(softmax_cross_entropy(net->forward(x, Mode::training), y).grad);
        const double g = w.grad[k], w0 = w.value[k];
        const Tensor before = w.value, grad = w.grad;
        adam.step(*net);
        if (step == 1) {
            // m / sqrt(v) = g / |g| * 0.1 / sqrt(0.001) and lr_1 undoes the factor: a first step
            // moves every weight whose gradient is well above epsilon by the learning rate,
            // whatever the gradient's size.
            int64_t n = 0, at_lr = 0;
            for (int64_t i = 0; i < w.value.size(); ++i)
                if (std::abs(grad[i]) > 1e-3f) {
                    ++n;
                    at_lr += std::abs(std::abs(w.value[i] - before[i]) - 2e-4f) <= 2e-6f;
                }
            std::printf("step 1: %lld of the %lld head_fc weights have |g| > 1e-3; %lld of them moved by 2e-4 +- 1%%\n",
                        (long long)n, (long long)w.value.size(), (long long)at_lr);
            check(n > 0 && at_lr == n, "Adam's first step is the learning rate times the gradient's sign");
        }
        // Keras: m and v are moving averages of g and g^2; the step is
        //   lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)
        // The moving averages use the betas as the optimizer holds them, in float: 1 - float(0.999)
        // is 0.00099998713, which puts v 1.3e-5 below the exact-decimal formula's.
        const double b1 = float(adam.beta1), b2 = float(adam.beta2);
        m = b1 * m + (1 - b1) * g;
        v = b2 * v + (1 - b2) * g * g;
        const double lr_t = 2e-4 * std::sqrt(1 - std::pow(0.999, step)) / (1 - std::pow(0.9, step));
        const double hand = w0 - lr_t * m / (std::sqrt(v) + 1e-7);
        std::printf("step %d: g = %.6e, m = %.6e, v = %.6e, lr_t = %.6e\n", step, g, m, v, lr_t);
        std::printf("        w = %.9f - lr_t * m / (sqrt(v) + 1e-7) = %.9f by hand, %.9f by Adam (moved %.3e)\n", w0, hand,
                    w.value[k], w.value[k] - w0);
        check(std::abs(w.value[k] - hand) <= 2e-8, fmt("step %d matches the hand formula to float precision", step));
        const auto st = adam.state();
        check(std::abs((*st.at("m.head_fc.weight"))[k] - m) <= 1e-6 * std::abs(m) &&
                  std::abs((*st.at("v.head_fc.weight"))[k] - v) <= 1e-6 * v,
              "the optimizer's m and v slots hold those moving averages");
    }
    check(net->backbone.get<0>().get<0>().weight.grad.size() == 0, "the frozen backbone has no gradient for Adam to apply");
}
