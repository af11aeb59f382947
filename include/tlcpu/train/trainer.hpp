// tlcpu: the training loop. One phase of fit() is what Keras' model.fit is: epochs of
// shuffled batches (forward, loss, backward, optimizer step), a validation pass, the
// callbacks' decisions, and a checkpoint written atomically after every epoch.
//
// Everything random is a function of (seed, phase, epoch, index), and every reduction runs
// in a fixed order for a given thread count, so the same seed and thread count give the
// same bits, and a run resumed from a checkpoint continues exactly as if never stopped.
#pragma once
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tlcpu/core/random.hpp"
#include "tlcpu/io/safetensors.hpp"
#include "tlcpu/layers/dense.hpp"
#include "tlcpu/optim/optimizer.hpp"
#include "tlcpu/train/callbacks.hpp"
#include "tlcpu/train/loss.hpp"

namespace tlcpu {

// Labelled samples by index; load() may augment, drawing only on (epoch, index).
class BatchSource {
public:
    virtual ~BatchSource() = default;
    virtual int64_t size() const = 0;
    virtual void load(const std::vector<int64_t>& indices, int epoch, Tensor& x, std::vector<int>& y) = 0;
    // The epoch's batches, in order, before the first load(): a source may prepare them in
    // the background while the model computes.
    virtual void plan(const std::vector<std::vector<int64_t>>& /*batches*/, int /*epoch*/) {}
};

// Samples already in memory as one [N, ...] tensor: images, or cached features.
class TensorSource : public BatchSource {
public:
    TensorSource(Tensor images, std::vector<int> labels) : images_(std::move(images)), labels_(std::move(labels)) {
        check(images_.rank() >= 2 && images_.dim(0) == int64_t(labels_.size()),
              "TensorSource: " + std::to_string(labels_.size()) + " labels for images " + to_string(images_.shape()));
    }
    int64_t size() const override { return images_.dim(0); }
    void load(const std::vector<int64_t>& idx, int, Tensor& x, std::vector<int>& y) override {
        const int64_t per = images_.size() / images_.dim(0);
        Shape s = images_.shape();
        s[0] = int64_t(idx.size());
        if (x.shape() != s) x = Tensor(s);
        y.resize(idx.size());
        for (size_t i = 0; i < idx.size(); ++i) {
            std::copy_n(images_.data() + idx[i] * per, per, x.data() + int64_t(i) * per);
            y[i] = labels_[size_t(idx[i])];
        }
    }

private:
    Tensor images_;
    std::vector<int> labels_;
};

// Every sample of src once, in order, in batches of `batch` (the last one short):
// f(index of the batch's first sample, x, y). Passes that predict, evaluate or cache.
template <class F>
void for_each_batch(BatchSource& src, int batch, F&& f) {
    check(batch > 0, "for_each_batch: batch must be positive");
    Tensor x;
    std::vector<int> y;
    for (int64_t b0 = 0; b0 < src.size(); b0 += batch) {
        std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(batch, src.size() - b0)));
        std::iota(idx.begin(), idx.end(), b0);
        src.load(idx, 0, x, y);
        f(b0, x, y);
    }
}

struct FitOptions {
    int phase = 1;
    int epochs = 1;        // epochs of this phase, counting those already done before a resume
    int batch = 32;
    uint64_t seed = 0;
    bool shuffle = true;
    std::string checkpoint;                       // rewritten after every epoch; empty: none
    std::map<std::string, std::string> metadata;  // carried into every checkpoint
};

// Where a phase starts: fresh, or after the epochs a checkpoint says were done.
struct ResumePoint {
    int phase = 1;
    int epochs_done = 0;
    bool stopped = false;  // the phase had already ended (early stopping) when saved
};

struct Metrics {
    double loss = 0, accuracy = 0;
    int64_t n = 0;
};

// The order of one epoch: a permutation that depends only on (seed, phase, epoch).
inline std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int phase, int epoch, bool shuffle) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    if (!shuffle) return order;
    const uint64_t stream = (uint64_t(phase) << 32) | uint64_t(epoch);
    std::vector<uint64_t> key(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) key[size_t(i)] = hash3(seed, stream, uint64_t(i));
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[size_t(a)] < key[size_t(b)]; });
    return order;
}

// Every parameter and running statistic, in visit order (for snapshots and restores).
template <class Model>
std::vector<Tensor> get_weights(Model& m) {
    std::vector<Tensor> w;
    m.visit("", [&](const std::string&, Param& p) { w.push_back(p.value); });
    return w;
}
template <class Model>
void set_weights(Model& m, const std::vector<Tensor>& w) {
    size_t i = 0;
    m.visit("", [&](const std::string& n, Param& p) {
        check(i < w.size() && w[i].shape() == p.value.shape(), "set_weights: snapshot does not fit '" + n + "'");
        p.value = w[i++];
        p.touch();
    });
    check(i == w.size(), "set_weights: snapshot has " + std::to_string(w.size()) + " tensors, model " + std::to_string(i));
}

