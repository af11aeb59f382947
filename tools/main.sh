#!/usr/bin/env bash
# The project's main job on a fresh machine: install, build, and run the two-phase
# transfer-learning recipe on the real MRI Training folder with apps/train_cpu, in its
# bounded form: no augmentation, so the frozen part of the backbone runs once per image
# (feature caching) and both phases (up to 20 epochs each, with the recipe's callbacks)
# train from that cache. Outputs go to runs/main (report.html, metrics.json,
# best.safetensors, ...). Extra arguments go to train_cpu; the full recipe with
# augmentation is `bash tools/main.sh --augment`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j2 --target train_cpu evaluate
shared=${TLCPU_SHARED:-../shared}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} ./build/apps/train_cpu \
  --data "$shared/data/brain-tumor-mri/Training" \
  --weights "$shared/weights/resnet50-imagenet-caffe-partial.safetensors" \
  --out runs/main --no-augment "$@"
