#!/usr/bin/env bash
# Crash drill: train_cpu killed with SIGKILL at random moments (mid-epoch, mid-validation,
# mid-checkpoint write) and resumed each time until it finishes must end with the same
# weights, bit for bit, as a run never interrupted, and the history must hold each epoch
# once, with the same weights' fingerprint after each. Every checkpoint left behind by a kill must load. Args: BUILD_DIR SHARED_DIR [KILLS]
set -euo pipefail
build=$1 shared=$2 kills=${3:-6}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=(--data "$shared/data/brain-tumor-mri/Training"
      --weights "$shared/weights/resnet50-imagenet-caffe-partial.safetensors"
      --max-per-class 10 --size 64 --batch 4 --epochs1 3 --epochs2 2 --seed 7)
t0=$(date +%s%N)
"$build/apps/train_cpu" "${args[@]}" --out "$out/clean" > "$out/clean.log"
clean_ms=$((($(date +%s%N) - t0) / 1000000))

run="$out/killed"
RANDOM=12345  # the kill moments are random but the same at every CI run
done_=0
for k in $(seq "$kills"); do
  resume=()
  [ -f "$run/checkpoint.safetensors" ] && resume=(--resume)
  "$build/apps/train_cpu" "${args[@]}" --out "$run" "${resume[@]}" >> "$out/killed.log" 2>&1 &
  pid=$!
  # Somewhere in 15-70% of an uninterrupted run's time, so kills land in every part of it
  # (start-up, epochs, validation, checkpoint writes) while each resumed run still advances.
  ms=$((clean_ms * (15 + RANDOM % 56) / 100))
  sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
  if kill -9 "$pid" 2> /dev/null; then
    wait "$pid" 2> /dev/null || true
    echo "kill $k at ${ms} ms: $( [ -f "$run/checkpoint.safetensors" ] && echo "after a checkpoint" || echo "before any checkpoint")" >> "$out/drill.log"
  else
    wait "$pid" || { echo "train_cpu failed on its own"; tail -20 "$out/killed.log"; exit 1; }
    done_=1
    break
  fi
  # What a kill leaves must load: the checkpoint's checksum is verified on open.
  if [ -f "$run/checkpoint.safetensors" ]; then
    "$build/apps/evaluate" --model "$run/checkpoint.safetensors" --data /nonexistent > /dev/null 2> "$out/probe.err" || true
    if grep -q "damaged\|header\|beyond the end" "$out/probe.err"; then
      echo "kill $k left a damaged checkpoint:"; cat "$out/probe.err"; exit 1
    fi
  fi
done
if [ $done_ = 0 ]; then
  resume=()
  [ -f "$run/checkpoint.safetensors" ] && resume=(--resume)
  "$build/apps/train_cpu" "${args[@]}" --out "$run" "${resume[@]}" >> "$out/killed.log" 2>&1 \
    || { echo "the final resume failed"; tail -20 "$out/killed.log"; exit 1; }
fi
echo "uninterrupted run: ${clean_ms} ms"
cat "$out/drill.log" 2> /dev/null || true
# The drill means something only if kills interrupted runs that had a checkpoint to resume.
[ "$(grep -c "after a checkpoint" "$out/drill.log" 2> /dev/null || echo 0)" -ge 2 ] \
  || { echo "fewer than 2 kills landed after a checkpoint: the drill tested nothing"; exit 1; }
/usr/bin/python3 - "$out/clean" "$run" <<'PY'
import csv, json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
clean, killed = sys.argv[1], sys.argv[2]
for f in ("best.safetensors", "checkpoint.safetensors"):
    a, b = tensors(f"{clean}/{f}"), tensors(f"{killed}/{f}")
    assert a.keys() == b.keys(), f"{f}: tensor names differ"
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, f"{f}: {len(diff)} tensors differ after kills and resumes, e.g. {diff[:3]}"
rows = lambda d: [(r["phase"], r["epoch"], r["loss"], r["val_loss"], r["fingerprint"]) for r in csv.DictReader(open(f"{d}/history.csv"))]
assert all(len(r[4]) == 16 and int(r[4], 16) >= 0 for r in rows(clean)), f"fingerprints missing: {rows(clean)}"
assert len({r[4] for r in rows(clean)}) == len(rows(clean)), f"an epoch left the weights as they were: {rows(clean)}"
assert rows(clean) == rows(killed), f"history differs:\n{rows(clean)}\n{rows(killed)}"
assert json.load(open(f"{clean}/metrics.json")) == json.load(open(f"{killed}/metrics.json"))
print(f"crash drill: weights, history (every epoch's fingerprint too) and metrics identical to the uninterrupted run")
PY
