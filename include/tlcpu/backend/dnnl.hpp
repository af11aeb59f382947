// tlcpu: the oneDNN side of the library. One engine and one stream for the process, a
// per-layer cache of primitives keyed by input shape, and the reorders that move data
// between oneDNN's blocked layouts and plain tensors at the network's edges.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

using dims = dnnl::memory::dims;  // the same type as Shape: std::vector<int64_t>
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

// Forward propagation kind: inference lets oneDNN skip what backward would need.
enum class Mode { inference, training };

// A 64-byte-aligned block that only grows: the scratchpad and the shared buffers. Growing
// drops the contents, which every user's are dead by then.
class GrowingBuffer {
public:
    char* at_least(size_t n, const char* what) {
        if (n > bytes_) {
            Ptr p(static_cast<char*>(std::aligned_alloc(64, (n + 63) / 64 * 64)));
            if (!p) fail("out of memory allocating a " + std::to_string(n) + "-byte " + what);
            p_ = std::move(p);
            bytes_ = n;
        }
        return p_.get();
    }
    char* get() const { return p_.get(); }
    size_t bytes() const { return bytes_; }

private:
    struct FreeDeleter {
        void operator()(char* p) const { std::free(p); }
    };
    using Ptr = std::unique_ptr<char, FreeDeleter>;
    Ptr p_;
    size_t bytes_ = 0;
};

class Backend {
public:
    static Backend& get() {
        static Backend b;
        return b;
    }
    const dnnl::engine& engine() const { return engine_; }
    dnnl::stream& stream() { return stream_; }

    // Every primitive is created with this: its scratch memory comes from one buffer the
    // backend owns, instead of a malloc/free per execution (which page-faults heavily).
    static dnnl::primitive_attr attr() {
        dnnl::primitive_attr a;
        a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
        return a;
    }

    // Every primitive runs through here: it gets the shared scratchpad, and tests can count
    // what ran (a frozen layer must run no backward primitive).
    void run(const dnnl::primitive& p, std::unordered_map<int, dnnl::memory> args) {
        const dnnl_memory_desc_t* md = dnnl_primitive_desc_query_md(p.get_primitive_desc(), dnnl_query_scratchpad_md, 0);
        if (const size_t need = md ? dnnl_memory_desc_get_size(md) : 0)
            args[DNNL_ARG_SCRATCHPAD] =
                dnnl::memory(dnnl::memory::desc(*md), engine_, scratch_.at_least(need, "oneDNN scratchpad"));
        p.execute(stream_, args);
        ++executed_;
    }
    uint64_t executed() const { return executed_; }
    size_t scratchpad_bytes() const { return scratch_.bytes(); }  // the largest any primitive has needed

    // Where a conv's backward-weights pass writes its blocked weight gradient, which lives only
    // until it is reordered into the parameter's gradient: one buffer the size of the largest
    // weight instead of one per conv (ResNet-50: 9 MB instead of 94).
    dnnl::memory weight_grad_buffer(const dnnl::memory::desc& d) {
        return dnnl::memory(d, engine_, wgrad_.at_least(d.get_size(), "weight gradient buffer"));
    }

    // The rows a bf16 conv's weight-gradient matmul reads (Conv2d::im2col), likewise shared.
    void* column_buffer(size_t n) { return cols_.at_least(n, "im2col buffer"); }
    // The transformed tiles of tlcpu's own Winograd convs (Winograd2x3), likewise shared.
    void* winograd_buffer(size_t n) { return wino_.at_least(n, "Winograd tile buffer"); }

