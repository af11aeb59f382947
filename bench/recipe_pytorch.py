#!/usr/bin/python3
"""What a tlcpu run of the main job's recipe would take in PyTorch, at PyTorch's measured
step rates on this machine.

The recipe (train_cpu's default, --backbone c4): ResNet-50 through layer3 (1,024 features),
the head (global average pool, BatchNorm1d, Dropout 0.3, Dense 4); phase 1 trains the head
only, phase 2 also layer3's last block (layer3.5) with the backbone's BatchNorm in inference
mode. This script measures, in PyTorch at its best (run it as bench/compare.sh runs
pytorch_reference.py: /usr/bin/python3 and the malloc variables), the img/s of:

  forward    the c4 backbone and head, inference (jit trace + freeze +
             optimize_for_inference, channels_last): a validation batch
  phase1     a phase-1 training step on images (frozen c4 forward, head forward/backward/Adam)
  phase2     a phase-2 training step on images (layer3.5 and the head trainable)
  prefix     the frozen prefix alone (through layer3.4), inference: building a feature cache
  block      layer3.5 alone, inference (phase 1's features from the cache)
  phase1_cached / head_forward
             phase 1 from the whole backbone's cached output: the head alone trains, and
             validates
  phase2_cached / forward_cached
             phase 2 from layer3.4's cached output (the part frozen in both phases runs
             once per image), as tlcpu's main job runs them

and then, for the epoch counts and split sizes of a tlcpu run directory (history.csv,
split.tsv), prints the time PyTorch would need: uncached (every epoch runs the network on
images, as the Keras recipe does) and with the same feature cache as tlcpu.

  MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 \
    /usr/bin/python3 bench/recipe_pytorch.py --run runs/main --threads 2
"""
import argparse
import csv
import json
import resource
import statistics
import time

import torch
import torchvision


class Head(torch.nn.Module):
    def __init__(self, features):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(features, eps=1e-3, momentum=0.01)
        self.drop = torch.nn.Dropout(0.3)
        self.fc = torch.nn.Linear(features, 4)

    def forward(self, x):
        return self.fc(self.drop(self.bn(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))))


def c4_parts():
    r = torchvision.models.resnet50()
    stem = torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
    prefix = torch.nn.Sequential(stem, r.layer1, r.layer2, *list(r.layer3)[:5])  # frozen in both phases
    return prefix, r.layer3[5], Head(1024)


def rate(step, batch, warmup, reps):
    for _ in range(warmup):
        step()
    ips = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        ips.append(batch / (time.perf_counter() - t0))
    return statistics.median(ips)


def measure(threads, batch, warmup, reps):
    torch.set_num_threads(threads)  # 1 by default here
    torch.manual_seed(0)
    cl = torch.channels_last
    prefix, block, head = c4_parts()
    for m in (prefix, block, head):
        m.to(memory_format=cl)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=cl)
    y = torch.arange(batch) % 4
    f34 = torch.randn(batch, 1024, 14, 14).contiguous(memory_format=cl)  # layer3.4's output: phase 2's cache
    f35 = torch.randn(batch, 1024, 14, 14).contiguous(memory_format=cl)  # layer3.5's output: phase 1's cache
    loss_fn = torch.nn.CrossEntropyLoss()
    out = {}

    # inference graphs: the whole c4 net on images, the prefix alone, the head on features
    with torch.no_grad():
        whole = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            torch.nn.Sequential(prefix, block, head).eval(), x, check_trace=False)))
        pre = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(prefix.eval(), x, check_trace=False)))
        tail = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            torch.nn.Sequential(block, head).eval(), f34, check_trace=False)))
        out["forward"] = rate(lambda: whole(x), batch, warmup, reps)
        out["prefix"] = rate(lambda: pre(x), batch, warmup, reps)
        blk = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(block.eval(), f34, check_trace=False)))
        out["block"] = rate(lambda: blk(f34), batch, warmup, reps)
        # validation from the cache (layer3.4's output, in both phases)
        out["forward_cached"] = rate(lambda: tail(f34), batch, warmup, reps)

    def train_step(params, forward, inp):
        opt = torch.optim.Adam(params, lr=2e-4)
        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(forward(inp), y)
            loss.backward()
            opt.step()
        return step

    # phase 1: the frozen backbone forward without autograd, then the head trains
    prefix.eval(); block.eval(); head.train()
    for p in list(prefix.parameters()) + list(block.parameters()):
        p.requires_grad = False

    def p1_forward(inp):
        with torch.no_grad():
            f = block(prefix(inp))
        return head(f)

    out["phase1"] = rate(train_step(list(head.parameters()), p1_forward, x), batch, warmup, reps)
    out["phase1_cached"] = rate(train_step(list(head.parameters()), head, f35), batch, warmup, reps)
    with torch.no_grad():
        head.eval()
        out["head_forward"] = rate(lambda: head(f35), batch, warmup, reps)
        head.train()

    # phase 2: layer3.5 trains too, its BatchNorm in inference mode (the recipe's phase 2)
    for p in block.parameters():
        p.requires_grad = True
    block.eval()
    params = list(block.parameters()) + list(head.parameters())

    def p2_forward(inp):
        with torch.no_grad():
            f = prefix(inp)
        return head(block(f))
    out["phase2"] = rate(train_step(params, p2_forward, x), batch, warmup, reps)
    out["phase2_cached"] = rate(train_step(params, lambda f: head(block(f)), f34), batch, warmup, reps)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_counts(run):
    """Epochs per phase from history.csv, split sizes from split.tsv."""
    epochs = {1: 0, 2: 0}
    with open(f"{run}/history.csv") as f:
        for row in csv.DictReader(f):
            epochs[int(row["phase"])] += 1
    n = {"train": 0, "val": 0}
    with open(f"{run}/split.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["subset"] in n:
                n[row["subset"]] += 1
    return epochs, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a tlcpu run directory of the main job's recipe")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    epochs, n = run_counts(a.run)
    if not epochs[1] or not n["train"] or not n["val"]:
        raise SystemExit(f"recipe_pytorch: {a.run}: no epochs or no split found ({epochs}, {n})")
    r = measure(a.threads, 32, a.warmup, a.reps)
    tr, va = n["train"], n["val"]
    uncached = {
        "phase1_s": epochs[1] * (tr / r["phase1"] + va / r["forward"]),
        "phase2_s": epochs[2] * (tr / r["phase2"] + va / r["forward"]),
    }
    cached = {
        # the prefix once per image, and layer3.5 once more for phase 1's features
        "cache_s": (tr + va) / r["prefix"] + (tr + va) / r["block"],
        "phase1_s": epochs[1] * (tr / r["phase1_cached"] + va / r["head_forward"]),
        "phase2_s": epochs[2] * (tr / r["phase2_cached"] + va / r["forward_cached"]),
    }
    for d in (uncached, cached):
        d["total_s"] = sum(v for k, v in d.items() if k.endswith("_s"))
    print(json.dumps({"framework": "pytorch", "run": a.run, "threads": a.threads, "epochs": epochs, "images": n,
                      "img_s": r, "uncached": uncached, "cached": cached}))


if __name__ == "__main__":
    main()
