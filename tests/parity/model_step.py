#!/usr/bin/python3
"""PyTorch reference for tests/test_model_parity.cpp: training steps of a whole model.

Usage: model_step.py DIR --model {mlp,lenet} --optimizer {adamw,sgd} --steps N
                     --lr LR --weight-decay WD [--momentum M] [--betas B1 B2] [--eps EPS]

Reads from DIR (written by the C++ test, all .npy):
  init.<key>.npy     the kiln model's initial state_dict, one file per key ("1.weight", ...)
  x.npy, targets.npy the batch: float32 [N, 1, 28, 28] and int64 [N]
builds the same architecture with torch.nn (an nn.Sequential with kiln's layer order, so the
state_dict keys are the same; a key on one side only is an error), loads the weights, and runs
N steps on that one batch, each: zero_grad, forward, cross_entropy (mean), backward,
optimizer.step(), with all parameters in one group. It does this twice, in float32 (<dt> = f32,
what kiln is compared with) and in float64 from the same float32 values (<dt> = f64, the exact
result, to measure how far float32 rounding alone moves PyTorch), and writes into DIR, for
s = 1..N:
  <dt>.step<s>.loss.npy          the loss before the update
  <dt>.step<s>.grad.<key>.npy    each parameter's gradient
  <dt>.step<s>.param.<key>.npy   each parameter after the update
On the CPU, deterministically.

Keep the architectures in step with models/mlp.cpp and models/lenet.cpp.
"""
import argparse
import glob
import os
import sys

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def make_mlp():
    """models/mlp.cpp with hidden_sizes [512, 512]: 784-512-512-10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def make_lenet():
    """models/lenet.cpp with channels [6, 16], hidden_sizes [120, 84]: LeNet-5 on 28x28."""
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


MODELS = {"mlp": make_mlp, "lenet": make_lenet}


def load_initial_state(model, d):
    """The kiln state_dict from DIR/init.*.npy; the key sets must match exactly."""
    given = {os.path.basename(p)[len("init."):-len(".npy")] for p in glob.glob(os.path.join(d, "init.*.npy"))}
    expected = set(model.state_dict().keys())
    if given != expected:
        sys.exit(f"state_dict keys differ: only in kiln {sorted(given - expected)}, "
                 f"only in PyTorch {sorted(expected - given)}")
    state = {}
    for key, ref in model.state_dict().items():
        a = np.load(os.path.join(d, f"init.{key}.npy"))
        if a.dtype != np.float32 or tuple(a.shape) != tuple(ref.shape):
            sys.exit(f"{key}: kiln wrote {a.dtype}{list(a.shape)}, PyTorch has float32{list(ref.shape)}")
        state[key] = torch.from_numpy(a)
    model.load_state_dict(state, strict=True)


def make_optimizer(args, params):
    group = [{"params": params}]  # one group: every parameter decays
    if args.optimizer == "adamw":
        return torch.optim.AdamW(group, lr=args.lr, betas=tuple(args.betas), eps=args.eps,
                                 weight_decay=args.weight_decay)
    return torch.optim.SGD(group, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], required=True)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--weight-decay", type=float, required=True)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--betas", type=float, nargs=2, default=[0.9, 0.999])
    parser.add_argument("--eps", type=float, default=1e-8)
    args = parser.parse_args()
    d = args.dir

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    x32 = torch.from_numpy(np.load(os.path.join(d, "x.npy")))
    targets = torch.from_numpy(np.load(os.path.join(d, "targets.npy")))
    for dt, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        model = MODELS[args.model]()
        load_initial_state(model, d)
        model.to(dtype).train()  # float32 -> float64 is exact
        x = x32.to(dtype)
        named = list(model.named_parameters())
        opt = make_optimizer(args, [p for _, p in named])
        for s in range(1, args.steps + 1):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), targets)
            loss.backward()
            np.save(os.path.join(d, f"{dt}.step{s}.loss.npy"), loss.detach().numpy())
            for key, p in named:
                np.save(os.path.join(d, f"{dt}.step{s}.grad.{key}.npy"), p.grad.numpy())
            opt.step()
            for key, p in named:
                np.save(os.path.join(d, f"{dt}.step{s}.param.{key}.npy"), p.detach().numpy())
            print(f"torch {torch.__version__} {dt} {args.model} {args.optimizer} step {s}: loss {loss.item():.9g}")


if __name__ == "__main__":
    main()
