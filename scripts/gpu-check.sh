#!/usr/bin/env bash
# Checks kiln on a GPU machine without network: builds with CUDA into build-gpu/, runs the GPU tests,
# trains the MLP and LeNet configs on the GPU, runs every benchmark (and GPT-2 training next to
# PyTorch: scripts/bench_gpt2.sh), runs the GPU tests under compute-sanitizer (memcheck, racecheck,
# synccheck), and writes bench/results/<date>-<gpu>.md.
#   scripts/gpu-check.sh [--budget SECONDS] [--only STAGES] [--redo] [CMAKE_ARGS...]
#   scripts/gpu-check.sh --fetch-deps     (on a Debian machine with network, see below)
#
# Resumable, to fit machines lent for a few minutes a call: each finished item (a test, a test under
# one sanitizer tool, a training run, a benchmark) is recorded in build-gpu/gpu-check/state/, and a
# later call skips what is recorded and goes on with the rest. With --budget, no new item starts
# when it could not finish in the time left; the call then exits 3 ("call again"). The record is
# dropped when the sources change. Every call rewrites the report from the whole record, and copies
# it, the GPT-2 comparison and a tarball of the logs into $OUT when that is set.
#   --budget SECONDS   stop starting items after this long (default: 540 when $OUT is set, else none)
#   --only STAGES      comma-separated subset of: test,train,bench,gpt2,sanitize (the build always runs)
#   --redo             forget the record and run everything again
# Stages run in that order; sanitizers last, since they take the longest: memcheck on every test
# first, then racecheck, then synccheck.
# Exit status: 0 all done and passed; 1 something failed; 3 unfinished, call again.
# Environment: CUDNN_ROOT, NCCL_ROOT (default: the CUDA tree, else nvidia-cudnn/nccl Python wheels),
#   SANITIZER_TOOLS (default "memcheck racecheck synccheck"; "" skips them), COMPUTE_SANITIZER (its path),
#   SANITIZER_TIMEOUT (seconds per test and tool, default 300), BENCH_TIMEOUT (per executable, 300),
#   GPT2_RUNS (runs of each side of the GPT-2 comparison, default 1; 0 skips it),
#   PYTHON (a python3 with CUDA torch for the PyTorch sides; default: the first that imports torch),
#   KILN_COMMIT (the commit the report names where the tree has no .git, as on the device tool).
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
source scripts/report_lib.sh
py=/usr/bin/python3
[[ -x $py ]] || py=python3

# A GPU machine may lack Debian's -dev packages and cannot install them. `--fetch-deps` downloads
# them, and the Fashion-MNIST package the training stage reads, into .gpu-deps/ (git-ignored;
# carry it to the GPU machine), where they are unpacked into build-gpu/deps/ and used.
deps=.gpu-deps
if [[ ${1:-} == --fetch-deps ]]; then
  mkdir -p "$deps" && chmod 777 "$deps"
  (cd "$deps" && apt-get download libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian \
    libcli11-dev libopenblas-dev libopenblas-pthread-dev libopenblas0-pthread libgfortran5 \
    libyaml-cpp-dev libyaml-cpp0.7 nlohmann-json3-dev zlib1g-dev dataset-fashion-mnist)
  du -sh "$deps"
  exit 0
fi

budget="" only="" redo=0 cmake_args=()
while (($#)); do
  case $1 in
    --budget) budget=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --redo) redo=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) cmake_args+=("$1"); shift ;;
  esac
done
[[ -n $budget ]] || { [[ -n ${OUT:-} ]] && budget=540 || budget=0; }
started=$SECONDS
remaining() { ((budget > 0)) && echo $((budget - (SECONDS - started))) || echo 1000000; }
# until SECONDS LIMIT: the timeout for an item allowed LIMIT seconds, cut to the time left.
until_limit() { local r; r=$(remaining); ((r < $1)) && echo "$r" || echo "$1"; }
wants() { [[ -z $only || ,$only, == *,$1,* ]]; }

log=build-gpu/gpu-check
state=$log/state
mkdir -p "$log"

# The record belongs to one state of the sources: anything that could change a result.
fingerprint=$(find CMakeLists.txt core kernels nn optim models data dist tools tests bench scripts configs \
    \( -path data/kjv -o -path bench/results \) -prune -o -type f \( -name '*.cpp' -o -name '*.h' \
    -o -name '*.cu' -o -name '*.cuh' -o -name CMakeLists.txt -o -name '*.sh' -o -name '*.py' -o -name '*.yaml' \) \
    -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-12)
