// tlcpu: Winograd F(2x2, 3x3) for f32 3x3 stride-1 convolutions on AVX2 CPUs, where
// oneDNN 2.6 has no Winograd kernel (its own needs AVX-512). Each 2x2 output tile comes from
// a 4x4 input tile with 16 multiplies per channel pair instead of 36:
//   Y = A^T [ sum_c (G g G^T) .* (B^T d B) ] A
// The element-wise products over all tiles are 16 matrix products, one per tile position,
//   M[xi] (tiles x Out) = V[xi] (tiles x In) x U[xi] (In x Out),
// run as one batched oneDNN matmul; the input and output transforms work on nChw8c
// activations, whose 8-channel blocks are exactly one AVX register. Images go through in
// chunks so the transformed tiles stay a few MiB (a shared buffer of the backend).
#pragma once
#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TLCPU_WINOGRAD_X86 1
#endif

#include "tlcpu/backend/dnnl.hpp"

namespace tlcpu {

class Winograd2x3 {
public:
    static constexpr const char* name = "tlcpu winograd F(2x2,3x3) avx2";

    // Which shapes take it, measured on the AMD EPYC machine (Zen 3, 2 threads; oneDNN's
    // direct jit:avx2 kernel against this, forward with bias and ReLU, ms, medians of 5):
    // batch 32: 256 @14 52.9 -> 35.9 (1.47x), 512 @7 72.2 -> 43.0 (1.68x), but 128 @28
    // 57.9 -> 62.4 and 64 @56 50.3 -> 71.2: with 64 or 128 channels the products are too
    // thin for the matmul to make up for the transforms' memory traffic. Batch 1: 256 @14
    // 1.62 -> 0.80, 512 @7 1.71 -> 2.67 (16 tiles: too few rows). So: at least 256 input and
    // output channels and 32 tiles in the batch.
    static bool suits(int64_t n, int64_t in, int64_t out, int64_t h, int64_t w) {
        return Backend::own_winograd() && in >= 256 && out >= 256 && in % 8 == 0 && out % 8 == 0 &&
               n * ((h + 1) / 2) * ((w + 1) / 2) >= 32;
    }

    // The weight gradient alone (run_backward_weights) pays on thinner convs too: at batch 32,
    // 2 threads, against oneDNN's jit:avx2 kernel (medians of 8 alternations, ms, on a slow
    // hour of the machine), 128 @28 62-114 -> 48-66, 64 @56 93-114 -> 79-88, 256 @14 72-82 ->
    // 42-48; but at 7x7 (layer4) not against the im2col matmul the conv otherwise takes
    // (~50 -> 48-60: its 2x2 tiles cover 8x8 pixels of the 7x7, 1.3x the work).
    static bool suits_weights(int64_t in, int64_t out, int64_t h, int64_t w) {
        return Backend::own_winograd() && in >= 64 && out >= 64 && in % 8 == 0 && out % 8 == 0 && h * w > 49;
    }

    Winograd2x3(int64_t in, int64_t out, int64_t h, int64_t w) : in_(in), out_(out), h_(h), w_(w) {
        check(in % 8 == 0 && out % 8 == 0, "Winograd2x3 needs channel counts in multiples of 8");
        th_ = (h + 1) / 2, tw_ = (w + 1) / 2;
        // about 4 MiB of transformed input tiles per chunk: 5 images at 256 @14, 8 at 512 @7
        chunk_ = std::max<int64_t>(1, (int64_t(4) << 20) / (16 * th_ * tw_ * std::max(in, out) * 4));
        b_.assign(size_t(std::max(in, out)), 0.f);
    }

