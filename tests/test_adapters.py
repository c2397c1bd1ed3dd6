"""Adapter files (unicomp.serving.adapters), natural inputs (unicomp.serving.codecs) and the lazy
public API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_train
from unicomp.errors import UnicompError

# Tiny generated ListOps: short expressions, so token inputs with padding and masks are tested.
LISTOPS_ARGS = [
    f"--task-arg={kv}"
    for kv in (
        "source=generate",
        "n_train=64",
        "n_val=16",
        "n_test=16",
        "min_len=5",
        "max_len=40",
        "max_depth=3",
        "max_args=4",
    )
]
MEMORY_ARGS = ["--task-arg=n_strings=2", "--task-arg=n_bits=8", "--task-arg=bits_per_token=4"]


@pytest.fixture(scope="session")
def adapter_runs(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """Three tiny finished FPT runs on one backbone (bit-xor, listops, bit-memory; paper
    policy) and one output-only bit-xor run, each exported to ``<folder>/<name>.safetensors``."""
    from unicomp.serving.adapters import export_adapter

    root = tmp_path_factory.mktemp("adapter-runs")
    runs = {
        "xor": ["--task", "bit-xor"],
        "listops": ["--task", "listops", *LISTOPS_ARGS],
        "memory": ["--task", "bit-memory", *MEMORY_ARGS],
        "xor-output-only": ["--task", "bit-xor", "--freeze", "output-only"],
    }
    out = {}
    for name, args in runs.items():
        cli_train(root / name, *args, "--backbone", tiny_bert)
        export_adapter(root / name, root / "files" / f"{name}.safetensors")
        out[name] = root / name
    out["files"] = root / "files"
    return out


def _xor_inputs(x: torch.Tensor) -> list[list[str]]:
    """The bit-xor task's tokens (+1/-1 per bit) back as pairs of bit strings."""
    bits = ["".join("1" if v > 0 else "0" for v in row[:, 0].tolist()) for row in x]
    return [[b[: len(b) // 2], b[len(b) // 2 :]] for b in bits]


def _listops_inputs(x: torch.Tensor) -> list[str]:
    from unicomp.tasks.listops import detokenize

    return [detokenize(row.tolist()) for row in x]


@pytest.mark.parametrize(
    "name, natural",
    [("xor", _xor_inputs), ("listops", _listops_inputs), ("xor-output-only", _xor_inputs)],
)
def test_adapter_predicts_what_the_run_predicts(adapter_runs, name, natural):
    """The task's test split as natural inputs (bit strings, ListOps text): the codec encodes
    them to the task's own tokens, and the adapter's logits and outputs are the run model's."""
    from unicomp.experiments.fpt import load_fpt_run
    from unicomp.serving.adapters import load_adapter

    model, task, _ = load_fpt_run(adapter_runs[name])
    test = task.split("test")
    adapter = load_adapter(adapter_runs["files"] / f"{name}.safetensors")
    inputs = natural(test.x)
    x, mask = adapter.codec.encode(inputs)
    assert torch.equal(x, test.x)
    assert (mask is None and test.mask is None) or torch.equal(mask, test.mask)
    with torch.no_grad():
        expected = model(test.x, test.mask)
        torch.testing.assert_close(adapter(x, mask), expected)
    outputs = adapter.predict(inputs)
    assert outputs == adapter.codec.decode(expected)
    classes = expected.reshape(len(expected), -1, task.spec.n_classes).argmax(-1)
    if name == "listops":
        assert outputs == classes[:, 0].tolist()
    else:  # bit strings of the predicted bits
        assert outputs == ["".join(map(str, row)) for row in classes.tolist()]


def test_export_holds_the_trained_parameters_alone(adapter_runs):
    from safetensors import safe_open

    path = adapter_runs["files"] / "xor.safetensors"
    metrics = json.loads((adapter_runs["xor"] / "metrics.json").read_text())
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        params = sum(f.get_tensor(k).numel() for k in f.keys())  # noqa: SIM118
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    # The paper's policy: the file is exactly what the run trained, in float32.
    assert params == metrics["trainable_params"] == int(meta["trainable_params"])
    assert dtypes == {torch.float32}
    size = path.stat().st_size
    assert params * 4 <= size <= params * 4 + 8192  # the tensors, plus a header of a few KB
    assert size < (metrics["total_params"] - params) * 4 / 5  # far below the backbone's bytes
    assert meta["task"] == "bit-xor" and meta["freeze"] == "paper"
    assert meta["backbone_hash"].startswith("sha256-2:") and meta["unicomp_version"]
    assert json.loads(meta["spec"])["n_out_tokens"] == 5
    assert "test_accuracy" in json.loads(meta["metrics"])


def test_output_only_adapter_keeps_its_frozen_input_layer(adapter_runs):
    """Output-only trains the head alone, but the input layer (random, frozen) is the task's
    too: the file holds it, or the predictions could not be reproduced."""
    from safetensors import safe_open

    path = adapter_runs["files"] / "xor-output-only.safetensors"
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        trainable = int(f.metadata()["trainable_params"])
    assert {"head.weight", "head.bias", "embed_in.weight"} <= keys
    assert not any(k.startswith("backbone.") for k in keys)
    assert trainable == 32 * 2 + 2  # the head of width 32 -> 2 classes


def test_adapters_share_one_backbone(adapter_runs, tiny_bert):
    """Two adapters on one loaded backbone: the same object, the same weight storage, no
    copy of a backbone parameter in either adapter; predicting leaves the backbone intact."""
    import unicomp
    from unicomp.serving.adapters import load_adapter

    backbone = unicomp.load_backbone(tiny_bert)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    a = load_adapter(adapter_runs["files"] / "xor.safetensors", backbone)
    b = load_adapter(adapter_runs["files"] / "listops.safetensors", backbone)
    assert a.backbone is b.backbone is backbone
    ptrs = {p.data_ptr() for p in backbone.parameters()}
    for adapter in (a, b):
        own = [*adapter.parameters(), *adapter.buffers()]
        assert not ptrs & {t.data_ptr() for t in own}
        assert sum(t.numel() for t in own) < sum(p.numel() for p in backbone.parameters()) / 4
    a.predict([["10101", "00111"]])
    b.predict(["[MAX 1 2 ]", "[SM 3 4 [MIN 5 6 ] ]"])
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_other_backbone_is_refused_naming_both_hashes(adapter_runs, tiny_gpt2):
    from unicomp.backbones.loading import load_backbone
    from unicomp.serving.adapters import backbone_hash, load_adapter, read_adapter

    path = adapter_runs["files"] / "xor.safetensors"
    other = load_backbone(tiny_gpt2)
    with pytest.raises(UnicompError) as err:
        load_adapter(path, other)
    message = str(err.value)
    assert read_adapter(path)[1]["backbone_hash"] in message
    assert backbone_hash(other) in message and "\n" not in message


def test_bad_adapter_files(tmp_path, adapter_runs):
    from unicomp.cli import main
    from unicomp.serving.adapters import load_adapter

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    for path, words in (
        (junk, "cannot read adapter"),
        (tmp_path / "absent.safetensors", "does not exist"),
        (adapter_runs["xor"] / "best.safetensors", "not a unicomp adapter"),
    ):
        with pytest.raises(UnicompError, match=words):
            load_adapter(path)
    assert main(["fpt", "export-adapter", str(tmp_path / "no-run"), "-o", str(junk)]) == 2
    assert junk.read_bytes() == b"not a safetensors file"  # untouched


def test_cli_export_adapter(tmp_path, adapter_runs, capsys):
    from unicomp.cli import main
    from unicomp.serving.adapters import read_adapter

    out = tmp_path / "x.safetensors"
    assert main(["fpt", "export-adapter", str(adapter_runs["memory"]), "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bytes"] == out.stat().st_size and summary["task"] == "bit-memory"
    assert read_adapter(out)[1]["task"] == "bit-memory"
    assert not list(tmp_path.glob(".*.tmp"))


# --- codecs -----------------------------------------------------------------------------------
def test_bit_memory_codec_matches_the_task():
    from unicomp.serving.codecs import codec_for
    from unicomp.tasks.bits import BitMemory

    task = BitMemory(n_strings=3, n_bits=8, bits_per_token=4, n_val=4, n_test=4)
    batch = task.split("val")
    signs = batch.x.reshape(len(batch), -1)
    inputs = [
        ["".join({1.0: "1", -1.0: "0", 0.0: "?"}[v] for v in row[i : i + 8].tolist())
         for i in range(0, 32, 8)]
        for row in signs
    ]  # fmt: skip
    codec = codec_for("bit-memory", {"n_strings": 3, "n_bits": 8, "bits_per_token": 4}, task.spec)
    assert torch.equal(codec.encode(inputs)[0], batch.x)
    with pytest.raises(UnicompError, match="input 1: expected a list of 4 bit strings"):
        codec.encode([inputs[0], inputs[0][:2]])
    with pytest.raises(UnicompError, match=r"input 0: expected a string of 8 .*'\?'"):
        codec.encode([[*inputs[0][:3], "0101x101"]])


def test_image_codecs_tokenise_as_the_tasks_do():
    from unicomp.serving.codecs import codec_for
    from unicomp.tasks import images
    from unicomp.tasks.base import TaskSpec

    gen = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 256, (3, 28, 28), generator=gen, dtype=torch.uint8)
    spec = TaskSpec(max_len=49, d_in=16, d_out=10, n_classes=10)
    mnist = codec_for("mnist", {"tokens": 49}, spec)
    assert torch.equal(mnist.encode(digits.tolist())[0], images.mnist_tokens(digits, 49))
    rgb = torch.randint(0, 256, (2, 32, 32, 3), generator=gen, dtype=torch.uint8)
    cifar = codec_for("cifar10", {}, TaskSpec(max_len=64, d_in=48, d_out=10, n_classes=10))
    assert torch.equal(cifar.encode(rgb.numpy())[0], images.cifar_tokens(rgb))
    assert cifar.decode(torch.eye(10)[[3, 9]]) == ["cat", "truck"]
    with pytest.raises(UnicompError, match=r"input 0: expected shape \[28, 28\], got \[28, 27\]"):
        mnist.encode([digits[0, :, :27].tolist()])
    with pytest.raises(UnicompError, match="input 0: pixel values must lie in 0-255"):
        mnist.encode([(digits[0].int() + 300).tolist()])
    with pytest.raises(UnicompError, match="input 0: expected an array of numbers"):
        mnist.encode([["a"] * 28])


def test_protein_codec():
    from unicomp.data.proteins import N_FOLDS
    from unicomp.serving.codecs import codec_for
    from unicomp.tasks.base import TaskSpec
    from unicomp.tasks.proteins import VOCAB, encode

    spec = TaskSpec(max_len=10, d_out=N_FOLDS, n_classes=N_FOLDS, vocab_size=len(VOCAB))
    codec = codec_for("remote-homology", {}, spec)
    x, mask = codec.encode(["MKTAY", "ACD"])
    assert x[0].tolist() == encode("MKTAY", "t").tolist() and mask.sum(1).tolist() == [5, 3]
    with pytest.raises(UnicompError, match="input 0: .*'J' at residue 2"):
        codec.encode(["MJ"])
    with pytest.raises(UnicompError, match="input 0: 11 tokens; this model takes at most 10"):
        codec.encode(["A" * 11])


def test_task_without_a_codec_is_named():
    from unicomp.serving.codecs import codec_for
    from unicomp.tasks.base import TaskSpec

    with pytest.raises(UnicompError, match="digits-inpaint.*no natural input form"):
        codec_for("digits-inpaint", {}, TaskSpec(max_len=64, d_out=17, n_classes=17, d_in=2))


def _same_weights_other_activation(tiny_bert: str, tmp_path: Path) -> str:
    """A copy of the tiny BERT folder whose config computes another function (gelu -> relu)
    with the very same weight files."""
    import shutil

    other = tmp_path / "tiny-bert-relu"
    shutil.copytree(tiny_bert, other)
    config = json.loads((other / "config.json").read_text())
    assert config["hidden_act"] == "gelu"
    config["hidden_act"] = "relu"
    (other / "config.json").write_text(json.dumps(config))
    return str(other)


def test_a_backbone_with_the_same_weights_but_another_config_is_refused(
    adapter_runs, tiny_bert, tmp_path
):
    from unicomp.backbones.loading import load_backbone
    from unicomp.serving.adapters import load_adapter

    other = load_backbone(_same_weights_other_activation(tiny_bert, tmp_path))
    same = load_backbone(tiny_bert)
    weights = {k: v for k, v in same.state_dict().items()}
    assert all(torch.equal(v, weights[k]) for k, v in other.state_dict().items())
    x = torch.randn(1, 4, 32)
    with torch.no_grad():  # the two compute different features from the same weights
        assert not torch.allclose(same(x, None), other(x, None))
    path = adapter_runs["files"] / "xor.safetensors"
    load_adapter(path, same)
    with pytest.raises(UnicompError, match="was trained on backbone"):
        load_adapter(path, other)


def test_an_adapter_with_a_weights_only_hash_still_loads(adapter_runs, tiny_bert, tmp_path):
    """Files written before the config entered the hash record ``sha256:`` over the weights."""
    from safetensors.torch import load_file, save_file

    from unicomp.backbones.loading import load_backbone
    from unicomp.features import tensor_digest
    from unicomp.serving.adapters import load_adapter, read_adapter

    path = adapter_runs["files"] / "xor.safetensors"
    backbone = load_backbone(tiny_bert)
    old = f"sha256:{tensor_digest(sorted(backbone.named_parameters(), key=lambda i: i[0]))}"
    header = dict(read_adapter(path)[1])
    header["backbone_hash"] = old
    legacy = tmp_path / "legacy.safetensors"
    save_file(load_file(str(path)), str(legacy), metadata=header)
    assert read_adapter(legacy)[1]["backbone_hash"] == old
    load_adapter(legacy, backbone)
    other = load_backbone(_same_weights_other_activation(tiny_bert, tmp_path))
    load_adapter(legacy, other)  # weights alone cannot tell these two apart, as before


def test_the_feature_cache_key_covers_config_and_versions(tiny_bert, tmp_path):
    import unicomp.features as features
    from unicomp.backbones.loading import load_backbone

    same = features.backbone_config_text(load_backbone(tiny_bert))
    other = features.backbone_config_text(
        load_backbone(_same_weights_other_activation(tiny_bert, tmp_path))
    )
    assert same and other and same != other
    assert '"relu"' in other and "_name_or_path" not in same
    assert set(features.library_versions()) == {"torch", "transformers", "unicomp"}


def test_an_adapter_file_truncated_in_place_after_loading_does_not_touch_the_model(
    adapter_runs, tmp_path
):
    """A loaded adapter holds its own copy of the tensors: a writer truncating or rewriting the
    file in place (``cp smaller x``, ``head -c``) cannot reach it (a memory-mapped file would
    end the process with SIGBUS on the next access)."""
    import shutil

    from unicomp.serving.adapters import load_adapter

    path = tmp_path / "xor.safetensors"
    shutil.copy(adapter_runs["files"] / "xor.safetensors", path)
    adapter = load_adapter(path)
    before = adapter.predict([["10101", "00111"]])
    with open(path, "r+b") as f:
        f.truncate(1000)
    assert adapter.predict([["10101", "00111"]]) == before
    path.write_bytes(b"\0" * 5000)
    assert adapter.predict([["10101", "00111"]]) == before
    with pytest.raises(UnicompError, match="cannot read adapter"):
        load_adapter(path)


def _edited(adapter_runs, tmp_path, header=None, tensors=None) -> Path:
    """The bit-XOR adapter with header fields or tensors replaced (weights and hash kept)."""
    from safetensors.torch import save_file

    from unicomp.serving.adapters import read_adapter

    t, meta = read_adapter(adapter_runs["files"] / "xor.safetensors")
    meta = {k: v for k, v in {**meta, **(header or {})}.items() if v is not None}
    path = tmp_path / "edited.safetensors"
    save_file({**t, **(tensors or {})}, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"header": {"metrics": "{"}}, "header field 'metrics' is not JSON"),
        ({"header": {"freeze": None}}, "header field 'freeze' is missing"),
        ({"header": {"readout": "middle"}}, "readout 'middle' is not one of"),
        ({"header": {"backbone_seed": "-1"}}, "header field 'backbone_seed' is '-1'"),
        ({"spec": {"max_len": 10_000_000}}, "spec.max_len 10,000,000 is above the 65,536"),
        ({"spec": {"n_classes": 1_000_000_000, "d_out": 1_000_000_000}},
         "tensor head.weight has shape (2, 32), its spec needs (1000000000, 32)"),
        ({"spec": {"vocab_size": 4_000_000}}, "tensor embed_in.weight has shape"),
        ({"spec": {"max_len": 0}}, "spec.max_len is 0, not a positive integer"),
        ({"nan_head": True}, "tensor head.weight holds NaN"),
        ({"float64": True}, "tensor head.weight is torch.float64, adapters hold float32"),
    ],
)  # fmt: skip
def test_an_adapter_header_or_tensor_that_lies_is_refused_before_anything_is_built(
    adapter_runs, tmp_path, edit, message
):
    from unicomp.serving.adapters import load_adapter, read_adapter

    t, meta = read_adapter(adapter_runs["files"] / "xor.safetensors")
    header = dict(edit.get("header", {}))
    if "spec" in edit:
        header["spec"] = json.dumps({**json.loads(meta["spec"]), **edit["spec"]})
    tensors = {}
    if edit.get("nan_head"):
        tensors["head.weight"] = torch.full_like(t["head.weight"], float("nan"))
    if edit.get("float64"):
        tensors["head.weight"] = t["head.weight"].double()
    path = _edited(adapter_runs, tmp_path, header, tensors)
    with pytest.raises(UnicompError, match=re.escape(message)) as err:
        load_adapter(path)
    assert "\n" not in str(err.value)


