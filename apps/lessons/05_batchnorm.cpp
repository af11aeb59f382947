// Chapter 5: why a pretrained backbone's BatchNorm stays in inference mode while it trains.
#include <algorithm>

#include "lesson.hpp"

void lesson::batchnorm() {
    auto net = recipe_net();
    unfreeze(*net, {"layer3.5."});
    auto& b5 = net->backbone.get<3>().rest[4];  // layer3.5
    const Tensor x = images(one_per_class);
    const Tensor a = to_tensor(forward_prefix(net->backbone, view(x), Cut{3, 5}));  // layer3.5's input
    const Tensor t = to_tensor(b5.conv1.forward(view(a), Mode::inference));       // what bn1 normalises
    const int64_t C = t.dim(1), hw = t.dim(2) * t.dim(3), n = t.dim(0);
    std::vector<double> mean(static_cast<size_t>(C)), var(static_cast<size_t>(C)), shift, ratio;
    for (int64_t c = 0; c < C; ++c) {
        double s = 0, q = 0;
        for (int64_t i = 0; i < n; ++i)
            for (int64_t j = 0; j < hw; ++j) {
                const double v = t[(i * C + c) * hw + j];
                s += v, q += v * v;
            }
        mean[size_t(c)] = s / double(n * hw);
        var[size_t(c)] = q / double(n * hw) - mean[size_t(c)] * mean[size_t(c)];
        const double rm = b5.bn1.running_mean.value[c], rv = b5.bn1.running_var.value[c];
        shift.push_back(std::abs(mean[size_t(c)] - rm) / std::sqrt(rv));
        ratio.push_back(var[size_t(c)] / rv);
    }
    auto median = [](std::vector<double> v) {
        std::nth_element(v.begin(), v.begin() + int64_t(v.size() / 2), v.end());
        return v[v.size() / 2];
    };
    std::printf("layer3.5.bn1 sees [4,256,14,14] from 4 MRI scans. Per channel, this batch vs ImageNet's running statistics:\n");
    for (int c : {0, 1, 2})
        std::printf("  channel %d: batch mean %8.4f var %8.4f | running mean %8.4f var %8.4f\n", c, mean[size_t(c)],
                    var[size_t(c)], b5.bn1.running_mean.value[c], b5.bn1.running_var.value[c]);
    std::printf("  median over 256 channels: |batch mean - running mean| = %.2f running std, variance ratio %.2f\n",
                median(shift), median(ratio));

    // Inference mode (the default BNConfig): training uses the running statistics, so a
    // training-mode forward computes what evaluation computes, and the statistics stay.
    const Tensor out_eval = to_tensor(b5.forward(view(a), Mode::inference));
    const uint64_t before = fingerprint(b5);
    const Tensor out_train = to_tensor(b5.forward(view(a), Mode::training));
    const double same = max_rel_diff(out_train, out_eval);
    std::printf("BNMode::inference: training forward vs evaluation forward: max relative difference %.2g\n", same);
    check(same < 1e-5, "in inference mode the block trains on the function it is evaluated with");
    check(fingerprint(b5) == before, "and no running statistic moved");

    // Batch mode: each batch normalises with its own statistics and drags the running ones.
    set_bn_mode(b5, BNMode::batch);
    const float rm0 = b5.bn1.running_mean.value[0];
    const Tensor out_batch = to_tensor(b5.forward(view(a), Mode::training));
    const double moved = max_rel_diff(out_batch, out_eval);
    std::printf("BNMode::batch: training forward vs evaluation forward: max relative difference %.2g\n", moved);
    check(moved > 0.05, "with batch statistics training computes another function than evaluation does");
    const float expect = 0.9f * rm0 + 0.1f * float(mean[0]);
    std::printf("bn1.running_mean[0]: %.5f -> %.5f = 0.9 * old + 0.1 * batch mean (momentum 0.1)\n", rm0,
                b5.bn1.running_mean.value[0]);
    check(std::abs(b5.bn1.running_mean.value[0] - expect) <= 1e-4f * (std::abs(expect) + 1),
          "running statistics move towards 4 MRI scans' and away from ImageNet's");
}