if ((redo)) || [[ $(cat "$log/fingerprint" 2>/dev/null) != "$fingerprint" ]]; then
  rm -rf "$state" "$log"/*.log "$log"/*.json "$log"/*.txt "$log/runs"
  echo "$fingerprint" >"$log/fingerprint"
fi
mkdir -p "$state"
recorded() { [[ -f $state/$1 ]]; }
record() { printf '%s\n' "$2" >"$state/$1"; }
result_of() { cat "$state/$1" 2>/dev/null || echo "not run"; }
unfinished=0
# affords KEY SECONDS: KEY is not recorded yet and there is time to start it (SECONDS: about its cost).
affords() {
  recorded "$1" && return 1
  (($(remaining) >= $2)) && return 0
  echo "== $1: left for the next call ($(remaining) s of the budget left)"
  unfinished=1
  return 1
}
# verdict KEY STATUS LIMIT TIMEOUT_USED LOG: records pass/fail; a run cut short by the budget (its
# timeout was below its own limit) is left unrecorded, to be run again with the time it needs.
verdict() {
  local key=$1 status=$2 limit=$3 used=$4 file=$5
  case $status in
    0) record "$key" pass ;;
    124|137)
      if ((used < limit)); then unfinished=1; echo "$key: cut short by the budget, left for the next call"; return; fi
      record "$key" "**timeout**" ;;
    *) record "$key" "**fail ($status)**" ;;
  esac
  echo "$key: $(result_of "$key")  (log: $file)"
}

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
data_dir=""
if ((${#debs[@]})); then
  unpacked=build-gpu/deps
  if [[ $(cat "$unpacked/debs" 2>/dev/null) != "${debs[*]}" ]]; then
    rm -rf "$unpacked"
    mkdir -p "$unpacked"
    for deb in "${debs[@]}"; do
      if command -v dpkg-deb >/dev/null; then dpkg-deb -x "$deb" "$unpacked"
      else ar p "$deb" "$(ar t "$deb" | grep '^data\.tar')" | tar -xJ -C "$unpacked"; fi  # no dpkg: the data.tar.xz
    done
    echo "${debs[*]}" >"$unpacked/debs"
  fi
  usr=$PWD/$unpacked/usr
  hints+=(-DCMAKE_PREFIX_PATH="$usr" -DBLA_VENDOR=OpenBLAS
    -DCMAKE_LIBRARY_PATH="$usr/lib/x86_64-linux-gnu/openblas-pthread"
    -DCBLAS_INCLUDE_DIR="$usr/include/x86_64-linux-gnu/openblas-pthread")
  export LD_LIBRARY_PATH=$usr/lib/x86_64-linux-gnu:$usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  [[ -d $usr/share/datasets/fashion-mnist ]] && data_dir=$usr/share/datasets/fashion-mnist
fi

# ---- the device
nvidia-smi >"$log/nvidia-smi.txt" 2>&1 || true
query() { nvidia-smi --query-gpu="$1" --format=csv,noheader 2>/dev/null | head -n 1 || true; }
gpu=$(query name) driver=$(query driver_version) memory=$(query memory.total) cap=$(query compute_cap)
driver_cuda=$(sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' "$log/nvidia-smi.txt" | head -n 1 || true)
arch=${cap//./}
[[ -n $gpu ]] || echo "gpu-check: nvidia-smi sees no GPU; the GPU tests will skip" >&2
slug=$(tr '[:upper:]' '[:lower:]' <<<"${gpu:-unknown-gpu}" | sed -E 's/[^a-z0-9]+/-/g; s/^-|-$//g')
md=bench/results/$(date -u +%F)-$slug.md
gpt2_md=bench/results/$(date -u +%F)-gpt2-$slug.md

# ---- build: only what the stages run (the CLI, the GPU tests, the benchmarks)
echo "== build build-gpu/ (CUDA architectures ${arch:-90}) ${hints[*]}"
export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=true
if ! { cmake -S . -B build-gpu -G Ninja -DKILN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${arch:-90}" \
         "${hints[@]}" "${cmake_args[@]}" &&
       cmake --build build-gpu -j"$(nproc)" --target kiln_cli gpu_tests benchmarks; } >"$log/build.log" 2>&1; then
  tail -n 40 "$log/build.log"
  [[ -z ${OUT:-} ]] || cp "$log/build.log" "$OUT/"
  echo "gpu-check: the build failed, see $log/build.log" >&2
  exit 1
fi
echo "build: done in $((SECONDS - started)) s"
kiln_version=$(build-gpu/kiln --version 2>&1 || true)
field() { sed -n "s/^$1: *//p" <<<"$kiln_version" | head -n 1; }

