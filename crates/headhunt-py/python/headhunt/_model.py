"""HookedModel and ActivationCache: headhunt's engine with TransformerLens's names.

Arrays have TransformerLens's shapes without the batch dimension:

=====================================  ===========================
hook                                   shape
=====================================  ===========================
``hook_embed``, ``blocks.L.hook_resid_pre/mid/post``, ``blocks.L.hook_attn_out``,
``blocks.L.hook_mlp_out``, ``ln_final.hook_normalized``  ``[pos, d_model]``
``blocks.L.attn.hook_q``, ``hook_z``   ``[pos, head, d_head]``
``blocks.L.attn.hook_k``, ``hook_v``   ``[pos, kv_head, d_head]``
``blocks.L.attn.hook_result``          ``[pos, head, d_model]``
``blocks.L.mlp.hook_pre/post``         ``[pos, d_mlp]``
``blocks.L.ln1/ln2.hook_scale``,
``ln_final.hook_scale``                ``[pos, 1]``
``blocks.L.attn.hook_pattern``         ``[head, query_pos, key_pos]``
``logits``                             ``[pos, d_vocab]``
=====================================  ===========================

With ``positions=`` only those query positions are recorded (``pos`` runs over them, in order;
``cache.positions[name]`` lists them) and a pattern's keys are padded with zeros to the longest
row.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _headhunt

Tokens = Union[str, Sequence[int], np.ndarray]
NamesFilter = Union[None, str, Iterable[str], Callable[[str], bool]]

def _shorthand() -> Dict[str, str]:
    """TransformerLens's shorthand, made from the engine's table of hook points: a name's last
    part without ``hook_`` (``cache["pattern", 3]`` is ``cache["blocks.3.attn.hook_pattern"]``,
    ``cache["pre", 5]`` is ``blocks.5.mlp.hook_pre``). The norms' ``hook_scale`` is named by its
    norm as in TransformerLens: ``cache["scale", 3, "ln1"]``; ``cache["scale"]`` is the final
    norm's."""
    out = {"ln_final": "ln_final.hook_normalized"}
    for name, *_ in _headhunt.hook_kinds():
        short = name.rsplit(".", 1)[-1].removeprefix("hook_")
        if short != "scale" or not name.startswith("blocks."):
            out[short] = name.replace("{l}", "{}")
    return out


_SHORTHAND = _shorthand()


def _full_name(key: Union[str, Tuple[str, int], Tuple[str, int, str]]) -> str:
    if isinstance(key, tuple):
        if len(key) == 3 and key[0] == "scale":
            _, layer, norm = key
            return f"blocks.{layer}.{norm}.hook_scale"
        short, layer = key[:2]
        if short not in _SHORTHAND or "{}" not in _SHORTHAND[short]:
            per_layer = sorted(k for k, v in _SHORTHAND.items() if "{}" in v)
            raise KeyError(f"unknown per-layer hook shorthand {short!r} (one of {', '.join(per_layer)}; norms: ('scale', layer, 'ln1'))")
        return _SHORTHAND[short].format(layer)
    if key in _SHORTHAND and "{}" not in _SHORTHAND[key]:
        return _SHORTHAND[key]
    return key


class ActivationCache(Mapping[str, np.ndarray]):
    """What ``run_with_cache`` recorded: ``cache["blocks.3.attn.hook_pattern"]`` or
    ``cache["pattern", 3]``; ``cache.keys()``; ``cache.positions[name]`` (the positions the
    first axis of a per-position array, or the second of a pattern, runs over)."""

    def __init__(self, arrays: Dict[str, np.ndarray], positions: Dict[str, np.ndarray]):
        self._arrays = arrays
        self.positions = positions

    def __getitem__(self, key: Union[str, Tuple[str, int]]) -> np.ndarray:  # type: ignore[override]
        name = _full_name(key)
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"{name!r} was not recorded (recorded: {', '.join(self._arrays) or 'nothing'})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} hooks: {', '.join(list(self._arrays)[:4])}{', ...' if len(self) > 4 else ''})"


