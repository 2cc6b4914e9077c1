"""headhunt: find, test and use the attention heads that carry facts through language models.

A hooked CPU engine (GGUF and safetensors, exact f32 or int8 products) with TransformerLens's
names, and the retrieval-head experiments as functions:

    import headhunt
    model = headhunt.HookedModel.from_pretrained("smollm2-135m-instruct")
    logits, cache = model.run_with_cache("The capital of France is", names_filter="blocks.3.attn.hook_pattern")
    run = headhunt.detect(model, lengths=[600, 1200], depths=[0, 50, 100], out="runs/detect")
    run.summary.head(10)

Model work releases the GIL; Ctrl-C stops an experiment between trials (rerun with the same
``out`` to resume). Errors are ``HeadhuntError`` and its subclasses ``ModelLoadError``,
``HookError``, ``RunError``, ``TokenizerError`` and ``UsageError``, with the CLI's messages.
"""

from ._headhunt import HeadhuntError, HookError, ModelLoadError, RunError, TokenizerError, UsageError, __version__
from ._experiments import RunResult, detect, load_run, niah, rerank
from ._model import ActivationCache, HookedModel

__all__ = [
    "ActivationCache",
    "HeadhuntError",
    "HookError",
    "HookedModel",
    "ModelLoadError",
    "RunError",
    "RunResult",
    "TokenizerError",
    "UsageError",
    "__version__",
    "detect",
    "load_run",
    "niah",
    "rerank",
]
