#!/usr/bin/env python3
"""Expected values for headhunt's tests, computed with Hugging Face transformers.

Everything headhunt's agreement tests compare against comes from here: PyTorch in float32 with
eager attention, on the same GGUF files (transformers dequantises them itself) or on tiny random
models this script creates and saves as safetensors directories.

    python3 reference/make_reference.py --out target/reference [--only tiny,smollm2-135m-instruct]

Outputs (all under --out):
    tiny/<name>/{config.json, model.safetensors, expected.npz}
        input_ids [T], logits [T, V], attn [L, H, T, T]; llama-family ones also as model.gguf,
        written the way llama.cpp's converter writes them
    <model-id>/expected.npz, <model-id>/meta.json
        per prompt: ids, positions, logits at those positions (full vocabulary), attention
        probabilities of chosen heads at chosen query positions; a 32-token greedy continuation;
        the chat-templated prompt's ids; the varied text's ids.
    niah/<model-id>.json (SmolLM2 and the Qwen2.5 1.5B)
        needle-in-a-haystack trials run the way the retrieval-head paper's code runs them
        (prefill, then one decoding step at a time with attention probabilities), with the
        prompt assembled independently here: token ids, spans, answer, ROUGE-1, per-head scores.
    rouge/pairs.json
        ROUGE-1 recall from rouge-score (with its Porter stemmer) on generated answer/reference
        pairs, and NLTK Porter stems of a word list.
    recall/lstsq.npz
        a least-squares fixture for the MLP decomposition, solved by numpy.
    classify/fixture.json
        scikit-learn's roc_auc_score on fixed score lists (ties included) and its
        LogisticRegression (C = 1) fitted to a seeded data set: weights and test probabilities.

The GGUF files are looked up in headhunt's model cache ($HEADHUNT_CACHE, else
$XDG_CACHE_HOME/headhunt, else ~/.cache/headhunt); `headhunt fetch <id>` puts them there.
"""

import argparse
import ctypes
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import pre_tokenizers

HERE = Path(__file__).resolve().parent
TEXTS = HERE / "texts"

MODELS = {
    "smollm2-135m-instruct": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "heads": [(0, 0), (8, 3), (15, 4), (22, 7), (29, 8)],
        "greedy": ("Write a short poem about the sea.", True),
    },
    "gemma3-270m": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "heads": [(0, 0), (5, 1), (9, 2), (11, 3), (17, 0)],
        "greedy": ("The keeper of the northern light kept two ledgers. The first was", False),
    },
    "qwen2.5-coder-1.5b-instruct": {
        "file": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "heads": [(0, 0), (14, 3), (19, 3), (23, 4), (27, 11)],
        "greedy": ("Write a short poem about the sea.", True),
    },
}

# (needle, context length, depth) of the NIAH trials run per model: several on the small model,
# one on the 1.5B (its trials cost the reference minutes each).
NIAH_TRIALS = {
    "smollm2-135m-instruct": [(0, 600, 50.0), (1, 900, 0.0), (2, 1200, 100.0), (0, 1500, 25.0), (1, 2000, 70.0)],
    "qwen2.5-coder-1.5b-instruct": [(0, 1200, 50.0)],
}

# (name, text, through the chat template?)
PROMPTS = [
    ("short", "The capital of France is Paris, the capital of Germany is Berlin, the capital of Italy is Rome, and the capital of Spain is", False),
    (
        "chat",
        "Explain in two sentences why the sky looks blue during the day and red at sunset.",
        True,
    ),
    ("long", (TEXTS / "lighthouse.txt").read_text(), False),
]


def cache_dir() -> Path:
    if os.environ.get("HEADHUNT_CACHE"):
        return Path(os.environ["HEADHUNT_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "headhunt"
    return Path.home() / ".cache" / "headhunt"


def load_gguf(model_id: str):
    spec = MODELS[model_id]
    path = cache_dir() / spec["file"]
    if not path.exists():
        sys.exit(f"{path} is missing: run `headhunt fetch {model_id}` first")
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if model_id.startswith("smollm2"):
        # transformers' GGUF converter does not know llama.cpp's `smollm` pre-tokenizer and falls
        # back to plain GPT-2 splitting. SmolLM2's own tokenizer.json (and llama.cpp) first split
        # every digit on its own; restore that so the reference is SmolLM2's real tokenizer.
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return tok, model


def encode(tok, text: str, chat: bool) -> list[int]:
    """A user message through the chat template when the model has one, else plain text (with
    BOS where the tokenizer adds it), as headhunt sends prompts."""
    if chat and tok.chat_template:
        return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=False))
    return tok(text).input_ids


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> list[int]:
    """`n` argmax tokens, never stopping early (EOS included)."""
    out = model(torch.tensor([ids]), use_cache=True)
    past, logits = out.past_key_values, out.logits[0, -1]
    new = []
    for _ in range(n):
        t = int(torch.argmax(logits))
        new.append(t)
        out = model(torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
    return new


@torch.no_grad()
def real_model(out_dir: Path, model_id: str):
    spec = MODELS[model_id]
    tok, model = load_gguf(model_id)
    arrays, meta = {}, {"model": model_id, "transformers": transformers.__version__, "torch": torch.__version__, "prompts": {}}
    heads = spec["heads"]
    arrays["attn_heads"] = np.array(heads, dtype=np.int64)
    for name, text, chat in PROMPTS:
        ids = encode(tok, text, chat)
        n = len(ids)
        positions = np.unique(np.linspace(0, n - 1, 16).round().astype(np.int64))
        out = model(torch.tensor([ids]), output_attentions=True)
        logits = out.logits[0].float().numpy()
        qpos = np.array(sorted({n // 4, n // 2, (3 * n) // 4, n - 1}), dtype=np.int64)
        attn = np.stack([out.attentions[l][0, h].float().numpy()[qpos] for l, h in heads])
        arrays[f"{name}.ids"] = np.array(ids, dtype=np.int64)
        arrays[f"{name}.positions"] = positions
        arrays[f"{name}.logits"] = logits[positions].astype(np.float32)
        arrays[f"{name}.attn_qpos"] = qpos
        arrays[f"{name}.attn"] = attn.astype(np.float32)
        meta["prompts"][name] = {"text": text, "chat": chat, "tokens": n}
        print(f"{model_id}: prompt {name}: {n} tokens", file=sys.stderr)
        del out
    text, chat = spec["greedy"]
    ids = encode(tok, text, chat)
    arrays["greedy.prompt"] = np.array(ids, dtype=np.int64)
    arrays["greedy.ids"] = np.array(greedy(model, ids, 32), dtype=np.int64)
    meta["greedy"] = {"text": text, "chat": chat, "continuation": tok.decode(arrays["greedy.ids"].tolist())}
    varied = (TEXTS / "varied.txt").read_text()
    arrays["varied.ids"] = np.array(tok(varied, add_special_tokens=False).input_ids, dtype=np.int64)
    arrays["varied_special.ids"] = np.array(tok(varied, add_special_tokens=True).input_ids, dtype=np.int64)
    if tok.chat_template:
        msg = "What is the capital of France?"
        arrays["chat_template.ids"] = np.array(encode(tok, msg, True), dtype=np.int64)
        meta["chat_template"] = {"message": msg, "rendered": tok.apply_chat_template([{"role": "user", "content": msg}], add_generation_prompt=True, tokenize=False)}
    d = out_dir / model_id
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "expected.npz", **arrays)
    (d / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))


def niah_prompt(tok, needle: dict, haystack_ids: list[int], ends: list[bool], length: int, depth: float):
    """The NIAH prompt, assembled as headhunt documents it: frame text around a context marker,
    the needle tokenized alone with a leading space, spliced into the haystack tokens at the last
    sentence end at or before `depth` percent."""
    mark = "\ue000HEADHUNT-CONTEXT\ue000"
    content = f"<book>{mark}</book>\nBased on the content of the book, Question: {needle['question']}\nAnswer:"
    chat = bool(tok.chat_template)
    rendered = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False) if chat else content
    before, after = rendered.split(mark)
    before_ids = tok(before, add_special_tokens=not chat).input_ids
    after_ids = tok(after, add_special_tokens=False).input_ids
    enc = tok(" " + needle["needle"], add_special_tokens=False, return_offsets_mapping=True)
    at = needle["needle"].find(needle["real_needle"])
    lo, hi = at + 1, at + 1 + len(needle["real_needle"])
    inside = [i for i, (s, e) in enumerate(enc.offset_mapping) if s < hi and e > lo]
    hay_len = length - len(enc.input_ids)
    if depth >= 100:
        ins = hay_len
    else:
        ins = int(hay_len * depth / 100)
        while ins > 0 and not ends[ins - 1]:
            ins -= 1
    ids = before_ids + haystack_ids[:ins] + enc.input_ids + haystack_ids[ins:hay_len] + after_ids
    start = len(before_ids) + ins
    return ids, (start, start + len(enc.input_ids)), (start + inside[0], start + inside[-1] + 1)


def niah_setup(tok):
    """The test needles, the lighthouse haystack as tokens, sentence ends and EOS ids."""
    needles = [json.loads(l) for l in (TEXTS / "needles.jsonl").read_text().splitlines() if l.strip()]
    haystack = (TEXTS / "lighthouse.txt").read_text().strip()
    text = haystack
    while len(text) < 40_000:
        text += "\n\n" + haystack
    hay_ids = tok(text, add_special_tokens=False).input_ids
    ends = [tok.decode([t]).rstrip().endswith((".", "!", "?")) for t in hay_ids]
    eos = {tok.eos_token_id} | {tok.convert_tokens_to_ids(t) for t in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] if t in tok.get_vocab()}
    return needles, hay_ids, ends, eos


