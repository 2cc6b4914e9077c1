"""Check examples/kubernetes: each file parses as Kubernetes objects, the detection Job is an
Indexed Job whose `completions`, `parallelism` and `--shards` agree and whose pods run
`headhunt detect --shard=auto`, and the merge Job expects as many shards and reads the same run
folder from the same volume claim. (No cluster is reachable here, so this is what can be checked.)

    python3 tests/kubernetes/check_examples.py
"""

import pathlib
import sys

import yaml

root = pathlib.Path(__file__).resolve().parents[2] / "examples" / "kubernetes"


def load(name):
    docs = [d for d in yaml.safe_load_all((root / name).read_text()) if d]
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), f"{name}: incomplete object {d}"
    return docs


def flag(command, name):
    for i, word in enumerate(command):
        if word == name:
            return command[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


detect_docs = load("detect-job.yaml")
claims = {d["metadata"]["name"] for d in detect_docs if d["kind"] == "PersistentVolumeClaim"}
job = next(d for d in detect_docs if d["kind"] == "Job")
spec = job["spec"]
assert spec["completionMode"] == "Indexed", "the detection Job must be Indexed"
pod = spec["template"]["spec"]
command = pod["containers"][0]["command"]
assert command[:2] == ["headhunt", "detect"], command
assert flag(command, "--shard") == "auto", command
shards = int(flag(command, "--shards"))
assert shards == spec["completions"] == spec["parallelism"], (shards, spec["completions"], spec["parallelism"])
out = flag(command, "--out")

(merge,) = load("merge-job.yaml")
merge_command = merge["spec"]["template"]["spec"]["containers"][0]["command"]
assert merge_command[:3] == ["headhunt", "merge", out], (merge_command, out)
assert int(flag(merge_command, "--expect")) == shards, merge_command
for p in (pod, merge["spec"]["template"]["spec"]):
    used = {v["persistentVolumeClaim"]["claimName"] for v in p["volumes"]}
    assert used <= claims, f"volume claims {used} not among {claims}"

print(f"examples/kubernetes: an Indexed Job of {shards} shards into {out}, and its merge: consistent")
sys.exit(0)
