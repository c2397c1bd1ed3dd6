"""A trained Decision Transformer as a Hugging Face ``transformers.DecisionTransformerModel``
folder (``unicomp export RUN -o DIR``): ``config.json``, ``model.safetensors`` and a model
card (``README.md``), which ``DecisionTransformerModel.from_pretrained(DIR)`` loads.

Our DT (unicomp.models.decision_transformer) is transformers' model by design: the same
embeddings (``embed_timestep``, ``embed_return``, ``embed_state``, ``embed_action``,
``embed_ln``), a GPT-2 whose position table adds nothing, and ``predict_action`` (tanh for
continuous actions). So the export renames ``transformer.*`` to ``encoder.*`` and fills in
what transformers' model has and ours does not:

* ``encoder.wpe``: transformers feeds position id 0 to every token and adds that row; we
  write zeros, which is what our ``_NoPositions`` adds.
* ``predict_state``/``predict_return``: heads the paper's loss never trains (it predicts
  actions only), so ours has none; we write zeros. Their outputs mean nothing.

What cannot be written as that model is refused, by name: a DT on a pretrained backbone
(another architecture), image states (Atari's conv encoder), no return tokens (the
behaviour-cloning DT) and the MLP policy. Discrete actions (vector states) export: the model
takes one-hot actions and ``action_preds`` are the logits (no tanh).

The exported model takes what ours takes: states normalised with the training data's mean
and std, returns-to-go divided by the return scale, timesteps below ``max_ep_len``. Those
numbers are in config.json under ``unicomp`` and in the model card. Before anything is
written, the export runs both models on the same random inputs and refuses if their actions
differ, so a transformers release that changes the model cannot pass unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from unicomp.errors import UnicompError

CHECK_ATOL = 1e-5  # fp32 on the CPU: the two models differ only in summation order


def _refuse_unless_exportable(model, run: Path) -> None:
    from unicomp.models.decision_transformer import DecisionTransformer

    why = None
    if not isinstance(model, DecisionTransformer):
        why = "its policy is an MLP (--policy mlp), not a Decision Transformer"
    elif model.config.backbone:
        why = (
            f"its transformer is the pretrained backbone {model.config.backbone!r}, not the "
            "GPT-2 transformers' DecisionTransformerModel is built on"
        )
    elif model.config.image_shape is not None:
        why = "its states are images (a conv encoder); DecisionTransformerModel embeds vectors"
    elif not model.config.use_returns:
        why = "it reads no returns-to-go (the behaviour-cloning DT); DecisionTransformerModel does"
    if why:
        raise UnicompError(f"cannot export {run} as a transformers DecisionTransformerModel: {why}")


def _refuse_other_runs(run: Path) -> None:
    """A one-line error for a folder that is not a ``dt train`` run, saying how FPT and
    Perceiver runs leave unicomp instead."""
    from unicomp.experiments.kinds import KINDS, folder_kind

    if not (run / "config.yaml").is_file():
        raise UnicompError(f"{run} is not a run folder (no config.yaml)")
    kind = folder_kind(run) or KINDS["fpt"]
    if kind.name != "dt":
        raise UnicompError(
            f"{run} is {kind.title}: export writes Decision Transformers only; load it in "
            f"Python with unicomp.experiments.load_run({str(run)!r})"
        )


def hf_config(model, extra: dict[str, Any]):
    """transformers' DecisionTransformerConfig of our ``model`` (its config's fields, one
    to one), with ``extra`` stored under ``unicomp``."""
    import transformers

    c = model.config
    return transformers.DecisionTransformerConfig(
        state_dim=c.state_dim,
        act_dim=c.act_dim,
        hidden_size=c.hidden_size,
        max_ep_len=c.max_ep_len,
        action_tanh=c.action_tanh and not c.discrete,
        n_positions=c.tokens_per_step * c.max_length,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=4 * c.hidden_size,
        activation_function=c.activation,
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        bos_token_id=None,
        eos_token_id=None,
        unicomp=extra,
        **c.extra,
    )


def hf_state_dict(model, hf_model) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names, zeros where transformers' model has tensors
    ours lacks (see the module docstring)."""
    state = {
        (f"encoder.{k.removeprefix('transformer.')}" if k.startswith("transformer.") else k): v
        for k, v in model.state_dict().items()
    }
    for name, tensor in hf_model.state_dict().items():
        if name not in state:
            if not name.startswith(("encoder.wpe.", "predict_state.", "predict_return.")):
                raise UnicompError(
                    f"transformers' DecisionTransformerModel has {name}, which we lack"
                )
            state[name] = torch.zeros_like(tensor)
    return state


