// Chapter 6: the head: global average pool, BatchNorm, Dropout, Dense to 4 logits.
#include "lesson.hpp"

void lesson::head() {
    auto net = recipe_net();
    auto& h = net->head;
    const Tensor x = images(one_per_class);
    const Tensor A = to_tensor(net->backbone.forward(view(x), Mode::inference));
    const Tensor logits = net->forward(x, Mode::inference);
    const Tensor& f = h.features();
    std::printf("layer3's output %s -> pooled features %s -> logits %s\n", to_string(A.shape()).c_str(),
                to_string(f.shape()).c_str(), to_string(logits.shape()).c_str());
    check(A.shape() == Shape{4, 1024, 14, 14} && f.shape() == Shape{4, 1024} && logits.shape() == Shape{4, 4},
          "shapes [4,1024,14,14], [4,1024], [4,4]");
    double s = 0;
    for (int j = 0; j < 196; ++j) s += A[5 * 196 + j];
    std::printf("feature 5 of the glioma scan: mean of its 14x14 map = %.6f, the pool gave %.6f\n", s / 196, f[5]);
    check(std::abs(f[5] - s / 196) <= 1e-5 * (std::abs(s / 196) + 1e-3), "the pool is the spatial mean");

    // Inference: BN with running statistics (a fresh head's: mean 0, variance 1), Dropout
    // the identity, then W f + b.
    const auto& bn = h.bn;
    for (int c = 0; c < 4; ++c) {
        double z = h.fc.bias.value[c];
        for (int k = 0; k < 1024; ++k)
            z += double(h.fc.weight.value[c * 1024 + k]) *
                 ((f[k] - bn.running_mean.value[k]) * bn.weight.value[k] / std::sqrt(bn.running_var.value[k] + bn.config.eps) +
                  bn.bias.value[k]);
        std::printf("logit %d of the glioma scan: by hand %.6f, the head %.6f\n", c, z, logits[c]);
        check(std::abs(logits[c] - z) <= 1e-5 * (std::abs(z) + 1), "logit = W[c] . bn(features) + b[c]");
    }
    const int64_t bn_params = count_params(h.bn), fc_params = count_params(h.fc);
    std::printf("parameters: head_bn %lld (gamma, beta trainable; mean, variance not), head_fc %lld = 4 x 1024 + 4\n",
                (long long)bn_params, (long long)fc_params);
    check(bn_params == 4 * 1024 && fc_params == 4100, "8,196 head parameters, 6,148 of them trained");

    // Training: BN normalises with the batch's statistics and moves its running ones 1% of
    // the way (Keras' momentum 0.99); Dropout zeroes 30% and scales the rest by 1 / 0.7.
    seed_dropout(*net, 1, 0);
    net->forward(x, Mode::training);
    double m0 = 0;
    for (int i = 0; i < 4; ++i) m0 += f[i * 1024 + 0] / 4;
    std::printf("training forward: head_bn.running_mean[0] 0 -> %.6f = 0.01 * batch mean %.6f\n", bn.running_mean.value[0], m0);
    check(std::abs(bn.running_mean.value[0] - 0.01 * m0) <= 1e-6 * (std::abs(m0) + 1e-3), "momentum 0.99 in Keras' terms");
    const Tensor& y = h.bn.output();
    const Tensor& d = h.drop.output();
    int zeros = 0;
    bool scaled = true;
    for (int64_t i = 0; i < d.size(); ++i) {
        zeros += d[i] == 0.f;
        scaled &= d[i] == 0.f || d[i] == y[i] * (1.f / (1.f - h.drop.p));
    }
    std::printf("dropout zeroed %d of %lld features (%.1f%%), kept ones scaled by 1/0.7\n", zeros, (long long)d.size(),
                100.0 * zeros / double(d.size()));
    check(scaled && zeros > 0.25 * 4096 && zeros < 0.35 * 4096, "inverted dropout at p = 0.3");
}
