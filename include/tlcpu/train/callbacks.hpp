// tlcpu: training callbacks with Keras semantics: early stopping, learning-rate reduction on a
// plateau, best-model checkpoints, a CSV log and a progress bar.
//
// The decision logic follows Keras 3's keras/src/callbacks/*.py statement by statement, so a
// run reproducing the Keras recipe stops, decays and saves at the very epochs Keras would.
// Where tlcpu deliberately differs, the comment at the spot says so. A "phase" is one Keras
// fit() call: its epochs count from 0 and on_phase_begin/end play on_train_begin/end.
#pragma once
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tlcpu/core/atomic_file.hpp"
#include "tlcpu/core/error.hpp"
#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

// One epoch's results, under Keras' log names: "loss", "accuracy", "val_loss", "val_accuracy", "lr".
struct EpochLogs {
    int phase = 1, epoch = 0;  // epoch counts from 0 within a phase
    std::map<std::string, double> values;
    std::map<std::string, std::string> text;  // logs that are not numbers: "fingerprint" (of the weights)
    double seconds = 0;

    std::string names() const {
        std::string s;
        for (const auto& [k, v] : values) s += (s.empty() ? "" : ", ") + k;
        return s.empty() ? "none" : s;
    }
    double get(const std::string& name) const {
        auto it = values.find(name);
        if (it == values.end()) fail("epoch logs have no metric '" + name + "' (they have: " + names() + ")");
        return it->second;
    }
};

// What callbacks may read and change, provided by the trainer.
struct TrainControl {
    double lr = 0;      // callbacks may change it; the trainer applies it to the optimizer
    bool stop = false;  // set to end the phase after this epoch
    std::function<std::vector<Tensor>()> get_weights;  // snapshot of every parameter and buffer
    std::function<void(const std::vector<Tensor>&)> set_weights;
    std::function<void(const std::string& path)> save_model;  // atomic write of the best model
};

class Callback {
public:
    virtual ~Callback() = default;
    virtual void on_phase_begin(int /*phase*/, TrainControl&) {}
    // images: how many images this batch held; loss and accuracy as the trainer reports them.
    virtual void on_batch_end(int /*batch*/, int /*batches*/, int /*images*/, double /*loss*/,
                              double /*accuracy*/, TrainControl&) {}
    virtual void on_epoch_end(const EpochLogs&, TrainControl&) {}
    virtual void on_phase_end(TrainControl&) {}
    // Decision state (best, wait, cooldown, ...) as numbers, so a checkpoint can carry it and a
    // resumed run makes exactly the decisions an uninterrupted one would. load_state(state()) must
    // be the identity. A resumed phase calls on_phase_begin first, then load_state.
    virtual std::map<std::string, double> state() const { return {}; }
    virtual void load_state(const std::map<std::string, double>&) {}
    // Tensors the decision state needs (EarlyStopping's best weights), carried by checkpoints
    // beside the numbers; load_tensors follows load_state.
    virtual std::vector<Tensor> tensors() const { return {}; }
    virtual void load_tensors(std::vector<Tensor>) {}
    virtual std::string name() const = 0;
};

namespace detail {

// Keras' mode "auto": accuracy and AUC are maximised, everything else (losses) minimised.
// Keras falls back to "auto" on an unknown mode with a warning; a typo here is an error.
inline bool maximise(const std::string& who, const std::string& monitor, const std::string& mode) {
    if (mode == "auto")
        return monitor.find("acc") != std::string::npos || monitor.find("auc") != std::string::npos;
    check(mode == "min" || mode == "max", who + ": mode '" + mode + "' is not one of auto, min, max");
    return mode == "max";
}

inline double worst(bool max) {
    return max ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
}

// Keras only warns when the monitored metric is missing and then silently decides nothing,
// which turns a misspelt monitor into a run that never stops; we refuse instead.
inline double monitored(const EpochLogs& logs, const std::string& monitor, const std::string& who) {
    auto it = logs.values.find(monitor);
    if (it == logs.values.end())
        fail(who + " monitors '" + monitor + "', which the epoch logs lack (they have: " + logs.names() + ")");
    return it->second;
}

inline double take(const std::map<std::string, double>& s, const std::string& key, const std::string& who) {
    auto it = s.find(key);
    if (it == s.end()) fail(who + ": saved state has no '" + key + "'");
    return it->second;
}

// The shortest text that reads back as the same double.
inline std::string shortest(double v) {
    char buf[32];
    return std::string(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);
}

}  // namespace detail

