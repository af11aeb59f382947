// Backward against PyTorch: loss, every gradient and the BN running statistics of the
// 1/16-width ResNet-50 in both stride layouts (../shared/fixtures/make_fixtures.py).
#include <doctest/doctest.h>

#include "fixtures.hpp"

namespace tlcpu_test_backward_fixture {

using namespace tlcpu;
using test::shared;

namespace {

template <Layout L>
using TinyNet = Classifier<ResNet50<L, 4>, 4>;

template <Layout L>
std::unique_ptr<TinyNet<L>> load_tiny(const io::SafeTensors& fx) {
    auto net = std::make_unique<TinyNet<L>>();
    LoadOptions opt;
    opt.prefix = "param.";
    load_weights(*net, fx, opt);
    return net;
}

std::vector<int> labels_of(const io::SafeTensors& fx) {
    Tensor l = fx.get("labels");
    return std::vector<int>(l.begin(), l.end());
}

// Every parameter's gradient against `<prefix><name>`, within `tol(name)` of the largest
// magnitude of that tensor.
template <class Net, class Tol>
int check_grads(Net& net, const io::SafeTensors& ref, const std::string& prefix, Tol tol) {
    int checked = 0;
    net.visit("", [&](const std::string& n, Param& p) {
        if (p.kind != ParamKind::weight) return;
        const std::string key = prefix + n;
        REQUIRE(ref.contains(key));
        REQUIRE(p.grad.shape() == p.value.shape());
        const double d = max_rel_diff(p.grad, ref.get(key));
        INFO(key, " rel diff ", d);
        CHECK(d < tol(n));
        ++checked;
    });
    return checked;
}

template <Layout L>
void check_backward(const char* file, const char* variant) {
    const auto fx = io::SafeTensors::open(shared(std::string("fixtures/") + file));
    const Tensor x = fx.get("input");
    const auto labels = labels_of(fx);

    SUBCASE("frozen backbone BN (running statistics), head BN on batch statistics") {
        auto net = load_tiny<L>(fx);
        auto r = softmax_cross_entropy(net->forward(x, Mode::training), labels);
        CHECK(r.loss == doctest::Approx(fx.get("frozen_bn.loss")[0]).epsilon(1e-5));
        net->backward(r.grad);
        // The head's BatchNorm1d normalises a batch of two, so what reaches the backbone is
        // scaled by 1 - xhat^2 ~ eps / var: a float32 cancellation residue. PyTorch's own
        // float32 gradients there differ from float64 by up to 2.6e-3 (tools/make_grad64.py),
        // so against PyTorch's float32 values the backbone gets 1e-2 (a wrong formula,
        // mask or stride is off by O(1)); the head keeps 1e-3. Against the float64
        // reference every tensor must be within 3e-3, as close as PyTorch itself gets.
        auto vs_torch = [](const std::string& n) { return n.starts_with("head_") ? 1e-3 : 1e-2; };
        CHECK(check_grads(*net, fx, "frozen_bn.grad.", vs_torch) == 16 * 9 + 4 * 3 + 3 + 4);
        const auto f64 = io::SafeTensors::open(TLCPU_TEST_DATA_DIR "/tiny_grad64.safetensors");
        check_grads(*net, f64, std::string(variant) + ".frozen_bn.grad.", [](const std::string&) { return 3e-3; });
    }
    SUBCASE("every BN on batch statistics, running statistics updated") {
        auto net = load_tiny<L>(fx);
        set_bn_mode(net->backbone, BNMode::batch);
        const Tensor& logits = net->forward(x, Mode::training);
        CHECK(max_rel_diff(logits, fx.get("train_bn.logits")) < 1e-4);
        auto r = softmax_cross_entropy(logits, labels);
        CHECK(r.loss == doctest::Approx(fx.get("train_bn.loss")[0]).epsilon(1e-5));
        net->backward(r.grad);
        check_grads(*net, fx, "train_bn.grad.", [](const std::string&) { return 1e-3; });
        int stats = 0;
        net->visit("", [&](const std::string& n, Param& p) {
            if (p.kind != ParamKind::buffer) return;
            const double d = max_rel_diff(p.value, fx.get("train_bn.running." + n));
            INFO(n, " rel diff ", d);
            CHECK(d < 1e-3);
            ++stats;
        });
        CHECK(stats == 2 * (16 * 3 + 4 + 1 + 1));
    }
}

}  // namespace

TEST_SUITE("fixture") {
    TEST_CASE("tiny ResNet-50 v1: loss, gradients and running statistics match PyTorch") {
        check_backward<Layout::v1>("tiny_resnet_v1.safetensors", "v1");
    }
    TEST_CASE("tiny ResNet-50 v1.5: loss, gradients and running statistics match PyTorch") {
        check_backward<Layout::v1_5>("tiny_resnet_v15.safetensors", "v15");
    }
}

}  // namespace tlcpu_test_backward_fixture
