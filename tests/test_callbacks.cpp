// Tests for tlcpu/train/callbacks.hpp. Every decision is checked on a scripted metric sequence
// whose expected outcome was worked out by hand from Keras 3's callback source; then resuming
// through state()/load_state(), the CSV log's exact bytes, and the progress bar's output both
// off a terminal and on a pseudo-terminal.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "tlcpu/train/callbacks.hpp"

namespace tlcpu_test_callbacks {

namespace fs = std::filesystem;
using namespace tlcpu;

namespace {

const double NaN = std::numeric_limits<double>::quiet_NaN();
const double Inf = std::numeric_limits<double>::infinity();

EpochLogs logs_of(int epoch, std::map<std::string, double> values, int phase = 1, double seconds = 0) {
    EpochLogs l;
    l.phase = phase;
    l.epoch = epoch;
    l.values = std::move(values);
    l.seconds = seconds;
    return l;
}

// Feeds one value of `metric` per epoch, counting epochs from `first`, the way a trainer would
// except that it keeps going after a stop request. Returns whether each epoch asked to stop.
std::vector<bool> feed(Callback& cb, TrainControl& ctl, const std::vector<double>& seq,
                       const std::string& metric = "val_loss", int first = 0, int phase = 1) {
    std::vector<bool> stops;
    for (size_t i = 0; i < seq.size(); ++i) {
        ctl.stop = false;
        cb.on_epoch_end(logs_of(first + int(i), {{metric, seq[i]}, {"loss", 1.0}}, phase), ctl);
        stops.push_back(ctl.stop);
    }
    return stops;
}

// The learning rate after each epoch.
std::vector<double> lrs(ReduceLROnPlateau& cb, TrainControl& ctl, const std::vector<double>& seq,
                        const std::string& metric = "val_loss") {
    std::vector<double> r;
    for (size_t i = 0; i < seq.size(); ++i) {
        cb.on_epoch_end(logs_of(int(i), {{metric, seq[i]}}), ctl);
        r.push_back(ctl.lr);
    }
    return r;
}

// A model whose weights say which epoch they are from, wired to a TrainControl.
struct FakeModel {
    std::vector<Tensor> w{Tensor({2, 3}), Tensor({4})};
    int gets = 0, sets = 0;
    void at_epoch(int e) {
        for (auto& t : w) t.fill(float(e) + 0.5f);
    }
    float epoch_of() const { return w[0][0] - 0.5f; }
    void wire(TrainControl& ctl) {
        ctl.get_weights = [this] {
            ++gets;
            return w;
        };
        ctl.set_weights = [this](const std::vector<Tensor>& v) {
            ++sets;
            w = v;
        };
    }
};

// Runs an EarlyStopping like a trainer: epoch e trains to weights "e", stops when asked.
// Returns the epoch it stopped at, or -1.
int train(EarlyStopping& es, FakeModel& m, TrainControl& ctl, const std::vector<double>& seq) {
    es.on_phase_begin(1, ctl);
    int stopped = -1;
    for (size_t e = 0; e < seq.size() && stopped < 0; ++e) {
        m.at_epoch(int(e));
        es.on_epoch_end(logs_of(int(e), {{"val_loss", seq[e]}}), ctl);
        if (ctl.stop) stopped = int(e);
    }
    es.on_phase_end(ctl);
    return stopped;
}

struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        do path = fs::temp_directory_path() / ("tlcpu-cb-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
        while (!fs::create_directory(path));
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string slurp(std::FILE* f) {
    std::fflush(f);
    std::rewind(f);
    std::string s;
    char buf[4096];
    while (size_t n = std::fread(buf, 1, sizeof buf, f)) s.append(buf, n);
    return s;
}

std::vector<std::string> lines(const std::string& s) {
    std::vector<std::string> r;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) r.push_back(l);
    return r;
}

size_t count_starting(const std::vector<std::string>& ls, const std::string& prefix) {
    size_t n = 0;
    for (const auto& l : ls) n += l.rfind(prefix, 0) == 0;
    return n;
}

// What one epoch decided, and every callback's state after it.
struct Decision {
    bool stop, saved;
    double lr;
    std::vector<std::map<std::string, double>> states;
    bool operator==(const Decision& o) const {
        return stop == o.stop && saved == o.saved && lr == o.lr && states == o.states;
    }
};

std::vector<bool> bools(std::initializer_list<int> v) { return std::vector<bool>(v.begin(), v.end()); }

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("EpochLogs::get names the missing metric and lists the ones present") {
    EpochLogs l = logs_of(0, {{"loss", 0.5}, {"accuracy", 0.75}});
    CHECK(l.get("accuracy") == 0.75);
    CHECK_THROWS_WITH_AS(l.get("val_loss"), doctest::Contains("'val_loss'"), Error);
    CHECK_THROWS_WITH_AS(l.get("val_loss"), doctest::Contains("accuracy, loss"), Error);
}

TEST_CASE("EarlyStopping defaults: patience 0 stops at the first epoch that does not improve") {
    EarlyStopping es;
    TrainControl ctl;
    es.on_phase_begin(1, ctl);
    CHECK(feed(es, ctl, {1.0, 0.9, 0.95}) == bools({0, 0, 1}));
    CHECK(es.stopped_epoch() == 2);
    CHECK(es.best() == 0.9);
    CHECK(es.best_epoch() == 1);
}

TEST_CASE("EarlyStopping never stops at epoch 0, and a NaN is not an improvement even over +inf") {
    EarlyStopping es;  // patience 0
    TrainControl ctl;
    es.on_phase_begin(1, ctl);
    CHECK(feed(es, ctl, {NaN}) == bools({0}));
    CHECK(es.best() == Inf);
    CHECK(es.wait() == 1);
    CHECK(feed(es, ctl, {1.0, 1.0}, "val_loss", 1) == bools({0, 1}));  // equal is not better
    CHECK(es.stopped_epoch() == 2);
}

TEST_CASE("EarlyStopping patience 2: wait counts non-improving epochs and resets on improvement") {
    EarlyStopping es({.patience = 2});
    TrainControl ctl;
    es.on_phase_begin(1, ctl);
    CHECK(feed(es, ctl, {1.0, 1.1, 0.9, 1.0, 1.0}) == bools({0, 0, 0, 0, 1}));
    CHECK(es.stopped_epoch() == 4);
    CHECK(es.best_epoch() == 2);
    CHECK(es.wait() == 2);
}

TEST_CASE("EarlyStopping min_delta: a change of exactly min_delta is not an improvement (either sign given)") {
    for (double d : {0.25, -0.25}) {  // Keras keeps |min_delta|
        EarlyStopping es({.min_delta = d, .patience = 10});
        TrainControl ctl;
        es.on_phase_begin(1, ctl);
        feed(es, ctl, {1.0, 0.75});
        CHECK(es.best() == 1.0);
        CHECK(es.wait() == 1);
        feed(es, ctl, {0.5}, "val_loss", 2);
        CHECK(es.best() == 0.5);
        CHECK(es.wait() == 0);
        CHECK(es.best_epoch() == 2);
    }
    EarlyStopping acc({.monitor = "val_accuracy", .min_delta = 0.25, .patience = 10});
    TrainControl ctl;
    acc.on_phase_begin(1, ctl);
    feed(acc, ctl, {0.5, 0.75}, "val_accuracy");
    CHECK(acc.best() == 0.5);
    feed(acc, ctl, {1.0}, "val_accuracy", 2);
    CHECK(acc.best() == 1.0);
}

TEST_CASE("EarlyStopping mode: auto maximises val_accuracy, explicit modes override the name") {
    TrainControl ctl;
    EarlyStopping acc({.monitor = "val_accuracy", .patience = 1});
    acc.on_phase_begin(1, ctl);
    CHECK(feed(acc, ctl, {0.5, 0.6, 0.6}, "val_accuracy") == bools({0, 0, 1}));
    CHECK(acc.best() == 0.6);

    EarlyStopping acc_min({.monitor = "val_accuracy", .mode = "min", .patience = 1});
    acc_min.on_phase_begin(1, ctl);
    CHECK(feed(acc_min, ctl, {0.5, 0.6}, "val_accuracy") == bools({0, 1}));

    EarlyStopping loss_max({.mode = "max", .patience = 1});
    loss_max.on_phase_begin(1, ctl);
    CHECK(feed(loss_max, ctl, {0.5, 0.4}) == bools({0, 1}));

    CHECK_THROWS_WITH_AS(EarlyStopping({.mode = "maximum"}), doctest::Contains("maximum"), Error);
}

TEST_CASE("EarlyStopping start_from_epoch: warm-up epochs neither set the best nor count") {
    TrainControl ctl;
    EarlyStopping plain;  // patience 0
    plain.on_phase_begin(1, ctl);
    CHECK(feed(plain, ctl, {0.5, 0.9, 1.0, 1.1}) == bools({0, 1, 1, 1}));

    EarlyStopping warm({.start_from_epoch = 2});
    warm.on_phase_begin(1, ctl);
    CHECK(feed(warm, ctl, {0.5, 0.9, 1.0}) == bools({0, 0, 0}));
    CHECK(warm.best() == 1.0);  // epoch 0's 0.5 was ignored
    CHECK(warm.best_epoch() == 2);
    CHECK(feed(warm, ctl, {1.1}, "val_loss", 3) == bools({1}));
    CHECK(warm.stopped_epoch() == 3);
}

TEST_CASE("EarlyStopping NaN never improves, in min and max mode") {
    TrainControl ctl;
    EarlyStopping es({.patience = 5});
    es.on_phase_begin(1, ctl);
    feed(es, ctl, {1.0, NaN});
    CHECK(es.best() == 1.0);
    CHECK(es.wait() == 1);
    feed(es, ctl, {0.9}, "val_loss", 2);
    CHECK(es.best() == 0.9);

    EarlyStopping acc({.monitor = "val_accuracy", .patience = 1});
    acc.on_phase_begin(1, ctl);
    CHECK(feed(acc, ctl, {0.5, NaN}, "val_accuracy") == bools({0, 1}));
    CHECK(acc.best() == 0.5);
}

TEST_CASE("EarlyStopping restore_best_weights restores exactly the best epoch's weights") {
    SUBCASE("on an early stop") {
        FakeModel m;
        TrainControl ctl;
        m.wire(ctl);
        EarlyStopping es({.patience = 2, .restore_best_weights = true});
        CHECK(train(es, m, ctl, {1.0, 0.5, 0.7, 0.8, 0.1}) == 3);
        CHECK(m.gets == 2);  // snapshots on the two improving epochs only
        CHECK(m.sets == 1);
        CHECK(m.epoch_of() == 1.0f);
        CHECK(m.w[1].shape() == Shape{4});
        CHECK(m.w[1][3] == 1.5f);
    }
    SUBCASE("at the end of a phase that did not stop (Keras 3 restores in on_train_end)") {
        FakeModel m;
        TrainControl ctl;
        m.wire(ctl);
        EarlyStopping es({.patience = 5, .restore_best_weights = true});
        CHECK(train(es, m, ctl, {1.0, 0.5, 0.7}) == -1);
        CHECK(m.epoch_of() == 1.0f);
    }
    SUBCASE("if nothing ever improved, the first monitored epoch's weights count as best") {
        FakeModel m;
        TrainControl ctl;
        m.wire(ctl);
        EarlyStopping es({.patience = 1, .restore_best_weights = true});
        CHECK(train(es, m, ctl, {NaN, NaN, NaN}) == 1);
        CHECK(es.best_epoch() == 0);
        CHECK(m.epoch_of() == 0.0f);
    }
    SUBCASE("not requested: weights untouched, never copied") {
        FakeModel m;
        TrainControl ctl;
        m.wire(ctl);
        EarlyStopping es({.patience = 2});
        CHECK(train(es, m, ctl, {1.0, 0.5, 0.7, 0.8}) == 3);
        CHECK(m.gets == 0);
        CHECK(m.sets == 0);
        CHECK(m.epoch_of() == 3.0f);
    }
    SUBCASE("missing get_weights is an error, not a silent no-op") {
        TrainControl ctl;
        EarlyStopping es({.restore_best_weights = true});
        es.on_phase_begin(1, ctl);
        CHECK_THROWS_WITH_AS(feed(es, ctl, {1.0}), doctest::Contains("get_weights"), Error);
    }
}

TEST_CASE("EarlyStopping and ReduceLROnPlateau start each phase afresh, as Keras' on_train_begin does") {
    TrainControl ctl;
    ctl.lr = 1;
    EarlyStopping es;
    ReduceLROnPlateau rl({.patience = 1, .cooldown = 3});
    es.on_phase_begin(1, ctl);
    rl.on_phase_begin(1, ctl);
    feed(es, ctl, {0.5, 0.6});
    lrs(rl, ctl, {0.5, 0.6});
    REQUIRE(es.stopped_epoch() == 1);
    REQUIRE(rl.cooldown_counter() == 3);
    es.on_phase_begin(2, ctl);
    rl.on_phase_begin(2, ctl);
    CHECK(es.best() == Inf);
    CHECK(es.wait() == 0);
    CHECK(es.stopped_epoch() == 0);
    CHECK(rl.best() == Inf);
    CHECK(rl.wait() == 0);
    CHECK(rl.cooldown_counter() == 0);
    CHECK(feed(es, ctl, {0.9}, "val_loss", 0, 2) == bools({0}));  // 0.9 is a new best in phase 2
    CHECK(es.best() == 0.9);
}

TEST_CASE("a missing monitored metric is an error naming it, for every monitoring callback") {
    TrainControl ctl;
    ctl.save_model = [](const std::string&) {};
    EarlyStopping es;
    ReduceLROnPlateau rl;
    ModelCheckpoint mc({.path = "best.safetensors"});
    EpochLogs l = logs_of(0, {{"loss", 0.5}, {"accuracy", 0.9}});
    for (Callback* cb : std::initializer_list<Callback*>{&es, &rl, &mc}) {
        cb->on_phase_begin(1, ctl);
        CHECK_THROWS_WITH_AS(cb->on_epoch_end(l, ctl), doctest::Contains("'val_loss'"), Error);
        CHECK_THROWS_WITH_AS(cb->on_epoch_end(l, ctl), doctest::Contains(cb->name().c_str()), Error);
        CHECK_THROWS_WITH_AS(cb->on_epoch_end(l, ctl), doctest::Contains("accuracy, loss"), Error);
    }
    CHECK(mc.saves() == 0);
}

TEST_CASE("ReduceLROnPlateau patience 2, cooldown 2, factor 0.5, min_lr 0.2: the lr sequence by hand") {
    // e0 best=1; e1 wait 1; e2 wait 2 -> 0.5, cooldown 2; e3 cooldown 1; e4 cooldown 0, wait 1;
    // e5 wait 2 -> 0.25; e6 cooldown 1; e7 wait 1; e8 wait 2 -> max(0.125, 0.2) = 0.2;
    // e9 cooldown 1; e10 wait 1; e11 wait 2 but lr is at min_lr: no change, wait keeps growing;
    // e12 wait 3; e13 improves: wait 0.
    ReduceLROnPlateau rl({.factor = 0.5, .patience = 2, .cooldown = 2, .min_lr = 0.2});
    TrainControl ctl;
    ctl.lr = 1.0;
    rl.on_phase_begin(1, ctl);
    using Step = std::tuple<double, int, int>;  // lr, wait, cooldown counter after the epoch
    const std::vector<Step> want = {{1, 0, 0},  {1, 1, 0},  {.5, 0, 2},  {.5, 0, 1},  {.5, 1, 0},
                                    {.25, 0, 2}, {.25, 0, 1}, {.25, 1, 0}, {.2, 0, 2}, {.2, 0, 1},
                                    {.2, 1, 0},  {.2, 2, 0},  {.2, 3, 0}};
    std::vector<Step> got;
    for (int e = 0; e < 13; ++e) {
        rl.on_epoch_end(logs_of(e, {{"val_loss", 1.0}}), ctl);
        got.emplace_back(ctl.lr, rl.wait(), rl.cooldown_counter());
    }
    CHECK(got == want);
    CHECK(rl.reductions() == 3);
    rl.on_epoch_end(logs_of(13, {{"val_loss", 0.5}}), ctl);
    CHECK(rl.wait() == 0);
    CHECK(rl.best() == 0.5);
    CHECK(ctl.lr == 0.2);
}

TEST_CASE("ReduceLROnPlateau cooldown 1 behaves as cooldown 0 (Keras leaves cooldown as it decrements to 0)") {
    const std::vector<double> seq(9, 1.0);
    auto run = [&](int cooldown) {
        ReduceLROnPlateau rl({.factor = 0.5, .patience = 2, .cooldown = cooldown});
        TrainControl ctl;
        ctl.lr = 1.0;
        rl.on_phase_begin(1, ctl);
        return lrs(rl, ctl, seq);
    };
    const std::vector<double> c0 = {1, 1, .5, .5, .25, .25, .125, .125, .0625};
    const std::vector<double> c2 = {1, 1, .5, .5, .5, .25, .25, .25, .125};
    CHECK(run(0) == c0);
    CHECK(run(1) == c0);
    CHECK(run(2) == c2);
}

TEST_CASE("ReduceLROnPlateau: an improvement during cooldown still sets the best") {
    // e0 best 1; e1 -> 0.5, cooldown 3; e2 cooldown 2, 0.9 is a new best; e3 cooldown 1;
    // e4 cooldown 0, wait 1 >= patience 1 -> 0.25; e5 cooldown 2.
    ReduceLROnPlateau rl({.factor = 0.5, .patience = 1, .cooldown = 3});
    TrainControl ctl;
    ctl.lr = 1.0;
    rl.on_phase_begin(1, ctl);
    const std::vector<double> want = {1, .5, .5, .5, .25, .25};
    CHECK(lrs(rl, ctl, {1.0, 1.0, 0.9, 0.95, 0.95, 0.95}) == want);
    CHECK(rl.best() == 0.9);
    CHECK(rl.cooldown_counter() == 2);
}

TEST_CASE("ReduceLROnPlateau min_delta is absolute and a change of exactly min_delta does not count") {
    ReduceLROnPlateau rl({.factor = 0.5, .patience = 1, .min_delta = 0.25});
    TrainControl ctl;
    ctl.lr = 1.0;
    rl.on_phase_begin(1, ctl);
    const std::vector<double> want = {1, .5, .5, .25};
    CHECK(lrs(rl, ctl, {1.0, 0.75, 0.5, 0.25}) == want);
    CHECK(rl.best() == 0.5);
}

TEST_CASE("ReduceLROnPlateau: max mode for accuracy, NaN counts as no improvement") {
    TrainControl ctl;
    ctl.lr = 1.0;
    ReduceLROnPlateau acc({.monitor = "val_accuracy", .factor = 0.5, .patience = 1, .min_delta = 0.01});
    acc.on_phase_begin(1, ctl);
    const std::vector<double> want = {1, .5, .5};
    CHECK(lrs(acc, ctl, {0.5, 0.505, 0.6}, "val_accuracy") == want);
    CHECK(acc.best() == 0.6);

    ctl.lr = 1.0;
    ReduceLROnPlateau nan({.factor = 0.5, .patience = 1});
    nan.on_phase_begin(1, ctl);
    const std::vector<double> want_nan = {1, .5};
    CHECK(lrs(nan, ctl, {1.0, NaN}) == want_nan);
}

TEST_CASE("ReduceLROnPlateau: the min_lr floor is compared in float, so a float-rounded lr stays put") {
    // double(float(0.2)) > 0.2 in double; Keras compares float32 with float32(min_lr), so no
    // reduction, and in particular no fresh cooldown.
    ReduceLROnPlateau rl({.factor = 0.5, .patience = 1, .cooldown = 5, .min_lr = 0.2});
    TrainControl ctl;
    ctl.lr = double(float(0.2));
    REQUIRE(ctl.lr > 0.2);
    rl.on_phase_begin(1, ctl);
    lrs(rl, ctl, {1.0, 1.0, 1.0});
    CHECK(rl.reductions() == 0);
    CHECK(rl.cooldown_counter() == 0);
    CHECK(rl.wait() == 2);
    CHECK(ctl.lr == double(float(0.2)));
}

TEST_CASE("ReduceLROnPlateau rejects a factor of 1 or more, as Keras does") {
    CHECK_THROWS_WITH_AS(ReduceLROnPlateau({.factor = 1.0}), doctest::Contains("factor"), Error);
    CHECK_NOTHROW(ReduceLROnPlateau({.factor = 0.999}));
}

TEST_CASE("ModelCheckpoint saves only on strict improvement; which epochs, how many, where") {
    TrainControl ctl;
    std::vector<int> saved;
    std::vector<std::string> paths;
    int epoch = 0;
    ctl.save_model = [&](const std::string& p) {
        saved.push_back(epoch);
        paths.push_back(p);
    };
    auto run = [&](ModelCheckpoint& mc, const std::vector<double>& seq, const std::string& metric, int phase = 1) {
        mc.on_phase_begin(phase, ctl);
        for (epoch = 0; epoch < int(seq.size()); ++epoch)
            mc.on_epoch_end(logs_of(epoch, {{metric, seq[size_t(epoch)]}}, phase), ctl);
    };

    ModelCheckpoint best({.path = "/tmp/best.safetensors"});
    run(best, {1.0, 0.9, 0.95, 0.9, 0.8, NaN, 0.85}, "val_loss");
    CHECK(saved == std::vector<int>{0, 1, 4});
    CHECK(best.saves() == 3);
    CHECK(best.best() == 0.8);
    CHECK(paths == std::vector<std::string>(3, "/tmp/best.safetensors"));

    saved.clear();
    ModelCheckpoint acc({.path = "a", .monitor = "val_accuracy"});
    run(acc, {0.5, 0.7, 0.6, 0.8, 0.8}, "val_accuracy");
    CHECK(saved == std::vector<int>{0, 1, 3});

    saved.clear();
    ModelCheckpoint every({.path = "e", .save_best_only = false});
    run(every, {1.0, 2.0, NaN}, "not_monitored");  // the monitor is not even read
    CHECK(saved == std::vector<int>{0, 1, 2});
    CHECK(every.saves() == 3);

    // One instance across both phases keeps its best: phase 2's worse first epoch is not saved.
    saved.clear();
    ModelCheckpoint run_best({.path = "r"});
    run(run_best, {1.0, 0.8}, "val_loss", 1);
    run(run_best, {0.9, 0.7}, "val_loss", 2);
    CHECK(saved == std::vector<int>{0, 1, 1});
    CHECK(run_best.best() == 0.7);

    TrainControl bare;
    ModelCheckpoint unwired({.path = "u"});
    CHECK_THROWS_WITH_AS(unwired.on_epoch_end(logs_of(0, {{"val_loss", 1.0}}), bare),
                         doctest::Contains("save_model"), Error);
    CHECK_THROWS_AS(ModelCheckpoint({}), Error);  // no path
}

TEST_CASE("state()/load_state(): a run resumed at any epoch makes the uninterrupted run's decisions") {
    const std::vector<double> seq = {1.0,  0.9,  0.91, 0.92, 0.85, 0.86, 0.86, 0.87, 0.84, 0.845,
                                     0.85, 0.86, NaN,  0.83, 0.9,  0.9,  0.9,  0.82, 0.83, 0.84};
    struct Run {
        EarlyStopping es{{.min_delta = 0.005, .patience = 3}};
        ReduceLROnPlateau rl{{.factor = 0.5, .patience = 2, .min_delta = 0.01, .cooldown = 2, .min_lr = 0.01}};
        ModelCheckpoint mc{{.path = "m"}};
        std::vector<Callback*> all() { return {&es, &rl, &mc}; }
        TrainControl ctl;
        int saves_now = 0;
        Run() { ctl.save_model = [this](const std::string&) { ++saves_now; }; }
    };
    auto step = [&](Run& r, int e) {
        r.ctl.stop = false;
        r.saves_now = 0;
        for (Callback* cb : r.all()) cb->on_epoch_end(logs_of(e, {{"val_loss", seq[size_t(e)]}}), r.ctl);
        Decision d{r.ctl.stop, r.saves_now > 0, r.ctl.lr, {}};
        for (Callback* cb : r.all()) d.states.push_back(cb->state());
        return d;
    };

    Run whole;
    whole.ctl.lr = 1.0;
    for (Callback* cb : whole.all()) cb->on_phase_begin(1, whole.ctl);
    std::vector<Decision> want;
    for (int e = 0; e < int(seq.size()); ++e) want.push_back(step(whole, e));
    // The sequence must exercise every decision, or the comparison proves little.
    int stops = 0, saves = 0;
    for (const auto& d : want) stops += d.stop, saves += d.saved;
    REQUIRE(stops > 0);
    REQUIRE(saves >= 3);
    REQUIRE(whole.rl.reductions() >= 3);

    for (int k = 1; k < int(seq.size()); ++k) {
        CAPTURE(k);
        Run first;
        first.ctl.lr = 1.0;
        for (Callback* cb : first.all()) cb->on_phase_begin(1, first.ctl);
        for (int e = 0; e < k; ++e) step(first, e);

        Run resumed;  // a new process: fresh objects, then the checkpoint's numbers
        resumed.ctl.lr = first.ctl.lr;
        for (size_t i = 0; i < 3; ++i) {
            resumed.all()[i]->on_phase_begin(1, resumed.ctl);
            resumed.all()[i]->load_state(first.all()[i]->state());
            CHECK(resumed.all()[i]->state() == first.all()[i]->state());
        }
        for (int e = k; e < int(seq.size()); ++e) CHECK(step(resumed, e) == want[size_t(e)]);
    }
}

TEST_CASE("resuming EarlyStopping with restore_best_weights needs the best weights handed back") {
    const std::vector<double> seq = {1.0, 0.5, 0.7, 0.8, 0.9};
    auto first_two = [&](EarlyStopping& es, FakeModel& m, TrainControl& ctl) {
        es.on_phase_begin(1, ctl);
        for (int e = 0; e < 2; ++e) {
            m.at_epoch(e);
            es.on_epoch_end(logs_of(e, {{"val_loss", seq[size_t(e)]}}), ctl);
        }
    };
    const EarlyStopping::Options opt{.patience = 2, .restore_best_weights = true};
    FakeModel m;
    TrainControl ctl;
    m.wire(ctl);
    EarlyStopping before(opt);
    first_two(before, m, ctl);

    EarlyStopping lost(opt);
    lost.on_phase_begin(1, ctl);
    lost.load_state(before.state());
    CHECK_THROWS_WITH_AS(lost.on_epoch_end(logs_of(2, {{"val_loss", 0.7}}), ctl),
                         doctest::Contains("set_best_weights"), Error);

    EarlyStopping resumed(opt);
    resumed.on_phase_begin(1, ctl);
    resumed.load_state(before.state());
    resumed.set_best_weights(before.best_weights());
    int stopped = -1;
    for (int e = 2; e < int(seq.size()) && stopped < 0; ++e) {
        m.at_epoch(e);
        ctl.stop = false;
        resumed.on_epoch_end(logs_of(e, {{"val_loss", seq[size_t(e)]}}), ctl);
        if (ctl.stop) stopped = e;
    }
    resumed.on_phase_end(ctl);
    CHECK(stopped == 3);
    CHECK(m.epoch_of() == 1.0f);

    CHECK_THROWS_WITH_AS(resumed.load_state({{"wait", 1}}), doctest::Contains("stopped_epoch"), Error);
}

TEST_CASE("CSVLogger: exact bytes, NA for a missing value, round-tripping numbers, text logs, append without a second header") {
    TempDir dir;
    const fs::path path = dir.path / "log.csv";
    const std::vector<std::string> cols = {"loss", "val_loss", "lr", "fingerprint"};
    TrainControl ctl;
    const double third = 0.1 + 0.2;  // 0.30000000000000004: needs all 17 digits
    const std::string header = "phase,epoch,loss,val_loss,lr,fingerprint,seconds\n";
    const std::string row0 = "1,0,0.5,0.30000000000000004,1e-04,0123456789abcdef,12.5\n";
    const std::string row1 = "1,1,0.25,NA,1e-04,NA,3\n";
    {
        CSVLogger log(path.string(), cols, false);
        log.on_phase_begin(1, ctl);
        EpochLogs first = logs_of(0, {{"loss", 0.5}, {"val_loss", third}, {"lr", 1e-4}, {"accuracy", 0.9}}, 1, 12.5);
        first.text = {{"fingerprint", "0123456789abcdef"}, {"note", "not a column"}};
        log.on_epoch_end(first, ctl);
        CHECK(slurp(path) == header + row0);  // flushed at once, not at close
        log.on_epoch_end(logs_of(1, {{"loss", 0.25}, {"lr", 1e-4}}, 1, 3.0), ctl);
        CHECK(slurp(path) == header + row0 + row1);
    }
    CHECK(std::strtod("0.30000000000000004", nullptr) == third);
    const std::string row2 = "2,0,0.125,0.0625,1e-05,NA,7.25\n";
    {
        CSVLogger log(path.string(), cols, true);
        log.on_epoch_end(logs_of(0, {{"loss", 0.125}, {"val_loss", 0.0625}, {"lr", 1e-5}}, 2, 7.25), ctl);
    }
    CHECK(slurp(path) == header + row0 + row1 + row2);

    // Rows under a header of other columns would be misread; appending there is refused.
    CHECK_THROWS_WITH_AS(CSVLogger(path.string(), {"loss"}, true), doctest::Contains("header"), Error);
    CHECK(slurp(path) == header + row0 + row1 + row2);

    // Resuming from a checkpoint after phase 1 epoch 1: the rows of later epochs (logged
    // before a kill that came ahead of their checkpoint) go, and new rows follow.
    {
        CSVLogger log(path.string(), cols, true);
        log.resume_at(1, 1);
        CHECK(slurp(path) == header + row0);
        log.on_epoch_end(logs_of(1, {{"loss", 0.25}, {"lr", 1e-4}}, 1, 3.0), ctl);
        CHECK(slurp(path) == header + row0 + row1);
        log.resume_at(2, 0);  // phase 1 complete: keep it all
        CHECK(slurp(path) == header + row0 + row1);
    }

    { CSVLogger truncate(path.string(), cols, false); }
    CHECK(slurp(path) == header);

    const fs::path fresh = dir.path / "fresh.csv";
    { CSVLogger log(fresh.string(), {"loss"}, true); }  // appending to nothing still writes the header
    CHECK(slurp(fresh) == "phase,epoch,loss,seconds\n");

    CHECK_THROWS_WITH_AS(CSVLogger((dir.path / "no" / "such.csv").string()), doctest::Contains("such.csv"), Error);
}

TEST_CASE("ProgressBar off a terminal: no carriage returns, at most ten progress lines and one summary per epoch") {
    std::FILE* f = std::tmpfile();
    REQUIRE(f);
    ProgressBar pb(f);  // a file: plain mode detected, not forced
    pb.set_epochs(2);
    TrainControl ctl;
    pb.on_phase_begin(1, ctl);
    for (int e = 0; e < 2; ++e) {
        for (int b = 0; b < 144; ++b) pb.on_batch_end(b, 144, 32, 0.4312, 0.871, ctl);
        pb.on_epoch_end(logs_of(e, {{"loss", 0.4312}, {"accuracy", 0.871}, {"val_loss", 0.3801},
                                    {"val_accuracy", 0.882}, {"lr", 1e-4}}, 1, 52.3), ctl);
    }
    pb.set_epochs(5);
    pb.on_phase_begin(2, ctl);
    pb.load_state({{"epoch", 3}});  // a resumed phase 2 continues the count
    for (int b = 0; b < 3; ++b) pb.on_batch_end(b, 3, 32, 0.5, 0.5, ctl);
    EpochLogs last = logs_of(3, {{"loss", 0.5}}, 2, 1.0);
    last.text["fingerprint"] = "00000000deadbeef";
    pb.on_epoch_end(last, ctl);
    CHECK(pb.state() == std::map<std::string, double>{{"epoch", 4}});

    const std::string out = slurp(f);
    std::fclose(f);
    CHECK(out.find('\r') == std::string::npos);
    const auto ls = lines(out);
    const std::string summary =
        "  loss 0.4312  accuracy 0.8710  val_loss 0.3801  val_accuracy 0.8820  lr 0.0001  52.3s";
    REQUIRE(ls.size() == 10 + 10 + 3);
    CHECK(count_starting(ls, "phase 1 epoch 1/2  ") == 10);
    CHECK(count_starting(ls, "phase 1 epoch 2/2  ") == 10);
    CHECK(ls[0].rfind("phase 1 epoch 1/2  15/144  ", 0) == 0);  // the first tenth of 144 batches
    CHECK(ls[0].find("img/s  ETA ") != std::string::npos);
    CHECK(ls[0].find("loss 0.4312  acc 0.8710") != std::string::npos);
    CHECK(ls[9] == "phase 1 epoch 1/2" + summary);
    CHECK(ls[19] == "phase 1 epoch 2/2" + summary);
    CHECK(ls[20].rfind("phase 2 epoch 4/5  1/3  ", 0) == 0);
    CHECK(ls[21].rfind("phase 2 epoch 4/5  2/3  ", 0) == 0);
    CHECK(ls[22] == "phase 2 epoch 4/5  loss 0.5000  fingerprint 00000000deadbeef  1.0s");
}

TEST_CASE("ProgressBar on a terminal redraws in place with '\\r'; force_plain keeps it plain there too") {
    const int master = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || ::grantpt(master) != 0 || ::unlockpt(master) != 0) {
        MESSAGE("no pseudo-terminal available; skipped");
        if (master >= 0) ::close(master);
        return;
    }
    const int slave = ::open(::ptsname(master), O_RDWR | O_NOCTTY);
    REQUIRE(slave >= 0);
    termios t{};
    ::tcgetattr(slave, &t);
    ::cfmakeraw(&t);  // no "\n" -> "\r\n" translation to confuse the check
    ::tcsetattr(slave, TCSANOW, &t);
    std::FILE* tty = ::fdopen(slave, "w");
    REQUIRE(tty);
    auto drain = [&] {
        std::string s;
        char buf[4096];
        pollfd p{master, POLLIN, 0};
        while (::poll(&p, 1, 200) > 0) {
            const ssize_t n = ::read(master, buf, sizeof buf);
            if (n <= 0) break;
            s.append(buf, size_t(n));
        }
        return s;
    };
    auto epoch = [&](ProgressBar& pb) {
        TrainControl ctl;
        pb.on_phase_begin(1, ctl);
        for (int b = 0; b < 5; ++b) pb.on_batch_end(b, 5, 8, 0.25, 0.5, ctl);
        pb.on_epoch_end(logs_of(0, {{"loss", 0.25}, {"val_loss", 0.125}}, 1, 2.0), ctl);
    };

    ProgressBar bar(tty, false, 20);
    epoch(bar);
    const std::string drawn = drain();
    CHECK(drawn.rfind("\rphase 1 epoch 1/20  [", 0) == 0);
    CHECK(drawn.find("[==============================] 5/5  ") != std::string::npos);  // the last batch is drawn
    CHECK(drawn.find("\rphase 1 epoch 1/20  loss 0.2500  val_loss 0.1250  2.0s") != std::string::npos);
    CHECK(drawn.back() == '\n');
    CHECK(std::count(drawn.begin(), drawn.end(), '\n') == 1);

    ProgressBar plain(tty, true, 20);
    epoch(plain);
    const std::string written = drain();
    CHECK(written.find('\r') == std::string::npos);
    CHECK(written.find("phase 1 epoch 1/20  loss 0.2500  val_loss 0.1250  2.0s\n") != std::string::npos);

    std::fclose(tty);
    ::close(master);
}

}  // TEST_SUITE

}  // namespace tlcpu_test_callbacks
