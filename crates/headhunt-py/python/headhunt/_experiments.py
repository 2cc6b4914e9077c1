"""The experiments: ``detect`` and ``niah`` run the CLI's own code in this process (the GIL
released, Ctrl-C stopping between trials, resumable), ``load_run`` reads any run folder the CLI
wrote. Results are pandas DataFrames when pandas is installed, plain lists of records without."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import pathlib
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _headhunt

PathLike = Union[str, "os.PathLike[str]"]


def _frame(records: List[Dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:
        return records
    return pd.DataFrame.from_records(records)


def _read_json(path: pathlib.Path) -> Optional[Any]:
    return json.loads(path.read_text()) if path.exists() else None


class RunResult:
    """A run folder: its settings, trials and aggregates.

    - ``head_scores``: ``{"L-H": [score per answered trial]}`` (the retrieval-head paper's format;
      detection runs);
    - ``summary``: heads ranked by mean score (a DataFrame with ``head`` ("L-H"), ``layer``,
      ``index``, ``mean``, ``active_share``; detection runs), or the run's summary as a dict;
    - ``trials``: one row per trial (settings, answer, ROUGE-1, ...; the per-head arrays left out,
      see ``trial_records``);
    - ``settings``, ``path``.
    """

    def __init__(self, path: PathLike):
        self.path = pathlib.Path(path)
        settings = _read_json(self.path / "run.json")
        if settings is None:
            raise _headhunt.HeadhuntError(f"{self.path} is not a headhunt run folder (no run.json)")
        self.settings: Dict[str, Any] = settings
        self.head_scores: Optional[Dict[str, List[float]]] = _read_json(self.path / "head_scores.json")
        self.summary_json: Optional[Dict[str, Any]] = _read_json(self.path / "summary.json")

    def trial_records(self) -> List[Dict[str, Any]]:
        """Every record of ``trials.jsonl``, whole (complete lines only)."""
        path = self.path / "trials.jsonl"
        if not path.exists():
            return []
        text = path.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]

    @property
    def trials(self):
        heavy = {"scores", "scores_per_step", "argmax", "generated"}
        return _frame([{k: v for k, v in r.items() if k not in heavy} for r in self.trial_records()])

    @property
    def summary(self):
        ranking = ((self.summary_json or {}).get("summary") or {}).get("ranking")
        if ranking is None:
            return self.summary_json
        return _frame(ranking)

    def __repr__(self) -> str:
        return f"RunResult({str(self.path)!r}: {self.settings.get('command')}, {len(self.trial_records())} trials)"


def load_run(path: PathLike) -> RunResult:
    """Read a run folder written by the CLI or by this package."""
    return RunResult(path)


def _grid_args(needles, haystack, lengths, depths, extra: Dict[str, Any]) -> List[str]:
    args: List[str] = []

    def values(v) -> str:
        return v if isinstance(v, str) else ",".join(str(x) for x in v)

    if needles is not None:
        args += ["--needles", os.fspath(needles)]
    if haystack is not None:
        args += ["--haystack", os.fspath(haystack)]
    if lengths is not None:
        args += ["--lengths", values(lengths)]
    if depths is not None:
        args += ["--depths", values(depths)]
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, values(value) if isinstance(value, (list, tuple)) else str(value)]
    return args


def _model_args(model) -> List[str]:
    from ._model import HookedModel

    if isinstance(model, HookedModel):
        return ["--model", model.name, "--precision", str(model.cfg["precision"])]
    return ["--model", os.fspath(model)]


@contextlib.contextmanager
def _stdout_unless(verbose: bool):
    """The command's printed tables go to /dev/null unless ``verbose`` (the result object holds
    them); stderr (progress bars on a terminal, notes) stays."""
    if verbose:
        yield
        return
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _run(argv: List[str], verbose: bool) -> None:
    with _stdout_unless(verbose):
        _headhunt.run_command(argv)


def _out(out: Optional[PathLike], command: str) -> pathlib.Path:
    return pathlib.Path(out) if out is not None else pathlib.Path(tempfile.mkdtemp(prefix=f"headhunt-{command}-"))


def detect(
    model,
    needles: Optional[PathLike] = None,
    haystack: Optional[PathLike] = None,
    lengths: Union[None, str, Sequence[int]] = None,
    depths: Union[None, str, Sequence[float]] = None,
    out: Optional[PathLike] = None,
    verbose: bool = False,
    **options: Any,
) -> RunResult:
    """Find retrieval heads (``headhunt detect``): a needle-in-a-haystack grid over ``lengths``
    (tokens) and ``depths`` (percent), scoring every head by how much of the answer it copied.
    ``model``: a ``HookedModel`` or a model id or path. ``out``: the run folder (resumable; a
    temporary folder when omitted). Further CLI options as keywords (``per_cell=2``,
    ``score_variant="per-step"``, ``no_prefix_cache=True``). ``verbose`` keeps the
    CLI's printed table."""
    folder = _out(out, "detect")
    _run(["detect", *_model_args(model), *_grid_args(needles, haystack, lengths, depths, options), "--out", str(folder)], verbose)
    return RunResult(folder)


