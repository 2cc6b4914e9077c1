"""Shared fixtures: the CLI binary to compare against, the test models (loaded once), scratch
folders. The tests run against the installed wheel (scripts/test.sh builds and installs it)."""

import os
import pathlib
import shutil
import subprocess

import pytest

import headhunt

REPO = pathlib.Path(__file__).resolve().parents[3]

# The tests are of the installed package, not of the sources beside them.
assert "site-packages" in headhunt.__file__, f"headhunt imported from {headhunt.__file__}, not an installed wheel"


@pytest.fixture(scope="session")
def cli() -> str:
    """The `headhunt` binary built from the same tree ($HEADHUNT_BIN, else target/release)."""
    path = os.environ.get("HEADHUNT_BIN") or str(REPO / "target" / "release" / "headhunt")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"no headhunt binary at {path}: build it (cargo build --release) or set HEADHUNT_BIN")
    return path


def run_cli(cli: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([cli, *args], capture_output=True, text=True)
    assert done.returncode == 0, f"headhunt {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="session")
def smollm2() -> headhunt.HookedModel:
    return headhunt.HookedModel.from_pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma() -> headhunt.HookedModel:
    return headhunt.HookedModel.from_pretrained("gemma3-270m")


@pytest.fixture
def scratch(tmp_path: pathlib.Path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
