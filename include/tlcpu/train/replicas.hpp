// tlcpu: data parallelism as the Trainer sees it. Several processes ("replicas") hold the
// same model; each trains on its slice of every global batch, and after each backward they
// average their gradients, so every replica takes the same optimizer step.
//
// This header holds no transport: dist/mpi.hpp implements Replicas with MPI (built with
// TLCPU_WITH_MPI). A Trainer without Replicas is one process, exactly as before.
#pragma once
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "tlcpu/core/param.hpp"
#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

class Replicas {
public:
    virtual ~Replicas() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    // Element-wise sum over the replicas, in place. Every replica receives the same bits.
    virtual void sum(std::span<double> v) = 0;
    // Rank 0's values, in place, on every replica.
    virtual void broadcast(std::span<float> v) = 0;
    // True on every replica when all passed the same value, false on every replica otherwise.
    virtual bool agree(uint64_t v) = 0;
    // Around one backward. `params` is the model's every parameter in visit order. After
    // end_backward the gradient of every trainable weight is the mean over the replicas.
    virtual void begin_backward(const std::vector<Param*>& params) = 0;
    virtual void end_backward() = 0;
};

// The part of a global batch that replica `rank` of `ranks` trains on: the rank-th of
// `ranks` equal consecutive slices. Equal slices make the mean of the replicas' gradients
// (each a mean over its slice) exactly the gradient of the mean loss over the global batch.
// A short last batch is sliced the same way; the (size % ranks) samples that do not divide
// evenly are left out of that epoch (none on one process; the shuffle picks other ones each
// epoch). Returns the slices of every global batch in order; a batch too short to give each
// replica a sample is left out whole.
inline std::vector<std::vector<int64_t>> shard_batches(const std::vector<int64_t>& order, int batch, int rank, int ranks) {
    check(ranks >= 1 && rank >= 0 && rank < ranks, "shard_batches: rank " + std::to_string(rank) + " of " + std::to_string(ranks));
    check(batch > 0 && batch % ranks == 0, "the global batch " + std::to_string(batch) + " does not split evenly over " +
                                               std::to_string(ranks) + " processes; pass a multiple of " + std::to_string(ranks));
    std::vector<std::vector<int64_t>> out;
    const int64_t n = int64_t(order.size());
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t local = std::min<int64_t>(batch, n - b0) / ranks;
        if (local == 0) break;
        const auto first = order.begin() + b0 + rank * local;
        out.emplace_back(first, first + local);
    }
    return out;
}

// Synchronised statistics for every BatchNorm of the model (they matter to those that train
// with batch statistics). Null replicas, or one alone: local statistics, which then are the
// global ones, computed exactly as without replicas.
template <class Model>
void sync_batchnorm(Model& m, Replicas* r) {
    if (r && r->size() == 1) r = nullptr;
    for_each_layer(m, [&](auto& l) {
        if constexpr (requires { l.sync; l.config.mode; })
            l.sync = r ? SumAcross([r](std::span<double> v) { r->sum(v); }) : SumAcross();
    });
}

// A digest of every parameter's bits, for checking that replicas hold the same model.
template <class Model>
uint64_t digest(Model& m) {
    uint64_t h = 0xcbf29ce484222325ull;
    m.visit("", [&](const std::string&, Param& p) {
        const float* v = p.value.data();
        for (int64_t i = 0; i < p.value.size(); ++i) {
            uint32_t w;
            std::memcpy(&w, v + i, 4);
            h = (h ^ w) * 0x100000001b3ull;
        }
    });
    return h;
}

}  // namespace tlcpu