def test_an_adapter_runs_where_it_is_put_with_its_shared_backbone(adapter_runs, tiny_bert):
    """``load_adapter(..., device=)`` and ``adapter.to()`` move the shared backbone too (no
    submodule of the adapter, it stayed on the CPU before), and ``predict`` moves its inputs
    to the adapter's device. The meta device stands in for a GPU."""
    import unicomp
    from unicomp.serving.adapters import load_adapter

    inputs = ["[MAX 1 2 ]", "[SM 3 4 [MIN 5 6 ] ]"]
    path = adapter_runs["files"] / "listops.safetensors"
    on_cpu = load_adapter(path, device="cpu")
    assert on_cpu.device == torch.device("cpu") and len(on_cpu.predict(inputs)) == 2
    backbone = unicomp.load_backbone(tiny_bert)
    adapter = load_adapter(path, backbone, device="meta")
    meta = torch.device("meta")
    everything = [*backbone.parameters(), *backbone.buffers(), *adapter.parameters(),
                  *adapter.buffers()]  # fmt: skip
    assert adapter.backbone is backbone and all(t.device == meta for t in everything)
    seen = []

    def forward(x, mask=None):
        seen.append((x.device, mask.device))
        return torch.zeros(len(x), adapter.fpt.spec.d_out)  # decoded on the host

    adapter.fpt.forward = forward
    adapter.predict(inputs)
    assert seen == [(meta, meta)]


def test_serve_puts_the_backbone_and_adapters_on_its_device(adapter_runs, tiny_bert, tmp_path):
    pytest.importorskip("fastapi")
    import shutil

    from unicomp.serving.serve import ServeConfig, Server

    shutil.copy(adapter_runs["files"] / "xor.safetensors", tmp_path / "xor.safetensors")
    server = Server(ServeConfig(backbone=tiny_bert, adapters=tmp_path, device="cpu"))
    server.scan_now()
    assert server.describe()["backbone"]["device"] == "cpu"
    assert server.tasks["xor"].adapter.device == torch.device("cpu")
    assert server.tasks["xor"].adapter.predict([["10101", "00111"]])
    server.executor.shutdown()
