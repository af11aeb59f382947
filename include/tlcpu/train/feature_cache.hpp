// tlcpu: feature caching. Without augmentation, a frozen prefix of the backbone maps each
// image to the same activation every epoch: compute it once, keep it, and train only what
// follows. The prefix ends at a Cut between two blocks; FromCut is the classifier run from
// there, with the same parameters, so its checkpoints and best weights are the full
// network's.
#pragma once
#include <array>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

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
    void visit(const std::string& prefix, const ParamVisitor& f) { net.visit(prefix, f); }
    template <class F>
    void each(F&& f) { net.each(f); }
    const Tensor& forward(const Tensor& x, Mode m) { return net.head.forward(forward_suffix(net.backbone, view(x), cut, m), m); }
    // Backward stops by itself at the cut: nothing below it is trainable.
    void backward(const Tensor& dlogits) { net.backward(dlogits); }
};

// Cached activations [N, C, H, W] in the type the prefix produced them in: f32, bf16 from
// a bf16 prefix, u8 with one scale from an int8 one. Keeping them so loses nothing, and
// bf16 halves the memory, u8 quarters it. Batches come out as f32.
class ActivationCache : public BatchSource {
public:
    ActivationCache() = default;
    int64_t size() const override { return int64_t(labels_.size()); }
    dt type() const { return type_; }
    size_t bytes() const { return data_.size(); }
    void load(const std::vector<int64_t>& idx, int, Tensor& x, std::vector<int>& y) override {
        Shape s{int64_t(idx.size()), sample_[0], sample_[1], sample_[2]};
        if (x.shape() != s) x = Tensor(s);
        const int64_t per = sample_[0] * sample_[1] * sample_[2];
        y.resize(idx.size());
        for (size_t i = 0; i < idx.size(); ++i) {
            y[i] = labels_[size_t(idx[i])];
            const uint8_t* from = data_.data() + idx[i] * per * int64_t(elem_);
            float* to = x.data() + int64_t(i) * per;
            if (type_ == dt::f32) {
                std::memcpy(to, from, size_t(per) * sizeof(float));
            } else if (type_ == dt::bf16) {  // a bf16 is the top half of the f32 it stands for
#pragma omp parallel for
                for (int64_t k = 0; k < per; ++k) {
                    uint16_t h;
                    std::memcpy(&h, from + 2 * k, 2);
                    const uint32_t b = uint32_t(h) << 16;
                    std::memcpy(to + k, &b, 4);
                }
            } else {
#pragma omp parallel for
                for (int64_t k = 0; k < per; ++k) to[k] = float(from[k]) * scale_;
            }
        }
    }

private:
    template <class Net>
    friend ActivationCache cache_prefix(Net&, Cut, BatchSource&, int);
    std::vector<uint8_t> data_;
    std::vector<int> labels_;
    std::array<int64_t, 3> sample_{};
    dt type_ = dt::f32;
    size_t elem_ = 4;
    float scale_ = 1.f;
};

inline size_t element_size(dt t) { return t == dt::f32 ? 4 : t == dt::bf16 ? 2 : 1; }

// The prefix's output for every sample of src; the caller checks the size first
// (prefix_bytes) against its memory budget.
template <class Net>
ActivationCache cache_prefix(Net& net, Cut cut, BatchSource& src, int batch) {
    check(cut != Cut{0, 0}, "cache_prefix: the cut leaves no frozen prefix to cache");
    ActivationCache c;
    auto& be = Backend::get();
    for_each_batch(src, batch, [&](int64_t b0, const Tensor& x, const std::vector<int>& y) {
        const dnnl::memory xv = view(x);
        const dnnl::memory& a = forward_prefix(net.backbone, xv, cut);
        const dims d = a.get_desc().dims();
        const dt t = a.get_desc().data_type() == dt::s8 ? dt::f32 : a.get_desc().data_type();
        if (c.data_.empty()) {
            c.type_ = t, c.elem_ = element_size(t), c.sample_ = {d[1], d[2], d[3]};
            c.data_.resize(size_t(src.size() * d[1] * d[2] * d[3]) * c.elem_);
            if (t == dt::u8) c.scale_ = be.scale_of(a);
        }
        check(t == c.type_ && (t != dt::u8 || be.scale_of(a) == c.scale_), "cache_prefix: the prefix's output changed type or scale");
        const int64_t per = d[1] * d[2] * d[3];
        reorder(a, dnnl::memory({d, t, plain_tag(4)}, be.engine(), c.data_.data() + b0 * per * int64_t(c.elem_)));
        be.wait();
        c.labels_.insert(c.labels_.end(), y.begin(), y.end());
    });
    return c;
}

// Bytes cache_prefix will hold for n samples of side `size` (one probe forward at batch 1).
template <class Net>
int64_t prefix_bytes(Net& net, Cut cut, int64_t n, int size) {
    Tensor probe({1, 3, size, size});
    const auto& md = forward_prefix(net.backbone, view(probe), cut).get_desc();
    Backend::get().wait();
    const dims d = md.dims();
    return n * d[1] * d[2] * d[3] * int64_t(element_size(md.data_type()));
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
