// Uses the installed headers the way a downstream user would: the umbrella include (so
// every dependency, stb included, must resolve) and a network composed from the templates.
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

#include <tlcpu/tlcpu.hpp>

int main() try {
    tlcpu::Classifier<tlcpu::ResNet50<tlcpu::Layout::v1_5, 4>, 3> net;
    // Random conv/dense weights, so the logits are not trivially the zero-initialised head's.
    net.visit("", [](const std::string& name, tlcpu::Param& p) {
        if (p.value.rank() < 2) return;
        tlcpu::init_he_normal(p.value, 1, tlcpu::hash_name(name));
        p.touch();
    });
    tlcpu::Tensor x({1, 3, 64, 64}, 0.5f);
    const tlcpu::Tensor& logits = net.forward(x, tlcpu::Mode::inference);

    if (logits.shape() != tlcpu::Shape{1, 3}) {
        std::fprintf(stderr, "consumer: logits shape %s, expected [1,3]\n",
                     tlcpu::to_string(logits.shape()).c_str());
        return 1;
    }
    std::printf("consumer: logits");
    for (float v : logits) std::printf(" %g", v);
    std::printf("\n");
    for (float v : logits)
        if (!std::isfinite(v)) {
            std::fprintf(stderr, "consumer: non-finite logit\n");
            return 1;
        }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 1;
}