// Ends a phase once the monitored value has not improved for `patience` epochs.
class EarlyStopping : public Callback {
public:
    struct Options {
        std::string monitor = "val_loss";
        std::string mode = "auto";
        double min_delta = 0;
        int patience = 0;
        bool restore_best_weights = false;
        int start_from_epoch = 0;
    };
    EarlyStopping() : EarlyStopping(Options{}) {}
    explicit EarlyStopping(Options o) : o_(std::move(o)), max_(detail::maximise("EarlyStopping", o_.monitor, o_.mode)) {
        check(o_.patience >= 0 && o_.start_from_epoch >= 0, "EarlyStopping: patience and start_from_epoch must be >= 0");
        // Keras keeps |min_delta| and subtracts it with the sign that makes improving harder.
        delta_ = max_ ? std::abs(o_.min_delta) : -std::abs(o_.min_delta);
        reset();
    }

    void on_phase_begin(int, TrainControl&) override { reset(); }

    void on_epoch_end(const EpochLogs& logs, TrainControl& ctl) override {
        const double current = detail::monitored(logs, o_.monitor, name());
        check(!(o_.restore_best_weights && taken_ && !have_weights_),
              "EarlyStopping: resumed with restore_best_weights but without the best epoch's weights; "
              "pass them to set_best_weights()");
        if (logs.epoch < o_.start_from_epoch) return;  // warm-up: not even a best yet
        // NaN compares false both ways, so a NaN epoch is never an improvement.
        const bool better = max_ ? current - delta_ > best_ : current - delta_ < best_;
        if (o_.restore_best_weights && (better || !taken_)) {
            // Until something improves, Keras treats the first monitored epoch's weights as the best.
            check(bool(ctl.get_weights), "EarlyStopping: restore_best_weights needs TrainControl::get_weights");
            best_weights_ = ctl.get_weights();
            taken_ = have_weights_ = true;
            best_epoch_ = logs.epoch;
        }
        if (better) {
            best_ = current;
            best_epoch_ = logs.epoch;
            wait_ = 0;
            return;
        }
        // Keras never stops at epoch 0, whatever the patience.
        if (++wait_ >= o_.patience && logs.epoch > 0) {
            stopped_epoch_ = logs.epoch;
            ctl.stop = true;
        }
    }

    // Keras 3 restores in on_train_end whenever it holds best weights, stopped early or not.
    void on_phase_end(TrainControl& ctl) override {
        if (!o_.restore_best_weights || !taken_) return;
        check(have_weights_, "EarlyStopping: cannot restore the best epoch's weights: resumed without them; "
                             "pass them to set_best_weights()");
        check(bool(ctl.set_weights), "EarlyStopping: restore_best_weights needs TrainControl::set_weights");
        ctl.set_weights(best_weights_);
    }

    std::map<std::string, double> state() const override {
        return {{"wait", wait_}, {"stopped_epoch", stopped_epoch_}, {"best", best_},
                {"best_epoch", best_epoch_}, {"best_weights_taken", taken_ ? 1 : 0}};
    }
    // Numbers cannot carry the weights: a resumed run with restore_best_weights must also hand
    // back best_weights() through set_best_weights(), or its next on_epoch_end fails.
    void load_state(const std::map<std::string, double>& s) override {
        wait_ = int(detail::take(s, "wait", name()));
        stopped_epoch_ = int(detail::take(s, "stopped_epoch", name()));
        best_ = detail::take(s, "best", name());
        best_epoch_ = int(detail::take(s, "best_epoch", name()));
        taken_ = detail::take(s, "best_weights_taken", name()) != 0;
        best_weights_.clear();
        have_weights_ = false;
    }
    std::vector<Tensor> tensors() const override { return best_weights_; }
    void load_tensors(std::vector<Tensor> w) override {
        if (!w.empty()) set_best_weights(std::move(w));
    }
    const std::vector<Tensor>& best_weights() const { return best_weights_; }
    void set_best_weights(std::vector<Tensor> w) {
        best_weights_ = std::move(w);
        have_weights_ = true;
    }

    std::string name() const override { return "EarlyStopping"; }
    int stopped_epoch() const { return stopped_epoch_; }  // 0 when it has not stopped, as in Keras
    int best_epoch() const { return best_epoch_; }
    double best() const { return best_; }
    int wait() const { return wait_; }

private:
    void reset() {
        wait_ = stopped_epoch_ = best_epoch_ = 0;
        best_ = detail::worst(max_);
        best_weights_.clear();
        taken_ = have_weights_ = false;
    }
    Options o_;
    bool max_;
    double delta_ = 0, best_ = 0;
    int wait_ = 0, stopped_epoch_ = 0, best_epoch_ = 0;
    std::vector<Tensor> best_weights_;
    bool taken_ = false;         // decision state: a best snapshot exists (Keras: best_weights is not None)
    bool have_weights_ = false;  // and this process holds it
};