class HookedModel:
    """A model on headhunt's CPU engine, used as TransformerLens's ``HookedTransformer`` is.

    >>> model = HookedModel.from_pretrained("smollm2-135m-instruct")
    >>> logits, cache = model.run_with_cache("The capital of France is", names_filter="blocks.3.attn.hook_pattern")
    """

    def __init__(self, engine: "_headhunt.Engine", name: str):
        self._engine = engine
        self.name = name
        self.cfg: Dict[str, object] = dict(engine.config())

    @classmethod
    def from_pretrained(cls, name_or_path: str, precision: str = "exact") -> "HookedModel":
        """Load a known id (``smollm2-135m-instruct``, ``gemma3-270m``, ...; fetched on first use
        as the CLI fetches it), a ``.gguf`` file, a Hugging Face directory, or a Hub id
        (``"Qwen/Qwen2.5-1.5B-Instruct"``, ``"org/name@revision"``, a GGUF repo by quant as
        ``"bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"``), downloaded into the Hub's cache (the
        one transformers uses; ``HF_HUB_OFFLINE=1`` reads it without the network). ``precision``:
        ``"exact"`` (f32 products, the reference's numbers) or ``"fast"`` (int8 products with
        quantised weights and an f16 KV cache, as llama.cpp). Raises ``ModelLoadError``."""
        return cls(_headhunt.Engine.load(str(name_or_path), precision), str(name_or_path))

    def __repr__(self) -> str:
        c = self.cfg
        return f"HookedModel({self.name!r}: {c['n_layers']} layers, {c['n_heads']} heads, d_model {c['d_model']}, {c['precision']})"

    def hook_names(self) -> List[str]:
        """Every hook name, in TransformerLens's order."""
        return list(self._engine.hook_names())

    # Tokens.

    def to_tokens(self, text: str, prepend_bos: bool = True, chat: bool = False) -> np.ndarray:
        """Token ids (int32). ``chat=True`` sends the text as a user message through the model's
        chat template (which writes its own BOS)."""
        return np.asarray(self._engine.encode(text, prepend_bos, chat), dtype=np.int32)

    def to_string(self, tokens: Union[Sequence[int], np.ndarray]) -> str:
        return self._engine.decode(_ids(tokens))

    def to_str_tokens(self, text_or_tokens: Tokens, prepend_bos: bool = True) -> List[str]:
        return list(self._engine.token_strings(self._tokens(text_or_tokens, prepend_bos)))

    def _tokens(self, text_or_tokens: Tokens, prepend_bos: bool = True) -> List[int]:
        if isinstance(text_or_tokens, str):
            return self._engine.encode(text_or_tokens, prepend_bos, False)
        return _ids(text_or_tokens)

    # Forward passes.

    def __call__(self, text_or_tokens: Tokens, prepend_bos: bool = True) -> np.ndarray:
        """The logits, float32 ``[pos, d_vocab]``."""
        return self._run(text_or_tokens, ["logits"], prepend_bos=prepend_bos)[0]["logits"]

    def run_with_cache(
        self,
        text_or_tokens: Tokens,
        names_filter: NamesFilter = None,
        positions: Optional[Sequence[int]] = None,
        prepend_bos: bool = True,
    ) -> Tuple[np.ndarray, ActivationCache]:
        """``(logits, cache)``. ``names_filter``: a hook name (``*`` for every layer), a list of
        names, or a callable on names; only what it selects is computed and kept (``None``: every
        hook, which for long prompts is mostly attention patterns: ``n_layers * n_heads * pos**2``
        floats). ``positions``: record only these query positions (negative count from the end)."""
        return self._with_cache(text_or_tokens, self._select(names_filter), positions, prepend_bos)

    def run_with_interventions(
        self,
        text_or_tokens: Tokens,
        mask_heads: Iterable[Tuple[int, int]] = (),
        mask_mode: str = "uniform",
        add: Optional[Mapping[str, np.ndarray]] = None,
        patch: Optional[Mapping[str, np.ndarray]] = None,
        names_filter: NamesFilter = None,
        positions: Optional[Sequence[int]] = None,
        prepend_bos: bool = True,
        disable_experts: Iterable[Tuple[int, int]] = (),
    ):
        """The engine's interventions, applied in Rust (no Python in the forward pass):
        ``mask_heads=[(layer, head)]`` silenced as ``mask_mode`` says (``"uniform"``: the head
        attends uniformly, as the retrieval-head paper masks; ``"zero"``: its output is zeroed);
        ``add={name: vector}`` adds a ``[row]`` vector at every position; ``patch={name: array}``
        replaces the hook's ``[pos, ...]`` rows (every position of the prompt);
        ``disable_experts=[(layer, expert)]`` keeps those experts of a Mixture-of-Experts layer out
        of every token's choice (their router logits -inf before the top-k; ``mlp.hook_router``
        records them so). Returns the logits, or ``(logits, cache)`` when ``names_filter`` is
        given."""
        logits, cache = self._with_cache(
            text_or_tokens,
            self._select(names_filter) if names_filter is not None else [],
            positions,
            prepend_bos,
            mask_heads=[(int(layer), int(head)) for layer, head in mask_heads],
            mask_mode=mask_mode,
            add=[(_full_name(k), _f32_bytes(v)) for k, v in (add or {}).items()],
            patch=[(_full_name(k), _f32_bytes(v)) for k, v in (patch or {}).items()],
            disable_experts=[(int(layer), int(expert)) for layer, expert in disable_experts],
        )
        return logits if names_filter is None else (logits, cache)

    def _with_cache(self, text_or_tokens: Tokens, names: List[str], positions, prepend_bos: bool, **interventions):
        """The logits and a cache of ``names`` (the logits in it only when named)."""
        arrays, recorded = self._run(text_or_tokens, names + ["logits"], positions=positions, prepend_bos=prepend_bos, **interventions)
        logits = arrays["logits"] if "logits" in names else arrays.pop("logits")
        if "logits" not in names:
            recorded.pop("logits", None)
        return logits, ActivationCache(arrays, recorded)

    def generate(
        self,
        text: str,
        max_new_tokens: int = 64,
        chat: bool = False,
        mask_heads: Iterable[Tuple[int, int]] = (),
        mask_mode: str = "uniform",
        disable_experts: Iterable[Tuple[int, int]] = (),
    ) -> str:
        """Greedy continuation of ``text`` (through the chat template with ``chat``), without
        the prompt; stops at end-of-sequence. ``mask_heads`` are silenced and
        ``disable_experts`` never chosen throughout, as in ``run_with_interventions``."""
        tokens = self._engine.encode(text, True, chat)
        masks = [(int(layer), int(head)) for layer, head in mask_heads]
        experts = [(int(layer), int(expert)) for layer, expert in disable_experts]
        new = self._engine.generate(tokens, int(max_new_tokens), masks, mask_mode, experts)
        return self._engine.decode(new, True)

    def generate_grounded(self, text: str, scores, max_new_tokens: int = 64, chat: bool = False):
        """Greedy continuation of ``text`` with each token's grounding signal from the retrieval
        heads of ``scores`` (a head_scores.json or a detection run's folder), as ``headhunt
        generate --ground`` computes it. Returns ``(text, tokens, answer)``: the generated text,
        a DataFrame with one row per token (``token``, ``str``, ``logprob``, ``support`` = the
        score-weighted share of retrieval heads copying it from the prompt, ``lookback`` = their
        lookback ratio) and a dict with the answer's ``support``, ``lookback`` and
        ``confidence`` (mean log-probability)."""
        import pandas as pd

        tokens = self._engine.encode(text, True, chat)
        rows, (support, lookback, confidence) = self._engine.generate_grounded(tokens, int(max_new_tokens), str(scores))
        frame = pd.DataFrame(
            {
                "token": [r[0] for r in rows],
                "str": [self._engine.decode([r[0]], False) for r in rows],
                "logprob": [r[1] for r in rows],
                "support": [r[2] for r in rows],
                "lookback": [r[3] for r in rows],
            }
        )
        answer = {"support": support, "lookback": lookback, "confidence": confidence}
        return self._engine.decode([r[0] for r in rows], True), frame, answer

    def _select(self, names_filter: NamesFilter) -> List[str]:
        if names_filter is None:
            return self.hook_names()
        if isinstance(names_filter, str):
            return [names_filter]
        if callable(names_filter):
            return [n for n in self.hook_names() if names_filter(n)]
        return [str(n) for n in names_filter]

    def _run(self, text_or_tokens: Tokens, names: List[str], positions=None, prepend_bos=True, **interventions):
        tokens = self._tokens(text_or_tokens, prepend_bos)
        pos = None if positions is None else [int(p) for p in positions]
        arrays: Dict[str, np.ndarray] = {}
        recorded: Dict[str, np.ndarray] = {}
        for name, shape, at, buffer in self._engine.run(tokens, [_full_name(n) for n in names], pos, **interventions):
            arrays[name] = np.frombuffer(buffer, dtype=np.float32).reshape(shape)
            recorded[name] = np.asarray(at, dtype=np.int64)
        return arrays, recorded


def _ids(tokens: Union[Sequence[int], np.ndarray]) -> List[int]:
    array = np.asarray(tokens)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]  # a TransformerLens-style [1, pos] batch of one
    if array.ndim != 1:
        raise ValueError(f"tokens must be one sequence, got shape {array.shape}")
    return [int(t) for t in array]


def _f32_bytes(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype=np.float32).tobytes()
