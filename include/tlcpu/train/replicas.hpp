// tlcpu: data parallelism as the Trainer sees it. Several processes ("replicas") hold the
// same model; each trains on its slice of every global batch, and after each backward they
// average their gradients, so every replica takes the same optimizer step.
//
// This header holds no transport: dist/mpi.hpp implements Replicas with MPI (built with
// TLCPU_WITH_MPI). A Trainer without Replicas is one process, exactly as before.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tlcpu/core/fingerprint.hpp"
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
    // Around one backward. `params` is the model's every parameter in visit order; this
    // replica trains on `local` samples of a global batch of `global`, and its backward
    // produces its share of the gradient of the global batch's mean loss (the Trainer scales
    // the loss gradient by local / global). After end_backward the gradient of every
    // trainable weight is the sum of the shares: the gradient over the global batch. A
    // replica with local == 0 contributes zeros (its gradients are not read).
    virtual void begin_backward(const std::vector<Param*>& params, int64_t local, int64_t global) = 0;
    virtual void end_backward() = 0;
    // Ends every replica's process with the reason. A replica that fails while the others
    // wait in a collective would otherwise leave them waiting for ever; the Trainer calls
    // this for any exception out of fit or evaluate. May return only in a test's fake, and
    // the caller then rethrows.
    virtual void abort(const std::string& why) = 0;

    // True while this replica has no sample of the current global batch but runs a stand-in
    // one so that it still joins the synchronised BatchNorms' sums: they then contribute
    // zeros (set by the Trainer).
    bool idle = false;
};

// The part of one global batch that a replica trains on.
struct Shard {
    std::vector<int64_t> indices;  // samples, consecutive in the epoch's order; may be empty
    int64_t first = 0;             // place of indices[0] in the global batch (Dropout's offset)
    int64_t global = 0;            // samples in the global batch
    int64_t lead = 0;              // the global batch's first sample (an idle replica's stand-in)
};

// The part of every global batch that replica `rank` of `ranks` trains on: samples
// [len * rank / ranks, len * (rank + 1) / ranks) of a batch of len, for every batch the last
// short one included. Slices may differ in length by one, and are empty when the batch is
// shorter than the rank count; with each replica's gradient weighted by its slice's length
// (Replicas::begin_backward) the result is the gradient of the mean loss over the global
// batch, so every sample trains, whatever the number of processes.
inline std::vector<Shard> shard_batches(const std::vector<int64_t>& order, int batch, int rank, int ranks) {
    check(ranks >= 1 && rank >= 0 && rank < ranks, "shard_batches: rank " + std::to_string(rank) + " of " + std::to_string(ranks));
    check(batch > 0, "shard_batches: the batch must be positive");
    std::vector<Shard> out;
    const int64_t n = int64_t(order.size());
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t len = std::min<int64_t>(batch, n - b0);
        const int64_t lo = len * rank / ranks, hi = len * (rank + 1) / ranks;
        Shard s;
        s.indices.assign(order.begin() + b0 + lo, order.begin() + b0 + hi);
        s.first = lo;
        s.global = len;
        s.lead = order[size_t(b0)];
        out.push_back(std::move(s));
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
            l.sync = r ? SumAcross([r](std::span<double> v) {
                if (r->idle) std::fill(v.begin(), v.end(), 0.0);  // a stand-in sample: no share of the batch
                r->sum(v);
            })
                       : SumAcross();
    });
}

// Whether some BatchNorm of the model sums its statistics over the replicas: a replica
// without samples must then still run forward and backward (on a stand-in sample), since
// those sums are collectives every replica joins.
template <class Model>
bool has_synced_batchnorm(Model& m) {
    bool any = false;
    for_each_layer(m, [&](auto& l) {
        if constexpr (requires { l.sync; l.config.mode; }) any = any || bool(l.sync);
    });
    return any;
}

}  // namespace tlcpu
