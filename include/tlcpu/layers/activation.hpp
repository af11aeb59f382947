// tlcpu: ReLU (a oneDNN eltwise primitive on the backbone) and softmax (on the head's logits).
#pragma once
#include <cmath>
#include <string>

#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

class ReLU {
public:
    static constexpr int in_channels = any_channels, out_channels = any_channels;
    uint64_t backward_runs = 0;  // backward calls that ran a primitive (tests check freezing with it)
    // in_place: overwrite the input instead of keeping a buffer of its own, where the input
    // is a private output no backward reads; the backward here needs only the output
    // (y > 0 <=> x > 0).
    bool in_place = false;
    void visit(const std::string&, const ParamVisitor&) {}

    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        Plan& p = plan(x.get_desc(), mode);
        if (!in_place && !p.own) p.own = dnnl::memory(p.pd.dst_desc(), Backend::get().engine());  // (applied needs none)
        p.dst = in_place ? x : p.own;
        Backend::get().run(p.prim, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, p.dst}});
        last_ = &p;
        return p.dst;
    }
    // y already rectified by the primitive that wrote it (the residual sum's ReLU post-op):
    // kept as this layer's output, all its backward reads, without a pass of its own.
    const dnnl::memory& applied(const dnnl::memory& y, Mode mode) {
        Plan& p = plan(y.get_desc(), mode);
        p.dst = y;
        last_ = &p;
        return p.dst;
    }
    const dnnl::memory& output() const { return last_->dst; }

    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        if (!need_dx) return nullptr;
        check(last_ != nullptr, "ReLU backward without a forward");
        ++backward_runs;
        Plan& p = *last_;
        auto& eng = Backend::get().engine();
        if (!p.bwd_prim) {
            p.bwd_pd = {{dnnl::algorithm::eltwise_relu_use_dst_for_bwd, p.dst.get_desc(), p.dst.get_desc(), 0.f},
                        Backend::attr(), eng, p.pd};
            p.bwd_prim = dnnl::eltwise_backward(p.bwd_pd);
        }
        const dnnl::memory& g = as_desc(dy, p.bwd_pd.diff_dst_desc(), p.dy);
        p.diff_src = in_place_or_take(g, dy, p.bwd_pd.diff_src_desc());
        Backend::get().run(p.bwd_prim, {{DNNL_ARG_DST, p.dst}, {DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_DIFF_SRC, p.diff_src}});
        return &p.diff_src;
    }

private:
    struct Plan;
    Plan& plan(const dnnl::memory::desc& x, Mode mode) {
        return plans_.get(x, mode, [&] {
            auto prop = mode == Mode::inference ? dnnl::prop_kind::forward_inference
                                                : dnnl::prop_kind::forward_training;
            auto& eng = Backend::get().engine();
            Plan q;
            q.pd = {{prop, dnnl::algorithm::eltwise_relu_use_dst_for_bwd, x, 0.f}, Backend::attr(), eng};
            q.prim = dnnl::eltwise_forward(q.pd);
            return q;
        });
    }
    struct Plan {
        dnnl::eltwise_forward::primitive_desc pd;
        dnnl::eltwise_forward prim;
        dnnl::memory dst, own;  // dst: the last output (own buffer, or the input when in place)
        dnnl::eltwise_backward::primitive_desc bwd_pd;
        dnnl::eltwise_backward bwd_prim;
        dnnl::memory diff_src, dy;
    };
    PlanCache<Plan> plans_;
    Plan* last_ = nullptr;
};

// Row-wise softmax of [N, K] logits; subtracting the row maximum keeps exp() finite.
inline Tensor softmax(const Tensor& logits) {
    check(logits.rank() == 2, "softmax expects [N, K] logits, got " + to_string(logits.shape()));
    Tensor p(logits.shape());
    const int64_t n = logits.dim(0), k = logits.dim(1);
    for (int64_t i = 0; i < n; ++i) {
        const float* z = logits.data() + i * k;
        float* q = p.data() + i * k;
        float mx = *std::max_element(z, z + k);
        double sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += q[j] = std::exp(z[j] - mx);
        for (int64_t j = 0; j < k; ++j) q[j] = float(q[j] / sum);
    }
    return p;
}

}  // namespace tlcpu