@torch.no_grad()
def niah_trial(tok, model, needle, hay_ids, ends, eos, length, depth):
    """One trial as the paper's code runs it: prefill all but the last prompt token, then decode
    one token at a time with attention probabilities, recording every head's argmax."""
    ids, needle_span, answer_span = niah_prompt(tok, needle, hay_ids, ends, length, depth)
    past = model(torch.tensor([ids[:-1]]), use_cache=True).past_key_values
    inp, generated, argmax, near_tie = ids[-1], [], [], set()
    for _ in range(50):
        o = model(torch.tensor([[inp]]), past_key_values=past, use_cache=True, output_attentions=True)
        past = o.past_key_values
        nxt = int(torch.argmax(o.logits[0, -1]))
        # [layers * heads, keys]; sliding-window layers (Gemma 3) return only their window's
        # keys, the most recent ones, so they are padded on the left to absolute positions.
        keys = max(a.shape[-1] for a in o.attentions)
        rows = torch.cat([torch.nn.functional.pad(a[0, :, -1, :], (keys - a.shape[-1], 0)) for a in o.attentions])
        top = torch.topk(rows, 2, dim=-1)
        argmax.append(top.indices[:, 0].tolist())
        near_tie |= {h for h, (a, b) in enumerate(top.values.tolist()) if a - b < 1e-5}
        generated.append(nxt)
        if nxt in eos or "\n" in tok.decode(generated, skip_special_tokens=True).lstrip():
            break
        inp = nxt
    answer = tok.decode(generated, skip_special_tokens=True).lstrip().split("\n")[0].strip()
    return ids, needle_span, answer_span, generated, argmax, near_tie, answer


def timed_trial(tok, model, length, depth):
    """Seconds for one trial (prompt assembly excluded), for bench/side_by_side.py."""
    needles, hay_ids, ends, eos = niah_setup(tok)
    start = time.perf_counter()
    niah_trial(tok, model, needles[0], hay_ids, ends, eos, length, depth)
    return time.perf_counter() - start


@torch.no_grad()
def niah_trials(out_dir: Path, model_id: str):
    from rouge_score import rouge_scorer

    tok, model = load_gguf(model_id)
    cfg = model.config
    needles, hay_ids, ends, eos = niah_setup(tok)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    trials = []
    for needle_index, length, depth in NIAH_TRIALS[model_id]:
        needle = needles[needle_index]
        ids, needle_span, answer_span, generated, argmax, near_tie, answer = niah_trial(tok, model, needle, hay_ids, ends, eos, length, depth)
        rouge1 = scorer.score(needle["real_needle"], answer)["rouge1"].recall * 100
        n = cfg.num_hidden_layers * cfg.num_attention_heads
        span = answer_span[1] - answer_span[0]
        copies = [[] for _ in range(n)]
        for t, w in enumerate(generated):
            for h, j in enumerate(argmax[t]):
                if answer_span[0] <= j < answer_span[1] and ids[j] == w:
                    copies[h].append(j)
        trials.append({
            "needle": needle_index, "length": length, "depth": depth,
            "prompt": ids, "needle_span": needle_span, "answer_span": answer_span,
            "generated": generated, "answer": answer, "rouge1": rouge1,
            "scores": [len(set(c)) / span for c in copies],
            "scores_per_step": [len(c) / span for c in copies],
            "argmax": argmax, "near_tie": sorted(near_tie),
        })
        print(f"niah: needle {needle_index}, {length} tokens, depth {depth}: {answer!r} (ROUGE-1 {rouge1:.1f})", file=sys.stderr)
    d = out_dir / "niah"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{model_id}.json").write_text(json.dumps({"model": model_id, "trials": trials}))


