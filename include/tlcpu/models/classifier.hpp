// tlcpu: a backbone plus the transfer-learning head of the recipe:
// global average pool -> BatchNorm1d -> Dropout -> Dense (logits; softmax is applied by the
// loss or by the caller). Head parameters are named head_bn.* and head_fc.*.
#pragma once
#include <cmath>
#include <string>

#include "tlcpu/layers/activation.hpp"
#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/layers/dense.hpp"
#include "tlcpu/layers/pool.hpp"

namespace tlcpu {

// Classes may be `dynamic`: then the count is a constructor argument.
template <int In, int Classes>
class Head {
    static_assert(Classes >= 2 || Classes == dynamic, "tlcpu: a classifier head needs at least two classes");

public:
    static constexpr int in_channels = In, out_channels = Classes;
    GlobalAvgPool pool;
    BatchNorm1d<In> bn;
    Dropout drop;
    Dense<In, Classes> fc;

    explicit Head(int classes = Classes) : fc(classes) {
        check(classes >= 2, "a classifier head needs at least two classes, got " + std::to_string(classes));
    }
    int classes() const { return fc.Out; }

    void visit(const std::string& prefix, const ParamVisitor& f) {
        bn.visit(prefix + "head_bn.", f);
        fc.visit(prefix + "head_fc.", f);
    }
    template <class F>
    void each(F&& f) {
        f(pool), f(bn), f(drop), f(fc);
    }
    const Tensor& forward(const dnnl::memory& x, Mode m) {
        return fc.forward(drop.forward(bn.forward(pool.forward(x, m), m), m), m);
    }
    const Tensor& features() const { return pool.output(); }

    // need_dx: return the gradient of the backbone's output (else nullptr, and no
    // backbone-side primitive runs).
    const dnnl::memory* backward(const Tensor& dlogits, bool need_dx) {
        const bool bn_in = need_dx, drop_in = bn_in || trainable(bn), fc_in = drop_in;
        const Tensor* g = fc.backward(dlogits, fc_in);
        if (g) g = drop.backward(*g, drop_in);
        if (g) g = bn.backward(*g, bn_in);
        return g ? &pool.backward(*g) : nullptr;
    }
};

// The recipe's head as Keras builds it: BatchNormalization (momentum 0.99, so a running
// statistic moves 0.01 of the way to each batch's; eps 1e-3) on batch statistics, Dropout,
// and Dense with Glorot-uniform weights in +-sqrt(6 / (In + classes)) and a zero bias.
template <int In, int Classes>
void init_keras_head(Head<In, Classes>& h, float dropout, uint64_t seed) {
    h.bn.config = {1e-3f, 0.01f, BNMode::batch};
    h.drop.p = dropout;
    const float limit = std::sqrt(6.f / float(In + h.classes()));
    Tensor& w = h.fc.weight.value;
    for (int64_t i = 0; i < w.size(); ++i) w[i] = limit * (2 * uniform01(seed, hash_name("head_fc.weight"), uint64_t(i)) - 1);
    h.fc.bias.value.fill(0.f);
    h.fc.weight.touch();
    h.fc.bias.touch();
}

// The head alone on cached backbone features [N, In]: what phase 1 trains when the frozen
// backbone's output is computed once per image. Shares its parameters with `head`.
template <int In, int Classes>
class HeadOnly {
public:
    explicit HeadOnly(Head<In, Classes>& h) : head(h) {}
    Head<In, Classes>& head;
    void visit(const std::string& prefix, const ParamVisitor& f) { head.visit(prefix, f); }
    template <class F>
    void each(F&& f) { f(head.bn), f(head.drop), f(head.fc); }
    const Tensor& forward(const Tensor& feats, Mode m) {
        return head.fc.forward(head.drop.forward(head.bn.forward(feats, m), m), m);
    }
    void backward(const Tensor& dlogits) {
        const Tensor* g = head.fc.backward(dlogits, true);
        g = head.drop.backward(*g, true);
        head.bn.backward(*g, false);
    }
};

template <class Backbone, int Classes>
class Classifier {
public:
    static constexpr int in_channels = Backbone::in_channels;
    static constexpr int features = Backbone::out_channels;
    static constexpr int classes = Classes;
    Backbone backbone;
    Head<features, Classes> head;

    explicit Classifier(int n_classes = Classes) : head(n_classes) {}

    void visit(const std::string& prefix, const ParamVisitor& f) {
        backbone.visit(prefix, f);
        head.visit(prefix, f);
    }
    template <class F>
    void each(F&& f) {
        for_each_layer(backbone, f);
        head.each(f);
    }
    // x: [N, 3, H, W] preprocessed images, plain NCHW. Returns the logits [N, Classes].
    const Tensor& forward(const Tensor& x, Mode m) {
        check(x.rank() == 4 && x.dim(1) == in_channels,
              "classifier input must be [N," + std::to_string(in_channels) + ",H,W], got " + to_string(x.shape()));
        return head.forward(backbone.forward(view(x), m), m);
    }
    // Gradients of every trainable parameter for dL/dlogits, after a Mode::training forward.
    void backward(const Tensor& dlogits) {
        const bool into_backbone = trainable(backbone);
        const dnnl::memory* g = head.backward(dlogits, into_backbone);
        gradients_ready(head);
        if (g) backbone.backward(*g, false);
        Backend::get().wait();
    }
};

}  // namespace tlcpu
