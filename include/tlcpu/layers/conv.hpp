// tlcpu: 2-D convolution as a oneDNN primitive.
#pragma once
#include <string>

#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

// Output size of a conv or pool window along one axis (floor mode).
constexpr int64_t conv_out(int64_t in, int k, int s, int pad) { return (in + 2 * pad - k) / s + 1; }

// Conv2d<In, Out, K, S, P, Bias>: square kernel K, stride S, zero padding P on every side.
// The weight is kept in torchvision's [Out, In, K, K] order; oneDNN's blocked copy of it is
// refreshed only when the weight's version changes.
template <int In, int Out, int K, int S = 1, int P = 0, bool Bias = false>
class Conv2d {
    static_assert(In > 0 && Out > 0, "tlcpu: Conv2d channel counts must be positive");
    static_assert(K > 0 && S > 0 && P >= 0, "tlcpu: Conv2d needs kernel > 0, stride > 0, padding >= 0");

public:
    static constexpr int in_channels = In, out_channels = Out;
    static constexpr int kernel = K, stride = S, padding = P;
    static constexpr bool has_bias = Bias;

    Param weight{{Out, In, K, K}, 0.f};
    Param bias{{Bias ? Out : 0}, 0.f};

    template <class F>
    void visit(const std::string& prefix, F&& f) {
        f(prefix + "weight", weight);
        if constexpr (Bias) f(prefix + "bias", bias);
    }

    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        Plan& p = plans_.get(x.get_desc(), mode, [&] { return make(x.get_desc(), mode); });
        auto& be = Backend::get();
        if (p.weight_version != weight.version) {
            reorder(view(weight.value), p.weights);
            p.weight_version = weight.version;
        }
        const dnnl::memory& src = as_desc(x, p.pd.src_desc(), p.src_scratch);
        std::unordered_map<int, dnnl::memory> args{
            {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, p.weights}, {DNNL_ARG_DST, p.dst}};
        if constexpr (Bias) args[DNNL_ARG_BIAS] = view(bias.value);
        be.run(p.prim, args);
        out_ = &p.dst;
        return p.dst;
    }
    const dnnl::memory& output() const { return *out_; }

private:
    struct Plan {
        dnnl::convolution_forward::primitive_desc pd;
        dnnl::convolution_forward prim;
        dnnl::memory weights, dst, src_scratch;
        uint64_t weight_version = 0;
    };

    static Plan make(const dnnl::memory::desc& xd, Mode mode) {
        dims d = xd.dims();
        check(d.size() == 4 && d[1] == In,
              "Conv2d<" + std::to_string(In) + "," + std::to_string(Out) + ",...> got input " +
                  to_string(d) + " (expected [N," + std::to_string(In) + ",H,W])");
        int64_t oh = conv_out(d[2], K, S, P), ow = conv_out(d[3], K, S, P);
        check(oh > 0 && ow > 0, "Conv2d input " + to_string(d) + " is smaller than its kernel");
        auto any = [](const dims& dd) { return dnnl::memory::desc(dd, dt::f32, tag::any); };
        auto prop = mode == Mode::inference ? dnnl::prop_kind::forward_inference
                                            : dnnl::prop_kind::forward_training;
        dims src{d[0], In, d[2], d[3]}, wei{Out, In, K, K}, dst{d[0], Out, oh, ow};
        auto desc = Bias ? dnnl::convolution_forward::desc(
                               prop, dnnl::algorithm::convolution_direct, any(src), any(wei),
                               dnnl::memory::desc({Out}, dt::f32, tag::a), any(dst), {S, S},
                               {P, P}, {P, P})
                         : dnnl::convolution_forward::desc(prop, dnnl::algorithm::convolution_direct,
                                                           any(src), any(wei), any(dst), {S, S},
                                                           {P, P}, {P, P});
        Plan p;
        auto& eng = Backend::get().engine();
        p.pd = dnnl::convolution_forward::primitive_desc(desc, eng);
        p.prim = dnnl::convolution_forward(p.pd);
        p.weights = dnnl::memory(p.pd.weights_desc(), eng);
        p.dst = dnnl::memory(p.pd.dst_desc(), eng);
        return p;
    }

    PlanCache<Plan> plans_;
    const dnnl::memory* out_ = nullptr;
};

}  // namespace tlcpu
