// tlcpu: 2-D convolution as a oneDNN primitive.
#pragma once
#include <array>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "tlcpu/backend/winograd.hpp"
#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

// Output size of a conv or pool window along one axis (floor mode).
constexpr int64_t conv_out(int64_t in, int k, int s, int pad) { return (in + 2 * pad - k) / s + 1; }

// A BatchNorm2d's parameters as a conv that folds it in reads them: its channel count is
// checked where Conv2d makes one (Conv2d::forward_folded), not here.
struct FoldedBN {
    const Param &weight, &bias, &running_mean, &running_var;
    float eps;
};

namespace detail {

// All of Conv2d that needs its shape only at run time. A ResNet-50 has 19 conv shapes per
// layout, and a copy of this code per shape was most of what an app or a test file took to
// compile (train_cpu: 16% of its object code; tests/test_training.cpp under ASan, 45%); Conv2d keeps
// the shape in its type, so a wrong composition still does not compile.
class ConvCore {
public:
    uint64_t backward_runs = 0;  // backward calls that ran a primitive (tests check freezing with it)
    Param weight, bias;

    void visit(const std::string& prefix, const ParamVisitor& f) {
        f(prefix + "weight", weight);
        if (has_bias_) f(prefix + "bias", bias);
    }

    // In Backend::train_precision: f32, or bf16 with f32 master weights, f32 weight
    // gradients and f32 activations outside the conv (its input and output gradient become
    // bf16 at its edge, its output and input gradient come out f32).
    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        auto& be = Backend::get();
        Plan* pp = &plans_.get(x.get_desc(), mode, [&] { return make(x.get_desc(), mode, be.train_precision); });
        if (pp->precision != be.train_precision || pp->winograd != be.winograd_key())
            *pp = make(x.get_desc(), mode, be.train_precision);
        Plan& p = *pp;
        if (p.weight_version != weight.version) {
            if (p.wino)
                p.wino->set_weights(weight.value.data());
            else
                reorder(view(weight.value), p.weights);
            p.weight_version = weight.version;
        }
        const dnnl::memory& src = as_desc(x, p.pd.src_desc(), p.src_scratch);
        if (p.wino) {
            p.wino->run(src, p.dst, has_bias_ ? bias.value.data() : nullptr, false);
        } else {
            std::unordered_map<int, dnnl::memory> args{
                {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, p.weights}, {DNNL_ARG_DST, p.dst}};
            if (has_bias_) args[DNNL_ARG_BIAS] = view(bias.value);
            be.run(p.prim, args);
        }
        last_ = &p;
        p.src = src;
        return p.dst;
    }
    const dnnl::memory& output() const { return last_->dst; }
    // oneDNN's names for the kernels the last training-mode forward and its backward ran
    // ("forward jit_wino_4x3:avx512_core, ..."), and the last folded forward's: which
    // algorithm and ISA a shape got on this CPU.
    std::string kernels() const {
        std::string k = last_ ? std::string("forward ") + (last_->wino ? Winograd2x3::name : last_->pd.impl_info_str()) : "";
        if (last_ && last_->bwd)
            k += std::string(", backward-weights ") +
                 (last_->bwd->wino_weights ? std::string(Winograd2x3::name)
                  : last_->bwd->mprim ? std::string("matmul ") + last_->bwd->mpd.impl_info_str()
                                      : std::string(last_->bwd->wpd.impl_info_str())) +
                 ", backward-data " + (last_->wino ? Winograd2x3::name : last_->bwd->dpd.impl_info_str());
        return k;
    }
    std::string folded_kernel() const {
        return !last_folded_ ? "" : last_folded_->wino ? Winograd2x3::name : last_folded_->pd.impl_info_str();
    }
    // Releases the folded plans and their weight copies (remade when next needed): int8
    // calibration's f32 pass leaves them behind in blocks that then run int8 or train.
    void drop_folded() {
        folded_.clear();
        last_folded_ = nullptr;
    }
    size_t folded_plans() const { return folded_.size(); }

protected:  // Conv2d's forward_folded and forward_int8 check the BatchNorm's width first
    // Inference with the BatchNorm that follows folded into the weights and a bias,
    //   y = relu?( conv(x, W * s) + (beta - mean * s) [+ residual] ),  s = gamma / sqrt(var + eps)
    // with the residual add and the ReLU as post-ops of the one primitive: what a frozen
    // block computes, without the BN and ReLU passes over memory. The folded copy is redone
    // only when the conv's or the BN's parameters change.
    // residual_owned: the residual is a scratch buffer nobody reads afterwards (a projection
    // shortcut's output), so the sum accumulates into it in place; otherwise it is copied
    // into the output buffer first. The output buffer comes from the shared activation pool
    // (Backend::acts()): it stays valid until the caller lets the pool hand it out again.
    // precision: f32, or bf16 for a frozen layer (Backend::frozen_precision; a trainable
    // layer evaluated in inference mode keeps the f32 it trains in).
    const dnnl::memory& forward_folded(const dnnl::memory& x, const FoldedBN& bn, bool relu, const dnnl::memory* residual,
                                       bool residual_owned, dt precision) {
        Folded* pp = &folded_.get(x.get_desc(), Mode::inference, [&] { return make_folded(x.get_desc(), relu, residual, precision); });
        if (pp->precision != precision || pp->winograd != Backend::get().winograd_key())
            *pp = make_folded(x.get_desc(), relu, residual, precision);
        Folded& p = *pp;
        last_folded_ = &p;
        const auto v = versions(bn);
        if (p.versions != v) {
            Tensor w, b;
            fold(bn, w, b);
            if (p.wino)
                p.wino->set_weights(w.data());
            else
                reorder(view(w), p.weights);
            reorder(view(b), p.bias);
            p.versions = v;
        }
        const dnnl::memory* dst = &p.dst;
        if (residual && residual_owned && residual->get_desc() == p.pd.dst_desc()) {
            dst = residual;
        } else {
            p.dst = Backend::get().acts().take(p.pd.dst_desc(), &x);
            if (residual) reorder(*residual, p.dst);
        }
        const dnnl::memory& src = as_desc(x, p.pd.src_desc(), p.src_scratch);
        if (p.wino) {  // (never with a residual: see make_folded)
            p.wino->run(src, *dst, static_cast<const float*>(p.bias.get_data_handle()), relu);
            return *dst;
        }
        Backend::get().run(p.prim, {{DNNL_ARG_SRC, src},
                                    {DNNL_ARG_WEIGHTS, p.weights},
                                    {DNNL_ARG_BIAS, p.bias},
                                    {DNNL_ARG_DST, *dst}});
        return *dst;
    }

