#!/usr/bin/env bash
# Configures and builds kiln into BUILD_DIR with Ninja, all cores, through ccache.
#   scripts/build.sh BUILD_DIR [CMAKE_ARGS...]      e.g. scripts/build.sh build-asan -DKILN_SANITIZE=ON
# Runs scripts/setup.sh first unless KILN_SKIP_SETUP=1 (machines without network, callers that ran it).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:?usage: scripts/build.sh BUILD_DIR [CMAKE_ARGS...]}
shift

[[ ${KILN_SKIP_SETUP:-0} == 1 ]] || scripts/setup.sh

# CMakeLists.txt picks ccache up as the compiler launcher. These two let a fresh clone in another
# folder (CI) hit the cache that an earlier clone filled: paths are hashed relative to the repo.
export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=true

cmake -S . -B "$build_dir" -G Ninja "$@"
cmake --build "$build_dir" -j"$(nproc)"
