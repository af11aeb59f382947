// tlcpu: a named, owned parameter (or running statistic) of a layer.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

enum class ParamKind { weight, buffer };  // buffer: BN running statistics, never trained

struct Param {
    Tensor value;
    Tensor grad;  // allocated by training only
    ParamKind kind = ParamKind::weight;
    bool trainable = true;
    // Bumped whenever value changes, so a layer that keeps a reordered or folded copy of
    // it (a conv's blocked weights) knows to refresh that copy, and only then.
    uint64_t version = 1;

    Param() = default;
    Param(Shape s, float fill, ParamKind k = ParamKind::weight) : value(std::move(s), fill), kind(k) {}
    void touch() { ++version; }
};

// A layer's parameters are reached by calling visit(prefix, f) with f(name, Param&), names
// following torchvision's state_dict ("layer1.0.conv1.weight"), so weights files load by name.
// One visitor type for every walk: each layer's visit is compiled once, where a template
// visit was compiled once per lambda that walks it (about 25 walks of four ResNet-50 types
// were 2.1 of train_cpu's 4.7 MB of object code once the convs shared theirs). A call
// through it costs nothing next to the walk's string building.
using ParamVisitor = std::function<void(const std::string&, Param&)>;

}  // namespace tlcpu
