// The tour's lessons (docs/tour.md): what the chapters share. Each chapter is a function that
// prints what its chapter explains, computed on a real MRI image with the real ImageNet
// weights, and verifies it with check(): a failed check says what failed and ends the
// program with status 1.
#pragma once
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <tlcpu/tlcpu.hpp>

namespace lesson {
using namespace tlcpu;

// ../shared: $TLCPU_SHARED, else the folder the build was configured with.
inline std::string shared(const std::string& rel) {
    const char* env = std::getenv("TLCPU_SHARED");
    return std::string(env && *env ? env : TLCPU_SHARED_DIR) + "/" + rel;
}
inline std::string training(const std::string& rel) { return shared("data/brain-tumor-mri/Training/" + rel); }
inline std::string weights_file() { return shared("weights/resnet50-imagenet-caffe-partial.safetensors"); }

// The scan the tour follows, and one scan of each class (labels 0..3, the folders' order)
// where a lesson needs a batch: the head's BatchNorm trains on batch statistics, so a
// training step needs at least two images.
inline const std::string the_image = "glioma/Tr-gl_0010.jpg";
inline const std::vector<std::string> one_per_class{"glioma/Tr-gl_0010.jpg", "meningioma/Tr-me_0010.jpg",
                                                    "notumor/Tr-no_0010.jpg", "pituitary/Tr-pi_0010.jpg"};

inline int& checks() {
    static int n = 0;
    return n;
}
inline void check(bool ok, const std::string& what) {
    std::printf("  %s %s\n", ok ? "ok:" : "FAILED:", what.c_str());
    if (!ok) {
        std::fflush(stdout);
        std::exit(1);
    }
    ++checks();
}

inline std::string fmt(const char* f, ...) {
    char b[512];
    va_list a;
    va_start(a, f);
    std::vsnprintf(b, sizeof b, f, a);
    va_end(a);
    return b;
}

// Images as train_cpu feeds them: decoded, resized to 224 x 224 (antialiased), preprocessed
// as the weights' metadata says (caffe: BGR, 0..255, minus the mean colour).
inline Tensor images(const std::vector<std::string>& files, int size = 224) {
    const Preprocessing pre = preprocessing_of(io::SafeTensors::open(weights_file()));
    Tensor x({int64_t(files.size()), 3, size, size});
    for (size_t i = 0; i < files.size(); ++i)
        preprocess(resize(decode_image(training(files[i])), size, size), pre.mode, x.data() + int64_t(i) * 3 * size * size,
                   pre.caffe_mean_bgr);
    return x;
}

// The network train_cpu trains by default: ResNet-50 in caffe's v1 layout through layer3
// (the weights are exact that far), every backbone weight frozen, and the recipe's head.
using Net = Classifier<ResNet50<Layout::v1, 64, Depth::c4>, dynamic>;
inline std::unique_ptr<Net> recipe_net(uint64_t seed = 1) {
    auto net = std::make_unique<Net>(4);
    load_weights(net->backbone, io::SafeTensors::open(weights_file()));
    init_keras_head(net->head, 0.3f, seed);
    freeze_all(net->backbone);
    return net;
}

template <class L>
Param& param(L& layer, const std::string& name) {
    Param* found = nullptr;
    layer.visit("", [&](const std::string& n, Param& p) {
        if (n == name) found = &p;
    });
    check(found != nullptr, "the model has a parameter named " + name);
    return *found;
}
template <class L>
int64_t count_params(L& layer) {
    int64_t n = 0;
    layer.visit("", [&](const std::string&, Param& p) { n += p.value.size(); });
    return n;
}
inline float max_abs(const Tensor& t) {
    float m = 0;
    for (float v : t) m = std::max(m, std::abs(v));
    return m;
}

void decode();
void stem();
void block();
void freeze();
void batchnorm();
void head();
void loss();
void adam();
void phases();
void cache();
void gradcam();

}  // namespace lesson
