// Shared by the apps: building the model a best.safetensors describes, and predicting over
// a source of images.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include <tlcpu/data/loader.hpp>
#include <tlcpu/tlcpu.hpp>

namespace tlcpu::app {

inline std::vector<std::string> split_list(const std::string& s, char sep = ',') {
    std::vector<std::string> out;
    for (size_t a = 0, b; a <= s.size(); a = b + 1) {
        b = s.find(sep, a);
        if (b == std::string::npos) b = s.size();
        if (b > a) out.push_back(s.substr(a, b - a));
    }
    return out;
}

// --frozen-precision's words as oneDNN types (int8: s8 weights, u8 activations).
inline dt precision_of(const std::string& s) {
    if (s == "f32") return dt::f32;
    if (s == "bf16") {
        Backend::get().require_bf16();  // before any image is read
        return dt::bf16;
    }
    if (s == "int8") return dt::s8;
    fail("unknown frozen precision '" + s + "' (f32, bf16 or int8)");
}

// The bits of a model's int8 weights as trained: 7 or 8, 0 when not recorded (a model from
// before they were, or one without int8 blocks). train_cpu writes only 7 or 8, so anything
// else is a damaged file, refused by name.
inline int int8_bits_of(const io::SafeTensors& file) {
    const std::string bits = file.meta("int8_weight_bits", "-");
    check(bits == "-" || bits == "7" || bits == "8", file.path() + ": int8_weight_bits '" + bits + "' (7 or 8)");
    return bits == "-" ? 0 : bits[0] - '0';
}

// Builds the network a train_cpu model file describes (layout, depth, classes, head eps),
// loads every tensor of it and calls f(net). Layout and depth are template parameters, so
// each of the four combinations is its own type.
template <class F>
void with_model(const io::SafeTensors& file, F&& f) {
    const auto classes = split_list(file.meta("classes"));
    check(classes.size() >= 2, file.path() + ": no class names in the metadata (not a train_cpu model?)");
    // Evaluated as trained: a model whose frozen layers ran in bf16 (int8) runs them so again,
    // int8 with the activation scales calibrated in training.
    Backend::get().frozen_precision = precision_of(file.meta("frozen_precision", "f32"));
    Backend::get().int8_weight_bits = 0;  // this CPU's, unless the file says 7 (below)
    // and with the conv algorithm it trained with (models from before --conv: direct)
    const std::string conv = file.meta("conv", "direct");
    check(conv == "winograd" || conv == "direct", file.path() + ": unknown conv algorithm '" + conv + "' in the metadata");
    Backend::get().winograd = conv == "winograd";
    // Other kernels round otherwise: metrics.json then need not hold to the last digit.
    if (const std::string isa = file.meta("cpu_isa"); !isa.empty() && isa != Backend::cpu_isa())
        std::fprintf(stderr, "note: %s trained on oneDNN's %s kernels; this CPU runs its %s ones, so results can differ "
                             "slightly from training's\n", file.path().c_str(), isa.c_str(), Backend::cpu_isa().c_str());
    auto build = [&]<Layout L, Depth D>() {
        auto net = std::make_unique<Classifier<ResNet50<L, 64, D>, dynamic>>(int(classes.size()));
        net->head.bn.config.eps = std::stof(file.meta("head_bn_eps", "1e-3"));
        load_weights(*net, file);  // every tensor must be there: this is a trained model
        if (Backend::get().frozen_precision == dt::s8) {
            check(!file.meta("int8_ranges").empty(), file.path() + ": frozen_precision int8 without int8_ranges in the metadata");
            try {
                set_int8_ranges(net->backbone, file.meta("int8_ranges"));
            } catch (const Error& e) {
                fail(file.path() + ": " + std::string(e.what()).substr(std::string_view("tlcpu: ").size()));
            }
            // the weights' bits as trained (models from before this was recorded: this CPU's)
            const int bits = int8_bits_of(file);
            Backend::get().int8_weight_bits = bits == 7 ? 7 : 0;
            if (bits == 8 && !Backend::get().has_vnni())
                std::fprintf(stderr,
                             "note: %s trained its int8 blocks with 8-bit weights (a CPU with VNNI); this CPU has no "
                             "VNNI, so they run with 7-bit weights and results can differ slightly from training's\n",
                             file.path().c_str());
        }
        if (file.meta("trained", "-") != "-") {  // frozen layers (bf16 when trained so) as in training
            freeze_all(net->backbone);
            unfreeze(*net, split_list(file.meta("trained")));
        }
        f(*net);
    };
    const bool v1 = layout_of(file) == Layout::v1, c5 = file.meta("depth") == "c5";
    if (v1)
        c5 ? build.template operator()<Layout::v1, Depth::c5>() : build.template operator()<Layout::v1, Depth::c4>();
    else
        c5 ? build.template operator()<Layout::v1_5, Depth::c5>() : build.template operator()<Layout::v1_5, Depth::c4>();
}

struct Predictions {
    std::vector<int> truth, predicted;
    std::vector<std::vector<float>> probs;
};

template <class Net>
Predictions predict(Net& net, BatchSource& src, int batch) {
    Predictions p;
    for_each_batch(src, batch, [&](int64_t, const Tensor& x, const std::vector<int>& y) {
        Tensor prob = softmax(net.forward(x, Mode::inference));
        const int64_t k = prob.dim(1);
        for (size_t i = 0; i < y.size(); ++i) {
            const float* q = prob.data() + int64_t(i) * k;
            p.truth.push_back(y[i]);
            p.predicted.push_back(int(std::max_element(q, q + k) - q));
            p.probs.emplace_back(q, q + k);
        }
    });
    return p;
}

}  // namespace tlcpu::app
