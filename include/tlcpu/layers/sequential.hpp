// tlcpu: composition. Sequential<A, B, C> is a layer whose forward is C(B(A(x))); its
// channel counts are checked pairwise when the type is formed, so a wrong network does not
// compile. Residual add lives here too: it is the one layer that takes two inputs.
#pragma once
#include <array>
#include <string>
#include <tuple>
#include <type_traits>

#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

namespace detail {
template <int Have, class... Ls>
struct chain {
    static constexpr int out = Have;
};
template <int Have, class L, class... Rest>
struct chain<Have, L, Rest...> {
    static_assert(channels_match<Have, L::in_channels>::value);
    static constexpr int out = chain<after<Have, L>, Rest...>::out;
};
}  // namespace detail

// Backward through layers given in forward order, last first. need_dx: the caller wants the
// gradient of the first layer's input. A layer's input gradient is computed only if some
// layer below it is trainable (or the caller needs it), and the walk stops at the first
// layer with nothing to do: below the last trainable layer no backward primitive runs.
template <class... L>
const dnnl::memory* backward_chain(const dnnl::memory& dy, bool need_dx, L&... layers) {
    constexpr size_t n = sizeof...(L);
    const std::array<bool, n> train{trainable(layers)...};
    std::array<bool, n> below{};  // below[i]: layer i must produce its input's gradient
    for (size_t i = 0; i < n; ++i) below[i] = need_dx || (i > 0 && (below[i - 1] || train[i - 1]));
    const dnnl::memory* g = &dy;
    bool go = true;
    auto step = [&](auto& l, size_t i) {
        if (!go) return;
        if (!train[i] && !below[i]) {
            go = false;
            return;
        }
        g = l.backward(*g, below[i]);
        go = below[i];
    };
    auto refs = std::tie(layers...);
    [&]<size_t... I>(std::index_sequence<I...>) { (step(std::get<n - 1 - I>(refs), n - 1 - I), ...); }(
        std::make_index_sequence<n>{});
    return need_dx ? g : nullptr;
}

template <class... Ls>
class Sequential {
    static_assert(sizeof...(Ls) > 0, "tlcpu: an empty Sequential has nothing to compute");
    using First = std::tuple_element_t<0, std::tuple<Ls...>>;

public:
    static constexpr int in_channels = First::in_channels;
    static constexpr int out_channels = detail::chain<in_channels, Ls...>::out;
    static constexpr size_t size = sizeof...(Ls);

    std::tuple<Ls...> layers;

    template <size_t I>
    auto& get() { return std::get<I>(layers); }
    template <size_t I>
    const auto& get() const { return std::get<I>(layers); }

    void visit(const std::string& prefix, const ParamVisitor& f) {
        std::apply([&](auto&... l) { (l.visit(child_prefix<std::remove_cvref_t<decltype(l)>>(prefix), f), ...); },
                   layers);
    }

    template <class F>
    void each(F&& f) {
        std::apply([&](auto&... l) { (for_each_layer(l, f), ...); }, layers);
    }

    // In training, children before the first trainable one run in inference mode: backward
    // never reaches them, so they keep nothing for it and use the cheaper primitives.
    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        const dnnl::memory* cur = &x;
        bool reached = mode == Mode::inference;
        auto one = [&](auto& l) {
            reached = reached || trainable(l);
            cur = &l.forward(*cur, reached ? mode : Mode::inference);
        };
        std::apply([&](auto&... l) { (one(l), ...); }, layers);
        out_ = cur;
        return *cur;
    }
    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        return std::apply([&](auto&... l) { return backward_chain(dy, need_dx, l...); }, layers);
    }
    const dnnl::memory& output() const { return *out_; }

protected:
    const dnnl::memory* out_ = nullptr;
};

// y = a + b, elementwise, in a's layout (a oneDNN binary primitive); max(0, a + b) with relu.
class Add {
public:
    bool in_place = false;  // write the sum over a (a block's private BatchNorm output)
    bool relu = false;      // the ReLU after a residual sum, as a post-op: one pass over memory, not two
    const dnnl::memory& forward(const dnnl::memory& a, const dnnl::memory& b) {
        auto make = [&] {
            check(a.get_desc().dims() == b.get_desc().dims(),
                  "residual add of different shapes " + to_string(a.get_desc().dims()) + " and " +
                      to_string(b.get_desc().dims()));
            auto& eng = Backend::get().engine();
            dnnl::primitive_attr attr = Backend::attr();
            if (relu) {
                dnnl::post_ops ops;
                ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
                attr.set_post_ops(ops);
            }
            Plan q;
            q.pd = {{dnnl::algorithm::binary_add, a.get_desc(), a.get_desc(), a.get_desc()}, attr, eng};
            q.prim = dnnl::binary(q.pd);
            if (!in_place) q.own = dnnl::memory(q.pd.dst_desc(), eng);
            q.relu = relu;
            return q;
        };
        Plan& p = plans_.get(a.get_desc(), Mode::inference, make);
        if (p.relu != relu) p = make();
        const dnnl::memory& bb = as_desc(b, a.get_desc(), p.scratch);
        p.dst = in_place ? a : p.own;
        Backend::get().run(p.prim, {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, bb}, {DNNL_ARG_DST, p.dst}});
        out_ = &p.dst;
        return p.dst;
    }
    const dnnl::memory& output() const { return *out_; }

private:
    struct Plan {
        dnnl::binary::primitive_desc pd;
        dnnl::binary prim;
        dnnl::memory dst, own, scratch;
        bool relu = false;
    };
    PlanCache<Plan> plans_;
    const dnnl::memory* out_ = nullptr;
};

}  // namespace tlcpu
