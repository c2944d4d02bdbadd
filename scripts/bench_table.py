#!/usr/bin/env python3
"""Google Benchmark JSON files -> one markdown table per file.

    scripts/bench_table.py [--strict] build-gpu/gpu-check/bench_*.json > table.md

With --strict the exit status is 1 when any benchmark reported an error (SkipWithError).

Columns: name, time (real; the manual time for GPU benchmarks that set it), CPU time, iterations,
bytes_per_second as GB/s, items_per_second, then every user counter (frac_of_copy, TFLOPS, ...).
When a run has repetitions, only its aggregates (mean, median, stddev, ...) are listed.
Standard library only, so any python3 runs it.
"""
import json
import os
import sys

# Keys Google Benchmark writes for every run; any other numeric key is a user counter.
STANDARD_KEYS = {
    "name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
    "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit",
    "aggregate_name", "aggregate_unit", "bytes_per_second", "items_per_second", "label",
    "error_occurred", "error_message", "complexity_n", "big_o", "rms",
}


def si(value, unit=""):
    """1234567 -> '1.235 M' (with unit appended)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}".rstrip()


NS_PER = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}


def duration(value, unit):
    """A time in Google Benchmark's unit, shown in the unit that keeps it between 1 and 1000."""
    ns = value * NS_PER.get(unit, 1)
    for name in ("s", "ms", "us"):
        if abs(ns) >= NS_PER[name]:
            return f"{ns / NS_PER[name]:.4g} {name}"
    return f"{ns:.4g} ns"


def cell(run, key):
    value = run.get(key)
    if value is None:
        return ""
    if key == "iterations":
        return str(value)
    if run.get("aggregate_unit") == "percentage":  # the coefficient of variation
        return f"{value * 100:.3g}%"
    if key in ("real_time", "cpu_time"):
        return duration(value, run.get("time_unit", "ns"))
    if key == "bytes_per_second":
        return f"{value / 1e9:.4g}"
    if key == "items_per_second":
        return si(value, "/s")
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(path, errors):
    with open(path) as f:
        data = json.load(f)
    runs = data.get("benchmarks", [])
    aggregated = {r.get("run_name") for r in runs if r.get("run_type") == "aggregate"}
    runs = [r for r in runs if r.get("run_type") == "aggregate" or r.get("run_name") not in aggregated]

    counters = []
    for run in runs:
        for key, value in run.items():
            if key not in STANDARD_KEYS and isinstance(value, (int, float)) and key not in counters:
                counters.append(key)
    columns = [("real_time", "time"), ("cpu_time", "CPU"), ("iterations", "iterations")]
    if any("bytes_per_second" in r for r in runs):
        columns.append(("bytes_per_second", "GB/s"))
    if any("items_per_second" in r for r in runs):
        columns.append(("items_per_second", "items/s"))
    columns += [(c, c) for c in counters]

    ctx = data.get("context", {})
    name = os.path.basename(ctx.get("executable", path))
    lines = [f"### {name}", ""]
    about = [ctx.get("date", ""), f"{ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz"]
    lines += ["; ".join(a for a in about if a), ""]
    if not runs:
        return "\n".join(lines + ["(no benchmarks ran)", ""])
    lines.append("| benchmark | " + " | ".join(title for _, title in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for run in runs:
        if run.get("error_occurred"):
            errors.append(run["name"])
            row = [f"error: {run.get('error_message', '')}"] + [""] * (len(columns) - 1)
        else:
            row = [cell(run, key) for key, _ in columns]
        label = f" ({run['label']})" if run.get("label") else ""
        lines.append(f"| `{run['name']}`{label} | " + " | ".join(row) + " |")
    return "\n".join(lines + [""])


def main(args):
    strict = "--strict" in args
    paths = [a for a in args if a != "--strict"]
    if not paths:
        sys.exit(__doc__)
    errors = []
    print("\n".join(table(p, errors) for p in paths))
    if errors:
        print(f"bench_table: {len(errors)} benchmarks reported an error, first {errors[0]}", file=sys.stderr)
    sys.exit(1 if strict and errors else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
