// tlcpu: batch normalisation. BatchNorm2d runs as a oneDNN primitive on the backbone's
// activations; BatchNorm1d is the head's, on a plain [N, C] tensor with Eigen.
#pragma once
#include <cmath>
#include <string>

#include <Eigen/Core>

#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

// How a BatchNorm normalises in Mode::training. Inference mode uses the running statistics
// even while training (what Keras does for a pretrained backbone, and what avoids the
// fine-tuning collapse of small batches); batch mode uses the batch's own statistics and
// updates the running ones. In Mode::inference both use the running statistics.
enum class BNMode { inference, batch };

// Running statistics follow PyTorch's convention: running = (1 - momentum) * running +
// momentum * batch, with the unbiased batch variance. Keras' momentum m is 1 - m here.
struct BNConfig {
    float eps = 1e-5f;
    float momentum = 0.1f;
    BNMode mode = BNMode::inference;
};

template <int C>
class BatchNorm2d {
    static_assert(C > 0, "tlcpu: BatchNorm2d needs a positive channel count");

public:
    static constexpr int in_channels = C, out_channels = C;
    uint64_t backward_runs = 0;  // backward calls that ran a primitive (tests check freezing with it)
    Param weight{{C}, 1.f}, bias{{C}, 0.f};
    Param running_mean{{C}, 0.f, ParamKind::buffer}, running_var{{C}, 1.f, ParamKind::buffer};
    BNConfig config;

    template <class F>
    void visit(const std::string& prefix, F&& f) {
        f(prefix + "weight", weight);
        f(prefix + "bias", bias);
        f(prefix + "running_mean", running_mean);
        f(prefix + "running_var", running_var);
    }

    bool uses_batch_stats(Mode mode) const { return mode == Mode::training && config.mode == BNMode::batch; }

    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        const bool batch = uses_batch_stats(mode);
        Plan& p = plans_.get(x.get_desc(), mode, [&] { return make(x.get_desc(), mode, batch); });
        std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, p.dst}};
        add_stats(args, p);
        Backend::get().run(p.prim, args);
        if (batch) update_running(p, x.get_desc().dims());
        p.src = x;
        last_ = &p;
        return p.dst;
    }
    const dnnl::memory& output() const { return last_->dst; }

    // In inference mode the statistics are constants, so dx = dy * gamma / sqrt(var + eps);
    // in batch mode they depend on x, and oneDNN's backward accounts for that.
    const dnnl::memory* backward(const dnnl::memory& dy, bool need_dx) {
        check(last_ && last_->mode == Mode::training, "BatchNorm2d backward without a training-mode forward");
        Plan& p = *last_;
        const bool train_affine = weight.trainable || bias.trainable;
        if (!train_affine && !need_dx) return nullptr;
        ++backward_runs;
        auto& eng = Backend::get().engine();
        if (!p.bwd) {
            p.bwd = std::make_unique<Backward>();
            p.bwd->pd = {{dnnl::prop_kind::backward, p.pd.dst_desc(), p.pd.src_desc(), config.eps, p.flags},
                         Backend::attr(), eng, p.pd};
            p.bwd->prim = dnnl::batch_normalization_backward(p.bwd->pd);
        }
        Backward& b = *p.bwd;
        const dnnl::memory& g = as_desc(dy, b.pd.diff_dst_desc(), b.dy);
        b.diff_src = in_place_or_take(g, dy, b.pd.diff_src_desc());
        std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, p.src},
                                                   {DNNL_ARG_DIFF_DST, g},
                                                   {DNNL_ARG_DIFF_SRC, b.diff_src},
                                                   {DNNL_ARG_DIFF_SCALE, view(grad_of(weight))},
                                                   {DNNL_ARG_DIFF_SHIFT, view(grad_of(bias))}};
        add_stats(args, p);
        Backend::get().run(b.prim, args);
        return need_dx ? &b.diff_src : nullptr;
    }

private:
    struct Backward {
        dnnl::batch_normalization_backward::primitive_desc pd;
        dnnl::batch_normalization_backward prim;
        dnnl::memory diff_src, dy;
    };
    struct Plan {
        dnnl::batch_normalization_forward::primitive_desc pd;
        dnnl::batch_normalization_forward prim;
        dnnl::memory dst, mean, var, src;  // mean/var: this batch's statistics (batch mode)
        dnnl::normalization_flags flags;
        bool batch = false;
        Mode mode = Mode::inference;
        std::unique_ptr<Backward> bwd;
    };

    void add_stats(std::unordered_map<int, dnnl::memory>& args, const Plan& p) {
        args[DNNL_ARG_SCALE] = view(weight.value);
        args[DNNL_ARG_SHIFT] = view(bias.value);
        args[DNNL_ARG_MEAN] = p.batch ? p.mean : view(running_mean.value);
        args[DNNL_ARG_VARIANCE] = p.batch ? p.var : view(running_var.value);
    }

    Plan make(const dnnl::memory::desc& xd, Mode mode, bool batch) const {
        dims d = xd.dims();
        check(d.size() == 4 && d[1] == C, "BatchNorm2d<" + std::to_string(C) + "> got input " + to_string(d));
        auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
        if (!batch) flags = flags | dnnl::normalization_flags::use_global_stats;
        auto prop = mode == Mode::training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
        auto& eng = Backend::get().engine();
        Plan p;
        p.pd = {{prop, xd, config.eps, flags}, Backend::attr(), eng};
        p.prim = dnnl::batch_normalization_forward(p.pd);
        p.dst = dnnl::memory(p.pd.dst_desc(), eng);
        p.flags = flags;
        p.batch = batch;
        p.mode = mode;
        if (batch) {
            p.mean = dnnl::memory(p.pd.mean_desc(), eng);
            p.var = dnnl::memory(p.pd.variance_desc(), eng);
        }
        return p;
    }

    void update_running(Plan& p, const dims& d) {
        Backend::get().wait();
        const double n = double(d[0] * d[2] * d[3]);
        const float m = config.momentum, unbias = n > 1 ? float(n / (n - 1)) : 1.f;
        const float* bm = static_cast<const float*>(p.mean.get_data_handle());
        const float* bv = static_cast<const float*>(p.var.get_data_handle());
        for (int c = 0; c < C; ++c) {
            running_mean.value[c] = (1 - m) * running_mean.value[c] + m * bm[c];
            running_var.value[c] = (1 - m) * running_var.value[c] + m * bv[c] * unbias;
        }
        running_mean.touch();
        running_var.touch();
    }

    PlanCache<Plan> plans_;
    Plan* last_ = nullptr;
};

