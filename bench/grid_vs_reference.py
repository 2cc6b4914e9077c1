#!/usr/bin/env python3
"""The whole default detection grid: headhunt against the transformers reference.

    python3 bench/grid_vs_reference.py [--model smollm2-135m-instruct] [--write bench/RESULTS.md]

headhunt runs the default grid of `headhunt detect` (6 lengths from 600 to 3,300 tokens x 11
depths = 66 trials) whole, wall time and peak memory measured from outside: exact with and
without the prefix cache, and `--precision fast` with it. The reference (reference/
make_reference.py's trial: transformers, eager attention, attention probabilities at every
decoding step, as the paper's code) would take hours for the grid, so it is timed on a sample of
its trials, one per grid length at depth 50%, in the same run, and extrapolated: each length
holds 11 of the 66 trials, so the grid's reference time is 11 x the sum of the sample. A
trial's cost depends on its length (prefill and the attention rows read at every step), not on
where its needle sits, so the sample covers what varies.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import ROOT, emit, machine, reference_trial  # noqa: E402

LENGTHS = [600, 1140, 1680, 2220, 2760, 3300]
DEPTHS = 11


def headhunt_grid(binary: str, model: str, precision: str, cache: bool) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of `headhunt detect` on the default grid."""
    with tempfile.TemporaryDirectory() as d:
        args = ["/usr/bin/time", "-f", "%M", binary, "detect", "--model", model, "--precision", precision, "--out", d]
        if not cache:
            args.append("--no-prefix-cache")
        start = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - start
        return seconds, int(out.stderr.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--headhunt", default=str(ROOT / "target" / "release" / "headhunt"))
    ap.add_argument("--write", help="append the table to this Markdown file")
    args = ap.parse_args()

    runs = {}
    for name, precision, cache in [("exact, prefix cache", "exact", True), ("exact, --no-prefix-cache", "exact", False), ("fast, prefix cache", "fast", True)]:
        runs[name] = headhunt_grid(args.headhunt, args.model, precision, cache)
        print(f"headhunt {name}: {runs[name][0]:.1f} s, {runs[name][1]:.0f} MiB", file=sys.stderr)
    sample = {}
    for length in LENGTHS:
        sample[length] = reference_trial(args.model, length, 50.0)
        print(f"reference trial, {length} tokens: {sample[length]:.2f} s", file=sys.stderr)
    reference = DEPTHS * sum(sample.values())

    lines = [
        f"### Default detection grid, {args.model}, on {machine()}, {date.today()}",
        "",
        f"`python3 bench/grid_vs_reference.py --model {args.model}` (66 trials; reference extrapolated from "
        f"one trial per length at depth 50%: {', '.join(f'{n}: {s:.1f} s' for n, s in sample.items())})",
        "",
        "| headhunt | grid wall time | peak memory | against the reference (~" + f"{reference:.0f} s) |",
        "|---|---|---|---|",
    ]
    for name, (seconds, mib) in runs.items():
        lines.append(f"| {name} | {seconds:.1f} s | {mib:.0f} MiB | x{reference / seconds:.1f} |")
    emit(lines, args.write)


if __name__ == "__main__":
    main()
