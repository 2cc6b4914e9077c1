"""Markdown tables of `headhunt kv-select` runs, as the README shows them.

    python3 bench/kv_select_tables.py RUN [RUN ...]

For each run folder: per mode, the NIAH score (ROUGE-1 recall, with its bootstrap 95% interval)
of every policy at every budget, as a share of the full cache's score, the bytes each cache
allocated against the full cache's, the smallest budget keeping 95% of the full score, and
decoding speed (generated tokens over decoding seconds, summed over the trials) per policy and
budget against the full cache's, measured in the same process.
"""

import collections
import json
import pathlib
import sys


def table(run: pathlib.Path) -> str:
    summary = json.loads((run / "kv_select.json").read_text())
    settings = json.loads((run / "run.json").read_text())
    points = summary["points"]
    out = [f"**{summary['model']}, {settings['lengths'][0]} tokens** ({summary['trials']} trials; full cache: NIAH score {summary['full_score']:.1f})", ""]
    budgets = sorted({p["budget"] for p in points})
    for mode in ("question", "context"):
        rows = [p for p in points if p["mode"] == mode]
        if not rows:
            continue
        out.append(f"| {mode} mode | " + " | ".join(f"{100 * b:.0f}% of the bytes" for b in budgets) + " | smallest budget with 95% |")
        out.append("|---" * (len(budgets) + 2) + "|")
        for policy in dict.fromkeys(p["policy"] for p in rows):
            cells = []
            for b in budgets:
                p = next((p for p in rows if p["policy"] == policy and p["budget"] == b), None)
                cells.append("" if p is None else f"{p['score']:.1f} [{p['ci95'][0]:.0f}, {p['ci95'][1]:.0f}]")
            smallest = summary["smallest_95"].get(f"{mode} {policy}")
            cells.append("none" if smallest is None else f"{100 * smallest:.0f}%")
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
        shares = {b: [p["bytes_share"] for p in rows if p["budget"] == b] for b in budgets}
        out.append("| bytes allocated (of full) | " + " | ".join(f"{100 * min(v):.1f}-{100 * max(v):.1f}%" for v in shares.values()) + " | |")
        out.append("")
    # Decoding speed, from the trials' own timings.
    speed = collections.defaultdict(lambda: [0, 0.0])
    for line in (run / "trials.jsonl").read_text().splitlines():
        t = json.loads(line)
        for o in [t["full"], *t["compressed"]]:
            key = ("full", 1.0) if o["mode"] is None else (o["policy"].split("-s")[0], o["budget"])
            if o["mode"] in (None, "question"):
                speed[key][0] += o["generated"]
                speed[key][1] += o["decode_seconds"]
    full = speed[("full", 1.0)]
    full_rate = full[0] / full[1]
    rates = {k: v[0] / v[1] for k, v in speed.items() if k[0] != "full" and v[1] > 0}
    out.append(f"Decoding (question mode), tokens/s: full cache {full_rate:.1f}; " + ", ".join(
        f"{k[0]} {100 * k[1]:.0f}% {r:.1f} (x{r / full_rate:.2f})" for k, r in sorted(rates.items()) if k[0] in ("snapkv", "headkv")))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(table(pathlib.Path(arg)))
