#!/usr/bin/env bash
# The project's one test command (README and .ci/run both use this file).
# Run from anywhere; it works in the repository root. The build dirs are the clone's own
# build*/, so a fresh clone always gets fresh ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's wall time goes to stderr, so a slow CI says where its minutes went.
t0=$SECONDS
stage() { echo "test.sh: [$((SECONDS - t0)) s] $*" >&2; }
stage "install-deps"
bash tools/install-deps.sh
# With MPI, so the data-parallel tests (CTest label mpi) run too; the core needs none. This
# Release tree builds the apps and runs every test but the doctest suite (install, compile,
# end-to-end, crash drill, MPI, lessons, fuzz replays, and the suite's int8 cases); the
# suite runs in the sanitizer tree below, since building it twice would not fit CI's time.
# -O2 here, not the -O3 users build with: these tests check results, not speed, and -O2
# compiles faster (train_cpu 258 s vs 382 s, before the layers' shared cores; the whole
# Release build 312 s vs 377-418 s after them). Without -ffast-math or -march the two give
# the same bits (g++ reorders no float arithmetic at either level; train_cpu with
# augmentation, 2 + 1 epochs on 96 images: the same weight fingerprints every epoch); -O3 is
# what makes tlcpu's own loops fast (bench_augment: preprocessing 2.3x, augmentation 1.2x
# faster than at -O2).
stage "Release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" -DTLCPU_WITH_MPI=ON \
  -DTLCPU_BUILD_DOCTEST=OFF -DTLCPU_BUILD_INT8_TESTS=ON -DTLCPU_BUILD_BENCH=OFF
# One command per line: under set -e a failure inside an `a && b` list does not stop the
# script, so a broken build would have skipped its tests and still ended green.
cmake --build build -j2
stage "Release tests"
# Two at a time: many are single-threaded (a compile, the consumer build, one-rank MPI, the
# fuzz replays) and would leave a core idle. The crash drill, whose kills are timed, still
# runs alone (RUN_SERIAL in tests/CMakeLists.txt); the MPI tests' timeouts are 17x or more
# what they took two at a time.
ctest --test-dir build --output-on-failure -j2
# The default build has no MPI: compile train_cpu without it (one translation unit that
# includes the whole core), so nothing outside dist/ comes to need MPI unnoticed; and the
# benchmarks, so they keep compiling (bench_mpi, which needs MPI, is left out of CI). -O0:
# this checks that they compile and link; at -O3 train_cpu alone took three minutes of CI.
stage "train_cpu and bench without MPI"
cmake -S . -B build-nompi -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-O0 -DTLCPU_WITH_MPI=OFF
cmake --build build-nompi -j2 --target train_cpu bench_resnet50 bench_augment
# The doctest suite (unit and fixture) and the fuzz replays under AddressSanitizer,
# LeakSanitizer and UBSan; any report fails its test. -O1: -O0 runs the numeric tests several
# times slower, -O2 compiles longer. The suite as two unity sources grouped by measured cost
# (tests/CMakeLists.txt): half the compile time. The int8 cases are left out here, since
# oneDNN 2.6.3 now and then crashes inside libdnnl creating an int8 convolution under ASan
# (tests/CMakeLists.txt); they ran in Release above. test_int8.cpp, which holds nothing
# else, is then not compiled here at all.
stage "sanitizer build"
san="-fsanitize=address,undefined -fno-sanitize-recover=all"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Asan -DCMAKE_CXX_FLAGS_ASAN="-O1 -g1 -fno-omit-frame-pointer $san" \
  -DCMAKE_EXE_LINKER_FLAGS_ASAN="$san" -DTLCPU_WITH_MPI=OFF -DTLCPU_BUILD_APPS=OFF -DTLCPU_BUILD_BENCH=OFF \
  -DCMAKE_UNITY_BUILD=ON -DTLCPU_DOCTEST_EXCLUDE='*int8*'
cmake --build build-asan -j2 --target tlcpu_tests tlcpu_fuzz_replay_safetensors tlcpu_fuzz_replay_image
stage "sanitizer tests"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -R '^(unit|fixture|fuzz_replay_.*)$'
# The two libFuzzer targets at once, a fixed seed and number of inputs each so the verdict
# repeats (tests/fuzz/run.sh): any finding fails.
stage "fuzzing"
bash tests/fuzz/run.sh build-fuzz
stage "done"
