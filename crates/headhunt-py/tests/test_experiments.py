"""The experiments from Python write what the CLI writes."""

import json

import pandas as pd

import headhunt
from conftest import REPO, run_cli

GRID = {"lengths": [160, 240], "depths": [0, 50, 100]}


def test_detect_equals_the_cli(smollm2, cli, scratch):
    run_cli(cli, "detect", "--model", "smollm2-135m-instruct", "--lengths", "160,240", "--depths", "0,50,100", "--out", str(scratch / "cli"))
    run = headhunt.detect(smollm2, **GRID, out=scratch / "py")
    expected = json.loads((scratch / "cli" / "head_scores.json").read_text())
    assert run.head_scores == expected
    assert (scratch / "py" / "head_scores.json").read_bytes() == (scratch / "cli" / "head_scores.json").read_bytes()
    # DataFrames: one row per trial, heads ranked.
    assert isinstance(run.trials, pd.DataFrame) and len(run.trials) == 6
    assert {"needle", "length", "depth", "answer", "rouge1"} <= set(run.trials.columns)
    summary = run.summary
    assert list(summary["mean"]) == sorted(summary["mean"], reverse=True)
    top = summary.iloc[0]
    assert top["head"] == f"{top['layer']}-{top['index']}"
    # The paper's format: a score list per head, one entry per answered trial.
    answered = int((run.trials["rouge1"] > 50).sum())
    assert all(len(v) == answered for v in run.head_scores.values())
    # load_run reads the CLI's folder the same way.
    again = headhunt.load_run(scratch / "cli")
    assert again.head_scores == run.head_scores
    assert again.trials.drop(columns="seconds").equals(run.trials.drop(columns="seconds"))


def test_niah_masks_from_a_detect_run(smollm2, scratch):
    detect = headhunt.detect(smollm2, **GRID, out=scratch / "detect")
    masked = headhunt.niah(smollm2, scores=detect, mask_top=20, **GRID, out=scratch / "niah")
    assert masked.settings["command"] == "niah"
    assert len(masked.trials) == 6
    # The strongest heads masked: the answers get worse (the K sweep of the README).
    assert masked.trials["rouge1"].mean() < detect.trials["rouge1"].mean()


def test_rerank_ranks_as_the_cli_does(smollm2, cli, scratch):
    docs = [
        "The lighthouse keeper of Port Avel logs the tides every morning at six.",
        "Marta Quell invented the copper kettle whistle in 1871, in a workshop in Lisbon.",
        "The orchard behind the mill grows pears, plums and a single old fig tree.",
        "Trains to the coast leave the central station every forty minutes.",
    ]
    question = "Who invented the copper kettle whistle?"
    item = {"question": question, "documents": [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)], "gold": ["d1"]}
    (scratch / "q.jsonl").write_text(json.dumps(item) + "\n")
    run_cli(cli, "rerank", "--model", "smollm2-135m-instruct", "--data", str(scratch / "q.jsonl"), "--heads", "3", "--out", str(scratch / "cli"))
    record = json.loads((scratch / "cli" / "trials.jsonl").read_text().splitlines()[0])
    ranked = headhunt.rerank(smollm2, question, docs)
    assert [r["index"] for r in ranked] == record["rankings"]["icr (all heads)"]
    assert ranked[0]["index"] == 1 and ranked[0]["text"] == docs[1]
    # A head list: the same heads as the CLI's random draw give its ranking.
    heads = [tuple(int(x) for x in h.split("-")) for h in json.loads((scratch / "cli" / "run.json").read_text())["methods"][-1]["heads"]]
    assert [r["index"] for r in headhunt.rerank(smollm2, question, docs, heads=heads)] == record["rankings"]["random 3 heads"]


def test_the_example_notebook_runs(scratch):
    import nbclient
    import nbformat

    notebook = nbformat.read(REPO / "examples" / "retrieval_heads.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(scratch)}})
    client.execute()  # raises CellExecutionError when a cell fails
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs), "no figure drawn"
