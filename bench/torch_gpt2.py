"""PyTorch's side of bench/bench_gpt2.cpp: GPT-2 124M training throughput on one GPU.

A nanoGPT-style GPT-2 with kiln's shapes (vocabulary padded 50257 -> 50304, lm_head tied to
wte, GELU tanh, pre-LN blocks, biases), F.scaled_dot_product_attention (causal), torch.compile,
bf16 autocast and fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on the matrices), on
one fixed batch of random tokens. The loss is nanoGPT's cross-entropy over the padded vocabulary
(kiln's leaves the padded columns out: the same arithmetic, without a copy of the logits).
Prints one JSON line with the fields bench_gpt2 prints.

    python3 bench/torch_gpt2.py [--preset gpt2-124M] [--batch 16] [--seq 1024] [--warmup 10]
                                [--steps 30] [--no-compile] [--no-sdpa] [--no-autocast] [--cpu]

Without a CUDA device (and without --cpu) it prints why on stderr and exits with status 1.
--cpu runs on the CPU (e.g. Debian's torch 1.13: --cpu --preset gpt2-mini --seq 128
--no-compile --no-autocast --threads 2, as scripts/bench_gpt2.sh --cpu runs it); torch.compile,
SDPA and fused AdamW are used only where this torch has them (1.13 has none of them: masked
softmax attention, the single-tensor AdamW), and the JSON says which were used.
"""
import argparse
import inspect
import json
import math
import statistics
import sys
import time

# The presets of kiln's models/gpt.cpp: n_layer, n_head, n_embd, block_size, vocab_size.
PRESETS = {
    "gpt2-124M": (12, 12, 768, 1024, 50257),
    "gpt2-medium": (24, 16, 1024, 1024, 50257),
    "gpt2-large": (36, 20, 1280, 1024, 50257),
    "gpt2-xl": (48, 25, 1600, 1024, 50257),
    "gpt2-mini": (6, 6, 384, 256, 50257),
    "gpt-char-tiny": (4, 4, 128, 128, 256),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt2-124M", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-sdpa", action="store_true", help="masked softmax instead of F.scaled_dot_product_attention")
    p.add_argument("--no-autocast", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100/H200 dense bf16")
    p.add_argument("--cpu", action="store_true", help="run on the CPU")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (CPU; 0: torch's default)")
    return p.parse_args()


def main():
    args = parse_args()
    try:
        import torch
        import torch.nn as nn
        from torch.nn import functional as F
    except ImportError as e:
        print(f"torch_gpt2.py: cannot import torch ({e})", file=sys.stderr)
        return 1
    if not args.cpu and not torch.cuda.is_available():
        print("torch_gpt2.py: no CUDA device visible (use --cpu for a CPU dry run)", file=sys.stderr)
        return 1
    device = "cpu" if args.cpu else "cuda"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    n_layer, n_head, n_embd, block_size, vocab_size = PRESETS[args.preset]
    padded_vocab = (vocab_size + 127) // 128 * 128
    if args.seq > block_size:
        print(f"torch_gpt2.py: --seq {args.seq} exceeds the preset's block_size {block_size}", file=sys.stderr)
        return 2
    use_sdpa = not args.no_sdpa and hasattr(F, "scaled_dot_product_attention")
    use_compile = not args.no_compile and hasattr(torch, "compile")

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)
            if not use_sdpa:
                mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
                self.register_buffer("mask", mask.view(1, 1, block_size, block_size), persistent=False)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
            if use_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
                att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
                y = F.softmax(att, dim=-1) @ v
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(padded_vocab, n_embd)
            self.wpe = nn.Embedding(block_size, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, padded_vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
                elif p.dim() >= 2:
                    nn.init.normal_(p, 0.0, 0.02)
                elif name.endswith(".bias"):
                    nn.init.zeros_(p)
            with torch.no_grad():
                self.wte.weight[vocab_size:].zero_()  # padding rows, as kiln's (never looked up)

        def forward(self, idx, targets):
            T = idx.size(1)
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.h:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            # nanoGPT's loss, over the padded vocabulary (autocast runs it in f32). kiln's GPT::loss
            # leaves the 47 padded columns out; slicing them off here would copy the logits.
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    torch.manual_seed(0)
    model = GPT().to(device)
    model.train()
    params = list(model.parameters())  # the tied weight once
    n_params = sum(p.numel() for p in params)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    adamw_kwargs = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
    use_fused = device == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    if use_fused:
        adamw_kwargs["fused"] = True
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], **adamw_kwargs)
    step_model = torch.compile(model) if use_compile else model

    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randint(0, vocab_size, (args.batch, args.seq), generator=gen).to(device)
    y = torch.randint(0, vocab_size, (args.batch, args.seq), generator=gen).to(device)
    use_autocast = not args.no_autocast

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_autocast):
            loss = step_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return loss

    first_loss = None
    for i in range(args.warmup):  # includes torch.compile's compilation
        loss = step()
        if i == 0:
            first_loss = loss.item()
    ms = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        s = time.perf_counter()
        loss = step()
        ms.append((time.perf_counter() - s) * 1e3)
    seconds = time.perf_counter() - t0
    last_loss = loss.item()
    if first_loss is None:
        first_loss = last_loss

    flops_per_token = 6.0 * (n_params - block_size * n_embd) + 12.0 * n_layer * n_embd * args.seq
    tokens_per_s = args.batch * args.seq * args.steps / seconds
    peak_allocated = peak_reserved = device_used = 0
    device_name = "cpu"
    if device == "cuda":
        peak_allocated = torch.cuda.max_memory_allocated()
        peak_reserved = torch.cuda.max_memory_reserved()
        free, total = torch.cuda.mem_get_info()
        device_used = total - free
        device_name = torch.cuda.get_device_name(0)
    print(json.dumps({
        "name": "torch_gpt2", "torch": torch.__version__, "device": device_name, "preset": args.preset,
        "params": n_params, "batch": args.batch, "seq": args.seq, "warmup": args.warmup, "steps": args.steps,
        "autocast": "bf16" if use_autocast else "off", "attention": "sdpa" if use_sdpa else "masked softmax",
        "compile": use_compile, "fused_adamw": use_fused, "threads": torch.get_num_threads(),
        "tokens_per_s": round(tokens_per_s, 1), "ms_per_step_median": statistics.median(ms),
        "ms_per_step_min": min(ms), "ms_per_step_mean": seconds * 1e3 / args.steps,
        "flops_per_token": flops_per_token, "peak_tflops": args.peak_tflops,
        "mfu": tokens_per_s * flops_per_token / (args.peak_tflops * 1e12),
        "peak_allocated_bytes": peak_allocated, "peak_reserved_bytes": peak_reserved,
        "device_used_bytes": device_used, "loss_first": first_loss, "loss_last": last_loss,
    }))
    if not math.isfinite(last_loss):
        print("torch_gpt2.py: the loss is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
