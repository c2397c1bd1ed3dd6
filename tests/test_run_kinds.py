"""A run knows its kind: config.yaml records it (first), folders written before that are
recognised from their fields in one place (unicomp.config.recorded_kind), and one table
(unicomp.experiments.kinds.KINDS) holds what differs between the kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unicomp.config import (
    DTConfig,
    FPTConfig,
    PerceiverConfig,
    from_dict,
    load_yaml,
    recorded_kind,
    save_yaml,
)
from unicomp.errors import UnicompError
from unicomp.experiments.kinds import KINDS, folder_kind, kind_of_config, run_kind
from unicomp.runs import run_settings

REPO = Path(__file__).resolve().parents[1]


def test_each_config_class_names_its_row_of_the_table():
    for cls in (FPTConfig, PerceiverConfig, DTConfig):
        assert KINDS[cls.kind].config is cls and kind_of_config(cls()).name == cls.kind
    assert {k.name for k in KINDS.values() if k.config is None} == {"external", "ts-baseline"}


def test_config_yaml_records_the_kind_first_and_reads_back(tmp_path):
    path = tmp_path / "config.yaml"
    save_yaml(DTConfig(data="d"), path)
    assert path.read_text().startswith("kind: dt\n")
    assert from_dict(DTConfig, load_yaml(path)) == DTConfig(data="d")
    with pytest.raises(UnicompError, match="kind 'dt': the config of another family"):
        from_dict(PerceiverConfig, {"kind": "dt"}, "config file x")


def test_folders_without_a_kind_are_recognised_from_their_fields(tmp_path):
    old = {
        "dt": {"data": "d", "algo": "bc", "backbone": "minilm-l6", "freeze": "full"},
        "fpt": {"task": "bit-xor", "backbone": "minilm-l6", "freeze": "paper"},
        "perceiver": {"task": "bit-xor", "model": "perceiver-io", "num_latents": 8},
        "ts-baseline": {"method": "naive", "task": "forecast", "seed": 0},
    }
    for kind, config in old.items():
        assert recorded_kind(config) == kind
        folder = tmp_path / kind
        folder.mkdir()
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        assert run_kind(folder) == kind
    external = tmp_path / "cql"  # another program's run: a metrics.json only
    external.mkdir()
    (external / "metrics.json").write_text(json.dumps({"task": "offline-rl", "algo": "cql"}))
    assert folder_kind(external) is KINDS["external"]
    assert recorded_kind({"lr": 3}) is None and folder_kind(tmp_path) is None


def test_every_committed_record_is_of_a_kind():
    folders = {p.parent for p in (REPO / "results").rglob("metrics.json")}
    assert folders
    assert all(folder_kind(f) is not None for f in folders)


def test_the_kind_is_not_a_setting_that_tells_runs_apart(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
    cfg = FPTConfig(task="bit-xor")
    save_yaml(cfg, new / "config.yaml")
    data = load_yaml(new / "config.yaml")
    del data["kind"]
    (old / "config.yaml").write_text(yaml.safe_dump(data))
    assert run_settings(old) == run_settings(new) and "kind" not in run_settings(new)


def test_summary_fields_come_from_the_table():
    fpt = KINDS["fpt"].summary_of({"task": "t", "test_accuracy": None, "test_rmse": 1.0, "x": 2})
    assert fpt == {"task": "t", "test_accuracy": None, "test_rmse": 1.0}
    dt = KINDS["dt"].summary_of({"env": "E", "eval": [{"return_mean": 1.0, "seed": 3}]})
    assert dt == {"env": "E", "eval": [{"return_mean": 1.0}]}
