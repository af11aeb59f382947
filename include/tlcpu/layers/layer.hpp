// tlcpu: what every layer type declares, and how a composition checks it at compile time.
//
// A layer is a type with
//   static constexpr int in_channels, out_channels   (any_channels: passes its input through)
//   const dnnl::memory& forward(const dnnl::memory& x, Mode)   returning its own output buffer
//   const dnnl::memory& output() const                         the last forward's result
//     (in inference a block's output lives in the shared activation pool: read it before
//     later layers run, as a stage-by-stage walk does)
//   void visit(const std::string& prefix, const ParamVisitor& f)   f(name, Param&) per parameter
#pragma once
#include <algorithm>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "tlcpu/backend/dnnl.hpp"
#include "tlcpu/core/param.hpp"

namespace tlcpu {

inline constexpr int any_channels = -1;

template <class L>
concept BackboneLayer = requires(L l, const dnnl::memory& x, Mode m) {
    { L::in_channels } -> std::convertible_to<int>;
    { L::out_channels } -> std::convertible_to<int>;
    { l.forward(x, m) } -> std::same_as<const dnnl::memory&>;
};

// The check behind every composition. When it fires, the compiler's note shows
// channels_match<HAVE, WANT>: HAVE is what the previous layer produces, WANT what this
// layer takes.
template <int Have, int Want>
struct channels_match {
    static_assert(Have == Want || Have == any_channels || Want == any_channels,
                  "tlcpu: wrong composition: a layer's input channel count differs from the "
                  "previous layer's output channel count (see channels_match<HAVE, WANT> below)");
    static constexpr bool value = true;
};

template <int Have, class L>
inline constexpr int after = L::out_channels == any_channels ? Have : L::out_channels;

// A compile-time string, so a child's torchvision name can be part of the network's type.
template <size_t N>
struct fixed_string {
    char s[N]{};
    constexpr fixed_string(const char (&a)[N]) { std::copy_n(a, N, s); }
    constexpr std::string_view view() const { return {s, N - 1}; }
};

// Named<"layer1", Stage<...>>: the child's parameters appear under "layer1.".
template <fixed_string Name, class L>
struct Named : L {
    static constexpr std::string_view name = Name.view();
};

// True when any weight (not a running statistic) of the layer is trainable: then backward
// must reach it, and every layer above it must pass gradients down.
template <class L>
bool trainable(L& l) {
    bool any = false;
    l.visit("", [&](const std::string&, Param& p) { any |= p.kind == ParamKind::weight && p.trainable; });
    return any;
}

// The gradient buffer of a parameter, allocated on first use. Backward overwrites it.
inline Tensor& grad_of(Param& p) {
    if (p.grad.shape() != p.value.shape()) p.grad = Tensor(p.value.shape());
    return p.grad;
}

// Calls f on every leaf layer of a composition (composites provide each(f)).
template <class L, class F>
void for_each_layer(L& l, F&& f) {
    if constexpr (requires { l.each(f); })
        l.each(f);
    else
        f(l);
}

// Data parallelism starts averaging a block's gradients while the blocks below it are still
// in backward. Backward reports each finished block here with the block's first parameter
// (in visit order): every parameter from that one on is then final. Empty: nobody listens.
inline std::function<void(Param&)>& gradients_ready_hook() {
    static std::function<void(Param&)> hook;
    return hook;
}
// Who installed the hook (it is one global): only they clear it.
inline const void*& gradients_ready_owner() {
    static const void* owner = nullptr;
    return owner;
}
template <class L>
void gradients_ready(L& l) {
    auto& hook = gradients_ready_hook();
    if (!hook) return;
    Param* first = nullptr;
    l.visit("", [&](const std::string&, Param& p) {
        if (!first) first = &p;
    });
    if (first) hook(*first);
}

template <class L>
std::string child_prefix(const std::string& prefix) {
    if constexpr (requires { L::name; })
        return prefix + std::string(L::name) + ".";
    else
        return prefix;  // unnamed children are transparent: a stem's conv1 stays "conv1"
}

}  // namespace tlcpu