    // U[xi][c][o] = (G g G^T)[xi] of the 3x3 kernel w[o][c] (OIHW, as Conv2d keeps it),
    // G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]. The input gradient reads the same U (see
    // run_backward_data), so a weight update transforms once.
    void set_weights(const float* w) {
        u_.resize(size_t(16 * in_ * out_));  // (not made for the weight gradient alone)
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < in_; ++c)
            for (int64_t o = 0; o < out_; ++o) {
                const float* g = w + (o * in_ + c) * 9;
                float t[4][3];
                for (int j = 0; j < 3; ++j) {
                    t[0][j] = g[j];
                    t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                    t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                    t[3][j] = g[6 + j];
                }
                for (int i = 0; i < 4; ++i) {
                    const float u[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]),
                                        t[i][2]};
                    for (int j = 0; j < 4; ++j) u_[size_t(((i * 4 + j) * in_ + c) * out_ + o)] = u[j];
                }
            }
    }

    // y = relu?(conv3x3(x) + bias), stride 1, padding 1; x and y nChw8c of n images; bias:
    // Out values, or none.
    void run(const dnnl::memory& x, const dnnl::memory& y, const float* bias, bool relu) { go(x, y, bias, relu, false); }
    // The input gradient dx (In channels) of dy (Out channels): a conv with the kernel
    // w'[c][o] = w[o][c] turned by 180 degrees. Turning g turns G g G^T's rows and columns
    // by the permutation (3 1 2 0) (G g' = P G g), so its U is U[(s(i), s(j))] transposed:
    // the tiles are stored and read at the permuted positions and the matmul reads U with
    // its last two dimensions swapped.
    void run_backward_data(const dnnl::memory& dy, const dnnl::memory& dx) { go(dy, dx, nullptr, false, true); }

    // The weight gradient, dW[o][c] = sum over images and pixels of dy[o] times x[c] shifted
    // by the kernel offset: the same identity read the other way (F(3x3, 2x2)),
    //   dW = G^T [ sum_tiles (A dy A^T) .* (B^T d B) ] G,  A = [1 0; 1 1; 1 -1; 0 -1],
    // dy being a 2x2 output tile (zero past the edge) and d the 4x4 input tile the forward
    // read for it. The sums are 16 matrix products V[xi]^T (In x tiles) x E[xi] (tiles x Out),
    // 2.25x fewer multiplies than the direct pass, accumulated chunk by chunk into M[16][In][Out].
    // x, dy: the forward's input and its output's gradient (nChw8c); dw: [3][3][In][Out] (OIHW
    // with tag cdba) and db (Out values, or none: the bias gradient, the sum of dy) overwritten.
    void run_backward_weights(const dnnl::memory& x, const dnnl::memory& dy, float* dw, float* db) {
        auto& be = Backend::get();
        const dims d = x.get_desc().dims();
        check(d[1] == in_ && d[2] == h_ && d[3] == w_ && dy.get_desc().dims() == dims{d[0], out_, h_, w_},
              "Winograd2x3 weight gradient got input " + to_string(d) + " and gradient " + to_string(dy.get_desc().dims()));
        const int64_t n = d[0], tiles = th_ * tw_, cb = in_ / 8, ob = out_ / 8;
        // chunks of about 8 MiB of V and E, balanced (at 256 @14, batch 32: 7 chunks; 2 or 3 of
        // 24 MiB ran as fast), where the forward's hold 4 MiB of V: these products sum over
        // the rows, which want to be many
        const int64_t per = 16 * tiles * (in_ + out_) * 4, cap = int64_t(8) << 20;
        const int64_t chunks = std::max<int64_t>(1, (n * per + cap - 1) / cap), most = (n + chunks - 1) / chunks;
        be.wait();
        float* v = reinterpret_cast<float*>(be.winograd_buffer(size_t(16 * (most * tiles * (in_ + out_) + in_ * out_)) * sizeof(float)));
        float* e = v + 16 * most * tiles * in_;
        float* m = e + 16 * most * tiles * out_;
        const float* xp = static_cast<const float*>(x.get_data_handle());
        const float* gp = static_cast<const float*>(dy.get_data_handle());
        static constexpr int plain[4] = {0, 1, 2, 3};
        for (int64_t n0 = 0; n0 < n; n0 += most) {
            const int64_t nc = std::min(most, n - n0), rows = nc * tiles;
#pragma omp parallel for collapse(2) schedule(static)
            for (int64_t i = 0; i < nc; ++i)
                for (int64_t c = 0; c < cb + ob; ++c) {
                    if (c < cb)
                        input_tiles(xp + ((n0 + i) * cb + c) * h_ * w_ * 8, v + i * tiles * in_ + c * 8, rows, in_, plain);
                    else
                        gradient_tiles(gp + ((n0 + i) * ob + c - cb) * h_ * w_ * 8, e + i * tiles * out_ + (c - cb) * 8, rows);
                }
            const auto& mm = matmul_for(rows, n0 == 0 ? weights : weights_more);
            be.run(mm.prim, {{DNNL_ARG_SRC, dnnl::memory(mm.pd.src_desc(), be.engine(), v)},
                             {DNNL_ARG_WEIGHTS, dnnl::memory(mm.pd.weights_desc(), be.engine(), e)},
                             {DNNL_ARG_DST, dnnl::memory(mm.pd.dst_desc(), be.engine(), m)}});
            be.wait();  // before the sum below reads e and the next chunk overwrites v and e
            if (db) {  // A dy A^T at position (1, 1) is the sum of the tile's dy
                if (n0 == 0) std::fill(db, db + out_, 0.f);
                const float* s = e + 5 * rows * out_;
                for (int64_t r = 0; r < rows; ++r)
                    for (int64_t o = 0; o < out_; ++o) db[o] += s[r * out_ + o];
            }
        }
        be.wait();
        // G^T X G per channel pair, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]
        const int64_t pos = in_ * out_;
#pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < in_; ++c)
            for (int64_t o = 0; o < out_; ++o) {
                const float* at = m + c * out_ + o;
                float t[3][4];
                for (int q = 0; q < 4; ++q) {
                    const float x0 = at[q * pos], x1 = at[(4 + q) * pos], x2 = at[(8 + q) * pos], x3 = at[(12 + q) * pos];
                    t[0][q] = x0 + 0.5f * (x1 + x2);
                    t[1][q] = 0.5f * (x1 - x2);
                    t[2][q] = 0.5f * (x1 + x2) + x3;
                }
                for (int k = 0; k < 3; ++k) {
                    float* to = dw + (k * 3 * in_ + c) * out_ + o;
                    to[0] = t[k][0] + 0.5f * (t[k][1] + t[k][2]);
                    to[pos] = 0.5f * (t[k][1] - t[k][2]);
                    to[2 * pos] = 0.5f * (t[k][1] + t[k][2]) + t[k][3];
                }
            }
    }

    int64_t chunk() const { return chunk_; }

