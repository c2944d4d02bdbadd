#!/usr/bin/env bash
# kiln next to PyTorch training GPT-2 124M on one GPU (bf16 autocast, flash attention / SDPA,
# fused AdamW, B=16, T=1024): runs build-gpu/bench/bench_gpt2 and bench/torch_gpt2.py
# alternately on the same GPU (kiln torch, torch kiln, ...), RUNS times each, and writes
# bench/results/<date>-gpt2-<gpu>.md with the ratios kiln / PyTorch of tokens/s (goal >= 1.15)
# and of peak memory (goal <= 0.9). Raw JSON and logs go to <build dir>/bench-gpt2/.
#   scripts/bench_gpt2.sh [--build-dir DIR] [--no-build] [--runs N] [--batch B] [--seq T]
#                         [--warmup N] [--steps N] [--preset NAME] [--out FILE] [--cpu]
#                         [--threads N]
# The batch starts at --batch (16) and halves while kiln runs out of memory; PyTorch gets the
# batch kiln ran. --cpu compares the two on the CPU instead (pass a small preset and sequence,
# e.g. --cpu --preset gpt2-mini --seq 128 --batch 4 --steps 10 --warmup 2 --threads 2): both
# sides in f32 (no autocast), exact causal attention (kiln's flash kernel, PyTorch 1.13's
# masked softmax), AdamW without fusion, --threads N OpenMP and BLAS threads on both
# (OMP_NUM_THREADS, torch.set_num_threads; default: all cores), and PyTorch with
# OMP_WAIT_POLICY=PASSIVE (its best: see below); it builds with the CPU backend
# into build-release/ unless --build-dir says otherwise. A build dir
# that is configured already (build-gpu/ after scripts/gpu-check.sh) keeps its CMake cache, so
# gpu-check's cuDNN/NCCL/.gpu-deps hints stay.
# Environment: PYTHON (default: python3, else /usr/bin/python3: whichever imports torch),
#   GPT2_TIMEOUT (seconds per run, default 900), TORCH_OMP_WAIT_POLICY (--cpu: PyTorch's
#   OMP_WAIT_POLICY, default PASSIVE).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir="" build=1 runs=2 batch=16 seq=1024 warmup=10 steps=30 preset=gpt2-124M out_md="" cpu=0 threads=""
usage="usage: scripts/bench_gpt2.sh [--build-dir DIR] [--no-build] [--runs N] [--batch B] [--seq T] [--warmup N] [--steps N] [--preset NAME] [--out FILE] [--cpu] [--threads N]"
while (($#)); do
  case $1 in
    --build-dir) build_dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --runs) runs=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seq) seq=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --out) out_md=$2; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
[[ -n $build_dir ]] || { ((cpu)) && build_dir=build-release || build_dir=build-gpu; }

py=${PYTHON:-}
if [[ -z $py ]]; then
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then py=$candidate; break; fi
  done
fi
[[ -n $py ]] || { echo "bench_gpt2.sh: no python3 that imports torch (set PYTHON)" >&2; exit 1; }

exe=$build_dir/bench/bench_gpt2
if ((build)); then
  export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=true
  if [[ -f $build_dir/CMakeCache.txt ]]; then
    # Configured already (by gpu-check.sh, with its library hints): keep the cache, add the benches.
    cmake -S . -B "$build_dir" -DKILN_BENCH=ON >/dev/null
  elif ((cpu)); then
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF -DKILN_BENCH=ON -DBUILD_TESTING=OFF >/dev/null
  else
    [[ -d /usr/local/cuda/bin ]] && export PATH=/usr/local/cuda/bin:$PATH
    cmake -S . -B "$build_dir" -G Ninja -DKILN_CUDA=ON -DKILN_BENCH=ON >/dev/null
  fi
  cmake --build "$build_dir" -j"$(nproc)" --target bench_gpt2
fi
[[ -x $exe ]] || { echo "bench_gpt2.sh: $exe not built" >&2; exit 1; }

out=$build_dir/bench-gpt2
rm -rf "$out" && mkdir -p "$out"
timeout_s=${GPT2_TIMEOUT:-900}
common=(--preset "$preset" --seq "$seq" --warmup "$warmup" --steps "$steps")
((cpu)) && kiln_extra=(--cpu --no-autocast) torch_extra=(--cpu --no-autocast --no-compile) || kiln_extra=() torch_extra=()
if ((cpu)); then
  # One thread count for kiln's OpenMP + OpenBLAS and for PyTorch's OpenMP + Debian's
  # OpenBLAS (pthread build, which reads OMP_NUM_THREADS too).
  threads=${threads:-$(nproc)}
  export OMP_NUM_THREADS=$threads
  torch_extra+=(--threads "$threads")
  # Debian's torch runs its own ops on libgomp and its GEMMs on a second pool, OpenBLAS's
  # pthreads: libgomp's spinning idle workers take the cores from the GEMM threads, and
  # passive waiting makes its step ~1.5x faster (gpt2-mini, 2 cores). kiln has one pool
  # (OpenBLAS's OpenMP build) and is fastest with the default policy, so each side runs at its best.
  torch_env=(env "OMP_WAIT_POLICY=${TORCH_OMP_WAIT_POLICY:-PASSIVE}")
