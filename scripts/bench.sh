#!/usr/bin/env bash
# Builds kiln in Release (build-release/, CPU only unless told otherwise) and runs every benchmark on
# this machine: JSON in build-release/bench-results/, the tables in bench/results/<date>-cpu.md.
#   scripts/bench.sh [CMAKE_ARGS...]       e.g. scripts/bench.sh -DKILN_CUDA=ON
set -euo pipefail
shopt -s nullglob
cd "$(dirname "$0")/.."
source scripts/report_lib.sh
py=/usr/bin/python3
[[ -x $py ]] || py=python3

scripts/build.sh build-release -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF -DKILN_BENCH=ON -DBUILD_TESTING=OFF "$@"

out=build-release/bench-results
rm -rf "$out" && mkdir -p "$out" bench/results
failed=0 ran=0
for exe in build-release/bench/bench_*; do
  [[ -f $exe && -x $exe ]] || continue
  name=$(basename "$exe")
  case $name in
    bench_gpt2) continue ;;  # GPU training: scripts/bench_gpt2.sh (--cpu for a dry run)
    bench_allreduce)  # its own table (Gloo on loopback here), not Google Benchmark's
      echo "== $name"
      "$exe" | tee "$out/$name.txt" || failed=1
      ran=$((ran + 1))
      continue ;;
  esac
  echo "== $name"
  "$exe" --benchmark_out="$out/$name.json" --benchmark_out_format=json || failed=1
  ran=$((ran + 1))
done
((ran)) || { echo "bench.sh: no bench executables in build-release/bench/" >&2; exit 1; }

md=bench/results/$(date -u +%F)-cpu.md
cpu=$(lscpu | sed -n 's/^Model name: *//p')
{
  echo "# CPU benchmarks, $(date -u +%F)"
  echo
  echo "$cpu, $(nproc) cores; $(build-release/kiln --version | sed -n 1p);" \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  "$py" scripts/bench_table.py "$out"/*.json
  md_text_sections "$out"/*.txt
} >"$md"
echo "bench.sh: wrote $md"
exit $failed
