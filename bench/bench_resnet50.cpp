// bench_resnet50: images per second and peak RSS of ResNet-50 (torchvision layout, 224 px,
// random weights, 4 classes) for the cases the transfer-learning recipe runs, plus the
// oneDNN matmul ceilings of this machine. One case per process, so the peak RSS is the
// case's own; bench/compare.sh runs it next to bench/pytorch_reference.py.
//
//   bench_resnet50 --case infer_b32 [--reps 5] [--warmup 2]
//
// Prints one JSON line: case, img_s (median), min, max, every rep, gflop_per_img, peak_rss_mb.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <tlcpu/tlcpu.hpp>

using namespace tlcpu;
using Clock = std::chrono::steady_clock;

namespace {

using Net = Classifier<ResNet50<Layout::v1_5, 64, Depth::c5>, 4>;

// Multiply-accumulates of every conv, 224 px, torchvision ResNet-50: 4.09 GMAC forward.
struct ConvFlops {
    double all = 0, layer4 = 0;
};
ConvFlops conv_flops() {
    ConvFlops f;
    auto conv = [](double cin, double cout, double k, double out_side) { return 2 * cin * cout * k * k * out_side * out_side; };
    f.all += conv(3, 64, 7, 112);
    const int widths[4] = {64, 128, 256, 512}, blocks[4] = {3, 4, 6, 3}, sides[4] = {56, 28, 14, 7};
    int in = 64;
    for (int s = 0; s < 4; ++s) {
        double st = 0;
        const int w = widths[s], out = 4 * w, side = sides[s];
        for (int b = 0; b < blocks[s]; ++b) {
            // v1.5: the stride sits on the 3x3 conv, so conv1 of a strided block runs at the input side
            const int in_side = (b == 0 && s > 0) ? 2 * side : side;
            st += conv(b == 0 ? in : out, w, 1, in_side) + conv(w, w, 3, side) + conv(w, out, 1, side);
            if (b == 0) st += conv(in, out, 1, side);
        }
        in = out;
        f.all += st;
        if (s == 3) f.layer4 = st;
    }
    return f;
}

double peak_rss_mb() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_maxrss) / 1024.0;
}

void randomize(Net& net, uint64_t seed) {
    net.visit("", [&](const std::string& n, Param& p) {
        if (p.value.rank() > 1) init_he_normal(p.value, seed, hash_name(n));
        if (n.ends_with("running_var")) std::fill(p.value.begin(), p.value.end(), 1.f);
        p.touch();
    });
}

Tensor images(int n) {
    Tensor x({n, 3, 224, 224});
    for (int64_t i = 0; i < x.size(); ++i) x[i] = normal01(7, 0, uint64_t(i));
    return x;
}

