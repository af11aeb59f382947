// Finite-difference gradient checks of every layer's backward on small random shapes, and of
// a whole 1/16-width ResNet-50 (C4) classifier.
//
// Method: for a layer y = f(x; theta) and a fixed random R, the scalar L = sum(y .* R) (in
// double) has dL/dy = R, so backward(R) gives the analytic dL/dtheta and dL/dx. Each is
// compared on a random subset of entries with the central difference
// (L(theta + h) - L(theta - h)) / (theta+ - theta-), the denominator being the float
// values actually set, h = 1% of the entry (or of the tensor's RMS, if larger). Pass:
// |num - ana| <= rtol * max(|num|, |ana|) + atol, with atol a small fraction of the
// tensor's largest analytic entry (so entries that are zero up to float32 noise do not
// decide the test). Every check also requires the analytic gradient to be non-zero
// somewhere and some sampled entry to be clearly non-zero, so that a backward that returns
// zeros (or nothing) fails.
//
// Standalone layers get inputs without kinks (ReLU inputs away from 0, max pooling over
// distinct values). Inside a Bottleneck or the whole network, ReLU signs and the stem's
// max-pool argmax are compared with theta's before a difference is used: a step that
// changes them is shrunk (and if only one side has a kink nearby, a second-order one-sided
// difference is taken on the other). Small steps amplify float32 rounding in L, so an entry
// outside the tolerance is re-judged with an allowance for L's measured rounding noise; at
// most a minority of entries may need an allowance over 25% of their value, and each tensor
// of a Bottleneck or of the network may have one outlier within 50% (a backward bug shows
// in most entries, a numerical accident in one).
//
// Set TLCPU_GRADCHECK_VERBOSE=1 to print the worst relative error of every tensor checked
// (TLCPU_GRADCHECK_ENTRIES=1: every entry).
#include <doctest/doctest.h>

#include <algorithm>
#include <concepts>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <tlcpu/backend/dnnl.hpp>
#include <tlcpu/core/random.hpp>
#include <tlcpu/core/tensor.hpp>
#include <tlcpu/layers/activation.hpp>
#include <tlcpu/layers/batchnorm.hpp>
#include <tlcpu/layers/conv.hpp>
#include <tlcpu/layers/dense.hpp>
#include <tlcpu/layers/pool.hpp>
#include <tlcpu/layers/sequential.hpp>
#include <tlcpu/models/classifier.hpp>
#include <tlcpu/models/resnet.hpp>
#include <tlcpu/train/freeze.hpp>
#include <tlcpu/train/loss.hpp>

namespace tlcpu_test_gradcheck {

using namespace tlcpu;

namespace {

bool verbose() {
    static const bool v = [] {
        const char* e = std::getenv("TLCPU_GRADCHECK_VERBOSE");
        return e && *e && std::string(e) != "0";
    }();
    return v;
}

Tensor randn(Shape s, uint64_t seed, float scale = 1.f, float shift = 0.f) {
    Tensor t(std::move(s));
    for (int64_t i = 0; i < t.size(); ++i) t[i] = shift + scale * normal01(seed, 0x6C, uint64_t(i));
    return t;
}

// |x| >= lo everywhere, random sign: ReLU inputs that no step of h <= lo/100 moves across 0.
Tensor randn_away_from_zero(Shape s, uint64_t seed, float lo = 0.1f) {
    Tensor t = randn(std::move(s), seed);
    for (float& v : t) v = v < 0 ? v - lo : v + lo;
    return t;
}

// Distinct values spaced by `step`, in random order: max pooling without ties.
Tensor distinct_values(Shape s, uint64_t seed, float step) {
    Tensor t(std::move(s));
    std::vector<int64_t> order(size_t(t.size()));
    std::iota(order.begin(), order.end(), 0);
    std::vector<uint64_t> key(order.size());
    for (size_t i = 0; i < key.size(); ++i) key[i] = hash3(seed, 0x9D, i);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[size_t(a)] < key[size_t(b)]; });
    const double mid = double(t.size()) / 2;
    for (int64_t i = 0; i < t.size(); ++i) t[order[size_t(i)]] = float((double(i) - mid) * step);
    return t;
}


double dot(const Tensor& y, const Tensor& r) {
    REQUIRE(y.shape() == r.shape());
    double s = 0;
    for (int64_t i = 0; i < y.size(); ++i) s += double(y[i]) * double(r[i]);
    return s;
}

double max_abs(const Tensor& t) {
    double m = 0;
    for (float v : t) m = std::max(m, double(std::abs(v)));
    return m;
}

// The worst relative error per layer kind, reported once per test case when verbose.
std::map<std::string, double>& worst_by_layer() {
    static std::map<std::string, double> w;
    return w;
}

// Which side of every kink the forward is on: the sign pattern of each ReLU and the
// window argmax of each max pool. Central differences are only meaningful when L is smooth
// between theta - h and theta + h, i.e. when this pattern is the same at both ends as at
// theta itself.
using Signature = std::vector<uint8_t>;

struct Opts {
    int count = 20;         // entries checked per tensor (all of them if the tensor is smaller)
    double hrel = 1e-2;     // h = hrel * max(|theta_i|, hfloor), unless habs > 0
    double hfloor = -1;     // < 0: the tensor's root-mean-square value (its typical scale)
    double habs = 0;
    double rtol = 1e-2;
    double atol_frac = 1e-3;  // atol = atol_frac * max |analytic gradient| of the tensor
    double pick_frac = 0;     // sample only entries with |analytic| >= pick_frac * max |analytic|
    uint64_t seed = 1;
    // For layers with kinks inside: the pattern after the last loss() call. On each side
    // the step is divided by 4 (up to 4 times) until the pattern is unchanged there; equal
    // steps give a central difference, unequal ones a second-order one-sided difference on
    // the side with the larger step. An entry with a kink at every step on both sides is
    // skipped; at most a quarter of the entries may be.
    std::function<Signature()> signature;
    int shrinks = 5;  // steps tried per side: h0, h0/4, ..., h0/256
    int outliers = 0;           // entries per tensor allowed beyond the tolerance ...
    double outlier_rtol = 0.5;  // ... but within this
    bool whole_network = false;
    int *informative = nullptr, *checked = nullptr;  // totals over several calls
};

