// tlcpu: the training loop. One phase of fit() is what Keras' model.fit is: epochs of
// shuffled batches (forward, loss, backward, optimizer step), a validation pass, the
// callbacks' decisions, and a checkpoint written atomically after every epoch.
//
// Everything random is a function of (seed, phase, epoch, index), and every reduction runs
// in a fixed order for a given thread count, so the same seed and thread count give the
// same bits, and a run resumed from a checkpoint continues exactly as if never stopped.
//
// With Replicas (data parallelism, train/replicas.hpp) FitOptions::batch stays the global
// batch: each of R processes trains on its consecutive slice of it (slices differ by at
// most one sample), the gradients' shares are summed into the global batch's, metrics are
// summed, and every process takes the same decisions; only rank 0 writes files. fit and
// evaluate are then collective, and an exception in either ends every process.
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

#include "tlcpu/core/fingerprint.hpp"
#include "tlcpu/core/random.hpp"
#include "tlcpu/io/safetensors.hpp"
#include "tlcpu/layers/dense.hpp"
#include "tlcpu/optim/optimizer.hpp"
#include "tlcpu/train/callbacks.hpp"
#include "tlcpu/train/loss.hpp"
#include "tlcpu/train/replicas.hpp"

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

// Samples [begin, begin + n) of another source: one replica's part of a validation set.
class SliceSource : public BatchSource {
public:
    SliceSource(BatchSource& src, int64_t begin, int64_t n) : src_(src), begin_(begin), n_(n) {
        check(begin >= 0 && n >= 0 && begin + n <= src.size(), "SliceSource: slice outside the source");
    }
    int64_t size() const override { return n_; }
    void load(const std::vector<int64_t>& idx, int epoch, Tensor& x, std::vector<int>& y) override {
        src_.load(shifted(idx), epoch, x, y);
    }
    void plan(const std::vector<std::vector<int64_t>>& batches, int epoch) override {
        std::vector<std::vector<int64_t>> b;
        for (const auto& i : batches) b.push_back(shifted(i));
        src_.plan(b, epoch);
    }

private:
    std::vector<int64_t> shifted(std::vector<int64_t> idx) const {
        for (auto& i : idx) i += begin_;
        return idx;
    }
    BatchSource& src_;
    int64_t begin_, n_;
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

// Seeds every Dropout so its mask is a function of (seed, step, sample's place in the
// global batch), not of call history or of how many processes share the batch.
template <class Model>
void seed_dropout(Model& m, uint64_t seed, uint64_t step, int64_t first = 0) {
    for_each_layer(m, [&](auto& l) {
        if constexpr (std::is_base_of_v<Dropout, std::remove_cvref_t<decltype(l)>>) {
            l.seed = seed;
            l.step = step;
            l.first = first;
        }
    });
}

template <class Model>
class Trainer {
public:
    Trainer(Model& model, Optimizer& opt, std::vector<Callback*> callbacks = {})
        : model_(model), opt_(opt), callbacks_(std::move(callbacks)) {}

    std::function<void(const std::string& path)> save_model;  // what ModelCheckpoint calls
    Replicas* replicas = nullptr;  // data parallelism; null: this process alone
    // The epoch logs' "fingerprint": of the model trained, unless this says of what else
    // (the whole network, when the model is a head or a suffix of it).
    std::function<uint64_t()> weights_fingerprint;

    // With replicas each evaluates a consecutive R-th of the data; the sums are combined.
    // Then evaluate is collective: every replica must call it, with the same data size.
    // An exception on any replica ends every replica's process (Replicas::abort).
    Metrics evaluate(BatchSource& data, int batch) {
        return collective([&] { return evaluate_here(data, batch); });
    }

    // Trains one phase; returns each epoch's logs. `from` continues a checkpointed phase.
    // With replicas fit is collective, and an exception on any replica ends every
    // replica's process (Replicas::abort) rather than leave the others in a collective.
    std::vector<EpochLogs> fit(BatchSource& train, BatchSource* val, const FitOptions& o, ResumePoint from = {}) {
        return collective([&] { return fit_here(train, val, o, from); });
    }

private:
    template <class F>
    auto collective(F&& f) {
        if (!replicas) return f();
        try {
            return f();
        } catch (const std::exception& e) {
            replicas->abort(e.what());
            throw;
        }
    }

