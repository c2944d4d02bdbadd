#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite twice:
#   1. build/       CUDA if nvcc is found (GPU tests skip without a device), every label;
#   2. build-asan/  CPU only, AddressSanitizer + UBSan, leak checking on.
# A failing test pass does not stop the other; the exit status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
phase() {  # phase NAME COMMAND...: runs COMMAND and records how long it took
  local name=$1 start=$SECONDS status=0
  shift
  echo "== $name"
  "$@" || status=$?
  local verdict=ok
  ((status == 0)) || verdict="FAILED (exit $status)"
  timings+=("$(printf '%-20s %5d s  %s' "$name" $((SECONDS - start)) "$verdict")")
  return $status
}
run_ctest() {  # run_ctest BUILD_DIR: the whole suite, its output kept in BUILD_DIR/ctest.log
  # Two test processes share the cores: OpenMP threads that spin while waiting would steal
  # them from each other (a conv test ran 15x slower), so they sleep instead.
  OMP_WAIT_POLICY=passive ctest --test-dir "$1" --output-on-failure -j2 --timeout 900 2>&1 | tee "$1/ctest.log"
}

failed=0
rm -f build/ctest.log build-asan/ctest.log
phase "setup" scripts/setup.sh
export KILN_SKIP_SETUP=1

phase "build build/" scripts/build.sh build -DKILN_CUDA=AUTO
phase "ctest build/" run_ctest build || failed=1

if phase "build build-asan/" scripts/build.sh build-asan -DKILN_CUDA=OFF -DKILN_SANITIZE=ON -DKILN_BENCH=OFF; then
  export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  phase "ctest build-asan/" run_ctest build-asan || failed=1
else
  failed=1
fi

echo "== timings"
printf '%s\n' "${timings[@]}"
for dir in build build-asan; do  # ctest's own closing lines, so the results end the log
  [[ -f $dir/ctest.log ]] || continue
  echo "== results $dir/"
  sed -n '/tests passed\|No tests were found/,$p' "$dir/ctest.log"
done
exit $failed
