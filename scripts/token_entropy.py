#!/usr/bin/python3
"""Unigram entropy of llm.c-format token shards: the loss (in nats per token) of the best model
that ignores context, i.e. the bar a language model must get well below to show it learned
anything from context.

    scripts/token_entropy.py data/kjv/char/train_000000.bin [more shards ...]

Prints the token count, distinct tokens, and H = -sum p log p in nats and bits. With --eval
VAL_SHARD it also prints the cross-entropy of the training unigram distribution on VAL_SHARD
(add-one smoothed), which is what a context-free model scores on the validation split.
"""
import argparse
import math
import sys

import numpy as np

MAGIC = 20240520


def read_shard(path):
    header = np.fromfile(path, dtype="<i4", count=256)
    if header.size != 256 or header[0] != MAGIC or header[1] not in (1, 2):
        sys.exit(f"{path}: not a token shard (magic {header[0] if header.size else None})")
    dtype = "<u2" if header[1] == 1 else "<u4"
    tokens = np.fromfile(path, dtype=dtype, offset=1024)
    if tokens.size != header[2]:
        sys.exit(f"{path}: header says {header[2]} tokens, file holds {tokens.size}")
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--eval", help="a validation shard to score the training unigram model on")
    args = ap.parse_args()
    tokens = np.concatenate([read_shard(p) for p in args.shards])
    counts = np.bincount(tokens.astype(np.int64))
    p = counts[counts > 0] / tokens.size
    h = float(-(p * np.log(p)).sum())
    print(f"tokens {tokens.size}, distinct {int((counts > 0).sum())}")
    print(f"unigram entropy {h:.4f} nats/token ({h / math.log(2):.4f} bits)")
    if args.eval:
        val = read_shard(args.eval).astype(np.int64)
        size = max(counts.size, int(val.max()) + 1)
        smoothed = np.bincount(tokens.astype(np.int64), minlength=size) + 1.0
        q = smoothed / smoothed.sum()
        ce = float(-np.log(q[val]).mean())
        print(f"unigram cross-entropy on {args.eval}: {ce:.4f} nats/token")


if __name__ == "__main__":
    main()
