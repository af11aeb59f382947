#!/usr/bin/env bash
# The project's main job on a fresh machine: install, build, and run the two-phase
# transfer-learning recipe on the real MRI Training folder with apps/train_cpu, in its
# bounded form: phase 1 on cached frozen-backbone features (no augmentation), phase 2
# (layer3's last block unfrozen) for 1 epoch. Outputs go to runs/main (report.html,
# metrics.json, best.safetensors, ...). Extra arguments go to train_cpu; the full recipe
# is `bash tools/main.sh --augment --epochs2 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2 --target train_cpu evaluate
shared=${TLCPU_SHARED:-../shared}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} ./build/apps/train_cpu \
  --data "$shared/data/brain-tumor-mri/Training" \
  --weights "$shared/weights/resnet50-imagenet-caffe-partial.safetensors" \
  --out runs/main --no-augment --epochs2 1 "$@"