// Checks `ana` (the analytic dL/dtheta, same shape as theta) against central differences of
// loss() on a random subset of theta's entries. changed() runs after every edit of theta
// (a conv weight's touch()). Returns the worst relative error among the entries at least 1%
// of the tensor's largest analytic entry.
template <class Loss, std::invocable Changed>
double gradcheck(const std::string& layer, const std::string& what, Tensor& theta, const Tensor& ana, Loss&& loss,
                 Changed&& changed, const Opts& o = {}) {
    INFO(layer, ": ", what);
    REQUIRE(ana.shape() == theta.shape());
    const double scale = max_abs(ana);
    CHECK_MESSAGE(scale > 0, "analytic gradient is identically zero");
    const double atol = o.atol_frac * scale;

    std::vector<int64_t> idx;
    for (int64_t i = 0; i < theta.size(); ++i)
        if (std::abs(ana[i]) >= o.pick_frac * scale) idx.push_back(i);
    if (int64_t(idx.size()) > o.count) {
        auto key = [&](int64_t i) { return hash3(o.seed, 0x5E1, uint64_t(i)); };  // a random order
        std::partial_sort(idx.begin(), idx.begin() + o.count, idx.end(),
                          [&](int64_t a, int64_t b) { return key(a) < key(b); });
        idx.resize(size_t(o.count));
        // Sparse gradients (a strided 1x1 conv's dx) could leave only zeros in the sample:
        // make sure it holds one of the largest entries.
        if (std::none_of(idx.begin(), idx.end(), [&](int64_t i) { return std::abs(ana[i]) >= 0.5 * scale; }))
            idx.back() = std::max_element(ana.begin(), ana.end(), [](float a, float b) { return std::abs(a) < std::abs(b); }) -
                         ana.begin();
    }

    double hfloor = o.hfloor;
    if (hfloor < 0) {
        double ss = 0;
        for (float v : theta) ss += double(v) * v;
        hfloor = std::sqrt(ss / double(std::max<int64_t>(theta.size(), 1)));
    }
    // theta is restored bit-exactly after every entry, so L(theta) and its pattern are fixed.
    const double f0 = loss();
    const Signature base = o.signature ? o.signature() : Signature{};
    double worst = 0;
    double worst_noise = 0;
    int nontrivial = 0, failed = 0, skipped = 0, retries = 0, one_sided = 0, noisy = 0, allowance = 0, outliers = 0;
    for (int64_t i : idx) {
        const float v0 = theta[i];
        const double h0 = o.habs > 0 ? o.habs : o.hrel * std::max(double(std::abs(v0)), hfloor);
        // L at theta_i + step (as float), and whether the kink pattern is unchanged there.
        struct Point {
            double t = 0, f = 0;  // the step actually taken, and L there
            bool smooth = false;
        };
        auto at = [&](double step) {
            theta[i] = float(double(v0) + step);
            Point q;
            q.t = double(theta[i]) - double(v0);
            changed();
            q.f = loss();
            q.smooth = !o.signature || o.signature() == base;
            return q;
        };
        // The largest step h0 / 4^k (k < shrinks) on one side that crosses no kink.
        struct Side {
            Point p;
            double h = 0;
        };
        auto search = [&](int sign) {
            double h = h0;
            for (int k = 0; k < o.shrinks; ++k, h /= 4, ++retries)
                if (Point q = at(sign * h); q.smooth) return Side{q, h};
            return Side{};
        };
        // One-sided, second order, from L at t0, t1 and t2 (t1, t2 on the same side of t0).
        auto three_point = [](const Point& p0, const Point& p1, const Point& p2) {
            const double t1 = p1.t - p0.t, t2 = p2.t - p0.t;
            return ((p1.f - p0.f) * t2 * t2 - (p2.f - p0.f) * t1 * t1) / (t1 * t2 * (t2 - t1));
        };
        const Side plus = search(+1), minus = search(-1);
        // The difference used: central with step h, or one-sided with step `sign` * h.
        double h = 0;
        int sign = 0;
        if (plus.p.smooth && minus.p.smooth && plus.h == minus.h) {
            h = plus.h;
        } else if (plus.p.smooth || minus.p.smooth) {
            // A kink close on one side only: a central difference would need a step so small
            // that float32 rounding dominates, so use the clean side's larger step.
            sign = plus.h >= minus.h ? 1 : -1;
            h = std::max(plus.h, minus.h);
        }
        // That difference around theta_i + shift; false if a kink moved in.
        auto estimate = [&](double shift, double& out) {
            if (sign == 0) {
                const Point p = shift == 0 ? plus.p : at(shift + h), m = shift == 0 ? minus.p : at(shift - h);
                out = (p.f - m.f) / (p.t - m.t);
                return p.smooth && m.smooth;
            }
            const Point p0 = shift == 0 ? Point{0, f0, true} : at(shift);
            const Point p1 = at(shift + sign * h / 2);
            const Point p2 = shift == 0 ? (sign > 0 ? plus.p : minus.p) : at(shift + sign * h);
            out = three_point(p0, p1, p2);
            return p0.smooth && p1.smooth && p2.smooth;
        };
        double num = 0;
        const bool have = h > 0 && estimate(0, num);
        one_sided += have && sign != 0;
        const double a = ana[i];
        if (!have) {
            theta[i] = v0;
            changed();
            ++skipped;
            continue;
        }
        const double err = std::abs(num - a), mag = std::max(std::abs(num), std::abs(a));
        bool ok = err <= o.rtol * mag + atol;
        double fd_noise = 0;
        if (!ok) {
            // Outside the tolerance: allow for float32 rounding in L, which a small step
            // amplifies. It is measured on the estimate itself: the same difference taken
            // around theta_i +- h/8 and +- h/4 (where the true derivative is the same to within
            // the difference's own error) scatters by about that much, and three times the
            // largest deviation is allowed. The analytic value plays no part in it. An entry
            // that passes only with an allowance over 25% of its value counts as uninformative.
            for (double shift : {h / 8, -h / 8, h / 4, -h / 4}) {
                double other = 0;
                if (estimate(shift, other)) fd_noise = std::max(fd_noise, 3 * std::abs(other - num));
            }
            ok = err <= o.rtol * mag + atol + fd_noise;
            ++allowance;
            noisy += fd_noise > 0.25 * mag;
            // Through many kinks a rare entry stays off even so (about 1 in 300 beyond 10%
            // through the whole network): a composite may have `outliers` of them per tensor,
            // within outlier_rtol. A backward bug shows in most entries, not one.
            if (!ok && outliers < o.outliers && err <= o.outlier_rtol * mag + atol) {
                ok = true;
                ++outliers;
                ++noisy;
            }
        }
        theta[i] = v0;
        changed();
        if (mag >= 1e-2 * scale) {
            worst = std::max(worst, err / mag);
            worst_noise = std::max(worst_noise, fd_noise / mag);
        }
        nontrivial += std::abs(num) > 10 * atol;
        failed += !ok;
        if (std::getenv("TLCPU_GRADCHECK_ENTRIES"))
            std::printf("    entry %lld: h %.3g numeric %.6g analytic %.6g rel %.2e noise %.2e\n", (long long)i, h, num,
                        a, err / std::max(mag, 1e-30), fd_noise / std::max(mag, 1e-30));
        if (!ok) {
            INFO("entry ", i, ": numeric ", num, ", analytic ", a, ", |diff| ", err, ", atol ", atol,
                 ", rounding noise ", fd_noise);
            CHECK(ok);
        }
    }
    CHECK_MESSAGE(nontrivial > 0, "no sampled entry has a clearly non-zero numeric gradient");
    CHECK(failed == 0);
    CHECK_MESSAGE(4 * skipped <= int(idx.size()), skipped, " of ", idx.size(), " entries on a kink at every step");
    // The rounding allowance and outliers must leave the check its teeth: most entries (at
    // least one, for a whole network's) within 25%.
    const int checked = int(idx.size()) - skipped;
    if (o.whole_network)
        CHECK_MESSAGE(noisy < checked, "every entry has rounding noise over 25%");
    else
        CHECK_MESSAGE(2 * noisy <= checked, noisy, " of ", checked, " entries with rounding noise over 25%");
    if (o.informative) *o.informative += checked - noisy, *o.checked += checked;
    if (verbose())
        std::printf("  %-24s %-52s worst rel err %.2e  (%zu entries, %d one-sided, %d skipped, %d smaller steps, "
                    "%d rounding allowances up to %.1e, %d outliers, max|grad| %.3g)\n",
                    layer.c_str(), what.c_str(), worst, idx.size(), one_sided, skipped, retries, allowance,
                    worst_noise, outliers, scale);
    double& w = worst_by_layer()[layer];
    w = std::max(w, worst);
    return worst;
}

