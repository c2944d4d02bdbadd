#!/usr/bin/env bash
# Checks kiln on a GPU machine without network: builds with CUDA into build-gpu/, runs the GPU tests
# plainly and under compute-sanitizer (memcheck, racecheck, synccheck), runs every benchmark (and
# GPT-2 training next to PyTorch: scripts/bench_gpt2.sh), and writes bench/results/<date>-<gpu>.md.
# Keeps going after failures; exits non-zero if any.
#   scripts/gpu-check.sh [CMAKE_ARGS...]
#   scripts/gpu-check.sh --fetch-deps     (on a Debian machine with network, see below)
# Environment: CUDNN_ROOT, NCCL_ROOT (default: the CUDA tree, else nvidia-cudnn/nccl Python wheels),
#   SANITIZER_TOOLS (default "memcheck racecheck synccheck"; "" skips them),
#   SANITIZER_TIMEOUT (seconds per test and tool, default 300), BENCH_TIMEOUT (per executable, 300),
#   GPT2_RUNS (runs of each side of the GPT-2 comparison, default 2; 0 skips it), GPT2_TIMEOUT,
#   PYTHON (a python3 with CUDA torch for the PyTorch sides; default: the first that imports torch).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
source scripts/report_lib.sh
py=/usr/bin/python3
[[ -x $py ]] || py=python3

# A GPU machine may lack Debian's -dev packages and cannot install them. `--fetch-deps` downloads
# them into .gpu-deps/ (git-ignored; carry it to the GPU machine), where they are unpacked and used.
deps=.gpu-deps
if [[ ${1:-} == --fetch-deps ]]; then
  mkdir -p "$deps" && chmod 777 "$deps"
  (cd "$deps" && apt-get download libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian \
    libcli11-dev libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 \
    libyaml-cpp-dev libyaml-cpp0.7 nlohmann-json3-dev zlib1g-dev)
  du -sh "$deps"
  exit 0
fi

log=build-gpu/gpu-check
mkdir -p "$log"
failed=0

# ---- toolchain and library hints
hints=()
[[ -d /usr/local/cuda/bin ]] && export PATH=/usr/local/cuda/bin:$PATH
cuda_home=$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")
wheel_root() {  # wheel_root NAME: the nvidia/NAME folder (with include/ and lib/) of a Python wheel
  local sites
  read -ra sites <<<"$("$py" -c 'import site; print(*site.getsitepackages())' 2>/dev/null || true)"
  find /opt/torch "${sites[@]}" -maxdepth 8 -type d -path "*/nvidia/$1" \
    -exec test -d {}/include -a -d {}/lib \; -print -quit 2>/dev/null || true
}
for lib in cudnn nccl; do
  var=${lib^^}_ROOT
  if [[ -z ${!var:-} && ! -f $cuda_home/include/$lib.h ]]; then
    root=$(wheel_root "$lib")
    [[ -n $root ]] && export "$var=$root"
  fi
  if [[ -n ${!var:-} ]]; then
    hints+=("-D$var=${!var}")
    export LD_LIBRARY_PATH=${!var}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
