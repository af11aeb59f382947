#!/usr/bin/env bash
# End to end on a small subset of the real Training folder: train_cpu writes every output,
# they parse, evaluate on the split's validation files agrees with metrics.json, and a
# resumed run continues the history from the weights it logged. Args: BUILD_DIR SHARED_DIR
set -euo pipefail
build=$1 shared=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(--data "$shared/data/brain-tumor-mri/Training"
        --weights "$shared/weights/resnet50-imagenet-caffe-partial.safetensors"
        --max-per-class 12 --size 96 --batch 8 --epochs1 1 --epochs2 1)
args=("${common[@]}" --out "$out/run")
same_json() {  # two JSON files hold the same document
  cmp <(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])))' "$1") \
      <(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])))' "$2")
}
"$build/apps/train_cpu" "${args[@]}" > "$out/train.log"
for f in config.toml split.tsv history.csv best.safetensors checkpoint.safetensors metrics.json report.html; do
  [ -s "$out/run/$f" ] || { echo "missing or empty: $f"; cat "$out/train.log"; exit 1; }
done
"$build/apps/evaluate" --model "$out/run/best.safetensors" --data "$shared/data/brain-tumor-mri/Training" \
  --split "$out/run/split.tsv" --json "$out/eval.json" > "$out/eval.log" 2> "$out/eval.err"
/usr/bin/python3 - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
m, e = json.load(open(f"{out}/run/metrics.json")), json.load(open(f"{out}/eval.json"))
assert m == e, f"metrics.json {m} differs from evaluate {e}"
assert m["n"] == 8 and set(m["per_class"]) == {"glioma", "meningioma", "notumor", "pituitary"}, m
rows = list(csv.DictReader(open(f"{out}/run/history.csv")))
assert [(r["phase"], r["epoch"]) for r in rows] == [("1", "0"), ("2", "0")], rows
split = list(csv.reader(open(f"{out}/run/split.tsv"), delimiter="\t"))
assert split[0] == ["file", "class", "subset"] and len(split) == 1 + 48, len(split)
import tomllib
cfg = tomllib.load(open(f"{out}/run/config.toml", "rb"))
# Defaults that are flags must be written as they were used, or a rerun from config.toml differs.
assert cfg["augment"] is True and cfg["flip"] is True and cfg["resume"] is False, cfg
html = open(f"{out}/run/report.html").read()
assert "<svg" in html and "data:image/png;base64" in html and "not test accuracy" in html
PY
# Evaluated on other kernels than it trained on (an AVX-only CPU, as oneDNN is told to see
# this one), it says its figures may differ from metrics.json's; on the same ones, nothing.
ONEDNN_MAX_CPU_ISA=AVX "$build/apps/evaluate" --model "$out/run/best.safetensors" --data "$shared/data/brain-tumor-mri/Training" \
  --split "$out/run/split.tsv" > /dev/null 2> "$out/eval_avx.err"
grep -qE "^note: .*run/best.safetensors trained on oneDNN's [a-z0-9_]+ kernels; this CPU runs its avx ones, so results can differ slightly from training's$" \
  "$out/eval_avx.err" || { echo "no note on other kernels"; cat "$out/eval_avx.err"; exit 1; }
! grep -q "kernels" "$out/eval.err" || { echo "a note on the kernels it trained on"; cat "$out/eval.err"; exit 1; }
# predict on four validation images and one text file named .jpg: every real image gets a
# class, probabilities summing to 1 and a Grad-CAM PNG; the bad file is named, exit code 1.
mapfile -t val < <(awk -F'\t' '$3 == "val" {print $1}' "$out/run/split.tsv" | head -4)
echo "not an image" > "$out/fake.jpg"
set +e
"$build/apps/predict" --model "$out/run/best.safetensors" --json --gradcam "$out/cams" \
  "${val[@]/#/$shared/data/brain-tumor-mri/Training/}" "$out/fake.jpg" > "$out/predict.json" 2> "$out/predict.err"