// Multiplies the learning rate by `factor` once the monitored value has not improved for
// `patience` epochs, then ignores `cooldown` epochs.
class ReduceLROnPlateau : public Callback {
public:
    struct Options {
        std::string monitor = "val_loss";
        std::string mode = "auto";
        double factor = 0.1;
        int patience = 10;
        double min_delta = 1e-4;  // absolute, as Keras' (PyTorch's "rel" mode is not offered)
        int cooldown = 0;
        double min_lr = 0;
        bool verbose = false;  // one line on stdout per reduction
    };
    ReduceLROnPlateau() : ReduceLROnPlateau(Options{}) {}
    explicit ReduceLROnPlateau(Options o)
        : o_(std::move(o)), max_(detail::maximise("ReduceLROnPlateau", o_.monitor, o_.mode)) {
        check(o_.factor < 1.0, "ReduceLROnPlateau: factor " + detail::shortest(o_.factor) + " must be below 1");
        check(o_.patience >= 0 && o_.cooldown >= 0 && o_.min_lr >= 0,
              "ReduceLROnPlateau: patience, cooldown and min_lr must be >= 0");
        reset();
    }

    void on_phase_begin(int, TrainControl&) override { reset(); }

    void on_epoch_end(const EpochLogs& logs, TrainControl& ctl) override {
        const double current = detail::monitored(logs, o_.monitor, name());
        // Keras leaves cooldown in the same epoch that decrements the counter to 0, so
        // cooldown=1 behaves exactly like cooldown=0; this reproduces that.
        if (cooldown_counter_ > 0) {
            --cooldown_counter_;
            wait_ = 0;
        }
        if (max_ ? current > best_ + o_.min_delta : current < best_ - o_.min_delta) {
            best_ = current;
            wait_ = 0;
            return;
        }
        if (cooldown_counter_ > 0 || ++wait_ < o_.patience) return;
        // Keras compares its float32 rate with float32(min_lr), so a rate clamped to the floor
        // counts as there even after a round trip through a float optimizer, and then wait keeps
        // growing without a reduction or a new cooldown.
        if (float(ctl.lr) > float(o_.min_lr)) {
            ctl.lr = std::max(ctl.lr * o_.factor, o_.min_lr);
            cooldown_counter_ = o_.cooldown;
            wait_ = 0;
            ++reductions_;
            if (o_.verbose)
                std::printf("phase %d epoch %d: ReduceLROnPlateau reducing learning rate to %s.\n", logs.phase,
                            logs.epoch + 1, detail::shortest(ctl.lr).c_str());
        }
    }

    std::map<std::string, double> state() const override {
        return {{"best", best_}, {"wait", wait_}, {"cooldown_counter", cooldown_counter_}, {"reductions", reductions_}};
    }
    void load_state(const std::map<std::string, double>& s) override {
        best_ = detail::take(s, "best", name());
        wait_ = int(detail::take(s, "wait", name()));
        cooldown_counter_ = int(detail::take(s, "cooldown_counter", name()));
        reductions_ = int(detail::take(s, "reductions", name()));
    }
    std::string name() const override { return "ReduceLROnPlateau"; }
    double best() const { return best_; }
    int wait() const { return wait_; }
    int cooldown_counter() const { return cooldown_counter_; }
    int reductions() const { return reductions_; }  // over the callback's lifetime, all phases

private:
    void reset() {  // Keras' _reset, run by on_train_begin
        best_ = detail::worst(max_);
        wait_ = cooldown_counter_ = 0;
    }
    Options o_;
    bool max_;
    double best_ = 0;
    int wait_ = 0, cooldown_counter_ = 0, reductions_ = 0;
};

// Saves the model through TrainControl::save_model whenever the monitored value improves
// (strictly, no min_delta), or after every epoch when save_best_only is false.
//
// Like a Keras ModelCheckpoint passed to both fit() calls, it keeps its best across phases, so
// the file always holds the best model of the whole run; use one instance per phase otherwise.
class ModelCheckpoint : public Callback {
public:
    struct Options {
        std::string path;
        std::string monitor = "val_loss";
        std::string mode = "auto";
        bool save_best_only = true;
    };
    explicit ModelCheckpoint(Options o)
        : o_(std::move(o)), max_(detail::maximise("ModelCheckpoint", o_.monitor, o_.mode)), best_(detail::worst(max_)) {
        check(!o_.path.empty(), "ModelCheckpoint: no path to save to");
    }