    // The int8 twin of forward_folded, for a frozen layer. x is u8 (a ReLU's output) with
    // its scale recorded in the backend (x = sx * q); the folded weights are s8 with one
    // scale per output channel (max |w| / 127; / 63 without VNNI: Backend::int8_bits),
    // so the s32 accumulator times sx * sw[o] is the real conv output; oneDNN rescales it
    // straight to the output's scale s_out (and adds the bias, which it applies before that
    // rescale, hence b / (sx * sw[o])). Output: u8 after a ReLU, s8 without (a projection,
    // which can be negative). A residual (u8 or s8, with its own scale) enters through the
    // sum post-op, rescaled to s_out.
    const dnnl::memory& forward_int8(const dnnl::memory& x, const FoldedBN& bn, bool relu, const dnnl::memory* residual,
                                     bool residual_owned, float s_out) {
        auto& be = Backend::get();
        check(x.get_desc().data_type() == dt::u8, "Conv2d::forward_int8 wants a u8 input");
        const float sx = be.scale_of(x), sr = residual ? be.scale_of(*residual) : 0.f;
        const dt rt = residual ? residual->get_desc().data_type() : dt::undef;
        Quant& p = quant_.get(x.get_desc(), Mode::inference, [] { return Quant{}; });
        const std::array<float, 3> sc{sx, sr, s_out};
        if (!p.prim || p.versions != versions(bn) || p.scales != sc || p.res_t != rt || p.relu != relu ||
            p.bits != be.int8_bits())
            p = make_int8(x.get_desc(), bn, relu, rt, sc);
        Backend::BufferPool::Hold keep_r(be.acts(), residual);  // the copy below must not land on it
        if (residual && residual_owned && residual->get_desc() == with_type(p.pd.dst_desc(), rt)) {
            p.dst = dnnl::memory(p.pd.dst_desc(), be.engine(), residual->get_data_handle());  // sum in place
        } else {
            p.dst = be.acts().take(p.pd.dst_desc(), &x);
            // the residual keeps its type: the sum post-op reads the buffer as that type
            if (residual) reorder(*residual, dnnl::memory(with_type(p.pd.dst_desc(), rt), be.engine(), p.dst.get_data_handle()));
        }
        be.run(p.prim, {{DNNL_ARG_SRC, as_desc(x, p.pd.src_desc(), p.src_scratch)},
                        {DNNL_ARG_WEIGHTS, p.weights},
                        {DNNL_ARG_BIAS, p.bias},
                        {DNNL_ARG_DST, p.dst}});
        be.set_scale(p.dst, s_out);
        return p.dst;
    }

public:
    // Backward of the last forward (which must have run in Mode::training): the weight
    // (and bias) gradient when trainable, and the input gradient when need_dx.
    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        check(last_ && last_->mode == Mode::training, "Conv2d backward without a training-mode forward");
        Plan& p = *last_;
        check(p.weight_version == weight.version, "Conv2d backward after its weight changed since the forward");
        if (!p.bwd) p.bwd = std::make_unique<Backward>(make_backward(p));
        Backward& b = *p.bwd;
        auto& be = Backend::get();
        ++backward_runs;
        // dy in the layout (bf16: and the type) a pass reads: converted into a shared gradient
        // buffer that lives until this call returns, not into one per conv kept for the run
        // (in bf16 full fine-tuning at batch 32 that cost 0.58 GB of peak RSS: 5,007 -> 4,427 MB)
        auto& pool = be.grads();
        auto converted = [&](const dnnl::memory::desc& want) {
            if (dy.get_desc() == want) return dy;
            dnnl::memory m = pool.take(want, &dy);
            reorder(dy, m);
            return m;
        };
        dnnl::memory g_w;  // dy as backward-weights read it (bf16: converted once for both passes)
        if (weight.trainable && b.wino_weights) {
            const dnnl::memory dw = be.weight_grad_buffer(dnnl::memory::desc({out_, in_, 3, 3}, dt::f32, tag::cdba));
            g_w = converted(p.pd.dst_desc());
            (p.wino ? *p.wino : *b.wino)
                .run_backward_weights(p.src, g_w, static_cast<float*>(dw.get_data_handle()),
                                      has_bias_ ? grad_of(bias).data() : nullptr);
            reorder(dw, view(grad_of(weight)));
        } else if (weight.trainable && b.mprim) {
            g_w = converted(b.mm_dy);
            const auto& eng = be.engine();
            void* cols = p.src.get_data_handle();  // a 1x1 stride-1 conv reads its input's rows as they are
            if (p.precision == dt::bf16 && (k_ != 1 || s_ != 1)) {
                cols = be.column_buffer(b.col.get_size());
                im2col(p.src, static_cast<uint16_t*>(cols), b.mm_dy.dims(), b.col_block);
            } else if (k_ != 1 || s_ != 1) {  // f32: a gradient buffer, free again for the passes below
                Backend::BufferPool::Hold keep_g(pool, &g_w);  // the column buffer must not land on g_w
                cols = pool.take(b.col, &dy).get_data_handle();
                im2col(p.src, static_cast<float*>(cols), b.mm_dy.dims(), b.col_block);
            }
            // a 1x1 conv's [Out][In] gradient is the plain one; a KxK conv's comes out
            // [Out][K][K][In] (bf16) or [K][K][In][Out] (f32)
            const dnnl::memory dw = k_ == 1 ? view(grad_of(weight)) : be.weight_grad_buffer(b.mm_dw);
            void* a = g_w.get_data_handle();
            if (b.col_first) std::swap(a, cols);
            be.run(b.mprim, {{DNNL_ARG_SRC, dnnl::memory(b.mpd.src_desc(), eng, a)},
                             {DNNL_ARG_WEIGHTS, dnnl::memory(b.mpd.weights_desc(), eng, cols)},
                             {DNNL_ARG_DST, dnnl::memory(b.mpd.dst_desc(), eng, dw.get_data_handle())}});
            if (k_ != 1) reorder(dw, view(grad_of(weight)));
        } else if (weight.trainable) {
            const dnnl::memory dw = be.weight_grad_buffer(b.wpd.diff_weights_desc());
            g_w = converted(b.wpd.diff_dst_desc());
            const dnnl::memory& src = as_desc(p.src, b.wpd.src_desc(), b.src);
            std::unordered_map<int, dnnl::memory> args{
                {DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, g_w}, {DNNL_ARG_DIFF_WEIGHTS, dw}};
            if (has_bias_) args[DNNL_ARG_DIFF_BIAS] = view(grad_of(bias));
            be.run(b.wprim, args);
            reorder(dw, view(grad_of(weight)));
        }
        if (!need_dx) return nullptr;
        if (!p.wino && !b.shares_weights && b.weight_version != weight.version) {
            reorder(view(weight.value), b.weights);
            b.weight_version = weight.version;
        }
        // tlcpu's Winograd (the forward's transformed weights, read turned) works in the
        // forward's layouts; oneDNN's pass in those of its descriptor
        const dnnl::memory::desc dy_md = p.wino ? p.pd.dst_desc() : b.dpd.diff_dst_desc(),
                                 dx_md = p.wino ? p.pd.src_desc() : b.dpd.diff_src_desc();
        Backend::BufferPool::Hold keep_w(pool, g_w ? &g_w : nullptr);  // the takes below must not land on it
        const dnnl::memory g = g_w && g_w.get_desc() == dy_md ? g_w : converted(dy_md);
        Backend::BufferPool::Hold keep_g(pool, &g);
        b.diff_src = pool.take(dx_md, &dy);
        if (p.wino)
            p.wino->run_backward_data(g, b.diff_src);
        else
            be.run(b.dprim, {{DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_WEIGHTS, b.shares_weights ? p.weights : b.weights},
                             {DNNL_ARG_DIFF_SRC, b.diff_src}});
        return &b.diff_src;
    }

