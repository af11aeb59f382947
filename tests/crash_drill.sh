#!/usr/bin/env bash
# Crash drill: train_cpu killed with SIGKILL and resumed until it finishes must end with the
# same weights, bit for bit, as a run never interrupted, and the history must hold each
# epoch once, with the same weights' fingerprint after each. Every checkpoint left behind
# by a kill must load. Two kinds of kills:
# - at random moments (start-up, epochs, validation, sometimes a checkpoint write);
# - inside a checkpoint or best-model write, at a chosen write(), fsync() or rename() of its
#   temporary file, injected by strace; and the same write failing with ENOSPC (a full
#   disk), which must stop the run with an error naming the file and leave the previous
#   checkpoint as it was.
# Args: BUILD_DIR SHARED_DIR [KILLS]
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
  # Somewhere in 15-70% of what is left of an uninterrupted run's time (its share of the 5
  # epochs not yet checkpointed), so kills land in every part of it (start-up, epochs,
  # validation, checkpoint writes) while each resumed run still advances, and a resumed run
  # is not done before its kill even when the machine's load changes.
  left=5
  [ -f "$run/checkpoint.safetensors" ] && left=$((5 - $(/usr/bin/python3 -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read(1 << 20)
m = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]
print(int(m["epochs_done"]) + (3 if m["phase"] == "2" else 0))' "$run/checkpoint.safetensors")))
  [ $left -ge 1 ] || left=1  # all epochs done: the evaluation and the report are left
  ms=$((clean_ms * left * (15 + RANDOM % 56) / 500))
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
# Weights, history and metrics of a finished run against the uninterrupted one.
same_as_clean() {
/usr/bin/python3 - "$out/clean" "$1" "$2" <<'PY'
import csv, json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
clean, killed, what = sys.argv[1:]
for f in ("best.safetensors", "checkpoint.safetensors"):
    a, b = tensors(f"{clean}/{f}"), tensors(f"{killed}/{f}")
    assert a.keys() == b.keys(), f"{what}: {f}: tensor names differ"
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, f"{what}: {f}: {len(diff)} tensors differ after kills and resumes, e.g. {diff[:3]}"
rows = lambda d: [(r["phase"], r["epoch"], r["loss"], r["val_loss"], r["fingerprint"]) for r in csv.DictReader(open(f"{d}/history.csv"))]
assert all(len(r[4]) == 16 and int(r[4], 16) >= 0 for r in rows(clean)), f"{what}: fingerprints missing: {rows(clean)}"
assert len({r[4] for r in rows(clean)}) == len(rows(clean)), f"{what}: an epoch left the weights as they were: {rows(clean)}"
assert rows(clean) == rows(killed), f"{what}: history differs:\n{rows(clean)}\n{rows(killed)}"
assert json.load(open(f"{clean}/metrics.json")) == json.load(open(f"{killed}/metrics.json")), what
print(f"crash drill: {what}: weights, history (every epoch's fingerprint too) and metrics identical to the uninterrupted run")
PY
}
same_as_clean "$run" "random kills"

# Kills inside a checkpoint write. The temporary file is "<file>.tmp-<pid>", so strace can
# select its syscalls (-P) only once the pid is known: train_cpu starts as a subshell that
# waits on a fifo, strace attaches to it (the main thread alone, which writes every file),
# and only then does it exec train_cpu. `traced RUN_DIR FILES [STRACE_ARGS...]` runs it to
# the end, a kill or an error ($pid and $rc tell which), tracing the saves of FILES
# ("checkpoint", "best" or both): injections count the calls on these files only.
traced() {
    local run=$1 files=$2 paths=()
    shift 2
    local resume=()
    [ -f "$run/checkpoint.safetensors" ] && resume=(--resume)
    rm -f "$out/go" && mkfifo "$out/go"
    (read -r _ < "$out/go" && exec "$build/apps/train_cpu" "${args[@]}" --out "$run" "${resume[@]}") \
        > "$out/traced.out" 2> "$out/traced.err" &
    pid=$!
    for f in $files; do paths+=(-P "$run/$f.safetensors.tmp-$pid"); done
    strace -qq -p "$pid" -e trace=write,fsync,rename -y -o "$out/strace.log" "${paths[@]}" "$@" &
    local tracer=$!
    for _ in $(seq 500); do
        [ "$(awk '/^TracerPid/ {print $2}' "/proc/$pid/status")" = "$tracer" ] && break
        sleep 0.01
    done
    [ "$(awk '/^TracerPid/ {print $2}' "/proc/$pid/status")" = "$tracer" ] || { echo "strace did not attach"; exit 1; }
    echo go > "$out/go"
    rc=0
    wait "$pid" 2> /dev/null || rc=$?
    wait "$tracer" || true
    cat "$out/traced.out" "$out/traced.err" >> "$out/traced.log"
}
# What is left after a kill must open (the model, then the missing data folder is the error),
# and be the checkpoint after epoch $2 of phase $3.
loads() {
    "$build/apps/evaluate" --model "$1" --data /nonexistent > /dev/null 2> "$out/probe.err" || true
    grep -q "/nonexistent: no such folder" "$out/probe.err" || { echo "$1 does not load:"; cat "$out/probe.err"; exit 1; }
    [ -z "${2:-}" ] || /usr/bin/python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
m = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])["__metadata__"]
assert (m["epochs_done"], m["phase"]) == (sys.argv[2], sys.argv[3]), f"{sys.argv[1]}: {m['phase']}/{m['epochs_done']}"
PY
}
# Finishes a killed run with plain resumes and holds it to the uninterrupted one.
finish() {
    "$build/apps/train_cpu" "${args[@]}" --out "$1" --resume >> "$out/traced.log" 2>&1 \
        || { echo "$2: the resume failed"; tail -20 "$out/traced.log"; exit 1; }
    same_as_clean "$1" "$2"
}

