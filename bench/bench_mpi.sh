#!/usr/bin/env bash
# Data parallelism on this machine: the same global batch as 1 rank x T threads and as
# T ranks x 1 thread (T = nproc), alternating, for each case; medians over rounds of the
# global images per second and of the share of a step that gradient averaging holds up.
#
#   bash bench/bench_mpi.sh [--rounds 3] [--reps 5] [--warmup 2] [--batch 32] [--cases "phase2_c4 phase2"]
#
# Builds bench_mpi in build-mpi/ (Release, TLCPU_WITH_MPI=ON). Raw JSON lines go to
# bench/results/mpi-<date>.jsonl, the table to stdout and bench/results/mpi-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 reps=5 warmup=2 batch=32 cases="phase2_c4 phase2"
threads=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2;;
    --reps) reps=$2; shift 2;;
    --warmup) warmup=$2; shift 2;;
    --batch) batch=$2; shift 2;;
    --cases) cases=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
cmake -S . -B build-mpi -DCMAKE_BUILD_TYPE=Release -DTLCPU_WITH_MPI=ON > /dev/null
cmake --build build-mpi -j"$threads" --target bench_mpi > /dev/null
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
raw=bench/results/mpi-$stamp.jsonl
: > "$raw"
args=(--batch "$batch" --reps "$reps" --warmup "$warmup")
# One rank gets every core unbound (Open MPI would otherwise pin it to one core); T ranks
# get one core each.
one() { OMP_NUM_THREADS=$threads mpirun --bind-to none -np 1 build-mpi/bench/bench_mpi "$@" >> "$raw"; }
many() { OMP_NUM_THREADS=1 mpirun --bind-to core -np "$threads" build-mpi/bench/bench_mpi "$@" >> "$raw"; }
for r in $(seq "$rounds"); do
  for c in $cases; do
    if [ $((r % 2)) = 1 ]; then one --case "$c" "${args[@]}"; many --case "$c" "${args[@]}"
    else many --case "$c" "${args[@]}"; one --case "$c" "${args[@]}"; fi
    many --case "$c" "${args[@]}" --no-overlap
  done
  echo "round $r of $rounds done" >&2
done
/usr/bin/python3 - "$raw" "$threads" "$batch" <<'PY' | tee "bench/results/mpi-$stamp.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"ResNet-50, 224 px, global batch {sys.argv[3]}, {sys.argv[2]} cores; medians of rounds.\n")
print("| case | ranks x threads | overlap | img/s | step s | averaging s | share of step | blocking allreduce alone s | gradient MB |")
print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
keys = []
for r in rows:
    k = (r["case"], r["ranks"], r["threads"], r["overlap"])
    if k not in keys: keys.append(k)
for k in keys:
    g = [r for r in rows if (r["case"], r["ranks"], r["threads"], r["overlap"]) == k]
    f = lambda n: med([r[n] for r in g])
    ov = "yes" if k[3] else "no"
    print(f"| {k[0]} | {k[1]} x {k[2]} | {ov} | {f('img_s'):.1f} | {f('step_s'):.3f} | {f('comm_s'):.4f} | "
          f"{f('comm_share'):.1%} | {f('allreduce_alone_s'):.4f} | {g[0]['grad_bytes'] / 1e6:.1f} |")
PY