def example_inputs(config, batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of ``config``'s sizes, for comparing the two models: K steps, the first
    row left-padded (mask 0) as training batches are, timesteps anywhere in the table."""
    g = torch.Generator().manual_seed(seed)
    K = config.max_length
    if config.discrete:
        ids = torch.randint(0, config.act_dim, (batch, K), generator=g)
        actions = torch.nn.functional.one_hot(ids, config.act_dim).float()
    else:
        actions = torch.rand(batch, K, config.act_dim, generator=g) * 2 - 1
    start = torch.randint(0, max(1, config.max_ep_len - K), (batch, 1), generator=g)
    mask = torch.ones(batch, K, dtype=torch.long)
    mask[0, : K // 2] = 0
    return {
        "states": torch.randn(batch, K, config.state_dim, generator=g),
        "actions": actions,
        "returns_to_go": torch.randn(batch, K, 1, generator=g),
        "timesteps": (start + torch.arange(K)).clamp_max(config.max_ep_len - 1),
        "attention_mask": mask,
    }


def predicted_actions(model, hf_model, inputs: dict[str, torch.Tensor]):
    """(ours, transformers') predicted actions (B, K, act) on the same inputs; eval mode."""
    x = {k: inputs[k] for k in ("returns_to_go", "states", "actions", "timesteps")}
    with torch.no_grad():
        ours = model.eval()(x, inputs["attention_mask"])
        theirs = hf_model.eval()(**inputs, rewards=None, return_dict=True).action_preds
    return ours, theirs


def _model_card(run: Path, extra: dict[str, Any], config) -> str:
    env = extra.get("env") or "its environment"
    if extra["discrete"]:
        kind = "one-hot actions in, action logits out"
    else:
        kind = "actions in [-1, 1]" if config.action_tanh else "actions unbounded"
    return f"""---
library_name: transformers
tags: [decision-transformer, offline-rl, unicomp]
---
# Decision Transformer for {env}

Trained with unicomp (`unicomp dt train`), run folder `{run}`; exported with
`unicomp export` to transformers' `DecisionTransformerModel` ({kind}).

```python
from transformers import DecisionTransformerModel
model = DecisionTransformerModel.from_pretrained("<this folder>")
```

Inputs are what the model was trained on (their numbers are in `config.json` under
`unicomp`):
- `states`: `(state - state_mean) / state_std` (the training data's statistics),
- `returns_to_go`: the return still to collect, divided by `rtg_scale` ({extra["rtg_scale"]}),
- `timesteps`: the step of the episode, below `max_ep_len` ({config.max_ep_len}); unicomp
  clamps later steps to `max_ep_len - 1` (the table's last row) when it acts, and so must you:
  this model raises IndexError on a timestep of `max_ep_len` or more,
- `actions`: the actions taken (the current step's: zeros); at most {config.n_positions // 3}
  steps of context.

Use `action_preds`; `state_preds` and `return_preds` come from heads unicomp never trains
(written as zeros). Data: `{extra.get("data_path")}`. Scores measured by unicomp at
training time: {json.dumps(extra.get("scores"))}.
"""


def export_dt_run(run: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the DT of a finished ``dt train`` run folder as a transformers
    DecisionTransformerModel folder ``out`` (must not exist or be empty), after checking that
    both predict the same actions. Returns what was written and the largest difference."""
    import transformers

    from unicomp.experiments.dt import load_dt_run

    run, out = Path(run), Path(out)
    _refuse_other_runs(run)
    try:
        taken = out.exists() and (not out.is_dir() or any(out.iterdir()))
    except OSError as err:  # a name too long, a parent that is a file or unreadable
        raise UnicompError(f"cannot write {out}: {err.strerror or err}") from None
    if taken:
        raise UnicompError(f"{out} exists and is not an empty folder; choose another -o")
    model, cfg, metrics = load_dt_run(run)
    _refuse_unless_exportable(model, run)
    model = model.float().cpu().eval()
    norm = metrics["normalization"]
    extra = {
        "exported_from": str(run),
        "env": metrics.get("env"),
        "data_path": metrics.get("data_path", cfg.data),
        "state_mean": norm["state_mean"],
        "state_std": norm["state_std"],
        "rtg_scale": norm["rtg_scale"],
        "discrete": model.config.discrete,
        "scores": {k: metrics.get(k) for k in ("return_mean", "normalized_score_mean")},
        "unicomp_version": metrics.get("unicomp_version"),
    }
    config = hf_config(model, extra)
    hf_model = transformers.DecisionTransformerModel(config)
    hf_model.load_state_dict(hf_state_dict(model, hf_model), strict=True)
    ours, theirs = predicted_actions(model, hf_model, example_inputs(model.config))
    diff = float((ours - theirs).abs().max())
    if not diff <= CHECK_ATOL:
        raise UnicompError(
            f"the exported model's actions differ from the run's by {diff:.2e} (allowed "
            f"{CHECK_ATOL:g}) under transformers {transformers.__version__}: not written"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf_model.save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(run, extra, config))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except OSError as err:  # a read-only or full file system, a parent that is a file
        why = err.strerror or str(err)
        if isinstance(err, FileExistsError | NotADirectoryError) and not out.parent.is_dir():
            why = f"{out.parent} is not a folder"
        raise UnicompError(f"cannot write {out}: {why}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "out": str(out),
        "files": sorted(p.name for p in out.iterdir()),
        "max_action_difference": diff,
        "transformers_version": transformers.__version__,
    }
