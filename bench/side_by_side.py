#!/usr/bin/env python3
"""headhunt against llama.cpp and against the transformers reference, side by side.

    python3 bench/side_by_side.py [--model smollm2-135m-instruct] [--repeats 3] [--write bench/RESULTS.md]

Three comparisons, each run as alternating separate processes (headhunt, other, headhunt,
other, ...) so that drift on a shared machine hits both sides alike; the table reports medians
and the median of the pairwise ratios:

1. Prefill tokens/s at 512, 2048, 4096 and 8192 tokens (up to the model's context) and decode
   tokens/s after 2048 tokens: `headhunt bench --json` against llama.cpp through
   llama-cpp-python on the same GGUF file, same thread count, same token counts (ordinary
   pseudo-random tokens; the content of a prompt does not change the work).
2. One whole needle-in-a-haystack trial with every head's attention argmax captured at every
   decoding step: `headhunt detect` on a one-trial grid (the trial's own time, from
   trials.jsonl) against the paper's procedure on transformers with eager attention and
   output_attentions at each step (reference/make_reference.py's trial, timed alone).

Needs: llama-cpp-python, and reference/requirements.txt. The model is looked up in headhunt's
cache ($HEADHUNT_CACHE or ~/.cache/headhunt); `headhunt fetch` puts it there.
"""

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADHUNT = ROOT / "target" / "release" / "headhunt"
FILES = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3-270m": "gemma-3-270m-q4_k_m.gguf"}


def cache_dir() -> Path:
    if os.environ.get("HEADHUNT_CACHE"):
        return Path(os.environ["HEADHUNT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "headhunt"
    return Path.home() / ".cache" / "headhunt"


LLAMA_CHILD = r"""
import json, random, sys, time, llama_cpp
path, mode, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = llama_cpp.Llama(path, n_ctx=max(n + 64, 512), n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
rng = random.Random(0)
toks = [rng.randrange(100, llm.n_vocab()) for _ in range(n + 64)]
if mode == "prefill":
    t = time.perf_counter(); llm.eval(toks[:n]); dt = time.perf_counter() - t
    print(json.dumps({"tokens_per_s": n / dt}))
else:
    llm.eval(toks[:n])
    t = time.perf_counter()
    for tok in toks[n:n + 32]:
        llm.eval([tok])
    dt = time.perf_counter() - t
    print(json.dumps({"tokens_per_s": 32 / dt}))
"""


def llama_cpp_rate(gguf: Path, mode: str, n: int, threads: int) -> float:
    out = subprocess.run([sys.executable, "-c", LLAMA_CHILD, str(gguf), mode, str(n), str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def headhunt_rate(model: str, mode: str, n: int) -> float:
    args = [str(HEADHUNT), "bench", "--model", model, "--json"]
    args += ["--lengths", str(n), "--decode-context", "0"] if mode == "prefill" else ["--lengths", "16", "--decode-context", str(n), "--decode-tokens", "32"]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["results"][-1]["tokens_per_s"]


def headhunt_trial(model: str, length: int, depth: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        texts = ROOT / "reference" / "texts"
        subprocess.run([str(HEADHUNT), "detect", "--model", model, "--needles", str(texts / "needles.jsonl"), "--haystack", str(texts / "lighthouse.txt"),
                        "--lengths", str(length), "--depths", str(depth), "--out", d], capture_output=True, check=True)
        return json.loads((Path(d) / "trials.jsonl").read_text().splitlines()[0])["seconds"]


REFERENCE_CHILD = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
import make_reference as ref
import torch
model_id, length, depth = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
tok, model = ref.load_gguf(model_id)
torch.set_grad_enabled(False)
print(json.dumps({"seconds": ref.timed_trial(tok, model, length, depth)}))
"""


def reference_trial(model: str, length: int, depth: float) -> float:
    out = subprocess.run([sys.executable, "-c", REFERENCE_CHILD, str(ROOT / "reference"), model, str(length), str(depth)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def alternate(a, b, repeats: int):
    """Run a and b in turn; medians of each and of the pairwise ratios a/b."""
    xs, ys = [], []
    for _ in range(repeats):
        xs.append(a())
        ys.append(b())
    ratios = [x / y for x, y in zip(xs, ys)]
    return statistics.median(xs), statistics.median(ys), statistics.median(ratios), min(ratios), max(ratios)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(FILES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lengths", default="512,2048,4096,8192", help="prefill lengths (empty: no prefill rows)")
    ap.add_argument("--skip-trial", action="store_true", help="leave out the transformers trial comparison")
    ap.add_argument("--write", type=Path, help="append the table to this markdown file")
    args = ap.parse_args()
    gguf = cache_dir() / FILES[args.model]
    if not gguf.exists() or not HEADHUNT.exists():
        sys.exit(f"need {gguf} (headhunt fetch {args.model}) and {HEADHUNT} (cargo build --release)")
    rows = []
    for n in [int(x) for x in args.lengths.split(",") if x]:
        h, l, r, lo, hi = alternate(lambda: headhunt_rate(args.model, "prefill", n), lambda: llama_cpp_rate(gguf, "prefill", n, args.threads), args.repeats)
        rows.append((f"prefill {n} tokens (tok/s)", "llama.cpp", h, l, r, lo, hi))
        print(rows[-1], file=sys.stderr)
    h, l, r, lo, hi = alternate(lambda: headhunt_rate(args.model, "decode", 2048), lambda: llama_cpp_rate(gguf, "decode", 2048, args.threads), args.repeats)
    rows.append(("decode after 2048 tokens (tok/s)", "llama.cpp", h, l, r, lo, hi))
    print(rows[-1], file=sys.stderr)
    if not args.skip_trial:
        # Seconds per trial: the ratio is reference / headhunt, a speed-up.
        ref_s, ours_s, r, lo, hi = alternate(lambda: reference_trial(args.model, 2000, 50.0), lambda: headhunt_trial(args.model, 2000, 50.0), args.repeats)
        rows.append(("NIAH trial, 2000 tokens, argmax capture (s)", "transformers eager", ours_s, ref_s, r, lo, hi))
        print(rows[-1], file=sys.stderr)

    lines = [
        f"### {args.model} on {platform.node()} ({os.cpu_count()} cores, {args.threads} threads), {time.strftime('%Y-%m-%d')}",
        "",
        f"`python3 bench/side_by_side.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` (median of {args.repeats} alternating runs; ratio: median of pairwise ratios, min-max)",
        "",
        "| measure | other | headhunt | other's | headhunt advantage |",
        "|---|---|---|---|---|",
    ]
    for name, other, h, o, r, lo, hi in rows:
        lines.append(f"| {name} | {other} | {h:.2f} | {o:.2f} | x{r:.2f} ({lo:.2f}-{hi:.2f}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(args.write, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