# One line per GPU test: name, working directory, then its environment and command, shell-quoted.
"$py" - >"$log/gpu-tests.txt" <<'PY'
import json, shlex, subprocess
tests = json.loads(subprocess.run(["ctest", "--test-dir", "build-gpu", "-L", "gpu", "--show-only=json-v1"],
                                  capture_output=True, text=True, check=True).stdout)["tests"]
for t in tests:
    props = {p["name"]: p["value"] for p in t.get("properties", [])}
    print(t["name"], props.get("WORKING_DIRECTORY", "."), shlex.join(props.get("ENVIRONMENT", [])),
          shlex.join(t["command"]), sep="\t")
PY
mapfile -t test_names < <(cut -f1 "$log/gpu-tests.txt")

# ---- GPU tests, once each through ctest
if wants test && affords test.ctest 120; then
  limit=900 used=$(until_limit 900)
  echo "== ctest -L gpu"
  status=0
  ctest --test-dir build-gpu -L gpu --output-on-failure --timeout "$used" >"$log/ctest.log" 2>&1 || status=$?
  while read -r name verdict_word; do
    case $verdict_word in
      Passed) record "test.$name" pass ;;
      Skipped) record "test.$name" skipped ;;
      *) record "test.$name" "**$verdict_word**" ;;
    esac
  done < <(sed -nE 's/^ *[0-9]+\/[0-9]+ +Test +#[0-9]+: +([^ ]+) [ .]*[*]*([A-Za-z]+).*/\1 \2/p' "$log/ctest.log")
  ((status == 0)) || grep -A3 -E '^ *[0-9]+/[0-9]+ Test .*(Failed|Timeout|Exception)' "$log/ctest.log" | head -n 40 || true
  record test.ctest "exit $status"
  sed -n '/tests passed/,$p' "$log/ctest.log"
fi

# ---- training end to end on the GPU: the default MLP and the CNN config
for config in mlp_fashion_mnist lenet_fashion_mnist; do
  wants train && affords "train.$config" 90 || continue
  echo "== kiln train configs/$config.yaml device=cuda"
  run_dir=$log/runs/$config
  rm -rf "$run_dir"
  limit=600 used=$(until_limit 600) status=0
  timeout -k 10 "$used" build-gpu/kiln train "configs/$config.yaml" device=cuda log.run_dir="$run_dir" \
    ${data_dir:+data.dir="$data_dir"} >"$log/train-$config.log" 2>&1 || status=$?
  verdict "train.$config" "$status" "$limit" "$used" "$log/train-$config.log"
  if [[ $(result_of "train.$config") == pass ]]; then
    accuracy=$(sed -n 's/.*test accuracy \([0-9.]*%\).*/\1/p' "$log/train-$config.log" | tail -n 1)
    rate=$(sed -n 's/.*| \([0-9.]*\) samples\/s.*/\1/p' "$log/train-$config.log" | sort -n | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}')
    record "train.$config" "pass: test accuracy ${accuracy:-?}, median ${rate:-?} samples/s over the logged steps"
  fi
done

# ---- benchmarks: Google Benchmark executables write JSON tables; bench_allreduce prints its own
# table (kept as text); bench_gpt2 runs below, next to PyTorch.
for exe in build-gpu/bench/bench_*; do
  [[ -f $exe && -x $exe ]] || continue
  name=$(basename "$exe")
  [[ $name == bench_gpt2 ]] && continue
  wants bench && affords "bench.$name" 60 || continue
  echo "== $name"
  limit=${BENCH_TIMEOUT:-300} status=0
  used=$(until_limit "$limit")
  if [[ $name == bench_ddp_overlap ]]; then  # one rank per GPU: nothing to overlap with fewer than two
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if ((gpus < 2)); then record "bench.$name" "skipped: needs 2 GPUs, found ${gpus:-0}"; continue; fi
    timeout -k 10 "$used" "$exe" --device cuda --world "$gpus" >"$log/$name.txt" 2>"$log/$name.log" || status=$?
  elif [[ $name == bench_allreduce ]]; then
    timeout -k 10 "$used" "$exe" >"$log/$name.txt" 2>"$log/$name.log" || status=$?
  else
    timeout -k 10 "$used" "$exe" --benchmark_format=json --benchmark_out="$log/$name.json" \
      >"$log/$name.log" 2>&1 || status=$?
  fi
  verdict "bench.$name" "$status" "$limit" "$used" "$log/$name.log"
