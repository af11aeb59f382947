// The control for the compile tests: the same shapes, composed correctly, must compile.
#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/layers/conv.hpp"
#include "tlcpu/layers/sequential.hpp"
#include "tlcpu/models/resnet.hpp"

using namespace tlcpu;
using Front = Sequential<Conv2d<3, 64, 7, 2, 3>, BatchNorm2d<64>>;
using Stages = Sequential<Stage<64, 64, 3, 1, Layout::v1>, Stage<256, 128, 4, 2, Layout::v1>>;
static_assert(Front::out_channels == 64);
static_assert(Stages::in_channels == 64 && Stages::out_channels == 512);

int main() {
    Front front;
    Stages stages;
    return front.size + stages.size == 4 ? 0 : 1;
}
