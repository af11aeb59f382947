// tlcpu: summary(), Keras' model.summary() for a composed network. One row per layer (or per
// block, at a smaller depth): name, type, output shape for an input shape, parameter count,
// trainable or frozen, and a BatchNorm's mode; then total, trainable and non-trainable
// parameters, and the activation memory of one batch.
//
// The walk reads the composition's structure from its members (a Sequential's tuple, a
// stage's blocks, a block's convolutions), so no layer carries code for it, and computes
// shapes from the layer types alone: nothing runs.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "tlcpu/models/classifier.hpp"
#include "tlcpu/models/resnet.hpp"

namespace tlcpu {

struct SummaryRow {
    std::string name, type;
    int depth = 0;     // 0: the top composite's children are 1, their children 2, ...
    bool leaf = true;  // a layer, or a composite (block, stage) summed over its layers
    Shape out;
    int64_t params = 0, trainable = 0;  // Keras' counting: BN running statistics are non-trainable params
    int64_t weights = 0;                // params that are weights (not running statistics)
    std::string bn;                     // "running stats" or "batch stats" for BatchNorm layers
};

namespace detail::summary {

template <int In, int Out, int K, int S, int P, bool B>
Shape out_shape(const Conv2d<In, Out, K, S, P, B>&, const Shape& x) {
    return {x[0], Out, conv_out(x[2], K, S, P), conv_out(x[3], K, S, P)};
}
template <int K, int S, int P, bool C>
Shape out_shape(const MaxPool2d<K, S, P, C>&, const Shape& x) {
    return {x[0], x[1], pool_out(x[2], K, S, P, C), pool_out(x[3], K, S, P, C)};
}
inline Shape out_shape(const GlobalAvgPool&, const Shape& x) { return {x[0], x[1]}; }
template <int In, int O>
Shape out_shape(const Dense<In, O>& d, const Shape& x) { return {x[0], d.Out}; }
template <class L>
Shape out_shape(const L&, const Shape& x) { return x; }  // BatchNorm, ReLU, Dropout

template <int In, int Out, int K, int S, int P, bool B>
std::string type_of(const Conv2d<In, Out, K, S, P, B>&) {
    return "Conv2d " + std::to_string(K) + "x" + std::to_string(K) + "/" + std::to_string(S);
}
template <int K, int S, int P, bool C>
std::string type_of(const MaxPool2d<K, S, P, C>&) {
    return "MaxPool2d " + std::to_string(K) + "x" + std::to_string(K) + "/" + std::to_string(S);
}
template <int C> std::string type_of(const BatchNorm2d<C>& b) { return b.relu ? "BatchNorm2d + ReLU" : "BatchNorm2d"; }
template <int C> std::string type_of(const BatchNorm1d<C>&) { return "BatchNorm1d"; }
template <int In, int O> std::string type_of(const Dense<In, O>&) { return "Dense"; }
inline std::string type_of(const ReLU&) { return "ReLU"; }
inline std::string type_of(const GlobalAvgPool&) { return "GlobalAvgPool"; }
inline std::string type_of(const Dropout& d) { return "Dropout " + std::to_string(d.p).substr(0, 4); }

template <class L>
std::string bn_of(const L& l) {
    if constexpr (requires { l.config.mode; })
        return l.config.mode == BNMode::batch ? "batch stats" : "running stats";
    else
        return "";
}

// A Named<"conv1", Conv2d<...>> is its layer: the overloads above must see the layer type.
template <fixed_string N, class L>
L& bare(Named<N, L>& l) { return l; }
template <class L>
L& bare(L& l) { return l; }

struct Walk {
    std::vector<SummaryRow> rows;

    template <class L>
    Shape leaf(L& l, const std::string& name, int depth, const Shape& in, const std::string& type = "") {
        auto& b = bare(l);
        SummaryRow r{name.empty() ? type_of(b) : name, type.empty() ? type_of(b) : type, depth, true, out_shape(b, in),
                     0, 0, 0, bn_of(b)};
        l.visit("", [&](const std::string&, Param& p) {
            r.params += p.value.size();
            if (p.kind == ParamKind::weight) r.weights += p.value.size();
            if (p.kind == ParamKind::weight && p.trainable) r.trainable += p.value.size();
        });
        rows.push_back(r);
        return r.out;
    }
    // A composite's row comes before its layers' and sums them once they are walked.
    template <class Body>
    Shape group(const std::string& name, const std::string& type, int depth, Body&& body) {
        const size_t at = rows.size();
        rows.push_back({name, type, depth, false, {}, 0, 0, 0, ""});
        const Shape out = body();
        for (size_t i = at + 1; i < rows.size(); ++i)
            if (rows[i].leaf)
                rows[at].params += rows[i].params, rows[at].trainable += rows[i].trainable,
                    rows[at].weights += rows[i].weights;
        rows[at].out = out;
        return out;
    }