// The head's BatchNorm over features [N, C]. Training mode normalises with the batch's
// biased variance (as PyTorch and Keras do) and keeps what backward needs.
template <int C>
class BatchNorm1d {
    static_assert(C > 0, "tlcpu: BatchNorm1d needs a positive feature count");

public:
    static constexpr int in_channels = C, out_channels = C;
    Param weight{{C}, 1.f}, bias{{C}, 0.f};
    Param running_mean{{C}, 0.f, ParamKind::buffer}, running_var{{C}, 1.f, ParamKind::buffer};
    BNConfig config{1e-5f, 0.1f, BNMode::batch};

    template <class F>
    void visit(const std::string& prefix, F&& f) {
        f(prefix + "weight", weight);
        f(prefix + "bias", bias);
        f(prefix + "running_mean", running_mean);
        f(prefix + "running_var", running_var);
    }

    const Tensor& forward(const Tensor& x, Mode mode) {
        check(x.rank() == 2 && x.dim(1) == C, "BatchNorm1d<" + std::to_string(C) + "> got input " + to_string(x.shape()));
        const int64_t n = x.dim(0);
        using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        using Row = Eigen::Array<float, 1, Eigen::Dynamic>;
        Eigen::Map<const Mat> X(x.data(), n, C);
        Row mean, var;
        const bool batch = mode == Mode::training && config.mode == BNMode::batch;
        if (batch) {
            check(n > 1, "BatchNorm1d in batch mode needs more than one sample per batch");
            mean = X.colwise().mean().array();
            var = (X.rowwise() - mean.matrix()).array().square().colwise().mean();
            const float m = config.momentum;
            Eigen::Map<Row> rm(running_mean.value.data(), C), rv(running_var.value.data(), C);
            rm = (1 - m) * rm + m * mean;
            rv = (1 - m) * rv + m * var * float(double(n) / double(n - 1));
            running_mean.touch();
            running_var.touch();
        } else {
            mean = Eigen::Map<const Row>(running_mean.value.data(), C);
            var = Eigen::Map<const Row>(running_var.value.data(), C);
        }
        inv_std_ = (var + config.eps).rsqrt();
        if (y_.shape() != x.shape()) y_ = Tensor(x.shape());
        if (xhat_.shape() != x.shape()) xhat_ = Tensor(x.shape());
        Eigen::Map<Mat> XH(xhat_.data(), n, C), Y(y_.data(), n, C);
        XH = ((X.array().rowwise() - mean).rowwise() * inv_std_).matrix();
        Y = ((XH.array().rowwise() * Eigen::Map<const Row>(weight.value.data(), C)).rowwise() +
             Eigen::Map<const Row>(bias.value.data(), C))
                .matrix();
        batch_ = batch;
        return y_;
    }
    const Tensor& output() const { return y_; }

    // With batch statistics the mean and variance depend on every x in the batch:
    // dx = inv_std / N * (N dxhat - sum(dxhat) - xhat sum(dxhat xhat)), dxhat = dy gamma.
    // With running statistics they are constants: dx = dy gamma inv_std.
    const Tensor* backward(const Tensor& dy, bool need_dx) {
        check(dy.shape() == y_.shape(), "BatchNorm1d backward does not match the last forward");
        const int64_t n = dy.dim(0);
        using Mat = Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
        using Row = Eigen::Array<float, 1, Eigen::Dynamic>;
        Eigen::Map<const Mat> DY(dy.data(), n, C), XH(xhat_.data(), n, C);
        if (weight.trainable) Eigen::Map<Row>(grad_of(weight).data(), C) = (DY * XH).colwise().sum();
        if (bias.trainable) Eigen::Map<Row>(grad_of(bias).data(), C) = DY.colwise().sum();
        if (!need_dx) return nullptr;
        if (dx_.shape() != dy.shape()) dx_ = Tensor(dy.shape());
        Eigen::Map<Mat> DX(dx_.data(), n, C);
        const Row g = Eigen::Map<const Row>(weight.value.data(), C);
        const Mat dxhat = DY.rowwise() * g;
        if (batch_) {
            const Row s1 = dxhat.colwise().sum(), s2 = (dxhat * XH).colwise().sum();
            DX = ((dxhat * float(n)).rowwise() - s1 - (XH.rowwise() * s2)).rowwise() * (inv_std_ / float(n));
        } else {
            DX = dxhat.rowwise() * inv_std_;
        }
        return &dx_;
    }

private:
    Tensor y_, xhat_, dx_;
    Eigen::Array<float, 1, Eigen::Dynamic> inv_std_;
    bool batch_ = false;
};

}  // namespace tlcpu
