// tlcpu: feature caching. Without augmentation, a frozen prefix of the backbone maps each
// image to the same activation every epoch: compute it once, keep it, and train only what
// follows. The prefix ends at a Cut between two blocks; FromCut is the classifier run from
// there, with the same parameters, so its checkpoints and best weights are the full
// network's.
#pragma once
#include <cstring>
#include <tuple>

#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/models/classifier.hpp"
#include "tlcpu/train/freeze.hpp"
#include "tlcpu/train/trainer.hpp"

namespace tlcpu {

// Before block `block` of the backbone's child `child` (children are the stem and the
// stages; a child without blocks is cut only before it). {0, 0}: nothing is frozen.
struct Cut {
    int child = 0, block = 0;
    bool operator==(const Cut&) const = default;
};

namespace detail {
template <class L>
constexpr int blocks_of() {
    if constexpr (requires { L::blocks; })
        return L::blocks;
    else
        return 1;
}
// Something in l must see every batch anew: a trainable weight, or a BatchNorm that
// normalises with batch statistics (its running statistics move too).
template <class L>
bool live(L& l) {
    bool any = trainable(l);
    for_each_layer(l, [&](auto& leaf) {
        if constexpr (is_batchnorm2d<std::remove_cvref_t<decltype(leaf)>>) any |= leaf.config.mode == BNMode::batch;
    });
    return any;
}
template <class Seq, class F>
void each_child(Seq& s, F&& f) {
    int i = 0;
    std::apply([&](auto&... c) { (f(i++, c), ...); }, s.layers);
}
}  // namespace detail

// The longest prefix with nothing live in it. {size, 0} when the whole backbone is frozen.
template <class Backbone>
Cut frozen_prefix(Backbone& net) {
    Cut cut{int(Backbone::size), 0};
    bool done = false;
    detail::each_child(net, [&](int i, auto& child) {
        using C = std::remove_cvref_t<decltype(child)>;
        if (done) return;
        if constexpr (requires { child.with_block(0, [](auto&) {}); }) {
            for (int b = 0; b < C::blocks && !done; ++b)
                child.with_block(b, [&](auto& blk) {
                    if (detail::live(blk)) cut = {i, b}, done = true;
                });
        } else if (detail::live(child)) {
            cut = {i, 0}, done = true;
        }
    });
    return cut;
}

// The prefix, in inference mode. Returns x itself for the empty prefix.
template <class Backbone>
const dnnl::memory& forward_prefix(Backbone& net, const dnnl::memory& x, Cut cut) {
    const dnnl::memory* cur = &x;
    detail::each_child(net, [&](int i, auto& child) {
        using C = std::remove_cvref_t<decltype(child)>;
        if (i < cut.child)
            cur = &child.forward(*cur, Mode::inference);
        else if (i == cut.child && cut.block > 0)
            if constexpr (detail::blocks_of<C>() > 1) cur = &child.forward_blocks(*cur, 0, cut.block, Mode::inference);
    });
    return *cur;
}

// The rest of the backbone from the cut's activation; as in Sequential::forward, layers
// before the first trainable one run in inference mode.
template <class Backbone>
const dnnl::memory& forward_suffix(Backbone& net, const dnnl::memory& x, Cut cut, Mode mode) {
    const dnnl::memory* cur = &x;
    bool reached = mode == Mode::inference;
    detail::each_child(net, [&](int i, auto& child) {
        using C = std::remove_cvref_t<decltype(child)>;
        if (i < cut.child) return;
        reached = reached || trainable(child);
        const Mode m = reached ? mode : Mode::inference;
        if (i == cut.child && cut.block > 0) {
            if constexpr (detail::blocks_of<C>() > 1) cur = &child.forward_blocks(*cur, cut.block, C::blocks, m);
        } else {
            cur = &child.forward(*cur, m);
        }
    });
    return *cur;
}

// The classifier from a cut: batches are the cached activations [N, C, H, W].
template <class Net>
class FromCut {
public:
    FromCut(Net& n, Cut c) : net(n), cut(c) {}
    Net& net;
    Cut cut;
    template <class F>
    void visit(const std::string& prefix, F&& f) { net.visit(prefix, f); }
    template <class F>
    void each(F&& f) { net.each(f); }
    const Tensor& forward(const Tensor& x, Mode m) { return net.head.forward(forward_suffix(net.backbone, view(x), cut, m), m); }
    // Backward stops by itself at the cut: nothing below it is trainable.
    void backward(const Tensor& dlogits) { net.backward(dlogits); }
};

// The prefix's output for every sample of src, in one plain [N, C, H, W] tensor; the
// caller checks the size first (prefix_bytes) against its memory budget.
template <class Net>
TensorSource cache_prefix(Net& net, Cut cut, BatchSource& src, int batch) {
    check(cut != Cut{0, 0}, "cache_prefix: the cut leaves no frozen prefix to cache");
    Tensor acts;
    std::vector<int> labels;
    for_each_batch(src, batch, [&](int64_t b0, const Tensor& x, const std::vector<int>& y) {
        const dnnl::memory xv = view(x);
        const dnnl::memory& a = forward_prefix(net.backbone, xv, cut);
        dims d = a.get_desc().dims();
        if (acts.rank() == 0) acts = Tensor({src.size(), d[1], d[2], d[3]});
        const int64_t per = d[1] * d[2] * d[3];
        reorder(a, dnnl::memory(plain_desc(d), Backend::get().engine(), acts.data() + b0 * per));
        Backend::get().wait();
        labels.insert(labels.end(), y.begin(), y.end());
    });
    return TensorSource(std::move(acts), std::move(labels));
}

// Bytes cache_prefix will hold for n samples of side `size` (one probe forward at batch 1).
template <class Net>
int64_t prefix_bytes(Net& net, Cut cut, int64_t n, int size) {
    Tensor probe({1, 3, size, size});
    const dims d = forward_prefix(net.backbone, view(probe), cut).get_desc().dims();
    Backend::get().wait();
    return n * d[1] * d[2] * d[3] * int64_t(sizeof(float));
}

// The head's input (global average pool of the whole backbone) from cached activations,
// or from the images themselves with cut {0, 0}: phase 1 then trains the head alone on
// [N, features].
template <class Net>
TensorSource pooled_features(Net& net, Cut cut, BatchSource& acts, int batch) {
    Tensor feats({acts.size(), int64_t(Net::features)});
    std::vector<int> labels;
    for_each_batch(acts, batch, [&](int64_t b0, const Tensor& x, const std::vector<int>& y) {
        const Tensor& f = net.head.pool.forward(forward_suffix(net.backbone, view(x), cut, Mode::inference), Mode::inference);
        std::copy(f.begin(), f.end(), feats.data() + b0 * Net::features);
        labels.insert(labels.end(), y.begin(), y.end());
    });
    return TensorSource(std::move(feats), std::move(labels));
}

}  // namespace tlcpu
