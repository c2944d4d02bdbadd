#!/usr/bin/env python3
"""The reference safetensors implementation (the PyPI `safetensors` package, through its torch
API so that BF16 works) on the other side of tests/test_io.cpp.

  read_safetensors.py read FILE    loads FILE (written by kiln) and prints it as JSON
  read_safetensors.py write FILE   writes FILE with tensors of every dtype kiln knows and prints
                                   what it wrote as JSON

The JSON: {"tensors": [{"name", "dtype", "shape", "values"}, ...], "metadata": {...}}, values
flattened row-major; floats as Python floats (exact: every F16/BF16/F32 value is a double) or,
as JSON has none, the strings "inf", "-inf", "nan"; integers as ints, bools as 0/1. Run with the .venv python that scripts/setup.sh creates.
"""
import json
import math
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8", torch.bool: "BOOL",
}


def describe(tensors, metadata):
    out = []
    for name, t in tensors.items():
        flat = t.reshape(-1)
        if t.is_floating_point():
            values = [v if math.isfinite(v) else repr(v) for v in flat.double().tolist()]
        else:
            values = flat.long().tolist()
        out.append({"name": name, "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                    "values": values})
    return {"tensors": out, "metadata": metadata or {}}


def read(path):
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    return describe(tensors, metadata)


def write(path):
    g = torch.Generator().manual_seed(1234)
    tensors = {
        "weights.f32": torch.randn(3, 5, generator=g),
        "weights.f16": torch.tensor([1.5, -0.0, float("inf"), float("nan"), 65504, 6e-8],
                                    dtype=torch.float16),
        "weights.bf16": torch.randn(2, 3, 2, generator=g).bfloat16(),
        "weights.f64": torch.randn(7, generator=g, dtype=torch.float64),
        "ids.i32": torch.tensor([[-2147483648, -1, 0], [1, 7, 2147483647]], dtype=torch.int32),
        "ids.i64": torch.tensor([-(2 ** 62), -3, 0, 5, 2 ** 53 + 1], dtype=torch.int64),
        "pixels.u8": torch.arange(0, 256, 51, dtype=torch.uint8),
        "mask.bool": torch.tensor([[True, False], [False, True], [True, True]]),
        "scalar": torch.tensor(-2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 4),
    }
    metadata = {"written_by": "safetensors.torch", "note": "unicode: \u00e9\u4e2d"}
    save_file(tensors, path, metadata=metadata)
    return describe(tensors, metadata)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("read", "write"):
        sys.exit(f"usage: {sys.argv[0]} read|write FILE")
    result = read(sys.argv[2]) if sys.argv[1] == "read" else write(sys.argv[2])
    json.dump(result, sys.stdout, allow_nan=False)


if __name__ == "__main__":
    main()
