// tlcpu: max pooling and global average pooling as oneDNN primitives.
#pragma once
#include <string>

#include "tlcpu/layers/conv.hpp"

namespace tlcpu {

// Output size with PyTorch's ceil_mode rule: round up, but a window may not start in the
// right padding (so the last window always covers at least one real input element).
constexpr int64_t pool_out(int64_t in, int k, int s, int pad, bool ceil) {
    if (!ceil) return conv_out(in, k, s, pad);
    int64_t o = (in + 2 * pad - k + s - 1) / s + 1;
    if ((o - 1) * s >= in + pad) --o;
    return o;
}

// MaxPool2d<K, S, P, Ceil>: K x K window, stride S, padding P (which never wins the max).
// Caffe's ResNet stem is MaxPool2d<3, 2, 0, true>, torchvision's MaxPool2d<3, 2, 1, false>.
template <int K, int S, int P = 0, bool Ceil = false>
class MaxPool2d {
    static_assert(K > 0 && S > 0 && P >= 0 && 2 * P <= K,
                  "tlcpu: MaxPool2d needs kernel > 0, stride > 0 and padding at most half the kernel");

public:
    static constexpr int in_channels = any_channels, out_channels = any_channels;
    uint64_t backward_runs = 0;  // backward calls that ran a primitive (tests check freezing with it)
    void visit(const std::string&, const ParamVisitor&) {}

    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        Plan& p = plans_.get(x.get_desc(), mode, [&] { return make(x.get_desc(), mode); });
        std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, p.dst}};
        if (p.workspace) args[DNNL_ARG_WORKSPACE] = p.workspace;
        Backend::get().run(p.prim, args);
        last_ = &p;
        return p.dst;
    }
    const dnnl::memory& output() const { return last_->dst; }

    // Routes each output gradient to the input element that won the max (the workspace).
    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        if (!need_dx) return nullptr;
        check(last_ && last_->workspace, "MaxPool2d backward without a training-mode forward");
        ++backward_runs;
        Plan& p = *last_;
        auto& eng = Backend::get().engine();
        if (!p.bwd_prim) {
            const dims src = p.pd.src_desc().dims(), dst = p.pd.dst_desc().dims();
            dims pr{(dst[2] - 1) * S + K - src[2] - P, (dst[3] - 1) * S + K - src[3] - P};
            p.bwd_pd = {{dnnl::algorithm::pooling_max, p.pd.src_desc(), p.pd.dst_desc(), {S, S}, {K, K}, {P, P}, pr},
                        Backend::attr(), eng, p.pd};
            p.bwd_prim = dnnl::pooling_backward(p.bwd_pd);
        }
        const dnnl::memory& g = as_desc(dy, p.bwd_pd.diff_dst_desc(), p.dy);
        p.diff_src = Backend::get().grads().take(p.bwd_pd.diff_src_desc(), &dy);
        Backend::get().run(p.bwd_prim,
                           {{DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_DIFF_SRC, p.diff_src}, {DNNL_ARG_WORKSPACE, p.workspace}});
        return &p.diff_src;
    }

private:
    struct Plan {
        dnnl::pooling_forward::primitive_desc pd;
        dnnl::pooling_forward prim;
        dnnl::memory dst, workspace;  // workspace: argmax positions, for backward
        dnnl::pooling_backward::primitive_desc bwd_pd;
        dnnl::pooling_backward bwd_prim;
        dnnl::memory diff_src, dy;
    };
    static Plan make(const dnnl::memory::desc& xd, Mode mode) {
        dims d = xd.dims();
        check(d.size() == 4, "MaxPool2d got input " + to_string(d));
        int64_t oh = pool_out(d[2], K, S, P, Ceil), ow = pool_out(d[3], K, S, P, Ceil);
        check(oh > 0 && ow > 0, "MaxPool2d input " + to_string(d) + " is smaller than its window");
        // oneDNN takes explicit right padding; ceil mode is just more of it.
        dims pr{(oh - 1) * S + K - d[2] - P, (ow - 1) * S + K - d[3] - P};
        auto prop = mode == Mode::inference ? dnnl::prop_kind::forward_inference
                                            : dnnl::prop_kind::forward_training;
        auto& eng = Backend::get().engine();
        Plan p;
        p.pd = {{prop, dnnl::algorithm::pooling_max, xd,  // a max is exact in any type: keep the input's
                 dnnl::memory::desc({d[0], d[1], oh, ow}, xd.data_type(), tag::any), {S, S}, {K, K},
                 {P, P}, pr}, Backend::attr(), eng};
        p.prim = dnnl::pooling_forward(p.pd);
        p.dst = dnnl::memory(p.pd.dst_desc(), eng);
        if (mode == Mode::training) p.workspace = dnnl::memory(p.pd.workspace_desc(), eng);
        return p;
    }
    PlanCache<Plan> plans_;
    Plan* last_ = nullptr;
};