template <class Loss>
double gradcheck(const std::string& layer, const std::string& what, Tensor& theta, const Tensor& ana, Loss&& loss,
                 const Opts& o = {}) {
    return gradcheck(layer, what, theta, ana, loss, [] {}, o);
}

void report(const char* title) {
    if (!verbose()) return;
    std::printf("%s\n", title);
    for (auto& [k, v] : worst_by_layer()) std::printf("    worst %-34s %.2e\n", k.c_str(), v);
    worst_by_layer().clear();
}

// ---------------------------------------------------------------------------------------
// Conv2d

template <int In, int Out, int K, int S, int P, bool Bias>
void conv_case(int64_t n, int64_t h, int64_t w, uint64_t seed) {
    const std::string name = "Conv2d<" + std::to_string(In) + "," + std::to_string(Out) + "," + std::to_string(K) +
                             "," + std::to_string(S) + "," + std::to_string(P) + "," + (Bias ? "bias" : "nobias") + ">";
    Conv2d<In, Out, K, S, P, Bias> conv;
    conv.weight.value = randn({Out, In, K, K}, seed, 1.f / std::sqrt(float(In * K * K)));
    conv.weight.touch();
    if constexpr (Bias) conv.bias.value = randn({Out}, seed + 1, 0.5f);
    Tensor x = randn({n, In, h, w}, seed + 2);

    const Tensor y0 = to_tensor(conv.forward(view(x), Mode::training));
    const Tensor R = randn(y0.shape(), seed + 3);
    const dnnl::memory* dxm = conv.backward(view(R), true);
    REQUIRE(dxm != nullptr);
    Backend::get().wait();
    const Tensor dx = to_tensor(*dxm);
    REQUIRE(dx.shape() == x.shape());
    const Tensor dW = conv.weight.grad;
    Tensor db;  // (copying a default-constructed Tensor is not safe: copy only a real gradient)
    if constexpr (Bias) db = conv.bias.grad;

    auto loss = [&] { return dot(to_tensor(conv.forward(view(x), Mode::training)), R); };
    Opts o;
    o.seed = seed;
    gradcheck("Conv2d", name + " dW", conv.weight.value, dW, loss, [&] { conv.weight.touch(); }, o);
    if constexpr (Bias) gradcheck("Conv2d", name + " db", conv.bias.value, db, loss, o);
    gradcheck("Conv2d", name + " dx", x, dx, loss, o);
}

// ---------------------------------------------------------------------------------------
// BatchNorm2d