private:
    struct Backward {
        dnnl::convolution_backward_weights::primitive_desc wpd;
        dnnl::convolution_backward_weights wprim;
        dnnl::convolution_backward_data::primitive_desc dpd;
        dnnl::convolution_backward_data dprim;
        dnnl::memory weights, diff_src, src;  // weights: backward-data's layout; diff_src: a GradPool buffer
        // convs with a matmul backward-weights (make_backward): its primitive (empty: the conv
        // primitive above computes it, or tlcpu's Winograd: wino_weights; else neither is
        // made), dy as it reads it, a KxK
        // conv's result ([Out][K][K][In] in bf16, [K][K][In][Out] in f32), the column buffer's
        // shape and the input's channel block (im2col)
        dnnl::matmul::primitive_desc mpd;
        dnnl::matmul mprim;
        dnnl::memory::desc mm_dy, mm_dw, col;
        int col_block = 0;
        bool col_first = false;  // f32: dW^T = col^T x dy (the matmul's A is the column buffer)
        uint64_t weight_version = 0;
        bool shares_weights = false;  // backward-data reads the forward's copy (same layout: Winograd's)
        bool wino_weights = false;    // tlcpu's Winograd computes the weight gradient
        std::unique_ptr<Winograd2x3> wino;  // its instance, where the forward has none
    };
    struct Plan {
        dnnl::convolution_forward::primitive_desc pd;
        dnnl::convolution_forward prim;
        dnnl::memory weights, dst, src_scratch, src;  // src: what the last forward read
        uint64_t weight_version = 0;
        Mode mode = Mode::inference;
        dt precision = dt::f32;
        size_t winograd = 0;  // Backend::winograd_key() when made (not whether this shape got Winograd)
        std::unique_ptr<Backward> bwd;
        std::unique_ptr<Winograd2x3> wino;  // tlcpu's Winograd runs the forward and backward-data (prim, weights not made)
    };

    static auto any(const dims& d, dt t = dt::f32) { return dnnl::memory::desc(d, t, tag::any); }

    // Winograd F(4x4, 3x3) computes a 3x3 stride-1 conv with 2.25x fewer multiplies than the
    // direct one; oneDNN has it for f32 on AVX-512 cores, in all three passes (and picks its
    // F(2x2, 3x3) kernel for inference at small batches). On ResNet-50's
    // 3x3 convs here it runs 1.4-2.3x faster than the direct kernel, and its rounding error
    // is about 3x the direct conv's (~3e-6 of the output's range: tests/test_winograd.cpp).
    // Backend::winograd turns it off; a shape oneDNN lacks it for, or whose Winograd scratchpad
    // is over Backend::winograd_max_scratchpad, gets the direct conv.
    // (key: Backend::winograd_key(), over 1 for oneDNN's kernel)
    bool wants_winograd(dt t, size_t key = Backend::get().winograd_key()) { return k_ == 3 && s_ == 1 && t == dt::f32 && key > 1; }
    // Where oneDNN has no Winograd (AVX2 CPUs), tlcpu's F(2x2, 3x3) takes the forward and the
    // input gradient of the 3x3 stride-1 f32 convs Winograd2x3::suits (and the weight gradient
    // of those it suits_weights: make_backward), on the nChw8c activations oneDNN's direct
    // kernel picks there (pd: that direct conv's, whose layouts the rest of the network sees).
    std::unique_ptr<Winograd2x3> own_winograd(const dnnl::convolution_forward::primitive_desc& pd, dt t, size_t key) const {
        const dims src = pd.src_desc().dims();
        if (!fits_own_winograd(pd, t, key) || !Winograd2x3::suits(src[0], in_, out_, src[2], src[3])) return nullptr;
        return std::make_unique<Winograd2x3>(in_, out_, src[2], src[3]);
    }
    bool fits_own_winograd(const dnnl::convolution_forward::primitive_desc& pd, dt t, size_t key) const {
        auto blocked = [](const dnnl::memory::desc& m) { return m == dnnl::memory::desc(m.dims(), dt::f32, tag::aBcd8b); };
        return key == 1 && k_ == 3 && s_ == 1 && p_ == 1 && t == dt::f32 && blocked(pd.src_desc()) && blocked(pd.dst_desc());
    }
    // With Winograd on, every f32 conv reads and writes nChw16c activations, the one layout
    // oneDNN's Winograd kernel takes: left to choose, the 1x1 convs of a frozen block pick NHWC
    // and each 3x3 between them would need two reorders (at batch 32: 26 reorders a forward and
    // +430 MB of reorder buffers). The 1x1 kernel for nChw16c runs as fast as the NHWC one here
    // (ResNet-50's 1x1 shapes, batch 32: within -10%..+13% each, no faster on the sum).
    // (t: the activation's type; prec: what the conv computes in)
    static dnnl::memory::desc act(const dims& d, dt t, int channels, dt prec) {
        const bool blocked = prec == dt::f32 && Backend::get().onednn_winograd() && channels % 16 == 0;
        return dnnl::memory::desc(d, t, blocked ? tag::aBcd16b : tag::any);
    }
    // The primitive descriptor of desc(winograd) if wanted and implemented, else desc(direct).
    template <class PD, class Desc, class... Hint>
    static PD pick(bool winograd, Desc&& desc, const dnnl::primitive_attr& attr, const Hint&... hint) {
        auto& eng = Backend::get().engine();
        if (winograd) {
            PD pd(desc(dnnl::algorithm::convolution_winograd), attr, eng, hint..., /*allow_empty=*/true);
            if (pd && pd.scratchpad_desc().get_size() <= Backend::get().winograd_max_scratchpad) return pd;
        }
        return PD(desc(dnnl::algorithm::convolution_direct), attr, eng, hint...);
    }

    // The rows of the weight-gradient matmul for x and an output of size out,
    // col[n][oy][ox][ky][kx][i] = x[n][i][oy*S-P+ky][ox*S-P+kx], zero in the padding, x being
    // NHWC (blk = In) or in blocks of blk channels (nChw8c: blk = 8).
    template <class T>
    void im2col(const dnnl::memory& from, T* col, const dims& out, int blk) {
        const dims d = from.get_desc().dims();
        const int64_t plane = d[2] * d[3] * blk;  // one channel block to the next
        Backend::get().wait();
        const auto* x = static_cast<const T*>(from.get_data_handle());
#pragma omp parallel for
        for (int64_t r = 0; r < out[0] * out[2]; ++r) {
            const int64_t n = r / out[2], oy = r % out[2];
            for (int64_t ox = 0; ox < out[3]; ++ox)
                for (int ky = 0; ky < k_; ++ky)
                    for (int kx = 0; kx < k_; ++kx) {
                        T* to = col + (((r * out[3] + ox) * k_ + ky) * k_ + kx) * in_;
                        const int64_t iy = oy * s_ - p_ + ky, ix = ox * s_ - p_ + kx;
                        if (iy < 0 || iy >= d[2] || ix < 0 || ix >= d[3]) {
                            std::memset(to, 0, in_ * sizeof(T));
                            continue;
                        }
                        const T* at = x + ((n * (in_ / blk) * d[2] + iy) * d[3] + ix) * blk;
                        for (int c = 0; c < in_; c += blk) std::memcpy(to + c, at + c / blk * plane, blk * sizeof(T));
                    }
        }
    }

    Backward make_backward(const Plan& p) {
        auto& eng = Backend::get().engine();
        const dims src = p.pd.src_desc().dims(), dst = p.pd.dst_desc().dims(), wei{out_, in_, k_, k_};
        const dt t = p.precision;  // what the products run in; gradients leave in f32
        Backward b;
        // tlcpu's Winograd computes the weight gradient where Winograd2x3::suits_weights (a
        // thinner conv than its forward takes gets an instance of its own), and the input
        // gradient where it ran the forward (p.wino)
        if (fits_own_winograd(p.pd, t, p.winograd) && Winograd2x3::suits_weights(in_, out_, src[2], src[3])) {
            b.wino_weights = true;
            if (!p.wino) b.wino = std::make_unique<Winograd2x3>(in_, out_, src[2], src[3]);
        }
        // oneDNN 2.6's bf16 backward-weights kernel is slow where the image is small: on AMX at
        // batch 32, layer4's 1x1 convs run at 250-300 GFLOP/s and its 3x3 ones at 330-650,
        // while its matmul reaches ~1,900 on the same products. With NHWC activations (what bf16
        // convs pick) the weight gradient is one matmul over the output pixels,
        //   dW[Out][K*K*In] = dy^T [Out][pixels] x col [pixels][K*K*In],
        // dy^T being NHWC dy read with swapped strides and col the input's rows (a 1x1 stride-1
        // conv's input as it is; else im2col). Measured per shape (conv kernel -> matmul, ms):
        // 1x1 512->2048 @7 11.2 -> 1.6, 64->256 @56 3.4 -> 1.9, 1024->2048 @14 stride 2 26.7 ->
        // 3.5 (+ im2col), 3x3 512 @7 11.3 -> 5.5 and 512 @14 stride 2 21.2 -> ~5.5 (im2col
        // included); but 3x3 128 @28 7.3 -> ~12: the conv kernel is good on larger images, so
        // 3x3 convs take the matmul only when strided or at most 7x7 out (other kernel sizes,
        // such as the 7x7 stem with its 3 channels, were slower as matmuls). A column buffer
        // (im2col) is at most 32 MiB.
        // f32 on AVX2 (activations nChw8c): oneDNN's 3x3 backward-weights kernel (jit:avx2) is
        // the slowest conv pass there, and the same matmul (im2col reading channel blocks, dy
        // reordered to NHWC) beats it on small images. Measured at batch 32, 2 threads (conv
        // kernel -> matmul, ms, reorders and im2col included): 3x3 512 @7 100.7 -> 62.7,
        // 512 @14 stride 2 161.9 -> 96.4, 256 @14 109.7 -> 107.5, 128 @28 94.5 -> 79.5 (col
        // 115 MB, over the cap); oneDNN's 1x1 kernel was as fast or faster (2048->512 @7 25.7 ->
        // 28.1, 256->1024 @14 29.8 -> 60.2), so f32 takes the matmul for 3x3 convs only, by the
        // same rule. (Measured on AVX2 only; AVX-512 f32 activations are nChw16c, which this
        // path does not read, so there oneDNN's kernel runs.)
        const int64_t pixels = dst[0] * dst[2] * dst[3], kk = int64_t(k_) * k_ * in_;
        const bool wanted = k_ == 1 ? p_ == 0 && t == dt::bf16 : k_ == 3 && (s_ > 1 || dst[2] * dst[3] <= 49);
        const bool fits = (k_ == 1 && s_ == 1) || pixels * kk * int64_t(dnnl::memory::data_type_size(t)) <= (int64_t(32) << 20);
        const dnnl::memory::desc& x = p.pd.src_desc();
        const int blk = t == dt::bf16 && x == dnnl::memory::desc(src, t, tag::acdb)                   ? in_
                        : t == dt::f32 && in_ % 8 == 0 && x == dnnl::memory::desc(src, t, tag::aBcd8b) ? 8
                                                                                                     : 0;
        // f32 multiplies the other way round, dW^T[K*K*In][Out] = col^T x dy: oneDNN's f32 gemm
        // then packs less (alone: 13 MB instead of 31, as fast), and its column buffer is a
        // gradient-pool buffer, which the passes after it reuse. Peak RSS at batch 32: phase2_b32
        // 834 -> 867 MB, full_b32 3,724 -> 3,768 (PyTorch's: 992-1,007 and 3,841-3,898); dy^T x col
        // in a buffer of its own had cost 76-87 MB. phase2_b32 10.7 -> 11.0 img/s (medians of 4
        // alternating runs; the machine's noise is about as large).
        if (blk && !has_bias_ && wanted && fits && !b.wino_weights) {
            const bool col_first = t == dt::f32;
            // NHWC dy and the column buffer as rows of pixels, and each read transposed in place
            const dnnl::memory::desc dy_rows({pixels, out_}, t, dims{out_, 1}), dy_t({out_, pixels}, t, dims{1, out_});
            const dnnl::memory::desc col({pixels, kk}, t, dims{kk, 1}), col_t({kk, pixels}, t, dims{1, kk});
            const dnnl::matmul::desc md = col_first ? dnnl::matmul::desc(col_t, dy_rows, dnnl::memory::desc({kk, out_}, dt::f32, tag::ab))
                                                    : dnnl::matmul::desc(dy_t, col, dnnl::memory::desc({out_, kk}, dt::f32, tag::ab));
            dnnl::matmul::primitive_desc mpd(md, Backend::attr(), eng, /*allow_empty=*/true);
            if (mpd && std::string(mpd.impl_info_str()).rfind("ref", 0) != 0) {  // not the reference loop
                b.mpd = mpd;
                b.mprim = dnnl::matmul(mpd);
                b.mm_dy = dnnl::memory::desc(dst, t, tag::acdb);
                b.mm_dw = dnnl::memory::desc(wei, dt::f32, col_first ? tag::cdba : tag::acdb);
                b.col = col;
                b.col_block = blk;
                b.col_first = col_first;
            }
        }
        if (!b.mprim && !b.wino_weights) {  // the forward's algorithm, as long as oneDNN has it for the backward pass too
            b.wpd = pick<dnnl::convolution_backward_weights::primitive_desc>(wants_winograd(t, p.winograd), [&](dnnl::algorithm algo) {
                return has_bias_ ? dnnl::convolution_backward_weights::desc(algo, any(src, t), any(wei),
                                                                            dnnl::memory::desc({out_}, dt::f32, tag::a),
                                                                            any(dst, t), {s_, s_}, {p_, p_}, {p_, p_})
                                 : dnnl::convolution_backward_weights::desc(algo, any(src, t), any(wei), any(dst, t), {s_, s_},
                                                                            {p_, p_}, {p_, p_});
            }, Backend::attr(), p.pd);
            b.wprim = dnnl::convolution_backward_weights(b.wpd);
        }
        if (p.wino) return b;  // the forward ran tlcpu's Winograd: so does the input gradient (dpd, dprim not made)
        b.dpd = pick<dnnl::convolution_backward_data::primitive_desc>(wants_winograd(t, p.winograd), [&](dnnl::algorithm algo) {
            return dnnl::convolution_backward_data::desc(algo, any(src), any(wei, t), any(dst, t), {s_, s_}, {p_, p_}, {p_, p_});
        }, Backend::attr(), p.pd);
        b.dprim = dnnl::convolution_backward_data(b.dpd);
        b.shares_weights = b.dpd.weights_desc() == p.pd.weights_desc();
        if (!b.shares_weights) b.weights = dnnl::memory(b.dpd.weights_desc(), eng);
        return b;
    }

    Plan make(const dnnl::memory::desc& xd, Mode mode, dt t) {
        dims d = xd.dims();
        check(d.size() == 4 && d[1] == in_,
              "Conv2d<" + std::to_string(in_) + "," + std::to_string(out_) + ",...> got input " +
                  to_string(d) + " (expected [N," + std::to_string(in_) + ",H,W])");
        int64_t oh = conv_out(d[2], k_, s_, p_), ow = conv_out(d[3], k_, s_, p_);
        check(oh > 0 && ow > 0, "Conv2d input " + to_string(d) + " is smaller than its kernel");
        if (t == dt::bf16) Backend::get().require_bf16();
        auto prop = mode == Mode::inference ? dnnl::prop_kind::forward_inference
                                            : dnnl::prop_kind::forward_training;
        dims src{d[0], in_, d[2], d[3]}, wei{out_, in_, k_, k_}, dst{d[0], out_, oh, ow};
        Plan p;
        auto& eng = Backend::get().engine();
        p.winograd = Backend::get().winograd_key();
        p.pd = pick<dnnl::convolution_forward::primitive_desc>(wants_winograd(t), [&](dnnl::algorithm algo) {
            return has_bias_ ? dnnl::convolution_forward::desc(prop, algo, act(src, t, in_, t), any(wei, t),
                                                               dnnl::memory::desc({out_}, dt::f32, tag::a), act(dst, dt::f32, out_, t),
                                                               {s_, s_}, {p_, p_}, {p_, p_})
                             : dnnl::convolution_forward::desc(prop, algo, act(src, t, in_, t), any(wei, t), act(dst, dt::f32, out_, t),
                                                               {s_, s_}, {p_, p_}, {p_, p_});
        }, Backend::attr());
        p.wino = own_winograd(p.pd, t, p.winograd);
        if (!p.wino) {
            p.prim = dnnl::convolution_forward(p.pd);
            p.weights = dnnl::memory(p.pd.weights_desc(), eng);
        }
        p.dst = dnnl::memory(p.pd.dst_desc(), eng);
        p.mode = mode;
        p.precision = t;
        return p;
    }

    struct Folded {
        dnnl::convolution_forward::primitive_desc pd;
        dnnl::convolution_forward prim;
        dnnl::memory weights, bias, dst, src_scratch;  // dst: a buffer of Backend::acts()
        std::array<uint64_t, 6> versions{};
        dt precision = dt::f32;
        size_t winograd = 0;
        std::unique_ptr<Winograd2x3> wino;  // as in Plan (then prim and weights are not made)
    };
    Folded make_folded(const dnnl::memory::desc& xd, bool relu, const dnnl::memory* residual, dt prec) {
        const dims d = xd.dims();
        check(d.size() == 4 && d[1] == in_, "Conv2d<" + std::to_string(in_) + "," + std::to_string(out_) + ",...> got input " + to_string(d));
        if (prec == dt::bf16) Backend::get().require_bf16();
        dims src{d[0], in_, d[2], d[3]}, wei{out_, in_, k_, k_}, dst{d[0], out_, conv_out(d[2], k_, s_, p_), conv_out(d[3], k_, s_, p_)};
        auto& eng = Backend::get().engine();
        auto any_p = [&](const dims& d) { return dnnl::memory::desc(d, prec, tag::any); };
        // The residual add is a sum post-op (dst += conv): oneDNN 2.6 runs a full-tensor
        // binary_add post-op only in its reference convolution, ~100x slower.
        auto make_pd = [&](const dnnl::memory::desc& dst_md, bool sum) {
            dnnl::post_ops ops;
            if (sum) ops.append_sum(1.f);
            if (relu) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
            dnnl::primitive_attr attr = Backend::attr();
            attr.set_post_ops(ops);
            return pick<dnnl::convolution_forward::primitive_desc>(wants_winograd(prec), [&](dnnl::algorithm algo) {
                return dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, algo, act(src, prec, in_, prec),
                                                       any_p(wei), dnnl::memory::desc({out_}, dt::f32, tag::a), dst_md,
                                                       {s_, s_}, {p_, p_}, {p_, p_});
            }, attr);
        };
        Folded p;
        p.pd = make_pd(act(dst, prec, out_, prec), residual != nullptr);
        p.precision = prec;
        p.winograd = Backend::get().winograd_key();
        if (!residual) p.wino = own_winograd(p.pd, prec, p.winograd);  // (it has no sum post-op)
        if (!p.wino) {
            p.prim = dnnl::convolution_forward(p.pd);
            p.weights = dnnl::memory(p.pd.weights_desc(), eng);
        }
        p.bias = dnnl::memory(p.pd.bias_desc(), eng);
        return p;
    }

    std::array<uint64_t, 6> versions(const FoldedBN& bn) const {
        return {weight.version, bias.version, bn.weight.version, bn.bias.version, bn.running_mean.version,
                bn.running_var.version};
    }
    // The BatchNorm folded in: w = W * s, b = beta + (bias - mean) * s, s = gamma / sqrt(var + eps).
    void fold(const FoldedBN& bn, Tensor& w, Tensor& b) const {
        w = Tensor(weight.value.shape());
        b = Tensor({out_});
        const int64_t per = int64_t(in_) * k_ * k_;
        for (int o = 0; o < out_; ++o) {
            const float sc = bn.weight.value[o] / std::sqrt(bn.running_var.value[o] + bn.eps);
            for (int64_t i = 0; i < per; ++i) w[o * per + i] = weight.value[o * per + i] * sc;
            b[o] = bn.bias.value[o] + ((has_bias_ ? bias.value[o] : 0.f) - bn.running_mean.value[o]) * sc;
        }
    }

    struct Quant {
        dnnl::convolution_forward::primitive_desc pd;
        dnnl::convolution_forward prim;
        dnnl::memory weights, bias, dst, src_scratch;
        std::array<uint64_t, 6> versions{};
        std::array<float, 3> scales{};  // input, residual, output
        dt res_t = dt::undef;
        bool relu = false;
        int bits = 0;  // of the weights
    };
    // The scales are part of the primitive (static output scales let oneDNN pick its fastest
    // kernels), so a plan is rebuilt when they or the weights change: for a frozen layer, once.
    Quant make_int8(const dnnl::memory::desc& xd, const FoldedBN& bn, bool relu, dt res_t, const std::array<float, 3>& sc) const {
        const dims d = xd.dims();
        dims src{d[0], in_, d[2], d[3]}, wei{out_, in_, k_, k_}, dst{d[0], out_, conv_out(d[2], k_, s_, p_), conv_out(d[3], k_, s_, p_)};
        const float sx = sc[0], sr = sc[1], s_out = sc[2];
        Tensor w, b;
        fold(bn, w, b);
        const int64_t per = int64_t(in_) * k_ * k_;
        std::vector<int8_t> wq(size_t(out_ * per));
        std::vector<float> oscale(out_);
        Tensor bq({out_});
        const int bits = Backend::get().int8_bits();
        check(bits == 7 || (bits == 8 && Backend::get().has_vnni()),
              "int8 weights of " + std::to_string(bits) + " bits on this CPU (7, or 8 with VNNI)");
        const float levels = bits == 8 ? 127.f : 63.f;  // 255 x 63 x 2 fits an s16
        for (int o = 0; o < out_; ++o) {
            float m = 0.f;
            for (int64_t i = 0; i < per; ++i) m = std::max(m, std::fabs(w[o * per + i]));
            const float sw = m > 0.f ? m / levels : 1.f;
            for (int64_t i = 0; i < per; ++i) wq[size_t(o * per + i)] = int8_t(std::lrint(w[o * per + i] / sw));
            oscale[size_t(o)] = sx * sw / s_out;
            bq[o] = b[o] / (sx * sw);
        }
        const dt out_t = relu ? dt::u8 : dt::s8;
        dnnl::post_ops ops;
        if (res_t != dt::undef) ops.append_sum(sr / s_out, res_t == out_t ? dt::undef : res_t);
        if (relu) ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
        dnnl::primitive_attr attr = Backend::attr();
        attr.set_output_scales(1 << 1, oscale);
        attr.set_post_ops(ops);
        auto& eng = Backend::get().engine();
        Quant q;
        q.pd = {{dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, {src, dt::u8, tag::any},
                 {wei, dt::s8, tag::any}, {{out_}, dt::f32, tag::a}, {dst, out_t, tag::any}, {s_, s_}, {p_, p_}, {p_, p_}},
                attr, eng};
        q.prim = dnnl::convolution_forward(q.pd);
        q.weights = dnnl::memory(q.pd.weights_desc(), eng);
        q.bias = dnnl::memory(q.pd.bias_desc(), eng);
        reorder(dnnl::memory({wei, dt::s8, tag::oihw}, eng, wq.data()), q.weights);
        reorder(view(bq), q.bias);
        Backend::get().wait();  // wq dies here
        q.versions = versions(bn);
        q.bits = bits;
        q.scales = sc;
        q.res_t = res_t;
        q.relu = relu;
        return q;
    }

