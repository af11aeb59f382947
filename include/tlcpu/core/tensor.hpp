// tlcpu: a dense float tensor in plain row-major (NCHW / OIHW) order.
//
// This is the type of parameters, gradients, network inputs and everything that crosses
// the library's edges (files, the Eigen head, tests). Activations inside the backbone are
// dnnl::memory objects in whatever layout oneDNN picks (see backend/dnnl.hpp).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "tlcpu/core/error.hpp"

namespace tlcpu {

using Shape = std::vector<int64_t>;

inline int64_t numel(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

inline std::string to_string(const Shape& s) {
    std::ostringstream o;
    o << '[';
    for (size_t i = 0; i < s.size(); ++i) o << (i ? "," : "") << s[i];
    o << ']';
    return o.str();
}

class Tensor {
public:
    Tensor() = default;
    explicit Tensor(Shape shape, float fill = 0.f) : shape_(std::move(shape)) {
        for (int64_t d : shape_) check(d >= 0, "negative dimension in shape " + to_string(shape_));
        alloc();
        std::fill(data(), data() + size(), fill);
    }
    // A default tensor has no buffer (shape {} would otherwise mean one element): copies of
    // it, such as the gradient of a parameter that never ran backward, have none either.
    Tensor(const Tensor& o) : shape_(o.shape_) {
        if (!o.buf_) return;
        alloc();
        std::memcpy(data(), o.data(), o.bytes());
    }
    Tensor& operator=(const Tensor& o) {
        if (this == &o) return *this;
        if (!o.buf_) {
            shape_ = o.shape_;
            buf_.reset();
            return *this;
        }
        if (!buf_ || o.size() != size()) { shape_ = o.shape_; alloc(); }
        shape_ = o.shape_;
        std::memcpy(data(), o.data(), o.bytes());
        return *this;
    }
    Tensor(Tensor&&) noexcept = default;
    Tensor& operator=(Tensor&&) noexcept = default;

    const Shape& shape() const { return shape_; }
    int64_t dim(size_t i) const { return shape_.at(i); }
    size_t rank() const { return shape_.size(); }
    int64_t size() const { return buf_ ? numel(shape_) : 0; }
    size_t bytes() const { return size_t(size()) * sizeof(float); }
    bool empty() const { return size() == 0; }

    float* data() { return buf_.get(); }
    const float* data() const { return buf_.get(); }
    float& operator[](int64_t i) { return buf_[size_t(i)]; }
    float operator[](int64_t i) const { return buf_[size_t(i)]; }
    float* begin() { return data(); }
    float* end() { return data() + size(); }
    const float* begin() const { return data(); }
    const float* end() const { return data() + size(); }

    // Same bytes, new shape; the element count must not change.
    Tensor& reshape(Shape s) {
        check(numel(s) == numel(shape_),
              "cannot reshape " + to_string(shape_) + " to " + to_string(s));
        shape_ = std::move(s);
        return *this;
    }
    void fill(float v) { std::fill(begin(), end(), v); }

private:
    struct Free { void operator()(float* p) const { std::free(p); } };
    void alloc() {
        // 64-byte alignment: one AVX-512 register, and what oneDNN prefers for its buffers.
        size_t n = size_t(numel(shape_)) * sizeof(float);
        size_t rounded = (n + 63) / 64 * 64;
        buf_.reset(static_cast<float*>(std::aligned_alloc(64, rounded ? rounded : 64)));
        if (!buf_) fail("out of memory allocating a tensor of shape " + to_string(shape_));
    }
    Shape shape_;
    std::unique_ptr<float[], Free> buf_;
};

// Largest |a - b| divided by the largest |b|: the tolerance measure the fixtures are checked with.
inline double max_rel_diff(const Tensor& a, const Tensor& b) {
    check(a.shape() == b.shape(),
          "comparing tensors of different shapes " + to_string(a.shape()) + " and " + to_string(b.shape()));
    double diff = 0, mag = 0;
    for (int64_t i = 0; i < a.size(); ++i) {
        diff = std::max(diff, double(std::abs(a[i] - b[i])));
        mag = std::max(mag, double(std::abs(b[i])));
    }
    return mag > 0 ? diff / mag : diff;
}

}  // namespace tlcpu
