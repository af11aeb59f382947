// tlcpu: batch normalisation. BatchNorm2d runs as a oneDNN primitive on the backbone's
// activations; BatchNorm1d is the head's, on a plain [N, C] tensor with Eigen.
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include <span>
#include <string>
#include <vector>

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

// Synchronised batch statistics under data parallelism: sums a buffer in place over every
// process training the model. A BatchNorm in batch mode that has one normalises with the
// statistics of the global batch (sums and sums of squares), and its backward sums the two
// per-channel reductions the same way, so the result is that of one process holding the
// whole batch. Empty (the default, as in PyTorch's DDP): each process's own batch.
using SumAcross = std::function<void(std::span<double>)>;

// Per-channel mean and biased variance from summed statistics: s holds C sums of x, then C
// sums of x squared, over `count` values (a synchronised BatchNorm's global batch).
inline void mean_var_from_sums(std::span<const double> s, int C, double count, float* mean, float* var) {
    for (int c = 0; c < C; ++c) {
        const double m = s[size_t(c)] / count;
        mean[c] = float(m);
        var[c] = float(std::max(0.0, s[size_t(C + c)] / count - m * m));
    }
}

namespace detail {

// All of BatchNorm2d that needs its channel count only at run time, compiled once rather
// than once per width (as detail::ConvCore is for Conv2d).
class BNCore {
public:
    uint64_t backward_runs = 0;  // backward calls that ran a primitive (tests check freezing with it)
    Param weight, bias, running_mean, running_var;
    BNConfig config;
    SumAcross sync;
    // Output max(0, bn(x)) in the same pass (oneDNN's fuse_norm_relu), as a bottleneck's bn1
    // and bn2 feed their conv: a separate ReLU would read and write the tensor once more
    // forward and twice backward. Backward then zeroes dy where the output was clipped, from
    // a bit mask the forward keeps.
    bool relu = false;

    void visit(const std::string& prefix, const ParamVisitor& f) {
        f(prefix + "weight", weight);
        f(prefix + "bias", bias);
        f(prefix + "running_mean", running_mean);
        f(prefix + "running_var", running_var);
    }

    bool uses_batch_stats(Mode mode) const { return mode == Mode::training && config.mode == BNMode::batch; }

