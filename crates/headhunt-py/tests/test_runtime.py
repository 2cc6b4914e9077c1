"""Errors, threads, memory and Ctrl-C: what a notebook user meets besides the numbers."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import headhunt

LONG_TEXT = " ".join(f"Sentence {i} of a long haystack about harbours, anchors and keys." for i in range(400))


def test_each_exception_class(smollm2, scratch):
    assert issubclass(headhunt.ModelLoadError, headhunt.HeadhuntError)
    assert issubclass(headhunt.HookError, headhunt.HeadhuntError)
    assert issubclass(headhunt.RunError, headhunt.HeadhuntError)
    with pytest.raises(headhunt.ModelLoadError, match="no-such-model"):
        headhunt.HookedModel.from_pretrained("no-such-model.gguf")
    garbage = scratch / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(headhunt.ModelLoadError, match="not a valid GGUF"):
        headhunt.HookedModel.from_pretrained(str(garbage))
    with pytest.raises(headhunt.HeadhuntError, match="precision"):
        headhunt.HookedModel.from_pretrained("smollm2-135m-instruct", precision="half")
    with pytest.raises(headhunt.HookError, match="unknown hook point"):
        smollm2.run_with_cache("Hi", names_filter="blocks.0.hook_nonsense")
    with pytest.raises(headhunt.HookError, match="30 layers"):
        smollm2.run_with_cache("Hi", names_filter="blocks.30.hook_resid_post")
    with pytest.raises(headhunt.HookError, match="outside the prompt"):
        smollm2.run_with_cache("Hi", names_filter="logits", positions=[50])
    with pytest.raises(headhunt.HookError, match="not in the model"):
        smollm2.run_with_interventions("Hi", mask_heads=[(0, 9)])
    with pytest.raises(headhunt.HookError, match="vector of 3 values"):
        smollm2.run_with_interventions("Hi", add={"blocks.0.hook_resid_post": [1.0, 2.0, 3.0]})
    with pytest.raises(headhunt.HookError, match="outside the vocabulary"):
        smollm2([0, 10**6])
    with pytest.raises(headhunt.UsageError, match="--per-cell"):
        headhunt.detect(smollm2, per_cell="many", out=scratch / "bad")
    with pytest.raises(headhunt.HeadhuntError, match="--lengths: `x` is not a number"):
        headhunt.detect(smollm2, lengths="x", out=scratch / "bad")
    with pytest.raises(headhunt.HeadhuntError, match="not a headhunt run folder"):
        headhunt.load_run(scratch)


def test_other_threads_run_during_a_forward(smollm2):
    tokens = smollm2.to_tokens(LONG_TEXT)[:3000]
    ticks = []
    done = threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    start = time.perf_counter()
    t = threading.Thread(target=count)
    t.start()
    smollm2(tokens)
    end = time.perf_counter()
    done.set()
    t.join()
    during = [x for x in ticks if start + 0.1 < x < end - 0.1]
    # With the GIL held for the whole forward the thread would not tick at all in between.
    assert end - start > 0.5, "the forward was too short to tell"
    assert len(during) > 0.25 * (end - start - 0.2) / 0.001 * 0.2, f"{len(during)} ticks in {end - start:.2f} s"


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import headhunt
    model = headhunt.HookedModel.from_pretrained("smollm2-135m-instruct")
    tokens = model.to_tokens(sys.argv[2])[:4000]
    logits, cache = model.run_with_cache(tokens, names_filter=sys.argv[1].split(","))
    print(json.dumps({"tokens": len(tokens), "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "bytes": sum(a.nbytes for a in cache.values())}))
    """
)


def test_names_filter_computes_only_what_it_selects(smollm2):
    """A 4,000-token prompt with one layer's pattern hooked: peak memory near that pattern's size
    above a run with no hook, far below every layer's patterns."""
    text = LONG_TEXT * 2

    def peak(names: str):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, names, text], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    none = peak("logits")
    one = peak("logits,blocks.5.attn.hook_pattern")
    n = one["tokens"]
    assert n == 4000
    c = smollm2.cfg
    one_pattern = c["n_heads"] * n * n * 4
    all_patterns = c["n_layers"] * one_pattern
    logits = n * c["d_vocab"] * 4
    assert one["bytes"] == one_pattern + logits
    extra = (one["peak_kib"] - none["peak_kib"]) * 1024
    print(f"peak {none['peak_kib'] / 1024:.0f} MiB with the logits only, {one['peak_kib'] / 1024:.0f} MiB with one "
          f"layer's pattern too ({one_pattern / 2**20:.0f} MiB); every layer's patterns would be {all_patterns / 2**30:.1f} GiB")
    # The pattern, the engine's rows it was copied from and the layer's scores while it runs:
    # a few times one layer's pattern, a fraction of every layer's.
    assert extra < 3 * one_pattern, f"{extra / 2**20:.0f} MiB above the run without it"
    assert one["peak_kib"] * 1024 < all_patterns / 5


INTERRUPT_SCRIPT = textwrap.dedent(
    """
    import sys
    import headhunt
    try:
        headhunt.detect("smollm2-135m-instruct", lengths=[300, 400, 500], depths=[0, 25, 50, 75, 100], out=sys.argv[1])
    except KeyboardInterrupt as e:
        print("interrupted:", e, flush=True)
        sys.exit(0)
    print("finished", flush=True)
    """
)


def test_ctrl_c_stops_between_trials_and_the_run_resumes(scratch):
    out = scratch / "run"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPT_SCRIPT, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trials = out / "trials.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (trials.exists() and trials.read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0 and stdout.startswith("interrupted:"), f"{stdout}\n{stderr}"
    done = trials.read_text()
    assert done.endswith("\n"), "a record was cut off"
    n = done.count("\n")
    assert 2 <= n < 15
    run = headhunt.detect("smollm2-135m-instruct", lengths=[300, 400, 500], depths=[0, 25, 50, 75, 100], out=out)
    keys = [(r["needle"], r["length"], r["depth"]) for r in run.trial_records()]
    assert len(keys) == 15 and len(set(keys)) == 15
