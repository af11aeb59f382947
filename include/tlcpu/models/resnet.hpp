// tlcpu: ResNet-50 composed from layer templates, in both stride layouts and any width.
//
//   ResNet50<Layout::v1>            caffe / Keras weights (stride on the first 1x1 conv,
//                                   stem max-pool pad 0 ceil mode)
//   ResNet50<Layout::v1_5>          torchvision / timm weights (stride on the 3x3 conv,
//                                   stem max-pool pad 1)
//   ResNet50<L, 4>                  1/16 width (stem 4 channels), the fixture network
//   ResNet50<L, 64, Depth::c4>      ends after layer3: 1024 features at stride 16
//
// Parameter names are torchvision's, so a state_dict exported to safetensors loads by name.
#pragma once
#include <algorithm>
#include <array>
#include <string>

#include "tlcpu/layers/activation.hpp"
#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/layers/conv.hpp"
#include "tlcpu/layers/pool.hpp"
#include "tlcpu/layers/sequential.hpp"

namespace tlcpu {

enum class Layout { v1, v1_5 };
struct Empty {};
enum class Depth { c4, c5 };  // c4: stem + layer1..3; c5: + layer4

inline const char* to_string(Layout l) { return l == Layout::v1 ? "v1" : "v1.5"; }

// Bottleneck<In, Width, Out, Stride, L>: 1x1 (In -> Width), 3x3 (Width -> Width),
// 1x1 (Width -> Out), plus a projection shortcut when the shape changes; ReLU after bn1, bn2
// (each in its BatchNorm's pass) and the sum.
template <int In, int Width, int Out, int Stride, Layout L>
class Bottleneck {
    static constexpr int S1 = L == Layout::v1 ? Stride : 1;  // where the stride sits
    static constexpr int S2 = L == Layout::v1 ? 1 : Stride;

public:
    static constexpr int in_channels = In, out_channels = Out;
    static constexpr bool has_projection = Stride != 1 || In != Out;

    Conv2d<In, Width, 1, S1, 0> conv1;
    BatchNorm2d<Width> bn1;  // with its ReLU (relu set)
    Conv2d<Width, Width, 3, S2, 1> conv2;
    BatchNorm2d<Width> bn2;  // likewise
    Conv2d<Width, Out, 1, 1, 0> conv3;
    BatchNorm2d<Out> bn3;
    Add add, grad_add;  // grad_add: the input gradient is the sum of both paths'
    ReLU relu3;
    // torchvision's "downsample.0" / "downsample.1", present only when the shape changes
    [[no_unique_address]] std::conditional_t<has_projection, Conv2d<In, Out, 1, Stride, 0>, Empty> down_conv;
    [[no_unique_address]] std::conditional_t<has_projection, BatchNorm2d<Out>, Empty> down_bn;

    void visit(const std::string& prefix, const ParamVisitor& f) {
        conv1.visit(prefix + "conv1.", f);
        bn1.visit(prefix + "bn1.", f);
        conv2.visit(prefix + "conv2.", f);
        bn2.visit(prefix + "bn2.", f);
        conv3.visit(prefix + "conv3.", f);
        bn3.visit(prefix + "bn3.", f);
        if constexpr (has_projection) {
            down_conv.visit(prefix + "downsample.0.", f);
            down_bn.visit(prefix + "downsample.1.", f);
        }
    }

    template <class F>
    void each(F&& f) {
        f(conv1), f(bn1), f(conv2), f(bn2), f(conv3), f(bn3);
        if constexpr (has_projection) f(down_conv), f(down_bn);
        f(relu3);
    }

    // In training the residual sum, with relu3 as its post-op, overwrites bn3's output:
    // BatchNorm's backward needs its input, not its output, so that buffer is free. grad_add
    // sums into the main path's input gradient, a pool buffer read by no one else.
    Bottleneck() {
        bn1.relu = bn2.relu = add.relu = true;
        add.in_place = grad_add.in_place = true;
    }