done

# PyTorch's side of the comparisons needs a python3 with (CUDA) torch: the machine's, not Debian's.
torch_py=${PYTHON:-}
if [[ -z $torch_py ]]; then
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then torch_py=$candidate; break; fi
  done
fi
if [[ -n $torch_py && -x build-gpu/bench/bench_attention ]] && wants bench && affords bench.torch_sdpa 60; then
  echo "== torch_sdpa.py (PyTorch's side of bench_attention)"
  limit=${BENCH_TIMEOUT:-300} status=0
  used=$(until_limit "$limit")
  timeout -k 10 "$used" "$torch_py" bench/torch_sdpa.py >"$log/torch_sdpa.txt" 2>"$log/torch_sdpa.log" || status=$?
  verdict bench.torch_sdpa "$status" "$limit" "$used" "$log/torch_sdpa.log"
fi

# ---- GPT-2 124M training, kiln vs PyTorch: GPT2_RUNS runs of each side (default 1; 0 skips).
gpt2_runs=${GPT2_RUNS:-1}
if ((gpt2_runs > 0)) && [[ -x build-gpu/bench/bench_gpt2 ]] && wants gpt2 && affords gpt2 240; then
  if [[ -n $torch_py ]]; then
    echo "== GPT-2 training, kiln vs PyTorch (scripts/bench_gpt2.sh)"
    # Each run gets an equal share of the time left (kiln may retry at half the batch on OOM).
    limit=900 share=$(( ($(remaining) - 20) / (2 * gpt2_runs) ))
    used=$(( share < limit ? share : limit )) status=0
    GPT2_TIMEOUT=$used PYTHON=$torch_py scripts/bench_gpt2.sh --build-dir build-gpu --no-build \
      --runs "$gpt2_runs" --out "$gpt2_md" >"$log/bench_gpt2.log" 2>&1 || status=$?
    verdict gpt2 "$status" "$limit" "$used" "$log/bench_gpt2.log"
  else
    echo "== GPT-2: no python3 with torch here, kiln alone"
    limit=${GPT2_TIMEOUT:-900} status=0
    used=$(until_limit "$limit")
    timeout -k 10 "$used" build-gpu/bench/bench_gpt2 >"$log/bench_gpt2.txt" 2>"$log/bench_gpt2.log" || status=$?
    verdict gpt2 "$status" "$limit" "$used" "$log/bench_gpt2.log"
  fi
fi