done
debs=("$deps"/*.deb)
if ((${#debs[@]})); then
  for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$deps/root"; done
  usr=$PWD/$deps/root/usr
  hints+=(-DCMAKE_PREFIX_PATH="$usr" -DBLA_VENDOR=OpenBLAS
    -DCMAKE_LIBRARY_PATH="$usr/lib/x86_64-linux-gnu/openblas-pthread"
    -DCBLAS_INCLUDE_DIR="$usr/include/x86_64-linux-gnu/openblas-pthread")
  export LD_LIBRARY_PATH=$usr/lib/x86_64-linux-gnu:$usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# ---- the device
nvidia-smi | tee "$log/nvidia-smi.txt" || failed=1
query() { nvidia-smi --query-gpu="$1" --format=csv,noheader 2>/dev/null | head -n 1 || true; }
gpu=$(query name) driver=$(query driver_version) memory=$(query memory.total) cap=$(query compute_cap)
driver_cuda=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$log/nvidia-smi.txt" | head -n 1 || true)
arch=${cap//./}

# ---- build
echo "== build build-gpu/ (CUDA architectures ${arch:-90}) ${hints[*]}"
if ! KILN_SKIP_SETUP=1 scripts/build.sh build-gpu -DKILN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" \
    "${hints[@]}" "$@" 2>&1 | tee "$log/build.log"; then
  echo "gpu-check: the build failed, see $log/build.log" >&2
  exit 1
fi
kiln_version=$(build-gpu/kiln --version 2>&1 || true)
field() { sed -n "s/^$1: *//p" <<<"$kiln_version" | head -n 1; }

# ---- GPU tests: once plainly through ctest, then each executable under each sanitizer tool
declare -A result
read -ra tools <<<"${SANITIZER_TOOLS-memcheck racecheck synccheck}"
ctest --test-dir build-gpu -L gpu --output-on-failure --timeout 900 2>&1 | tee "$log/ctest.log" || failed=1
while read -r name status; do
  case $status in
    Passed) result[$name,plain]=pass ;;
    Skipped) result[$name,plain]=skipped ;;
    *) result[$name,plain]="**$status**" ;;
  esac
done < <(sed -nE 's/^ *[0-9]+\/[0-9]+ +Test +#[0-9]+: +([^ ]+) [ .]*[*]*([A-Za-z]+).*/\1 \2/p' "$log/ctest.log")

# One line per GPU test: name, working directory, then its environment and command, shell-quoted.
"$py" - >"$log/gpu-tests.txt" <<'PY' || failed=1
import json, shlex, subprocess
tests = json.loads(subprocess.run(["ctest", "--test-dir", "build-gpu", "-L", "gpu", "--show-only=json-v1"],
                                  capture_output=True, text=True, check=True).stdout)["tests"]
for t in tests:
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    print(t["name"], props.get("WORKING_DIRECTORY", "."), shlex.join(props.get("ENVIRONMENT", [])),
          shlex.join(t["command"]), sep="\t")
PY
sanitizer=$(command -v compute-sanitizer || echo "$cuda_home/bin/compute-sanitizer")
while IFS=$'\t' read -r name dir environment cmd; do
  for tool in "${tools[@]}"; do
    extra=()
    [[ $tool == memcheck ]] && extra=(--leak-check full)
    echo "== $tool $name"
    status=0
    (cd "$dir" && eval "env $environment timeout -k 10 ${SANITIZER_TIMEOUT:-300} \
      $sanitizer --tool $tool ${extra[*]} --error-exitcode 99 $cmd") \
      >"$log/$name.$tool.log" 2>&1 || status=$?
    case $status in
      0) result[$name,$tool]=pass ;;
      124) result[$name,$tool]="**timeout**"; failed=1 ;;
      *) result[$name,$tool]="**fail ($status)**"; failed=1 ;;
    esac
    echo "${result[$name,$tool]}  (log: $log/$name.$tool.log)"
  done
done <"$log/gpu-tests.txt"

# ---- benchmarks
# Google Benchmark executables write JSON tables. bench_allreduce prints its own table (kept as
# text); bench_gpt2 runs below, next to PyTorch.
slug=$(tr '[:upper:]' '[:lower:]' <<<"${gpu:-unknown-gpu}" | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
jsons=() texts=()
for exe in build-gpu/bench/bench_*; do
  [[ -f $exe && -x $exe ]] || continue
  name=$(basename "$exe")
  echo "== $name"
  case $name in
    bench_gpt2) continue ;;
    bench_allreduce)
      timeout -k 10 "${BENCH_TIMEOUT:-300}" "$exe" >"$log/$name.txt" 2>"$log/$name.log" ||
        { echo "**$name failed** (log: $log/$name.log)"; failed=1; }
      [[ -s $log/$name.txt ]] && texts+=("$log/$name.txt")
      continue ;;
  esac
  timeout -k 10 "${BENCH_TIMEOUT:-300}" "$exe" --benchmark_format=json --benchmark_out="$log/$name.json" \
    >"$log/$name.log" 2>&1 || { echo "**$name failed** (log: $log/$name.log)"; failed=1; }
  [[ -s $log/$name.json ]] && jsons+=("$log/$name.json")