    const dnnl::memory& forward(const dnnl::memory& x, Mode mode) {
        const bool batch = uses_batch_stats(mode), synced = batch && bool(sync);
        auto make_plan = [&] { return make(x.get_desc(), mode, batch, synced); };
        Plan* p = &plans_.get(x.get_desc(), mode, make_plan);
        if (p->batch != batch || p->synced != synced || p->relu != relu) {  // changed since the plan was made
            plans_.clear();
            p = &plans_.get(x.get_desc(), mode, make_plan);
        }
        const dims d = x.get_desc().dims();
        double count = double(d[0] * d[2] * d[3]);
        if (synced) count = global_stats(*p, x);
        std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, x}, {DNNL_ARG_DST, p->dst}};
        add_stats(args, *p);
        if (p->mask) args[DNNL_ARG_WORKSPACE] = p->mask;
        Backend::get().run(p->prim, args);
        if (batch) update_running(*p, count);
        p->src = x;
        last_ = p;
        return p->dst;
    }
    const dnnl::memory& output() const { return last_->dst; }

    // In inference mode the statistics are constants, so dx = dy * gamma / sqrt(var + eps);
    // in batch mode they depend on x, and oneDNN's backward accounts for that. With relu,
    // dy is first zeroed where the forward clipped.
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
        if (p.mask) args[DNNL_ARG_WORKSPACE] = p.mask;
        Backend::get().run(b.prim, args);
        if (p.synced && need_dx) correct_synced_dx(p);  // (dy masked by the ReLU throughout: still exact)
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
        dnnl::memory mask;                  // the fused ReLU's, in training mode
        dnnl::normalization_flags flags;
        bool batch = false, synced = false, relu = false;
        Tensor x_plain;   // synced: the input in NCHW, for the statistics and backward's correction
        double count = 0; // synced: samples x pixels of the global batch
        Mode mode = Mode::inference;
        std::unique_ptr<Backward> bwd;
    };

    void add_stats(std::unordered_map<int, dnnl::memory>& args, const Plan& p) {
        args[DNNL_ARG_SCALE] = view(weight.value);
        args[DNNL_ARG_SHIFT] = view(bias.value);
        args[DNNL_ARG_MEAN] = p.batch ? p.mean : view(running_mean.value);
        args[DNNL_ARG_VARIANCE] = p.batch ? p.var : view(running_var.value);
    }

    // Synced plans hand oneDNN the global statistics as if they were running ones; backward
    // then treats them as constants, and correct_synced_dx adds what their dependence on x
    // contributes.
    Plan make(const dnnl::memory::desc& xd, Mode mode, bool batch, bool synced) const {
        dims d = xd.dims();
        check(d.size() == 4 && d[1] == c_, "BatchNorm2d<" + std::to_string(c_) + "> got input " + to_string(d));
        auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
        if (!batch || synced) flags = flags | dnnl::normalization_flags::use_global_stats;
        if (relu) flags = flags | dnnl::normalization_flags::fuse_norm_relu;
        auto prop = mode == Mode::training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference;
        auto& eng = Backend::get().engine();
        Plan p;
        p.pd = {{prop, xd, config.eps, flags}, Backend::attr(), eng};
        p.prim = dnnl::batch_normalization_forward(p.pd);
        p.dst = dnnl::memory(p.pd.dst_desc(), eng);
        p.flags = flags;
        p.batch = batch;
        p.synced = synced;
        p.relu = relu;
        if (relu && mode == Mode::training) p.mask = dnnl::memory(p.pd.workspace_desc(), eng);
        p.mode = mode;
        if (batch) {
            p.mean = dnnl::memory(p.pd.mean_desc(), eng);
            p.var = dnnl::memory(p.pd.variance_desc(), eng);
        }
        return p;
    }

    // Per-channel sum and sum of squares of x, summed over the processes, into p.mean and
    // p.var (biased, as batch normalisation uses it). Returns the global count.
    double global_stats(Plan& p, const dnnl::memory& x) {
        const dims d = x.get_desc().dims();
        const int64_t n = d[0], hw = d[2] * d[3];
        if (p.x_plain.shape() != Shape{n, c_, d[2], d[3]}) p.x_plain = Tensor({n, c_, d[2], d[3]});
        reorder(x, view(p.x_plain));
        Backend::get().wait();
        std::vector<double> s(2 * c_ + 1, 0.0);
        const float* xp = p.x_plain.data();
#pragma omp parallel for
        for (int c = 0; c < c_; ++c)
            for (int64_t i = 0; i < n; ++i)
                for (const float* v = xp + (i * c_ + c) * hw; v != xp + (i * c_ + c + 1) * hw; ++v) {
                    s[size_t(c)] += *v;
                    s[size_t(c_ + c)] += double(*v) * *v;
                }
        s[2 * c_] = double(n * hw);
        sync(s);
        p.count = s[2 * c_];
        check(p.count > 1, "BatchNorm2d with synchronised statistics needs more than one value per channel in the global batch");
        mean_var_from_sums(s, c_, p.count, static_cast<float*>(p.mean.get_data_handle()),
                           static_cast<float*>(p.var.get_data_handle()));
        return p.count;
    }

    // oneDNN's backward with the statistics as constants gave dx0 = dy gamma inv_std and the
    // local sums of dy xhat and dy (the parameter gradients). The statistics' dependence on
    // every process's x adds -gamma inv_std / M (sum dy + xhat sum dy xhat), sums global.
    void correct_synced_dx(Plan& p) {
        Backward& b = *p.bwd;
        Backend::get().wait();
        std::vector<double> s(2 * c_);
        for (int c = 0; c < c_; ++c) s[size_t(c)] = weight.grad[c], s[size_t(c_ + c)] = bias.grad[c];
        sync(s);
        const Shape shape = p.x_plain.shape();
        const int64_t n = shape[0], hw = shape[2] * shape[3];
        if (dx_plain_.shape() != shape) dx_plain_ = Tensor(shape);
        reorder(b.diff_src, view(dx_plain_));
        Backend::get().wait();
        const float* mean = static_cast<const float*>(p.mean.get_data_handle());
        const float* var = static_cast<const float*>(p.var.get_data_handle());
#pragma omp parallel for
        for (int c = 0; c < c_; ++c) {
            const float inv_std = 1.f / std::sqrt(var[c] + config.eps);
            const float k = float(weight.value[c] * inv_std / p.count);
            const float sum_dy = float(s[size_t(c_ + c)]), sum_dy_xhat = float(s[size_t(c)]);
            for (int64_t i = 0; i < n; ++i) {
                const float* x = p.x_plain.data() + (i * c_ + c) * hw;
                float* dx = dx_plain_.data() + (i * c_ + c) * hw;
                for (int64_t j = 0; j < hw; ++j) dx[j] -= k * (sum_dy + (x[j] - mean[c]) * inv_std * sum_dy_xhat);
            }
        }
        reorder(view(dx_plain_), b.diff_src);
        Backend::get().wait();
    }

    void update_running(Plan& p, double n) {
        Backend::get().wait();
        const float m = config.momentum, unbias = n > 1 ? float(n / (n - 1)) : 1.f;
        const float* bm = static_cast<const float*>(p.mean.get_data_handle());
        const float* bv = static_cast<const float*>(p.var.get_data_handle());
        for (int c = 0; c < c_; ++c) {
            running_mean.value[c] = (1 - m) * running_mean.value[c] + m * bm[c];
            running_var.value[c] = (1 - m) * running_var.value[c] + m * bv[c] * unbias;
        }
        running_mean.touch();
        running_var.touch();
    }