    template <int In, int W, int Out, int S, Layout L>
    Shape node(Bottleneck<In, W, Out, S, L>& b, const std::string& name, int depth, const Shape& x) {
        return group(name, "Bottleneck", depth, [&] {
            const std::string p = name + ".";
            Shape h = leaf(b.conv1, p + "conv1", depth + 1, x);
            h = leaf(b.bn1, p + "bn1", depth + 1, h);
            h = leaf(b.conv2, p + "conv2", depth + 1, h);
            h = leaf(b.bn2, p + "bn2", depth + 1, h);
            h = leaf(b.conv3, p + "conv3", depth + 1, h);
            h = leaf(b.bn3, p + "bn3", depth + 1, h);
            if constexpr (Bottleneck<In, W, Out, S, L>::has_projection) {
                const Shape s = leaf(b.down_conv, p + "downsample.0", depth + 1, x);  // from the block's input
                leaf(b.down_bn, p + "downsample.1", depth + 1, s);
            }
            return leaf(b.relu3, p + "relu3", depth + 1, h, "ReLU (main + shortcut)");
        });
    }
    template <int In, int W, int N, int S, Layout L>
    Shape node(Stage<In, W, N, S, L>& st, const std::string& name, int depth, const Shape& x) {
        return group(name, "Stage (" + std::to_string(N) + " blocks)", depth, [&] {
            Shape h = x;
            for (int i = 0; i < N; ++i)
                st.with_block(i, [&](auto& b) { h = node(b, name + "." + std::to_string(i), depth + 1, h); });
            return h;
        });
    }
    template <int C, Layout L>
    Shape node(Stem<C, L>& s, const std::string&, int depth, const Shape& x) {
        return group("stem", "Stem", depth, [&] {
            Shape h = leaf(s.template get<0>(), "conv1", depth + 1, x);
            h = leaf(s.template get<1>(), "bn1", depth + 1, h);
            return leaf(s.template get<2>(), "maxpool", depth + 1, h);
        });
    }
    template <class... Ls>
    Shape node(Sequential<Ls...>& s, const std::string& name, int depth, const Shape& x) {
        Shape h = x;
        std::apply([&](auto&... l) { ((h = child(l, name, depth, h)), ...); }, s.layers);
        return h;
    }
    template <class B, int K>
    Shape node(Classifier<B, K>& c, const std::string&, int depth, const Shape& x) {
        const Shape f = node(c.backbone, "", depth, x);
        return group("head", "Head", depth + 1, [&] {
            Shape h = leaf(c.head.pool, "head_pool", depth + 2, f);
            h = leaf(c.head.bn, "head_bn", depth + 2, h);
            h = leaf(c.head.drop, "head_dropout", depth + 2, h);
            return leaf(c.head.fc, "head_fc", depth + 2, h);
        });
    }
    // A Sequential's child: its torchvision name when it has one (Named<"layer1", ...>).
    template <class L>
    Shape child(L& l, const std::string& prefix, int depth, const Shape& x) {
        std::string name = child_prefix<L>(prefix.empty() ? "" : prefix + ".");
        if (!name.empty() && name.back() == '.') name.pop_back();
        if constexpr (requires { node(l, name, depth + 1, x); })
            return node(l, name, depth + 1, x);
        else
            return leaf(l, name, depth + 1, x);
    }
};

inline std::string thousands(int64_t v) {
    const std::string d = std::to_string(v);
    std::string s;
    for (size_t i = 0; i < d.size(); ++i) {
        if (i > 0 && (d.size() - i) % 3 == 0) s += ',';
        s += d[i];
    }
    return s;
}

}  // namespace detail::summary

// Every layer and composite of `net` for input shape `in` ([N, C, H, W]; N sets the batch of
// the activation figure), in forward order.
template <class Net>
std::vector<SummaryRow> summary_rows(Net& net, const Shape& in) {
    detail::summary::Walk w;
    w.node(net, "", 0, in);
    return w.rows;
}

// The table, at `depth` (1: stem, stages and head; 2: blocks; 3: every layer), and the totals.
// Activations: every layer's output at this batch in f32, what a step that trains every
// layer keeps for backward (a frozen layer keeps none).
template <class Net>
std::string summary(Net& net, const Shape& in, int depth = 2) {
    using detail::summary::thousands;
    const auto rows = summary_rows(net, in);
    std::string s;
    char line[256];
    std::snprintf(line, sizeof line, "%-34s %-22s %-20s %12s  %-10s %s\n", "Layer", "Type", "Output shape", "Params",
                  "Trainable", "BatchNorm");
    s += line;
    s += std::string(112, '-') + "\n";
    int64_t total = 0, trainable = 0, act = 0;
    for (const auto& r : rows) {
        if (r.leaf) total += r.params, trainable += r.trainable, act += numel(r.out);
        if (!(r.depth == depth || (r.leaf && r.depth < depth))) continue;
        const char* t = r.weights == 0 ? "" : r.trainable == 0 ? "frozen" : r.trainable == r.weights ? "trainable" : "partly";
        std::snprintf(line, sizeof line, "%-34s %-22s %-20s %12s  %-10s %s\n", r.name.c_str(), r.type.c_str(),
                      to_string(r.out).c_str(), thousands(r.params).c_str(), t, r.bn.c_str());
        s += line;
    }
    s += std::string(112, '-') + "\n";
    s += "Total params: " + thousands(total) + "\n";
    s += "Trainable params: " + thousands(trainable) + "\n";
    s += "Non-trainable params: " + thousands(total - trainable) + " (frozen weights and BatchNorm running statistics)\n";
    std::snprintf(line, sizeof line, "Activations at batch %lld: %.1f MB (every layer's output, f32)\n",
                  static_cast<long long>(in[0]), double(act) * 4 / 1e6);
    s += line;
    return s;
}

}  // namespace tlcpu