ROUGE_WORDS = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized
hopping tanned falling hissing fizzed failing filing happy sky relational conditional rational
valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization
predication operator feudalism decisiveness hopefulness callousness formaliti sensitiviti
sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival
allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment
dependent adoption homologou communism activate angulariti homologous effective bowdlerize probate
rate cease controlling roll dying lying tying news innings outings cannings howe proceed exceed
succeed flies died spied enjoy enjoyment generalizations generously emotionally happily running
runs ran quickly organization organizations universities university studies studying studied
apples geese wolves knives analyses crises phenomena criteria dying eyed skies fully beautifully
archaeology geology psychology theology analogies agreement measurement kilograms seventeen
november monday paprika spoonful lighthouse engineer designed migration marshes reeds station
flashing displays buttons seconds reset resetting weathered weathering yyyy syzygy toy toys
""".split()

ROUGE_SENTENCES = [
    "The secret ingredient is a spoonful of smoked paprika and a splash of apple cider.",
    "Ring the brass bell three times and wait for the lantern signal.",
    "The access code for the observatory archive is 4721 9036.",
    "An engineer named Elspeth Varley designed the lighthouse on Corran Point.",
    "The best place to watch the autumn migration is the reed marsh behind the old salt mill at dawn.",
    "The giant pumpkin weighed exactly 612 kilograms, a record for the fair.",
    "The river ferry stops running on the first Monday of November.",
    "Hold the blue button for ten seconds while the display flashes green.",
    "Café owners in Zürich don't open before 9:30 — they're running late!",
    "Generalizations about universities' organizational structures are happily running wild.",
]


def rouge_pairs(out_dir: Path):
    import random

    from nltk.stem import porter
    from rouge_score import rouge_scorer

    rng = random.Random(20261122)
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    words = ROUGE_WORDS + [w for s in ROUGE_SENTENCES for w in s.split()]
    pairs = []
    for target in ROUGE_SENTENCES:
        tw = target.split()
        for _ in range(22):
            kind = rng.randrange(5)
            if kind == 0:  # drop words
                pred = [w for w in tw if rng.random() > 0.4]
            elif kind == 1:  # shuffle and repeat
                pred = tw + rng.sample(tw, k=min(3, len(tw)))
                rng.shuffle(pred)
            elif kind == 2:  # other words in between
                pred = [w for w in tw for w in ([w] + ([rng.choice(words)] if rng.random() < 0.3 else []))]
            elif kind == 3:  # change case and punctuation
                pred = [w.upper() if rng.random() < 0.3 else w.strip(".,!?") for w in tw]
            else:  # unrelated words
                pred = rng.sample(words, k=rng.randrange(1, 12))
            prediction = " ".join(pred)
            pairs.append({"target": target, "prediction": prediction, "recall": scorer.score(target, prediction)["rouge1"].recall})
    stemmer = porter.PorterStemmer()
    stems = {w.lower(): stemmer.stem(w.lower()) for w in ROUGE_WORDS}
    d = out_dir / "rouge"
    d.mkdir(parents=True, exist_ok=True)
    (d / "pairs.json").write_text(json.dumps({"pairs": pairs, "stems": stems}, ensure_ascii=False, indent=0))
    print(f"rouge: {len(pairs)} pairs, {len(stems)} stems", file=sys.stderr)


def lstsq_fixture(out_dir: Path):
    """The MLP decomposition's least squares, solved by numpy on the full design matrix:
    y[p, x] = sum_i beta_i c[p, i, x] + b[x], unknowns beta (K) and b (D)."""
    rng = np.random.default_rng(11)
    n, k, d = 14, 4, 6
    c = rng.normal(size=(n, k, d)).astype(np.float32)
    y = (np.einsum("pkx,k->px", c, [0.7, -1.3, 0.0, 2.2]) + rng.normal(size=d) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    design = np.zeros((n * d, k + d))
    for p in range(n):
        for x in range(d):
            design[p * d + x, :k] = c[p, :, x]
            design[p * d + x, k + x] = 1.0
    sol, *_ = np.linalg.lstsq(design, y.reshape(-1).astype(np.float64), rcond=None)
    pred = (design @ sol).reshape(n, d)
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
    d_ = out_dir / "recall"
    d_.mkdir(parents=True, exist_ok=True)
    np.savez(d_ / "lstsq.npz", components=c, targets=y, betas=sol[:k], intercept=sol[k:], r2=np.array([r2]))
    print(f"lstsq: R^2 {r2:.4f}", file=sys.stderr)


def classifier_fixture(out_dir: Path):
    """AUROC and logistic regression as scikit-learn computes them, for the hallucination
    detectors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(21)
    cases = []
    for n, ties in [(12, False), (40, True), (200, True), (7, False)]:
        labels = rng.random(n) < 0.35
        labels[0], labels[1] = True, False
        scores = rng.normal(size=n) + 0.8 * labels
        if ties:
            scores = np.round(scores, 1)
        cases.append({"scores": scores.tolist(), "labels": labels.tolist(), "auroc": float(roc_auc_score(labels, scores))})
    n, d = 120, 9
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d)
    w = rng.normal(size=d)
    y = rng.random(n) < 1 / (1 + np.exp(-(x @ w * 0.6 + 0.3)))
    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit(x, y)
    test = rng.normal(size=(10, d)) * 1.5
    logistic = {
        "x": x.tolist(),
        "y": y.tolist(),
        "c": 1.0,
        "weights": model.coef_[0].tolist(),
        "intercept": float(model.intercept_[0]),
        "test": test.tolist(),
        "probabilities": model.predict_proba(test)[:, 1].tolist(),
    }
    d_ = out_dir / "classify"
    d_.mkdir(parents=True, exist_ok=True)
    (d_ / "fixture.json").write_text(json.dumps({"auroc": cases, "logistic": logistic}))
    print(f"classify: {len(cases)} AUROC cases, logistic regression on {n} x {d}", file=sys.stderr)


