// tlcpu: data parallelism over MPI (built with -DTLCPU_WITH_MPI=ON; the rest of the library
// never includes this). Any MPI-3 library works: Open MPI, MPICH, Intel MPI, under mpirun
// or Slurm's srun.
//
//   dist::Environment env(argc, argv);   // MPI_Init_thread ... MPI_Finalize
//   dist::MPIReplicas world;              // MPI_COMM_WORLD
//   trainer.replicas = &world;            // FitOptions::batch stays the global batch
//   sync_batchnorm(model, &world);        // optional: BatchNorm statistics of the global batch
//
// Gradients are averaged with MPI_Iallreduce over flat buckets of about bucket_bytes, in
// backward order: a bucket starts as soon as backward has finished every parameter in it
// (reported through gradients_ready_hook), while the blocks below are still in backward.
#pragma once
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "tlcpu/backend/dnnl.hpp"
#include "tlcpu/core/error.hpp"
#include "tlcpu/train/replicas.hpp"

namespace tlcpu::dist {

namespace detail {
inline void ok(int rc, const char* what) {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail(std::string(what) + " failed: " + std::string(msg, size_t(len)));
}
}  // namespace detail

inline int world_rank() {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}
inline int world_size() {
    int n = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

// Ends every rank of the job with the reason on stderr. A rank that throws while the others
// wait in a collective would otherwise leave them waiting for ever.
[[noreturn]] inline void abort(std::string why, int code = 1, MPI_Comm comm = MPI_COMM_WORLD) {
    if (why.starts_with("tlcpu: ")) why.erase(0, 7);  // a tlcpu::Error's own prefix
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    std::fprintf(stderr, "tlcpu: rank %d of %d failed: %s; aborting every rank\n", rank, size, why.c_str());
    std::fflush(stderr);
    MPI_Abort(comm, code);
    std::_Exit(code);  // MPI_Abort does not return; this keeps the compiler sure of it
}

// MPI for the life of the object. FUNNELED: only the main thread calls MPI (OpenMP's
// workers and the data loader's thread never do). Errors come back as return codes, and
// detail::ok turns them into tlcpu errors with MPI's own text.
class Environment {
public:
    Environment(int& argc, char**& argv) {
        int provided = 0;
        detail::ok(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
        if (provided < MPI_THREAD_FUNNELED) abort("the MPI library does not support MPI_THREAD_FUNNELED");
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
    ~Environment() { MPI_Finalize(); }
    Environment(const Environment&) = delete;
    Environment& operator=(const Environment&) = delete;
    int rank() const { return world_rank(); }
    int size() const { return world_size(); }
};

class MPIReplicas : public Replicas {
public:
    struct Options {
        int64_t bucket_bytes = 8 << 20;  // per MPI_Iallreduce: big enough for bandwidth, small enough to overlap
        bool overlap = true;             // false: every bucket starts after backward (for measuring)
    };
    // What the gradient averaging cost, for bench/: seconds on the step's critical path
    // (packing, starting, waiting for and unpacking the allreduces), calls and bytes.
    struct Stats {
        double seconds = 0;
        int64_t steps = 0, calls = 0, bytes = 0;
        int64_t early = 0;  // of the calls, those started during backward (overlapping it)
    };

    explicit MPIReplicas(MPI_Comm comm = MPI_COMM_WORLD) : MPIReplicas(comm, Options{}) {}
    MPIReplicas(MPI_Comm comm, Options o) : comm_(comm), o_(o) {
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    }
    ~MPIReplicas() override { unhook(); }

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    Stats stats;

    void sum(std::span<double> v) override {
        detail::ok(MPI_Allreduce(MPI_IN_PLACE, v.data(), int(v.size()), MPI_DOUBLE, MPI_SUM, comm_), "MPI_Allreduce (sum)");
    }
    void broadcast(std::span<float> v) override {
        // MPI counts are int: a model past 2^31 floats goes in pieces.
        for (size_t at = 0; at < v.size(); at += size_t(1) << 30) {
            const int n = int(std::min(v.size() - at, size_t(1) << 30));
            detail::ok(MPI_Bcast(v.data() + at, n, MPI_FLOAT, 0, comm_), "MPI_Bcast (weights)");
        }
    }
    [[noreturn]] void abort(const std::string& why) override { tlcpu::dist::abort(why, 1, comm_); }
    bool agree(uint64_t v) override {
        uint64_t lo = v, hi = v;
        detail::ok(MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, comm_), "MPI_Allreduce (min)");
        detail::ok(MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, comm_), "MPI_Allreduce (max)");
        return lo == hi;
    }

    void begin_backward(const std::vector<Param*>& params, int64_t local, int64_t global) override {
        if (size_ == 1) return;
        check(local >= 0 && global > 0, "begin_backward: " + std::to_string(local) + " of " + std::to_string(global) + " samples");
        plan_buckets(params);
        next_ = 0;
        idle_ = local == 0;
        // Also on an idle replica running a stand-in sample: its buckets (zeros) must start
        // in the same order relative to the synchronised BatchNorms' sums as everyone's.
        if (o_.overlap) {
            gradients_ready_hook() = [this](Param& first) { ready(first); };
            gradients_ready_owner() = this;
        }
    }

    void end_backward() override {
        if (size_ == 1) return;
        unhook();
        const auto t0 = Clock::now();
        while (next_ < buckets_.size()) start(next_++);
        std::vector<MPI_Request> reqs;
        for (auto& b : buckets_) reqs.push_back(b.req);
        detail::ok(MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE), "MPI_Waitall (gradients)");
        for (auto& b : buckets_) {
            b.req = MPI_REQUEST_NULL;
            const float* v = b.flat.data();
            for (Param* p : b.params)
                for (float& g : grad_of(*p)) g = *v++;
        }
        stats.seconds += seconds_since(t0);
        ++stats.steps;
    }

private:
    using Clock = std::chrono::steady_clock;
    static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

    struct Bucket {
        std::vector<Param*> params;  // in backward order
        size_t first = 0;            // lowest visit index in it: ready once backward is past it
        std::vector<float> flat;
        MPI_Request req = MPI_REQUEST_NULL;
    };

    // Trainable weights in reverse visit order (the order backward produces them), cut into
    // buckets; rebuilt only when the set changes (a phase that unfreezes more).
    void plan_buckets(const std::vector<Param*>& params) {
        std::vector<std::pair<Param*, size_t>> key;
        for (size_t i = 0; i < params.size(); ++i)
            if (params[i]->kind == ParamKind::weight && params[i]->trainable) key.push_back({params[i], i});
        if (key == key_) return;
        key_ = key;
        index_.clear();
        for (size_t i = 0; i < params.size(); ++i) index_[params[i]] = i;
        buckets_.clear();
        int64_t bytes = o_.bucket_bytes;
        for (auto it = key.rbegin(); it != key.rend(); ++it) {
            if (bytes >= o_.bucket_bytes) buckets_.emplace_back(), bytes = 0;
            Bucket& b = buckets_.back();
            b.params.push_back(it->first);
            b.first = it->second;
            bytes += it->first->value.size() * int64_t(sizeof(float));
        }
        for (auto& b : buckets_) {
            int64_t n = 0;
            for (Param* p : b.params) n += p->value.size();
            check(n < (int64_t(1) << 31), "a gradient bucket of " + std::to_string(n) + " floats is too big for one MPI call");
            b.flat.resize(size_t(n));
        }
    }

    // Backward has finished `first` and every parameter after it in visit order.
    void ready(Param& first) {
        const auto t0 = Clock::now();
        auto it = index_.find(&first);
        if (it != index_.end())
            while (next_ < buckets_.size() && buckets_[next_].first >= it->second) start(next_++), ++stats.early;
        // Open MPI moves a nonblocking collective along only inside MPI calls.
        for (size_t i = 0; i < next_; ++i) {
            int done = 0;
            if (buckets_[i].req != MPI_REQUEST_NULL) MPI_Test(&buckets_[i].req, &done, MPI_STATUS_IGNORE);
        }
        stats.seconds += seconds_since(t0);
    }

    void start(size_t i) {
        Backend::get().wait();  // the gradients are written
        Bucket& b = buckets_[i];
        float* v = b.flat.data();
        if (idle_)
            std::fill(b.flat.begin(), b.flat.end(), 0.f);
        else
            for (Param* p : b.params) {
                check(p->grad.shape() == p->value.shape(), "data parallelism: a trainable weight has no gradient after backward");
                v = std::copy(p->grad.begin(), p->grad.end(), v);
            }
        detail::ok(MPI_Iallreduce(MPI_IN_PLACE, b.flat.data(), int(b.flat.size()), MPI_FLOAT, MPI_SUM, comm_, &b.req),
                   "MPI_Iallreduce (gradients)");
        ++stats.calls;
        stats.bytes += int64_t(b.flat.size() * sizeof(float));
    }

    // The hook is one global: clear it only if this object installed it.
    void unhook() {
        if (gradients_ready_owner() != this) return;
        gradients_ready_hook() = nullptr;
        gradients_ready_owner() = nullptr;
    }

    MPI_Comm comm_;
    Options o_;
    bool idle_ = false;  // no sample of this global batch: contributes zeros
    int rank_ = 0, size_ = 1;
    std::vector<std::pair<Param*, size_t>> key_;
    std::unordered_map<const Param*, size_t> index_;
    std::vector<Bucket> buckets_;
    size_t next_ = 0;
};

}  // namespace tlcpu::dist
