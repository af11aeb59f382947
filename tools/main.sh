#!/usr/bin/env bash
# The project's main job on a fresh machine: install, build, and run the pretrained
# ResNet-50 on the real MRI training images (apps/forward_cpu; the train_cpu app replaces
# this once it exists). Extra arguments go to forward_cpu, e.g. --per-class 300.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2 --target forward_cpu
shared=${TLCPU_SHARED:-../shared}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} ./build/apps/forward_cpu \
  --data "$shared/data/brain-tumor-mri/Training" \
  --weights "$shared/weights/resnet50-imagenet-caffe-partial.safetensors" "$@"
