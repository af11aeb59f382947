// bench_mpi: data-parallel training steps of ResNet-50 (224 px, random weights, 4 classes)
// under mpirun, and what the gradient averaging costs in them. bench/bench_mpi.sh runs it
// as 1 rank x 2 threads and 2 ranks x 1 thread on this machine.
//
//   mpirun -np R bench_mpi --case phase2_c4 [--batch 32] [--reps 5] [--warmup 2] [--no-overlap]
//
// Cases: phase2_c4 (the recipe's phase 2: ResNet-50 through layer3, layer3.5 and the head
// train), phase2 (full ResNet-50, layer4 and the head train), full (everything trains, BN
// on batch statistics). --batch is the global batch; each rank computes batch / R of it.
// Rank 0 prints one JSON line: img_s (median over reps, global images per second), the
// median step and the median time the step spent on gradient averaging off the overlap
// (packing, starting, waiting, unpacking), its share of the step, a standalone blocking
// MPI_Allreduce of the same bytes, and the trainable parameter count.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <tlcpu/dist/mpi.hpp>
#include <tlcpu/tlcpu.hpp>

using namespace tlcpu;
using Clock = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

template <class Net>
void randomize(Net& net, uint64_t seed) {
    net.visit("", [&](const std::string& n, Param& p) {
        if (p.value.rank() > 1) init_he_normal(p.value, seed, hash_name(n));
        if (n.ends_with("running_var")) std::fill(p.value.begin(), p.value.end(), 1.f);
        p.touch();
    });
}

template <class Net>
nlohmann::json bench(Net& net, const std::string& which, int batch, int reps, int warmup, bool overlap, bool sync_bn) {
    dist::MPIReplicas::Options ro;
    ro.overlap = overlap;
    dist::MPIReplicas world(MPI_COMM_WORLD, ro);
    const int ranks = world.size(), rank = world.rank();
    // Equal slices keep the benchmark simple (the Trainer takes any batch).
    check(batch % ranks == 0, "--batch " + std::to_string(batch) + " does not split over " + std::to_string(ranks) + " ranks");
    const int local = batch / ranks;
    randomize(net, 1);
    freeze_all(net.backbone);
    if (which == "phase2_c4") {
        unfreeze(net, {"layer3.5."});
    } else if (which == "phase2") {
        unfreeze(net, {"layer4."});
    } else {
        unfreeze(net, {"stem", "layer1.", "layer2.", "layer3.", "layer4."});
        set_bn_mode(net.backbone, BNMode::batch);
    }
    unfreeze(net, {"head_"});
    if (sync_bn) sync_batchnorm(net, &world);
    int64_t trainable = 0;
    std::vector<Param*> params;
    net.visit("", [&](const std::string&, Param& p) {
        params.push_back(&p);
        if (p.kind == ParamKind::weight && p.trainable) trainable += p.value.size();
    });

    Tensor x({local, 3, 224, 224});
    for (int64_t i = 0; i < x.size(); ++i) x[i] = normal01(7, uint64_t(rank), uint64_t(i));
    std::vector<int> y(static_cast<size_t>(local));
    for (int i = 0; i < local; ++i) y[size_t(i)] = (rank * local + i) % 4;
    Adam adam(1e-4);
    std::vector<double> step_s, comm_s;
    for (int i = 0; i < warmup + reps; ++i) {
        MPI_Barrier(MPI_COMM_WORLD);  // steps start together, so rank 0's clock times the slowest rank
        const double before = world.stats.seconds;
        const auto t0 = Clock::now();
        const Tensor& logits = net.forward(x, Mode::training);
        auto r = softmax_cross_entropy(logits, y);
        double s[3] = {r.loss * local, double(r.correct), double(local)};
        world.sum(s);  // what the Trainer sums per step
        for (float& g : r.grad) g /= float(ranks);  // this rank's share of the global mean, as the Trainer does
        world.begin_backward(params, local, batch);
        net.backward(r.grad);
        world.end_backward();
        adam.step(net);
        if (i < warmup) continue;
        step_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        comm_s.push_back(world.stats.seconds - before);
    }
    // The same bytes through one blocking MPI_Allreduce, nothing else running: the
    // communication cost alone, for the scaling model.
    std::vector<float> flat(static_cast<size_t>(trainable), 1.f);
    std::vector<double> alone;
    for (int i = 0; i < reps + 1; ++i) {
        MPI_Barrier(MPI_COMM_WORLD);
        const auto t0 = Clock::now();
        MPI_Allreduce(MPI_IN_PLACE, flat.data(), int(flat.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (i > 0) alone.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    const double step = median(step_s), comm = median(comm_s);
    std::vector<double> ips;
    for (double t : step_s) ips.push_back(batch / t);
    nlohmann::json out{{"case", which},
                       {"ranks", ranks},
                       {"threads", omp_get_max_threads()},
                       {"batch", batch},
                       {"overlap", overlap},
                       {"sync_bn", sync_bn},
                       {"img_s", median(ips)},
                       {"img_s_min", *std::min_element(ips.begin(), ips.end())},
                       {"img_s_max", *std::max_element(ips.begin(), ips.end())},
                       {"step_s", step},
                       {"comm_s", comm},
                       {"comm_share", step > 0 ? comm / step : 0},
                       {"allreduce_alone_s", median(alone)},
                       {"trainable_params", trainable},
                       {"grad_bytes", trainable * 4},
                       {"calls_per_step", world.stats.steps ? world.stats.calls / world.stats.steps : 0}};
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    dist::Environment env(argc, argv);
    std::string which;
    int batch = 32, reps = 5, warmup = 2;
    bool no_overlap = false, sync_bn = false;
    CLI::App app{"Data-parallel ResNet-50 training steps under MPI"};
    app.add_option("--case", which, "phase2_c4, phase2, full")->required()->check(CLI::IsMember({"phase2_c4", "phase2", "full"}));
    app.add_option("--batch", batch, "Global batch, split evenly over the ranks")->capture_default_str();
    app.add_option("--reps", reps, "Timed steps")->capture_default_str();
    app.add_option("--warmup", warmup, "Untimed steps first")->capture_default_str();
    app.add_flag("--no-overlap", no_overlap, "Start every gradient bucket after backward, instead of during it");
    app.add_flag("--sync-bn", sync_bn, "Synchronised batch statistics in BatchNorms on batch statistics");
    CLI11_PARSE(app, argc, argv);
    try {
        check(reps > 0 && warmup >= 0 && batch > 0, "--reps, --batch must be positive, --warmup non-negative");
        nlohmann::json out;
        if (which == "phase2_c4") {
            auto net = std::make_unique<Classifier<ResNet50<Layout::v1_5, 64, Depth::c4>, 4>>();
            out = bench(*net, which, batch, reps, warmup, !no_overlap, sync_bn);
        } else {
            auto net = std::make_unique<Classifier<ResNet50<Layout::v1_5, 64, Depth::c5>, 4>>();
            out = bench(*net, which, batch, reps, warmup, !no_overlap, sync_bn);
        }
        if (env.rank() == 0) std::printf("%s\n", out.dump().c_str());
    } catch (const std::exception& e) {
        dist::abort(e.what());
    }
    return 0;
}
