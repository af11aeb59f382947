#!/usr/bin/python3
"""Float64 reference gradients for the tiny fixture networks (tests/data/tiny_grad64.safetensors).

The shared fixtures' frozen_bn gradients are float32, and for the backbone they are badly
conditioned: the head's BatchNorm1d normalises a batch of 2, so every gradient that
reaches the backbone carries a factor (1 - xhat^2) ~ eps / var, a cancellation residue.
PyTorch's own float32 values differ from its float64 values by up to 2.6e-3 relative, so
no float32 implementation can match them to 1e-3. This recomputes the same pass in
float64 from the same parameters (make_fixtures.tiny), as the reference accuracy target.

Run with Debian's python from the repository root:  /usr/bin/python3 tools/make_grad64.py
"""
import json, os, struct, sys
import numpy as np
import torch, torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "fixtures"))
import make_fixtures as M  # noqa: E402

torch.set_num_threads(2)
out, meta = {}, {"source": "tools/make_grad64.py", "torch": torch.__version__}
for variant in ["v1", "v15"]:
    net, x, y = M.tiny(variant)
    rn = M.names(net)
    net, x = net.double(), x.double()
    net.eval()
    net.head_bn.train()
    F.cross_entropy(net(x), y).backward()
    for k, p in net.named_parameters():
        out[f"{variant}.frozen_bn.grad.{rn(k)}"] = p.grad.float()
M.save(os.path.join(ROOT, "tests", "data", "tiny_grad64.safetensors"), out, meta)
print("ok", len(out))