def niah(
    model,
    scores: Optional[PathLike] = None,
    mask_top: Optional[int] = None,
    mask_random: Optional[int] = None,
    mask_heads: Optional[Sequence[Sequence[int]]] = None,
    needles: Optional[PathLike] = None,
    haystack: Optional[PathLike] = None,
    lengths: Union[None, str, Sequence[int]] = None,
    depths: Union[None, str, Sequence[float]] = None,
    out: Optional[PathLike] = None,
    verbose: bool = False,
    **options: Any,
) -> RunResult:
    """The needle-in-a-haystack grid with heads masked (``headhunt niah``): ``mask_top=K`` or
    ``mask_random=K`` heads from ``scores`` (a detection run's folder or ``head_scores.json``, or a
    ``RunResult``), or ``mask_heads=[(layer, head), ...]``. Further CLI options as keywords
    (``mask_mode="zero"``, ``mask_phase="decode"``, ``seed=1``)."""
    args = ["niah", *_model_args(model)]
    if scores is not None:
        args += ["--scores", str(scores.path if isinstance(scores, RunResult) else os.fspath(scores))]
    if mask_top is not None:
        args += ["--mask-top", str(mask_top)]
    if mask_random is not None:
        args += ["--mask-random", str(mask_random)]
    if mask_heads:
        args += ["--mask-heads", ",".join(f"{layer}-{head}" for layer, head in mask_heads)]
    folder = _out(out, "niah")
    _run([*args, *_grid_args(needles, haystack, lengths, depths, options), "--out", str(folder)], verbose)
    return RunResult(folder)


def rerank(
    model,
    question: str,
    docs: Sequence[str],
    heads: Union[None, PathLike, "RunResult", Sequence[Sequence[int]]] = None,
    top: Optional[int] = None,
    chat: bool = True,
) -> List[Dict[str, Any]]:
    """Rank ``docs`` for ``question`` by the attention the question pays them, less that of the
    content-free question "N/A" (ICR; QRRetriever with query-focused heads), as ``headhunt
    rerank`` does: two passes over the question, one over the documents, whatever their number.

    ``heads``: None for every head (ICR), ``[(layer, head), ...]``, or a score file / detection
    run (Wu's or QRHead's) whose ``top`` best heads are used (default 16). Returns one dict per
    document, best first: ``{"index", "score", "text"}``."""
    chosen: Optional[List[tuple]] = None
    if isinstance(heads, RunResult) or isinstance(heads, (str, os.PathLike)):
        run_path = heads.path if isinstance(heads, RunResult) else pathlib.Path(os.fspath(heads))
        scores_file = run_path / "head_scores.json" if run_path.is_dir() else run_path
        scores = json.loads(scores_file.read_text())
        ranked = sorted(scores.items(), key=lambda kv: -sum(kv[1]) / max(len(kv[1]), 1))
        chosen = [tuple(int(x) for x in label.split("-")) for label, _ in ranked[: top or 16]]
    elif heads is not None:
        chosen = [(int(layer), int(head)) for layer, head in heads]
    values = model._engine.rerank(question, list(docs), chosen, chat)
    order = sorted(range(len(values)), key=lambda i: -values[i])
    return [{"index": i, "score": values[i], "text": docs[i]} for i in order]
