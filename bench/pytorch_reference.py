#!/usr/bin/python3
"""The cases of bench_resnet50, in PyTorch at its best on this CPU.

Run with Debian's python3-torch (/usr/bin/python3), one case per process, and the malloc
variables bench/compare.sh sets (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736: glibc
otherwise returns and re-faults PyTorch's large buffers every step).

  inference:  torch.jit.trace + torch.jit.freeze + torch.jit.optimize_for_inference,
              channels_last (BN folded into the convs, ReLU fused by oneDNN)
  training:   eager, channels_last; frozen layers requires_grad=False and eval(), so
              PyTorch does no work the recipe does not need
  bf16:       torch.autocast("cpu", dtype=torch.bfloat16)

Prints one JSON line like bench_resnet50's.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)  # 1 by default here
    torch.manual_seed(0)
    bf16 = a.case.endswith("_bf16")
    case = a.case.removesuffix("_bf16")
    batch = 1 if case == "infer_b1" else 32
    cl = torch.channels_last

    net = torchvision.models.resnet50(num_classes=4)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=cl)
    y = torch.arange(batch) % 4
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    if case.startswith("infer"):
        net.eval().to(memory_format=cl)
        with torch.no_grad(), amp:
            # check_trace off: under autocast the re-trace check compares two graphs that differ only in names
            m = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net, x, check_trace=False)))
            def step():
                m(x)
    else:
        # The recipe's head: global average pool, BatchNorm, Dropout, Dense.
        net.fc = torch.nn.Sequential(torch.nn.BatchNorm1d(2048, eps=1e-3, momentum=0.01), torch.nn.Dropout(0.3),
                                     torch.nn.Linear(2048, 4))
        net.to(memory_format=cl)
        trainable = {"phase1": ["fc."], "phase2": ["fc.", "layer4."], "full": [""]}[case.split("_")[0]]
        for n, p in net.named_parameters():
            p.requires_grad = any(n.startswith(t) for t in trainable)
        net.train()
        if case.startswith("phase"):  # the pretrained backbone's BN stays in inference mode
            for n, mod in net.named_modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.eval()
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss()
        def step():
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()

    for _ in range(a.warmup):
        step()
    ips = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        step()
        ips.append(batch / (time.perf_counter() - t0))
    s = sorted(ips)
    print(json.dumps({"framework": "pytorch", "case": a.case, "threads": a.threads, "img_s": statistics.median(ips),
                      "min": s[0], "max": s[-1], "reps": ips,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
