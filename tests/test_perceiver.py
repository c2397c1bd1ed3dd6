"""Perceiver IO: shapes, masking, equivalence with transformers, pretrained loading, the CLI,
the latent-size search and the dense digits task. Tiny sizes; each test takes seconds."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import small_train
from unicomp.cli import main
from unicomp.errors import UnicompError, WeightsNotFoundError
from unicomp.models.perceiver_io import PerceiverIO, PerceiverIOArch, fourier_features
from unicomp.models.perceiver_pretrained import (
    arch_from_config,
    copy_from_transformers,
    parameter_names,
    pretrained_perceiver,
)
from unicomp.tasks.base import TaskSpec

TINY = {"num_latents": 4, "d_latent": 16, "num_blocks": 2, "self_attends_per_block": 1}
SEQ = TaskSpec(max_len=6, d_in=3, d_out=4, n_classes=2, n_out_tokens=3)
CLS = TaskSpec(max_len=6, d_in=3, d_out=5, n_classes=5)
TOKENS = TaskSpec(max_len=6, vocab_size=11, d_out=5, n_classes=5)


def _model(spec: TaskSpec, **arch) -> PerceiverIO:
    torch.manual_seed(0)
    arch = {**TINY, "input_pos": "learned", **arch}
    return PerceiverIO(spec, PerceiverIOArch(**arch)).eval()


def _inputs(spec: TaskSpec, batch: int = 2) -> torch.Tensor:
    if spec.vocab_size:
        return torch.randint(1, spec.vocab_size, (batch, spec.max_len))
    return torch.randn(batch, spec.max_len, spec.d_in)


# --- shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("queries", ["auto", "learned", "fourier", "inputs"])
@pytest.mark.parametrize("input_pos", ["learned", "fourier"])
def test_sequence_outputs_one_query_per_token(queries, input_pos):
    model = _model(SEQ, queries=queries, input_pos=input_pos, num_bands=2)
    assert model(_inputs(SEQ)).shape == (2, 3, 4)


@pytest.mark.parametrize("queries", ["auto", "single", "learned", "fourier"])
@pytest.mark.parametrize("spec", [CLS, TOKENS], ids=["vectors", "tokens"])
def test_classification_outputs(queries, spec):
    model = _model(spec, queries=queries)
    assert model(_inputs(spec)).shape == (2, 5)
    if queries != "fourier":
        assert model.queries.shape[0] == 1  # one learned query for the one output


@pytest.mark.parametrize("spec", [SEQ, CLS], ids=["sequence", "classification"])
def test_plain_perceiver_pools_the_latents(spec):
    model = _model(spec, decoder="pool")
    out = model(_inputs(spec))
    assert out.shape == ((2, 3, 4) if spec.n_out_tokens else (2, 5))
    assert not hasattr(model, "decode")


def test_bad_query_choices_are_explained():
    with pytest.raises(ValueError, match="one output; this task has 3 output tokens"):
        _model(SEQ, queries="single")
    with pytest.raises(ValueError, match="needs per-token outputs"):
        _model(CLS, queries="inputs")
    with pytest.raises(ValueError, match="no room left"):
        _model(SEQ, input_pos="fourier", num_bands=16, d_model=16)  # 33 Fourier channels


def test_dense_outputs_on_a_2d_grid():
    spec = TaskSpec(max_len=16, d_in=2, d_out=7, n_classes=7, n_out_tokens=16)
    torch.manual_seed(0)
    arch = PerceiverIOArch(**TINY, queries="fourier", input_pos="fourier", num_bands=1)
    model = PerceiverIO(spec, arch, in_grid=(4, 4), out_grid=(4, 4))
    assert model.query_fourier.shape == (16, 2 * 3)  # 2 coords + sin and cos of 1 band each
    assert model(torch.randn(3, 16, 2)).shape == (3, 16, 7)


# --- masking ------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["query", "pool"])
def test_padding_does_not_change_outputs(decoder):
    model = _model(TOKENS, decoder=decoder)
    x = _inputs(TOKENS, batch=3)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[:, 4:] = 0
    noisy = x.clone()
    noisy[:, 4:] = torch.randint(1, 11, (3, 2))  # other tokens at the padded positions
    with torch.no_grad():
        a, b = model(x, mask), model(noisy, mask)
        short = model(x[:, :4])  # the same examples without the padding at all
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, short, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(a, model(noisy), atol=1e-4)  # unmasked, padding is read


# --- cost and weight sharing --------------------------------------------------------------------
def test_weight_sharing_reduces_parameters():
    def count(share: bool) -> int:
        return sum(p.numel() for p in _model(SEQ, num_blocks=3, share_weights=share).parameters())

    shared, separate = _model(SEQ, num_blocks=3), _model(SEQ, num_blocks=3, share_weights=False)
    block = sum(p.numel() for p in shared.process[0].parameters())
    assert count(False) - count(True) == 2 * block > 0
    x = _inputs(SEQ)
    assert shared(x).shape == separate(x).shape


def test_cost_is_linear_in_input_and_output_size():
    def flops(max_len: int, n_out: int) -> int:
        spec = TaskSpec(max_len=max_len, d_in=3, d_out=2, n_classes=2, n_out_tokens=n_out)
        return _model(spec).flops_per_example()

    assert flops(20, 2) - flops(10, 2) == flops(30, 2) - flops(20, 2) > 0
    assert flops(10, 4) - flops(10, 2) == flops(10, 6) - flops(10, 4) > 0
    lat = [_model(SEQ, num_latents=n).flops_per_example() for n in (4, 8, 16)]
    assert lat[0] < lat[1] < lat[2]


# --- equivalence with transformers --------------------------------------------------------------
def _hf_config(**kw):
    import transformers

    base = {
        "num_latents": 5,
        "d_latents": 16,
        "d_model": 12,
        "num_blocks": 2,
        "num_self_attends_per_block": 2,
        "num_self_attention_heads": 4,
        "num_cross_attention_heads": 2,
        "qk_channels": 8,
        "v_channels": 16,
        "self_attention_widening_factor": 2,
        "cross_attention_widening_factor": 3,
        "attention_probs_dropout_prob": 0.0,
        "vocab_size": 11,
        "max_position_embeddings": 6,
    }
    return transformers.PerceiverConfig(**{**base, **kw})


@pytest.mark.parametrize("kind", ["basic", "classification", "projection"])
def test_equals_transformers_perceiver(kind):
    """Random transformers PerceiverModel (text preprocessor + decoder) copied into ours by the
    explicit name map: identical outputs on padded token inputs."""
    from transformers.models.perceiver import modeling_perceiver as hf

    torch.manual_seed(0)
    cfg = _hf_config(num_labels=5)
    queries = {"num_channels": 10, "trainable_position_encoding_kwargs": {"index_dims": 3}}
    queries["trainable_position_encoding_kwargs"]["num_channels"] = 10
    if kind == "basic":
        decoder = hf.PerceiverBasicDecoder(
            cfg, output_num_channels=5, output_index_dims=3, qk_channels=8, v_channels=16,
            num_heads=2, **queries,
        )  # fmt: skip
        spec = TaskSpec(max_len=6, vocab_size=11, d_out=5, n_classes=5, n_out_tokens=3)
        ours = {"d_query": 10, "decoder_heads": 2}
    elif kind == "classification":
        queries["trainable_position_encoding_kwargs"]["index_dims"] = 1
        decoder = hf.PerceiverClassificationDecoder(
            cfg, qk_channels=8, v_channels=16, use_query_residual=True, **queries
        )
        spec = TOKENS
        ours = {"d_query": 10, "decoder_query_residual": True}
    else:
        # transformers' PerceiverProjectionDecoder cannot run inside PerceiverModel (an
        # abstract property left unset, a forward without output_attentions); it is applied
        # to the model's latents below instead.
        projection = type("Projection", (hf.PerceiverProjectionDecoder,), {"num_query_channels": 0})
        decoder = projection(cfg)
        spec = TOKENS
        ours = {"decoder": "pool"}
    text = hf.PerceiverTextPreprocessor(cfg)
    theirs = hf.PerceiverModel(cfg, decoder=decoder, input_preprocessor=text).eval()
    arch = arch_from_config(cfg, kv_dim=12, input_pos="learned", **ours)  # the text preprocessor
    model = PerceiverIO(spec, arch).eval()
    names = parameter_names(2, decoder=kind, text_inputs=True)
    copy_from_transformers(model, theirs, names)
    assert set(names.values()) == {n for n, _ in model.named_parameters()}  # all mapped

    x = torch.randint(0, 11, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 3:] = 0
    mask[1, 5:] = 0
    with torch.no_grad():
        if kind == "projection":
            theirs.decoder = None
            expected = decoder(None, theirs(inputs=x, attention_mask=mask).last_hidden_state)
        else:
            expected = theirs(inputs=x, attention_mask=mask).logits
        got = model(x, mask)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_fourier_features_match_transformers():
    from transformers.models.perceiver import modeling_perceiver as hf

    pos = hf.build_linear_positions((5, 7)).reshape(1, 35, 2)
    theirs = hf.generate_fourier_features(pos, num_bands=4, max_resolution=(5, 7))[0]
    assert torch.allclose(fourier_features((5, 7), 4), theirs, atol=1e-6)


# --- pretrained checkpoints (offline: tiny random models saved to folders) -----------------------
@pytest.fixture(scope="module")
def tiny_perceiver(tmp_path_factory) -> str:
    import transformers

    path = tmp_path_factory.mktemp("tiny-perceiver")
    torch.manual_seed(0)
    transformers.PerceiverModel(_hf_config()).save_pretrained(path)
    return str(path)


def test_pretrained_encoder_loads_from_a_folder(tiny_perceiver):
    import transformers

    theirs = transformers.PerceiverModel.from_pretrained(tiny_perceiver).eval()
    model, source = pretrained_perceiver(tiny_perceiver, SEQ, queries="fourier", num_bands=2)
    assert "local folder" in source and tiny_perceiver in source
    assert model.arch.num_latents == 5 and model.arch.d_model == 12
    assert torch.equal(model.latents, theirs.embeddings.latents)
    feats = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    with torch.no_grad():
        expected = theirs(inputs=feats, attention_mask=mask).last_hidden_state
        got = model.eval().encode_process(feats, mask)
    assert torch.allclose(got, expected, atol=1e-5)
    assert model(torch.randn(2, 6, 3)).shape == (2, 3, 4)  # new adapter and decoder


def test_pretrained_from_a_checkpoint_with_a_head(tmp_path):
    """DeepMind's checkpoints are saved with heads (PerceiverForMaskedLM, ...): the base
    model's encoder is found under the ``perceiver.`` prefix."""
    import transformers

    cfg = _hf_config(d_model=16, qk_channels=None, v_channels=None, max_position_embeddings=8)
    cfg.architectures = ["PerceiverForMaskedLM"]
    torch.manual_seed(1)
    transformers.PerceiverForMaskedLM(cfg).save_pretrained(tmp_path)
    saved = transformers.PerceiverForMaskedLM.from_pretrained(tmp_path).perceiver
    model, source = pretrained_perceiver(str(tmp_path), CLS, num_bands=2)
    assert "PerceiverForMaskedLM" in source
    key = saved.encoder.cross_attention.attention.self.key.weight
    assert torch.equal(model.encode.attn.key.weight, key)