protected:
    explicit BNCore(int channels)
        : weight({channels}, 1.f), bias({channels}, 0.f), running_mean({channels}, 0.f, ParamKind::buffer),
          running_var({channels}, 1.f, ParamKind::buffer), c_(channels) {}

private:
    int c_;
    PlanCache<Plan> plans_;
    Plan* last_ = nullptr;
    Tensor dx_plain_;
};

}  // namespace detail

template <int C>
class BatchNorm2d : public detail::BNCore {
    static_assert(C > 0, "tlcpu: BatchNorm2d needs a positive channel count");

public:
    static constexpr int in_channels = C, out_channels = C;
    BatchNorm2d() : BNCore(C) {}
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
    SumAcross sync;

    void visit(const std::string& prefix, const ParamVisitor& f) {
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
        count_ = double(n);
        if (batch && sync) {
            std::vector<double> s(2 * C + 1, 0.0);
            for (int64_t i = 0; i < n; ++i)
                for (int c = 0; c < C; ++c) {
                    const double v = X(i, c);
                    s[size_t(c)] += v;
                    s[size_t(C + c)] += v * v;
                }
            s[2 * C] = double(n);
            sync(s);
            count_ = s[2 * C];
            check(count_ > 1, "BatchNorm1d with synchronised statistics needs more than one sample in the global batch");
            mean.resize(C), var.resize(C);
            mean_var_from_sums(s, C, count_, mean.data(), var.data());
        } else if (batch) {
            check(n > 1, "BatchNorm1d in batch mode needs more than one sample per batch");
            mean = X.colwise().mean().array();
            var = (X.rowwise() - mean.matrix()).array().square().colwise().mean();
        }
        if (batch) {
            const float m = config.momentum;
            Eigen::Map<Row> rm(running_mean.value.data(), C), rv(running_var.value.data(), C);
            rm = (1 - m) * rm + m * mean;
            rv = (1 - m) * rv + m * var * float(count_ / (count_ - 1));
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
            Row s1 = dxhat.colwise().sum(), s2 = (dxhat * XH).colwise().sum();
            if (sync) {  // the global batch's sums, and its count, from the forward
                std::vector<double> s(2 * C);
                for (int c = 0; c < C; ++c) s[size_t(c)] = s1[c], s[size_t(C + c)] = s2[c];
                sync(s);
                for (int c = 0; c < C; ++c) s1[c] = float(s[size_t(c)]), s2[c] = float(s[size_t(C + c)]);
            }
            const float m = float(count_);
            DX = ((dxhat * m).rowwise() - s1 - (XH.rowwise() * s2)).rowwise() * (inv_std_ / m);
        } else {
            DX = dxhat.rowwise() * inv_std_;
        }
        return &dx_;
    }

private:
    Tensor y_, xhat_, dx_;
    Eigen::Array<float, 1, Eigen::Dynamic> inv_std_;
    bool batch_ = false;
    double count_ = 0;  // samples the statistics came from: the global batch when synced
};

}  // namespace tlcpu
