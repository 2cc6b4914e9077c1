#!/usr/bin/env python3
"""A detection or NIAH run's trials as tables: ROUGE-1 recall by context length and depth, and
per length the heads whose mean retrieval score over that length's answered trials exceeds 0.1
(the paper's definition, and its code's per-step variant), per key/value group.

    python3 bench/niah_by_length.py runs/detect-qwen2.5-coder-1.5b-instruct-long

Reads RUN/trials.jsonl (complete lines only, so a run still in progress can be read) and prints
Markdown.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def trials(run: Path):
    for line in (run / "trials.jsonl").read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            pass  # a record being written


def main():
    run = Path(sys.argv[1])
    ts = list(trials(run))
    lengths = sorted({t["length"] for t in ts})
    depths = sorted({t["depth"] for t in ts})
    cell = {(t["length"], t["depth"]): t for t in ts}
    print("| length (tokens) | " + " | ".join(f"depth {d:g}%" for d in depths) + " | mean | seconds per trial |")
    print("|---" * (len(depths) + 3) + "|")
    for n in lengths:
        row = [cell.get((n, d)) for d in depths]
        got = [t for t in row if t]
        mean = sum(t["rouge1"] for t in got) / len(got)
        secs = sum(t["seconds"] for t in got) / len(got)
        print(f"| {n:,} | " + " | ".join(f"{t['rouge1']:.0f}" if t else "—" for t in row) + f" | {mean:.1f} | {secs:.0f} |")
    print()
    model = json.loads((run / "model.json").read_text())
    n_kv = int(model["attention heads"].split(",")[1].split()[0])
    print("| length (tokens) | answered trials | heads > 0.1 | share | per-step variant > 0.1 | per KV group | top 5 (mean score) |")
    print("|---|---|---|---|---|---|---|")
    for n in lengths:
        answered = [t for t in ts if t["length"] == n and t["rouge1"] > 50]
        if not answered:
            continue
        n_heads = len(answered[0]["scores"])
        nh = n_heads // int(model["layers"])
        mean = [sum(t["scores"][h] for t in answered) / len(answered) for h in range(n_heads)]
        per_step = [sum(t["scores_per_step"][h] for t in answered) / len(answered) for h in range(n_heads)]
        group = lambda h: (h % nh) // (nh // n_kv)
        groups = " / ".join(str(sum(m > 0.1 for h, m in enumerate(mean) if group(h) == g)) for g in range(n_kv))
        top = sorted(range(n_heads), key=lambda h: -mean[h])[:5]
        above = sum(m > 0.1 for m in mean)
        names = ", ".join(f"{h // nh}-{h % nh} ({mean[h]:.2f})" for h in top)
        step_above = sum(m > 0.1 for m in per_step)
        print(f"| {n:,} | {len(answered)} | {above} of {n_heads} | {100 * above / n_heads:.1f}% | {step_above} | {groups} | {names} |")


if __name__ == "__main__":
    main()