    void on_epoch_end(const EpochLogs& logs, TrainControl& ctl) override {
        if (o_.save_best_only) {
            const double current = detail::monitored(logs, o_.monitor, name());
            if (!(max_ ? current > best_ : current < best_)) return;  // NaN never improves
            best_ = current;
        }
        check(bool(ctl.save_model), "ModelCheckpoint: TrainControl::save_model is not set");
        ctl.save_model(o_.path);
        ++saves_;
    }

    std::map<std::string, double> state() const override { return {{"best", best_}, {"saves", saves_}}; }
    void load_state(const std::map<std::string, double>& s) override {
        best_ = detail::take(s, "best", name());
        saves_ = int(detail::take(s, "saves", name()));
    }
    std::string name() const override { return "ModelCheckpoint"; }
    int saves() const { return saves_; }
    double best() const { return best_; }

private:
    Options o_;
    bool max_;
    double best_;
    int saves_ = 0;
};

// One CSV row per epoch: "phase,epoch,<columns...>,seconds", epoch counting from 0 as in
// Keras' CSVLogger, a missing value written "NA" as Keras does, numbers in their shortest
// round-tripping form; a column may also name a text log (the weights' fingerprint).
// Unlike Keras, the file stays open across phases (Keras reopens it in on_train_begin,
// truncating phase 1's rows unless append is set).
class CSVLogger : public Callback {
public:
    explicit CSVLogger(std::string path,
                       std::vector<std::string> columns = {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "fingerprint"},
                       bool append = false)
        : path_(std::move(path)), columns_(std::move(columns)) {
        std::string header = "phase,epoch";
        for (const auto& c : columns_) {
            check(c.find_first_of(",\n\r\"") == std::string::npos, "CSVLogger: column name '" + c + "' needs quoting");
            header += "," + c;
        }
        header += ",seconds";
        // Appending to a file that already has a header: rows must line up under it.
        std::string first;
        if (append) {
            std::ifstream in(path_);
            std::getline(in, first);
        }
        file_.reset(std::fopen(path_.c_str(), append ? "a" : "w"));
        if (!file_) fail(path_ + ": cannot open for writing: " + std::strerror(errno));
        if (first.empty()) {
            std::fprintf(file_.get(), "%s\n", header.c_str());
            flush();
        } else {
            check(first == header, path_ + ": cannot append rows with header '" + header +
                                       "' to a log whose header is '" + first + "'");
        }
    }

    void on_epoch_end(const EpochLogs& logs, TrainControl&) override {
        std::string row = std::to_string(logs.phase) + "," + std::to_string(logs.epoch);
        for (const auto& c : columns_) {
            auto it = logs.values.find(c);
            auto t = logs.text.find(c);
            row += "," + (it != logs.values.end() ? detail::shortest(it->second) : t != logs.text.end() ? t->second : "NA");
        }
        row += "," + detail::shortest(logs.seconds) + "\n";
        std::fputs(row.c_str(), file_.get());
        flush();  // a killed run keeps every finished epoch
    }
    std::string name() const override { return "CSVLogger"; }

    // A run resumed from a checkpoint taken after `epochs_done` epochs of `phase` redoes
    // whatever came later, so rows logged after that checkpoint (a kill between an epoch's
    // row and its checkpoint) are dropped: each epoch appears once.
    void resume_at(int phase, int epochs_done) {
        std::ifstream in(path_);
        std::string line, kept;
        for (bool header = true; std::getline(in, line); header = false) {
            int p = 0, e = 0;
            if (header || (std::sscanf(line.c_str(), "%d,%d", &p, &e) == 2 && (p < phase || (p == phase && e < epochs_done))))
                kept += line + "\n";
        }
        in.close();
        file_.reset();
        write_atomically(path_, [&](std::FILE* f) { return std::fwrite(kept.data(), 1, kept.size(), f) == kept.size(); });
        file_.reset(std::fopen(path_.c_str(), "a"));
        if (!file_) fail(path_ + ": cannot open for writing: " + std::strerror(errno));
    }

private:
    void flush() {
        if (std::fflush(file_.get()) != 0 || std::ferror(file_.get()))
            fail(path_ + ": cannot write: " + std::strerror(errno));
    }
    struct Close { void operator()(std::FILE* f) const { std::fclose(f); } };
    std::string path_;
    std::vector<std::string> columns_;
    std::unique_ptr<std::FILE, Close> file_;
};

