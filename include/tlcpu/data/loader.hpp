// tlcpu: batches from a decoded image folder. Augmentation and preprocessing run on a
// background thread that works through the epoch's planned batches ahead of the model,
// holding at most `depth` finished batches; buffers circulate, so nothing is allocated
// per batch once the first few are made.
#pragma once
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "tlcpu/data/augment.hpp"
#include "tlcpu/data/folder.hpp"
#include "tlcpu/io/weights.hpp"
#include "tlcpu/train/trainer.hpp"

namespace tlcpu::data {

class FolderSource : public BatchSource {
public:
    // `indices` picks the samples of `set` this source serves (a split's train or val part);
    // sample i of the source is set.files[indices[i]]. Augmentation draws depend on
    // (seed, epoch, file index), so a sample looks the same whatever batch it lands in.
    FolderSource(const DecodedSet& set, std::vector<int64_t> indices, Preprocessing pre, AugmentOptions aug = {},
                 uint64_t seed = 0, size_t depth = 3)
        : set_(set), idx_(std::move(indices)), pre_(pre), aug_(aug), seed_(seed), depth_(depth) {
        for (int64_t i : idx_) check(i >= 0 && size_t(i) < set_.files.size(), "FolderSource: sample index out of range");
    }
    ~FolderSource() override { stop(); }
    FolderSource(const FolderSource&) = delete;
    FolderSource& operator=(const FolderSource&) = delete;

    int64_t size() const override { return int64_t(idx_.size()); }
    int label(int64_t i) const { return set_.files[size_t(idx_[size_t(i)])].label; }
    const std::string& path(int64_t i) const { return set_.files[size_t(idx_[size_t(i)])].path; }

    void plan(const std::vector<std::vector<int64_t>>& batches, int epoch) override {
        stop();
        {
            std::lock_guard lk(mu_);
            plan_ = batches;
            epoch_ = epoch;
            quit_ = false;
            error_ = nullptr;
        }
        worker_ = std::thread([this] { produce(); });
    }

    void load(const std::vector<int64_t>& indices, int epoch, Tensor& x, std::vector<int>& y) override {
        std::unique_lock lk(mu_);
        if (!worker_.joinable() || epoch != epoch_ || take_ >= plan_.size() || plan_[take_] != indices) {
            lk.unlock();
            fill(indices, epoch, x, y);  // unplanned (validation, evaluation): make it here
            return;
        }
        ready_cv_.wait(lk, [&] { return !ready_.empty() || error_; });
        if (error_) std::rethrow_exception(error_);
        Batch b = std::move(ready_.front());
        ready_.pop_front();
        ++take_;
        std::swap(x, b.x);  // the caller's old buffer goes back to the pool
        y = std::move(b.y);
        free_.push_back(std::move(b.x));
        space_cv_.notify_one();
    }

    // Writes the samples into x [n, 3, S, S] and their labels into y.
    void fill(const std::vector<int64_t>& indices, int epoch, Tensor& x, std::vector<int>& y) const {
        const int s = set_.size;
        const Shape shape{int64_t(indices.size()), 3, s, s};
        if (x.shape() != shape) x = Tensor(shape);
        y.resize(indices.size());
        std::vector<uint8_t> streamed(set_.streamed ? set_.image_bytes() : 0);  // per call: fill runs on two threads
        for (size_t i = 0; i < indices.size(); ++i) {
            const int64_t file = idx_[size_t(indices[i])];
            const AffineDraw d = aug_.any() ? draw(aug_, seed_, uint64_t(epoch), uint64_t(file)) : AffineDraw{};
            const uint8_t* im = set_.streamed ? (set_.read_image(size_t(file), streamed.data()), streamed.data())
                                              : set_.image(size_t(file));
            augment_preprocess(im, s, d, pre_.mode, pre_.caffe_mean_bgr, x.data() + int64_t(i) * 3 * s * s);
            y[i] = set_.files[size_t(file)].label;
        }
    }

private:
    struct Batch {
        Tensor x;
        std::vector<int> y;
    };

    void produce() {
        try {
            for (size_t k = 0; k < plan_.size(); ++k) {
                Tensor x;
                {
                    std::unique_lock lk(mu_);
                    space_cv_.wait(lk, [&] { return quit_ || ready_.size() < depth_; });
                    if (quit_) return;
                    if (!free_.empty()) {
                        x = std::move(free_.back());
                        free_.pop_back();
                    }
                }
                Batch b{std::move(x), {}};
                fill(plan_[k], epoch_, b.x, b.y);  // plan_ is not changed while the worker runs
                std::lock_guard lk(mu_);
                ready_.push_back(std::move(b));
                ready_cv_.notify_one();
            }
        } catch (...) {
            std::lock_guard lk(mu_);
            error_ = std::current_exception();
            ready_cv_.notify_all();
        }
    }

    void stop() {
        {
            std::lock_guard lk(mu_);
            quit_ = true;
        }
        space_cv_.notify_all();
        if (worker_.joinable()) worker_.join();
        std::lock_guard lk(mu_);
        for (auto& b : ready_) free_.push_back(std::move(b.x));
        ready_.clear();
        plan_.clear();
        take_ = 0;
    }

    const DecodedSet& set_;
    std::vector<int64_t> idx_;
    Preprocessing pre_;
    AugmentOptions aug_;
    uint64_t seed_;
    size_t depth_;

    std::mutex mu_;
    std::condition_variable ready_cv_, space_cv_;
    std::vector<std::vector<int64_t>> plan_;  // the epoch's batches; take_ is the next to hand out
    size_t take_ = 0;
    std::deque<Batch> ready_;                 // made, in plan order, starting at take_
    std::vector<Tensor> free_;
    std::thread worker_;
    std::exception_ptr error_;
    int epoch_ = 0;
    bool quit_ = false;
};

}  // namespace tlcpu::data