template <int C>
void bn2d_case(BNMode mode, int64_t n, int64_t h, int64_t w, uint64_t seed) {
    const std::string name =
        std::string("BatchNorm2d/") + (mode == BNMode::batch ? "batch" : "inference") + "<" + std::to_string(C) + ">";
    BatchNorm2d<C> bn;
    bn.config.mode = mode;
    bn.config.eps = 1e-3f;
    bn.weight.value = randn({C}, seed, 0.3f, 1.f);
    bn.bias.value = randn({C}, seed + 1, 0.3f);
    bn.running_mean.value = randn({C}, seed + 2, 0.3f);
    for (int c = 0; c < C; ++c) bn.running_var.value[c] = 0.5f + uniform01(seed, 3, uint64_t(c));
    Tensor x = randn({n, C, h, w}, seed + 4, 1.5f, 0.5f);

    const Tensor y0 = to_tensor(bn.forward(view(x), Mode::training));
    const Tensor R = randn(y0.shape(), seed + 5);
    const dnnl::memory* dxm = bn.backward(view(R), true);
    REQUIRE(dxm != nullptr);
    Backend::get().wait();
    const Tensor dx = to_tensor(*dxm);
    const Tensor dg = bn.weight.grad, dbeta = bn.bias.grad;

    auto loss = [&] { return dot(to_tensor(bn.forward(view(x), Mode::training)), R); };
    Opts o;
    o.seed = seed;
    gradcheck(name.substr(0, name.find('<')), name + " dgamma", bn.weight.value, dg, loss, o);
    gradcheck(name.substr(0, name.find('<')), name + " dbeta", bn.bias.value, dbeta, loss, o);
    gradcheck(name.substr(0, name.find('<')), name + " dx", x, dx, loss, o);

    if (mode == BNMode::batch) {
        // With batch statistics y is invariant to shifting one channel of x, so the true
        // dx sums to zero per channel; the frozen-statistics formula alone would not.
        const int64_t hw = h * w;
        for (int c = 0; c < C; ++c) {
            double s = 0, m = 0;
            for (int64_t b = 0; b < n; ++b)
                for (int64_t j = 0; j < hw; ++j) {
                    s += dx[(b * C + c) * hw + j];
                    m = std::max(m, double(std::abs(dx[(b * C + c) * hw + j])));
                }
            CHECK(std::abs(s) <= 1e-4 * m * double(n * hw));
        }
    }
}

// ---------------------------------------------------------------------------------------
// MaxPool2d

template <int K, int S, int P, bool Ceil>
void maxpool_case(int64_t n, int64_t c, int64_t h, int64_t w, uint64_t seed) {
    const std::string name = "MaxPool2d<" + std::to_string(K) + "," + std::to_string(S) + "," + std::to_string(P) +
                             "," + (Ceil ? "ceil" : "floor") + ">";
    MaxPool2d<K, S, P, Ceil> pool;
    const float step = 0.01f;
    Tensor x = distinct_values({n, c, h, w}, seed, step);
    const Tensor y0 = to_tensor(pool.forward(view(x), Mode::training));
    const Tensor R = randn(y0.shape(), seed + 1);
    const dnnl::memory* dxm = pool.backward(view(R), true);
    REQUIRE(dxm != nullptr);
    const Tensor dx = to_tensor(*dxm);
    REQUIRE(dx.shape() == x.shape());

    // Every entry against routing by a plain-loop argmax (PyTorch's windows; padding never wins).
    const int64_t oh = y0.dim(2), ow = y0.dim(3);
    Tensor want(x.shape(), 0.f);
    for (int64_t plane = 0; plane < n * c; ++plane)
        for (int64_t i = 0; i < oh; ++i)
            for (int64_t j = 0; j < ow; ++j) {
                int64_t best = -1;
                for (int64_t u = 0; u < K; ++u)
                    for (int64_t v = 0; v < K; ++v) {
                        const int64_t r = i * S - P + u, q = j * S - P + v;
                        if (r < 0 || r >= h || q < 0 || q >= w) continue;
                        const int64_t at = (plane * h + r) * w + q;
                        if (best < 0 || x[at] > x[best]) best = at;
                    }
                REQUIRE(best >= 0);
                want[best] += R[(plane * oh + i) * ow + j];
            }
    CHECK(max_rel_diff(dx, want) < 1e-6);

    auto loss = [&] { return dot(to_tensor(pool.forward(view(x), Mode::training)), R); };
    Opts o;
    o.seed = seed;
    o.count = 40;
    o.habs = step / 10;  // far below half the spacing of the values: no change of argmax
    gradcheck("MaxPool2d", name + " dx", x, dx, loss, o);
}

// ---------------------------------------------------------------------------------------
// Kinks inside composites

template <class T>
struct is_maxpool : std::false_type {};
template <int K, int S, int P, bool C>
struct is_maxpool<MaxPool2d<K, S, P, C>> : std::true_type {
    static constexpr int k = K, s = S, p = P;
};