done

# PyTorch's side of the comparisons needs a python3 with (CUDA) torch: the machine's, not Debian's.
torch_py=${PYTHON:-}
if [[ -z $torch_py ]]; then
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then torch_py=$candidate; break; fi
  done
fi
if [[ -n $torch_py && -x build-gpu/bench/bench_attention ]]; then
  echo "== torch_sdpa.py (PyTorch's side of bench_attention)"
  timeout -k 10 "${BENCH_TIMEOUT:-300}" "$torch_py" bench/torch_sdpa.py >"$log/torch_sdpa.txt" 2>"$log/torch_sdpa.log" ||
    echo "torch_sdpa.py failed (log: $log/torch_sdpa.log)"
  [[ -s $log/torch_sdpa.txt ]] && texts+=("$log/torch_sdpa.txt")
fi

# GPT-2 124M training, kiln vs PyTorch: GPT2_RUNS runs of each side (default 2; 0 skips).
gpt2_md=""
if [[ ${GPT2_RUNS:-2} != 0 && -x build-gpu/bench/bench_gpt2 ]]; then
  if [[ -n $torch_py ]]; then
    gpt2_md=bench/results/$(date -u +%F)-gpt2-$slug.md
    echo "== GPT-2 training, kiln vs PyTorch (scripts/bench_gpt2.sh)"
    PYTHON=$torch_py scripts/bench_gpt2.sh --build-dir build-gpu --no-build --runs "${GPT2_RUNS:-2}" \
      --out "$gpt2_md" 2>&1 | tee "$log/bench_gpt2.log" || { echo "**bench_gpt2.sh failed**"; failed=1; }
  else
    echo "== GPT-2: no python3 with torch here, kiln alone"
    timeout -k 10 "${GPT2_TIMEOUT:-900}" build-gpu/bench/bench_gpt2 >"$log/bench_gpt2.txt" 2>"$log/bench_gpt2.log" ||
      { echo "**bench_gpt2 failed** (log: $log/bench_gpt2.log)"; failed=1; }
    [[ -s $log/bench_gpt2.txt ]] && texts+=("$log/bench_gpt2.txt")
  fi
fi

# ---- summary
md=bench/results/$(date -u +%F)-$slug.md
mkdir -p bench/results
{
  echo "# GPU check: ${gpu:-unknown GPU}, $(date -u +%F)"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| device | ${gpu:-?} (compute capability ${cap:-?}, ${memory:-?}) |"
  echo "| driver | ${driver:-?} (supports CUDA ${driver_cuda:-?}) |"
  echo "| CUDA toolkit | $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\),.*/\1/p'); runtime $(field CUDA) |"
  echo "| cuDNN | $(field cuDNN) |"
  echo "| NCCL | $(field NCCL) |"
  echo "| kiln | $(head -n 1 <<<"$kiln_version"), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown) |"
  echo
  echo "## GPU tests"
  echo
  header="| test | plain |" rule="|---|---|"
  for tool in "${tools[@]}"; do header+=" $tool |" rule+="---|"; done
  printf '%s\n' "$header" "$rule"
  while IFS=$'\t' read -r name _; do
    row="| $name | ${result[$name,plain]:-not run} |"
    for tool in "${tools[@]}"; do row+=" ${result[$name,$tool]:-not run} |"; done
    echo "$row"
  done <"$log/gpu-tests.txt"
  echo
  echo "## Benchmarks"
  echo
  if ((${#jsons[@]})); then "$py" scripts/bench_table.py --strict "${jsons[@]}" || failed=1; else echo "(none ran)"; fi
  md_text_sections "${texts[@]}"
  if [[ -s $gpt2_md ]]; then
    echo
    echo "## GPT-2 training, kiln vs PyTorch (from $gpt2_md)"
    echo
    tail -n +2 "$gpt2_md"
  fi
} >"$md"
echo "gpu-check: wrote $md; logs in $log/"
((failed == 0)) || echo "gpu-check: FAILED (see the table in $md)" >&2
exit $failed