# ---- sanitizers: each GPU test executable under each tool, tool by tool
read -ra tools <<<"${SANITIZER_TOOLS-memcheck racecheck synccheck}"
sanitizer=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo "$cuda_home/bin/compute-sanitizer")}
if wants sanitize && ((${#tools[@]})) && [[ ! -x $sanitizer ]]; then
  echo "gpu-check: no compute-sanitizer at $sanitizer" >&2
  for tool in "${tools[@]}"; do for name in "${test_names[@]}"; do record "$tool.$name" "**no compute-sanitizer**"; done; done
elif wants sanitize; then
  for tool in "${tools[@]}"; do
    while IFS=$'\t' read -r name dir environment cmd; do
      affords "$tool.$name" 30 || continue
      extra=()
      [[ $tool == memcheck ]] && extra=(--leak-check full)
      echo "== $tool $name"
      limit=${SANITIZER_TIMEOUT:-300} status=0
      used=$(until_limit "$limit")
      (cd "$dir" && eval "env $environment timeout -k 10 $used \
        $sanitizer --tool $tool ${extra[*]} --error-exitcode 99 $cmd") \
        >"$log/$name.$tool.log" 2>&1 || status=$?
      verdict "$tool.$name" "$status" "$limit" "$used" "$log/$name.$tool.log"
    done <"$log/gpu-tests.txt"
  done
fi

# ---- the report, from the whole record
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
  echo "| kiln | $(head -n 1 <<<"$kiln_version"), commit $(git rev-parse --short HEAD 2>/dev/null || echo "${KILN_COMMIT:-unknown}"), sources $fingerprint |"
  echo
  echo "## GPU tests"
  echo
  header="| test | plain |" rule="|---|---|"
  for tool in "${tools[@]}"; do header+=" $tool |" rule+="---|"; done
  printf '%s\n' "$header" "$rule"
  for name in "${test_names[@]}"; do
    row="| $name | $(result_of "test.$name") |"
    for tool in "${tools[@]}"; do row+=" $(result_of "$tool.$name") |"; done
    echo "$row"
  done
  echo
  echo "## CUDA sources and the GPU tests that name them"
  echo
  echo "| source | kernels (\`__global__\`) | tests |"
  echo "|---|---|---|"
  for src in kernels/cuda/*.cu kernels/cuda/*.cuh kernels/cuda/*.h; do
    kernels=$("$py" -c 'import re, sys
src = open(sys.argv[1]).read()
names = re.findall(r"__global__\s+(?:static\s+)?(?:void\s+)?(?:__launch_bounds__\([^)]*\)\s+)?(?:void\s+)?(\w+)\s*\(", src)
print(" ".join(sorted(set(names))))' "$src")
    stem=$(basename "${src%.*}")
    covering=$(grep -lE "kernels/cuda/$stem\.(cu|cuh|h)\b" tests/test_*cuda* tests/test_*emulated* 2>/dev/null |
      xargs -r -n1 basename | sed -E 's/\.(cpp|cu)$//' | paste -sd' ' -)
    echo "| $(basename "$src") | ${kernels:-none: library calls or device functions} | ${covering:-**none names it**} |"
  done
  echo
  echo "## Training on the GPU"
  echo
  echo "| config | result |"
  echo "|---|---|"
  for config in mlp_fashion_mnist lenet_fashion_mnist; do echo "| $config | $(result_of "train.$config") |"; done
  echo
  echo "## Benchmarks"
  echo
  jsons=() texts=()
  for name in "$log"/bench_*.json; do recorded "bench.$(basename "$name" .json)" && jsons+=("$name"); done
  for name in "$log"/bench_allreduce.txt "$log"/bench_ddp_overlap.txt "$log"/torch_sdpa.txt "$log"/bench_gpt2.txt; do [[ -s $name ]] && texts+=("$name"); done
  for key in "$state"/bench.*; do
    [[ $(cat "$key") == pass ]] || echo "- $(basename "$key" | sed 's/^bench\.//'): $(cat "$key")"
  done
  if ((${#jsons[@]})); then "$py" scripts/bench_table.py "${jsons[@]}"; else echo "(none ran)"; fi
  md_text_sections "${texts[@]}"
  if [[ -s $gpt2_md ]]; then
    echo
    echo "## GPT-2 training, kiln vs PyTorch (from $gpt2_md)"
    echo
    tail -n +2 "$gpt2_md"
  fi
  ((unfinished == 0)) || { echo; echo "**Unfinished**: items marked \"not run\" were left for a later call."; }
} >"$md"

failed=0
grep -qs '^\*\*' "$state"/* && failed=1
for key in "$state"/bench.*; do [[ $(cat "$key") == pass || $(cat "$key") == skipped:* ]] || failed=1; done
bench_jsons=("$log"/bench_*.json)
if ((${#bench_jsons[@]})); then "$py" scripts/bench_table.py --strict "${bench_jsons[@]}" >/dev/null || failed=1; fi

if [[ -n ${OUT:-} ]]; then
  cp "$md" "$OUT/"
  [[ -s $gpt2_md ]] && cp "$gpt2_md" "$OUT/"
  tar -czf "$OUT/gpu-check-logs.tar.gz" -C build-gpu --exclude='gpu-check/runs/*/checkpoints' gpu-check
fi
echo "gpu-check: wrote $md; logs in $log/ (call took $((SECONDS - started)) s)"
cat "$md"
if ((failed)); then echo "gpu-check: FAILED (see the tables in $md)" >&2; exit 1; fi
if ((unfinished)); then echo "gpu-check: unfinished; call again to go on" >&2; exit 3; fi
exit 0
