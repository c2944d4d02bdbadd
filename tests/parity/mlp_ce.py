#!/usr/bin/python3
"""PyTorch reference for tests/test_parity_torch.cpp.

Reads the inputs the C++ test wrote into DIR (x, W1, b1, W2, b2 as float64 .npy, targets as
int64 .npy), builds the same graph with torch.nn.functional, and writes the loss and the
gradient of every input, computed with autograd in float64 and in float32, back into DIR as
loss_<dtype>.npy and grad_<name>_<dtype>.npy (<dtype> is f64 or f32; values in that dtype).

Keep forward() in step with kiln_forward() in the C++ test: the two are one graph.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

PARAMS = ["x", "W1", "b1", "W2", "b2"]


def forward(p, targets):
    z1 = p["x"] @ p["W1"] + p["b1"]
    h = F.gelu(z1, approximate="tanh")
    h2 = torch.tanh(h) * torch.sigmoid(h) + 0.1 * torch.relu(z1)
    logits = h2 @ p["W2"] + p["b2"]
    ce = F.cross_entropy(logits, targets, ignore_index=-100, reduction="mean")
    prob = torch.softmax(logits, 1)
    logp = torch.log_softmax(logits, 1)
    entropy = -(prob * logp).sum(1).mean()
    centered = h2 - h2.mean(1, keepdim=True)
    return (ce + 0.01 * (p["W1"] * p["W1"]).sum() + 0.1 * entropy
            + 0.05 * torch.square(centered).mean() + 0.01 * (h2 / torch.sqrt(z1 * z1 + 1.0)).mean())


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIR")
    d = sys.argv[1]
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    inputs = {n: np.load(os.path.join(d, n + ".npy")) for n in PARAMS}
    targets = torch.from_numpy(np.load(os.path.join(d, "targets.npy")))
    for suffix, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        # float64 -> float32 rounds to nearest even, as kiln's to(f32) does.
        p = {n: torch.from_numpy(v).to(dtype).requires_grad_() for n, v in inputs.items()}
        loss = forward(p, targets)
        loss.backward()
        np.save(os.path.join(d, f"loss_{suffix}.npy"), loss.detach().numpy())
        for n in PARAMS:
            np.save(os.path.join(d, f"grad_{n}_{suffix}.npy"), p[n].grad.numpy())


if __name__ == "__main__":
    main()