// Seeds every Dropout so its mask is a function of (seed, step), not of call history.
template <class Model>
void seed_dropout(Model& m, uint64_t seed, uint64_t step) {
    for_each_layer(m, [&](auto& l) {
        if constexpr (std::is_base_of_v<Dropout, std::remove_cvref_t<decltype(l)>>) {
            l.seed = seed;
            l.step = step;
        }
    });
}

template <class Model>
class Trainer {
public:
    Trainer(Model& model, Optimizer& opt, std::vector<Callback*> callbacks = {})
        : model_(model), opt_(opt), callbacks_(std::move(callbacks)) {}

    std::function<void(const std::string& path)> save_model;  // what ModelCheckpoint calls

    Metrics evaluate(BatchSource& data, int batch) {
        Metrics m;
        double total = 0;
        int64_t correct = 0;
        for_each_batch(data, batch, [&](int64_t, const Tensor& x, const std::vector<int>& y) {
            auto r = softmax_cross_entropy(model_.forward(x, Mode::inference), y);
            total += r.loss * double(y.size());
            correct += r.correct;
        });
        m.n = data.size();
        m.loss = m.n ? total / double(m.n) : 0;
        m.accuracy = m.n ? double(correct) / double(m.n) : 0;
        return m;
    }

    // Trains one phase; returns each epoch's logs. `from` continues a checkpointed phase.
    std::vector<EpochLogs> fit(BatchSource& train, BatchSource* val, const FitOptions& o, ResumePoint from = {}) {
        check(o.batch > 0 && o.epochs >= 0, "fit: batch must be positive and epochs non-negative");
        check(train.size() > 0, "fit: the training set is empty");
        TrainControl ctl;
        ctl.lr = opt_.lr;
        ctl.get_weights = [&] { return get_weights(model_); };
        ctl.set_weights = [&](const std::vector<Tensor>& w) { set_weights(model_, w); };
        ctl.save_model = save_model;
        const bool resumed = from.phase == o.phase && from.epochs_done > 0;
        for (auto* c : callbacks_) c->on_phase_begin(o.phase, ctl);
        if (resumed) restore_callbacks();
        std::vector<EpochLogs> history;
        Tensor x;
        std::vector<int> y;
        const int64_t n = train.size(), batches = (n + o.batch - 1) / o.batch;
        for (int epoch = resumed ? from.epochs_done : 0; epoch < o.epochs && !(resumed && from.stopped); ++epoch) {
            const auto t0 = std::chrono::steady_clock::now();
            const auto order = epoch_order(n, o.seed, o.phase, epoch, o.shuffle);
            std::vector<std::vector<int64_t>> plan;
            for (int64_t b = 0; b < batches; ++b)
                plan.emplace_back(order.begin() + b * o.batch, order.begin() + std::min(n, (b + 1) * o.batch));
            train.plan(plan, epoch);
            double loss_sum = 0;
            int64_t correct = 0, seen = 0;
            for (int64_t b = 0; b < batches; ++b) {
                const auto& idx = plan[size_t(b)];
                train.load(idx, epoch, x, y);
                seed_dropout(model_, o.seed, uint64_t(opt_.steps));
                auto r = softmax_cross_entropy(model_.forward(x, Mode::training), y);
                if (!std::isfinite(r.loss))
                    fail("the loss became " + std::string(std::isnan(r.loss) ? "NaN" : "infinite") + " at phase " +
                         std::to_string(o.phase) + " epoch " + std::to_string(epoch + 1) + " batch " + std::to_string(b + 1) +
                         " (optimizer step " + std::to_string(opt_.steps + 1) + "); training stopped" +
                         (o.checkpoint.empty() ? "" : ", the last good checkpoint is " + o.checkpoint));
                model_.backward(r.grad);
                opt_.lr = ctl.lr;
                opt_.step(model_);
                loss_sum += r.loss * double(idx.size());
                correct += r.correct;
                seen += int64_t(idx.size());
                for (auto* c : callbacks_)
                    c->on_batch_end(int(b + 1), int(batches), int(idx.size()), loss_sum / double(seen),
                                    double(correct) / double(seen), ctl);
            }
            EpochLogs logs;
            logs.phase = o.phase;
            logs.epoch = epoch;
            logs.values["loss"] = loss_sum / double(seen);
            logs.values["accuracy"] = double(correct) / double(seen);
            if (val && val->size() > 0) {
                Metrics v = evaluate(*val, o.batch);
                logs.values["val_loss"] = v.loss;
                logs.values["val_accuracy"] = v.accuracy;
            }
            logs.values["lr"] = ctl.lr;  // the rate this epoch trained with
            logs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (auto* c : callbacks_) c->on_epoch_end(logs, ctl);
            opt_.lr = ctl.lr;
            history.push_back(logs);
            if (!o.checkpoint.empty()) save_checkpoint(o, epoch + 1, ctl.stop);
            if (ctl.stop) break;
        }
        for (auto* c : callbacks_) c->on_phase_end(ctl);
        opt_.lr = ctl.lr;
        return history;
    }