// The sign of every ReLU output (a ReLU layer's, or a BatchNorm's with its ReLU), and for a
// max pool fed by a ReLU (the stem's) the position of each window's maximum within its window.
template <class Model>
Signature kink_signature(Model& m) {
    Backend::get().wait();
    Signature sig;
    const dnnl::memory* last = nullptr;  // the previous layer's output, when it ended in a ReLU
    for_each_layer(m, [&](auto& l) {
        using L = std::remove_cvref_t<decltype(l)>;
        bool relu = std::is_same_v<L, ReLU>;
        if constexpr (std::is_base_of_v<detail::BNCore, L>) relu = l.relu;
        if constexpr (std::is_same_v<L, ReLU> || std::is_base_of_v<detail::BNCore, L>) {
            if (relu) {
                // Straight from the output buffer: its layout is the same at every evaluation.
                const dnnl::memory& y = l.output();
                const float* v = static_cast<const float*>(y.get_data_handle());
                const size_t n = y.get_desc().get_size() / sizeof(float);
                for (size_t k = 0; k < n; ++k) sig.push_back(v[k] > 0);
                last = &y;
                return;
            }
        } else if constexpr (is_maxpool<L>::value) {
            constexpr int K = is_maxpool<L>::k, S = is_maxpool<L>::s, P = is_maxpool<L>::p;
            REQUIRE(last != nullptr);
            const Tensor x = to_tensor(*last);
            const dims yd = l.output().get_desc().dims();
            const int64_t planes = x.dim(0) * x.dim(1), h = x.dim(2), w = x.dim(3), oh = yd[2], ow = yd[3];
            for (int64_t plane = 0; plane < planes; ++plane)
                for (int64_t i = 0; i < oh; ++i)
                    for (int64_t j = 0; j < ow; ++j) {
                        int best = -1;
                        float bv = 0;
                        for (int u = 0; u < K; ++u)
                            for (int v = 0; v < K; ++v) {
                                const int64_t r = i * S - P + u, q = j * S - P + v;
                                if (r < 0 || r >= h || q < 0 || q >= w) continue;
                                const float xv = x[(plane * h + r) * w + q];
                                if (best < 0 || xv > bv) best = u * K + v, bv = xv;
                            }
                        sig.push_back(uint8_t(best));
                    }
        }
        last = nullptr;
    });
    return sig;
}

// ---------------------------------------------------------------------------------------
// Bottleneck

// He-normal convs; BN gamma ~ 1 (bn3's ~ residual_gamma: a small value keeps a deep
// network's residual branches small, as zero-init-residual does), small beta and statistics.
template <class Net>
void init_backbone_params(Net& net, uint64_t seed, float residual_gamma = 1.f) {
    uint64_t k = 0;
    net.visit("", [&](const std::string& name, Param& p) {
        const uint64_t s = hash_name(name) ^ seed;
        ++k;
        if (p.value.rank() == 4) {
            init_he_normal(p.value, seed, s);
            p.touch();
        } else if (name.ends_with("running_mean")) {
            p.value = randn(p.value.shape(), s, 0.2f);
        } else if (name.ends_with("running_var")) {
            for (int64_t i = 0; i < p.value.size(); ++i) p.value[i] = 0.6f + 0.8f * uniform01(seed, s, uint64_t(i));
        } else if (name.ends_with("bn3.weight")) {
            p.value = randn(p.value.shape(), s, 0.2f * residual_gamma, residual_gamma);
        } else if (name.ends_with("weight")) {  // BN gamma (conv weights are rank 4)
            p.value = randn(p.value.shape(), s, 0.2f, 1.f);
        } else if (name.ends_with("bias")) {
            p.value = randn(p.value.shape(), s, 0.2f);
        }
    });
    REQUIRE(k > 0);
}

template <int In, int Width, int Out, int Stride, Layout L>
void bottleneck_case(BNMode mode, int64_t n, int64_t h, int64_t w, uint64_t seed) {
    using Block = Bottleneck<In, Width, Out, Stride, L>;
    const std::string name = "Bottleneck<" + std::to_string(In) + "," + std::to_string(Width) + "," +
                             std::to_string(Out) + "," + std::to_string(Stride) + "," + to_string(L) + ">" +
                             (Block::has_projection ? "+proj" : "") + "/" +
                             (mode == BNMode::batch ? "batch" : "inference");
    auto blk = std::make_unique<Block>();
    init_backbone_params(*blk, seed);
    set_bn_mode(*blk, mode);
    Tensor x = randn({n, In, h, w}, seed + 1);

    const Tensor y0 = to_tensor(blk->forward(view(x), Mode::training));
    const Tensor R = randn(y0.shape(), seed + 2);
    const dnnl::memory* dxm = blk->backward(view(R), true);
    REQUIRE(dxm != nullptr);
    Backend::get().wait();
    const Tensor dx = to_tensor(*dxm);
    REQUIRE(dx.shape() == x.shape());

    std::vector<std::pair<std::string, Param*>> params;
    blk->visit("", [&](const std::string& pn, Param& p) {
        if (p.kind == ParamKind::weight) params.emplace_back(pn, &p);
    });
    CHECK(params.size() == (Block::has_projection ? 12u : 9u));
    std::vector<Tensor> grads;
    for (const auto& np : params) {
        INFO(name, " ", np.first);
        REQUIRE(np.second->grad.shape() == np.second->value.shape());
        grads.push_back(np.second->grad);
    }

    auto loss = [&] { return dot(to_tensor(blk->forward(view(x), Mode::training)), R); };
    Opts o;
    o.seed = seed;
    o.count = 8;
    o.atol_frac = 3e-3;  // float32 noise through three BNs: entries near zero are only this exact
    o.outliers = 1;
    o.signature = [&] { return kink_signature(*blk); };
    const std::string layer = std::string("Bottleneck/") + (mode == BNMode::batch ? "batch" : "inference");
    for (size_t i = 0; i < params.size(); ++i) {
        Param* p = params[i].second;
        gradcheck(layer, name + " " + params[i].first, p->value, grads[i], loss, [p] { p->touch(); }, o);
    }
    o.count = 16;
    gradcheck(layer, name + " dx", x, dx, loss, o);
}

// ---------------------------------------------------------------------------------------
// The whole network: 1/16-width ResNet-50 v1.5 up to layer3, 3 classes

using SmallNet = Classifier<ResNet50<Layout::v1_5, 4, Depth::c4>, 3>;

template <class Model>
void set_bn_momentum(Model& m, float momentum) {
    for_each_layer(m, [&](auto& l) {
        if constexpr (is_batchnorm2d<std::remove_cvref_t<decltype(l)>>) l.config.momentum = momentum;
    });
}

