#!/usr/bin/env python3
"""TensorBoard's own readers on kiln's event files, for tests/test_io.cpp.

  read_tensorboard.py RUN_DIR

For every events file in RUN_DIR, walks the TFRecord framing itself, checking both masked
CRC-32Cs of every record with TensorBoard's crc32c and decoding each record with its Event
proto; then loads RUN_DIR with EventAccumulator, the class TensorBoard's scalar dashboard uses.
Prints JSON:
  {"files": [...], "records": N, "file_version": "...",
   "raw": [[tag, step, value, wall_time], ...],            (from the protos, in file order)
   "scalars": {tag: [[step, value, wall_time], ...]}}      (from EventAccumulator)
Exits non-zero with a message on any framing or CRC error. Run with the .venv python.
"""
import json
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c


def read_records(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            sys.exit(f"{path}: truncated record header at byte {pos}")
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        if masked_crc32c(header) != length_crc:
            sys.exit(f"{path}: bad length CRC at byte {pos}")
        body = data[pos + 12:pos + 12 + length]
        if len(body) != length or pos + 16 + length > len(data):
            sys.exit(f"{path}: truncated record at byte {pos}")
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        if masked_crc32c(body) != body_crc:
            sys.exit(f"{path}: bad data CRC at byte {pos}")
        yield body
        pos += 16 + length


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} RUN_DIR")
    run_dir = sys.argv[1]
    files = sorted(f for f in os.listdir(run_dir) if "tfevents" in f)
    result = {"files": files, "records": 0, "file_version": None, "raw": [], "scalars": {}}
    for name in files:
        for i, body in enumerate(read_records(os.path.join(run_dir, name))):
            event = event_pb2.Event.FromString(body)
            result["records"] += 1
            if i == 0:
                result["file_version"] = event.file_version
            for v in event.summary.value:
                result["raw"].append([v.tag, event.step, v.simple_value, event.wall_time])

    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        result["scalars"][tag] = [[e.step, e.value, e.wall_time] for e in acc.Scalars(tag)]
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