protected:
    ConvCore(int in, int out, int k, int s, int p, bool has_bias)
        : weight({out, in, k, k}, 0.f), bias({has_bias ? out : 0}, 0.f), in_(in), out_(out), k_(k), s_(s), p_(p),
          has_bias_(has_bias) {}

private:
    int in_, out_, k_, s_, p_;
    bool has_bias_;
    PlanCache<Plan> plans_;
    Plan* last_ = nullptr;
    PlanCache<Folded> folded_;
    Folded* last_folded_ = nullptr;
    PlanCache<Quant> quant_;
};

}  // namespace detail

// Conv2d<In, Out, K, S, P, Bias>: square kernel K, stride S, zero padding P on every side.
// The weight is kept in torchvision's [Out, In, K, K] order; oneDNN's blocked copy of it is
// refreshed only when the weight's version changes. The work is detail::ConvCore's.
template <int In, int Out, int K, int S = 1, int P = 0, bool Bias = false>
class Conv2d : public detail::ConvCore {
    static_assert(In > 0 && Out > 0, "tlcpu: Conv2d channel counts must be positive");
    static_assert(K > 0 && S > 0 && P >= 0, "tlcpu: Conv2d needs kernel > 0, stride > 0, padding >= 0");

public:
    static constexpr int in_channels = In, out_channels = Out;
    static constexpr int kernel = K, stride = S, padding = P;
    static constexpr bool has_bias = Bias;

    Conv2d() : ConvCore(In, Out, K, S, P, Bias) {}

    template <class BN>
    const dnnl::memory& forward_folded(const dnnl::memory& x, const BN& bn, bool relu, const dnnl::memory* residual,
                                       bool residual_owned, dt precision) {
        static_assert(BN::in_channels == Out, "tlcpu: the folded BatchNorm must have the conv's output channels");
        return ConvCore::forward_folded(x, folded(bn), relu, residual, residual_owned, precision);
    }
    template <class BN>
    const dnnl::memory& forward_int8(const dnnl::memory& x, const BN& bn, bool relu, const dnnl::memory* residual,
                                     bool residual_owned, float s_out) {
        static_assert(BN::in_channels == Out, "tlcpu: the folded BatchNorm must have the conv's output channels");
        return ConvCore::forward_int8(x, folded(bn), relu, residual, residual_owned, s_out);
    }

private:
    template <class BN>
    static FoldedBN folded(const BN& bn) {
        return {bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.config.eps};
    }
};

}  // namespace tlcpu