    // Inference (a frozen block, or evaluation) runs four convolutions with their BatchNorms
    // folded in and the ReLUs and the residual add as post-ops; training runs every layer,
    // keeping what backward needs.
    const dnnl::memory& forward(const dnnl::memory& x, Mode m) {
        if (m == Mode::inference) {
            auto& be = Backend::get();
            const bool frozen = !trainable(*this);
            const dt prec = !frozen || be.calibrating ? dt::f32 : be.frozen_precision;
            if (prec == dt::s8) return forward_int8(x);
            // Outputs come from the shared activation pool: x is held until the shortcut
            // has read it, g until conv3 has.
            auto& pool = be.acts();
            Backend::BufferPool::Hold keep_x(pool, &x);
            const bool observe = frozen && be.calibrating;
            if (observe) act_max[0] = std::max(act_max[0], abs_max(x));  // f32: calibration runs the stem in f32 too
            const auto& h = conv1.forward_folded(x, bn1, true, nullptr, false, prec);
            if (observe) act_max[1] = std::max(act_max[1], abs_max(h));
            const auto& g = conv2.forward_folded(h, bn2, true, nullptr, false, prec);
            if (observe) act_max[2] = std::max(act_max[2], abs_max(g));
            Backend::BufferPool::Hold keep_g(pool, &g);
            const dnnl::memory* shortcut = &x;
            if constexpr (has_projection) {
                shortcut = &down_conv.forward_folded(x, down_bn, false, nullptr, false, prec);
                if (observe) act_max[3] = std::max(act_max[3], abs_max(*shortcut));
            }
            // The sum accumulates into the shortcut's buffer: the projection's output, or
            // x when the stage says x is the previous block's output of this same call,
            // read by no one after this. Anything else (a caller's tensor) is copied.
            out_ = conv3.forward_folded(g, bn3, true, shortcut, has_projection || input_is_scratch, prec);
            if (observe) act_max[4] = std::max(act_max[4], abs_max(out_));
            return out_;
        }
        const auto& h = bn1.forward(conv1.forward(x, m), m);
        const auto& g = bn2.forward(conv2.forward(h, m), m);
        const auto& main = bn3.forward(conv3.forward(g, m), m);
        const dnnl::memory* shortcut = &x;
        if constexpr (has_projection) shortcut = &down_bn.forward(down_conv.forward(x, m), m);
        out_ = relu3.applied(add.forward(main, *shortcut), m);
        return out_;
    }
    void drop_folded() {
        conv1.drop_folded(), conv2.drop_folded(), conv3.drop_folded();
        if constexpr (has_projection) down_conv.drop_folded();
    }
    // A handle, not a pointer: it keeps the buffer alive even if its plan is evicted.
    const dnnl::memory& output() const { return out_; }
    bool input_is_scratch = false;  // set by Stage: x is an earlier block's output of this call

    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        const dnnl::memory* g = relu3.backward(dy, need_dx || trainable(*this));
        if (!g) return nullptr;
        // g feeds both paths, and the main path's result waits for the shortcut's: each is
        // held while the other path takes gradient buffers from the shared pool.
        auto& pool = Backend::get().grads();
        const dnnl::memory* main;
        {
            Backend::BufferPool::Hold keep(pool, g);
            main = backward_chain(*g, need_dx, conv1, bn1, conv2, bn2, conv3, bn3);
        }
        const dnnl::memory* shortcut = g;
        if constexpr (has_projection) {
            Backend::BufferPool::Hold keep(pool, main);
            shortcut = backward_chain(*g, need_dx, down_conv, down_bn);
        }
        return need_dx ? &grad_add.forward(*main, *shortcut) : nullptr;  // in place over main
    }

    // int8 calibration: the largest value seen of the block's input, conv1's and conv2's
    // outputs (after their ReLUs), the projection's output and the block's output. Each
    // becomes the scale of that activation: max / 255 for u8, max / 127 for the s8
    // projection. 0: not calibrated.
    std::array<float, 5> act_max{};

private:
    dnnl::memory out_;

    // Frozen, int8: every activation inside the block is u8 (ReLU outputs) or s8 (the
    // projection); an input that is not int8 yet (the stem's output, or a cached activation)
    // is quantized first with the calibrated input scale. The output is u8 with its scale
    // recorded, so the next int8 block reads it as is and anything else dequantizes it.
    const dnnl::memory& forward_int8(const dnnl::memory& x) {
        auto& be = Backend::get();
        auto& pool = be.acts();
        check(act_max[4] > 0.f, "an int8 block without calibration: run calibrate_int8 on the network first");
        auto scale = [&](int i, float levels) { return std::max(act_max[size_t(i)], 1e-8f) / levels; };
        Backend::BufferPool::Hold keep_x(pool, &x);
        dnnl::memory xq = x;
        const bool quantized_here = x.get_desc().data_type() != dt::u8;
        if (quantized_here) {
            xq = pool.take(with_type(x.get_desc(), dt::u8), &x);
            quantize(x, xq, scale(0, 255.f));
        }
        Backend::BufferPool::Hold keep_q(pool, &xq);
        const auto& h = conv1.forward_int8(xq, bn1, true, nullptr, false, scale(1, 255.f));
        const auto& g = conv2.forward_int8(h, bn2, true, nullptr, false, scale(2, 255.f));
        Backend::BufferPool::Hold keep_g(pool, &g);
        const dnnl::memory* shortcut = &xq;
        if constexpr (has_projection) shortcut = &down_conv.forward_int8(xq, down_bn, false, nullptr, false, scale(3, 127.f));
        out_ = conv3.forward_int8(g, bn3, true, shortcut, has_projection || input_is_scratch || quantized_here,
                                  scale(4, 255.f));
        return out_;
    }
};

// Stage<In, Width, Blocks, Stride, L>: one strided block, then Blocks-1 identical ones.
template <int In, int Width, int Blocks, int Stride, Layout L>
class Stage {
    static_assert(Blocks >= 1, "tlcpu: a stage needs at least one block");

public:
    static constexpr int in_channels = In, out_channels = 4 * Width;
    Bottleneck<In, Width, 4 * Width, Stride, L> first;
    std::array<Bottleneck<4 * Width, Width, 4 * Width, 1, L>, Blocks - 1> rest;