// Global average pooling: [N, C, H, W] in any layout to a plain [N, C] tensor. This is the
// backbone's exit, where activations leave oneDNN's layouts for the Eigen head.
class GlobalAvgPool {
public:
    static constexpr int in_channels = any_channels, out_channels = any_channels;
    void visit(const std::string&, const ParamVisitor&) {}

    const Tensor& forward(const dnnl::memory& x, Mode mode) {
        Plan& p = plans_.get(x.get_desc(), mode, [&] {
            dims d = x.get_desc().dims();
            check(d.size() == 4, "GlobalAvgPool got input " + to_string(d));
            auto& eng = Backend::get().engine();
            auto prop = mode == Mode::inference ? dnnl::prop_kind::forward_inference
                                                : dnnl::prop_kind::forward_training;
            Plan q;
            // A bf16 activation (a frozen part run in bf16) is averaged in f32.
            q.pd = {{prop, dnnl::algorithm::pooling_avg_exclude_padding, with_type(x.get_desc(), dt::f32),
                     dnnl::memory::desc({d[0], d[1], 1, 1}, dt::f32, tag::any), {1, 1}, {d[2], d[3]}, {0, 0}, {0, 0}},
                    Backend::attr(), eng};
            q.prim = dnnl::pooling_forward(q.pd);
            q.dst = dnnl::memory(q.pd.dst_desc(), eng);
            q.out = Tensor({d[0], d[1]});
            return q;
        });
        auto& be = Backend::get();
        be.run(p.prim, {{DNNL_ARG_SRC, as_desc(x, p.pd.src_desc(), p.src_f32)}, {DNNL_ARG_DST, p.dst}});
        reorder(p.dst, edge(p.out));
        be.wait();
        last_ = &p;
        return p.out;
    }
    const Tensor& output() const { return last_->out; }

    // Spreads each [N, C] gradient evenly over its H x W positions, back in the layout the
    // backbone's activations use.
    const dnnl::memory& backward(const Tensor& dy) {
        check(last_ != nullptr, "GlobalAvgPool backward without a forward");
        Plan& p = *last_;
        check(dy.shape() == p.out.shape(), "GlobalAvgPool backward got gradient " + to_string(dy.shape()));
        auto& eng = Backend::get().engine();
        if (!p.bwd_prim) {
            const dims src = p.pd.src_desc().dims();
            p.bwd_pd = {{dnnl::algorithm::pooling_avg_exclude_padding, p.pd.src_desc(), p.pd.dst_desc(), {1, 1},
                         {src[2], src[3]}, {0, 0}, {0, 0}},
                        Backend::attr(), eng, p.pd};
            p.bwd_prim = dnnl::pooling_backward(p.bwd_pd);
            p.dy = dnnl::memory(p.bwd_pd.diff_dst_desc(), eng);
        }
        p.diff_src = Backend::get().grads().take(p.bwd_pd.diff_src_desc(), nullptr);
        reorder(edge(dy), p.dy);
        Backend::get().run(p.bwd_prim, {{DNNL_ARG_DIFF_DST, p.dy}, {DNNL_ARG_DIFF_SRC, p.diff_src}});
        return p.diff_src;
    }

private:
    struct Plan {
        dnnl::pooling_forward::primitive_desc pd;
        dnnl::pooling_forward prim;
        dnnl::memory dst, src_f32;
        Tensor out;
        dnnl::pooling_backward::primitive_desc bwd_pd;
        dnnl::pooling_backward bwd_prim;
        dnnl::memory diff_src, dy;
    };
    // A plain [N, C] tensor seen as the [N, C, 1, 1] memory pooling produces.
    static dnnl::memory edge(const Tensor& t) {
        return {{{t.dim(0), t.dim(1), 1, 1}, dt::f32, tag::nchw}, Backend::get().engine(), const_cast<float*>(t.data())};
    }
    PlanCache<Plan> plans_;
    Plan* last_ = nullptr;
};

}  // namespace tlcpu
