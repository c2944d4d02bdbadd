#!/usr/bin/env bash
# kiln next to PyTorch on one MLP 784-512-512-10 training step at batch 128 on the CPU (issue 4:
# kiln <= 0.8x PyTorch's time). Builds bench_mlp_step in Release (build-release/, the folder and
# flags scripts/bench.sh uses, but only the targets needed), then runs it and
# bench/torch_mlp_step.py (Debian's PyTorch 1.13) alternately, RUNS times each, in the order
# kiln torch torch kiln kiln torch ..., so drifting machine load hits both alike. Writes
# bench/results/<date>-mlp-step-cpu.md and the raw JSON in build-release/bench-mlp/.
#   scripts/bench_mlp.sh [--runs N] [--max-load L] [--no-build]
#     --max-load L   before each run, wait (at most 10 minutes) until the 1-minute load average
#                    is below L; other people's compiles on the same cores distort both sides
# Threads: OMP_NUM_THREADS if set, else nproc, for both.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 max_load="" build=1
steps=500  # bench_mlp_step.cpp's kSteps; torch_mlp_step.py is told the same
while (($#)); do
  case $1 in
    --runs) runs=$2; shift 2 ;;
    --max-load) max_load=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "usage: scripts/bench_mlp.sh [--runs N] [--max-load L] [--no-build]" >&2; exit 2 ;;
  esac
done

py=/usr/bin/python3  # Debian's, which has torch 1.13; never a venv's
"$py" -c 'import torch' 2>/dev/null || { echo "bench_mlp.sh: $py cannot import torch (apt install python3-torch)" >&2; exit 1; }
threads=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads

exe=build-release/bench/bench_mlp_step
if ((build)); then
  # As scripts/build.sh, but only this target: the full tree takes many minutes on 2 cores.
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
    sleep 10
  done
}

# One run of one side: its JSON in $out/<side>-<i>.json, the load averages before and after in
# $out/<side>-<i>.load.
run_side() {
  local side=$1 i=$2 json=$out/$1-$2.json
  wait_for_load
  cut -d' ' -f1-3 /proc/loadavg >"$out/$side-$i.load"
  echo "== run $i: $side (load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [[ $side == kiln ]]; then
    "$exe" --benchmark_filter=BM_MlpStepCpu --benchmark_format=json >"$json" 2>"$out/$side-$i.err"
  else
    "$py" bench/torch_mlp_step.py --steps "$steps" --threads "$threads" >"$json"
  fi
  cut -d' ' -f1-3 /proc/loadavg >>"$out/$side-$i.load"
}

for ((i = 1; i <= runs; i++)); do
  if ((i % 2)); then run_side kiln $i; run_side torch $i
  else run_side torch $i; run_side kiln $i; fi
done

md=bench/results/$(date +%F)-mlp-step-cpu.md
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)

"$py" - "$out" "$runs" "$threads" "$cpu" "$commit" "$(date +%F)" "$steps" >"$md" <<'EOF'
import json, statistics, sys

out, runs, threads, cpu, commit, date, steps = sys.argv[1:]
runs = int(runs)

def kiln(i):
    data = json.load(open(f"{out}/kiln-{i}.json"))
    b = next(b for b in data["benchmarks"] if b["name"].startswith("BM_MlpStepCpu"))
    if b.get("error_occurred"):
        sys.exit(f"kiln run {i}: {b.get('error_message')}")
    return {"median_ms": b["median_ms"], "min_ms": b["min_ms"], "steps": b["iterations"]}

def torch(i):
    return json.load(open(f"{out}/torch-{i}.json"))

def load(side, i):
    before, after = open(f"{out}/{side}-{i}.load").read().split("\n")[:2]
    return before.split()[0], after.split()[0]

k = [kiln(i) for i in range(1, runs + 1)]
t = [torch(i) for i in range(1, runs + 1)]
k_med = statistics.median(r["median_ms"] for r in k)
t_med = statistics.median(r["median_ms"] for r in t)
k_min = min(r["min_ms"] for r in k)
t_min = min(r["min_ms"] for r in t)

print(f"# MLP 784-512-512-10 training step, batch 128, CPU: kiln vs PyTorch {t[0]['torch']}, {date}\n")
print("One step: forward, cross-entropy, backward, AdamW(lr=1e-3, weight_decay=0.01 on the matrices),")
print(f"zero_grad(set_to_none). {steps} timed steps after 20 warm-up steps per run; {runs} runs of each,")
print("interleaved (kiln torch torch kiln ...). Written by scripts/bench_mlp.sh.\n")
print(f"- CPU: {cpu}, {threads} threads for both (OMP_NUM_THREADS / torch.set_num_threads)")
print(f"- kiln commit {commit}, Release build, OpenBLAS (OpenMP)")
print(f"- PyTorch {t[0]['torch']} (Debian python3-torch), /usr/bin/python3\n")
print("| | kiln ms/step | PyTorch ms/step | kiln / PyTorch |")
print("|---|---:|---:|---:|")
print(f"| median of the runs' medians | {k_med:.3f} | {t_med:.3f} | **{k_med / t_med:.2f}** |")
print(f"| best step of all runs | {k_min:.3f} | {t_min:.3f} | {k_min / t_min:.2f} |\n")
verdict = "meets" if k_med / t_med <= 0.8 else "misses"
print(f"Goal kiln <= 0.8x PyTorch: {verdict} it ({k_med / t_med:.2f}x).\n")
print("Per run (load average = 1-minute figure before -> after the run):\n")
print("| run | kiln median | kiln min | load (kiln) | PyTorch median | PyTorch min | load (PyTorch) | ratio |")
print("|---:|---:|---:|---|---:|---:|---|---:|")
for i, (kr, tr) in enumerate(zip(k, t), 1):
    kl, tl = load("kiln", i), load("torch", i)
    print(f"| {i} | {kr['median_ms']:.3f} | {kr['min_ms']:.3f} | {kl[0]} -> {kl[1]} | "
          f"{tr['median_ms']:.3f} | {tr['min_ms']:.3f} | {tl[0]} -> {tl[1]} | "
          f"{kr['median_ms'] / tr['median_ms']:.2f} |")
EOF
cat "$md"
echo "bench_mlp.sh: wrote $md"
