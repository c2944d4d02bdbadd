#!/usr/bin/env bash
# kiln next to PyTorch on one MLP 784-512-512-10 training step at batch 128 on the CPU (issue 4:
# kiln <= 0.8x PyTorch's time). Builds bench_mlp_step in Release (build-release/, the folder and
# flags of scripts/bench.sh, but only the targets needed), then runs it and
# bench/torch_mlp_step.py (Debian's PyTorch 1.13) alternately, RUNS times each, in the order
# kiln torch torch kiln kiln torch ..., so drifting machine load hits both alike. Writes
# bench/results/<date>-mlp-step-cpu.md and the raw JSON in build-release/bench-mlp/.
#   scripts/bench_mlp.sh [--runs N] [--threads "LIST"] [--max-load L] [--no-build]
#     --threads "1 2"  one comparison per thread count (default: OMP_NUM_THREADS, else nproc)
#     --max-load L     before each run, wait (at most 10 minutes) until the 1-minute load
#                      average is below L: other people's compiles on the same cores distort
#                      both sides, OpenMP's spinning barriers most of all
# Each run also records how many cores other processes kept busy while it ran (from
# /proc/stat, less the run's own CPU time): near 0 means the numbers are clean.
# Each side runs at its best: PyTorch with OMP_WAIT_POLICY=PASSIVE (TORCH_OMP_WAIT_POLICY
# overrides), since Debian's torch runs its own ops on libgomp and its GEMMs on OpenBLAS's
# pthreads, and libgomp's spinning idle workers take the cores from the GEMM threads (~1.4x
# slower steps); kiln (one OpenMP runtime) with the default policy.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 max_load="" build=1 thread_list=${OMP_NUM_THREADS:-$(nproc)}
steps=500  # bench_mlp_step.cpp's kSteps; torch_mlp_step.py is told the same
usage="usage: scripts/bench_mlp.sh [--runs N] [--threads \"LIST\"] [--max-load L] [--no-build]"
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --threads) thread_list=$2; shift 2 ;;
    --max-load) max_load=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done

py=/usr/bin/python3  # Debian's, which has torch 1.13; never a venv's
"$py" -c 'import torch' 2>/dev/null || { echo "bench_mlp.sh: $py cannot import torch (apt install python3-torch)" >&2; exit 1; }

exe=build-release/bench/bench_mlp_step
if ((build)); then
  # As scripts/build.sh, but only this target: the whole tree takes many minutes on 2 cores.
  export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=true
  cmake -S . -B build-release -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF -DKILN_BENCH=ON \
    -DBUILD_TESTING=OFF >/dev/null
  cmake --build build-release -j"$(nproc)" --target bench_mlp_step
fi
[[ -x $exe ]] || { echo "bench_mlp.sh: $exe not built" >&2; exit 1; }

out=build-release/bench-mlp
rm -rf "$out" && mkdir -p "$out" bench/results

wait_for_load() {
  [[ -n $max_load ]] || return 0
  local deadline=$((SECONDS + 600)) load
  while :; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    awk -v l="$load" -v m="$max_load" 'BEGIN { exit !(l < m) }' && return 0
    ((SECONDS < deadline)) || { echo "bench_mlp.sh: load $load still >= $max_load, running anyway" >&2; return 0; }
    sleep 5
  done
}

# Busy jiffies of the whole machine (user nice system irq softirq steal), from /proc/stat.
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# CPU seconds this shell's finished children have used, into the variable named $1: bash's
# `times` (second line), run in this shell, not in a $(...) subshell that has no children.
children_cpu() {
  times >"$out/times"
  printf -v "$1" %s "$(sed -n 2p "$out/times" |
    awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } print t }')"
}

# One run of one side with `threads` threads: its JSON in $out/<side>-t<threads>-<i>.json;
# in .load: the 1-minute load average before and after, and the cores other processes kept busy.
run_side() {
  local side=$1 threads=$2 i=$3 base=$out/$1-t$2-$3
  wait_for_load
  local load0 busy0 own0 own1 t0 hz
  children_cpu own0
  load0=$(cut -d' ' -f1 /proc/loadavg) busy0=$(busy_jiffies) t0=$EPOCHREALTIME
  echo "== $side, $threads threads, run $i (load $load0)"
  if [[ $side == kiln ]]; then
    OMP_NUM_THREADS=$threads "$exe" --benchmark_filter=BM_MlpStepCpu --benchmark_format=json \
      >"$base.json" 2>"$base.err"
  else
    OMP_WAIT_POLICY=${TORCH_OMP_WAIT_POLICY:-PASSIVE} OMP_NUM_THREADS=$threads "$py" bench/torch_mlp_step.py \
      --steps "$steps" --threads "$threads" >"$base.json"
  fi
  children_cpu own1
  hz=$(getconf CLK_TCK)
  awk -v l0="$load0" -v l1="$(cut -d' ' -f1 /proc/loadavg)" -v b0="$busy0" -v b1="$(busy_jiffies)" \
      -v o0="$own0" -v o1="$own1" -v t0="$t0" -v t1="$EPOCHREALTIME" -v hz="$hz" \
      'BEGIN { others = ((b1 - b0) / hz - (o1 - o0)) / (t1 - t0); if (others < 0) others = 0
               printf "%s %s %.2f\n", l0, l1, others }' >"$base.load"
}

