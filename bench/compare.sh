#!/usr/bin/env bash
# tlcpu against PyTorch (Debian's python3-torch, same oneDNN), side by side in one run:
# builds Release, then for each round runs every case once in each framework, alternating,
# with the same thread count, and prints the medians over rounds as a table with ratios,
# GFLOP/s and the fraction of this machine's oneDNN matmul ceiling of that precision.
#
#   bash bench/compare.sh [--rounds 3] [--threads N] [--cases "infer_b1 infer_b32 ..."] [--conv direct]
#
# Raw JSON lines go to bench/results/compare-<date>.jsonl, the table to stdout and to
# bench/results/compare-<date>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 threads=$(nproc) conv=winograd
cases="infer_b1 infer_b32 infer_b32_bf16 infer_b32_int8 phase1_b32 phase1_b32_bf16 phase1_b32_int8 phase2_b32 phase2_b32_bf16 phase2_b32_int8 full_b32 full_b32_bf16"
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    --cases) cases=$2; shift 2;;
    --conv) conv=$2; shift 2;;  # tlcpu's f32 3x3 convs: winograd (its default) or direct
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build -j"$(nproc)" --target bench_resnet50 > /dev/null
# oneDNN 2.6 has no bf16 without AVX-512: there the bf16 cases cannot run, and the table says so
bf16=yes
if ! probe=$(./build/bench/bench_resnet50 --case infer_b1_bf16 --reps 1 --warmup 0 2>&1 > /dev/null); then
  [[ $probe == *"bf16 needs a CPU with AVX-512"* ]] || { echo "bf16 probe failed: $probe" >&2; exit 1; }
  bf16=no
  kept=""
  for c in $cases; do [[ $c == *_bf16 ]] || kept="$kept $c"; done
  cases=${kept# }
fi
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
raw=bench/results/compare-$stamp.jsonl
: > "$raw"
export OMP_NUM_THREADS=$threads
for r in $(seq "$rounds"); do
  ./build/bench/bench_resnet50 --case matmul_f32 >> "$raw"
  [ $bf16 = no ] || ./build/bench/bench_resnet50 --case matmul_bf16 >> "$raw"
  ./build/bench/bench_resnet50 --case matmul_int8 >> "$raw"
  for c in $cases; do
    # *_int8 is held to PyTorch's fp32 case of the same name (the issue's yardstick): run
    # that one on PyTorch's side if the list lacks it
    if [[ $c == *_int8 ]]; then
      ./build/bench/bench_resnet50 --case "$c" --conv "$conv" >> "$raw"
      [[ " $cases " == *" ${c%_int8} "* ]] || MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
        /usr/bin/python3 bench/pytorch_reference.py --case "${c%_int8}" --threads "$threads" >> "$raw"
      continue
    fi
    # alternate which framework goes first, so drift on a shared machine hits both
    if [ $((r % 2)) = 1 ]; then order="tlcpu pytorch"; else order="pytorch tlcpu"; fi
    for f in $order; do
      if [ $f = tlcpu ]; then
        ./build/bench/bench_resnet50 --case "$c" --conv "$conv" >> "$raw"
      else
        MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
          /usr/bin/python3 bench/pytorch_reference.py --case "$c" --threads "$threads" >> "$raw"
      fi
    done
  done
  echo "round $r of $rounds done" >&2
done
/usr/bin/python3 - "$raw" "$threads" "$conv" "$bf16" <<'PY' | tee "bench/results/compare-$stamp.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
ceil = {p: med([r["gflops"] for r in rows if r["case"] == f"matmul_{p}"]) for p in ("f32", "bf16", "int8")}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
isa = "AMX" if "amx_tile" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "older"
print(f"ResNet-50, 224 px, {sys.argv[2]} threads; medians of {len([r for r in rows if r['case']=='matmul_f32'])} rounds; CPU: {cpu} ({isa}).")
bf = "n/a" if sys.argv[4] == "no" else f"{ceil['bf16']:.0f} GFLOP/s"
print(f"oneDNN matmul ceiling (4096^3): fp32 {ceil['f32']:.0f} GFLOP/s, bf16 {bf}, int8 {ceil['int8']:.0f} GOP/s")
if sys.argv[4] == "no":
    print("no bf16 rows: oneDNN 2.6 has no bf16 convolution or matmul on this CPU (it needs AVX-512)")
print("*_int8 rows: PyTorch column is its fp32 case of the same name")
timed = [r for r in rows if r["framework"] == "tlcpu" and "img_s" in r]
# winograd_kernel: "onednn", "tlcpu" or "none" (before 2026-11-28 18:30 UTC: true or false)
kernel = {r.get("winograd_kernel") for r in timed}
if sys.argv[3] == "winograd" and timed and kernel <= {False, "none"}:
    print("tlcpu's f32 convolutions all direct, as PyTorch's: no Winograd kernel on this CPU\n")
elif sys.argv[3] == "winograd" and "tlcpu" in kernel:
    print("GFLOP/s: the direct convolutions' count (8.18 GFLOP per image forward) over the time; "
          "tlcpu's f32 3x3 stride-1 convs of 256+ channels (layer3, layer4) run its own Winograd F(2x2, 3x3) "
          "(oneDNN has none on this CPU), as do the weight gradients of those of 64+ channels over 7x7 "
          "(since 2026-11-28 20:25 UTC), which needs fewer multiplies, so its f32 figures can pass the ceiling\n")
elif sys.argv[3] == "winograd":
    print("GFLOP/s: the direct convolutions' count (8.18 GFLOP per image forward) over the time; "
          "tlcpu's f32 3x3 convs run Winograd, which needs fewer, so its f32 figures can pass the ceiling\n")
else:
    print("tlcpu with --conv direct: every convolution direct, as PyTorch's\n")
print("| case | tlcpu img/s | PyTorch img/s | ratio | tlcpu GFLOP/s | of ceiling | tlcpu RSS MB | PyTorch RSS MB |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
cases = []
for r in rows:
    if not r["case"].startswith("matmul") and r["case"] not in cases:
        cases.append(r["case"])
for c in cases:
    t = [r for r in rows if r["case"] == c and r["framework"] == "tlcpu"]
    p = [r for r in rows if r["case"] == c.removesuffix("_int8") and r["framework"] == "pytorch"]
    ti, pi = med([r["img_s"] for r in t]), med([r["img_s"] for r in p])
    g = ti * t[0]["gflop_per_img"] if t else float("nan")
    c_ = ceil["bf16" if c.endswith("bf16") else "int8" if c.endswith("int8") else "f32"]
    print(f"| {c} | {ti:.1f} | {pi:.1f} | {ti / pi:.2f}x | {g:.0f} | {g / c_:.0%} | "
          f"{med([r['peak_rss_mb'] for r in t]):.0f} | {med([r['peak_rss_mb'] for r in p]):.0f} |")
PY
