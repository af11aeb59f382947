// Chapter 1: from a JPEG file to the numbers the network sees.
#include <cstring>

#include <tlcpu/data/loader.hpp>

#include "lesson.hpp"

void lesson::decode() {
    const std::string file = training(the_image);
    const Image im = decode_image(file);
    const int r = im.height / 2, c = im.width / 2;
    const uint8_t* p = &im.rgb[(size_t(r) * im.width + c) * 3];
    std::printf("%s: %dx%d pixels, %d channels in the file, decoded to RGB bytes\n", the_image.c_str(), im.width,
                im.height, im.channels);
    std::printf("pixel (row %d, col %d): R %d G %d B %d\n", r, c, p[0], p[1], p[2]);

    const Image small = resize(im, 224, 224);
    const uint8_t* q = &small.rgb[(112 * 224 + 112) * 3];
    std::printf("resized to 224x224 (Mitchell filter, shrinking): pixel (112, 112): R %d G %d B %d\n", q[0], q[1], q[2]);

    const Preprocessing pre = preprocessing_of(io::SafeTensors::open(weights_file()));
    check(pre.mode == Preprocess::caffe, "the weights' metadata asks for caffe preprocessing");
    const auto& mean = pre.caffe_mean_bgr;
    std::printf("caffe preprocessing: channels B, G, R; 0..255 minus the mean B %.4f G %.4f R %.4f; no scaling\n",
                mean[0], mean[1], mean[2]);
    Tensor x({1, 3, 224, 224});
    preprocess(small, pre.mode, x.data(), mean);
    const char* names = "BGR";
    for (int ch = 0; ch < 3; ++ch)
        std::printf("  x[0, %d, 112, 112] = %c %3d - %.4f = %.4f\n", ch, names[ch], q[2 - ch], mean[size_t(ch)],
                    x[(ch * 224 + 112) * 224 + 112]);

    bool exact = true;
    for (int ch = 0; ch < 3; ++ch)
        for (int i = 0; i < 224 * 224; ++i)
            exact &= x[ch * 224 * 224 + i] == float(small.rgb[size_t(i) * 3 + size_t(2 - ch)]) - mean[size_t(ch)];
    check(exact, "all 150,528 inputs are x[c] = pixel[2 - c] - mean[c], bit for bit (channel 0 is blue)");
    const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
    std::printf("input range [%.4f, %.4f]; a black pixel is (%.4f, %.4f, %.4f), not 0\n", *lo, *hi, -mean[0], -mean[1], -mean[2]);
    check(*lo >= -mean[2] && *hi <= 255 - mean[0], "every input lies in [-R mean, 255 - B mean]");

    // train_cpu's own path: the folder decoder and the batch source give these very bits.
    data::ImageFolder folder{training(""), {"glioma"}, {{file, 0}}};
    data::DecodeOptions opt;
    opt.size = 224;
    const data::DecodedSet set = data::decode_folder(folder, opt);
    data::FolderSource src(set, {0}, pre);
    Tensor y;
    std::vector<int> labels;
    src.fill({0}, 0, y, labels);
    check(y.shape() == x.shape() && std::memcmp(y.data(), x.data(), x.bytes()) == 0 && labels == std::vector<int>{0},
          "decode_folder + FolderSource (what train_cpu runs) give the same tensor, label 0 (glioma)");
}