void network_case(BNMode backbone_mode, uint64_t seed) {
    auto net = std::make_unique<SmallNet>();
    init_backbone_params(*net, seed, 0.2f);
    // Keep most ReLU inputs well away from their kink: BN shifts of about +1.5 before every
    // ReLU (bn3's stays small: its output is a small residual added to a positive stream).
    // Fewer units close to 0 let finite differences take larger, less noisy steps.
    net->visit("", [&](const std::string& n, Param& p) {
        if (!n.ends_with(".bias") || n.starts_with("head_")) return;
        p.value = n.ends_with("bn3.bias") ? randn(p.value.shape(), hash_name(n) ^ seed, 0.05f)
                                          : randn(p.value.shape(), hash_name(n) ^ seed, 0.2f, 1.5f);
    });
    net->head.fc.weight.value = randn({3, SmallNet::features}, seed + 1, 0.3f);
    net->head.fc.bias.value = randn({3}, seed + 2, 0.1f);
    net->head.bn.weight.value = randn({SmallNet::features}, seed + 3, 0.2f, 1.f);
    net->head.bn.bias.value = randn({SmallNet::features}, seed + 4, 0.2f);
    net->head.drop.p = 0.25f;  // the mask is a function of (seed, step, index): fixed across forwards
    net->head.drop.seed = seed;
    const Tensor x = randn({2, 3, 32, 32}, seed + 5);

    // Calibrate the backbone's running statistics on this very batch (momentum 1), so that
    // every BN in inference mode normalises to roughly unit scale through all 13 blocks.
    set_bn_mode(net->backbone, BNMode::batch);
    set_bn_momentum(net->backbone, 1.f);
    const Tensor features = net->head.pool.forward(net->backbone.forward(view(x), Mode::training), Mode::training);
    set_bn_mode(net->backbone, backbone_mode);
    // The head's BatchNorm1d stays on running statistics: on a batch of two, batch statistics
    // make its output +-1 whatever the features are, which leaves the backbone's gradient a
    // float32 cancellation residue that finite differences cannot resolve. Its running
    // statistics: each feature's batch mean, and one variance over all features (a
    // per-feature variance of two samples can be nearly zero and blow the loss up).
    {
        const int64_t n = features.dim(0), c = features.dim(1);
        double all = 0, all2 = 0;
        for (int64_t j = 0; j < c; ++j) {
            double m = 0;
            for (int64_t i = 0; i < n; ++i) m += features[i * c + j] / double(n);
            net->head.bn.running_mean.value[j] = float(m);
        }
        for (float v : features) all += v, all2 += double(v) * v;
        const double cnt = double(features.size()), var = all2 / cnt - (all / cnt) * (all / cnt);
        REQUIRE(var > 0);
        net->head.bn.running_var.value.fill(float(var));
    }
    net->head.bn.config.mode = BNMode::inference;

    // Label each image with its least likely class: a confident correct prediction would
    // leave dL/dlogits, and every gradient with it, close to zero.
    std::vector<int> labels;
    {
        const Tensor& z = net->forward(x, Mode::training);
        for (int64_t i = 0; i < z.dim(0); ++i)
            labels.push_back(int(std::min_element(z.data() + i * z.dim(1), z.data() + (i + 1) * z.dim(1)) -
                                 (z.data() + i * z.dim(1))));
    }
    auto r0 = softmax_cross_entropy(net->forward(x, Mode::training), labels);
    REQUIRE(std::isfinite(r0.loss));
    net->backward(r0.grad);

    // Entries from every depth, and how many of each. The layer1 BN is a bn3 (16 channels,
    // feeding the residual sum): a bn1 has 4 channels and a much smaller gradient (with batch
    // statistics bn2 normalises away most of what its gamma does), below what float32
    // differences through the whole network resolve.
    const std::vector<std::pair<std::string, int>> picks{
        {"conv1.weight", 6},           {"layer1.0.bn3.weight", 8},   {"layer1.2.bn3.bias", 8},
        {"layer2.0.downsample.0.weight", 4}, {"layer3.0.conv2.weight", 4}, {"layer3.5.conv3.weight", 4},
        {"head_bn.weight", 4},         {"head_fc.weight", 4},        {"head_fc.bias", 3}};
    std::vector<Param*> params(picks.size(), nullptr);
    net->visit("", [&](const std::string& n, Param& p) {
        for (size_t i = 0; i < picks.size(); ++i)
            if (n == picks[i].first) params[i] = &p;
    });
    std::vector<Tensor> grads;
    for (size_t i = 0; i < picks.size(); ++i) {
        INFO(picks[i].first);
        REQUIRE(params[i] != nullptr);
        REQUIRE(params[i]->grad.shape() == params[i]->value.shape());
        grads.push_back(params[i]->grad);
    }

    auto loss = [&] { return softmax_cross_entropy(net->forward(x, Mode::training), labels).loss; };
    const std::string layer = std::string("Classifier/backbone BN ") + (backbone_mode == BNMode::batch ? "batch" : "inference");
    Opts o;
    o.seed = seed;
    o.pick_frac = 0.25;
    o.hrel = 1e-2;
    o.rtol = 2e-2;
    o.atol_frac = 1e-2;
    o.outliers = 1;
    o.signature = [&] { return kink_signature(*net); };
    o.whole_network = true;
    int informative = 0, checked = 0;
    o.informative = &informative, o.checked = &checked;
    for (size_t i = 0; i < picks.size(); ++i) {
        Param* p = params[i];
        o.count = picks[i].second;
        gradcheck(layer, picks[i].first, p->value, grads[i], loss, [p] { p->touch(); }, o);
    }
    INFO(layer, ": ", informative, " of ", checked, " entries with rounding noise under 25%");
    CHECK(4 * informative >= 3 * checked);
}