    Metrics evaluate_here(BatchSource& data, int batch) {
        const int64_t ranks = replicas ? replicas->size() : 1, rank = replicas ? replicas->rank() : 0;
        const int64_t begin = data.size() * rank / ranks, end = data.size() * (rank + 1) / ranks;
        SliceSource part(data, begin, end - begin);
        double s[3] = {0, 0, double(end - begin)};  // loss sum, correct, samples
        if (part.size() > 0)
            for_each_batch(part, batch, [&](int64_t, const Tensor& x, const std::vector<int>& y) {
                auto r = softmax_cross_entropy(model_.forward(x, Mode::inference), y);
                s[0] += r.loss * double(y.size());
                s[1] += r.correct;
            });
        if (replicas) replicas->sum(s);
        Metrics m;
        m.n = int64_t(s[2]);
        m.loss = m.n ? s[0] / double(m.n) : 0;
        m.accuracy = m.n ? s[1] / double(m.n) : 0;
        return m;
    }

    std::vector<EpochLogs> fit_here(BatchSource& train, BatchSource* val, const FitOptions& o, ResumePoint from) {
        check(o.batch > 0 && o.epochs >= 0, "fit: batch must be positive and epochs non-negative");
        check(train.size() > 0, "fit: the training set is empty");
        const int ranks = replicas ? replicas->size() : 1, rank = replicas ? replicas->rank() : 0;
        TrainControl ctl;
        ctl.lr = opt_.lr;
        ctl.get_weights = [&] { return get_weights(model_); };
        ctl.set_weights = [&](const std::vector<Tensor>& w) { set_weights(model_, w); };
        ctl.save_model = save_model;
        if (rank != 0) ctl.save_model = [](const std::string&) {};  // callbacks decide everywhere, rank 0 writes
        if (replicas) broadcast_model();
        std::vector<Param*> params;
        model_.visit("", [&](const std::string&, Param& p) { params.push_back(&p); });
        const bool resumed = from.phase == o.phase && from.epochs_done > 0;
        for (auto* c : callbacks_) c->on_phase_begin(o.phase, ctl);
        if (resumed) restore_callbacks();
        std::vector<EpochLogs> history;
        Tensor x;
        std::vector<int> y;
        const int64_t n = train.size();
        for (int epoch = resumed ? from.epochs_done : 0; epoch < o.epochs && !(resumed && from.stopped); ++epoch) {
            const auto t0 = std::chrono::steady_clock::now();
            const auto order = epoch_order(n, o.seed, o.phase, epoch, o.shuffle);
            const auto shards = shard_batches(order, o.batch, rank, ranks);  // this process's part of each batch
            const int64_t batches = int64_t(shards.size());
            // What this process loads: its shards; for an empty one nothing, or, when synced
            // BatchNorms need it in their sums, the batch's first sample as a stand-in whose
            // statistics and gradients count for nothing.
            const bool stand_in = replicas && has_synced_batchnorm(model_);
            std::vector<std::vector<int64_t>> plan;
            for (const auto& sh : shards)
                if (!sh.indices.empty())
                    plan.push_back(sh.indices);
                else if (stand_in)
                    plan.push_back({sh.lead});
            train.plan(plan, epoch);
            size_t loaded = 0;
            double loss_sum = 0, correct = 0, seen = 0;
            for (int64_t b = 0; b < batches; ++b) {
                const Shard& sh = shards[size_t(b)];
                const int64_t local = int64_t(sh.indices.size());
                const bool run = local > 0 || stand_in;
                LossResult r;
                double s[3] = {0, 0, 0};
                if (run) {
                    train.load(plan[loaded++], epoch, x, y);
                    seed_dropout(model_, o.seed, uint64_t(opt_.steps), sh.first);
                    if (replicas) replicas->idle = local == 0;
                    r = softmax_cross_entropy(model_.forward(x, Mode::training), y);
                    if (local > 0) s[0] = r.loss * double(local), s[1] = double(r.correct), s[2] = double(local);
                }
                // The whole batch's figures on every process, before backward: a NaN on any
                // one of them stops all of them at the same step.
                if (replicas) replicas->sum(s);
                if (!std::isfinite(s[0]))
                    fail("the loss became " + std::string(std::isnan(s[0]) ? "NaN" : "infinite") + " at phase " +
                         std::to_string(o.phase) + " epoch " + std::to_string(epoch + 1) + " batch " + std::to_string(b + 1) +
                         " (optimizer step " + std::to_string(opt_.steps + 1) + "); training stopped" +
                         (o.checkpoint.empty() ? "" : ", the last good checkpoint is " + o.checkpoint));
                if (replicas) replicas->begin_backward(params, local, sh.global);
                if (run) {
                    // The loss is the mean over the global batch: this process's samples weigh
                    // local / global of it, and a stand-in sample nothing. Scaling the loss
                    // gradient (not the parameter gradients afterwards) keeps every sum that
                    // backward takes over the replicas (synchronised BatchNorms') consistent.
                    if (local != sh.global) {
                        const float w = float(double(local) / double(sh.global));
                        for (float& g : r.grad) g *= w;
                    }
                    model_.backward(r.grad);
                }
                if (replicas) replicas->end_backward(), replicas->idle = false;
                opt_.lr = ctl.lr;
                opt_.step(model_);
                loss_sum += s[0];
                correct += s[1];
                seen += s[2];
                for (auto* c : callbacks_)
                    c->on_batch_end(int(b + 1), int(batches), int(s[2]), loss_sum / seen, correct / seen, ctl);
            }
            if (replicas) agree_on_model(o.phase, epoch);
            EpochLogs logs;
            logs.phase = o.phase;
            logs.epoch = epoch;
            logs.values["loss"] = loss_sum / seen;
            logs.values["accuracy"] = correct / seen;
            if (val && val->size() > 0) {
                Metrics v = evaluate(*val, o.batch);
                logs.values["val_loss"] = v.loss;
                logs.values["val_accuracy"] = v.accuracy;
            }
            logs.values["lr"] = ctl.lr;  // the rate this epoch trained with
            // The weights this epoch ended with, as its checkpoint will hold them (callbacks
            // change weights only at the phase's end); after agree_on_model, so every rank's.
            logs.text["fingerprint"] = fingerprint_hex(weights_fingerprint ? weights_fingerprint() : fingerprint(model_));
            logs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (auto* c : callbacks_) c->on_epoch_end(logs, ctl);
            opt_.lr = ctl.lr;
            history.push_back(logs);
            if (!o.checkpoint.empty() && rank == 0) save_checkpoint(o, epoch + 1, ctl.stop);
            if (ctl.stop) break;
        }
        for (auto* c : callbacks_) c->on_phase_end(ctl);
        opt_.lr = ctl.lr;
        return history;
    }

public:
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
    // Every parameter and running statistic from rank 0, in one call: all replicas start a
    // phase from the same model whatever each loaded or initialised.
    void broadcast_model() {
        std::vector<float> flat;
        model_.visit("", [&](const std::string&, Param& p) { flat.insert(flat.end(), p.value.begin(), p.value.end()); });
        replicas->broadcast(flat);
        size_t at = 0;
        model_.visit("", [&](const std::string&, Param& p) {
            std::copy_n(flat.begin() + int64_t(at), p.value.size(), p.value.begin());
            at += size_t(p.value.size());
            p.touch();
        });
    }

    // After an epoch: running statistics of local-statistics BatchNorms differ between
    // replicas, so they are averaged (in double: identical values stay bit for bit); then
    // the replicas must hold the same bits, or validation and checkpoints would describe a
    // model that only rank 0 has.
    void agree_on_model(int phase, int epoch) {
        std::vector<double> buf;
        model_.visit("", [&](const std::string&, Param& p) {
            if (p.kind == ParamKind::buffer) buf.insert(buf.end(), p.value.begin(), p.value.end());
        });
        replicas->sum(buf);
        size_t at = 0;
        model_.visit("", [&](const std::string&, Param& p) {
            if (p.kind != ParamKind::buffer) return;
            for (auto& v : p.value) v = float(buf[at++] / replicas->size());
            p.touch();
        });
        if (!replicas->agree(fingerprint(model_)))
            fail("the processes hold different weights after phase " + std::to_string(phase) + " epoch " +
                 std::to_string(epoch + 1) + ": the MPI library's sums differ between ranks, or a rank changed "
                 "its model on its own");
    }

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
