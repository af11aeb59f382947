#!/usr/bin/env bash
# Builds the two libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) and runs
# each from the seed corpus and every past finding; fails on any finding. A finding is saved
# as OUT/artifacts/<target>-crash-... : fix the library, then copy it into
# tests/fuzz/regressions/<target>/, where CTest's fuzz_replay_* tests replay it.
# Args: OUT_DIR [SECONDS per target]. Both targets run at once (one core each).
# - Without SECONDS (what CI runs): a fixed seed and a fixed number of inputs per target, so
#   a tree passes or fails the same way on every run and a finding reproduces. (A 60 s run
#   with a random seed once failed CI on a bug no other run had reached.) About a minute on
#   2 cores.
# - With SECONDS: exploration, a new random seed each run (printed; TLCPU_FUZZ_SEED=N
#   repeats one), for as long as asked. Run it for new ground: tools/test.sh does not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
out=$1 secs=${2:-}
mkdir -p "$out" && out=$(cd "$out" && pwd)
# libFuzzer with one seed still varies from run to run: it rereads the corpus folder on a
# timer (-reload), and comparisons of addresses feed its mutation dictionary, so anything
# that moves an address moves the run: address space randomisation (two runs of 100,000
# safetensors inputs with -reload=0 ended at coverage 1,695 and 1,795), and where the stack
# starts, which the lengths of argv and the environment set (the same tree checked out at
# two paths ended at 1,754 and 1,870). So the CI mode turns off -reload and, where the kernel
# allows it, address randomisation (setarch -R); every path the targets see is relative
# (sources compiled from the checkout, corpus copied into OUT_DIR, fuzz_image's scratch
# folder not named after its pid) and their environment fixed (env -i); decoding runs on one
# thread. Measured after: two checkouts at different paths ran the same inputs to the last
# feature (coverage 1,855 and 1,564, features 6,258 and 4,282, in both).
fixed=()
if [ -z "$secs" ]; then
    seed=${TLCPU_FUZZ_SEED:-1} omp=1
    declare -A budget=([safetensors]="-runs=400000 -reload=0" [image]="-runs=8000 -reload=0")
    if setarch -R true 2>/dev/null; then fixed=(setarch -R); else echo "note: setarch -R refused here; runs may vary"; fi
else
    seed=${TLCPU_FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')} omp=${OMP_NUM_THREADS:-1}
    declare -A budget=([safetensors]="-max_total_time=$secs" [image]="-max_total_time=$secs")
fi
echo "fuzzing with -seed=$seed, ${budget[safetensors]} (safetensors), ${budget[image]} (image)"
mkdir -p "$out/artifacts"
cxx=${TLCPU_FUZZ_CXX:-clang++-14}
flags=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Iinclude -I/usr/include/stb -Wall -Wextra -Wno-unknown-pragmas)
# stb's implementation is C code of its own style: its warnings are not ours to fix. The
# input decides only the resizer's sizes, so it gets no coverage feedback, -O2, and no UBSan
# pointer-overflow check (that check alone made its inner loops 12x slower); ASan still
# checks its every access. Without this the image target ran 20 inputs a second.
cd "$src"  # sources by relative paths, which is how they are compiled into the targets
f=tests/fuzz
"$cxx" "${flags[@]}" -w -c $f/stb_instrumented.cpp -o "$out/stb_image.o" &
"$cxx" -std=c++20 -O2 -g -fsanitize=address,undefined -fno-sanitize=pointer-overflow -fno-sanitize-recover=all \
    -I/usr/include/stb -w -DTLCPU_STB_RESIZE -c $f/stb_instrumented.cpp -o "$out/stb_image_resize.o" &
"$cxx" "${flags[@]}" $f/fuzz_safetensors.cpp -o "$out/fuzz_safetensors" &
"$cxx" "${flags[@]}" -c $f/fuzz_image.cpp -o "$out/fuzz_image.o" &
for j in 1 2 3 4; do wait %$j; done
"$cxx" "${flags[@]}" "$out/fuzz_image.o" "$out/stb_image.o" "$out/stb_image_resize.o" -o "$out/fuzz_image"

# The image target lowers the pixel limit to 1 M pixels, so no legitimate decode allocates
# anywhere near 256 MB: a larger malloc means the limit was bypassed. Safetensors inputs are
# copied whole once and decoded to float once, so 256 MB is plenty there too.
# Relative paths and env -i: see the top (the stack's start moves with argv and environment).
run() {
    local t=$1
    rm -rf "$out/corpus-$t" "$out/seeds-$t" "$out/regressions-$t"
    mkdir -p "$out/corpus-$t"  # new inputs go here, not into the repository
    cp -r "$here/corpus/$t" "$out/seeds-$t"
    cp -r "$here/regressions/$t" "$out/regressions-$t"
    (cd "$out" && env -i PATH=/usr/bin:/bin OMP_NUM_THREADS="$omp" TLCPU_FUZZ_SCRATCH=scratch-image \
        "${fixed[@]}" "./fuzz_$t" -seed="$seed" ${budget[$t]} -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout=30 \
        -print_final_stats=1 -artifact_prefix="artifacts/$t-" "corpus-$t" "seeds-$t" "regressions-$t" \
        > "$out/fuzz_$t.log" 2>&1)
}
rc=0
run safetensors & p1=$!
run image & p2=$!
wait $p1 || rc=1
wait $p2 || rc=1
for t in safetensors image; do
    echo "fuzz_$t: $(grep -E '^stat::number_of_executed_units' "$out/fuzz_$t.log" | awk '{print $2}') executions," \
         "$(grep -E '^stat::average_exec_per_sec' "$out/fuzz_$t.log" | awk '{print $2}')/s," \
         "$(grep -oE 'cov: [0-9]+' "$out/fuzz_$t.log" | tail -1)"
done
if [ $rc != 0 ]; then
    for t in safetensors image; do grep -q -E "ERROR|deadly signal|crash-|timeout-|oom-" "$out/fuzz_$t.log" && tail -60 "$out/fuzz_$t.log"; done
    echo "fuzzing found a problem; the input is in $out/artifacts/"
    exit 1
fi
