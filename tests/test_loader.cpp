// The background producer hands out exactly the batches a synchronous fill would make, in
// plan order, reusing its buffers; unplanned loads (validation) are made on the spot.
#include <doctest/doctest.h>

#include <tlcpu/data/loader.hpp>

#include "fixtures.hpp"

namespace tlcpu_test_loader {

using namespace tlcpu;
using namespace tlcpu::data;

TEST_CASE("FolderSource: prefetched batches equal synchronous ones, for every epoch") {
    DecodedSet set;
    set.size = 16;
    set.classes = {"a", "b", "c"};
    // (append: GCC 12 at -O3 sees a false overlap, -Wrestrict, in "f" + to_string(i) + ".png" here)
    for (int i = 0; i < 23; ++i) set.files.push_back({"f" + std::to_string(i).append(".png"), i % 3});
    set.pixels.resize(set.files.size() * 16 * 16 * 3);
    for (size_t i = 0; i < set.pixels.size(); ++i) set.pixels[i] = uint8_t(hash3(1, 2, i));

    AugmentOptions aug;
    aug.rotation = 15, aug.width_shift = 0.1f, aug.height_shift = 0.1f, aug.zoom = 0.1f, aug.horizontal_flip = true;
    Preprocessing pre;
    std::vector<int64_t> train_idx;
    for (int64_t i = 0; i < 20; ++i) train_idx.push_back(i);
    FolderSource src(set, train_idx, pre, aug, 42, 2);
    CHECK(src.size() == 20);

    Tensor x, want;
    std::vector<int> y, want_y;
    const float* previous_buffer = nullptr;
    int reused = 0;
    for (int epoch = 0; epoch < 3; ++epoch) {
        auto order = epoch_order(src.size(), 7, 1, epoch, true);
        std::vector<std::vector<int64_t>> plan;
        for (size_t b = 0; b < order.size(); b += 6)
            plan.emplace_back(order.begin() + long(b), order.begin() + long(std::min(order.size(), b + 6)));
        src.plan(plan, epoch);
        for (const auto& idx : plan) {
            src.load(idx, epoch, x, y);
            src.fill(idx, epoch, want, want_y);
            REQUIRE(x.shape() == want.shape());
            CHECK(std::memcmp(x.data(), want.data(), want.bytes()) == 0);
            CHECK(y == want_y);
            reused += x.data() == previous_buffer;
            previous_buffer = x.data();
        }
    }
    CHECK(reused == 0);  // consecutive batches never share a buffer the caller still holds
    // Augmentation differs between epochs for the same sample; labels do not.
    Tensor e0, e1;
    src.fill({0}, 0, e0, y);
    src.fill({0}, 1, e1, want_y);
    CHECK(std::memcmp(e0.data(), e1.data(), e0.bytes()) != 0);
    CHECK(y == want_y);
    // Unplanned: a load that is not the next planned batch is made synchronously.
    src.load({19, 3}, 5, x, y);
    CHECK(y == std::vector<int>{19 % 3, 3 % 3});
}

}  // namespace tlcpu_test_loader