private:
    int64_t in_, out_, h_, w_, th_, tw_, chunk_;
    std::vector<float> u_, b_;  // [16][In][Out], [Out] (b_: the largest of In and Out)
    struct Matmul {
        dnnl::matmul::primitive_desc pd;
        dnnl::matmul prim;
    };
    // the products: forward, input gradient, weight gradient (its first chunk; the others add to it)
    enum Product { forward, backward_data, weights, weights_more };
    std::map<std::pair<int64_t, Product>, Matmul> mm_;  // by rows (a full chunk, the last one when shorter) and product

    void go(const dnnl::memory& x, const dnnl::memory& y, const float* bias, bool relu, bool back) {
        auto& be = Backend::get();
        const int64_t ci = back ? out_ : in_, co = back ? in_ : out_;  // channels read and written
        const dims d = x.get_desc().dims();
        check(d[1] == ci && d[2] == h_ && d[3] == w_, "Winograd2x3 got input " + to_string(d));
        const int64_t n = d[0], tiles = th_ * tw_;
        be.wait();  // x, and the bias, may be what a reorder just wrote
        if (bias)
            std::copy(bias, bias + co, b_.begin());
        else
            std::fill(b_.begin(), b_.end(), 0.f);
        const float* xp = static_cast<const float*>(x.get_data_handle());
        float* yp = static_cast<float*>(y.get_data_handle());
        const int64_t most = std::min(chunk_, n);
        float* v = reinterpret_cast<float*>(be.winograd_buffer(size_t(16 * most * tiles * (in_ + out_)) * sizeof(float)));
        float* m = v + 16 * most * tiles * ci;
        static constexpr int plain[4] = {0, 1, 2, 3}, turned[4] = {3, 1, 2, 0};
        const int* s = back ? turned : plain;
        for (int64_t n0 = 0; n0 < n; n0 += most) {
            const int64_t nc = std::min(most, n - n0), rows = nc * tiles, cb = ci / 8, ob = co / 8;
#pragma omp parallel for collapse(2) schedule(static)
            for (int64_t i = 0; i < nc; ++i)
                for (int64_t c = 0; c < cb; ++c)
                    input_tiles(xp + ((n0 + i) * cb + c) * h_ * w_ * 8, v + i * tiles * ci + c * 8, rows, ci, s);
            const auto& mm = matmul_for(rows, back ? backward_data : forward);
            be.run(mm.prim, {{DNNL_ARG_SRC, dnnl::memory(mm.pd.src_desc(), be.engine(), v)},
                             {DNNL_ARG_WEIGHTS, dnnl::memory(mm.pd.weights_desc(), be.engine(), u_.data())},
                             {DNNL_ARG_DST, dnnl::memory(mm.pd.dst_desc(), be.engine(), m)}});
            be.wait();
#pragma omp parallel for collapse(2) schedule(static)
            for (int64_t i = 0; i < nc; ++i)
                for (int64_t o = 0; o < ob; ++o)
                    output_tiles(m + i * tiles * co + o * 8, b_.data() + o * 8, relu, yp + ((n0 + i) * ob + o) * h_ * w_ * 8, rows,
                                 co, s);
        }
    }

    // backward_data: U read as [16][Out][In] (its transpose), the input gradient's product;
    // weights: V read as [16][In][tiles] (its transpose) times E [16][tiles][Out]
    const Matmul& matmul_for(int64_t rows, Product what) {
        auto it = mm_.find({rows, what});
        if (it != mm_.end()) return it->second;
        using md = dnnl::memory::desc;
        const md u({16, in_, out_}, dt::f32, tag::abc);  // U, or the weight gradient's M: [16][In][Out]
        const bool grad = what == weights || what == weights_more;
        const md a = grad                    ? md({16, in_, rows}, dt::f32, dims{rows * in_, 1, in_})
                     : what == backward_data ? md({16, rows, out_}, dt::f32, tag::abc)
                                             : md({16, rows, in_}, dt::f32, tag::abc);
        const md b = grad                    ? md({16, rows, out_}, dt::f32, tag::abc)
                     : what == backward_data ? md({16, out_, in_}, dt::f32, dims{in_ * out_, 1, out_})
                                             : u;
        const md c = grad ? u : md({16, rows, what == backward_data ? in_ : out_}, dt::f32, tag::abc);
        dnnl::primitive_attr attr = Backend::attr();
        if (what == weights_more) {
            dnnl::post_ops ops;
            ops.append_sum(1.f);
            attr.set_post_ops(ops);
        }
        Matmul mm;
        mm.pd = dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), attr, Backend::get().engine());
        mm.prim = dnnl::matmul(mm.pd);
        return mm_.emplace(std::make_pair(rows, what), std::move(mm)).first->second;
    }

