#!/usr/bin/env bash
# Installs everything kiln needs on Debian 12, skipping what is already there:
#   - Debian packages (compilers, libraries, Python test oracles, data sets) through apt-get;
#   - .venv (git-ignored): Debian's python3 plus the PyPI readers tests use to check kiln's files.
# Quick when nothing is missing: one dpkg-query per package and one import.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

packages=(
  cmake ninja-build g++ ccache pkg-config                       # toolchain (OpenMP is GCC's libgomp)
  libgtest-dev libgmock-dev libbenchmark-dev                    # tests and benchmarks
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev zlib1g-dev    # command line, configs, files
  libopenblas-openmp-dev libgloo-dev                            # CPU BLAS (OpenMP build), CPU collectives
  python3 python3-venv python3-numpy python3-torch python3-matplotlib  # test oracles, plots
  dataset-fashion-mnist bible-kjv                               # data for the MLP/CNN and GPT issues
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Debian's python3 (not the first python3 on PATH) so that python3-torch and numpy are importable.
readers=(tensorboard safetensors)
if ! .venv/bin/python -c "import tensorboard, safetensors" 2>/dev/null; then
  echo "setup: creating .venv with ${readers[*]}"
  [[ -x .venv/bin/python ]] || /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "${readers[@]}"
fi

versions=$(.venv/bin/python -c "import importlib.metadata as m; print(', '.join(p + ' ' + m.version(p) for p in ('tensorboard', 'safetensors')))")
echo "setup: ${#packages[@]} Debian packages present (${#missing[@]} installed now), .venv has ${versions} ($((SECONDS - start)) s)"