else
  torch_env=()
fi

# One run of one side: JSON (the last line of stdout) in $out/<side>-<i>.json, the rest in .log.
run_side() {
  local side=$1 i=$2 b=$3 status=0
  echo "== $side, run $i, batch $b"
  cut -d' ' -f1 /proc/loadavg >"$out/$side-$i.load"  # other jobs' load distorts CPU runs most
  if [[ $side == kiln ]]; then
    timeout -k 10 "$timeout_s" "$exe" "${common[@]}" --batch "$b" "${kiln_extra[@]}" >"$out/$side-$i.out" 2>"$out/$side-$i.log" || status=$?
  else
    timeout -k 10 "$timeout_s" "${torch_env[@]}" "$py" bench/torch_gpt2.py "${common[@]}" --batch "$b" "${torch_extra[@]}" \
      >"$out/$side-$i.out" 2>"$out/$side-$i.log" || status=$?
  fi
  grep '^{' "$out/$side-$i.out" | tail -n 1 >"$out/$side-$i.json" || true
  cut -d' ' -f1 /proc/loadavg >>"$out/$side-$i.load"
  if ((status != 0)); then
    echo "   failed ($status): $(tail -n 3 "$out/$side-$i.log" | tr '\n' ' ')"
    rm -f "$out/$side-$i.json"
  fi
  return $status
}

# The batch: the largest of batch, batch/2, ... that kiln trains without running out of memory.
while :; do
  if run_side kiln 1 "$batch"; then break; fi
  if grep -qi "out of memory" "$out/kiln-1.log" && ((batch > 1)); then
    batch=$((batch / 2))
    echo "   kiln ran out of memory: trying batch $batch"
  else
    echo "bench_gpt2.sh: kiln failed (log: $out/kiln-1.log)" >&2
    exit 1
  fi
done
failed=0
run_side torch 1 "$batch" || failed=1
for ((i = 2; i <= runs; i++)); do
  if ((i % 2)); then
    run_side kiln $i "$batch" || failed=1
    run_side torch $i "$batch" || failed=1
  else
    run_side torch $i "$batch" || failed=1
    run_side kiln $i "$batch" || failed=1
  fi
done

if ((cpu)); then
  gpu=cpu
