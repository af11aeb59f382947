// The training engine on the 1/16-width ResNet-50: freezing stops backward where it
// should, the network can fit a small problem, runs are bit-identical, and a run resumed
// from a checkpoint ends with exactly the weights of an uninterrupted one.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>

#include "fixtures.hpp"

namespace tlcpu_test_training {

using namespace tlcpu;
namespace fs = std::filesystem;

namespace {

using Tiny = test::TinyNet;
using test::fresh_tiny;
using test::synthetic_squares;

template <class L>
uint64_t runs(L& layer) {
    uint64_t n = 0;
    for_each_layer(layer, [&](auto& l) {
        if constexpr (requires { l.backward_runs; }) n += l.backward_runs;
    });
    return n;
}

std::vector<uint8_t> bytes_of(Tiny& net) {
    std::vector<uint8_t> b;
    net.visit("", [&](const std::string&, Param& p) {
        auto* s = reinterpret_cast<const uint8_t*>(p.value.data());
        b.insert(b.end(), s, s + p.value.bytes());
    });
    return b;
}

struct TempDir {
    fs::path path = fs::temp_directory_path() / ("tlcpu-train-" + std::to_string(::getpid()));
    TempDir() { fs::create_directories(path); }
    ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("frozen layers compute no gradient and no backward primitive runs below the last trainable one") {
    auto data = synthetic_squares(8, 1);
    Tensor x;
    std::vector<int> y;
    data.load({0, 1, 2, 3, 4, 5, 6, 7}, 0, x, y);
    auto net = fresh_tiny(3);
    set_bn_mode(net->backbone, BNMode::inference);

    freeze_all(*net);
    unfreeze(*net, {"head_"});
    auto& be = Backend::get();
    auto r = softmax_cross_entropy(net->forward(x, Mode::training), y);
    uint64_t before = be.executed();
    net->backward(r.grad);
    CHECK(be.executed() == before);  // the head is Eigen; nothing in the backbone ran
    CHECK(runs(net->backbone) == 0);
    CHECK(net->head.fc.weight.grad.size() == 4 * 128);

    unfreeze(*net, {"layer4."});
    r = softmax_cross_entropy(net->forward(x, Mode::training), y);
    before = be.executed();
    net->backward(r.grad);
    CHECK(be.executed() > before);
    CHECK(runs(net->backbone.get<4>()) > 0);  // layer4
    CHECK(runs(net->backbone.get<0>()) + runs(net->backbone.get<1>()) + runs(net->backbone.get<2>()) +
              runs(net->backbone.get<3>()) == 0);  // stem, layer1..3
    int with_grad = 0, frozen_with_grad = 0;
    net->visit("", [&](const std::string& n, Param& p) {
        if (p.kind != ParamKind::weight) return;
        const bool has = p.grad.size() > 0;
        with_grad += has;
        frozen_with_grad += has && !(n.starts_with("layer4.") || n.starts_with("head_"));
    });
    CHECK(frozen_with_grad == 0);
    CHECK(with_grad == 3 * 9 + 3 + 4);

    // Unfreezing layer3's last block makes layer4 pass gradients down into it, and no further.
    const uint64_t l3_before = runs(net->backbone.get<3>());
    unfreeze(*net, {"layer3.5."});
    r = softmax_cross_entropy(net->forward(x, Mode::training), y);
    net->backward(r.grad);
    CHECK(runs(net->backbone.get<3>().rest[4]) > 0);
    CHECK(runs(net->backbone.get<3>()) - runs(net->backbone.get<3>().rest[4]) == l3_before);
}

// A 50-layer network from scratch on 32 images with batch-8 BatchNorm is chaotic: changing
// the input by 1e-6 of itself moves backbone gradients by up to 25% after one step, so any
// change of rounding (Winograd or direct convs, another oneDNN) gives another trajectory.
// These settings fit whatever the rounding: checked on 8 initialisations, each with direct and
// Winograd convs (the weakest: loss down 8.4x, last epoch 0.938); with patience 1 and 30
// epochs, 4 of 8 runs (4 initialisations, each both ways) fell short of 100%.
TEST_CASE("the tiny network fits a small 4-class problem to 100% training accuracy") {
    auto data = synthetic_squares(32, 7);
    auto net = fresh_tiny(11);
    Adam adam(1e-2);
    ReduceLROnPlateau::Options ro;  // anneal on the training loss, so the last epochs settle
    ro.monitor = "loss";
    ro.patience = 3;
    ro.factor = 0.5;
    ReduceLROnPlateau plateau(ro);
    Trainer<Tiny> trainer(*net, adam, {&plateau});
    FitOptions o;
    o.epochs = 40;
    o.batch = 8;
    o.seed = 5;
    auto history = trainer.fit(data, nullptr, o);
    CHECK(history.size() == 40);
    // Accuracy of the trained network on the training set (running statistics, no updates);
    // the epoch's own figure is taken while the weights still move, batch by batch.
    CHECK(trainer.evaluate(data, 8).accuracy == 1.0);
    CHECK(history.back().get("accuracy") >= 0.9);
    CHECK(history.back().get("loss") < history.front().get("loss") * 0.2);
    CHECK(history.back().get("lr") < 1e-2);  // the plateau callback did act
}

TEST_CASE("same seed, same threads: bit-identical weights; a resumed run equals an uninterrupted one") {
    TempDir dir;
    auto data = synthetic_squares(24, 3), val = synthetic_squares(8, 4);
    auto run = [&](int epochs, const std::string& ckpt, const std::string& resume_from, uint64_t seed) {
        auto net = fresh_tiny(seed);
        net->head.drop.p = 0.3f;  // dropout masks must replay too
        Adam adam(2e-3);
        ReduceLROnPlateau::Options ro;
        ro.patience = 1;
        ro.factor = 0.5;
        ReduceLROnPlateau plateau(ro);
        Trainer<Tiny> trainer(*net, adam, {&plateau});
        FitOptions o;
        o.epochs = epochs;
        o.batch = 8;
        o.seed = seed;
        o.checkpoint = ckpt;
        ResumePoint from;
        if (!resume_from.empty()) from = trainer.load_checkpoint(resume_from);
        trainer.fit(data, &val, o, from);
        return bytes_of(*net);
    };
    const auto a = run(4, "", "", 21);
    const auto b = run(4, "", "", 21);
    REQUIRE(a.size() == b.size());
    CHECK(std::memcmp(a.data(), b.data(), a.size()) == 0);
    const auto c = run(4, "", "", 22);
    CHECK(std::memcmp(a.data(), c.data(), a.size()) != 0);

    const std::string ckpt = (dir.path / "checkpoint.safetensors").string();
    run(2, ckpt, "", 21);                 // stopped after two epochs
    const auto resumed = run(4, ckpt, ckpt, 21);  // a new process would do exactly this
    CHECK(std::memcmp(a.data(), resumed.data(), a.size()) == 0);
    const auto f = io::SafeTensors::open(ckpt);
    CHECK(f.meta("epochs_done") == "4");
    CHECK(f.meta("step") == "12");
    CHECK(f.contains("optim.m.head_fc.weight"));
}

TEST_CASE("a non-finite loss stops training with a message naming the step; the checkpoint survives") {
    TempDir dir;
    auto data = synthetic_squares(16, 5);
    auto net = fresh_tiny(1);
    Adam adam(1e-3);
    Trainer<Tiny> trainer(*net, adam);
    FitOptions o;
    o.epochs = 1;
    o.batch = 8;
    o.checkpoint = (dir.path / "ckpt.safetensors").string();
    trainer.fit(data, nullptr, o);
    const auto good = io::SafeTensors::open(o.checkpoint);
    net->head.fc.bias.value[0] = std::numeric_limits<float>::quiet_NaN();
    net->head.fc.bias.touch();
    o.epochs = 2;
    std::string msg;
    try {
        trainer.fit(data, nullptr, o, {1, 1, false});
    } catch (const Error& e) {
        msg = e.what();
    }
    CHECK(msg == "tlcpu: the loss became NaN at phase 1 epoch 2 batch 1 (optimizer step 3); training stopped, "
                 "the last good checkpoint is " + o.checkpoint);  // README's bad-input matrix, row 31
    const auto still = io::SafeTensors::open(o.checkpoint);
    CHECK(still.meta("epochs_done") == "1");
    CHECK(max_rel_diff(still.get("model.head_fc.bias"), good.get("model.head_fc.bias")) == 0.0);
}

TEST_CASE("shards: consecutive slices of each global batch, the last short one included, whose union is that batch") {
    std::vector<int64_t> order(30);
    for (int64_t i = 0; i < 30; ++i) order[size_t(i)] = (i * 7) % 30;  // any permutation
    // One process: the plain batches, the last one short.
    const auto one = shard_batches(order, 12, 0, 1);
    REQUIRE(one.size() == 3);
    CHECK(one[2].indices == std::vector<int64_t>(order.begin() + 24, order.end()));
    CHECK(one[2].global == 6);
    for (int ranks : {2, 3, 4, 7, 8}) {  // 12 and 6 split unevenly over some, and 6 < 7, 8
        std::vector<std::vector<Shard>> shards;
        for (int r = 0; r < ranks; ++r) shards.push_back(shard_batches(order, 12, r, ranks));
        for (size_t b = 0; b < one.size(); ++b) {
            std::vector<int64_t> joined;
            for (int r = 0; r < ranks; ++r) {
                const Shard& s = shards[size_t(r)][b];
                const int64_t len = int64_t(one[b].indices.size());
                CHECK(int64_t(s.indices.size()) == len * (r + 1) / ranks - len * r / ranks);
                CHECK(s.first == int64_t(joined.size()));  // its place in the global batch
                CHECK(s.global == len);
                CHECK(s.lead == one[b].indices[0]);
                joined.insert(joined.end(), s.indices.begin(), s.indices.end());
            }
            CHECK(joined == one[b].indices);  // every sample trains, once
        }
    }
    // 8 ranks, last batch of 6: ranks 0 and 4 get nothing, but still have the batch.
    const auto empty = shard_batches(order, 12, 4, 8);
    REQUIRE(empty.size() == 3);
    CHECK(empty[2].indices.empty());
    CHECK(shard_batches(order, 12, 5, 8)[2].indices == std::vector<int64_t>{order[27]});
}

TEST_CASE("dropout: a sample's mask depends on its place in the global batch, not on who computes it") {
    Tensor x({6, 5}, 1.f);
    Dropout whole;
    whole.p = 0.5f;
    whole.seed = 3;
    whole.step = 9;
    const Tensor all = whole.forward(x, Mode::training);
    Tensor half({3, 5}, 1.f);
    Dropout second = whole;
    second.first = 3;  // the second of two processes
    const Tensor& part = second.forward(half, Mode::training);
    for (int64_t i = 0; i < 15; ++i) CHECK(part[i] == all[15 + i]);
    int zeros = 0;
    for (int64_t i = 0; i < 30; ++i) zeros += all[i] == 0.f;
    CHECK(zeros > 0);
    CHECK(zeros < 30);
}

}  // namespace tlcpu_test_training