// A head layer (Eigen, plain tensors): the analytic gradients of <forward(x), R> for a
// random R, each named parameter's and x's, against finite differences. Returns dx and R.
template <class L>
std::pair<Tensor, Tensor> head_layer_case(const std::string& layer, L& l, Tensor& x,
                                          const std::vector<std::pair<std::string, Param*>>& params, uint64_t r_seed,
                                          uint64_t fd_seed) {
    const Tensor y0 = l.forward(x, Mode::training);
    const Tensor R = randn(y0.shape(), r_seed);
    const Tensor* dxp = l.backward(R, true);
    REQUIRE(dxp != nullptr);
    const Tensor dx = *dxp;
    std::vector<Tensor> grads;
    for (const auto& [name, p] : params) grads.push_back(p->grad);
    auto loss = [&] { return dot(l.forward(x, Mode::training), R); };
    Opts o;
    o.seed = fd_seed;
    for (size_t i = 0; i < params.size(); ++i)
        gradcheck(layer, layer + " " + params[i].first, params[i].second->value, grads[i], loss, o);
    gradcheck(layer, layer + " dx", x, dx, loss, o);
    return {dx, R};
}

}  // namespace

TEST_SUITE("gradcheck") {

TEST_CASE("gradcheck: Conv2d dW, db, dx for kernels 1, 3, 7, strides 1, 2, padding, with and without bias") {
    conv_case<3, 5, 1, 1, 0, false>(2, 6, 5, 101);
    conv_case<3, 5, 1, 2, 0, true>(2, 7, 6, 102);
    conv_case<4, 6, 3, 1, 1, true>(2, 7, 8, 103);
    conv_case<4, 6, 3, 2, 1, false>(2, 9, 7, 104);
    conv_case<5, 3, 3, 2, 0, true>(1, 10, 9, 105);
    conv_case<3, 4, 7, 2, 3, false>(2, 13, 11, 106);  // the stem's shape
    conv_case<3, 4, 7, 1, 0, true>(1, 9, 10, 107);
    conv_case<16, 32, 3, 1, 1, false>(2, 5, 6, 108);  // channel counts oneDNN blocks by 16
    report("Conv2d");
}

TEST_CASE("gradcheck: BatchNorm2d with running statistics and with batch statistics") {
    bn2d_case<5>(BNMode::inference, 2, 4, 6, 201);
    bn2d_case<16>(BNMode::inference, 3, 3, 5, 202);
    bn2d_case<5>(BNMode::batch, 2, 4, 6, 203);
    bn2d_case<16>(BNMode::batch, 3, 3, 5, 204);
    report("BatchNorm2d");
}

TEST_CASE("gradcheck: ReLU away from its kink") {
    ReLU relu;
    Tensor x = randn_away_from_zero({2, 5, 4, 3}, 301);
    const Tensor y0 = to_tensor(relu.forward(view(x), Mode::training));
    const Tensor R = randn(y0.shape(), 302);
    const dnnl::memory* dxm = relu.backward(view(R), true);
    REQUIRE(dxm != nullptr);
    const Tensor dx = to_tensor(*dxm);
    REQUIRE(dx.shape() == x.shape());
    for (int64_t i = 0; i < x.size(); ++i) REQUIRE(dx[i] == (x[i] > 0 ? R[i] : 0.f));
    auto loss = [&] { return dot(to_tensor(relu.forward(view(x), Mode::training)), R); };
    Opts o;
    o.seed = 303;
    o.count = 40;
    o.hfloor = 0;  // h = 1% of |x| never crosses 0
    gradcheck("ReLU", "ReLU dx", x, dx, loss, o);
    report("ReLU");
}

TEST_CASE("gradcheck: MaxPool2d with padding and ceil mode, distinct values") {
    maxpool_case<3, 2, 1, false>(2, 3, 9, 8, 401);  // torchvision's stem pool
    maxpool_case<3, 2, 0, true>(2, 3, 8, 9, 402);   // caffe's, with a partial last window
    maxpool_case<2, 2, 0, false>(1, 4, 6, 7, 403);
    maxpool_case<3, 3, 1, true>(2, 2, 10, 11, 404);
    report("MaxPool2d");
}

TEST_CASE("gradcheck: GlobalAvgPool") {
    GlobalAvgPool gap;
    Tensor x = randn({2, 6, 3, 5}, 501);
    const Tensor y0 = gap.forward(view(x), Mode::training);
    const Tensor R = randn(y0.shape(), 502);
    const dnnl::memory& dxm = gap.backward(R);
    const Tensor dx = to_tensor(dxm);
    REQUIRE(dx.shape() == x.shape());
    auto loss = [&] { return dot(gap.forward(view(x), Mode::training), R); };
    Opts o;
    o.seed = 503;
    gradcheck("GlobalAvgPool", "GlobalAvgPool dx", x, dx, loss, o);
    report("GlobalAvgPool");
}

TEST_CASE("gradcheck: Add, operands in different layouts") {
    // Add has no backward of its own: the gradient of a sum is the upstream gradient, to
    // both operands (Bottleneck sums its two paths' input gradients with a second Add).
    // This checks that numerically, with b in NHWC so Add reorders it into a's layout.
    Add add;
    Tensor a = randn({2, 5, 3, 4}, 601), b = randn({2, 5, 3, 4}, 602);  // b's bytes are NHWC
    const dnnl::memory::desc bd({2, 5, 3, 4}, dt::f32, tag::nhwc);
    auto bmem = [&] { return dnnl::memory(bd, Backend::get().engine(), b.data()); };
    const Tensor y0 = to_tensor(add.forward(view(a), bmem()));
    for (int64_t i = 0; i < 2; ++i)  // spot-check the layout handling of the forward
        for (int64_t c = 0; c < 5; ++c) {
            const int64_t nchw = ((i * 5 + c) * 3 + 1) * 4 + 2, nhwc = ((i * 3 + 1) * 4 + 2) * 5 + c;
            REQUIRE(y0[nchw] == a[nchw] + b[nhwc]);
        }
    const Tensor R = randn(y0.shape(), 603);
    auto loss = [&] { return dot(to_tensor(add.forward(view(a), bmem())), R); };
    Tensor Rb(b.shape());  // R permuted to b's NHWC bytes
    for (int64_t i = 0; i < 2; ++i)
        for (int64_t c = 0; c < 5; ++c)
            for (int64_t y = 0; y < 3; ++y)
                for (int64_t x = 0; x < 4; ++x) Rb[((i * 3 + y) * 4 + x) * 5 + c] = R[((i * 5 + c) * 3 + y) * 4 + x];
    Opts o;
    o.seed = 604;
    gradcheck("Add", "Add da", a, R, loss, o);
    gradcheck("Add", "Add db (NHWC)", b, Rb, loss, o);
    report("Add");
}

TEST_CASE("gradcheck: Dense") {
    Dense<7, 4> fc;
    fc.weight.value = randn({4, 7}, 701, 0.4f);
    fc.bias.value = randn({4}, 702, 0.3f);
    Tensor x = randn({5, 7}, 703);
    head_layer_case("Dense<7,4>", fc, x, {{"dW", &fc.weight}, {"db", &fc.bias}}, 704, 705);
    report("Dense");
}

TEST_CASE("gradcheck: BatchNorm1d with batch statistics and with running statistics") {
    for (BNMode mode : {BNMode::batch, BNMode::inference}) {
        const std::string layer = std::string("BatchNorm1d/") + (mode == BNMode::batch ? "batch" : "inference");
        BatchNorm1d<6> bn;
        bn.config.mode = mode;
        bn.config.eps = 1e-3f;
        bn.weight.value = randn({6}, 801, 0.3f, 1.f);
        bn.bias.value = randn({6}, 802, 0.3f);
        bn.running_mean.value = randn({6}, 803, 0.3f);
        for (int c = 0; c < 6; ++c) bn.running_var.value[c] = 0.5f + uniform01(804, 0, uint64_t(c));
        Tensor x = randn({5, 6}, 805, 1.5f, 0.5f);
        head_layer_case(layer, bn, x, {{"dgamma", &bn.weight}, {"dbeta", &bn.bias}}, 806, 807);
    }
    report("BatchNorm1d");
}

TEST_CASE("gradcheck: Dropout with a fixed mask") {
    Dropout drop;
    drop.p = 0.4f;
    drop.seed = 901;
    drop.step = 3;
    const Tensor ones({6, 10}, 1.f);
    const Tensor mask = drop.forward(ones, Mode::training);  // same (seed, step): the same mask below
    int dropped = 0, kept = 0;
    for (float m : mask) {
        REQUIRE((m == 0.f || m == doctest::Approx(1.0 / 0.6)));
        dropped += m == 0.f;
        kept += m != 0.f;
    }
    CHECK(dropped > 0);
    CHECK(kept > 0);
    Tensor x = randn({6, 10}, 902);
    const auto [dx, R] = head_layer_case("Dropout", drop, x, {}, 903, 904);
    for (int64_t i = 0; i < x.size(); ++i) REQUIRE(dx[i] == R[i] * mask[i]);
    report("Dropout");
}

TEST_CASE("gradcheck: softmax cross-entropy w.r.t. the logits") {
    Tensor logits = randn({4, 5}, 1001, 3.f);
    const std::vector<int> labels{0, 3, 1, 4};
    const auto r = softmax_cross_entropy(logits, labels);
    REQUIRE(r.grad.shape() == logits.shape());
    for (int64_t i = 0; i < 4; ++i) {  // each row of (softmax - onehot) / N sums to zero
        double s = 0;
        for (int64_t j = 0; j < 5; ++j) s += r.grad[i * 5 + j];
        CHECK(std::abs(s) < 1e-6);
    }
    auto loss = [&] { return softmax_cross_entropy(logits, labels).loss; };
    Opts o;
    o.seed = 1002;
    o.hrel = 1e-3;
    o.hfloor = 1;
    gradcheck("softmax_cross_entropy", "dlogits", logits, r.grad, loss, o);
    report("softmax_cross_entropy");
}

TEST_CASE("gradcheck: Bottleneck with and without projection, both layouts, both BN modes") {
    // Projection (stride 2, and stride 1 with In != Out) and identity shortcuts, v1 (stride on
    // conv1) and v1.5 (stride on conv2), BN on running and on batch statistics.
    bottleneck_case<8, 4, 16, 2, Layout::v1>(BNMode::inference, 2, 8, 7, 1101);
    bottleneck_case<8, 4, 16, 2, Layout::v1_5>(BNMode::inference, 2, 8, 7, 1102);
    bottleneck_case<16, 4, 16, 1, Layout::v1>(BNMode::inference, 2, 6, 5, 1104);
    bottleneck_case<16, 4, 16, 1, Layout::v1_5>(BNMode::inference, 2, 5, 6, 1105);
    bottleneck_case<8, 4, 16, 2, Layout::v1>(BNMode::batch, 2, 8, 7, 1106);
    bottleneck_case<8, 4, 16, 2, Layout::v1_5>(BNMode::batch, 2, 7, 8, 1107);
    bottleneck_case<4, 4, 16, 1, Layout::v1_5>(BNMode::batch, 2, 6, 6, 1103);
    bottleneck_case<16, 4, 16, 1, Layout::v1>(BNMode::batch, 2, 5, 6, 1108);
    report("Bottleneck");
}

TEST_CASE("gradcheck: Classifier<ResNet50<v1.5, 4, c4>, 3> on [2,3,32,32], entries from every depth") {
    network_case(BNMode::inference, 1201);
    network_case(BNMode::batch, 1202);
    report("Classifier");
}

}  // TEST_SUITE

}  // namespace tlcpu_test_gradcheck
