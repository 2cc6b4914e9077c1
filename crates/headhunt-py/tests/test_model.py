"""The model API against the CLI: the same numbers, bit for bit, through another door."""

import json

import numpy as np
import pytest

import headhunt
from conftest import REPO, run_cli

PROMPT = "The harbour master keeps the spare key under the blue anchor. Where is the spare key?"
HOOKS = [
    "hook_embed",
    "blocks.0.hook_resid_post",
    "blocks.3.attn.hook_z",
    "blocks.3.attn.hook_pattern",
    "blocks.3.attn.hook_result",
    "blocks.5.mlp.hook_post",
    "blocks.7.hook_mlp_out",
    "ln_final.hook_normalized",
]


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_logits_and_cache_equal_the_cli(which, request, cli, scratch):
    model = request.getfixturevalue(which)
    npz = scratch / "cache.npz"
    run_cli(cli, "cache", "--model", model.name, "--prompt", PROMPT, "--hooks", *HOOKS, "--out", str(npz))
    expected = np.load(npz)
    tokens = model.to_tokens(PROMPT)
    assert np.array_equal(tokens, expected["tokens"].astype(np.int32))

    logits = model(PROMPT)
    assert logits.dtype == np.float32 and logits.shape == (len(tokens), model.cfg["d_vocab"])
    assert np.array_equal(logits, expected["logits"]), "logits differ from `headhunt cache`"

    logits2, cache = model.run_with_cache(PROMPT, names_filter=HOOKS)
    assert np.array_equal(logits2, logits)
    assert sorted(cache.keys()) == sorted(HOOKS)
    for name in HOOKS:
        assert np.array_equal(cache[name], expected[name]), f"{name} differs from `headhunt cache`"
    # TransformerLens's shapes, without the batch dimension, and its shorthand.
    c, n = model.cfg, len(tokens)
    assert cache["z", 3].shape == (n, c["n_heads"], c["d_head"])
    assert cache["pattern", 3].shape == (c["n_heads"], n, n)
    assert cache["result", 3].shape == (n, c["n_heads"], c["d_model"])
    assert cache["post", 5].shape == (n, c["d_mlp"])
    assert np.allclose(cache["pattern", 3].sum(-1), 1.0, atol=1e-5)