    // Precision of the folded convolutions of frozen blocks (inference mode): f32, or bf16
    // with f32 accumulation and f32 master weights (AVX512_BF16 / AMX units), or s8: int8
    // blocks (u8 activations, s8 weights, s32 accumulation; VNNI / AMX, or AVX2 with 7-bit
    // weights: has_vnni) with scales from a calibration pass (models/int8.hpp), the stem in
    // bf16 (f32 where has_bf16() is false). Trainable layers are unaffected; activations
    // leave the frozen part converted back to f32 by the reorder at its edge.
    dt frozen_precision = dt::f32;
    // Precision of trainable convolutions (forward, backward data and weights): f32, or
    // bf16 products with f32 accumulation, f32 master weights and f32 weight gradients.
    dt train_precision = dt::f32;
    // f32 3x3 stride-1 convolutions (frozen or trainable) use Winograd where there is a kernel
    // for it: oneDNN's F(4x4, 3x3) on AVX-512 cores, else tlcpu's F(2x2, 3x3) on AVX2 ones
    // (backend/winograd.hpp, for the shapes Winograd2x3::suits). Fewer multiplies, slightly
    // different rounding (Conv2d::wants_winograd). false: every conv is direct, as PyTorch
    // computes it.
    bool winograd = true;
    // ... unless oneDNN's scratchpad (transformed tiles, per-thread gradient copies) would be larger:
    // at batch 32 layer4's backward-weights pass wants 134 MiB, for 1% of a full fine-tuning
    // step; every other pass of ResNet-50's 3x3 convs fits in 60.
    size_t winograd_max_scratchpad = size_t(64) << 20;
    // What a conv plan depends on of the two above: 0 when Winograd is off or this CPU has no
    // Winograd kernel, 1 for tlcpu's own (AVX2), else oneDNN's (its scratchpad cap + 2).
    size_t winograd_key() const {
        return !winograd ? 0 : has_winograd() ? winograd_max_scratchpad + 2 : own_winograd() ? 1 : 0;
    }
    // oneDNN's Winograd, which forces its layout (nChw16c) on every f32 conv when on.
    bool onednn_winograd() const { return winograd && has_winograd(); }
    // Whether this CPU runs tlcpu's Winograd transforms (AVX2 and FMA, where oneDNN's f32
    // activations are nChw8c).
    static bool own_winograd() {
#if defined(__x86_64__) || defined(__i386__)
        static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        return has;
#else
        return false;
#endif
    }
    bool has_winograd() const {
        static const bool has = has_conv(dt::f32, dnnl::algorithm::convolution_winograd);
        return has;
    }
    // Whether oneDNN has bf16 convolutions on this CPU: from AVX512_CORE up (emulated there,
    // native with AVX512_BF16 or AMX); oneDNN 2.6 has none on AVX2 machines.
    bool has_bf16() const {
        static const bool has = has_conv(dt::bf16, dnnl::algorithm::convolution_direct);
        return has;
    }
    // Whether oneDNN can make a small 3x3 conv of type t with algorithm a on this CPU.
    bool has_conv(dt t, dnnl::algorithm a) const {
        const dnnl::memory::desc x({1, 16, 8, 8}, t, dnnl::memory::format_tag::any),
            w({16, 16, 3, 3}, t, dnnl::memory::format_tag::any);
        const dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, a, x, w, x, {1, 1}, {1, 1}, {1, 1});
        return bool(dnnl::convolution_forward::primitive_desc(d, engine_, /*allow_empty=*/true));
    }
    // A bf16 request where there is none fails here, by name, not at the first conv with
    // oneDNN's bare "could not create a primitive descriptor iterator".
    void require_bf16() const {
        check(has_bf16(), "bf16 needs a CPU with AVX-512 (oneDNN 2.6 has no bf16 convolution without it), which "
                          "oneDNN does not find on this one: use f32 (or int8 for frozen layers)");
    }
    // Whether int8 products are exact here: VNNI (AVX512_VNNI, AVX_VNNI, AMX) sums u8 x s8
    // pairs in s32. Without it oneDNN sums each pair in s16 with saturation (VPMADDUBSW), so
    // 255 x 127 + 255 x 127 would clip: int8 convolutions then keep weights within 7 bits.
    bool has_vnni() const {
        static const bool has = [] {
            const unsigned isa = unsigned(dnnl::get_effective_cpu_isa());
            auto is = [&](dnnl::cpu_isa i) { return (isa & unsigned(i)) == unsigned(i); };
            return is(dnnl::cpu_isa::avx512_core_vnni) || is(dnnl::cpu_isa::avx2_vnni);
        }();
        return has;
    }
    // The instruction set oneDNN picked its kernels for (ONEDNN_MAX_CPU_ISA can lower it), by
    // oneDNN's name. Two runs with the same seed and threads give the same bits only on the
    // same one: a checkpoint records it, and a resume elsewhere says its bits will differ.
    static std::string cpu_isa() {
        using i = dnnl::cpu_isa;
        static const std::pair<i, const char*> names[] = {
            {i::avx512_core_amx, "avx512_core_amx"}, {i::avx512_core_bf16, "avx512_core_bf16"},
            {i::avx512_core_vnni, "avx512_core_vnni"}, {i::avx512_core, "avx512_core"},
            {i::avx512_mic_4ops, "avx512_mic_4ops"}, {i::avx512_mic, "avx512_mic"}, {i::avx2_vnni, "avx2_vnni"},
            {i::avx2, "avx2"}, {i::avx, "avx"}, {i::sse41, "sse41"}};
        const unsigned isa = unsigned(dnnl::get_effective_cpu_isa());
        for (const auto& [bits, name] : names)  // the widest whose bits are all set
            if ((isa & unsigned(bits)) == unsigned(bits)) return name;
        return "isa" + std::to_string(isa);
    }
    // Bits of an int8 conv's weights (max |w| / 127 or / 63): 0 means this CPU's own, 8 with
    // VNNI and 7 without. A model file (and a checkpoint) records what it trained with;
    // evaluate, predict and train_cpu --resume set 7 where it had 7, so a model trained without
    // VNNI runs the same weights on a CPU with it (8 cannot run exactly without VNNI:
    // evaluate and predict say so and run 7, a resume is refused).
    int int8_weight_bits = 0;
    int int8_bits() const { return int8_weight_bits ? int8_weight_bits : has_vnni() ? 8 : 7; }
    // Set during an int8 calibration pass: frozen blocks run in f32 and record the largest
    // value of each activation they produce.
    bool calibrating = false;
    void wait() { stream_.wait(); }

    // Scales of int8 activations (value = scale * integer), keyed by buffer: the conv or
    // reorder that fills an integer buffer records its scale, and a reorder out of one into
    // floats reads it, so integers never leave the frozen part unscaled.
    void set_scale(const dnnl::memory& m, float s) { scales_[m.get_data_handle()] = s; }
    float scale_of(const dnnl::memory& m) const {
        const auto it = scales_.find(m.get_data_handle());
        if (it == scales_.end()) fail("an int8 activation without a recorded scale (not written by an int8 layer)");
        return it->second;
    }
    bool has_scale(const dnnl::memory& m) const { return scales_.count(m.get_data_handle()) != 0; }

    // Buffers shared by every layer instead of one per layer and plan, for values that live
    // briefly: gradients flowing down the backbone (a layer's input gradient is read only by
    // the layer below it; inside a block at most three are alive: its output gradient, held
    // for the shortcut, and the main path's two), and the activations of inference-mode
    // blocks (a block's input, held for its shortcut, and two intermediates). That saves an
    // activation-sized buffer per layer.
    class BufferPool {
        struct Slot {
            GrowingBuffer p;
            int held = 0;
        };

    public:
        // A buffer of layout d that is not `input` (what the calling layer reads) and not
        // held by anyone.
        dnnl::memory take(const dnnl::memory::desc& d, const dnnl::memory* input) {
            const void* in = input ? input->get_data_handle() : nullptr;
            const size_t need = d.get_size();
            Slot* pick = nullptr;
            for (auto& s : slots_)
                if (!s.held && s.p.get() != in) {
                    pick = &s;
                    break;
                }
            if (!pick) pick = &slots_.emplace_back();
            // (a free slot's old contents are dead: it may grow)
            return dnnl::memory(d, Backend::get().engine(), pick->p.at_least(need, "shared buffer"));
        }
        // True when m is a pool buffer nobody holds: its reader may overwrite it (in place).
        bool free_to_overwrite(const dnnl::memory& m) {
            const Slot* s = find(m);
            return s && !s->held;
        }
        // Keeps a value alive while other layers take buffers (a block's output gradient
        // until the shortcut has read it). A value not from the pool is left alone.
        class Hold {
        public:
            Hold(BufferPool& pool, const dnnl::memory* m) : s_(m ? pool.find(*m) : nullptr) {
                if (s_) ++s_->held;
            }
            ~Hold() {
                if (s_) --s_->held;
            }
            Hold(const Hold&) = delete;
            Hold& operator=(const Hold&) = delete;

        private:
            Slot* s_;
        };

    private:
        Slot* find(const dnnl::memory& m) {
            const void* h = m.get_data_handle();
            for (auto& s : slots_)
                if (s.p.get() == h) return &s;
            return nullptr;
        }
        std::deque<Slot> slots_;  // a deque: Holds point at slots, which must not move
    };
    BufferPool& grads() { return grads_; }
    BufferPool& acts() { return acts_; }