def perturb(model, scale: float):
    """Random weights of a useful size: HF's init leaves norms at exactly 1 and biases at 0,
    which would hide a wrongly applied norm weight or bias."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


TINY = {
    "llama-gqa": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False)),
    "qwen2-bias": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)),
    "mistral-window": lambda: transformers.MistralForCausalLM(
        transformers.MistralConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=7, rope_theta=10000.0)),
    "gemma3-window": lambda: transformers.Gemma3ForCausalLM(
        transformers.Gemma3TextConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=6,
                                      layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                      query_pre_attn_scalar=24, rope_theta=100000.0, rope_local_base_freq=1000.0)),
    # Llama 3.x RoPE scaling, with an original context of 16 tokens so that it shows within the
    # 40-token prompt; also written as a GGUF the way llama.cpp's converter writes it (below).
    "llama3-rope": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen3-qknorm": lambda: transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
                                 rope_theta=10000.0, tie_word_embeddings=False)),
    # YaRN, from an original context of 16 tokens so that it shows within the prompt (Qwen3's
    # long-context setting).
    "qwen3-yarn": lambda: transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6,
                                 rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                  "original_max_position_embeddings": 16}, tie_word_embeddings=False)),
    # Soft-caps small enough that random weights reach them.
    "gemma2-softcap": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=6,
                                  query_pre_attn_scalar=24, rope_theta=10000.0, attn_logit_softcapping=2.0,
                                  final_logit_softcapping=3.0)),
    # The same as a GGUF file can state it: llama.cpp's Gemma 2 files carry no query scalar (its
    # graph takes the head size for this shape), so the checkpoint's is the head size.
    "gemma2-gguf": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=6,
                                  query_pre_attn_scalar=32, rope_theta=10000.0, attn_logit_softcapping=2.0,
                                  final_logit_softcapping=3.0)),
    # Fused qkv_proj and gate_up_proj, a window shorter than the prompt.
    "phi3-fused": lambda: transformers.Phi3ForCausalLM(
        transformers.Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=256,
                                sliding_window=9, rms_norm_eps=1e-5, rope_theta=10000.0, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2, tie_word_embeddings=False)),
    # Phi-4-mini's RoPE: LongRoPE (short and long factors, from an original context of 16 so
    # that the 40-token prompt takes the long set and its first 12 tokens the short one) on the
    # leading half of each head (partial_rotary_factor).
    "phi3-longrope": lambda: transformers.Phi3ForCausalLM(
        transformers.Phi3Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=16,
                                sliding_window=None, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                tie_word_embeddings=True,
                                rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                                 "original_max_position_embeddings": 16,
                                                 "short_factor": [1.0, 1.3, 2.1, 3.7], "long_factor": [1.1, 2.4, 5.5, 11.0]})),
    # Norms after attention and the MLP only, Q/K norms over the whole projections.
    "olmo2-postnorm": lambda: transformers.Olmo2ForCausalLM(
        transformers.Olmo2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)),
    # Mixture-of-Experts MLPs: Mixtral (top-2 of 4, renormalised), OLMoE (not renormalised, whole
    # Q/K norms), Qwen3-MoE (renormalised, per-head Q/K norms, narrower experts).
    # A context of 1,024: room for a NIAH trial of its byte-level needle (the end-to-end MoE test).
    "mixtral-moe": lambda: transformers.MixtralForCausalLM(
        transformers.MixtralConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=1024, num_local_experts=4, num_experts_per_tok=2,
                                   sliding_window=None, rope_theta=10000.0, tie_word_embeddings=False)),
    "olmoe-moe": lambda: transformers.OlmoeForCausalLM(
        transformers.OlmoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256, num_experts=4, num_experts_per_tok=2,
                                 norm_topk_prob=False, rope_theta=10000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                 tie_word_embeddings=False)),
    # As a GGUF can state it: llama.cpp's OLMoE graph sizes the K norm by d_model, so its files
    # have as many key/value heads as query heads (as OLMoE has).
    "olmoe-gguf": lambda: transformers.OlmoeForCausalLM(
        transformers.OlmoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=4, max_position_embeddings=256, num_experts=4, num_experts_per_tok=2,
                                 norm_topk_prob=False, rope_theta=10000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                 tie_word_embeddings=False)),
    "qwen3moe-moe": lambda: transformers.Qwen3MoeForCausalLM(
        transformers.Qwen3MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=256, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                                    decoder_sparse_step=1, mlp_only_layers=[], rope_theta=10000.0, tie_word_embeddings=False)),
    # gpt-oss: attention sinks, biases on Q/K/V/O and on the router and experts, windowed layers
    # alternating with full ones, YaRN without truncation from an original context of 16, and
    # a clamp (swiglu_limit) small enough that random weights reach it.
    "gptoss-sinks": lambda: transformers.GptOssForCausalLM(
        transformers.GptOssConfig(vocab_size=256, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, max_position_embeddings=64, num_local_experts=4,
                                  num_experts_per_tok=2, sliding_window=7, swiglu_limit=0.5, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0,
                                                   "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16})),
    # The same as a GGUF can state it: llama.cpp's graph fixes the clamp at 7 (no metadata key);
    # experts 64 wide, so that their rows are whole MXFP4 blocks (below); a context of 1,024 for a
    # NIAH trial of its byte-level needle (the end-to-end test; the YaRN factor is stated).
    "gptoss-gguf": lambda: transformers.GptOssForCausalLM(
        transformers.GptOssConfig(vocab_size=256, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, num_local_experts=4,
                                  num_experts_per_tok=2, sliding_window=7, swiglu_limit=7.0, tie_word_embeddings=False,
                                  rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0,
                                                   "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 16})),
    # Qwen2-MoE: a shared expert of its own width beside the routed ones, scaled by a sigmoid
    # gate; QKV biases; the chosen experts' weights not renormalised.
    "qwen2moe-shared": lambda: transformers.Qwen2MoeForCausalLM(
        transformers.Qwen2MoeConfig(vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=48,
                                    shared_expert_intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=256, num_experts=4, num_experts_per_tok=2,
                                    norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=10000.0,
                                    tie_word_embeddings=False)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "opt": lambda: transformers.OPTForCausalLM(
        transformers.OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=128, word_embed_proj_dim=64)),
}

# The same models stored in 2-byte types, which headhunt keeps as they are: the reference runs in
# float32 on the rounded weights (what headhunt computes).
STORED = {"llama-bf16": ("llama-gqa", torch.bfloat16), "gpt2-f16": ("gpt2", torch.float16)}
# Models whose matrices are rounded to a quant type (gguf-py's quantiser), the rest float32:
# the checkpoint holds the rounded values, its GGUF the blocks. gpt-oss's experts in MXFP4, as
# the Hub ships them; a Llama's and a Mixtral's block matrices (attention, MLP, experts; not the
# embeddings, nor the router, which llama.cpp's quantiser keeps in F32) in Q8_0 and Q4_0.
QUANTISED = {"gptoss-mxfp4": ("gptoss-gguf", "MXFP4"), "llama-q8_0": ("llama-gqa", "Q8_0"),
             "mixtral-q4_0": ("mixtral-moe", "Q4_0")}
# Models quantised by llama.cpp's own quantiser (llama-cpp-python's `llama_model_quantize`, its
# file type), from the float32 GGUF of the base: the checkpoint beside the file holds what
# transformers' GGUF reader dequantises from it, and the expected values are transformers' run on
# those weights.
# Rows of 256 and 512 values, so that llama.cpp's K-quants (super-blocks of 256) take every matrix.
def _wide_llama():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=500.0,
                                 tie_word_embeddings=False))


LLAMA_CPP_QUANTISED = {"llama-q4_k_m": (_wide_llama, "Q4_K_M"), "llama-q8_0-llama-cpp": (_wide_llama, "Q8_0")}


def quantise(t: np.ndarray, qtype: str) -> np.ndarray:
    """`t` [..., rows, cols] as `qtype` blocks along `cols` (gguf-py's quantiser)."""
    import gguf
    return gguf.quants.quantize(np.ascontiguousarray(t, dtype=np.float32), gguf.GGMLQuantizationType[qtype])


def rounded(t: torch.Tensor, qtype: str) -> torch.Tensor:
    """`t` [..., rows, cols] through `qtype` blocks along `cols` and back."""
    import gguf
    return torch.from_numpy(gguf.quants.dequantize(quantise(t.numpy(), qtype), gguf.GGMLQuantizationType[qtype]))


def round_matrices(model, qtype: str):
    """The block matrices rounded in llama.cpp's orientation ([out, in], blocks along `in`):
    nn.Linear weights as they are, gpt-oss's stacked [experts, in, out] experts transposed."""
    with torch.no_grad():
        for layer in model.model.layers:
            if model.config.model_type == "gpt_oss":
                for p in (layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj):
                    p.copy_(rounded(p.data.float().transpose(1, 2), qtype).transpose(1, 2))
                continue
            for name, p in layer.named_parameters():
                if p.dim() >= 2 and not name.endswith(("block_sparse_moe.gate.weight", "mlp.gate.weight")):
                    p.copy_(rounded(p.data.float(), qtype))


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: one vocabulary entry per byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def llama3_rope_factors(cfg) -> np.ndarray:
    """Llama 3's RoPE scaling as one divisor per rotary pair: what llama.cpp's converter stores
    in `rope_freqs.weight` instead of a metadata key (the smooth band interpolated as in the
    Llama 3.1 release's `apply_scaling`)."""
    p = cfg.rope_parameters
    dim = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (p["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    old_ctx, factor = p["original_max_position_embeddings"], p["factor"]
    low, high = p["low_freq_factor"], p["high_freq_factor"]
    factors = []
    for f in inv_freq:
        wavelen = 2 * np.pi / f
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


# A byte-level vocabulary for gpt-oss's files, whose tokenizer splits text as OpenAI's o200k
# does (llama.cpp's `gpt-4o` pre-tokenizer): bytes 0-199 as themselves, and 56 tokens built by
# these merges in rank order, whose results cross the boundaries o200k draws and GPT-2's does
# not (a lower-case run after capitals, digits in threes, a contraction kept on its word,
# punctuation with the line breaks and slashes after it).
O200K_MERGES = [("H", "e"), ("He", "l"), ("Hel", "l"), ("Hell", "o"), ("o", "W"), ("W", "o"), ("Wo", "r"), ("Wor", "l"),
                ("Worl", "d"), ("1", "2"), ("12", "3"), ("3", "4"), ("4", "5"), (" ", "1"), ("t", "'"), ("t'", "s"),
                ("i", "t"), ("'", "s"), ("it", "'s"), (".", "\n"), ("/", "\n"), (" ", "t"), (" t", "h"), (" th", "e"),
                ("\n", "\n"), (" ", " "), ("  ", " "), ("A", "B"), ("AB", "C"), ("ABC", "d"), ("C", "d"), ("e", "r"),
                (" ", "a"), ("a", "/"), ("a/", "b"), ("/", "b"), ("7", "8"), ("78", "9"), ("9", "0"), (" ", "("),
                ("(", "x"), ("x", ")"), (")", "."), ("o", "n"), (" ", "o"), (" o", "n"), ("'", "l"), ("'l", "l"),
                ("I", "'"), ("l", "l"), ("I'", "ll"), ("D", "o"), ("Do", "n"), ("n", "'"), ("n'", "t"), ("Do", "n't")]
O200K_TEXTS = ["HelloWorld it's 1234567 the ABCd.\nWorld/\n", "I'll go on a/b (x). Don't  789012  words\n\nHello",
               "HELLOworld 45 12345 it's/ the  the"]


def o200k_vocabulary():
    """The tokens (byte-alphabet spellings), their merges, and tiktoken's own tokenization of
    `O200K_TEXTS` with the same ranks and OpenAI's o200k split (the pattern as tiktoken defines
    it; its rank file is not fetched: the ranks here are these 256)."""
    import tiktoken
    import tiktoken_ext.openai_public as openai_public

    unescape = lambda s: s.encode().decode("unicode_escape").encode("latin-1")
    ranks = {bytes([b]): b for b in range(200)}
    for a, b in O200K_MERGES:
        merged = unescape(a) + unescape(b)
        assert unescape(a) in ranks and unescape(b) in ranks and merged not in ranks, (a, b)
        ranks[merged] = len(ranks)
    assert len(ranks) == 256
    loader = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *a, **kw: ranks
    try:
        spec = openai_public.o200k_base()
    finally:
        openai_public.load_tiktoken_bpe = loader
    enc = tiktoken.Encoding("o200k-tiny", pat_str=spec["pat_str"], mergeable_ranks=ranks, special_tokens={})
    alphabet = byte_alphabet()
    spell = lambda bs: "".join(alphabet[x] for x in bs)
    tokens = [spell(t) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    # As tiktoken vocabularies are converted for llama.cpp: every split of each token into two
    # tokens is a merge, in the token's rank order (tiktoken merges whichever adjacent pair makes
    # the lowest-ranked token, however it was first built).
    merges = [f"{spell(t[:i])} {spell(t[i:])}" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])
              for i in range(1, len(t)) if r >= 200 and t[:i] in ranks and t[i:] in ranks]
    texts = [unescape(t).decode() for t in O200K_TEXTS]
    return tokens, merges, [{"text": t, "ids": enc.encode(t)} for t in texts]


def write_gpt_oss_gguf(model, path: Path, qtype: str = ""):
    """A gpt-oss checkpoint as llama.cpp's converter writes it (`GptOssModel` in
    convert_hf_to_gguf.py, unquantised experts): the MLP's input norm as `post_attention_norm`,
    the sinks as `attn_sinks.weight`, the experts' stacked `[experts, in, out]` tensors
    transposed and their interleaved gate and up split into `ffn_gate_exps` and `ffn_up_exps`,
    every bias kept, F32 tensors (the experts as `qtype` blocks where given)."""
    import gguf
    from safetensors.numpy import load_file

    cfg = model.config
    n_head, dim = cfg.num_attention_heads, cfg.head_dim
    rope = cfg.rope_parameters
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_key_length(dim)
    w.add_value_length(dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_expert_count(cfg.num_local_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_feed_forward_length(cfg.intermediate_size)
    w.add_sliding_window(cfg.sliding_window)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    tokens, merges, tokenized = o200k_vocabulary()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    (path.parent / "tokenized.json").write_text(json.dumps(tokenized, indent=1))
    sd = {k: v.astype(np.float32) for k, v in load_file(str(path.parent / "model.safetensors")).items()}
    put = lambda name, t: w.add_tensor(name, np.ascontiguousarray(t))
    experts = ((lambda name, t: w.add_tensor(name, quantise(t, qtype), raw_dtype=gguf.GGMLQuantizationType[qtype]))
               if qtype else put)
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    put("output.weight", sd["lm_head.weight"])
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}"
        put(f"blk.{l}.attn_norm.weight", sd[f"{p}.input_layernorm.weight"])
        put(f"blk.{l}.post_attention_norm.weight", sd[f"{p}.post_attention_layernorm.weight"])
        put(f"blk.{l}.attn_sinks.weight", sd[f"{p}.self_attn.sinks"])
        for hf, ll in [("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")]:
            put(f"blk.{l}.{ll}.weight", sd[f"{p}.self_attn.{hf}.weight"])
            put(f"blk.{l}.{ll}.bias", sd[f"{p}.self_attn.{hf}.bias"])
        put(f"blk.{l}.ffn_gate_inp.weight", sd[f"{p}.mlp.router.weight"])
        put(f"blk.{l}.ffn_gate_inp.bias", sd[f"{p}.mlp.router.bias"])
        gate_up = sd[f"{p}.mlp.experts.gate_up_proj"].swapaxes(1, 2)
        gate_up_b = sd[f"{p}.mlp.experts.gate_up_proj_bias"]
        experts(f"blk.{l}.ffn_gate_exps.weight", gate_up[:, ::2, :])
        experts(f"blk.{l}.ffn_up_exps.weight", gate_up[:, 1::2, :])
        put(f"blk.{l}.ffn_gate_exps.bias", gate_up_b[:, ::2])
        put(f"blk.{l}.ffn_up_exps.bias", gate_up_b[:, 1::2])
        experts(f"blk.{l}.ffn_down_exps.weight", sd[f"{p}.mlp.experts.down_proj"].swapaxes(1, 2))
        put(f"blk.{l}.ffn_down_exps.bias", sd[f"{p}.mlp.experts.down_proj_bias"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_llama_gguf(model, path: Path, qtype: str = ""):
    """A llama-family checkpoint (llama, qwen3, qwen3_moe, mixtral, gemma2) as llama.cpp's
    converter writes it: its tensor names and metadata keys, Llama's Q and K rows permuted to
    llama.cpp's interleaved rotary layout (the others' are not), Gemma's norm weights with the 1
    its norms add folded in, experts stacked in 3-D tensors, F32 tensors, and Llama 3 RoPE
    scaling only as the `rope_freqs.weight` tensor; the blocks' matrices as `qtype` blocks where
    given (quantised after the Q/K permutation, as llama.cpp's quantiser sees them). A byte-level vocabulary with one
    merge stands in for a tokenizer (the tests feed token ids; gguf-py writes no empty merge
    list, so byte 255's entry becomes the merge's result)."""
    import gguf

    cfg = model.config
    # llama.cpp writes Mixtral as `llama` with its experts stacked in 3-D tensors.
    moe = cfg.model_type in ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe")
    arch = {"mixtral": "llama", "qwen3_moe": "qwen3moe", "qwen2_moe": "qwen2moe"}.get(cfg.model_type, cfg.model_type)
    gemma = arch == "gemma2"
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    rope = cfg.rope_parameters
    w.add_rope_dimension_count(int(dim * rope.get("partial_rotary_factor", 1.0)))
    w.add_key_length(dim)
    w.add_value_length(dim)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.rope_parameters.get("rope_type") == "yarn":
        # As llama.cpp's converter writes a Qwen3 YaRN scaling: type, factor, original context.
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(cfg.rope_parameters["factor"])
        w.add_rope_scaling_orig_ctx_len(cfg.rope_parameters["original_max_position_embeddings"])
    n_experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if moe:
        w.add_expert_count(n_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    if arch in ("qwen3moe", "qwen2moe"):
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if getattr(cfg, "sliding_window", None) and arch == "phi3":
        w.add_sliding_window(cfg.sliding_window)
    if rope.get("rope_type") == "longrope":
        # As llama.cpp's Phi-3 converter writes LongRoPE: the original context, the attention
        # factor it computes, and the two factor sets as tensors.
        original = rope["original_max_position_embeddings"]
        scale = cfg.max_position_embeddings / original
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    if gemma:
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(byte_alphabet()[:255] + ["ab"])
    w.add_token_merges(["a b"])

    def matrix(name, t):
        # A block's matrix, in `qtype` blocks where asked.
        if qtype and t.ndim >= 2:
            w.add_tensor(name, quantise(t, qtype), raw_dtype=gguf.GGMLQuantizationType[qtype])
        else:
            w.add_tensor(name, np.ascontiguousarray(t))

    def permute(t, heads):
        # llama.cpp's convert_hf_to_gguf.py: each head's rotary halves interleaved row by row.
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    # The saved checkpoint's names (transformers v5 fuses a Mixtral's experts in memory and
    # splits them again on saving, as the Hub's files have them).
    from safetensors.numpy import load_file
    sd = {k: v.astype(np.float32) for k, v in load_file(str(path.parent / "model.safetensors")).items()}
    shift = 1.0 if gemma else 0.0
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"] + shift)
    if "lm_head.weight" in sd:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    if cfg.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    names = {"input_layernorm": "attn_norm", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v"}
    if arch.startswith("qwen3") or arch.startswith("olmo"):
        names |= {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    if arch == "olmo2":
        # Norms after attention and the MLP only.
        del names["input_layernorm"]
        names |= {"post_attention_layernorm": "post_attention_norm", "post_feedforward_layernorm": "post_ffw_norm"}
    if arch == "phi3":
        # Fused as Phi-3 stores them: `attn_qkv`, and gate with up in `ffn_up`.
        names = {"input_layernorm": "attn_norm", "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    if gemma:
        names |= {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                  "post_feedforward_layernorm": "post_ffw_norm"}
    if moe:
        for k in ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]:
            del names[k]
    for l in range(cfg.num_hidden_layers):
        if moe:
            # Mixtral's names, then Qwen3-MoE's.
            p, parts = ((f"model.layers.{l}.block_sparse_moe", ["w1", "w3", "w2"]) if arch == "llama"
                        else (f"model.layers.{l}.mlp", ["gate_proj", "up_proj", "down_proj"]))
            w.add_tensor(f"blk.{l}.ffn_gate_inp.weight", sd[f"{p}.gate.weight"])
            for hf, ll in zip(parts, ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]):
                stacked = np.stack([sd[f"{p}.experts.{e}.{hf}.weight"] for e in range(n_experts)])
                matrix(f"blk.{l}.{ll}.weight", stacked)
            if arch == "qwen2moe":
                # The shared expert, and its gate as one row of d_model (llama.cpp's `{n_embd}`).
                w.add_tensor(f"blk.{l}.ffn_gate_inp_shexp.weight", sd[f"{p}.shared_expert_gate.weight"].reshape(-1))
                for hf, ll in [("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"), ("down_proj", "ffn_down_shexp")]:
                    w.add_tensor(f"blk.{l}.{ll}.weight", sd[f"{p}.shared_expert.{hf}.weight"])
        for hf, ll in names.items():
            t = sd[f"model.layers.{l}.{hf}.weight"]
            if arch == "llama" and ll == "attn_q":
                t = permute(t, n_head)
            elif arch == "llama" and ll == "attn_k":
                t = permute(t, n_kv)
            if gemma and ll.endswith("norm"):
                t = t + shift
            matrix(f"blk.{l}.{ll}.weight", t)
            if f"model.layers.{l}.{hf}.bias" in sd:
                w.add_tensor(f"blk.{l}.{ll}.bias", sd[f"model.layers.{l}.{hf}.bias"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def check_llama_gguf(model, path: Path, ids, logits):
    """The written GGUF checked without headhunt: transformers' own GGUF reader must give the
    checkpoint's logits back. It has no Llama 3 RoPE scaling in GGUF form (it drops
    `rope_freqs.weight`), so for such a file the stored factors are checked instead: the base
    frequencies divided by them are transformers' scaled `inv_freq`."""
    if model.config.rope_parameters.get("rope_type") == "llama3":
        dim = model.config.hidden_size // model.config.num_attention_heads
        base = 1.0 / (model.config.rope_parameters["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        ours = (base / llama3_rope_factors(model.config)).astype(np.float32)
        theirs = model.model.rotary_emb.inv_freq.float().numpy()
        assert np.allclose(ours, theirs, rtol=1e-6, atol=0), (ours, theirs)
        return
    # The checkpoint's config is passed: transformers' GGUF reader takes Qwen3's head size from
    # its defaults, not from `attention.key_length`. The tensors and their layout are the file's.
    back = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=model.config,
                                                             dtype=torch.float32, attn_implementation="eager")
    diff = float((back(ids).logits - logits).abs().max())
    assert diff < 1e-5, f"{path}: transformers reads it back {diff} away from the checkpoint"


# Tiny models that are also written as GGUF files (`model.gguf` beside the safetensors).
AS_GGUF = {"llama-gqa", "llama3-rope", "qwen3-qknorm", "mixtral-moe", "qwen3moe-moe", "gemma2-gguf", "phi3-fused",
           "olmo2-postnorm", "olmoe-gguf", "qwen3-yarn", "gptoss-gguf", "gptoss-mxfp4", "phi3-longrope", "qwen2moe-shared",
           "llama-q8_0", "mixtral-q4_0"}
# Files transformers' GGUF reader does not know (its families, YaRN in GGUF form): llama.cpp
# reads those back instead.
LLAMA_CPP_GGUF = {"mixtral-moe", "olmo2-postnorm", "olmoe-gguf", "qwen3-yarn", "gptoss-gguf", "gptoss-mxfp4",
                  "phi3-longrope", "qwen2moe-shared"}


def check_expert_blocks(path: Path):
    """Every quantised expert tensor of the written GGUF (`ffn_*_exps`), dequantised by gguf-py's
    reader, is exactly the checkpoint's (rounded) expert weights in llama.cpp's orientation:
    the file holds the checkpoint, whatever llama.cpp's own arithmetic makes of it."""
    import gguf
    from safetensors.numpy import load_file
    sd = load_file(str(path.parent / "model.safetensors"))
    checked = 0
    for t in gguf.GGUFReader(str(path)).tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.F32 or "_exps" not in t.name:
            continue
        l, part = int(t.name.split(".")[1]), t.name.split(".")[2]
        if f"model.layers.{l}.mlp.experts.gate_up_proj" in sd:  # gpt-oss: [experts, in, out], gate and up interleaved
            gate_up = sd[f"model.layers.{l}.mlp.experts.gate_up_proj"].swapaxes(1, 2)
            want = {"ffn_gate_exps": gate_up[:, ::2], "ffn_up_exps": gate_up[:, 1::2],
                    "ffn_down_exps": sd[f"model.layers.{l}.mlp.experts.down_proj"].swapaxes(1, 2)}[part]
        else:  # Mixtral: one tensor per expert
            w = {"ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}[part]
            keys = sorted((k for k in sd if k.startswith(f"model.layers.{l}.block_sparse_moe.experts.") and k.endswith(f".{w}.weight")),
                          key=lambda k: int(k.split(".")[5]))
            want = np.stack([sd[k] for k in keys])
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape)
        assert np.array_equal(got, want), f"{path}: {t.name} does not hold the checkpoint's values"
        checked += 1
    assert checked, f"{path}: no quantised expert tensors"


def check_gguf_with_llama_cpp(path: Path, ids, logits, quantised: bool = False):
    """The written GGUF checked without headhunt where transformers cannot read it: llama.cpp
    (llama-cpp-python, f32 KV cache) must give the checkpoint's logits back: to 1e-4 for F32
    files; for quantised ones, whose products llama.cpp computes with activations rounded to
    int8 (Q8_0), to 0.1 with the same argmax at every position. Skipped, saying so, where
    llama-cpp-python is not installed (it builds from source for ~10 minutes, so the test
    command does not install it; its figures are in the README)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        print(f"{path}: llama-cpp-python is not installed; the file is not read back by llama.cpp", file=sys.stderr)
        return
    llm = Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)
    llm.eval(ids[0].tolist())
    got = np.array(llm.scores[: ids.shape[1]])
    # Where the file carries a tokenization of tiktoken's (gpt-oss's o200k split), llama.cpp's
    # tokenizer must give the same ids.
    tokenized = path.parent / "tokenized.json"
    for case in json.loads(tokenized.read_text()) if tokenized.exists() else []:
        ids_back = llm.tokenize(case["text"].encode(), add_bos=False, special=False)
        assert ids_back == case["ids"], f"{path}: llama.cpp tokenizes {case['text']!r} as {ids_back}, tiktoken as {case['ids']}"
    want = logits[0].float().numpy()
    diff = float(np.abs(got - want).max())
    assert diff < (0.1 if quantised else 1e-4), f"{path}: llama.cpp reads it back {diff} away from the checkpoint"
    assert not quantised or (got.argmax(-1) == want.argmax(-1)).all(), f"{path}: llama.cpp's argmax differs"
    print(f"{path}: llama.cpp reads it back within {diff:.1e} of the checkpoint", file=sys.stderr)


@torch.no_grad()
def forward_with_scores(model, ids):
    """The model's output (with attention probabilities), and each layer's attention scores as
    transformers computes them just before the softmax: scaled, soft-capped where the family
    caps, with the mask added ([layer, head, query, key]; masked entries, which transformers
    fills with the dtype's minimum, as -inf, TransformerLens's convention). gpt-oss's softmax
    sees each head's sink as a last column, every row shifted by its maximum: the scores are
    that row's keys shifted back by the sink's known logit."""
    seen, softmax = [], torch.nn.functional.softmax
    sinks = model.config.model_type == "gpt_oss"

    def recording(x, *a, **kw):
        if x.dim() == 4 and x.shape[-2] == ids.shape[1]:  # attention rows, not a router's
            rows = x[0].double()
            if sinks:
                sink = model.model.layers[len(seen)].self_attn.sinks.double()
                rows = rows[..., :-1] + (sink[:, None, None] - rows[..., -1:])
            seen.append(rows.numpy())
        return softmax(x, *a, **kw)

    torch.nn.functional.softmax = recording
    try:
        out = model(ids, output_attentions=True)
    finally:
        torch.nn.functional.softmax = softmax
    scores = np.stack(seen)
    scores[scores < -1e30] = -np.inf
    assert scores.shape[0] == len(out.attentions), (scores.shape, len(out.attentions))
    return out, scores.astype(np.float32)


@torch.no_grad()
def moe_internals(model, ids) -> dict:
    """A Mixture-of-Experts model's router logits and each expert's weight in the output, per
    layer [layer, position, expert], as transformers computes them: the logits its forward
    returns with `output_router_logits`, the weights from what the router hands the experts
    (the chosen experts' indices and weights; the others weigh 0). And each chosen expert's
    output before its weight, [layer, position, expert, d_model] (0 for the others): the
    experts module called again on the same input with one chosen expert per token at weight 1.
    Empty for dense models."""
    n_experts = getattr(model.config, "num_local_experts", None) or getattr(model.config, "num_experts", None)
    if not n_experts:
        return {}
    weights, outputs, handles = [], [], []
    for layer in model.model.layers:
        def record(module, args):
            hidden, index, weight = args
            dense = torch.zeros(index.shape[0], n_experts).scatter(1, index, weight.float())
            weights.append(dense.numpy())
            each = torch.zeros(index.shape[0], n_experts, hidden.shape[-1])
            ones = torch.ones(index.shape[0], 1, dtype=weight.dtype)
            with torch.no_grad():
                for k in range(index.shape[1]):
                    chosen = index[:, k : k + 1]
                    y = module.__class__.forward(module, hidden, chosen, ones).float()
                    each[torch.arange(index.shape[0]), chosen[:, 0]] = y
            outputs.append(each.numpy())
        handles.append(layer.mlp.experts.register_forward_pre_hook(record))
    try:
        out = model(ids, output_router_logits=True)
    finally:
        for h in handles:
            h.remove()
    return {
        "router_logits": np.stack([r.float().numpy() for r in out.router_logits]),
        "expert_weights": np.stack(weights),
        "expert_out": np.stack(outputs),
    }


@torch.no_grad()
def internals(model, ids) -> dict:
    """Per layer, as transformers computes them: each head's query and each key/value head's key
    after their norms and RoPE (what `apply_rotary_pos_emb` returns), the values, the MLP's
    pre-activation (the activation function's input: a gated MLP's gate projection), and what
    the attention's and the MLP's input norms divide each row by, each [layer, position, ...];
    and the final norm's divisor [position]. Llama-like families only."""
    mod = sys.modules[type(model).__module__]
    layers = model.model.layers if hasattr(model, "model") and hasattr(model.model, "layers") else None
    rec = {"q": [], "k": [], "v": [], "mlp_pre": [], "ln1_scale": [], "ln2_scale": [], "final_scale": []}
    handles, orig = [], getattr(mod, "apply_rotary_pos_emb", None)
    if layers is None:
        return {}
    if orig is not None:
        def patched(q, k, *a, **kw):
            q2, k2 = orig(q, k, *a, **kw)
            rec["q"].append(q2[0].transpose(0, 1).float().numpy())
            rec["k"].append(k2[0].transpose(0, 1).float().numpy())
            return q2, k2
        mod.apply_rotary_pos_emb = patched
    eps = model.config.rms_norm_eps

    def scale_of(key):
        # What an RMSNorm divides its input by, computed here from the input transformers feeds it.
        return lambda m, i: rec[key].append(np.sqrt((i[0][0].double().numpy() ** 2).mean(-1) + eps).astype(np.float32))

    handles.append(model.model.norm.register_forward_pre_hook(scale_of("final_scale")))
    for layer in layers:
        attn, cfg = layer.self_attn, model.config
        # The sub-layers' input norms, where the family has them (OLMo 2 has none): Gemma's MLP
        # input norm is `pre_feedforward_layernorm`, its `post_attention_layernorm` a post-norm.
        if hasattr(layer, "input_layernorm"):
            handles.append(layer.input_layernorm.register_forward_pre_hook(scale_of("ln1_scale")))
            ln2 = getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm
            handles.append(ln2.register_forward_pre_hook(scale_of("ln2_scale")))
        d_head = getattr(attn, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
        n_kv = cfg.num_key_value_heads
        if hasattr(attn, "v_proj"):
            handles.append(attn.v_proj.register_forward_hook(
                lambda m, i, o: rec["v"].append(o[0].reshape(o.shape[1], n_kv, d_head).float().numpy())))
        elif hasattr(attn, "qkv_proj"):
            n_q = cfg.num_attention_heads * d_head
            handles.append(attn.qkv_proj.register_forward_hook(
                lambda m, i, o: rec["v"].append(o[0, :, n_q + n_kv * d_head:].reshape(o.shape[1], n_kv, d_head).float().numpy())))
        # A Mixture-of-Experts MLP has no single pre-activation.
        act = getattr(getattr(layer, "mlp", None), "act_fn", None) or getattr(getattr(layer, "mlp", None), "activation_fn", None)
        if act is not None:
            handles.append(act.register_forward_pre_hook(lambda m, i: rec["mlp_pre"].append(i[0][0].float().numpy())))
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()
        if orig is not None:
            mod.apply_rotary_pos_emb = orig
    n = len(layers)
    out = {k: np.stack(v) for k, v in rec.items() if len(v) == n and k != "final_scale"}
    out["final_scale"] = rec["final_scale"][0]
    return out


def llama_cpp_quantised(out_dir: Path, name: str):
    """`name` of LLAMA_CPP_QUANTISED: the model written as float32 GGUF, quantised by llama.cpp,
    read back by transformers; the file, that checkpoint and its reference values. Skipped,
    saying so, where llama-cpp-python is not installed (it builds from source for ~10 minutes,
    so the test command does not install it; the Rust test says it was skipped)."""
    try:
        import llama_cpp
    except ImportError:
        print(f"tiny/{name}: llama-cpp-python is not installed; llama.cpp's quantiser cannot write it", file=sys.stderr)
        return
    make, ftype = LLAMA_CPP_QUANTISED[name]
    torch.manual_seed(0)
    model = make()
    perturb(model, 0.1)
    d = out_dir / "tiny" / name
    model.save_pretrained(d)
    f32 = d / "model-f32.gguf"
    write_llama_gguf(model, f32)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(d / "model.gguf").encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize returned {rc}"
    f32.unlink()
    import gguf
    types = {gguf.GGMLQuantizationType(t.tensor_type).name for t in gguf.GGUFReader(d / "model.gguf").tensors}
    assert {"Q4_K", "Q6_K"} <= types if ftype == "Q4_K_M" else ftype in types, types
    back = transformers.AutoModelForCausalLM.from_pretrained(str(d), gguf_file="model.gguf", config=model.config,
                                                             dtype=torch.float32, attn_implementation="eager")
    # (A model read from GGUF cannot be saved: its dequantised weights go into the original.)
    model.load_state_dict(back.state_dict())
    model.config._attn_implementation = "eager"
    model.eval()
    model.save_pretrained(d)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(7))
    out, scores = forward_with_scores(model, ids)
    assert float((back(ids).logits - out.logits).abs().max()) == 0.0
    np.savez(d / "expected.npz", input_ids=ids[0].numpy().astype(np.int64), logits=out.logits[0].float().numpy(),
             attn=np.stack([a[0].float().numpy() for a in out.attentions]), attn_scores=scores, **internals(model, ids))
    print(f"tiny/{name}: llama.cpp's {ftype} ({', '.join(sorted(types))})", file=sys.stderr)


def tiny_models(out_dir: Path):
    for name in [*TINY, *STORED, *QUANTISED]:
        base, dtype = STORED.get(name, (QUANTISED.get(name, (name,))[0], None))
        qtype = QUANTISED.get(name, ("", ""))[1]
        torch.manual_seed(0)
        model = TINY[base]()
        model.config._attn_implementation = "eager"
        perturb(model, 0.1)
        model.eval()
        if qtype:
            round_matrices(model, qtype)
        # Parameters only: buffers such as the rotary frequencies stay float32, as headhunt computes them.
        for p in model.parameters():
            p.data = p.data.to(dtype or torch.float32)
        ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(7))
        d = out_dir / "tiny" / name
        model.save_pretrained(d)
        for p in model.parameters():
            p.data = p.data.float()
        out, scores = forward_with_scores(model, ids)
        moe = moe_internals(model, ids)
        if name in AS_GGUF:
            if model.config.model_type == "gpt_oss":
                write_gpt_oss_gguf(model, d / "model.gguf", qtype)
            else:
                write_llama_gguf(model, d / "model.gguf", qtype)
            experts_in_blocks = bool(qtype) and bool(getattr(model.config, "num_local_experts", None))
            if experts_in_blocks:
                check_expert_blocks(d / "model.gguf")
            if name in LLAMA_CPP_GGUF:
                check_gguf_with_llama_cpp(d / "model.gguf", ids, out.logits, quantised=bool(qtype))
            elif not experts_in_blocks:
                # (A quantised Mixtral: transformers' reader lacks the family, and llama.cpp's
                # int8 products flip experts near ties; its blocks are checked above.)
                check_llama_gguf(model, d / "model.gguf", ids, out.logits)
        # LongRoPE takes its short factors while a forward call stays within the original
        # context: the first 12 tokens alone show them.
        short = ({"logits_short": model(ids[:, :12]).logits[0].float().numpy()}
                 if (getattr(model.config, "rope_parameters", None) or {}).get("rope_type") == "longrope" else {})
        np.savez(d / "expected.npz", input_ids=ids[0].numpy().astype(np.int64), logits=out.logits[0].float().numpy(), **short,
                 attn=np.stack([a[0].float().numpy() for a in out.attentions]), attn_scores=scores, **internals(model, ids), **moe)
        print(f"tiny/{name}: {sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)
    for name in LLAMA_CPP_QUANTISED:
        llama_cpp_quantised(out_dir, name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("target/reference"))
    ap.add_argument("--only", default="", help="comma list of parts: tiny, rouge, lstsq, classify, niah, " + ", ".join(MODELS))
    args = ap.parse_args()
    parts = [p for p in args.only.split(",") if p] or ["tiny", "rouge", "lstsq", "classify", *MODELS, "niah"]
    torch.set_grad_enabled(False)
    for part in parts:
        if part == "tiny":
            tiny_models(args.out)
        elif part == "rouge":
            rouge_pairs(args.out)
        elif part == "lstsq":
            lstsq_fixture(args.out)
        elif part == "classify":
            classifier_fixture(args.out)
        elif part == "niah":
            for model_id in NIAH_TRIALS:
                niah_trials(args.out, model_id)
        elif part in MODELS:
            real_model(args.out, part)
        else:
            sys.exit(f"unknown part {part}")


if __name__ == "__main__":
    main()
