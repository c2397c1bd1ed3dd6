"""Attention maps of a trained FPT: what each position of the frozen backbone attends to.

    unicomp fpt attention RUN [--example N] [--split test] [--out FILE.png]

loads the finished run folder RUN (:func:`unicomp.experiments.fpt.load_fpt_run`: the run's
whole trained FPT, best.safetensors checked), runs example N (default 0) of its ``test`` (or
``val``) split through it with eager attention, in fp32 on the CPU, and writes:

* ``FILE.png`` (default ``RUN/attention-<split>-<N>.png``): one heatmap per layer, the mean
  over that layer's heads; query position on the y axis, key position on the x axis, over the
  example's real (unpadded) tokens. Tick labels are the input tokens where they are short
  (bit tasks: the bits, ``?`` for a masked bit; token-id tasks: the vocabulary), else
  positions; the query rows the head reads are labelled in red. Above: the run folder,
  backbone and freeze policy, then the predicted and true outputs.
* ``FILE.npz`` next to it, the raw maps for analysis: ``maps`` (layers, heads, T, T)
  float32, where row q of ``maps[l, h]`` is query q's attention weights over the keys (each
  row sums to 1 over the real keys, and for a decoder over keys <= q); ``mask`` (T,) 1 for
  real tokens; ``inputs``, ``target``, ``prediction``, ``logits``; ``run``, ``backbone``,
  ``freeze``, ``split``, ``example``. In Python: ``np.load(path)["maps"]``.

Example: ``unicomp fpt attention runs/bit-xor-minilm-l6-paper-s0 --example 3`` draws the
attention of the trained bit-XOR FPT on test pair 3 (10 tokens: the 5 bits of each string;
the last 5 positions are read). An LSTM backbone has no attention: that is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unicomp.backbones.base import Transformer
from unicomp.errors import UnicompError
from unicomp.files import atomic_write
from unicomp.models.fpt import FPT
from unicomp.tasks.base import Task

SPLITS = ("test", "val")
_MAX_LABELS = 64  # more tokens than this: position numbers, not token labels
_MAX_LABEL_CHARS = 8  # a longer token label: position numbers


@dataclass
class ExampleAttention:
    """One example's pass through an FPT with its attention weights."""

    maps: np.ndarray  # (layers, heads, T, T) float32
    mask: np.ndarray  # (T,) 1 for real tokens
    inputs: np.ndarray  # the example's x: (T, d_in) vectors or (T,) token ids
    target: np.ndarray  # y, flattened
    prediction: np.ndarray  # argmax of the logits, one per element of y
    logits: np.ndarray  # (d_out,) or (n_out_tokens, d_out)

    @property
    def length(self) -> int:
        return int(self.mask.sum())


def example_attention(model: FPT, task: Task, split: str, index: int) -> ExampleAttention:
    """Example ``index`` of ``task``'s split through ``model`` (switched to eager attention,
    in eval mode, fp32) with the attention weights returned."""
    if split not in SPLITS:
        raise UnicompError(f"--split {split!r}: choose {' or '.join(SPLITS)}")
    data = task.split(split)
    n = len(data)
    if not 0 <= index < n:
        raise UnicompError(
            f"--example {index}: the {split} split has {n} examples; choose 0 to {n - 1}"
        )
    one = data[index : index + 1]
    model.backbone.set_attention("eager")  # sdpa does not return the weights
    model.eval()
    with torch.inference_mode():
        logits, maps = model.forward_with_attentions(one.x, one.mask)
    mask = one.mask[0] if one.mask is not None else torch.ones(maps.shape[-1], dtype=torch.long)
    flat = logits.float().reshape(-1, task.spec.n_classes)
    return ExampleAttention(
        maps=maps[0].float().numpy(),
        mask=mask.long().numpy(),
        inputs=one.x[0].numpy(),
        target=one.y[0].reshape(-1).numpy(),
        prediction=flat.argmax(-1).numpy(),
        logits=logits[0].float().numpy(),
    )


def token_labels(task: Task, inputs: np.ndarray, length: int) -> list[str] | None:
    """Short labels for the first ``length`` input tokens, or None where they would not be
    short: token ids through the task's ``vocab``; vectors of at most 8 values in {-1, 0, 1}
    as bits (1, 0, ``?`` for 0: bit tasks' masked bits); single values as numbers."""
    if length > _MAX_LABELS:
        return None
    x = inputs[:length]
    if np.issubdtype(x.dtype, np.integer):
        vocab = task.vocab
        labels = [vocab[i] if vocab and 0 <= i < len(vocab) else str(i) for i in x.tolist()]
    else:
        x = x.reshape(length, -1)
        if x.shape[1] <= _MAX_LABEL_CHARS and np.isin(x, (-1.0, 0.0, 1.0)).all():
            labels = ["".join("1" if v > 0 else "0" if v < 0 else "?" for v in row) for row in x]
        elif x.shape[1] == 1:
            labels = [f"{v:.2g}" for v in x[:, 0]]
        else:
            return None
    return labels if all(len(s) <= _MAX_LABEL_CHARS for s in labels) else None