def test_attention_scores_give_the_pattern(smollm2):
    names = ["blocks.3.attn.hook_attn_scores", "blocks.3.attn.hook_pattern", "blocks.3.ln1.hook_scale", "ln_final.hook_scale"]
    _, cache = smollm2.run_with_cache(PROMPT, names_filter=names)
    scores, pattern = cache["attn_scores", 3], cache["pattern", 3]
    assert scores.shape == pattern.shape
    above = np.triu_indices(scores.shape[1], 1)
    assert np.all(np.isneginf(scores[:, above[0], above[1]])), "the causal future is -inf"
    e = np.exp(scores - scores.max(-1, keepdims=True))
    assert np.allclose(e / e.sum(-1, keepdims=True), pattern, atol=1e-6), "softmax of the scores is the pattern"
    assert cache["scale", 3, "ln1"] is cache["blocks.3.ln1.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]


def test_names_filter_forms_and_positions(smollm2):
    names = smollm2.hook_names()
    assert names[0] == "hook_embed" and names[-1] == "logits" and "blocks.29.attn.hook_pattern" in names
    _, one = smollm2.run_with_cache(PROMPT, names_filter="blocks.2.hook_resid_pre")
    assert list(one.keys()) == ["blocks.2.hook_resid_pre"]
    _, chosen = smollm2.run_with_cache(PROMPT, names_filter=lambda n: n.endswith("hook_attn_out"))
    assert len(chosen) == smollm2.cfg["n_layers"]
    _, star = smollm2.run_with_cache(PROMPT, names_filter=["blocks.*.hook_attn_out"])
    assert sorted(star.keys()) == sorted(chosen.keys())
    for name in chosen:
        assert np.array_equal(star[name], chosen[name])
    # Positions: the rows of the whole run at those positions.
    n = len(smollm2.to_tokens(PROMPT))
    logits_last, last = smollm2.run_with_cache(PROMPT, names_filter=["blocks.4.hook_resid_post", "blocks.4.attn.hook_pattern"], positions=[-1, 0])
    _, whole = smollm2.run_with_cache(PROMPT, names_filter=["blocks.4.hook_resid_post", "blocks.4.attn.hook_pattern"])
    assert list(last.positions["blocks.4.hook_resid_post"]) == [0, n - 1]
    assert np.array_equal(last["resid_post", 4], whole["resid_post", 4][[0, n - 1]])
    assert np.array_equal(last["pattern", 4], whole["pattern", 4][:, [0, n - 1], :])
    assert logits_last.shape == (2, smollm2.cfg["d_vocab"])


def test_tokens_round_trip(smollm2):
    tokens = smollm2.to_tokens("Hello world")
    assert tokens.dtype == np.int32
    assert smollm2.to_string(tokens).endswith("Hello world")
    strs = smollm2.to_str_tokens("Hello world")
    assert "".join(strs).endswith("Hello world") and len(strs) == len(tokens)
    chat = smollm2.to_tokens("Hello", chat=True)
    assert "user" in smollm2.to_string(chat)
    assert smollm2.to_str_tokens(tokens) == strs
    # A TransformerLens-style batch of one is accepted.
    assert np.array_equal(smollm2(tokens[None, :]), smollm2(tokens))


def test_interventions(smollm2):
    tokens = smollm2.to_tokens(PROMPT)
    base = smollm2(tokens)
    # Masking heads changes the logits; masking nothing does not.
    assert np.array_equal(smollm2.run_with_interventions(tokens, mask_heads=[]), base)
    masked = smollm2.run_with_interventions(tokens, mask_heads=[(3, 0), (5, 2)], mask_mode="zero")
    assert not np.array_equal(masked, base)
    # Zeroing a head zeroes its hook_z slice.
    _, cache = smollm2.run_with_interventions(tokens, mask_heads=[(3, 0)], mask_mode="zero", names_filter=["blocks.3.attn.hook_z"])
    assert np.all(cache["z", 3][:, 0, :] == 0) and np.any(cache["z", 3][:, 1, :] != 0)
    # Adding a vector to the residual stream moves it by exactly that vector.
    d = smollm2.cfg["d_model"]
    v = np.linspace(-1, 1, d, dtype=np.float32)
    _, before = smollm2.run_with_cache(tokens, names_filter="blocks.2.hook_resid_post")
    _, after = smollm2.run_with_interventions(tokens, add={"blocks.2.hook_resid_post": v}, names_filter=["blocks.2.hook_resid_post"])
    assert np.allclose(after["resid_post", 2] - before["resid_post", 2], v, atol=1e-5)
    # Patching a layer's output with its own values changes nothing; with another run's, it
    # carries that run over.
    _, own = smollm2.run_with_cache(tokens, names_filter="blocks.6.hook_resid_post")
    same = smollm2.run_with_interventions(tokens, patch={"blocks.6.hook_resid_post": own["resid_post", 6]})
    assert np.array_equal(same, base)


def test_disable_experts():
    """A Mixture-of-Experts layer with an expert disabled: its router logit is -inf for every
    token, no token weighs it, each token's weights still sum to 1 (Mixtral renormalises over
    the chosen), and the logits change; nothing disabled changes nothing."""
    moe = headhunt.HookedModel.from_pretrained(str(REPO / "target" / "reference" / "tiny" / "mixtral-moe"))
    tokens = np.array([7, 42, 99, 3, 250, 18, 64, 64, 5], dtype=np.int64)
    names = ["blocks.0.mlp.hook_router", "blocks.0.mlp.hook_expert_weights"]
    base, cache = moe.run_with_cache(tokens, names_filter=names)
    busiest = int(np.argmax((cache["blocks.0.mlp.hook_expert_weights"] > 0).sum(0)))
    same = moe.run_with_interventions(tokens, disable_experts=[])
    assert np.array_equal(same, base)
    logits, off = moe.run_with_interventions(tokens, disable_experts=[(0, busiest)], names_filter=names)
    assert np.all(off["blocks.0.mlp.hook_router"][:, busiest] == -np.inf)
    weights = off["blocks.0.mlp.hook_expert_weights"]
    assert np.all(weights[:, busiest] == 0) and np.allclose(weights.sum(-1), 1, atol=1e-6)
    assert not np.allclose(logits, base)
    with pytest.raises(Exception, match="expert 9"):
        moe.run_with_interventions(tokens, disable_experts=[(0, 9)])


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_generate_equals_the_cli(which, request, cli):
    model = request.getfixturevalue(which)
    expected = run_cli(cli, "generate", "--model", model.name, "--prompt", "The capital of France is", "--max-new", "12").stdout
    assert model.generate("The capital of France is", max_new_tokens=12).strip() == expected.strip()


def test_grounded_generation_equals_the_cli(smollm2, cli, tmp_path):
    # SmolLM2's two strongest retrieval heads (README) as a score file.
    scores = {f"{l}-{h}": [0.7 if (l, h) in ((18, 7), (18, 6)) else 0.0] for l in range(30) for h in range(9)}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores))
    prompt = "Marta keeps the spare key under the blue anchor. Where does Marta keep the spare key?"
    out = tmp_path / "ground.json"
    run_cli(cli, "generate", "--model", smollm2.name, "--chat", "--prompt", prompt, "--max-new", "12", "--ground", "--scores", str(path), "--ground-out", str(out))
    expected = json.loads(out.read_text())
    text, tokens, answer = smollm2.generate_grounded(prompt, path, max_new_tokens=12, chat=True)
    assert list(tokens["token"]) == [t["token"] for t in expected["tokens"]]
    assert np.allclose(tokens["support"], [t["support"] for t in expected["tokens"]])
    assert np.allclose(tokens["lookback"], [t["lookback"] for t in expected["tokens"]])
    assert answer["support"] == pytest.approx(expected["answer"]["support"])
    assert answer["support"] > 0 and "anchor" in text


def test_config(gemma):
    c = gemma.cfg
    assert (c["n_layers"], c["n_heads"], c["n_kv_heads"], c["d_head"]) == (18, 4, 1, 256)
    assert c["attention_layout"].count("global") == 3 and len(c["attention_layout"]) == 18
    assert "gemma3-270m" in repr(gemma) and "18 layers" in repr(gemma)