for threads in $thread_list; do
  for ((i = 1; i <= runs; i++)); do
    if ((i % 2)); then run_side kiln "$threads" $i; run_side torch "$threads" $i
    else run_side torch "$threads" $i; run_side kiln "$threads" $i; fi
  done
done

md=bench/results/$(date +%F)-mlp-step-cpu.md
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)

"$py" - "$out" "$runs" "$thread_list" "$cpu" "$commit" "$(date +%F)" "$steps" "$(nproc)" >"$md" <<'EOF'
import json, os, statistics, sys

out, runs, thread_list, cpu, commit, date, steps, nproc = sys.argv[1:]
runs = int(runs)

def kiln(threads, i):
    data = json.load(open(f"{out}/kiln-t{threads}-{i}.json"))
    b = next(b for b in data["benchmarks"] if b["name"].startswith("BM_MlpStepCpu"))
    if b.get("error_occurred"):
        sys.exit(f"kiln run {i}: {b.get('error_message')}")
    return b

def load(side, threads, i):
    return open(f"{out}/{side}-t{threads}-{i}.load").read().split()

torch_version = None
sections = []
for threads in thread_list.split():
    k = [kiln(threads, i) for i in range(1, runs + 1)]
    t = [json.load(open(f"{out}/torch-t{threads}-{i}.json")) for i in range(1, runs + 1)]
    torch_version = t[0]["torch"]
    k_med = statistics.median(r["median_ms"] for r in k)
    t_med = statistics.median(r["median_ms"] for r in t)
    k_min, t_min = min(r["min_ms"] for r in k), min(r["min_ms"] for r in t)
    ratio = k_med / t_med
    lines = [f"## {threads} thread{'s' if threads != '1' else ''}\n",
             "| | kiln ms/step | PyTorch ms/step | kiln / PyTorch |", "|---|---:|---:|---:|",
             f"| median of the runs' medians | {k_med:.3f} | {t_med:.3f} | **{ratio:.2f}** |",
             f"| best step of all runs | {k_min:.3f} | {t_min:.3f} | {k_min / t_min:.2f} |\n",
             f"Goal kiln <= 0.8x PyTorch: {'met' if ratio <= 0.8 else 'missed'} ({ratio:.2f}x).\n",
             "| run | kiln median | kiln min | PyTorch median | PyTorch min | ratio "
             "| load avg (kiln; PyTorch) | other processes' cores (kiln; PyTorch) |",
             "|---:|---:|---:|---:|---:|---:|---|---|"]
    for i, (kr, tr) in enumerate(zip(k, t), 1):
        kl, tl = load("kiln", threads, i), load("torch", threads, i)
        lines.append(f"| {i} | {kr['median_ms']:.3f} | {kr['min_ms']:.3f} | {tr['median_ms']:.3f} | "
                     f"{tr['min_ms']:.3f} | {kr['median_ms'] / tr['median_ms']:.2f} | "
                     f"{kl[0]}->{kl[1]}; {tl[0]}->{tl[1]} | {kl[2]}; {tl[2]} |")
    sections.append("\n".join(lines))

print(f"# MLP 784-512-512-10 training step, batch 128, CPU: kiln vs PyTorch {torch_version}, {date}\n")
print("One step: forward, cross-entropy, backward, AdamW(lr=1e-3, weight_decay=0.01 on the matrices),")
print(f"zero_grad(set_to_none). {steps} timed steps after 20 warm-up steps per run; {runs} runs of each")
print("side per thread count, interleaved (kiln torch torch kiln ...). Written by scripts/bench_mlp.sh;")
print("times are per step, milliseconds.\n")
print(f"- CPU: {cpu}, {nproc} cores; threads as listed, the same for both sides")
print(f"- kiln commit {commit}, Release build, OpenBLAS (OpenMP build)")
print(f"- PyTorch {torch_version} (Debian python3-torch), /usr/bin/python3, "
      f"OMP_WAIT_POLICY={os.environ.get('TORCH_OMP_WAIT_POLICY', 'PASSIVE')} (its faster setting)")
print("- load: the 1-minute load average before->after each run, and the cores that other processes")
print("  kept busy during it (/proc/stat less the run's own CPU time); above ~0.2 the run was disturbed\n")
print("\n\n".join(sections))
EOF
cat "$md"
echo "bench_mlp.sh: wrote $md"
