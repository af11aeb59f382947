// Chapter 3: a bottleneck block, layer1.0: 1x1, 3x3, 1x1 convolutions and a projection
// shortcut, summed and rectified; and where layer2.0 halves the resolution.
#include "lesson.hpp"

void lesson::block() {
    auto net = recipe_net();
    const Tensor x = images({the_image});
    const Tensor s0 = to_tensor(net->backbone.get<0>().forward(view(x), Mode::inference));
    auto& b = net->backbone.get<1>().first;  // layer1.0: Bottleneck<64, 64, 256, 1, v1>
    static_assert(std::remove_cvref_t<decltype(b)>::has_projection, "64 channels in, 256 out: a projection");
    static_assert(!std::remove_cvref_t<decltype(net->backbone.get<1>().rest[0])>::has_projection);

    // The block layer by layer (inference mode: running statistics), each output copied out.
    const dnnl::memory in = view(s0);
    auto step = [](const char* what, const dnnl::memory& m) {
        Tensor t = to_tensor(m);
        std::printf("  %-34s %s\n", what, to_string(t.shape()).c_str());
        return t;
    };
    std::printf("layer1.0 on the stem's output %s:\n", to_string(s0.shape()).c_str());
    const Mode inf = Mode::inference;
    // (bn1 and bn2 apply their ReLU in the same pass: a ReLU layer would reread the tensor)
    Tensor h = step("conv1 1x1, 64 -> 64, bn1 + ReLU", b.bn1.forward(b.conv1.forward(in, inf), inf));
    const Tensor h_copy = h;
    h = step("conv2 3x3 pad 1, bn2 + ReLU", b.bn2.forward(b.conv2.forward(view(h_copy), inf), inf));
    const Tensor g_copy = h;
    const Tensor main = step("conv3 1x1, 64 -> 256, bn3", b.bn3.forward(b.conv3.forward(view(g_copy), inf), inf));
    const Tensor shortcut = step("downsample: conv 1x1, 64 -> 256, bn", b.down_bn.forward(b.down_conv.forward(in, inf), inf));
    Tensor out(main.shape());
    for (int64_t i = 0; i < out.size(); ++i) out[i] = std::max(0.f, main[i] + shortcut[i]);
    std::printf("  %-34s %s\n", "relu(main + shortcut)", to_string(out.shape()).c_str());
    check(out.shape() == Shape{1, 256, 56, 56}, "layer1.0 maps [1,64,56,56] to [1,256,56,56]: 4x the channels, same resolution");

    const int64_t n = count_params(b);
    std::printf("parameters: conv1 %lld, conv2 %lld, conv3 %lld, downsample %lld, four BatchNorms %lld: %lld\n",
                (long long)b.conv1.weight.value.size(), (long long)b.conv2.weight.value.size(),
                (long long)b.conv3.weight.value.size(), (long long)b.down_conv.weight.value.size(),
                (long long)(count_params(b.bn1) + count_params(b.bn2) + count_params(b.bn3) + count_params(b.down_bn)),
                (long long)n);
    int64_t from_summary = -1;
    for (const auto& r : summary_rows(*net, {1, 3, 224, 224}))
        if (r.name == "layer1.0") from_summary = r.params;
    check(n == 64 * 64 + 64 * 64 * 9 + 64 * 256 + 64 * 256 + 4 * (64 + 64 + 256 + 256) && n == from_summary,
          "76,288 parameters, as summary() counts them");

    // What a frozen network runs instead: four convolutions with their BatchNorms folded in,
    // the ReLUs and the residual sum as post-ops.
    const Tensor folded = to_tensor(b.forward(in, Mode::inference));
    const double diff = max_rel_diff(folded, out);
    std::printf("folded block vs layer by layer: max relative difference %.2g\n", diff);
    check(diff < 1e-5, "the folded block computes relu(bn3(conv3(...)) + bn(downsample(x)))");

    // layer2.0 in caffe's v1 layout: the stride 2 sits on the first 1x1 convolution.
    const Tensor l1 = to_tensor(net->backbone.get<1>().forward(in, Mode::inference));
    auto& b2 = net->backbone.get<2>().first;
    const Tensor c1 = to_tensor(b2.conv1.forward(view(l1), Mode::inference));
    const Tensor l2 = to_tensor(b2.forward(view(l1), Mode::inference));
    std::printf("layer2.0: input %s, conv1 1x1 stride 2 %s, block output %s\n", to_string(l1.shape()).c_str(),
                to_string(c1.shape()).c_str(), to_string(l2.shape()).c_str());
    check(c1.shape() == Shape{1, 128, 28, 28} && l2.shape() == Shape{1, 512, 28, 28},
          "v1 halves the resolution in layer2.0's first 1x1 conv: its 3x3 runs at 28x28");
}
