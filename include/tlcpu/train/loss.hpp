// tlcpu: softmax cross-entropy, the recipe's categorical cross-entropy on softmax outputs.
#pragma once
#include <cmath>
#include <vector>

#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

struct LossResult {
    double loss = 0;  // mean over the batch
    int correct = 0;  // argmax hits, for accuracy
    Tensor grad;      // dL/dlogits = (softmax - onehot) / N
};

// Log-sum-exp around the row maximum, so large logits neither overflow nor lose the answer.
inline LossResult softmax_cross_entropy(const Tensor& logits, const std::vector<int>& labels) {
    check(logits.rank() == 2 && int64_t(labels.size()) == logits.dim(0),
          "cross-entropy: logits " + to_string(logits.shape()) + " for " + std::to_string(labels.size()) + " labels");
    const int64_t n = logits.dim(0), k = logits.dim(1);
    LossResult r;
    r.grad = Tensor(logits.shape());
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
        const float* z = logits.data() + i * k;
        float* g = r.grad.data() + i * k;
        const int y = labels[size_t(i)];
        check(y >= 0 && y < k, "cross-entropy: label " + std::to_string(y) + " outside [0, " + std::to_string(k) + ")");
        int arg = 0;
        for (int64_t j = 1; j < k; ++j) if (z[j] > z[arg]) arg = int(j);
        double sum = 0;
        for (int64_t j = 0; j < k; ++j) sum += std::exp(double(z[j]) - z[arg]);
        const double lse = z[arg] + std::log(sum);
        total += lse - z[y];
        for (int64_t j = 0; j < k; ++j) g[j] = float((std::exp(double(z[j]) - lse) - (j == y)) / double(n));
        r.correct += arg == y;
    }
    r.loss = total / double(n);
    return r;
}

}  // namespace tlcpu