rc=$?
set -e
[ $rc = 1 ] || { echo "predict exit code $rc, expected 1"; cat "$out/predict.err"; exit 1; }
grep -q "fake.jpg: not a decodable image" "$out/predict.err" || { cat "$out/predict.err"; exit 1; }
/usr/bin/python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/predict.json"))
assert len(r) == 4, r
for x in r:
    p = x["probabilities"]
    assert set(p) == {"glioma", "meningioma", "notumor", "pituitary"} and abs(sum(p.values()) - 1) < 1e-4, x
    assert x["class"] == max(p, key=p.get), x
    png = open(x["gradcam"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, x["gradcam"]
PY
# A decoded-image cap below what the subset needs (48 x 96 x 96 x 3 bytes): the images are
# decoded from disk every epoch instead, with a notice, and train to the same bits.
"$build/apps/train_cpu" "${common[@]}" --out "$out/capped" --decode-mb 1 > "$out/capped.log" 2>&1 \
    || { echo "train_cpu failed over --decode-mb"; cat "$out/capped.log"; exit 1; }
data="$shared/data/brain-tumor-mri/Training"
grep -qxF "tlcpu: notice: $data: decoding 48 images at 96x96 needs 1.3 MB, over the cap of 1.0 MB; the images are checked now and decoded from disk again at every read instead of kept in memory (slower, memory stays bounded)" "$out/capped.log" \
    && grep -q "decoded in .* (0 unreadable, 0 excluded), streamed from disk every epoch;" "$out/capped.log" \
    || { cat "$out/capped.log"; exit 1; }
/usr/bin/python3 - "$out/run" "$out/capped" <<'PY'
import json, struct, sys
def tensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
for f in ("best.safetensors", "checkpoint.safetensors"):
    assert tensors(f"{sys.argv[1]}/{f}") == tensors(f"{sys.argv[2]}/{f}"), f"{f}: streamed images trained otherwise"
assert json.load(open(f"{sys.argv[1]}/metrics.json")) == json.load(open(f"{sys.argv[2]}/metrics.json"))
PY

# Bad input at the apps' level (README's matrix): an output folder that cannot be created
# (root ignores permissions, so a path through a regular file), and evaluate on a folder
# whose classes are not the model's.
touch "$out/file.txt"
set +e
"$build/apps/train_cpu" "${common[@]}" --out "$out/file.txt/run" > /dev/null 2> "$out/unwritable.err"
rc=$?
mkdir -p "$out/other/a" "$out/other/b"
cp "$data/glioma/Tr-gl_0121.jpg" "$out/other/a/"
cp "$data/notumor/Tr-no_1023.jpg" "$out/other/b/"
"$build/apps/evaluate" --model "$out/run/best.safetensors" --data "$out/other" > /dev/null 2> "$out/classes.err"
rc2=$?
set -e
[ $rc = 1 ] && [ "$(cat "$out/unwritable.err")" = "error: tlcpu: $out/file.txt/run: cannot create the output folder (Not a directory)" ] \
    || { echo "unwritable --out: exit $rc"; cat "$out/unwritable.err"; exit 1; }
[ $rc2 = 1 ] && [ "$(cat "$out/classes.err")" = "error: tlcpu: $out/other: class folders (a, b) differ from the model's classes (glioma, meningioma, notumor, pituitary)" ] \
    || { echo "evaluate on other classes: exit $rc2"; cat "$out/classes.err"; exit 1; }

# Without augmentation both phases train from the cached output of the frozen prefix, here
# an int8 one: calibrated, cached as u8 (48 x 1024 x 6 x 6 bytes, a quarter of f32's 7 MB),
# and evaluate, reading the scales from best.safetensors, must agree with metrics.json.
"$build/apps/train_cpu" "${common[@]}" --out "$out/cached" --no-augment --frozen-precision int8 --calibration-images 16 > "$out/cached.log"
grep -q "int8: frozen blocks calibrated on 16 training images" "$out/cached.log" || { cat "$out/cached.log"; exit 1; }
grep -q "feature cache: the frozen prefix's output (2 MB)" "$out/cached.log" || { cat "$out/cached.log"; exit 1; }
grep -qx "augment=false" "$out/cached/config.toml" && grep -qx "flip=true" "$out/cached/config.toml"
"$build/apps/evaluate" --model "$out/cached/best.safetensors" --data "$shared/data/brain-tumor-mri/Training" \
  --split "$out/cached/split.tsv" --json "$out/cached_eval.json" > /dev/null
same_json "$out/cached/metrics.json" "$out/cached_eval.json"

# The model file records its int8 weights' bits (8 with VNNI, 7 without). A file that says 7
# runs 7 anywhere; one that says 8 runs 7 without VNNI, with a note; anything else is refused.
# Copies of best.safetensors and checkpoint.safetensors say 7, 8 or 9 (same header length).
bits=$(sed -n 's/^int8: frozen blocks calibrated on 16 training images in .* s; \([78]\)-bit weights$/\1/p' "$out/cached.log")
[ -n "$bits" ] || { echo "no weight bits in the int8 log"; cat "$out/cached.log"; exit 1; }
mkdir "$out/bits"
/usr/bin/python3 - "$out/cached" "$bits" "$out/bits" <<'PY'
import json, re, struct, sys
run, bits, to = sys.argv[1:]
for name in ("best", "checkpoint"):
    raw = open(f"{run}/{name}.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n]
    assert json.loads(header)["__metadata__"]["int8_weight_bits"] == bits, header[:200]
    for b in "789":
        swapped, k = re.subn(rb'("int8_weight_bits"\s*:\s*")' + bits.encode() + b'"', rb"\g<1>" + b.encode() + b'"', header)
        assert k == 1 and len(swapped) == n
        open(f"{to}/{name}{b}.safetensors", "wb").write(raw[:8] + swapped + raw[8 + n:])
PY
mapfile -t val < <(awk -F'\t' -v d="$shared/data/brain-tumor-mri/Training" '$3 == "val" {print d "/" $1}' "$out/cached/split.tsv" | head -4)
[ ${#val[@]} = 4 ] || { echo "no validation files in split.tsv"; exit 1; }
predict_json() {  # model -> probabilities of a few validation images
  "$build/apps/predict" --model "$1" --json "${val[@]}" 2> "$out/bits/predict.err" || { cat "$out/bits/predict.err"; exit 1; }
}
p7=$(predict_json "$out/bits/best7.safetensors")
p8=$(predict_json "$out/bits/best8.safetensors")
grep -q "probabilities" <<< "$p7" || { echo "predict: $p7"; exit 1; }
# Under AVX2 (as oneDNN is told to see any CPU) a file saying 8 runs 7, noted.
ONEDNN_MAX_CPU_ISA=AVX2 "$build/apps/evaluate" --model "$out/bits/best8.safetensors" --data "$shared/data/brain-tumor-mri/Training" \
  --split "$out/cached/split.tsv" --json "$out/bits/eval8.json" > /dev/null 2> "$out/bits/eval8.err" \
  || { cat "$out/bits/eval8.err"; exit 1; }
grep -qF "trained its int8 blocks with 8-bit weights (a CPU with VNNI); this CPU has no VNNI, so they run with 7-bit weights" "$out/bits/eval8.err" \
  || { echo "no note on 8-bit weights without VNNI"; cat "$out/bits/eval8.err"; exit 1; }
if [ "$bits" = 7 ]; then  # no VNNI here: both files run 7, as the run trained
  [ "$p7" = "$p8" ] || { echo "7 and 8 differ without VNNI"; exit 1; }
  same_json "$out/cached/metrics.json" "$out/bits/eval8.json"
else  # VNNI: the file saying 7 runs other weights than the one saying 8
  [ "$p7" != "$p8" ] || { echo "a file saying 7 ran as 8 with VNNI"; exit 1; }
fi
rc5=0
"$build/apps/evaluate" --model "$out/bits/best9.safetensors" --data "$shared/data/brain-tumor-mri/Training" \
  --split "$out/cached/split.tsv" > /dev/null 2> "$out/bits/eval9.err" || rc5=$?
[ $rc5 = 1 ] && grep -qF "best9.safetensors: int8_weight_bits '9' (7 or 8)" "$out/bits/eval9.err" \
  || { echo "evaluate with 9 bits: exit $rc5"; cat "$out/bits/eval9.err"; exit 1; }
# A resume keeps the run's bits: 7 anywhere; 8 refused without VNNI (AVX2 as oneDNN sees it);
# 9 refused as in evaluate.
cp -r "$out/cached" "$out/resumed"
cp "$out/bits/checkpoint8.safetensors" "$out/resumed/checkpoint.safetensors"
rc6=0
ONEDNN_MAX_CPU_ISA=AVX2 "$build/apps/train_cpu" "${common[@]}" --out "$out/resumed" --no-augment --frozen-precision int8 \
  --calibration-images 16 --resume > /dev/null 2> "$out/bits/resume8.err" || rc6=$?
[ $rc6 = 1 ] && grep -qF "checkpoint.safetensors: the run's int8 blocks have 8-bit weights, which this CPU (no VNNI) cannot run exactly" "$out/bits/resume8.err" \
  || { echo "resume of an 8-bit run under AVX2: exit $rc6"; cat "$out/bits/resume8.err"; exit 1; }
cp "$out/bits/checkpoint9.safetensors" "$out/resumed/checkpoint.safetensors"
rc7=0
"$build/apps/train_cpu" "${common[@]}" --out "$out/resumed" --no-augment --frozen-precision int8 \
  --calibration-images 16 --resume > /dev/null 2> "$out/bits/resume9.err" || rc7=$?
[ $rc7 = 1 ] && grep -qF "checkpoint.safetensors: int8_weight_bits '9' (7 or 8)" "$out/bits/resume9.err" \
  || { echo "resume with 9 bits: exit $rc7"; cat "$out/bits/resume9.err"; exit 1; }
cp "$out/bits/checkpoint7.safetensors" "$out/resumed/checkpoint.safetensors"
"$build/apps/train_cpu" "${common[@]}" --out "$out/resumed" --no-augment --frozen-precision int8 --calibration-images 16 \
  --epochs2 2 --resume > "$out/bits/resume7.log"
grep -q "^int8: frozen blocks calibrated on 16 training images in .* s; 7-bit weights$" "$out/bits/resume7.log" \
  || { cat "$out/bits/resume7.log"; exit 1; }

# bf16 on a CPU without AVX-512 (as oneDNN is told to see this one) is refused up front.
rc4=0
ONEDNN_MAX_CPU_ISA=AVX2 "$build/apps/train_cpu" "${common[@]}" --out "$out/bf16_avx2" --precision bf16 > /dev/null 2> "$out/bf16_avx2.err" || rc4=$?
[ $rc4 = 1 ] && grep -qF "bf16 needs a CPU with AVX-512 (oneDNN 2.6 has no bf16 convolution without it)" "$out/bf16_avx2.err" \
    || { echo "bf16 under AVX2: exit $rc4"; cat "$out/bf16_avx2.err"; exit 1; }

# A resume with the other conv algorithm could not give an uninterrupted run's bits: refused,
# leaving the run as it was (config.toml too).
rc3=0
cp "$out/run/config.toml" "$out/config.before"
"$build/apps/train_cpu" "${args[@]}" --epochs2 2 --resume --conv direct > /dev/null 2> "$out/conv.err" || rc3=$?
[ $rc3 = 1 ] && grep -qF "checkpoint.safetensors: the run trained with --conv winograd; resume it with the same (this call has --conv direct)" "$out/conv.err" \
    || { echo "resume with another --conv: exit $rc3"; cat "$out/conv.err"; exit 1; }
cmp "$out/config.before" "$out/run/config.toml"
# Another seed carves another split: refused, or validation images could be ones it trained
# on; nothing rewritten, no note about the seed's bits (the refusal comes first).
rc8=0
cp "$out/run/split.tsv" "$out/split.before"
"$build/apps/train_cpu" "${args[@]}" --epochs2 2 --resume --seed 2 > /dev/null 2> "$out/seed.err" || rc8=$?
[ $rc8 = 1 ] && grep -qE "run/split.tsv: this call carves another split than the run did \(files in the other subset: [1-9][0-9]*, new: 0, gone: 0\)" "$out/seed.err" \
  && ! grep -q "^note:" "$out/seed.err" || { echo "resume with another split: exit $rc8"; cat "$out/seed.err"; exit 1; }
cmp "$out/config.before" "$out/run/config.toml" && cmp "$out/split.before" "$out/run/split.tsv"
# A split.tsv that a later run wrote (started here without --resume, stopped before its first
# checkpoint) does not make the checkpoint's split: the checkpoint records its own.
"$build/apps/train_cpu" "${common[@]}" --seed 2 --epochs1 1 --epochs2 0 --out "$out/seed2" > /dev/null
cp -r "$out/run" "$out/stale" && cp "$out/seed2/split.tsv" "$out/stale/split.tsv"
rc9=0
"$build/apps/train_cpu" "${common[@]}" --seed 2 --epochs2 2 --resume --out "$out/stale" > /dev/null 2> "$out/stale.err" || rc9=$?
[ $rc9 = 1 ] && grep -qF "stale/checkpoint.safetensors: the run trained on another split than this call carves and $out/stale/split.tsv lists (a later run's, started in this folder without --resume?)" "$out/stale.err" \
  || { echo "resume on a later run's split.tsv: exit $rc9"; cat "$out/stale.err"; exit 1; }
# Another batch and instruction set go on, each with a note (one if the run's was avx too);
# nothing else differs, so no other note.
meta() {  # a safetensors file's metadata value
  /usr/bin/python3 -c 'import json, struct, sys; f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; print(json.loads(f.read(n))["__metadata__"][sys.argv[2]])' "$1" "$2"
}
isa=$(meta "$out/run/checkpoint.safetensors" cpu_isa)
notes=2 && [ "$isa" = avx ] && notes=1
ONEDNN_MAX_CPU_ISA=AVX "$build/apps/train_cpu" "${args[@]}" --epochs2 2 --resume --batch 4 > "$out/resume.log" 2> "$out/resume.err"
grep -q "resuming phase 2 after epoch 1" "$out/resume.log" || { cat "$out/resume.log"; exit 1; }
grep -qF "checkpoint.safetensors: the run trained with batch 8, this call has batch 4: it goes on, but its bits will differ" "$out/resume.err" \
  && { [ $notes = 1 ] || grep -qF "the run trained with oneDNN's $isa kernels, this call has oneDNN's avx kernels" "$out/resume.err"; } \
  && [ "$(grep -c '^note: ' "$out/resume.err")" = $notes ] || { echo "resume's notes:"; cat "$out/resume.err"; exit 1; }
# Its checkpoints keep saying so (and a later resume repeats it: last, below).
diverged="batch 8 -> batch 4" && [ $notes = 2 ] && diverged+="; oneDNN's $isa kernels -> oneDNN's avx kernels"
[ "$(meta "$out/run/checkpoint.safetensors" diverged)" = "$diverged" ] || { meta "$out/run/checkpoint.safetensors" diverged; exit 1; }
/usr/bin/python3 - "$out" <<'PY'
import csv, re, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(f"{out}/run/history.csv")))
assert [(r["phase"], r["epoch"]) for r in rows] == [("1", "0"), ("2", "0"), ("2", "1")], rows
# The resumed run starts from the weights the history's last epoch ended with, bit for bit.
resumed = re.search(r"resuming phase 2 after epoch 1, fingerprint ([0-9a-f]{16})", open(f"{out}/resume.log").read()).group(1)
assert resumed == rows[1]["fingerprint"] != rows[2]["fingerprint"], (resumed, rows)
PY
# A later resume with the resumed run's settings: the earlier change's note, alone.
ONEDNN_MAX_CPU_ISA=AVX "$build/apps/train_cpu" "${args[@]}" --epochs2 2 --resume --batch 4 > /dev/null 2> "$out/resume2.err"
[ "$(cat "$out/resume2.err")" = "note: $out/run/checkpoint.safetensors: an earlier resume changed $diverged, so its bits already differ from an uninterrupted run's" ] \
  || { echo "a later resume's note:"; cat "$out/resume2.err"; exit 1; }
echo "e2e: train_cpu, evaluate and resume agree"