// Progress of the epoch in flight and one summary line per finished epoch.
// On a terminal the progress line is redrawn in place ('\r', at most ten times a second);
// elsewhere (a log file, a pipe) it is printed as at most ten plain lines per epoch, so logs
// stay readable and free of carriage returns.
class ProgressBar : public Callback {
public:
    explicit ProgressBar(std::FILE* out = stdout, bool force_plain = false, int epochs = 0)
        : out_(out), tty_(!force_plain && ::isatty(::fileno(out))), epochs_(epochs) {}
    void set_epochs(int epochs) { epochs_ = epochs; }  // epochs per phase, for "epoch 3/20"

    void on_phase_begin(int phase, TrainControl&) override {
        phase_ = phase;
        epoch_ = 0;
        restart();
    }

    void on_batch_end(int batch, int batches, int images, double loss, double accuracy, TrainControl&) override {
        images_ += images;
        const int done = batch + 1;
        const double elapsed = seconds_since(start_);
        const double rate = elapsed > 0 ? images_ / elapsed : 0;
        const double eta = done < batches ? elapsed / done * (batches - done) : 0;
        char stats[160];
        std::snprintf(stats, sizeof stats, "%d/%d  %.1f img/s  ETA %s  loss %.4f  acc %.4f", done, batches, rate,
                      hms(eta).c_str(), loss, accuracy);
        if (tty_) {
            if (done > 1 && done < batches && seconds_since(drawn_) < 0.1) return;
            drawn_ = Clock::now();
            redraw(head() + "  " + bar(done, batches) + " " + stats);
        } else {
            // Crossing a new tenth of the epoch prints; the last batch is left to the summary.
            const int tenth = batches > 0 ? int(int64_t(done) * 10 / batches) : 0;
            if (tenth <= tenths_ || done >= batches) return;
            tenths_ = tenth;
            std::fprintf(out_, "%s  %s\n", head().c_str(), stats);
            std::fflush(out_);
        }
    }

    void on_epoch_end(const EpochLogs& logs, TrainControl&) override {
        epoch_ = logs.epoch;
        std::string line = head();
        char buf[64];
        for (const char* k : {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}) {
            auto it = logs.values.find(k);
            if (it == logs.values.end()) continue;
            std::snprintf(buf, sizeof buf, std::strcmp(k, "lr") ? "  %s %.4f" : "  %s %.3g", k, it->second);
            line += buf;
        }
        for (const auto& [k, v] : logs.text) line += "  " + k + " " + v;
        std::snprintf(buf, sizeof buf, "  %.1fs", logs.seconds);
        line += buf;
        if (tty_) {
            redraw(line);
            std::fputc('\n', out_);
            width_ = 0;
        } else {
            std::fprintf(out_, "%s\n", line.c_str());
        }
        std::fflush(out_);
        epoch_ = logs.epoch + 1;
        restart();
    }

    // Not a decision, but a resumed phase should not count its epochs from 1 again.
    std::map<std::string, double> state() const override { return {{"epoch", epoch_}}; }
    void load_state(const std::map<std::string, double>& s) override { epoch_ = int(detail::take(s, "epoch", name())); }
    std::string name() const override { return "ProgressBar"; }

private:
    using Clock = std::chrono::steady_clock;
    static double seconds_since(Clock::time_point t) {
        return std::chrono::duration<double>(Clock::now() - t).count();
    }
    static std::string hms(double s) {
        const long t = std::isfinite(s) ? std::lround(s) : 0;
        char buf[32];
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
        return buf;
    }
    static std::string bar(int done, int total) {
        constexpr int W = 30;
        const int fill = total > 0 ? int(int64_t(std::min(done, total)) * W / total) : 0;
        std::string b(W, ' ');
        std::fill_n(b.begin(), fill, '=');
        if (fill > 0 && done < total) b[size_t(fill - 1)] = '>';
        return "[" + b + "]";
    }
    std::string head() const {
        std::string s = "phase " + std::to_string(phase_) + " epoch " + std::to_string(epoch_ + 1);
        return epochs_ > 0 ? s + "/" + std::to_string(epochs_) : s;
    }
    // Blanks whatever the previous, longer line left behind.
    void redraw(const std::string& line) {
        const int w = int(line.size());
        std::fprintf(out_, "\r%s%*s", line.c_str(), std::max(0, width_ - w), "");
        width_ = w;
        std::fflush(out_);
    }
    void restart() {
        start_ = drawn_ = Clock::now();
        images_ = 0;
        tenths_ = 0;
    }

    std::FILE* out_;
    bool tty_;
    int epochs_, phase_ = 1, epoch_ = 0, tenths_ = 0, width_ = 0;
    int64_t images_ = 0;
    Clock::time_point start_ = Clock::now(), drawn_ = start_;
};

}  // namespace tlcpu
