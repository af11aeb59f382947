// Chapter 2: the stem, conv 7x7/2, BatchNorm, ReLU, max-pool 3x3/2: 224x224x3 to 56x56x64.
#include "lesson.hpp"

void lesson::stem() {
    auto net = recipe_net();
    auto& stem = net->backbone.get<0>();
    auto& conv1 = stem.get<0>();
    auto& bn1 = stem.get<1>();
    const Tensor x = images({the_image});

    // Layer by layer, in inference mode (the stem is frozen).
    const Tensor a = to_tensor(conv1.forward(view(x), Mode::inference));
    const Tensor c = to_tensor(bn1.forward(conv1.output(), Mode::inference));  // with its ReLU (bn1.relu)
    const Tensor d = to_tensor(stem.get<2>().forward(bn1.output(), Mode::inference));
    std::printf("input %s\n", to_string(x.shape()).c_str());
    std::printf("conv1 7x7 stride 2 pad 3: %s   (224 + 2*3 - 7) / 2 + 1 = 112\n", to_string(a.shape()).c_str());
    std::printf("bn1 and its ReLU (one pass): %s, %.1f%% of values zeroed by the ReLU\n", to_string(c.shape()).c_str(),
                100.0 * double(std::count(c.begin(), c.end(), 0.f)) / double(c.size()));
    std::printf("maxpool 3x3 stride 2 pad 0 ceil (caffe): %s   ceil((112 - 3) / 2) + 1 = 56\n", to_string(d.shape()).c_str());
    check(a.shape() == Shape{1, 64, 112, 112} && d.shape() == Shape{1, 64, 56, 56}, "shapes [1,64,112,112] and [1,64,56,56]");
    check(count_params(conv1) == 64 * 3 * 7 * 7 && count_params(bn1) == 4 * 64,
          "conv1 has 9,408 weights (64 x 3 x 7 x 7); bn1 256 numbers (gamma, beta, running mean and variance of 64 channels)");

    // One output of conv1 by hand: the 7x7x3 window around input (2i - 3, 2j - 3), zero outside,
    // in the first channel from 7 on whose ReLU passes it (so the check below sees the affine map).
    const int i = 56, j = 40;
    int o = 7;
    while (o < 63 && c[(o * 112 + i) * 112 + j] <= 0.f) ++o;
    const Tensor& w = conv1.weight.value;
    double sum = 0, mag = 0;
    for (int ch = 0; ch < 3; ++ch)
        for (int ky = 0; ky < 7; ++ky)
            for (int kx = 0; kx < 7; ++kx) {
                const int yy = 2 * i - 3 + ky, xx = 2 * j - 3 + kx;
                if (yy < 0 || yy >= 224 || xx < 0 || xx >= 224) continue;
                const double t = double(w[((o * 3 + ch) * 7 + ky) * 7 + kx]) * x[(ch * 224 + yy) * 224 + xx];
                sum += t, mag += std::abs(t);
            }
    const float got = a[(o * 112 + i) * 112 + j];
    std::printf("conv1 channel %d at (%d, %d): sum of 147 products = %.5f, the primitive gave %.5f\n", o, i, j, sum, got);
    check(std::abs(got - sum) <= 1e-5 * mag, "conv1's output is the dot product of its weights with the input window");

    const float s = bn1.weight.value[o] / std::sqrt(bn1.running_var.value[o] + bn1.config.eps);
    const float bn_hand = (got - bn1.running_mean.value[o]) * s + bn1.bias.value[o];
    const float relu_hand = std::max(0.f, bn_hand);
    std::printf("bn1: max(0, (%.5f - mean %.5f) * gamma %.5f / sqrt(var %.5f + 1e-5) + beta %.5f) = %.5f\n", got,
                bn1.running_mean.value[o], bn1.weight.value[o], bn1.running_var.value[o], bn1.bias.value[o], relu_hand);
    check(bn_hand > 0 && std::abs(c[(o * 112 + i) * 112 + j] - relu_hand) <= 1e-5f * (std::abs(bn_hand) + 1),
          "bn1 applies the running statistics, the affine map and its ReLU");

    float top = 0;
    for (int yy = 2 * 28; yy < 2 * 28 + 3; ++yy)
        for (int xx = 2 * 20; xx < 2 * 20 + 3; ++xx) top = std::max(top, c[(o * 112 + yy) * 112 + xx]);
    check(d[(o * 56 + 28) * 56 + 20] == top, "maxpool output (28, 20) is the largest of the ReLU's 3x3 window at (56, 40)");

    // The stem as a frozen network runs it: one convolution with bn1 folded in and ReLU as a
    // post-op, then the pool.
    const Tensor folded = to_tensor(stem.forward(view(x), Mode::inference));
    const double diff = max_rel_diff(folded, d);
    std::printf("folded stem (one conv with BN and ReLU inside) vs layer by layer: max relative difference %.2g\n", diff);
    check(diff < 1e-5, "folding BatchNorm into the convolution changes only rounding");
}