private:
    Backend() : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {}
    dnnl::engine engine_;
    dnnl::stream stream_;
    uint64_t executed_ = 0;
    GrowingBuffer scratch_, wgrad_, cols_, wino_;
    BufferPool grads_, acts_;
    std::unordered_map<const void*, float> scales_;
};

inline bool is_int8(dt t) { return t == dt::u8 || t == dt::s8; }


inline tag plain_tag(size_t rank) {
    switch (rank) {
        case 1: return tag::a;
        case 2: return tag::ab;
        case 3: return tag::abc;
        case 4: return tag::abcd;
        case 5: return tag::abcde;
    }
    fail("no plain layout for rank " + std::to_string(rank));
}

inline dnnl::memory::desc plain_desc(const dims& d) { return {d, dt::f32, plain_tag(d.size())}; }

// A dnnl::memory over a Tensor's own bytes: no copy; the tensor must outlive the memory.
inline dnnl::memory view(const Tensor& t) {
    return {plain_desc(dims(t.shape().begin(), t.shape().end())), Backend::get().engine(),
            const_cast<float*>(t.data())};
}

// Copies src into dst, converting layout and type. Out of an int8 activation into floats it
// multiplies by the activation's scale; int8 to int8 keeps the scale (a relayout). Floats
// into int8 need a scale: quantize().
inline void reorder(const dnnl::memory& src, const dnnl::memory& dst) {
    auto& be = Backend::get();
    const bool qs = is_int8(src.get_desc().data_type()), qd = is_int8(dst.get_desc().data_type());
    dnnl::primitive_attr a = Backend::attr();
    if (qs && !qd) a.set_output_scales(0, {be.scale_of(src)});
    if (!qs && qd) fail("reorder of floats into int8 without a scale");
    be.run(dnnl::reorder(src, dst, a), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}});
    if (qs && qd && be.has_scale(src)) be.set_scale(dst, be.scale_of(src));
}

