#!/usr/bin/python3
"""PyTorch reference for the optimizer and schedule tests in tests/test_optim_parity.cpp.

Usage: optim_step.py IN.json OUT.txt

IN.json holds a list of cases. An optimizer case:
  {"name": ..., "optimizer": "sgd" | "adam" | "adamw", "options": {torch keyword arguments},
   "params": [{"shape": [...], "values": [...]}, ...],
   "groups": [{"params": [indices], "weight_decay": x, "lr": y}, ...]   (optional)
   "grads": [[values or null per parameter] per step]}
runs the torch.optim optimizer in float64 with those fixed gradients (null: the parameter has
no gradient at that step) and writes, after each step s (1-based), one line per parameter i
and per state buffer:
  <name>.step<s>.param<i> v0 v1 ...
  <name>.step<s>.state<i>.<key> v0 v1 ...      (exp_avg, exp_avg_sq, momentum_buffer, step)
A schedule case:
  {"name": ..., "schedule": "onecycle", "options": {OneCycleLR keyword arguments}, "steps": n}
writes "<name>.lr v0 ... v(n-1)": the lr in effect for optimizer steps 0 .. n-1.
Numbers are printed with repr(), which round-trips float64 exactly.
"""
import json
import sys

import torch

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def fmt(t):
    return " ".join(repr(float(v)) for v in t.detach().reshape(-1).tolist())


def run_optimizer(case, out):
    params = [torch.tensor(p["values"], dtype=torch.float64).reshape(p["shape"]).requires_grad_()
              for p in case["params"]]
    if "groups" in case:
        groups = []
        for g in case["groups"]:
            group = {k: v for k, v in g.items() if k != "params"}
            group["params"] = [params[i] for i in g["params"]]
            groups.append(group)
    else:
        groups = [{"params": params}]
    opt = OPTIMIZERS[case["optimizer"]](groups, **case["options"])
    for s, grads in enumerate(case["grads"], start=1):
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = torch.tensor(g, dtype=torch.float64).reshape(p.shape)
        opt.step()
        for i, p in enumerate(params):
            out.write(f"{case['name']}.step{s}.param{i} {fmt(p)}\n")
            for key, value in opt.state[p].items():
                if value is None:  # SGD without momentum keeps momentum_buffer = None
                    continue
                out.write(f"{case['name']}.step{s}.state{i}.{key} {fmt(torch.as_tensor(value))}\n")


def run_schedule(case, out):
    assert case["schedule"] == "onecycle", case["schedule"]
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cycle_momentum=False, **case["options"])
    lrs = []
    for _ in range(case["steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out.write(f"{case['name']}.lr {' '.join(repr(v) for v in lrs)}\n")


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} IN.json OUT.txt")
    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    with open(sys.argv[2], "w") as out:
        for case in cases:
            if "optimizer" in case:
                run_optimizer(case, out)
            else:
                run_schedule(case, out)


if __name__ == "__main__":
    main()
