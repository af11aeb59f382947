// Must NOT compile: the conv makes 64 channels, the BatchNorm takes 32.
#include "tlcpu/layers/batchnorm.hpp"
#include "tlcpu/layers/conv.hpp"
#include "tlcpu/layers/sequential.hpp"

using Net = tlcpu::Sequential<tlcpu::Conv2d<3, 64, 7, 2, 3>, tlcpu::BatchNorm2d<32>>;

int main() {
    Net net;
    return Net::out_channels == 32 ? 0 : 1;
}