// x (floats) as integers of type t with scale s: round(x / s), saturated.
inline void quantize(const dnnl::memory& src, const dnnl::memory& dst, float s) {
    auto& be = Backend::get();
    dnnl::primitive_attr a = Backend::attr();
    a.set_output_scales(0, {1.f / s});
    be.run(dnnl::reorder(src, dst, a), {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}});
    be.set_scale(dst, s);
}

// The largest |value| of an f32 memory in any layout (a blocked layout's padding is zeros).
inline float abs_max(const dnnl::memory& m) {
    check(m.get_desc().data_type() == dt::f32, "abs_max of a non-f32 activation");
    Backend::get().wait();
    const float* p = static_cast<const float*>(m.get_data_handle());
    const int64_t n = int64_t(m.get_desc().get_size() / sizeof(float));
    float r = 0.f;
#pragma omp parallel for reduction(max : r)
    for (int64_t i = 0; i < n; ++i) r = std::max(r, std::fabs(p[i]));
    return r;
}

// Copies a oneDNN memory in any layout out into a plain tensor (an edge of the network).
inline Tensor to_tensor(const dnnl::memory& m) {
    dims d = m.get_desc().dims();
    Tensor t(Shape(d.begin(), d.end()));
    reorder(m, view(t));
    Backend::get().wait();
    return t;
}

// The same layout with another element type (a bf16 activation's f32 twin).
inline dnnl::memory::desc with_type(const dnnl::memory::desc& d, dt t) {
    dnnl_memory_desc_t c = d.data;
    c.data_type = static_cast<dnnl_data_type_t>(t);
    return dnnl::memory::desc(c);
}

// Returns m itself when it already has the layout a primitive wants, else reorders it into
// `scratch` (allocated once per plan). Inside the backbone this is a no-op: every conv picks
// the same blocked layout, so reorders happen only at the edges.
inline const dnnl::memory& as_desc(const dnnl::memory& m, const dnnl::memory::desc& want,
                                   dnnl::memory& scratch) {
    if (m.get_desc() == want) return m;
    if (!scratch || scratch.get_desc() != want) scratch = dnnl::memory(want, Backend::get().engine());
    reorder(m, scratch);
    return scratch;
}

// Where a layer whose backward may run in place (BatchNorm, ReLU) writes its input gradient:
// over dy itself when dy is a pool buffer nobody else needs (g is dy, not a reordered copy,
// and has the wanted layout), else in a fresh pool buffer.
inline dnnl::memory in_place_or_take(const dnnl::memory& g, const dnnl::memory& dy, const dnnl::memory::desc& want) {
    auto& pool = Backend::get().grads();
    if (&g == &dy && dy.get_desc() == want && pool.free_to_overwrite(dy)) return dy;
    return pool.take(want, &dy);
}

// Primitives and their buffers, built once per input layout and reused. A handful of
// entries covers what training sees (the batch size, the last short batch, batch 1).
template <class Plan>
class PlanCache {
public:
    template <class Make>
    Plan& get(const dnnl::memory::desc& key, Mode mode, Make&& make) {
        for (auto& e : entries_)
            if (e.mode == mode && e.key == key) return *e.plan;
        if (entries_.size() == kMax) entries_.erase(entries_.begin());
        entries_.push_back({key, mode, std::make_unique<Plan>(make())});
        return *entries_.back().plan;
    }
    void clear() { entries_.clear(); }
    size_t size() const { return entries_.size(); }

private:
    static constexpr size_t kMax = 4;
    struct Entry {
        dnnl::memory::desc key;
        Mode mode;
        std::unique_ptr<Plan> plan;
    };
    std::vector<Entry> entries_;
};

}  // namespace tlcpu
