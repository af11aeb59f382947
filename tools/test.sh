#!/usr/bin/env bash
# The project's one test command (README and .ci/run both use this file).
# Run from anywhere; it works in the repository root. The build dir is the clone's own
# build/, so a fresh clone always gets a fresh one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
# With MPI, so the data-parallel tests (CTest label mpi) run too; the core needs none.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTLCPU_WITH_MPI=ON && cmake --build build -j2 && ctest --test-dir build --output-on-failure
