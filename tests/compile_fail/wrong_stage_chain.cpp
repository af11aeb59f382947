// Must NOT compile: the first stage ends with 4 * 64 = 256 channels, the second takes 128.
#include "tlcpu/models/resnet.hpp"

using namespace tlcpu;
using Net = Sequential<Stage<64, 64, 3, 1, Layout::v1>, Stage<128, 128, 4, 2, Layout::v1>>;

int main() {
    Net net;
    return Net::out_channels == 512 ? 0 : 1;
}
