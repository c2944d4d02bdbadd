"""PyTorch's side of bench/bench_attention.cpp: F.scaled_dot_product_attention (PyTorch 2.x) at
GPT-2 small's shapes (H=12, T=1024, D=64, causal, B=16 by default), forward and forward+backward,
timed with CUDA events (median of --reps after --warmup), with the same TFLOPS convention as the
kiln benchmark: 4*B*H*T*T*D for the forward, halved for causal, 3.5 times that with backward.
Prints one line per (SDPA backend, pass), e.g.

    torch sdpa flash bf16 B16 H12 T1024 D64 causal fwd: 0.412 ms (83.5 TFLOPS)

Needs a CUDA build of PyTorch 2.x (the GPU machine's python3); exits cleanly with a message
otherwise (Debian's PyTorch 1.13 has no SDPA and no GPU here):
    python3 bench/torch_sdpa.py [--batch 16] [--dtype bf16] [--reps 50] [--warmup 10]
"""
import argparse
import statistics
import sys


def flops(B, H, T, D, causal, backward):
    f = 4.0 * B * H * T * T * D
    if causal:
        f /= 2
    return 3.5 * f if backward else f


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        print(f"torch_sdpa.py: cannot import torch ({e}); nothing to measure")
        return 0
    if not hasattr(F, "scaled_dot_product_attention"):
        print(f"torch_sdpa.py: PyTorch {torch.__version__} has no F.scaled_dot_product_attention "
              "(needs 2.0 or later); nothing to measure")
        return 0
    if not torch.cuda.is_available():
        print(f"torch_sdpa.py: PyTorch {torch.__version__} sees no CUDA device; nothing to measure")
        return 0

    B, H, T, D = args.batch, args.heads, args.seq, args.head_dim
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    gen = torch.Generator(device="cuda").manual_seed(0)

    def draw(grad):
        return torch.randn(B, H, T, D, device="cuda", dtype=dtype, generator=gen).requires_grad_(grad)

    q, k, v = draw(True), draw(True), draw(True)
    g = draw(False)

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward_backward():
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)

    def median_ms(fn):
        for _ in range(args.warmup):
            fn()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(args.reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    # PyTorch's own choice, then each backend forced where this version can force one.
    choices = [("default", None)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        choices += [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                    ("math", SDPBackend.MATH)]
    except ImportError:
        sdpa_kernel = None

    shape = f"{args.dtype} B{B} H{H} T{T} D{D} causal"
    print(f"# PyTorch {torch.__version__}, {torch.cuda.get_device_name()}")
    for name, backend in choices:
        for label, fn, backward in (("fwd", forward, False), ("fwd+bwd", forward_backward, True)):
            try:
                if backend is None:
                    ms = median_ms(fn)
                else:
                    with sdpa_kernel(backend):
                        ms = median_ms(fn)
            except RuntimeError as e:  # a backend that does not take this shape or dtype
                print(f"torch sdpa {name} {shape} {label}: unavailable ({str(e).splitlines()[0]})")
                continue
            tflops = flops(B, H, T, D, True, backward) / (ms * 1e-3) / 1e12
            print(f"torch sdpa {name} {shape} {label}: {ms:.3f} ms ({tflops:.1f} TFLOPS)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
