#!/usr/bin/env bash
# Installs what is missing, builds, and trains the default model (an MLP on Fashion-MNIST):
#   scripts/train.sh [key=value ...]     e.g. scripts/train.sh optim.lr=3e-4 train.steps=500
# Arguments go to `kiln train configs/mlp_fashion_mnist.yaml`. kiln prints the run directory it
# writes (under runs/ unless log.dir or log.run_dir say otherwise); docs/getting-started.md
# explains what is in it.
set -euo pipefail
cd "$(dirname "$0")/.."
config=configs/mlp_fashion_mnist.yaml

scripts/build.sh build -DKILN_CUDA=AUTO
echo "== $(build/kiln --version | sed -n 1p)"

build/kiln train "$config" "$@"
echo "next: tools/plot.py RUN_DIR draws the curves, .venv/bin/tensorboard --logdir runs shows them;" \
     "docs/getting-started.md has more"
