"""Shared fixtures: models are built once per session, from seeded synthetic weights."""

import subprocess
import sys
from pathlib import Path

import pytest

from compiler.config import load_preset
from compiler.onnx_export import export_onnx
from compiler.partition import partition
from compiler.pipeline import compile_model
from compiler.tokenizer import load_tokenizer
from compiler.weights import synthetic_weights

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny():
    cfg = load_preset("tiny")
    return cfg, synthetic_weights(cfg, seed=0)


@pytest.fixture(scope="session")
def tiny_onnx(tiny):
    cfg, w = tiny
    return export_onnx(cfg, w, external=False)


@pytest.fixture(scope="session")
def tiny_stages(tiny_onnx):
    return partition(tiny_onnx)


@pytest.fixture(scope="session")
def distil():
    cfg = load_preset("distilgpt2")
    return cfg, synthetic_weights(cfg, seed=0)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_build")
    # group "none": every weight streams from flash every token, the method under test;
    # test_board_tokens.py checks resident weights (--group auto) separately
    return compile_model("tiny", out, quiet=True, group="none")


def mcugpt(*args, check=False):
    """Run the command line as a user would; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "mcugpt.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"mcugpt {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc
