// summary(): shapes, parameter counts (against the published ResNet-50 figures), trainable
// versus frozen, BatchNorm modes, and the activation figure.
#include <doctest/doctest.h>

#include <memory>

#include "tlcpu/report/summary.hpp"
#include "tlcpu/train/freeze.hpp"

namespace tlcpu_test_summary {

using namespace tlcpu;

namespace {
const SummaryRow& row(const std::vector<SummaryRow>& rows, const std::string& name) {
    for (const auto& r : rows)
        if (r.name == name) return r;
    FAIL("no row named " << name);
    return rows.front();
}
}  // namespace

TEST_CASE("summary: ResNet-50 shapes and parameter counts, frozen and unfrozen") {
    auto net = std::make_unique<Classifier<ResNet50<Layout::v1_5>, 4>>();
    const auto rows = summary_rows(*net, {32, 3, 224, 224});
    CHECK(row(rows, "conv1").out == Shape{32, 64, 112, 112});
    CHECK(row(rows, "maxpool").out == Shape{32, 64, 56, 56});
    CHECK(row(rows, "layer1").out == Shape{32, 256, 56, 56});
    CHECK(row(rows, "layer2.0.conv2").out == Shape{32, 128, 28, 28});  // v1.5: the stride sits in the 3x3
    CHECK(row(rows, "layer2.0.downsample.0").out == Shape{32, 512, 28, 28});
    CHECK(row(rows, "layer3").out == Shape{32, 1024, 14, 14});
    CHECK(row(rows, "layer4.2").out == Shape{32, 2048, 7, 7});
    CHECK(row(rows, "head_pool").out == Shape{32, 2048});
    CHECK(row(rows, "head_fc").out == Shape{32, 4});
    CHECK(row(rows, "layer3").type == "Stage (6 blocks)");

    // torchvision's resnet50 has 25,557,032 parameters; without its fc (2048 x 1000 + 1000)
    // 23,508,032. Keras also counts BN running statistics: 2 x 26,560 channels.
    int64_t backbone_weights = 0, total = 0, trainable = 0;
    for (const auto& r : rows)
        if (r.leaf) {
            total += r.params;
            trainable += r.trainable;
            if (r.name.rfind("head", 0) != 0) backbone_weights += r.weights;
        }
    CHECK(backbone_weights == 23'508'032);
    CHECK(total == 23'508'032 + 53'120 + (2 * 2048 + 2 * 2048) + (2048 * 4 + 4));
    CHECK(trainable == total - 53'120 - 2 * 2048);  // every weight trains by default

    // Freezing the backbone: only the head's weights train, the table says so.
    freeze_all(net->backbone);
    unfreeze(net->backbone, {"layer4.2."});
    const auto after = summary_rows(*net, {32, 3, 224, 224});
    CHECK(row(after, "layer4.1").trainable == 0);
    CHECK(row(after, "layer4.2").trainable == row(after, "layer4.2").weights);
    CHECK(row(after, "layer4").trainable == row(after, "layer4.2").trainable);
    const std::string text = summary(*net, {32, 3, 224, 224}, 2);
    auto line_of = [&](const std::string& name) {
        const size_t at = text.find("\n" + name + " ");
        REQUIRE(at != std::string::npos);
        return text.substr(at + 1, text.find('\n', at + 1) - at - 1);
    };
    CHECK(line_of("layer4.1").find("Bottleneck") != std::string::npos);
    CHECK(line_of("layer4.1").find("frozen") != std::string::npos);
    CHECK(line_of("layer4.2").find("trainable") != std::string::npos);
    CHECK(line_of("head_fc").find("trainable") != std::string::npos);
    CHECK(line_of("conv1").find("frozen") != std::string::npos);  // the stem's layers, shown at depth 2
    CHECK(text.find("running stats") != std::string::npos);  // the backbone's BN
    CHECK(text.find("Total params: 23,577,540") != std::string::npos);
    // Activations: every layer's output once, f32, at batch 32.
    int64_t act = 0;
    for (const auto& r : after)
        if (r.leaf) act += numel(r.out);
    char want[64];
    std::snprintf(want, sizeof want, "Activations at batch 32: %.1f MB", double(act) * 4 / 1e6);
    CHECK(text.find(want) != std::string::npos);
}

TEST_CASE("summary: v1 puts the stride in the 1x1 and the C4 network ends at layer3") {
    auto net = std::make_unique<ResNet50<Layout::v1, 64, Depth::c4>>();
    const auto rows = summary_rows(*net, {1, 3, 224, 224});
    CHECK(row(rows, "layer2.0.conv1").out == Shape{1, 128, 28, 28});
    CHECK(rows.back().out == Shape{1, 1024, 14, 14});
    CHECK(row(rows, "maxpool").out == Shape{1, 64, 56, 56});  // caffe: ceil mode, no padding
}

}  // namespace tlcpu_test_summary
