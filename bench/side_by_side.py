#!/usr/bin/env python3
"""headhunt against llama.cpp and against the transformers reference, side by side.

    python3 bench/side_by_side.py [--model smollm2-135m-instruct | FILE.gguf] [--repeats 3] [--write bench/RESULTS.md]

Three comparisons, each run as alternating separate processes (headhunt, other, headhunt,
other, ...) so that drift on a shared machine hits both sides alike; the table reports medians
and the median of the pairwise ratios:

1. Prefill tokens/s at the given lengths (up to the model's context) and decode tokens/s after
   --decode-context tokens: `headhunt bench --json` against llama.cpp through llama-cpp-python
   on the same GGUF file, same thread count, same token counts (ordinary pseudo-random tokens;
   the content of a prompt does not change the work). Each side's peak resident memory in the
   prefill runs is reported too (llama.cpp's includes the Python interpreter, ~30 MiB).
2. One whole needle-in-a-haystack trial with every head's attention argmax captured at every
   decoding step: `headhunt detect` on a one-trial grid (the trial's own time, from
   trials.jsonl) against the paper's procedure on transformers with eager attention and
   output_attentions at each step (reference/make_reference.py's trial, timed alone). Known
   models only; --skip-trial leaves it out.

--precision fast runs headhunt's int8 decoding (`--precision fast`). --simd caps headhunt's kernels (HEADHUNT_SIMD) and --llama-lib points at another build of
llama-cpp-python (a folder to put first on PYTHONPATH): together they measure what a CPU without
AVX-512 runs, on a machine that has it. --headhunt runs another headhunt binary.

Needs: llama-cpp-python, and reference/requirements.txt. Known models are looked up in
headhunt's cache ($HEADHUNT_CACHE or ~/.cache/headhunt); `headhunt fetch` puts them there.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
         "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}


def cache_dir() -> Path:
    if os.environ.get("HEADHUNT_CACHE"):
        return Path(os.environ["HEADHUNT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "headhunt"
    return Path.home() / ".cache" / "headhunt"


LLAMA_CHILD = r"""
import json, random, resource, sys, time, llama_cpp
path, mode, n, threads, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = llama_cpp.Llama(path, n_ctx=max(n + steps + 16, 512), n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
rng = random.Random(0)
toks = [rng.randrange(100, llm.n_vocab()) for _ in range(n + steps)]
if mode == "prefill":
    t = time.perf_counter(); llm.eval(toks[:n]); dt = time.perf_counter() - t
    rate = n / dt
else:
    llm.eval(toks[:n])
    t = time.perf_counter()
    for tok in toks[n:n + steps]:
        llm.eval([tok])
    rate = steps / (time.perf_counter() - t)
print(json.dumps({"tokens_per_s": rate, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


class Sides:
    """How to run each side: the binaries, files, levels and threads of one comparison."""

    def __init__(self, args, gguf: Path):
        self.args, self.gguf = args, gguf
        self.model = args.model if args.model in FILES else str(gguf)
        self.env = dict(os.environ)
        if args.simd:
            self.env["HEADHUNT_SIMD"] = args.simd
        self.llama_env = dict(os.environ)
        if args.llama_lib:
            self.llama_env["PYTHONPATH"] = os.pathsep.join([args.llama_lib, os.environ.get("PYTHONPATH", "")])

    def llama(self, mode: str, n: int) -> dict:
        cmd = [sys.executable, "-c", LLAMA_CHILD, str(self.gguf), mode, str(n), str(self.args.threads), str(self.args.decode_tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=self.llama_env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def headhunt(self, mode: str, n: int) -> dict:
        args = [self.args.headhunt, "bench", "--model", self.model, "--json", "--precision", self.args.precision]
        if mode == "prefill":
            args += ["--lengths", str(n), "--decode-context", "0"]
        else:
            args += ["--lengths", "16", "--decode-context", str(n), "--decode-tokens", str(self.args.decode_tokens)]
        out = subprocess.run(args, capture_output=True, text=True, check=True, env=self.env)
        return json.loads(out.stdout)["results"][-1]


def headhunt_trial(binary: str, model: str, length: int, depth: float, precision: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        texts = ROOT / "reference" / "texts"
        subprocess.run([binary, "detect", "--model", model, "--needles", str(texts / "needles.jsonl"), "--haystack", str(texts / "lighthouse.txt"),
                        "--lengths", str(length), "--depths", str(depth), "--precision", precision, "--out", d], capture_output=True, check=True)
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
    """Run a and b in turn, `repeats` times each; the results of each."""
    xs, ys = [], []
    for _ in range(repeats):
        xs.append(a())
        ys.append(b())
    return xs, ys


def row(name: str, other: str, ours: list, theirs: list, key=lambda x: x, ratio=lambda a, b: a / b):
    """A table row: the medians of each side and the median, min and max of the paired ratios."""
    ratios = [ratio(key(a), key(b)) for a, b in zip(ours, theirs)]
    med = lambda runs: statistics.median(key(x) for x in runs)
    return (name, other, med(ours), med(theirs), statistics.median(ratios), min(ratios), max(ratios))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a known model id or a .gguf file")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lengths", default="512,2048,4096,8192", help="prefill lengths (empty: no prefill rows)")
    ap.add_argument("--decode-context", type=int, default=2048, help="context before decoding (0: no decode row)")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--skip-trial", action="store_true", help="leave out the transformers trial comparison")
    ap.add_argument("--precision", default="exact", choices=["exact", "fast"], help="headhunt's --precision")
    ap.add_argument("--simd", help="cap headhunt's kernels (HEADHUNT_SIMD): avx2 or portable")
    ap.add_argument("--llama-lib", help="a folder holding another llama-cpp-python build, put first on PYTHONPATH")
    ap.add_argument("--headhunt", default=str(ROOT / "target" / "release" / "headhunt"), help="the headhunt binary")
    ap.add_argument("--write", type=Path, help="append the table to this markdown file")
    args = ap.parse_args()
    gguf = cache_dir() / FILES[args.model] if args.model in FILES else Path(args.model)
    if not gguf.exists() or not Path(args.headhunt).exists():
        sys.exit(f"need {gguf} (headhunt fetch, or a path) and {args.headhunt} (cargo build --release)")
    sides = Sides(args, gguf)
    rows = []
    rate = lambda x: x["tokens_per_s"]
    for n in [int(x) for x in args.lengths.split(",") if x]:
        h, l = alternate(lambda: sides.headhunt("prefill", n), lambda: sides.llama("prefill", n), args.repeats)
        rows.append(row(f"prefill {n} tokens (tok/s)", "llama.cpp", h, l, rate))
        print(rows[-1], file=sys.stderr)
        mem = lambda runs: [max(x["peak_rss_mib"] for x in runs)]
        rows.append(row(f"peak memory, prefill {n} tokens (MiB)", "llama.cpp", mem(h), mem(l), ratio=lambda a, b: b / a))
    if args.decode_context > 0:
        h, l = alternate(lambda: sides.headhunt("decode", args.decode_context), lambda: sides.llama("decode", args.decode_context), args.repeats)
        rows.append(row(f"decode after {args.decode_context} tokens (tok/s)", "llama.cpp", h, l, rate))
        print(rows[-1], file=sys.stderr)
    if not args.skip_trial and args.model in FILES:
        # Seconds per trial: the ratio is reference / headhunt, a speed-up.
        ours, ref = alternate(lambda: headhunt_trial(args.headhunt, args.model, 2000, 50.0, args.precision), lambda: reference_trial(args.model, 2000, 50.0), args.repeats)
        rows.append(row("NIAH trial, 2000 tokens, argmax capture (s)", "transformers eager", ours, ref, ratio=lambda a, b: b / a))
        print(rows[-1], file=sys.stderr)

    sides_note = f"headhunt kernels capped at {args.simd}" if args.simd else "headhunt's best kernels"
    sides_note += f", precision {args.precision}"
    if args.llama_lib:
        sides_note += f", llama.cpp from {args.llama_lib}"
    lines = [
        f"### {gguf.name} on {machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}, {sides_note}",
        "",
        f"`python3 bench/side_by_side.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` (median of {args.repeats} alternating runs; ratio: median of pairwise ratios, min-max; for memory, llama.cpp's peak over headhunt's)",
        "",
        "| measure | other | headhunt | other's | headhunt advantage |",
        "|---|---|---|---|---|",
    ]
    for name, other, h, o, r, lo, hi in rows:
        lines.append(f"| {name} | {other} | {h:.2f} | {o:.2f} | x{r:.2f} ({lo:.2f}-{hi:.2f}) |")
    emit(lines, args.write)


def machine() -> str:
    """The CPU a figure came from: its name, vector extensions (AVX-512 or not, VNNI or not) and
    core count, from /proc/cpuinfo."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    flags = set(open("/proc/cpuinfo").read().split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    vnni = [name for flag, name in [("avx512_vnni", "AVX-512 VNNI"), ("avx_vnni", "AVX-VNNI")] if flag in flags]
    return f"{cpu} ({isa}{', ' + ', '.join(vnni) if vnni else ', no VNNI'}, {os.cpu_count()} cores)"


def emit(lines: list, write):
    """Print a Markdown table and append it to the file `write` names, if any."""
    text = "\n".join(lines) + "\n"
    print(text)
    if write:
        with open(write, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
