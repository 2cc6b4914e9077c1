#!/usr/bin/env python3
"""GGUF files with random weights at real models' shapes, quantized by llama.cpp's own quantizer.

    python3 bench/random_gguf.py --shape llama-3.2-1b --types q4_k_m,q8_0 --out /tmp/shapes

The models the papers study (1B-8B parameters) are too large to download here; these files have
their exact tensor shapes, so they measure memory and speed only, never model behaviour. Each
shape is written once as F16 (random normal weights, std 0.02, a fixed seed; norms at 1), one
tensor at a time so that a 7B file never sits in memory, then quantized with
`llama_cpp.llama_model_quantize` (llama-cpp-python), as `llama-quantize` would. The F16 file is
deleted afterwards unless --keep-f16 is given (or f16 is among --types).

The vocabulary is a SentencePiece-style list (`<unk>`, `<s>`, `</s>`, the 256 byte tokens, then
filler pieces) of the model's size, so that llama.cpp and headhunt both load the files.

Needs: gguf, numpy, llama-cpp-python (reference/requirements.txt has the first two).
"""

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

SHAPES = {
    # Llama-3.2-1B: tied embeddings, GQA 32/8, head dim 64.
    "llama-3.2-1b": dict(layers=16, d=2048, ff=8192, heads=32, kv=8, vocab=128256, tied=True, theta=500000.0, eps=1e-5),
    # Mistral-7B-v0.1: separate unembedding, GQA 32/8, head dim 128.
    "mistral-7b": dict(layers=32, d=4096, ff=14336, heads=32, kv=8, vocab=32000, tied=False, theta=1000000.0, eps=1e-5),
}

FTYPES = {"q4_k_m": 15, "q8_0": 7, "q4_0": 2, "q5_k_m": 17, "q6_k": 18, "q2_k": 10, "q3_k_m": 12}


def tensors(s):
    """(name, shape in numpy order [rows, cols]) of every tensor, as llama.cpp names them."""
    d, hd = s["d"], s["d"] // s["heads"]
    yield "token_embd.weight", (s["vocab"], d)
    for l in range(s["layers"]):
        p = f"blk.{l}."
        yield p + "attn_norm.weight", (d,)
        yield p + "attn_q.weight", (s["heads"] * hd, d)
        yield p + "attn_k.weight", (s["kv"] * hd, d)
        yield p + "attn_v.weight", (s["kv"] * hd, d)
        yield p + "attn_output.weight", (d, s["heads"] * hd)
        yield p + "ffn_norm.weight", (d,)
        yield p + "ffn_gate.weight", (s["ff"], d)
        yield p + "ffn_up.weight", (s["ff"], d)
        yield p + "ffn_down.weight", (d, s["ff"])
    yield "output_norm.weight", (d,)
    if not s["tied"]:
        yield "output.weight", (s["vocab"], d)


def write_f16(path: Path, shape: str):
    import gguf

    s = SHAPES[shape]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"random weights at {shape}'s shape")
    w.add_context_length(8192)
    w.add_embedding_length(s["d"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ff"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv"])
    w.add_rope_dimension_count(s["d"] // s["heads"])
    w.add_rope_freq_base(s["theta"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_vocab_size(s["vocab"])
    w.add_file_type(1)  # mostly F16
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(s["vocab"] - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (s["vocab"] - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([-float(i) for i in range(s["vocab"])])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    specs = list(tensors(s))
    for name, shp in specs:
        dtype = np.float32 if len(shp) == 1 else np.float16
        w.add_tensor_info(name, shp, np.dtype(dtype), int(np.prod(shp)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(20261126)
    for name, shp in specs:
        if len(shp) == 1:
            data = np.ones(shp, dtype=np.float32)
        else:
            data = (rng.standard_normal(shp, dtype=np.float32) * 0.02).astype(np.float16)
        w.write_tensor_data(data)
    w.close()


def quantize(src: Path, dst: Path, ftype: int, threads: int):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed ({rc}) for {dst}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--types", default="q4_k_m,q8_0", help="comma list of: f16, " + ", ".join(FTYPES))
    ap.add_argument("--out", type=Path, default=Path("target/shapes"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep-f16", action="store_true")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    unknown = [t for t in types if t != "f16" and t not in FTYPES]
    if unknown:
        sys.exit(f"unknown types {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    f16 = args.out / f"{args.shape}-f16.gguf"
    if not f16.exists():
        t = time.time()
        write_f16(f16, args.shape)
        print(f"{f16}: {f16.stat().st_size / 2**20:.0f} MiB in {time.time() - t:.0f} s", file=sys.stderr)
    for ty in types:
        if ty == "f16":
            continue
        dst = args.out / f"{args.shape}-{ty}.gguf"
        if dst.exists():
            print(f"{dst} exists", file=sys.stderr)
            continue
        t = time.time()
        quantize(f16, dst, FTYPES[ty], args.threads)
        print(f"{dst}: {dst.stat().st_size / 2**20:.0f} MiB in {time.time() - t:.0f} s", file=sys.stderr)
    if "f16" not in types and not args.keep_f16:
        f16.unlink()


if __name__ == "__main__":
    main()
