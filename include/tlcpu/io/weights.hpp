// tlcpu: loading a safetensors state_dict into a composed model by torchvision names.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "tlcpu/core/param.hpp"
#include "tlcpu/core/random.hpp"
#include "tlcpu/io/image.hpp"
#include "tlcpu/io/safetensors.hpp"
#include "tlcpu/models/resnet.hpp"

namespace tlcpu {

struct LoadOptions {
    // Name prefixes that may be absent from the file and are then freshly initialised
    // (He normal for conv and dense weights, identity BatchNorm, zero biases), e.g.
    // {"layer4.", "fc."} for the partial caffe weights. Anything else missing is an error.
    std::vector<std::string> init_missing;
    uint64_t seed = 0;
    // Prepended to every model name when looking it up in the file ("module.", "backbone.",
    // "param." in the fixtures). File tensors outside the prefix are not reported.
    std::string prefix;
};

struct LoadReport {
    std::vector<std::string> loaded, initialised, unexpected, folded;

    std::string summary() const {
        auto list = [](const std::vector<std::string>& v) {
            std::string s;
            for (size_t i = 0; i < v.size() && i < 12; ++i) s += (i ? ", " : "") + v[i];
            if (v.size() > 12) s += ", ... (" + std::to_string(v.size()) + " in all)";
            return s;
        };
        std::string s = std::to_string(loaded.size()) + " tensors loaded";
        if (!initialised.empty()) s += "; " + std::to_string(initialised.size()) + " freshly initialised: " + list(initialised);
        if (!folded.empty()) s += "; conv biases folded into BatchNorm: " + list(folded);
        if (!unexpected.empty()) s += "; " + std::to_string(unexpected.size()) + " unexpected, ignored: " + list(unexpected);
        return s;
    }
};

inline bool has_prefix(const std::string& s, const std::vector<std::string>& prefixes) {
    for (const auto& p : prefixes)
        if (s.starts_with(p)) return true;
    return false;
}

// The BatchNorm that follows a conv in torchvision's naming, where a conv bias can go.
inline std::string bn_after_conv(const std::string& conv) {
    auto dot = conv.rfind('.');
    std::string stem = dot == std::string::npos ? "" : conv.substr(0, dot + 1);
    std::string leaf = conv.substr(stem.size());
    if (leaf.starts_with("conv")) return stem + "bn" + leaf.substr(4);
    if (leaf == "0" && stem.ends_with("downsample.")) return stem.substr(0, stem.size()) + "1";
    return "";
}

// What a weights file says about itself. Our own files carry "layout" ("v1" / "v1.5") and
// "preprocessing" ("caffe" / "torch", optionally "caffe B=... G=... R=..." means);
// others are recognised from their free-text description (caffe / Keras -> v1 and caffe
// preprocessing; torchvision / timm -> v1.5 and torch). Unknown is an error asking for a flag.
inline Layout layout_of(const io::SafeTensors& f) {
    const std::string l = f.meta("layout"), arch = f.meta("architecture") + " " + f.meta("source");
    if (l == "v1") return Layout::v1;
    if (l == "v1.5") return Layout::v1_5;
    if (!l.empty()) fail(f.path() + ": metadata layout '" + l + "' is neither v1 nor v1.5");
    if (arch.find("caffe") != std::string::npos || arch.find("Keras") != std::string::npos) return Layout::v1;
    if (arch.find("torchvision") != std::string::npos || arch.find("timm") != std::string::npos) return Layout::v1_5;
    fail(f.path() + ": the metadata does not say which stride layout these weights use; pass it explicitly (v1 or v1.5)");
}

struct Preprocessing {
    Preprocess mode = Preprocess::caffe;
    std::array<float, 3> caffe_mean_bgr = keras_caffe_mean_bgr;
};

inline Preprocessing preprocessing_of(const io::SafeTensors& f) {
    const std::string s = f.meta("preprocessing");
    Preprocessing p;
    if (s.starts_with("torch")) p.mode = Preprocess::torch;
    else if (s.starts_with("caffe") || s.find("BGR") != std::string::npos) p.mode = Preprocess::caffe;
    else if (layout_of(f) == Layout::v1_5) p.mode = Preprocess::torch;
    const char* keys[3] = {"B=", "G=", "R="};
    for (int c = 0; c < 3; ++c)
        if (auto at = s.find(keys[c]); at != std::string::npos) p.caffe_mean_bgr[size_t(c)] = std::stof(s.substr(at + 2));
    return p;
}

template <class Model>
LoadReport load_weights(Model& model, const io::SafeTensors& file, const LoadOptions& opt = {}) {
    std::map<std::string, Param*> params;
    std::vector<std::string> order;
    model.visit(opt.prefix, [&](const std::string& n, Param& p) {
        params[n] = &p;
        order.push_back(n);
    });

    LoadReport r;
    std::vector<std::string> missing, mismatched;
    for (const auto& n : order) {
        Param& p = *params[n];
        if (!file.contains(n)) {
            (has_prefix(n.substr(opt.prefix.size()), opt.init_missing) ? r.initialised : missing).push_back(n);
            continue;
        }
        const Shape& fs = file.info(n).shape;
        if (fs != p.value.shape()) mismatched.push_back(n + " (file " + to_string(fs) + ", model " + to_string(p.value.shape()) + ")");
    }
    // Keras-style convs carry a bias; before an inference-mode BatchNorm it is exactly a
    // shift of the running mean (and in batch mode it cancels), so fold it there.
    std::vector<std::pair<std::string, std::string>> folds;
    for (const auto& n : file.names()) {
        if (params.count(n) || !n.starts_with(opt.prefix)) continue;
        const bool is_bias = n.ends_with(".bias");
        const std::string conv = is_bias ? n.substr(0, n.size() - 5) : "";
        const std::string bn = is_bias ? bn_after_conv(conv) : "";
        if (!bn.empty() && params.count(conv + ".weight") && params.count(bn + ".running_mean"))
            folds.push_back({n, bn + ".running_mean"});
        else
            r.unexpected.push_back(n);
    }
    auto fail_with = [&](const std::string& what, const std::vector<std::string>& names, const std::string& hint) {
        std::string msg = file.path() + ": " + std::to_string(names.size()) + " " + what + ":";
        for (const auto& n : names) msg += "\n  " + n;
        fail(msg + hint);
    };
    if (!mismatched.empty()) fail_with("tensors have the wrong shape for this model", mismatched, "");
    if (!missing.empty())
        fail_with("tensors the model needs are missing from the file", missing,
                  "\n(name the prefixes that may be freshly initialised, e.g. init_missing = {\"layer4.\", \"fc.\"})");

    for (const auto& n : order) {
        Param& p = *params[n];
        if (file.contains(n)) {
            p.value = file.get(n);
            r.loaded.push_back(n);
        } else if (p.value.rank() > 1) {
            init_he_normal(p.value, opt.seed, hash_name(n.substr(opt.prefix.size())));
        } else {
            p.value.fill(n.ends_with(".weight") || n.ends_with(".running_var") ? 1.f : 0.f);
        }
        p.touch();
    }
    for (const auto& [bias, mean] : folds) {
        Tensor b = file.get(bias);
        Param& m = *params[mean];
        check(b.shape() == m.value.shape(), file.path() + ": tensor '" + bias + "' has shape " + to_string(b.shape()) +
                                                ", but '" + mean + "' has " + to_string(m.value.shape()));
        for (int64_t i = 0; i < b.size(); ++i) m.value[i] -= b[i];
        m.touch();
        r.folded.push_back(bias);
    }
    return r;
}

}  // namespace tlcpu
