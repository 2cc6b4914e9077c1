"""The architectures table of docs/architectures.md, measured: every tiny checkpoint that
`make_reference.py` writes (its safetensors folder and, where written, its GGUF file) loaded by
headhunt (the installed Python wheel), its logits and every attention probability against
transformers' float32 eager run (expected.npz), and what `headhunt info` says about it.

    python3 reference/make_reference.py --only tiny      # the checkpoints and their references
    python3 reference/architecture_table.py              # writes docs/architectures.md

Needs the wheel installed (scripts/test.sh builds and installs it) and target/release/headhunt.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

import headhunt

INFO_ROWS = ["architecture", "MLP", "positions", "attention"]


def info(cli: str, path: Path) -> dict:
    """`headhunt info`'s rows, by name."""
    out = subprocess.run([cli, "info", "--model", str(path)], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        name, _, value = line.strip().partition("  ")
        rows[name.strip()] = value.strip()
    return rows


def agreement(path: Path, expected: dict) -> tuple:
    """Largest |difference| of the logits and of the attention probabilities (every layer, head,
    query and key) from transformers'."""
    model = headhunt.HookedModel.from_pretrained(str(path))
    ids = expected["input_ids"]
    n_layers = expected["attn"].shape[0]
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    logits, cache = model.run_with_cache(ids, names_filter=names, prepend_bos=False)
    d_logits = float(np.abs(logits - expected["logits"]).max())
    d_attn = max(float(np.abs(cache[n] - expected["attn"][l]).max()) for l, n in enumerate(names))
    return d_logits, d_attn


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, default=Path("target/reference/tiny"))
    ap.add_argument("--cli", default="target/release/headhunt")
    ap.add_argument("--out", type=Path, default=Path("docs/architectures.md"))
    args = ap.parse_args()
    rows = []
    for folder in sorted(p for p in args.reference.iterdir() if (p / "expected.npz").exists()):
        expected = dict(np.load(folder / "expected.npz"))
        for path, form in [(folder, "safetensors"), (folder / "model.gguf", "GGUF")]:
            if not path.exists():
                continue
            d_logits, d_attn = agreement(path, expected)
            about = info(args.cli, path)
            rows.append((folder.name, form, about, d_logits, d_attn))
            print(f"{folder.name} ({form}): logits {d_logits:.1e}, attention {d_attn:.1e}", file=sys.stderr)
    worst = max(max(r[3], r[4]) for r in rows)
    lines = [
        "# Architectures: agreement with transformers, measured",
        "",
        "Written by `python3 reference/architecture_table.py` from the tiny random checkpoints of",
        "`reference/make_reference.py` (transformers' float32 eager run is the reference; the GGUF files",
        "are written as llama.cpp's converter writes them, and read back by transformers or llama.cpp",
        "before any test uses them): the largest difference of headhunt's logits and of its attention",
        "probabilities (every layer, head, query and key of the 40-token prompt) from transformers', in",
        "exact precision, and what `headhunt info` prints about each. The tests",
        "(`crates/engine/tests/tiny_reference.rs`) hold every row to 1e-4, whole and in chunks of 7",
        f"tokens; the largest difference in this table is {worst:.1e}.",
        "",
        "| checkpoint | file | architecture | max abs. diff., logits | max abs. diff., attention | MLP | positions | attention |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, form, about, d_logits, d_attn in rows:
        cells = [about.get(k, "") for k in INFO_ROWS]
        lines.append(f"| `{name}` | {form} | `{cells[0]}` | {d_logits:.1e} | {d_attn:.1e} | {cells[1]} | {cells[2]} | {cells[3]} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} rows in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
