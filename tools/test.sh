#!/usr/bin/env bash
# The project's one test command (README and .ci/run both use this file).
# Run from anywhere; it works in the repository root. The build dirs are the clone's own
# build*/, so a fresh clone always gets fresh ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
# With MPI, so the data-parallel tests (CTest label mpi) run too; the core needs none.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTLCPU_WITH_MPI=ON && cmake --build build -j2 && ctest --test-dir build --output-on-failure
# The default build has no MPI: compile train_cpu without it (one translation unit that
# includes the whole core), so nothing outside dist/ comes to need MPI unnoticed.
cmake -S . -B build-nompi -DCMAKE_BUILD_TYPE=Release -DTLCPU_WITH_MPI=OFF && cmake --build build-nompi -j2 --target train_cpu
# The two libFuzzer targets, 60 s each (tests/fuzz/run.sh): any finding fails.
bash tests/fuzz/run.sh build-fuzz 60