// dnnl::matmul of two square matrices: this machine's practical GEMM peak, in GFLOP/s.
double matmul_gflops(dnnl::memory::data_type dt, int reps) {
    const int64_t n = 4096;
    auto& be = Backend::get();
    using tag = dnnl::memory::format_tag;
    // int8: u8 x s8 with s32 accumulation, what the int8 convolutions run
    const bool i8 = dt == dnnl::memory::data_type::u8;
    dnnl::memory::desc a({n, n}, dt, tag::ab), b({n, n}, i8 ? dnnl::memory::data_type::s8 : dt, tag::ab),
        c({n, n}, i8 ? dnnl::memory::data_type::s32 : dnnl::memory::data_type::f32, tag::ab);
    dnnl::matmul::primitive_desc pd({a, b, c}, be.engine());
    dnnl::matmul mm(pd);
    dnnl::memory A(a, be.engine()), B(b, be.engine()), C(c, be.engine());
    std::vector<double> t;
    for (int r = 0; r < reps + 1; ++r) {
        const auto t0 = Clock::now();
        mm.execute(be.stream(), {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
        be.wait();
        if (r > 0) t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return 2.0 * n * n * n / t[t.size() / 2] / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
    std::string which;
    int reps = 5, warmup = 2;
    std::string conv = "winograd";
    CLI::App app{"ResNet-50 throughput and memory per case"};
    app.add_option("--case", which, "infer_b1, infer_b32, phase1_b32, phase2_b32, full_b32 (each also with _bf16 or _int8: frozen part in bf16 or int8), matmul_f32, matmul_bf16, matmul_int8")->required();
    app.add_option("--reps", reps, "Timed repetitions")->capture_default_str();
    app.add_option("--warmup", warmup, "Untimed repetitions first")->capture_default_str();
    app.add_option("--conv", conv, "f32 3x3 stride-1 convolutions: winograd or direct (as PyTorch)")
        ->check(CLI::IsMember({"winograd", "direct"}))->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    Backend::get().winograd = conv == "winograd";

    nlohmann::json out{{"framework", "tlcpu"}, {"case", which}, {"threads", omp_get_max_threads()}, {"conv", conv},
                       {"winograd_kernel", Backend::get().has_winograd() ? "onednn" : Backend::get().own_winograd() ? "tlcpu" : "none"}};
    try {
        if (which.ends_with("_bf16")) Backend::get().require_bf16();
        if (which == "matmul_f32" || which == "matmul_bf16" || which == "matmul_int8") {
            const double g = matmul_gflops(which == "matmul_f32"    ? dnnl::memory::data_type::f32
                                           : which == "matmul_bf16" ? dnnl::memory::data_type::bf16
                                                                    : dnnl::memory::data_type::u8,
                                           reps);
            out["gflops"] = g;
            std::printf("%s\n", out.dump().c_str());
            return 0;
        }
        const ConvFlops cf = conv_flops();
        // *_bf16: every convolution in bf16 (frozen: folded; trainable: f32 master weights)
        // *_int8: the frozen blocks in int8 (stem bf16; f32 without AVX-512), calibrated on the benchmark's images
        dt frozen = dt::f32;
        if (which.ends_with("_bf16")) frozen = dt::bf16, which.resize(which.size() - 5);
        if (which.ends_with("_int8")) frozen = dt::s8, which.resize(which.size() - 5);
        const int batch = which == "infer_b1" ? 1 : 32;
        auto net = std::make_unique<Net>();
        randomize(*net, 1);
        Tensor x = images(batch);
        std::vector<int> y(static_cast<size_t>(batch));
        for (int i = 0; i < batch; ++i) y[size_t(i)] = i % 4;
        Adam adam(1e-4);
        std::function<void()> step;
        double gflop = cf.all;  // forward
        if (which == "infer_b1" || which == "infer_b32") {
            freeze_all(*net);
            step = [&] { net->forward(x, Mode::inference), Backend::get().wait(); };
        } else {
            freeze_all(net->backbone);
            if (which == "phase2_b32") {
                unfreeze(*net, {"layer4."});
                gflop += 2 * cf.layer4;  // backward data and weights of layer4 (its input gradient is not needed: less)
            } else if (which == "full_b32") {
                unfreeze(*net, {"stem", "layer1.", "layer2.", "layer3.", "layer4."});
                set_bn_mode(net->backbone, BNMode::batch);
                gflop += 2 * cf.all;
            } else {
                check(which == "phase1_b32", "unknown case '" + which + "'");
            }
            step = [&] {
                const Tensor& logits = net->forward(x, Mode::training);
                net->backward(softmax_cross_entropy(logits, y).grad);
                adam.step(*net);
            };
        }
        if (frozen == dt::s8) calibrate_int8(net->backbone, {x});
        Backend::get().frozen_precision = frozen;
        // bf16 is bf16 throughout, as PyTorch's autocast: the trainable convolutions too
        if (frozen == dt::bf16) Backend::get().train_precision = dt::bf16;
        for (int i = 0; i < warmup; ++i) step();
        std::vector<double> ips;
        for (int i = 0; i < reps; ++i) {
            const auto t0 = Clock::now();
            step();
            ips.push_back(batch / std::chrono::duration<double>(Clock::now() - t0).count());
        }
        std::vector<double> s = ips;
        std::sort(s.begin(), s.end());
        out["img_s"] = s[s.size() / 2];
        out["min"] = s.front();
        out["max"] = s.back();
        out["reps"] = ips;
        out["gflop_per_img"] = gflop / 1e9;
        out["peak_rss_mb"] = peak_rss_mb();
        out["scratchpad_mb"] = double(Backend::get().scratchpad_bytes()) / (1 << 20);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    std::printf("%s\n", out.dump().c_str());
    return 0;
}