    void visit(const std::string& prefix, const ParamVisitor& f) {
        first.visit(prefix + "0.", f);
        for (size_t i = 0; i < rest.size(); ++i) rest[i].visit(prefix + std::to_string(i + 1) + ".", f);
    }
    template <class F>
    void each(F&& f) {
        first.each(f);
        for (auto& b : rest) b.each(f);
    }
    static constexpr int blocks = Blocks;
    const dnnl::memory& forward(const dnnl::memory& x, Mode m) { return forward_blocks(x, 0, Blocks, m); }
    // Blocks [from, to) only, so a run can stop or resume between two blocks (the cached
    // activation of a frozen prefix, see models/cut.hpp).
    const dnnl::memory& forward_blocks(const dnnl::memory& x, int from, int to, Mode m) {
        check(0 <= from && from < to && to <= Blocks, "Stage::forward_blocks: bad block range");
        bool reached = m == Mode::inference;  // as in Sequential::forward
        const dnnl::memory* cur = &x;
        for (int i = from; i < to; ++i)
            with_block(i, [&](auto& b) {
                reached = reached || trainable(b);
                b.input_is_scratch = i > from;
                cur = &b.forward(*cur, reached ? m : Mode::inference);
            });
        last_ = to - 1;
        return *cur;
    }
    const dnnl::memory& output() const { return last_ == 0 ? first.output() : rest[size_t(last_ - 1)].output(); }
    // f(block i): the strided first block and the others have different types.
    template <class F>
    void with_block(int i, F&& f) {
        if (i == 0)
            f(first);
        else
            f(rest[size_t(i - 1)]);
    }

    // The same walk as backward_chain, over a run-time array of blocks.
    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        const int n = Blocks;
        auto block_trainable = [&](int i) { return i == 0 ? trainable(first) : trainable(rest[size_t(i - 1)]); };
        std::array<bool, Blocks> below{};
        for (int i = 0; i < n; ++i) below[size_t(i)] = need_dx || (i > 0 && (below[size_t(i - 1)] || block_trainable(i - 1)));
        const dnnl::memory* g = &dy;
        for (int i = n - 1; i >= 0; --i) {
            if (!below[size_t(i)] && !block_trainable(i)) break;
            g = i == 0 ? first.backward(*g, below[0]) : rest[size_t(i - 1)].backward(*g, below[size_t(i)]);
            with_block(i, [](auto& b) { gradients_ready(b); });
            if (!below[size_t(i)]) break;
        }
        return need_dx ? g : nullptr;
    }

private:
    int last_ = Blocks - 1;
};

// conv 7x7/2, BN with its ReLU, max-pool 3x3/2. In inference the conv runs folded, like a
// block's.
template <int C, Layout L>
class Stem : public Sequential<Named<"conv1", Conv2d<3, C, 7, 2, 3>>, Named<"bn1", BatchNorm2d<C>>,
                               MaxPool2d<3, 2, L == Layout::v1 ? 0 : 1, L == Layout::v1>> {
public:
    Stem() { this->template get<1>().relu = true; }
    const dnnl::memory& forward(const dnnl::memory& x, Mode m) {
        if (m != Mode::inference) return Stem::Sequential::forward(x, m);
        auto& be = Backend::get();
        // int8 starts after the stem: its 3-channel input makes a poor int8 conv, and it is 3%
        // of the network's work. bf16 is the next best, where oneDNN has it (not on AVX2).
        const dt prec = trainable(*this) || be.calibrating           ? dt::f32
                        : be.frozen_precision != dt::s8              ? be.frozen_precision
                        : be.has_bf16()                              ? dt::bf16
                                                                     : dt::f32;
        const auto& h = this->template get<0>().forward_folded(x, this->template get<1>(), true, nullptr, false, prec);
        return *(this->out_ = &this->template get<2>().forward(h, m));
    }
};

template <Layout L, int B>
using ResNet50C4 = Sequential<Stem<B, L>, Named<"layer1", Stage<B, B, 3, 1, L>>,
                              Named<"layer2", Stage<4 * B, 2 * B, 4, 2, L>>,
                              Named<"layer3", Stage<8 * B, 4 * B, 6, 2, L>>>;
template <Layout L, int B>
using ResNet50C5 = Sequential<Stem<B, L>, Named<"layer1", Stage<B, B, 3, 1, L>>,
                              Named<"layer2", Stage<4 * B, 2 * B, 4, 2, L>>,
                              Named<"layer3", Stage<8 * B, 4 * B, 6, 2, L>>,
                              Named<"layer4", Stage<16 * B, 8 * B, 3, 2, L>>>;

// B is the stem width: 64 for ResNet-50, 4 for the 1/16-width fixture network.
template <Layout L, int B = 64, Depth D = Depth::c5>
using ResNet50 = std::conditional_t<D == Depth::c5, ResNet50C5<L, B>, ResNet50C4<L, B>>;

}  // namespace tlcpu
