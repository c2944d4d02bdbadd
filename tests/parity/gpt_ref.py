#!/usr/bin/python3
"""PyTorch reference for tests/test_gpt_parity.cpp: a GPT-2 forward and backward, as llm.c's
test_gpt2 compares with its PyTorch model.

The model is GPT-2 as nanoGPT's model.py writes it (pre-LN blocks; causal self-attention with one
fused c_attn and c_proj; MLP c_fc, GELU tanh, c_proj; ln_f; lm_head tied to wte), written here as
one function over a dict of tensors so the same code runs both weight layouts:
  linear layout  (kiln, nanoGPT, torch.nn.Linear): weight [out, in], y = x W^T + b
  conv1d layout  (Hugging Face's Conv1D):          weight [in, out], y = x W + b
The vocabulary may be padded (wte has padded_vocab rows); the loss uses the first `vocab` logits.

Usage:
  gpt_ref.py parity DIR --n-head H --vocab V
      Reads DIR/init.<name>.npy (kiln's state_dict, linear layout, float32), DIR/idx.npy and
      DIR/targets.npy (int64 [B, T]). Runs forward, loss (mean cross-entropy over the first V
      logits) and backward twice: in float32 (<dt> = f32) and in float64 from the same float32
      values (<dt> = f64, the exact result). Writes DIR/<dt>.logits.npy, DIR/<dt>.loss.npy and
      DIR/<dt>.grad.<name>.npy for every parameter.
  gpt_ref.py hf DIR --n-layer L --n-head H --n-embd C --block-size T --vocab V --seed S
      Draws a random GPT-2 (torch.manual_seed(S)) in Hugging Face's layout and names (wte.weight,
      h.0.attn.c_attn.weight [C, 3C], ..., the attn.bias / attn.masked_bias buffers and a tied
      lm_head.weight, vocab not padded), saves it as DIR/model.safetensors with the safetensors
      package, and writes its float32 logits for DIR/idx.npy to DIR/hf.logits.npy.
CPU only, deterministic.
"""
import argparse
import glob
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def gpt_forward(p, idx, n_layer, n_head, conv1d, prefix="transformer."):
    """Logits [B, T, rows of wte] of GPT-2 with parameters p (names as in nanoGPT with `prefix`)."""

    def linear(x, name):
        w, b = p[name + ".weight"], p[name + ".bias"]
        return x @ w + b if conv1d else x @ w.t() + b

    def layer_norm(x, name):
        return F.layer_norm(x, (x.shape[-1],), p[name + ".weight"], p[name + ".bias"], eps=1e-5)

    B, T = idx.shape
    pos = torch.arange(T)
    x = p[prefix + "wte.weight"][idx] + p[prefix + "wpe.weight"][pos]
    C = x.shape[-1]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(n_layer):
        h = f"{prefix}h.{l}."
        # attention
        q, k, v = linear(layer_norm(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.shape[-1]))
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + linear(y, h + "attn.c_proj")
        # MLP
        m = F.gelu(linear(layer_norm(x, h + "ln_2"), h + "mlp.c_fc"), approximate="tanh")
        x = x + linear(m, h + "mlp.c_proj")
    x = layer_norm(x, prefix + "ln_f")
    return x @ p[prefix + "wte.weight"].t()  # lm_head tied to wte


def parity(args):
    init = {os.path.basename(f)[len("init."):-len(".npy")]: np.load(f)
            for f in glob.glob(os.path.join(args.dir, "init.*.npy"))}
    if not init:
        sys.exit(f"no init.*.npy in {args.dir}")
    n_layer = len({k.split(".")[2] for k in init if k.startswith("transformer.h.")})
    idx = torch.from_numpy(np.load(os.path.join(args.dir, "idx.npy")))
    targets = torch.from_numpy(np.load(os.path.join(args.dir, "targets.npy")))
    for dt, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        p = {k: torch.from_numpy(v).to(dtype).requires_grad_(True) for k, v in init.items()}
        logits = gpt_forward(p, idx, n_layer, args.n_head, conv1d=False)
        loss = F.cross_entropy(logits[..., :args.vocab].reshape(-1, args.vocab), targets.reshape(-1))
        loss.backward()
        np.save(os.path.join(args.dir, f"{dt}.logits.npy"), logits.detach().numpy())
        np.save(os.path.join(args.dir, f"{dt}.loss.npy"), loss.detach().numpy().reshape(1))
        for k, t in p.items():
            np.save(os.path.join(args.dir, f"{dt}.grad.{k}.npy"), t.grad.numpy())
        print(f"{dt}: loss {loss.item():.10f} (ln V = {math.log(args.vocab):.4f})")


def hf(args):
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    C, V, T = args.n_embd, args.vocab, args.block_size
    p = {"wte.weight": torch.randn(V, C) * 0.1, "wpe.weight": torch.randn(T, C) * 0.1}
    for l in range(args.n_layer):
        h = f"h.{l}."
        for ln in ("ln_1", "ln_2"):
            p[h + ln + ".weight"] = 1 + 0.1 * torch.randn(C)
            p[h + ln + ".bias"] = 0.1 * torch.randn(C)
        # Conv1D layout: [in, out]
        for name, n_in, n_out in (("attn.c_attn", C, 3 * C), ("attn.c_proj", C, C), ("mlp.c_fc", C, 4 * C),
                                  ("mlp.c_proj", 4 * C, C)):
            p[h + name + ".weight"] = torch.randn(n_in, n_out) / math.sqrt(n_in)
            p[h + name + ".bias"] = 0.1 * torch.randn(n_out)
    p["ln_f.weight"] = 1 + 0.1 * torch.randn(C)
    p["ln_f.bias"] = 0.1 * torch.randn(C)

    idx = torch.from_numpy(np.load(os.path.join(args.dir, "idx.npy")))
    logits = gpt_forward(p, idx, args.n_layer, args.n_head, conv1d=True, prefix="")
    np.save(os.path.join(args.dir, "hf.logits.npy"), logits.numpy())

    # What transformers' GPT2LMHeadModel.save_pretrained adds: the causal-mask buffers and the tied head.
    state = dict(p)
    for l in range(args.n_layer):
        state[f"h.{l}.attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
        state[f"h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    state["lm_head.weight"] = p["wte.weight"].clone()
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(args.dir, "model.safetensors"),
              metadata={"format": "pt"})
    print(f"wrote {len(state)} tensors to model.safetensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["parity", "hf"])
    ap.add_argument("dir")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, required=True)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    (parity if args.mode == "parity" else hf)(args)


if __name__ == "__main__":
    main()
