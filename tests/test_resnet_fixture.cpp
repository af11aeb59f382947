// ResNet-50 forward against PyTorch: the 1/16-width network in both stride layouts, and the
// real caffe weights through layer3 on real MRI images (../shared/fixtures/make_fixtures.py).
#include <cstring>
#include <doctest/doctest.h>

#include "fixtures.hpp"

namespace tlcpu_test_resnet_fixture {

using namespace tlcpu;
using test::shared;

namespace {

template <Layout L>
void check_tiny(const char* file) {
    auto fx = io::SafeTensors::open(shared(std::string("fixtures/") + file));
    Classifier<ResNet50<L, 4>, 4> net;
    LoadOptions opt;
    opt.prefix = "param.";
    auto report = load_weights(net, fx, opt);
    // 16 bottlenecks of 15 tensors, 4 of them with a 5-tensor projection, a 5-tensor stem
    // and a 6-tensor head; the fixture's other keys (eval.*, adam.param.*) lie outside "param.".
    CHECK(report.loaded.size() == 16 * 15 + 4 * 5 + 5 + 6);
    CHECK(report.unexpected.empty());
    Tensor x = fx.get("input");

    const Tensor& eval = net.forward(x, Mode::inference);
    const double e = max_rel_diff(eval, fx.get("eval.logits"));
    INFO(std::string(file), " eval.logits rel diff ", e);
    CHECK(e < 1e-4);

    // Mode::training with the default BN modes: backbone BN on running statistics, head
    // BatchNorm1d on batch statistics, as in the fixture's frozen_bn pass.
    Tensor before = net.head.bn.running_mean.value;
    const Tensor& logits = net.forward(x, Mode::training);
    const double f = max_rel_diff(logits, fx.get("frozen_bn.logits"));
    INFO(std::string(file), " frozen_bn.logits rel diff ", f);
    CHECK(f < 1e-4);
    CHECK(max_rel_diff(net.head.bn.running_mean.value, before) > 0);  // batch mode updated it
}

}  // namespace

TEST_SUITE("fixture") {
    TEST_CASE("tiny ResNet-50 v1 (caffe strides) matches PyTorch's logits") {
        check_tiny<Layout::v1>("tiny_resnet_v1.safetensors");
    }
    TEST_CASE("tiny ResNet-50 v1.5 (torchvision strides) matches PyTorch's logits") {
        check_tiny<Layout::v1_5>("tiny_resnet_v15.safetensors");
    }

    TEST_CASE("real caffe ResNet-50 weights through layer3 match PyTorch on MRI images") {
        auto weights = io::SafeTensors::open(shared("weights/resnet50-imagenet-caffe-partial.safetensors"));
        auto fx = io::SafeTensors::open(shared("fixtures/c4_caffe_reference.safetensors"));
        auto net = std::make_unique<ResNet50<Layout::v1, 64, Depth::c4>>();
        auto report = load_weights(*net, weights);
        // stem 5 + layer1 50 + layer2 65 + layer3 95 tensors; layer4's BN statistics, its one
        // conv and fc.bias (42 tensors) are in the file but not in a C4 network.
        CHECK(report.loaded.size() == 215);
        CHECK(report.unexpected.size() == 42);
        Tensor x = fx.get("input");
        auto cmp = [&](const char* key, const Tensor& got) {
            const double d = max_rel_diff(got, fx.get(key));
            INFO(std::string(key), " rel diff ", d);
            CHECK(d < 1e-4);
        };
        // Stage by stage, each output read before the next stage runs: in inference a
        // stage's output lives in the shared activation pool, which later stages reuse.
        const dnnl::memory xm = view(x);
        const dnnl::memory* cur = &net->get<0>().forward(xm, Mode::inference);
        cmp("pool.stem", test::spatial_mean(to_tensor(*cur)));
        cur = &net->get<1>().forward(*cur, Mode::inference);
        cmp("pool.layer1", test::spatial_mean(to_tensor(*cur)));
        cur = &net->get<2>().forward(*cur, Mode::inference);
        cmp("pool.layer2", test::spatial_mean(to_tensor(*cur)));
        Tensor l3 = to_tensor(net->get<3>().forward(*cur, Mode::inference));
        // The whole network at once gives the same bits as the stage-by-stage walk.
        const Tensor whole = to_tensor(net->forward(xm, Mode::inference));
        CHECK(std::memcmp(whole.data(), l3.data(), sizeof(float) * size_t(l3.size())) == 0);
        cmp("pool.layer3", test::spatial_mean(l3));
        cmp("layer3", l3);
    }
}

}  // namespace tlcpu_test_resnet_fixture
