// Shared by train_cpu and evaluate: building the model a best.safetensors describes, and
// predicting over a source of images.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include <tlcpu/data/loader.hpp>
#include <tlcpu/tlcpu.hpp>

namespace tlcpu::app {

inline std::vector<std::string> split_list(const std::string& s, char sep = ',') {
    std::vector<std::string> out;
    for (size_t a = 0, b; a <= s.size(); a = b + 1) {
        b = s.find(sep, a);
        if (b == std::string::npos) b = s.size();
        if (b > a) out.push_back(s.substr(a, b - a));
    }
    return out;
}

struct Predictions {
    std::vector<int> truth, predicted;
    std::vector<std::vector<float>> probs;
};

template <class Net>
Predictions predict(Net& net, BatchSource& src, int batch) {
    Predictions p;
    Tensor x;
    std::vector<int> y;
    for (int64_t b0 = 0; b0 < src.size(); b0 += batch) {
        std::vector<int64_t> idx(size_t(std::min<int64_t>(batch, src.size() - b0)));
        for (size_t i = 0; i < idx.size(); ++i) idx[i] = b0 + int64_t(i);
        src.load(idx, 0, x, y);
        Tensor prob = softmax(net.forward(x, Mode::inference));
        const int64_t k = prob.dim(1);
        for (size_t i = 0; i < idx.size(); ++i) {
            const float* q = prob.data() + int64_t(i) * k;
            p.truth.push_back(y[i]);
            p.predicted.push_back(int(std::max_element(q, q + k) - q));
            p.probs.emplace_back(q, q + k);
        }
    }
    return p;
}

}  // namespace tlcpu::app