def _outputs_text(values: np.ndarray, limit: int = 40) -> str:
    """Outputs as a short string: bits run together, other classes spaced."""
    items = [str(int(v)) for v in values]
    text = "".join(items) if set(items) <= {"0", "1"} and len(items) > 1 else " ".join(items)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_rows(model: FPT, length: int) -> list[int]:
    """The query positions whose hidden states the head reads (none marked for ``mean``)."""
    if model.spec.n_out_tokens:
        return list(range(length - model.spec.n_out_tokens, length))
    return [length - 1] if model.readout == "last" else []


def _fit(line: str, chars: int) -> str:
    """``line`` shortened to ``chars`` characters by eliding after its first word (paths keep
    their end: ``run …/bit-xor/fpt/s0``)."""
    if len(line) <= chars:
        return line
    head, _, rest = line.partition(" ")
    keep = max(chars - len(head) - 2, 8)
    return f"{head} …{rest[-keep:]}"


def draw_attention(
    ex: ExampleAttention,
    labels: list[str] | None,
    read_rows: list[int],
    title_lines: list[str],
    path: Path,
) -> None:
    """A grid of heatmaps, one per layer (mean over heads), over the real tokens; one colour
    scale (0 to the largest weight drawn) for all panels. Without token labels the ticks are
    positions (numbered where there are at most 64)."""
    from matplotlib.ticker import MaxNLocator

    from unicomp.plots import pyplot, save_figure

    plt = pyplot()

    length = ex.length
    mean = ex.maps.mean(1)[:, :length, :length]  # (layers, T, T)
    layers, heads = ex.maps.shape[:2]
    if labels is None and length <= _MAX_LABELS:
        labels = [str(i) for i in range(length)]
    cols = min(layers, 4)
    rows = math.ceil(layers / cols)
    side = 2.4 + 0.06 * min(length, _MAX_LABELS)
    width = max(side * cols + 1.2, 6.5)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width, side * rows + 1.2), squeeze=False, layout="constrained"
    )
    vmax = float(mean.max()) or 1.0
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= layers:
            ax.axis("off")
            continue
        image = ax.imshow(mean[i], cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"layer {i + 1} (mean of {heads} heads)", fontsize=9)
        if i % cols == 0:
            ax.set_ylabel("query position")
        if i + cols >= layers:  # no panel below
            ax.set_xlabel("key position")
        if labels is None:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            continue
        size = 7 if length <= 24 else 5
        ax.set_xticks(range(length), labels, fontsize=size, rotation=90)
        ax.set_yticks(range(length), labels, fontsize=size)
        for row in read_rows:
            ax.get_yticklabels()[row].set_color("tab:red")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention weight (mean over heads)")
    chars = int(width * 11)  # about 11 characters an inch at 10 pt
    fig.suptitle("\n".join(_fit(line, chars) for line in title_lines), fontsize=10)
    save_figure(fig, path)


def save_maps(ex: ExampleAttention, path: Path, meta: dict[str, str | int]) -> None:
    """The raw maps and the example as an .npz (no pickled objects: ``np.load`` reads it)."""
    arrays = {
        "maps": ex.maps.astype(np.float32),
        "mask": ex.mask,
        "inputs": ex.inputs,
        "target": ex.target,
        "prediction": ex.prediction,
        "logits": ex.logits,
        **{k: np.asarray(v) for k, v in meta.items()},
    }
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def attention_command(
    run: str | Path, example: int = 0, split: str = "test", out: str | Path | None = None
) -> dict:
    """``unicomp fpt attention``: draw and save example ``example``'s attention maps of the
    run in ``run``; returns what was written and predicted."""
    from unicomp.experiments.fpt import load_fpt_run

    folder = Path(run)
    png = Path(out) if out else folder / f"attention-{split}-{example}.png"
    if png.suffix.lower() != ".png":
        raise UnicompError(f"--out {png}: expected a .png file (the raw maps go next to it)")
    model, task, cfg = load_fpt_run(folder)
    if not isinstance(model.backbone, Transformer):
        raise UnicompError(
            f"{folder}: backbone {cfg.backbone} (model_type {model.backbone.model_type}) has "
            "no attention layers to draw"
        )
    ex = example_attention(model, task, split, example)
    correct = bool(np.array_equal(ex.prediction, ex.target))
    title = [
        f"run {folder}",
        f"backbone {cfg.backbone}  |  freeze {cfg.freeze}",
        f"{split} example {example}: predicted {_outputs_text(ex.prediction)}, "
        f"true {_outputs_text(ex.target)} ({'right' if correct else 'wrong'})",
    ]
    labels = token_labels(task, ex.inputs, ex.length)
    draw_attention(ex, labels, _read_rows(model, ex.length), title, png)
    npz = png.with_suffix(".npz")
    meta = {"run": str(folder), "backbone": cfg.backbone, "freeze": cfg.freeze}
    save_maps(ex, npz, {**meta, "split": split, "example": example})
    return {
        "picture": str(png),
        "maps": str(npz),
        "shape": list(ex.maps.shape),
        "prediction": _outputs_text(ex.prediction, limit=200),
        "target": _outputs_text(ex.target, limit=200),
        "correct": correct,
    }