    // The resume state: weights and running statistics ("model.*"), optimizer slots
    // ("optim.*"), and in the metadata the phase, epochs done, step, learning rate, seed and
    // every callback's decision state. Written to a temporary file, fsynced, renamed.
    void save_checkpoint(const FitOptions& o, int epochs_done, bool stopped) {
        std::vector<std::pair<std::string, const Tensor*>> tensors;
        model_.visit("", [&](const std::string& n, Param& p) { tensors.push_back({"model." + n, &p.value}); });
        for (auto& [k, t] : opt_.state()) tensors.push_back({"optim." + k, t});
        // Numbers as text: JSON has no inf or nan, and a callback's "best" starts at inf.
        nlohmann::json cbs = nlohmann::json::object();
        std::vector<std::vector<Tensor>> held;
        held.reserve(callbacks_.size());  // the tensor pointers above must stay valid
        for (auto* c : callbacks_) {
            for (const auto& [k, v] : c->state()) cbs[c->name()][k] = exact(v);
            held.push_back(c->tensors());
            for (size_t i = 0; i < held.back().size(); ++i)
                tensors.push_back({"callback." + c->name() + "." + std::to_string(i), &held.back()[i]});
        }
        auto meta = o.metadata;
        meta["tlcpu.checkpoint"] = "1";
        meta["phase"] = std::to_string(o.phase);
        meta["epochs_done"] = std::to_string(epochs_done);
        meta["stopped"] = stopped ? "1" : "0";
        meta["step"] = std::to_string(opt_.steps);
        meta["lr"] = nlohmann::json(opt_.lr).dump();  // shortest text that reads back to the same double
        meta["seed"] = std::to_string(o.seed);
        meta["optimizer"] = opt_.name();
        meta["callbacks"] = cbs.dump();
        io::save_safetensors(o.checkpoint, tensors, meta);
    }

    // Restores what save_checkpoint wrote and says where to continue.
    ResumePoint load_checkpoint(const std::string& path) {
        const auto f = io::SafeTensors::open(path);
        check(f.meta("tlcpu.checkpoint") == "1", path + ": not a tlcpu checkpoint (no tlcpu.checkpoint metadata)");
        check(f.meta("optimizer") == opt_.name(),
              path + ": checkpoint was written with optimizer '" + f.meta("optimizer") + "', resuming with '" + opt_.name() + "'");
        model_.visit("", [&](const std::string& n, Param& p) {
            check(f.contains("model." + n), path + ": checkpoint lacks tensor 'model." + n + "'");
            Tensor t = f.get("model." + n);
            check(t.shape() == p.value.shape(), path + ": tensor 'model." + n + "' has shape " + to_string(t.shape()) +
                                                    ", the model needs " + to_string(p.value.shape()));
            p.value = std::move(t);
            p.touch();
        });
        for (const auto& k : f.names())
            if (k.starts_with("optim.")) opt_.load_state(k.substr(6), f.get(k));
        opt_.steps = std::stoll(f.meta("step"));
        opt_.lr = nlohmann::json::parse(f.meta("lr")).get<double>();
        // Callback state is applied by fit(), after on_phase_begin has reset the callbacks.
        pending_ = nlohmann::json::parse(f.meta("callbacks", "{}"));
        pending_tensors_.clear();
        for (auto* c : callbacks_) {
            auto& t = pending_tensors_[c->name()];
            for (size_t i = 0; f.contains("callback." + c->name() + "." + std::to_string(i)); ++i)
                t.push_back(f.get("callback." + c->name() + "." + std::to_string(i)));
        }
        return {std::stoi(f.meta("phase")), std::stoi(f.meta("epochs_done")), f.meta("stopped") == "1"};
    }

private:
    static std::string exact(double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.17g", v);
        return buf;
    }
    void restore_callbacks() {
        for (auto* c : callbacks_) {
            if (!pending_.contains(c->name())) continue;
            std::map<std::string, double> st;
            for (const auto& [k, v] : pending_[c->name()].items()) st[k] = std::stod(v.template get<std::string>());
            c->load_state(st);
            c->load_tensors(std::move(pending_tensors_[c->name()]));
        }
        pending_ = nlohmann::json::object();
    }

    nlohmann::json pending_ = nlohmann::json::object();
    std::map<std::string, std::vector<Tensor>> pending_tensors_;
    Model& model_;
    Optimizer& opt_;
    std::vector<Callback*> callbacks_;
};

}  // namespace tlcpu