# The uninterrupted run once more, traced, to count the write() calls of each save: every
# kill below is placed by these counts, so they follow the files' layout as it changes.
traced "$out/counted" "checkpoint best"
[ $rc = 0 ] || { echo "the traced run failed"; tail -20 "$out/traced.log"; exit 1; }
same_as_clean "$out/counted" "a run under strace"
# "ckpt 812 812 ..." and "best 812 ...": writes per save, in order
counts=$(/usr/bin/python3 - "$out/strace.log" <<'PY'
import re, sys
saves = {"checkpoint": [], "best": []}
n = {"checkpoint": 0, "best": 0}
for line in open(sys.argv[1]):
    m = re.match(r'(write|fsync|rename)\((?:\d+<)?"?[^>"]*/(checkpoint|best)\.safetensors\.tmp-', line)
    if not m:
        continue
    call, f = m.groups()
    if call == "write":
        n[f] += 1
    elif call == "rename":
        saves[f].append(n[f])
        n[f] = 0
print("ckpt", *saves["checkpoint"])
print("best", *saves["best"])
PY
)
read -r -a ckpt <<< "$(grep ^ckpt <<< "$counts")"
read -r -a best <<< "$(grep ^best <<< "$counts")"
echo "writes per save: checkpoint ${ckpt[*]:1}; best ${best[*]:1}"
[ ${#ckpt[@]} -ge 5 ] && [ ${#best[@]} -ge 3 ] || { echo "too few saves to place the kills"; cat "$out/strace.log" | tail; exit 1; }

# 1. Halfway through the writes of the second checkpoint: the first one must survive.
at=$((ckpt[1] + ckpt[2] / 2))
traced "$out/k1" checkpoint -e inject=write:signal=KILL:when=$at
[ $rc = 137 ] || { echo "kill at checkpoint write $at did not land (exit $rc)"; tail "$out/traced.log"; exit 1; }
loads "$out/k1/checkpoint.safetensors" 1 1
cp "$out/k1/checkpoint.safetensors" "$out/epoch1.safetensors"
finish "$out/k1" "SIGKILL in write() $at, inside the second checkpoint"
# 2. At the fsync of the second checkpoint: all written, nothing renamed.
traced "$out/k2" checkpoint -e inject=fsync:signal=KILL:when=2
[ $rc = 137 ] || { echo "kill at the second checkpoint's fsync did not land (exit $rc)"; exit 1; }
cmp "$out/k2/checkpoint.safetensors" "$out/epoch1.safetensors"
finish "$out/k2" "SIGKILL in fsync() of the second checkpoint"
# 3. At the rename of phase 2's first checkpoint over phase 1's last.
traced "$out/k3" checkpoint -e inject=rename:signal=KILL:when=4
[ $rc = 137 ] || { echo "kill at the fourth checkpoint's rename did not land (exit $rc)"; exit 1; }
loads "$out/k3/checkpoint.safetensors" 3 1
finish "$out/k3" "SIGKILL in rename() of phase 2's first checkpoint"
# 4. Halfway through the last best-model write: the best model before it must survive.
nb=$((${#best[@]} - 1)) at=$((best[-1] / 2))
for ((i = 1; i < nb; i++)); do at=$((at + best[i])); done
traced "$out/k4" best -e inject=write:signal=KILL:when=$at
[ $rc = 137 ] || { echo "kill at best-model write $at did not land (exit $rc)"; exit 1; }
loads "$out/k4/best.safetensors"
finish "$out/k4" "SIGKILL in write() $at, inside best-model save $nb of $nb"
# 5. The disk fills up halfway through the second checkpoint: every write from there fails.
at=$((ckpt[1] + ckpt[2] / 2))
traced "$out/full" checkpoint -e inject=write:error=ENOSPC:when=$at+
want="error: tlcpu: $out/full/checkpoint.safetensors: cannot write '$out/full/checkpoint.safetensors.tmp-$pid': No space left on device"
[ $rc = 1 ] && grep -qxF "$want" "$out/traced.err" \
    || { echo "disk full: exit $rc, expected 1 and: $want"; cat "$out/traced.err"; exit 1; }
cmp "$out/full/checkpoint.safetensors" "$out/epoch1.safetensors"  # the previous checkpoint, as it was
[ -z "$(ls "$out/full" | grep '\.tmp-')" ] || { echo "disk full: temporary files left: $(ls "$out/full")"; exit 1; }
finish "$out/full" "ENOSPC from write() $at on, then a resume"
