"""PyTorch's side of bench/bench_mlp_step.cpp: one training step of the MLP 784-512-512-10 at
batch 128 on the CPU (forward, cross-entropy, backward, AdamW step, zero_grad), timed per step
with time.perf_counter. Prints one JSON object: median_ms and min_ms per step, and the setup.

Run with Debian's PyTorch 1.13 (/usr/bin/python3, not a venv's python):
    /usr/bin/python3 bench/torch_mlp_step.py [--steps 500] [--warmup 20] [--threads N]
Threads default to OMP_NUM_THREADS, else the number of CPUs this process may use, as kiln's OpenMP.
"""
import argparse
import json
import os
import statistics
import time

import torch
from torch import nn


def default_threads():
    env = os.environ.get("OMP_NUM_THREADS")
    return int(env) if env else len(os.sched_getaffinity(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="timed steps (kiln's: 500)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (kiln's: 20)")
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                          nn.ReLU(), nn.Linear(512, 10))
    # kiln's make_param_groups: weight decay on the matrices only.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(128, 1, 28, 28)
    y = torch.randint(0, 10, (128,))

    def step():
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        # As kiln's zero_grad(): gradients freed, not zeroed (PyTorch 2's default).
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    ms = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        ms.append((time.perf_counter() - start) * 1e3)

    print(json.dumps({
        "name": "torch_mlp_step",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "warmup": args.warmup,
        "median_ms": statistics.median(ms),
        "min_ms": min(ms),
        "mean_ms": statistics.fmean(ms),
        "samples_per_s": 128 * len(ms) / (sum(ms) / 1e3),
    }))


if __name__ == "__main__":
    main()
