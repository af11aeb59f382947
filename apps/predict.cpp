// predict: a trained model (best.safetensors from train_cpu) on image files: the class and
// every class's probability per image, and with --gradcam a heatmap of where the last
// convolutional stage saw evidence for the predicted class.
#include <filesystem>
#include <set>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include <tlcpu/report/gradcam.hpp>

namespace fs = std::filesystem;
using namespace tlcpu;

int main(int argc, char** argv) {
    std::string model, cam_dir;
    std::vector<std::string> files;
    bool json = false;
    int batch = 16, cam_side = 512;
    CLI::App app{"Classify images with a trained tlcpu model"};
    app.add_option("--model", model, "best.safetensors written by train_cpu")->required();
    app.add_option("images", files, "Image files (JPEG, PNG, BMP, ...)")->required();
    app.add_flag("--json", json, "Print one JSON document instead of text");
    app.add_option("--gradcam", cam_dir, "Write a Grad-CAM overlay PNG per image into this folder");
    app.add_option("--gradcam-size", cam_side, "Longest side of the overlays, in pixels (0: the image's own)")->capture_default_str();
    app.add_option("--batch", batch, "Images per forward pass")->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    int failures = 0;
    try {
        const auto f = io::SafeTensors::open(model);
        const auto classes = app::split_list(f.meta("classes"));
        const int size = std::stoi(f.meta("input_size", "224"));
        const bool nearest = f.meta("resize", "antialias") == "nearest";
        const Preprocessing pre = preprocessing_of(f);
        if (!cam_dir.empty()) {
            std::error_code ec;
            fs::create_directories(cam_dir, ec);
            check(fs::is_directory(cam_dir), cam_dir + ": cannot create the Grad-CAM folder" + (ec ? " (" + ec.message() + ")" : ""));
        }
        nlohmann::json out = nlohmann::json::array();
        std::set<std::string> used;
        app::with_model(f, [&](auto& net) {
            for (size_t b0 = 0; b0 < files.size(); b0 += size_t(batch)) {
                // Decode this batch; a file that is not an image is reported and skipped.
                std::vector<Image> ims;
                std::vector<std::string> names;
                for (size_t i = b0; i < std::min(files.size(), b0 + size_t(batch)); ++i) {
                    Image im;
                    if (std::string why = try_decode_image(files[i], im); !why.empty()) {
                        std::fprintf(stderr, "error: %s: %s\n", files[i].c_str(), why.c_str());
                        ++failures;
                        continue;
                    }
                    ims.push_back(std::move(im));
                    names.push_back(files[i]);
                }
                if (ims.empty()) continue;
                Tensor x({int64_t(ims.size()), 3, size, size});
                for (size_t i = 0; i < ims.size(); ++i) {
                    const Image r = nearest ? resize_nearest(ims[i], size, size) : resize(ims[i], size, size);
                    preprocess(r, pre.mode, x.data() + int64_t(i) * 3 * size * size, pre.caffe_mean_bgr);
                }
                const Tensor prob = softmax(net.forward(x, Mode::inference));
                Tensor act;
                if (!cam_dir.empty()) act = to_tensor(net.backbone.output());
                const int k = int(classes.size());
                for (size_t i = 0; i < ims.size(); ++i) {
                    const float* p = prob.data() + int64_t(i) * k;
                    const int top = int(std::max_element(p, p + k) - p);
                    nlohmann::json r{{"file", names[i]}, {"class", classes[size_t(top)]}, {"probabilities", nlohmann::json::object()}};
                    for (int c = 0; c < k; ++c) r["probabilities"][classes[size_t(c)]] = p[c];
                    if (!cam_dir.empty()) {
                        const int C = int(act.dim(1)), h = int(act.dim(2)), w = int(act.dim(3));
                        const auto cam = gradcam_map(act.data() + int64_t(i) * C * h * w, C, h, w,
                                                     gradcam_weights(net.head, top, int64_t(h) * w));
                        Image base = ims[i];
                        const int side = std::max(base.width, base.height);
                        if (cam_side > 0 && side > cam_side)
                            base = resize(base, std::max(1, base.width * cam_side / side), std::max(1, base.height * cam_side / side));
                        const Image o = gradcam_overlay(base, cam, h, w);
                        // Two inputs with the same name (from different folders) get distinct files.
                        std::string stem = fs::path(names[i]).stem().string();
                        for (int n = 2; !used.insert(stem).second; ++n) stem = fs::path(names[i]).stem().string() + "-" + std::to_string(n);
                        const std::string png = (fs::path(cam_dir) / (stem + ".gradcam.png")).string();
                        check(stbi_write_png(png.c_str(), o.width, o.height, 3, o.rgb.data(), o.width * 3) != 0, png + ": cannot write");
                        r["gradcam"] = png;
                    }
                    if (json) {
                        out.push_back(r);
                    } else {
                        std::printf("%s: %s", names[i].c_str(), classes[size_t(top)].c_str());
                        for (int c = 0; c < k; ++c) std::printf("  %s %.4f", classes[size_t(c)].c_str(), p[c]);
                        std::printf("%s\n", r.contains("gradcam") ? ("  -> " + r["gradcam"].get<std::string>()).c_str() : "");
                    }
                }
            }
        });
        if (json) std::printf("%s\n", out.dump(2).c_str());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return failures ? 1 : 0;
}
