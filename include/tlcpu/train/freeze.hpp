// tlcpu: choosing what trains. Freezing is by parameter-name prefix ("conv1.", "bn1.",
// "layer1." ... "layer4.", "head_"), so groups follow torchvision's names; BatchNorm modes
// are set per layer.
#pragma once
#include <string>
#include <type_traits>
#include <vector>

#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

// The stem's parameters have no common prefix in torchvision's naming; "stem" names them.
inline bool in_group(const std::string& name, const std::string& group) {
    if (group == "stem") return name.starts_with("conv1.") || name.starts_with("bn1.");
    return name.starts_with(group);
}

// Sets trainable on every weight in the named groups; returns how many tensors changed.
template <class Model>
int set_trainable(Model& m, const std::vector<std::string>& groups, bool trainable) {
    int n = 0;
    m.visit("", [&](const std::string& name, Param& p) {
        if (p.kind != ParamKind::weight) return;
        for (const auto& g : groups)
            if (in_group(name, g)) {
                n += p.trainable != trainable;
                p.trainable = trainable;
                return;
            }
    });
    return n;
}
template <class Model>
void freeze_all(Model& m) {
    m.visit("", [](const std::string&, Param& p) { p.trainable = false; });
}
template <class Model>
int freeze(Model& m, const std::vector<std::string>& groups) { return set_trainable(m, groups, false); }
template <class Model>
int unfreeze(Model& m, const std::vector<std::string>& groups) { return set_trainable(m, groups, true); }

// Matches BatchNorm2d<C> and types derived from it (Named<"bn1", BatchNorm2d<C>>).
template <int C>
std::true_type is_batchnorm2d_probe(const BatchNorm2d<C>*);
inline std::false_type is_batchnorm2d_probe(...);
template <class T>
inline constexpr bool is_batchnorm2d = decltype(is_batchnorm2d_probe(std::declval<T*>()))::value;

// The mode of every BatchNorm2d in a model (or part of one, e.g. net.backbone).
template <class Model>
void set_bn_mode(Model& m, BNMode mode) {
    for_each_layer(m, [&](auto& l) {
        if constexpr (is_batchnorm2d<std::remove_cvref_t<decltype(l)>>) l.config.mode = mode;
    });
}

}  // namespace tlcpu