else
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || echo unknown-gpu)
fi
slug=$(tr '[:upper:]' '[:lower:]' <<<"$gpu" | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
[[ -n $out_md ]] || out_md=bench/results/$(date -u +%F)-gpt2-$slug.md
mkdir -p "$(dirname "$out_md")"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"

"$py" - "$out" "$runs" "$gpu" "$commit" "$(date -u +%F)" >"$out_md" <<'EOF'
import glob, json, os, statistics, sys

out, runs, gpu, commit, date = sys.argv[1:]

def load(side):
    rows = []
    for path in sorted(glob.glob(f"{out}/{side}-*.json")):
        if os.path.getsize(path):
            rows.append(json.load(open(path)))
    return rows

kiln, torch = load("kiln"), load("torch")
print(f"# GPT-2 training on {gpu}: kiln vs PyTorch, {date}\n")
if not kiln or not torch:
    print(f"Incomplete: {len(kiln)} kiln and {len(torch)} PyTorch runs finished; see the logs in {out}/.")
    sys.exit(0)
k0, t0 = kiln[0], torch[0]
if gpu == "cpu":
    # The CPU comparison (--cpu): f32, no MFU (the peak is a GPU's) and no allocator statistics.
    print(f"{k0['preset']}, batch {k0['batch']} x {k0['seq']} tokens, random tokens, f32, AdamW (lr 6e-4, "
          f"betas 0.9/0.95, weight decay 0.1 on matrices). {k0['warmup']} warm-up and {k0['steps']} timed steps "
          "per run; runs interleaved (kiln torch torch kiln ...). Written by scripts/bench_gpt2.sh --cpu.\n")
    print(f"- kiln commit {commit}; attention backend {k0['attention']}; threads {os.environ.get('OMP_NUM_THREADS')}")
    print(f"- PyTorch {t0['torch']}: attention {t0['attention']}, torch.compile {t0['compile']}, "
          f"fused AdamW {t0['fused_adamw']}, threads {t0.get('threads')}, "
          f"OMP_WAIT_POLICY={os.environ.get('TORCH_OMP_WAIT_POLICY', 'PASSIVE')}\n")
    tk = [r["tokens_per_s"] for r in kiln]
    tt = [r["tokens_per_s"] for r in torch]
    mk, mt = statistics.median(tk), statistics.median(tt)
    print("| | kiln | PyTorch | kiln / PyTorch |\n|---|---:|---:|---:|")
    print(f"| tokens/s (median of runs) | {mk:,.0f} | {mt:,.0f} | **{mk / mt:.2f}x** |")
    ratios = [a / b for a, b in zip(tk, tt)]  # run i of each side: neighbours in time
    print(f"| tokens/s (min - max of runs; ratio: of run pairs) | {min(tk):,.0f} - {max(tk):,.0f} | "
          f"{min(tt):,.0f} - {max(tt):,.0f} | {min(ratios):.2f} - {max(ratios):.2f} |")
    print(f"| ms/step (median of the runs' medians) | {statistics.median(r['ms_per_step_median'] for r in kiln):.1f} | "
          f"{statistics.median(r['ms_per_step_median'] for r in torch):.1f} | |")
    def load(side, i):  # the 1-minute load average before -> after the run
        try:
            return " -> ".join(open(f"{out}/{side}-{i}.load").read().split())
        except OSError:
            return "-"
    print("\n| run | kiln tokens/s | PyTorch tokens/s | ratio | load avg kiln; PyTorch | kiln loss first -> last | PyTorch loss first -> last |")
    print("|---:|---:|---:|---:|---|---|---|")
    for i, (k, t) in enumerate(zip(kiln, torch), 1):
        print(f"| {i} | {k['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {k['tokens_per_s'] / t['tokens_per_s']:.2f} "
              f"| {load('kiln', i)}; {load('torch', i)} "
              f"| {k['loss_first']:.3f} -> {k['loss_last']:.3f} | {t['loss_first']:.3f} -> {t['loss_last']:.3f} |")
    sys.exit(0)
print(f"{k0['preset']}, batch {k0['batch']} x {k0['seq']} tokens, random tokens, {k0['autocast']} autocast, "
      f"fused AdamW (lr 6e-4, betas 0.9/0.95, weight decay 0.1 on matrices). {k0['warmup']} warm-up and "
      f"{k0['steps']} timed steps per run, each step synchronised; runs interleaved on the same device. "
      "Written by scripts/bench_gpt2.sh.\n")
print(f"- kiln commit {commit}; attention backend {k0['attention']}")
print(f"- PyTorch {t0['torch']}: attention {t0['attention']}, torch.compile {t0['compile']}, "
      f"fused AdamW {t0['fused_adamw']}")
print(f"- {k0['params']:,} parameters (lm_head tied to wte); MFU = tokens/s x (6N + 12 L C T) / "
      f"{k0['peak_tflops']:g} TFLOP/s (dense bf16 peak), N = the parameters less the position embedding\n")

def med(rows, key):
    return statistics.median(r[key] for r in rows)

GiB = 1 << 30
lines = ["| | kiln | PyTorch | kiln / PyTorch | goal |", "|---|---:|---:|---:|---|"]
tk, tt = med(kiln, "tokens_per_s"), med(torch, "tokens_per_s")
lines.append(f"| tokens/s (median of runs) | {tk:,.0f} | {tt:,.0f} | **{tk / tt:.2f}x** | >= 1.15x: "
             f"{'met' if tk / tt >= 1.15 else 'missed'} |")
lines.append(f"| ms/step (median) | {med(kiln, 'ms_per_step_median'):.1f} | {med(torch, 'ms_per_step_median'):.1f} | | |")
lines.append(f"| MFU | {100 * med(kiln, 'mfu'):.1f}% | {100 * med(torch, 'mfu'):.1f}% | | |")
for key, label, goal in [("peak_allocated_bytes", "peak allocated (allocator)", True),
                         ("peak_reserved_bytes", "peak reserved (allocator)", False),
                         ("device_used_bytes", "device memory in use at the end", False)]:
    mk, mt = max(r[key] for r in kiln), max(r[key] for r in torch)
    ratio = f"{mk / mt:.2f}x" if mt else "-"
    verdict = (f"<= 0.9x: {'met' if mk / mt <= 0.9 else 'missed'}" if goal and mt else "")
    lines.append(f"| {label} | {mk / GiB:.2f} GiB | {mt / GiB:.2f} GiB | {'**' + ratio + '**' if goal else ratio} | {verdict} |")
print("\n".join(lines))
print("\n| run | kiln tokens/s | PyTorch tokens/s | kiln loss first -> last | PyTorch loss first -> last |")
print("|---:|---:|---:|---|---|")
for i, (k, t) in enumerate(zip(kiln, torch), 1):
    print(f"| {i} | {k['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {k['loss_first']:.3f} -> {k['loss_last']:.3f} "
          f"| {t['loss_first']:.3f} -> {t['loss_last']:.3f} |")
EOF
cat "$out_md"
echo "bench_gpt2.sh: wrote $out_md (raw JSON and logs in $out/)"
exit $failed
