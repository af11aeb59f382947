// tlcpu: int8 for the frozen part of a network (Backend::frozen_precision = dt::s8).
//
// A frozen bottleneck runs its four folded convolutions as oneDNN int8 primitives: s8
// weights with one scale per output channel, u8 activations (every one inside a block is a
// ReLU output, so unsigned uses all 8 bits), an s8 projection, s32 accumulation. The
// activations' scales are static: calibrate_int8 runs a few hundred training images through
// the network in f32 and keeps each activation's largest value (scale = max / 255). They
// travel with a trained model as metadata (int8_ranges), so evaluation runs the same bits.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tlcpu/models/resnet.hpp"

namespace tlcpu {

// f(block) for every bottleneck of a composition, in forward order.
template <class L, class F>
void for_each_block(L& l, F&& f) {
    if constexpr (requires { l.act_max; })
        f(l);
    else if constexpr (requires { l.with_block(0, f); })
        for (int i = 0; i < L::blocks; ++i) l.with_block(i, [&](auto& b) { for_each_block(b, f); });
    else if constexpr (requires { l.layers; })
        std::apply([&](auto&... c) { (for_each_block(c, f), ...); }, l.layers);
}

// Records the activation ranges of every frozen block over the given batches ([N, 3, H, W],
// preprocessed), forgetting earlier ones. Trainable blocks keep none: they stay in f32.
template <class Backbone>
void calibrate_int8(Backbone& net, const std::vector<Tensor>& batches) {
    check(!batches.empty(), "calibrate_int8: no calibration images");
    for_each_block(net, [](auto& b) { b.act_max = {}; });
    auto& be = Backend::get();
    // The pass runs once, so with direct convs: Winograd's f32 plans (weights transformed 4x
    // larger, scratchpad) would stay allocated after it, +150 MB at batch 32.
    struct Restore {
        Backend& be;
        bool winograd = be.winograd;
        ~Restore() { be.calibrating = false, be.winograd = winograd; }
    } restore{be};
    be.calibrating = true;
    be.winograd = false;
    for (const Tensor& x : batches) net.forward(view(x), Mode::inference);
    be.wait();
    // That pass's f32 folded weights are not used again by the int8 blocks (and a trainable
    // block remakes its own when evaluated). Peak RSS at batch 32 without them (bench):
    // phase2_b32_int8 964 -> 888 MB, phase1_b32_int8 472 -> 455.
    for_each_block(net, [](auto& b) { b.drop_folded(); });
}

// The ranges as text for a model file's metadata: one array of five per block.
template <class Backbone>
std::string int8_ranges(Backbone& net) {
    nlohmann::json j = nlohmann::json::array();
    for_each_block(net, [&](auto& b) { j.push_back(b.act_max); });
    return j.dump();
}

template <class Backbone>
void set_int8_ranges(Backbone& net, const std::string& text) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
        fail(std::string("int8_ranges: not JSON: ") + e.what());
    }
    size_t n = 0;
    for_each_block(net, [&](auto&) { ++n; });
    check(j.is_array() && j.size() == n, "int8_ranges: " + std::to_string(j.is_array() ? j.size() : 0) +
                                             " blocks' ranges for a network of " + std::to_string(n) + " blocks");
    size_t i = 0;
    for_each_block(net, [&](auto& b) {
        const auto& r = j[i++];
        check(r.is_array() && r.size() == b.act_max.size(), "int8_ranges: block " + std::to_string(i - 1) + " needs 5 numbers");
        for (size_t k = 0; k < b.act_max.size(); ++k) b.act_max[k] = r[k].get<float>();
    });
}

}  // namespace tlcpu
