#!/usr/bin/python3
"""Plots a kiln run from its metrics.jsonl:

    tools/plot.py RUN_DIR [--out DIR]

writes loss.png (train and eval loss), accuracy.png (eval accuracy, in %) and lr.png (learning
rate), all against the optimizer step, into RUN_DIR or DIR. A plot whose metrics the run has not
recorded yet is skipped with a note. Needs Debian's /usr/bin/python3 with python3-matplotlib
(scripts/setup.sh installs it); the first python3 on PATH may lack it.
"""
import argparse
import json
import math
import os
import sys


class MetricsError(Exception):
    pass


def read_metrics(path):
    """{key: {step: value}} from a metrics.jsonl. A step logged twice (a run resumed from an
    earlier checkpoint logs the steps after it again) keeps its last value."""
    if not os.path.isfile(path):
        raise MetricsError(f"{path}: not found (is RUN_DIR a kiln run directory?)")
    with open(path, encoding="utf-8") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as e:
            raise MetricsError(f"{path}: not UTF-8 text: {e}") from None
    series = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise MetricsError(f"{where}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            raise MetricsError(f"{where}: expected an integer \"step\", got {step!r}")
        for key, value in record.items():
            if key == "step":
                continue
            if value is None:  # kiln writes a NaN or infinite value (a diverged loss) as null
                value = math.nan
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise MetricsError(f"{where}: \"{key}\" should be a number, got {value!r}")
            series.setdefault(key, {})[step] = float(value)
    if not series:
        raise MetricsError(f"{path}: no metrics recorded yet")
    return series


def points(series, key, scale=1.0):
    """(steps, values) of one metric in step order; empty lists when it was never recorded."""
    by_step = series.get(key, {})
    steps = sorted(by_step)
    return steps, [by_step[s] * scale for s in steps]


def plot_loss(plt, series, title, path):
    train_steps, train_loss = points(series, "train/loss")
    eval_steps, eval_loss = points(series, "eval/loss")
    if not train_steps and not eval_steps:
        return "no train/loss or eval/loss"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train_steps:
        ax.plot(train_steps, train_loss, label="train (mean since last log)", color="tab:blue")
    if eval_steps:
        ax.plot(eval_steps, eval_loss, "o-", label="eval (test split)", color="tab:orange")
        ax.annotate(f"{eval_loss[-1]:.4f}", (eval_steps[-1], eval_loss[-1]),
                    textcoords="offset points", xytext=(0, 8), ha="right")
    ax.legend()
    save(plt, fig, ax, title + ": loss", "cross-entropy loss", path)
    return None


def plot_accuracy(plt, series, title, path):
    steps, acc = points(series, "eval/accuracy", scale=100.0)
    if not steps:
        return "no eval/accuracy"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, acc, "o-", color="tab:green", label="eval (test split)")
    best = max(range(len(acc)), key=lambda i: acc[i])
    # The last point sits at the right edge: its label goes to the left, below the line.
    ax.annotate(f"{acc[-1]:.2f}%", (steps[-1], acc[-1]), textcoords="offset points",
                xytext=(-4, -14), ha="right")
    subtitle = f"final {acc[-1]:.2f}% at step {steps[-1]}"
    if best != len(acc) - 1:
        subtitle += f", best {acc[best]:.2f}% at step {steps[best]}"
    save(plt, fig, ax, f"{title}: test accuracy ({subtitle})", "accuracy (%)", path)
    return None


def plot_lr(plt, series, title, path):
    steps, lr = points(series, "train/lr")
    if not steps:
        return "no train/lr"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, lr, color="tab:purple")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    save(plt, fig, ax, title + ": learning rate", "learning rate", path)
    return None


def save(plt, fig, ax, title, ylabel, path):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_xlim(left=0)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    parser = argparse.ArgumentParser(description="Plot loss, accuracy and learning rate of a kiln run.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (holds metrics.jsonl)")
    parser.add_argument("--out", metavar="DIR", help="where to write the PNGs (default: RUN_DIR)")
    args = parser.parse_args(argv)

    try:
        series = read_metrics(os.path.join(args.run_dir, "metrics.jsonl"))
    except (MetricsError, OSError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1

    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"plot.py: error: {e}; run with /usr/bin/python3 (python3-matplotlib, "
              "installed by scripts/setup.sh)", file=sys.stderr)
        return 1

    out = args.out or args.run_dir
    os.makedirs(out, exist_ok=True)
    title = os.path.basename(os.path.normpath(os.path.abspath(args.run_dir)))
    for name, plot in (("loss.png", plot_loss), ("accuracy.png", plot_accuracy), ("lr.png", plot_lr)):
        path = os.path.join(out, name)
        skipped = plot(plt, series, title, path)
        print(f"{path}: skipped ({skipped} in metrics.jsonl)" if skipped else path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
