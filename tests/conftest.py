"""Shared fixtures: tiny backbones saved as local folders (no network, seconds to train)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # property tests: the same examples on every CI run; HYPOTHESIS_PROFILE=explore varies them
    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, deadline=None)
    settings.register_profile("explore", deadline=None, max_examples=500)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:
    pass


def _save_random(tmp_path_factory, name: str, model_class: str, config) -> str:
    """Save a transformers model with seeded random weights; return its folder."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 2-layer, width-32 GPT-2 saved with random weights, loadable as a local folder."""
    from transformers import GPT2Config

    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=128,
        vocab_size=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _save_random(tmp_path_factory, "tiny-gpt2", "GPT2Model", cfg)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama (rotary positions, RMSNorm) like SmolLM2, as a local folder."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=256,
    )
    return _save_random(tmp_path_factory, "tiny-llama", "LlamaModel", cfg)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT encoder with a 16-row position table, as a local folder."""
    from transformers import BertConfig

    cfg = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=16,
    )
    return _save_random(tmp_path_factory, "tiny-bert", "BertModel", cfg)


def small_train(**overrides):
    from unicomp.config import TrainConfig

    base = {
        "steps": 6,
        "batch_size": 8,
        "eval_every": 3,
        "eval_batch_size": 64,
        "progress": False,
        "precision": "fp32",
    }
    return TrainConfig(**{**base, **overrides})


def cli_train(out, *args: str) -> dict:
    """``unicomp fpt train ARGS --out OUT`` for two steps of four examples; its metrics.json."""
    import json

    from unicomp.cli import main

    budget = ["--steps", "2", "--eval-every", "2", "--batch-size", "4", "--no-progress"]
    assert main(["fpt", "train", *args, *budget, "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def run_cli(
    *args: str, env: dict | None = None, cwd=None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m unicomp ARGS`` in a fresh process (in ``cwd``), ``env`` added to this one's
    environment; stdout and stderr captured (stderr a pipe, as in a log file)."""
    return subprocess.run(
        [sys.executable, "-m", "unicomp", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