#ifdef TLCPU_WINOGRAD_X86
    // One channel block of one image: every 4x4 tile (zero outside the image) to
    // B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1], each value 8 channels wide,
    // stored at tile position (s[r], s[q]). x: the block's plane [H][W][8]; v: this image's
    // first tile at this channel block; rows: the tiles of one chunk (the stride between
    // positions), ch: channels of a tile row.
    __attribute__((target("avx2,fma"))) void input_tiles(const float* x, float* v, int64_t rows, int64_t ch, const int* s) const {
        const __m256 zero = _mm256_setzero_ps();
        for (int64_t ty = 0; ty < th_; ++ty)
            for (int64_t tx = 0; tx < tw_; ++tx) {
                __m256 d[4][4];
                for (int r = 0; r < 4; ++r) {
                    const int64_t yy = 2 * ty - 1 + r;
                    for (int q = 0; q < 4; ++q) {
                        const int64_t xx = 2 * tx - 1 + q;
                        d[r][q] = yy >= 0 && yy < h_ && xx >= 0 && xx < w_ ? _mm256_loadu_ps(x + (yy * w_ + xx) * 8) : zero;
                    }
                }
                __m256 t[4][4];
                for (int q = 0; q < 4; ++q) {
                    t[0][q] = _mm256_sub_ps(d[0][q], d[2][q]);
                    t[1][q] = _mm256_add_ps(d[1][q], d[2][q]);
                    t[2][q] = _mm256_sub_ps(d[2][q], d[1][q]);
                    t[3][q] = _mm256_sub_ps(d[1][q], d[3][q]);
                }
                float* at = v + (ty * tw_ + tx) * ch;
                for (int r = 0; r < 4; ++r) {
                    const __m256 o[4] = {_mm256_sub_ps(t[r][0], t[r][2]), _mm256_add_ps(t[r][1], t[r][2]),
                                         _mm256_sub_ps(t[r][2], t[r][1]), _mm256_sub_ps(t[r][1], t[r][3])};
                    for (int q = 0; q < 4; ++q) _mm256_storeu_ps(at + (s[r] * 4 + s[q]) * rows * ch, o[q]);
                }
            }
    }
    // One output channel block of one image: A^T M A + bias (and ReLU) for every tile, M read
    // at positions (s[r], s[q]), A^T = [1 1 1 0; 0 1 -1 -1], the tile's right column and
    // bottom row dropped past the image's edge.
    __attribute__((target("avx2,fma"))) void output_tiles(const float* m, const float* bias, bool relu, float* y, int64_t rows,
                                                          int64_t ch, const int* s) const {
        const __m256 b = _mm256_loadu_ps(bias), zero = _mm256_setzero_ps();
        for (int64_t ty = 0; ty < th_; ++ty)
            for (int64_t tx = 0; tx < tw_; ++tx) {
                const float* at = m + (ty * tw_ + tx) * ch;
                __m256 e[4][4];
                for (int r = 0; r < 4; ++r)
                    for (int q = 0; q < 4; ++q) e[r][q] = _mm256_loadu_ps(at + (s[r] * 4 + s[q]) * rows * ch);
                __m256 t[2][4];
                for (int q = 0; q < 4; ++q) {
                    t[0][q] = _mm256_add_ps(_mm256_add_ps(e[0][q], e[1][q]), e[2][q]);
                    t[1][q] = _mm256_sub_ps(_mm256_sub_ps(e[1][q], e[2][q]), e[3][q]);
                }
                for (int r = 0; r < 2; ++r) {
                    const int64_t yy = 2 * ty + r;
                    if (yy >= h_) break;
                    __m256 o0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[r][0], t[r][1]), t[r][2]), b);
                    __m256 o1 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(t[r][1], t[r][2]), t[r][3]), b);
                    if (relu) o0 = _mm256_max_ps(o0, zero), o1 = _mm256_max_ps(o1, zero);
                    _mm256_storeu_ps(y + (yy * w_ + 2 * tx) * 8, o0);
                    if (2 * tx + 1 < w_) _mm256_storeu_ps(y + (yy * w_ + 2 * tx + 1) * 8, o1);
                }
            }
    }
    // One channel block of one image's output gradient: every 2x2 tile (zero past the edge)
    // to A dy A^T, A = [1 0; 1 1; 1 -1; 0 -1], stored like input_tiles' (plain positions).
    __attribute__((target("avx2,fma"))) void gradient_tiles(const float* g, float* e, int64_t rows) const {
        const __m256 zero = _mm256_setzero_ps();
        for (int64_t ty = 0; ty < th_; ++ty)
            for (int64_t tx = 0; tx < tw_; ++tx) {
                __m256 d[2][2];
                for (int r = 0; r < 2; ++r)
                    for (int q = 0; q < 2; ++q) {
                        const int64_t yy = 2 * ty + r, xx = 2 * tx + q;
                        d[r][q] = yy < h_ && xx < w_ ? _mm256_loadu_ps(g + (yy * w_ + xx) * 8) : zero;
                    }
                __m256 t[4][2];
                for (int q = 0; q < 2; ++q) {
                    t[0][q] = d[0][q];
                    t[1][q] = _mm256_add_ps(d[0][q], d[1][q]);
                    t[2][q] = _mm256_sub_ps(d[0][q], d[1][q]);
                    t[3][q] = _mm256_sub_ps(zero, d[1][q]);
                }
                float* at = e + (ty * tw_ + tx) * out_;
                for (int r = 0; r < 4; ++r) {
                    const __m256 o[4] = {t[r][0], _mm256_add_ps(t[r][0], t[r][1]), _mm256_sub_ps(t[r][0], t[r][1]),
                                         _mm256_sub_ps(zero, t[r][1])};
                    for (int q = 0; q < 4; ++q) _mm256_storeu_ps(at + (r * 4 + q) * rows * out_, o[q]);
                }
            }
    }
#else
    void gradient_tiles(const float*, float*, int64_t) const { fail("Winograd2x3 needs an x86 CPU"); }
    void input_tiles(const float*, float*, int64_t, int64_t, const int*) const { fail("Winograd2x3 needs an x86 CPU"); }
    void output_tiles(const float*, const float*, bool, float*, int64_t, int64_t, const int*) const {
        fail("Winograd2x3 needs an x86 CPU");
    }
#endif
};

}  // namespace tlcpu