def test_missing_checkpoint_names_where_it_looked():
    with pytest.raises(WeightsNotFoundError, match="deepmind/no-such-perceiver"):
        pretrained_perceiver("deepmind/no-such-perceiver", CLS)


def test_missing_checkpoint_is_a_one_line_cli_error(tmp_path, capsys):
    args = ["perceiver", "train", "--pretrained", "language-perceiver", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no weights for Perceiver 'language-perceiver'" in err[0]
    assert "deepmind/language-perceiver" in err[0]


# --- CLI ----------------------------------------------------------------------------------------
_TINY_FLAGS = ["--num-latents", "4", "--d-latent", "16", "--num-heads", "2", "--num-blocks", "1"]
_FAST = ["--steps", "4", "--eval-every", "2", "--batch-size", "8", "--no-progress"]


@pytest.mark.parametrize("model", ["perceiver-io", "perceiver"])
def test_cli_trains_on_bit_xor(tmp_path, capsys, model):
    out = tmp_path / "run"
    args = ["perceiver", "train", "--task", "bit-xor", "--model", model, "--out", str(out)]
    assert main([*args, *_TINY_FLAGS, *_FAST, "--precision", "fp32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["steps"] == 4
    assert metrics["model_source"] == "random init (seed 0)"
    assert metrics["trainable_params"] == metrics["total_params"] > 0
    assert metrics["num_latents"] == 4 and metrics["flops_per_example"] > 0
    for name in ("config.yaml", "curve.csv", "best.safetensors", "checkpoint.pt"):
        assert (out / name).exists()
    assert "run folder" in capsys.readouterr().out
    again = tmp_path / "again"  # re-run from the saved config
    assert (
        main(["perceiver", "train", "--config", str(out / "config.yaml"), "--out", str(again)]) == 0
    )
    rerun = json.loads((again / "metrics.json").read_text())
    assert rerun["test_accuracy"] == metrics["test_accuracy"]


def test_cli_fine_tunes_a_frozen_pretrained_encoder(tmp_path, tiny_perceiver):
    out = tmp_path / "run"
    args = ["perceiver", "train", "--task", "bit-xor", "--pretrained", tiny_perceiver]
    flags = ["--freeze-pretrained", "--input-pos", "learned"]  # its inputs are 12 channels
    assert main([*args, *flags, *_FAST, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_source"].startswith("pretrained, local folder")
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["num_latents"] == 5  # from the checkpoint


def test_freeze_without_a_checkpoint_is_an_error(tmp_path):
    args = ["perceiver", "train", "--freeze-pretrained", "--out", str(tmp_path / "r")]
    assert main(args) == 2


# --- latent size search -------------------------------------------------------------------------
def _row(n: int, acc: float) -> dict:
    return {"num_latents": n, "val_accuracy": acc, "val_loss": 1 - acc, "flops_per_example": n}


def test_pick_latents_smallest_within_tolerance():
    from unicomp.tools.latent_search import pick_latents

    rows = [_row(64, 0.95), _row(8, 0.80), _row(16, 0.945), _row(32, 0.96)]
    assert pick_latents(rows, 0.02)["num_latents"] == 16  # 0.945 >= 0.96 - 0.02
    assert pick_latents(rows, 0.0)["num_latents"] == 32  # only the best
    assert pick_latents(rows, 0.5)["num_latents"] == 8  # everything qualifies
    assert pick_latents(rows, 0.02, "val_loss", higher_is_better=False)["num_latents"] == 16
    with pytest.raises(ValueError):
        pick_latents([], 0.01)


def test_search_latents_writes_the_table(tmp_path, capsys):
    from unicomp.tools.latent_search import pick_latents

    out = tmp_path / "search"
    args = ["perceiver", "search-latents", "--task", "bit-xor", "--latents", "2,4"]
    flags = ["--d-latent", "8", "--num-heads", "2", "--num-blocks", "1", "--precision", "fp32"]
    assert main([*args, *flags, *_FAST, "--tolerance", "0.01", "--out", str(out)]) == 0
    choice = json.loads((out / "choice.json").read_text())
    rows = choice["rows"]
    assert [r["num_latents"] for r in rows] == [2, 4]
    assert all(r["flops_per_example"] > 0 and r["seconds_per_step"] > 0 for r in rows)
    assert rows[0]["flops_per_example"] < rows[1]["flops_per_example"]
    assert choice["chosen_num_latents"] == pick_latents(rows, 0.01)["num_latents"]
    assert (out / "latents.csv").read_text().startswith("num_latents,val_accuracy")
    assert "**chosen**" in (out / "latents.md").read_text()
    assert "chosen num_latents" in capsys.readouterr().out
    assert (out / "latents-2" / "metrics.json").exists()


# --- dense task: digit inpainting ---------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from unicomp.tasks.dense import DigitsInpaint

    return DigitsInpaint(hole=3)


def test_digits_inpaint_batches(digits):
    batch = digits.train_batch(0, 5, seed=0)
    assert batch.x.shape == (5, 64, 2) and batch.y.shape == (5, 64)
    hidden = batch.target_mask
    assert (hidden.sum(1) == 9).all()  # one 3x3 hole per image
    assert (batch.x[..., 1][hidden] == 0).all() and (batch.x[..., 0][hidden] == 0).all()
    assert torch.equal(digits.train_batch(0, 5, seed=0).y, batch.y)  # a pure function of step
    assert digits.spec.n_out_tokens == 64 and digits.spec.n_classes == 17
    # Perfect logits score 1; the metric counts hidden pixels only.
    perfect = torch.nn.functional.one_hot(batch.y, 17).float()
    assert digits.correct(perfect, batch.y, hidden) == (45, 45, 5, 5)
    wrong_outside = perfect.clone()
    wrong_outside[~hidden] = perfect[~hidden].roll(1, dims=-1)
    assert digits.correct(wrong_outside, batch.y, hidden)[:2] == (45, 45)
    assert digits.correct(wrong_outside, batch.y).hits == 5 * 64 - 5 * 55  # every pixel scored


def test_dense_examples_png(digits, tmp_path):
    pytest.importorskip("matplotlib")
    from unicomp.tasks.dense import save_dense_examples

    torch.manual_seed(0)
    arch = PerceiverIOArch(**TINY, queries="fourier", input_pos="fourier", d_model=32, num_bands=2)
    model = PerceiverIO(digits.spec, arch, in_grid=(8, 8), out_grid=(8, 8))
    path = save_dense_examples(model, digits, tmp_path / "ex.png", n=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_run_perceiver_on_digits_writes_examples(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from unicomp.config import PerceiverConfig
    from unicomp.experiments.perceiver import run_perceiver

    cfg = PerceiverConfig(
        task="digits-inpaint", num_latents=4, d_latent=16, num_heads=2, num_blocks=1,
        queries="inputs", out=str(tmp_path / "run"), train=small_train(steps=2, eval_every=2),
    )  # fmt: skip
    metrics = run_perceiver(cfg)
    assert metrics["queries"] == "inputs" and 0 <= metrics["test_accuracy"] <= 1
    assert (tmp_path / "run" / "examples.png").exists()
    with pytest.raises(UnicompError, match="one output; this task has 64"):
        run_perceiver(PerceiverConfig(task="digits-inpaint", queries="single", out=str(tmp_path)))
