#!/usr/bin/env python3
"""How far llama.cpp's own arithmetic (int8 activations in its matrix products) sits from
headhunt's exact numbers, on the held-out paragraph of the `--precision fast` test: the yardstick
for what `--precision fast` costs (README, "Precision").

    python3 bench/llama_agreement.py [--models smollm2-135m-instruct,gemma3-270m]

headhunt's exact logits at every position come from `headhunt cache --hooks logits` (which also
records the prompt's token ids); llama.cpp (llama-cpp-python) evaluates the same token ids on the
same GGUF with `logits_all`. Prints the mean KL divergence of llama.cpp's next-token distribution
from headhunt's, per position, and the share of positions with the same top token.

Needs llama-cpp-python and numpy; the models in headhunt's cache (`headhunt fetch ID`).
"""

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TEXT = ROOT / "crates" / "headhunt" / "tests" / "data" / "heldout.txt"
FILES = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3-270m": "gemma-3-270m-q4_k_m.gguf"}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--headhunt", default=str(ROOT / "target" / "release" / "headhunt"))
    args = ap.parse_args()
    from llama_cpp import Llama

    cache = Path(os.environ.get("HEADHUNT_CACHE", Path.home() / ".cache" / "headhunt"))
    text = TEXT.read_text()
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "exact.npz"
            subprocess.run([args.headhunt, "cache", "--model", model, "--prompt", text, "--hooks", "logits", "--out", str(out)],
                           check=True, capture_output=True)
            saved = np.load(out)
            tokens = [int(t) for t in saved["tokens"]]
            exact = log_softmax(saved["logits"].astype(np.float64))
        llm = Llama(model_path=str(cache / FILES[model]), n_ctx=len(tokens) + 8, n_threads=os.cpu_count(), n_batch=512,
                    logits_all=True, verbose=False)
        llm.eval(tokens)
        theirs = log_softmax(np.array(llm.scores[: len(tokens)], dtype=np.float64)[:, : exact.shape[1]])
        kl = (np.exp(exact) * (exact - theirs)).sum(axis=1).mean()
        same = (exact.argmax(axis=1) == theirs.argmax(axis=1)).mean()
        print(f"{model}: {len(tokens)} positions, llama.cpp against headhunt exact: mean KL {kl:.2e}, same top token {100 * same:.1f}%")


if __name__ == "__main__":
    main()
