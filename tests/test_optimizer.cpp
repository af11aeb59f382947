// Adam and SGD: one step against PyTorch's fixture, and the update rules on hand-computed
// numbers (Keras' epsilon placement, momentum, Nesterov, weight decay, frozen weights).
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "fixtures.hpp"

namespace tlcpu_test_optimizer {

using namespace tlcpu;
using test::shared;

TEST_SUITE("fixture") {
    TEST_CASE("one Adam step on the fixture's gradients matches PyTorch within 1e-5") {
        for (const char* file : {"tiny_resnet_v1.safetensors", "tiny_resnet_v15.safetensors"}) {
            const auto fx = io::SafeTensors::open(shared(std::string("fixtures/") + file));
            auto net = std::make_unique<Classifier<ResNet50<Layout::v1, 4>, 4>>();  // layout is irrelevant here
            LoadOptions opt;
            opt.prefix = "param.";
            load_weights(*net, fx, opt);
            net->visit("", [&](const std::string& n, Param& p) {
                if (p.kind == ParamKind::weight) p.grad = fx.get("frozen_bn.grad." + n);
            });
            Adam adam(1e-3);
            adam.keras_epsilon = false;  // the fixture ran torch.optim.Adam(eps=1e-7)
            adam.step(*net);
            int n_checked = 0;
            net->visit("", [&](const std::string& n, Param& p) {
                if (p.kind != ParamKind::weight) return;
                Tensor want = fx.get("adam.param." + n);
                double worst = 0;
                for (int64_t i = 0; i < want.size(); ++i) worst = std::max(worst, double(std::abs(p.value[i] - want[i])));
                INFO(std::string(file), " ", n, " max abs diff ", worst);
                CHECK(worst < 1e-5);
                ++n_checked;
            });
            CHECK(n_checked == 16 * 9 + 4 * 3 + 3 + 4);
        }
    }
}

namespace {
template <int64_t N = 3>
struct OneParam {
    Param w{{N}, 0.f};
    template <class F>
    void visit(const std::string& prefix, F&& f) { f(prefix + "w", w); }
};
}  // namespace

TEST_CASE("Adam with Keras' epsilon: two steps by hand") {
    OneParam<> m;
    m.w.value[0] = 1.f, m.w.value[1] = -2.f, m.w.value[2] = 0.5f;
    m.w.grad = Tensor({3});
    Adam adam(0.1);
    adam.eps = 1e-1;  // large, so its placement shows in the result
    const float g1[3] = {0.5f, -1.f, 0.f}, g2[3] = {0.25f, 1.f, 2.f};
    double w[3] = {1, -2, 0.5}, mm[3] = {0, 0, 0}, vv[3] = {0, 0, 0};
    for (int t = 1; t <= 2; ++t) {
        const float* g = t == 1 ? g1 : g2;
        std::copy(g, g + 3, m.w.grad.data());
        const uint64_t before = m.w.version;
        adam.step(m);
        CHECK(m.w.version > before);
        const double alpha = 0.1 * std::sqrt(1 - std::pow(0.999, t)) / (1 - std::pow(0.9, t));
        for (int i = 0; i < 3; ++i) {
            mm[i] = 0.9 * mm[i] + 0.1 * g[i];
            vv[i] = 0.999 * vv[i] + 0.001 * g[i] * g[i];
            w[i] -= alpha * mm[i] / (std::sqrt(vv[i]) + 0.1);
            CHECK(m.w.value[i] == doctest::Approx(w[i]).epsilon(1e-6));
        }
    }
    CHECK(adam.steps == 2);
    CHECK(adam.state().size() == 2);
}

// The update runs on every thread for a large weight (over 65,536 values): the bits must be
// those of one thread.
TEST_CASE("Adam: a large weight updated on 2 threads gets the bits of 1 thread") {
    auto run = [](int threads) {
        const int saved = omp_get_max_threads();
        omp_set_num_threads(threads);
        OneParam<300000> m;
        m.w.grad = Tensor({300000});
        for (int64_t i = 0; i < 300000; ++i) m.w.value[i] = float(std::sin(0.37 * double(i)));
        Adam adam(1e-3);
        adam.weight_decay = 1e-4;
        for (int t = 0; t < 3; ++t) {
            for (int64_t i = 0; i < 300000; ++i) m.w.grad[i] = float(std::cos(0.11 * double(i) + t)) * 1e-2f;
            adam.step(m);
        }
        omp_set_num_threads(saved);
        return m.w.value;
    };
    const Tensor one = run(1), two = run(2);
    CHECK(std::memcmp(one.data(), two.data(), sizeof(float) * 300000) == 0);
    // and (almost) every value moved: the loop covered the whole weight, not one thread's share
    int64_t moved = 0;
    for (int64_t i = 0; i < 300000; ++i) moved += one[i] != float(std::sin(0.37 * double(i)));
    CHECK(moved > 299900);
}

TEST_CASE("SGD: momentum, Nesterov and weight decay by hand; frozen weights do not move") {
    for (bool nesterov : {false, true}) {
        OneParam<> m;
        m.w.value.fill(1.f);
        m.w.grad = Tensor({3}, 0.5f);
        SGD sgd(0.1, 0.9, nesterov);
        sgd.weight_decay = 0.01;
        double w = 1, buf = 0;
        for (int t = 0; t < 3; ++t) {
            sgd.step(m);
            const double g = 0.5 + 0.01 * w;
            buf = 0.9 * buf + g;
            w -= 0.1 * (nesterov ? g + 0.9 * buf : buf);
            CHECK(m.w.value[0] == doctest::Approx(w).epsilon(1e-6));
        }
        m.w.trainable = false;
        const float frozen = m.w.value[0];
        sgd.step(m);
        CHECK(m.w.value[0] == frozen);
    }
}

}  // namespace tlcpu_test_optimizer
