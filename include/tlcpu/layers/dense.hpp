// tlcpu: the head's fully connected layer and dropout, on plain [N, C] tensors with Eigen.
#pragma once
#include <string>

#include <Eigen/Core>

#include "tlcpu/core/random.hpp"
#include "tlcpu/layers/layer.hpp"

namespace tlcpu {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline constexpr int dynamic = 0;  // a size fixed at run time (a head's class count)

// Dense<In, Out>: y = x W^T + b, W in PyTorch's [Out, In] order so weights load by name.
// Dense<In, dynamic>(k) takes its output size at construction: the class count of a data
// set is known only when its folder is read.
template <int In, int OutT>
class Dense {
    static_assert(In > 0 && OutT >= 0, "tlcpu: Dense needs positive sizes");

public:
    static constexpr int in_channels = In, out_channels = OutT;
    const int Out;
    Param weight, bias;

    explicit Dense(int out = OutT) : Out(out), weight({out, In}, 0.f), bias({out}, 0.f) {
        check(out > 0, "Dense<" + std::to_string(In) + ", dynamic> needs a positive output size, got " + std::to_string(out));
    }

    void visit(const std::string& prefix, const ParamVisitor& f) {
        f(prefix + "weight", weight);
        f(prefix + "bias", bias);
    }

    const Tensor& forward(const Tensor& x, Mode) {
        check(x.rank() == 2 && x.dim(1) == In,
              "Dense<" + std::to_string(In) + "," + std::to_string(Out) + "> got input " + to_string(x.shape()));
        const int64_t n = x.dim(0);
        if (y_.shape() != Shape{n, Out}) y_ = Tensor({n, Out});
        Eigen::Map<const RowMat> X(x.data(), n, In), W(weight.value.data(), Out, In);
        Eigen::Map<RowMat> Y(y_.data(), n, Out);
        Y.noalias() = X * W.transpose();
        Y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias.value.data(), Out);
        x_ = &x;
        return y_;
    }
    const Tensor& output() const { return y_; }

    // dW = dY^T X, db = column sums of dY, dX = dY W.
    const Tensor* backward(const Tensor& dy, bool need_dx) {
        check(x_ && dy.shape() == y_.shape(), "Dense backward does not match the last forward");
        const int64_t n = dy.dim(0);
        Eigen::Map<const RowMat> DY(dy.data(), n, Out), X(x_->data(), n, In), W(weight.value.data(), Out, In);
        if (weight.trainable) Eigen::Map<RowMat>(grad_of(weight).data(), Out, In).noalias() = DY.transpose() * X;
        if (bias.trainable) Eigen::Map<Eigen::RowVectorXf>(grad_of(bias).data(), Out) = DY.colwise().sum();
        if (!need_dx) return nullptr;
        if (dx_.shape() != x_->shape()) dx_ = Tensor(x_->shape());
        Eigen::Map<RowMat>(dx_.data(), n, In).noalias() = DY * W;
        return &dx_;
    }

private:
    Tensor y_, dx_;
    const Tensor* x_ = nullptr;
};

// Inverted dropout: in training, zero each element with probability p and scale the rest by
// 1/(1-p); in inference, the identity. The mask is a function of (seed, step, index) only.
class Dropout {
public:
    static constexpr int in_channels = any_channels, out_channels = any_channels;
    float p = 0.f;
    uint64_t seed = 0;
    uint64_t step = 0;  // advanced by the trainer each batch
    // This process's first sample within the global batch: with data parallelism each
    // sample keeps the mask it would get in a single process holding the whole batch.
    int64_t first = 0;

    void visit(const std::string&, const ParamVisitor&) {}

    const Tensor& forward(const Tensor& x, Mode mode) {
        check(p >= 0.f && p < 1.f, "Dropout rate must be in [0, 1), got " + std::to_string(p));
        if (mode == Mode::inference || p == 0.f) {
            out_ = &x;
            return x;
        }
        if (y_.shape() != x.shape()) y_ = Tensor(x.shape());
        if (mask_.shape() != x.shape()) mask_ = Tensor(x.shape());
        const float keep = 1.f / (1.f - p);
        const int64_t offset = first * (x.size() / std::max<int64_t>(x.dim(0), 1));
        for (int64_t i = 0; i < x.size(); ++i) {
            mask_[i] = uniform01(seed, 0xD50Full + step, uint64_t(offset + i)) < p ? 0.f : keep;
            y_[i] = x[i] * mask_[i];
        }
        out_ = &y_;
        return y_;
    }
    const Tensor& output() const { return *out_; }

    const Tensor* backward(const Tensor& dy, bool need_dx) {
        if (!need_dx) return nullptr;
        if (out_ != &y_) return &dy;  // the last forward was the identity
        if (dx_.shape() != dy.shape()) dx_ = Tensor(dy.shape());
        for (int64_t i = 0; i < dy.size(); ++i) dx_[i] = dy[i] * mask_[i];
        return &dx_;
    }

private:
    Tensor y_, mask_, dx_;
    const Tensor* out_ = nullptr;
};

}  // namespace tlcpu
