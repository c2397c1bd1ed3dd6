"""A task's natural inputs and outputs: bit strings, image arrays, ListOps expressions, protein
sequences in; bit strings, digits, class names, fold numbers out.

``codec_for(task, task_args, spec).encode(items)`` turns a list of natural inputs into the
model's ``(x, mask)`` exactly as the task's own data pipeline does (tests check this against
the tasks' splits); ``decode(logits)`` turns the model's logits into natural outputs. A bad
item raises :class:`InputError` naming the item and what was wrong. Encoding needs no data
set: the codec is built from the task's arguments and the size spec stored with an adapter.

Where a task's form comes from (:func:`input_form`): the task's own declaration
(``Task.input_form``, the contract in ``unicomp.tasks.base``, which any task, built in or a
plugin, may use; an adapter file then records the codec's class and state), else the table
``CODECS`` of built-in forms below, keyed by task name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unicomp.errors import UnicompError

# The contract (Codec, InputError) lives with the tasks, which declare their forms with it.
from unicomp.tasks.base import Codec, InputError, Task, TaskSpec
from unicomp.tasks.base import describe_item as _describe
from unicomp.tasks.base import fail as _fail

__all__ = ["Codec", "InputError", "CODECS", "codec_for", "input_form", "codec_from_header"]


def _bits(i: int, text: Any, n: int, allowed: str = "01") -> list[int]:
    if not isinstance(text, str) or len(text) != n or any(c not in allowed for c in text):
        kind = "'0'/'1'" + (" or '?' (masked)" if "?" in allowed else "")
        raise _fail(i, f"expected a string of {n} characters {kind}, got {_describe(text)}")
    return [{"0": -1, "1": 1, "?": 0}[c] for c in text]  # the tasks' signed bits, 0 = masked


def _bit_list(i: int, item: Any, n: int) -> list[Any]:
    if not isinstance(item, list | tuple) or len(item) != n:
        raise _fail(i, f"expected a list of {n} bit strings, got {_describe(item)}")
    return list(item)


class BitXORCodec(Codec):
    def __init__(self, spec: TaskSpec, n_bits: int, **_: Any):
        super().__init__(
            spec,
            input=f"a list of two strings of {n_bits} bits ('0'/'1')",
            output=f"their elementwise XOR, a string of {n_bits} bits",
            example=["1" * n_bits, "01" * (n_bits // 2) + "0" * (n_bits % 2)],
        )
        self.n_bits = n_bits

    def encode(self, items):
        rows = []
        for i, item in enumerate(items):
            a, b = _bit_list(i, item, 2)
            rows.append(_bits(i, a, self.n_bits) + _bits(i, b, self.n_bits))
        return torch.tensor(rows, dtype=torch.float32).reshape(len(items), -1, 1), None

    def decode(self, logits):
        return ["".join(map(str, row)) for row in super().decode(logits)]


class BitMemoryCodec(Codec):
    def __init__(self, spec: TaskSpec, n_strings: int, n_bits: int, bits_per_token: int, **_: Any):
        super().__init__(
            spec,
            input=f"{n_strings + 1} strings of {n_bits} bits: {n_strings} to remember, then one of"
            " them again with some bits masked as '?'",
            output=f"the remembered string the last one was taken from ({n_bits} bits)",
            example=[*(str(k % 2) * n_bits for k in range(n_strings)), "?" * (n_bits - 1) + "1"],
        )
        self.n_strings, self.n_bits, self.per_token = n_strings, n_bits, bits_per_token

    def encode(self, items):
        rows = []
        for i, item in enumerate(items):
            strings = _bit_list(i, item, self.n_strings + 1)
            row = [b for s in strings[:-1] for b in _bits(i, s, self.n_bits)]
            rows.append(row + _bits(i, strings[-1], self.n_bits, "01?"))
        return torch.tensor(rows, dtype=torch.float32).reshape(len(items), -1, self.per_token), None

    def decode(self, logits):
        return ["".join(map(str, row)) for row in super().decode(logits)]


class ImageCodec(Codec):
    """An image as nested lists (or an array) of pixel values 0-255: (H, W) gray or
    (H, W, 3) RGB, tokenised by the task's own function."""

    def __init__(self, spec: TaskSpec, shape: tuple[int, ...], tokens, classes=None):
        h, w = shape[:2]
        kind = "RGB, [H][W][3]" if len(shape) == 3 else "gray, [H][W]"
        super().__init__(
            spec,
            input=f"a {h}x{w} image ({kind}) of pixel values 0-255",
            output="the class name" if classes else "the digit 0-9",
            example=torch.zeros(shape, dtype=torch.int64).tolist(),
        )
        self.shape, self.tokens, self.classes = shape, tokens, classes

    def encode(self, items):
        from unicomp.tasks.images import check_images

        images = check_images(items, self.shape)
        if not len(images):
            return torch.zeros((0, self.spec.max_len, self.spec.d_in)), None
        return self.tokens(images), None

    def decode(self, logits):
        labels = super().decode(logits)
        return [self.classes[c[0]] if self.classes else c[0] for c in labels]


class TokenCodec(Codec):
    """A text (ListOps expression, protein sequence) as token ids, right-padded with a mask."""

    def __init__(self, spec: TaskSpec, tokenize, input: str, output: str, example: str):
        super().__init__(spec, input=input, output=output, example=example)
        self.tokenize = tokenize

    def encode(self, items):
        rows = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                raise _fail(i, f"expected a non-empty string, got {_describe(item)}")
            try:
                ids = list(self.tokenize(item))
            except (ValueError, UnicompError) as err:
                raise _fail(i, str(err)) from None
            if len(ids) > self.spec.max_len:
                raise _fail(i, f"{len(ids)} tokens; this model takes at most {self.spec.max_len}")
            rows.append(ids)
        width = max((len(r) for r in rows), default=1)
        x = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):
            x[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, : len(ids)] = 1
        return x, mask

    def decode(self, logits):
        return [c[0] for c in super().decode(logits)]


def _listops(spec: TaskSpec, max_tokens: int | None = None, **_: Any) -> Codec:
    from unicomp.tasks.listops import MAX_ROW_TOKENS, evaluate, tokenize

    def cut(text: str) -> list[int]:
        # As strict as the task's TSV reader (read_tsv): at most MAX_ROW_TOKENS symbols, and
        # a well-formed expression; then cut as the task cut its data (max_tokens), if it did.
        symbols = text.split()
        if len(symbols) > MAX_ROW_TOKENS:
            raise ValueError(f"{len(symbols)} symbols; expressions are limited to {MAX_ROW_TOKENS}")
        ids = tokenize(text)
        try:
            evaluate(symbols)
        except ValueError as err:
            raise ValueError(f"malformed expression: {err}") from None
        return ids[:max_tokens] if max_tokens else ids

    return TokenCodec(
        spec,
        cut,
        input="a ListOps expression, symbols separated by spaces (digits, [MIN [MAX [MED [SM, ])",
        output="its value, 0-9",
        example="[MAX 2 9 [MIN 4 7 ] 0 ]",
    )


def _proteins(spec: TaskSpec, max_len: int = 1024, unknown: str = "error", **_: Any) -> Codec:
    from unicomp.tasks.proteins import AMINO_ACIDS, encode

    def tokenize(text: str) -> list[int]:  # cut to max_len as the task cut its data
        return encode(text, "sequence", unknown=unknown)[:max_len].tolist()

    return TokenCodec(
        spec,
        tokenize,
        input=f"a protein sequence of amino-acid letters ({AMINO_ACIDS})",
        output="its SCOP fold, as the fold's class number (0-1194)",
        example="MKTAYIAKQRQISFVKSHFSRQ",
    )


def _images(task: str) -> Any:
    from unicomp.data.images import CIFAR_CLASSES
    from unicomp.tasks import images

    def build(spec: TaskSpec, tokens: int = 64, **_: Any) -> Codec:
        if task == "mnist":
            return ImageCodec(spec, (28, 28), lambda x: images.mnist_tokens(x, tokens))
        tokenise = images.cifar_tokens if task == "cifar10" else images.gray_tokens
        return ImageCodec(spec, (32, 32, 3), tokenise, CIFAR_CLASSES)

    return build


class SeriesCodec(Codec):
    """A UCR/UEA series: a list of numbers (one channel) or a list of lists, one per channel,
    of any length the model's tokens hold; z-normalised and patched as the task's data."""

    def __init__(
        self, spec: TaskSpec, patch: int = 8, stride: int = 4, normalize: str = "instance", **_: Any
    ):
        self.channels = spec.d_in // patch
        kind = (
            "a list of numbers"
            if self.channels == 1
            else f"a list of {self.channels} lists of numbers (one per channel)"
        )
        super().__init__(
            spec,
            input=f"a series: {kind}, each of the same length",
            output=f"its class: the index (0-{spec.n_classes - 1}) in the order of the "
            "training file's @classLabel line",
            example=[[0.0, 1.0, 0.0, -1.0] * 4] * self.channels
            if self.channels > 1
            else [0.0, 1.0, 0.0, -1.0] * 4,
        )
        self.patch, self.stride, self.normalize = patch, stride, normalize

    def encode(self, items):
        from unicomp.tasks.timeseries import classification_tokens, n_patches

        series = []
        for i, item in enumerate(items):
            rows = [item] if self.channels == 1 and _numbers(item) else item
            if (
                not isinstance(rows, list | tuple)
                or len(rows) != self.channels
                or not all(_numbers(r) for r in rows)
            ):
                raise _fail(i, f"expected {self.input.split(': ', 1)[1]}, got {_describe(item)}")
            if len({len(r) for r in rows}) != 1 or not rows[0]:
                raise _fail(i, "every channel needs the same number of values, at least one")
            array = np.array(rows, dtype=np.float32)  # (C, T)
            if not np.isfinite(array).all():
                raise _fail(i, "values must be finite numbers")
            if n_patches(array.shape[1], self.patch, self.stride) > self.spec.max_len:
                raise _fail(
                    i,
                    f"{array.shape[1]} steps; this model takes at most {self.spec.max_len} patches",
                )
            series.append(array)
        if not series:
            return torch.zeros((0, 1, self.spec.d_in)), None
        width = max(n_patches(s.shape[1], self.patch, self.stride) for s in series)
        return classification_tokens(series, self.patch, self.stride, self.normalize, width)

    def decode(self, logits):
        return [c[0] for c in super().decode(logits)]


class ForecastCodec(Codec):
    """A look-back window of numbers -> the forecast of the next steps, in the input's units
    (the window normalised by its own mean and std, the output de-normalised, as in training)."""

    def __init__(self, spec: TaskSpec, **args: Any):
        from unicomp.tasks.timeseries import forecast_settings

        s = forecast_settings(args)
        self.lookback, self.horizon, self.patch, self.stride = (
            s["lookback"],
            s["horizon"],
            s["patch"],
            s["stride"],
        )
        super().__init__(
            spec,
            input=f"the last {self.lookback} values of a series: a list of numbers",
            output=f"the next {self.horizon} values: a list of numbers",
            example=[float(i % 12) for i in range(self.lookback)],
        )

    def _windows(self, items) -> torch.Tensor:
        rows = []
        for i, item in enumerate(items):
            if not _numbers(item) or len(item) != self.lookback:
                raise _fail(i, f"expected a list of {self.lookback} numbers, got {_describe(item)}")
            row = torch.tensor(item, dtype=torch.float32)
            if not bool(torch.isfinite(row).all()):
                raise _fail(i, "values must be finite numbers")
            rows.append(row)
        return torch.stack(rows) if rows else torch.zeros((0, self.lookback))

    def encode(self, items):
        return self.encode_context(items)[:2]

    def encode_context(self, items):
        """The windows normalised by their own mean and std (as in training); those are the
        context that ``finish`` de-normalises each forecast with."""
        from unicomp.tasks.timeseries import patch_tokens, revin

        normed, mean, std = revin(self._windows(items))
        x = patch_tokens(normed[:, :, None], self.patch, self.stride)
        return x, None, list(zip(mean.tolist(), std.tolist(), strict=True))

    def finish(self, logits, context):
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in zip(*context, strict=True))
        out = logits.float().cpu()  # (B, horizon), normalised units
        return (out * std[:, None] + mean[:, None]).tolist()

    def decode(self, logits):
        raise NotImplementedError("a forecast needs its window's mean and std: use finish()")


def _numbers(item: Any) -> bool:
    return isinstance(item, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in item
    )


CODECS = {
    "bit-xor": BitXORCodec,
    "bit-memory": BitMemoryCodec,
    "mnist": _images("mnist"),
    "cifar10": _images("cifar10"),
    "cifar10-lra": _images("cifar10-lra"),
    "listops": _listops,
    "remote-homology": _proteins,
    "ucr": SeriesCodec,
    "forecast": ForecastCodec,
}


def codec_for(task: str, task_args: dict[str, Any], spec: TaskSpec) -> Codec:
    """The built-in codec of ``task`` run with ``task_args`` (the task's defaults fill the rest)."""
    from unicomp.experiments.common import task_arguments
    from unicomp.tasks.catalog import TASKS

    if task not in CODECS:
        raise UnicompError(
            f"task {task!r} has no natural input form (its task class declares none with "
            f"input_form()); built-in tasks with one: {', '.join(CODECS)}"
        )
    args = {**task_arguments(TASKS.entry(task).load()), **task_args}
    return CODECS[task](spec, **args)


def input_form(task: Task, name: str, task_args: dict[str, Any]) -> tuple[Codec | None, dict]:
    """The natural input form of ``task`` (built as task ``name`` with ``task_args``): its own
    declaration (``task.input_form()``), else the built-in table; ``(None, {})`` where it has
    none. The dict is what an adapter file records to rebuild the codec without the task
    (``{"class": "module:Class", "state": {...}}`` for a declared one; ``{}``: rebuilt from
    the task's name and arguments)."""
    declared = task.input_form()
    if declared is not None:
        cls = type(declared)
        record = {"class": f"{cls.__module__}:{cls.__qualname__}", "state": declared.state()}
        _rebuild(record, task.spec, f"task {name!r}")  # it must rebuild from what is recorded
        return declared, record
    if name in CODECS:
        return codec_for(name, task_args, task.spec), {}
    return None, {}


def _rebuild(record: Any, spec: TaskSpec, where: str) -> Codec:
    """A codec from its record (``input_form``'s dict): its class imported by module path (it
    must be a :class:`Codec`), called with the spec and the recorded state."""
    import importlib
    import json

    if not (
        isinstance(record, dict)
        and isinstance(record.get("class"), str)
        and isinstance(record.get("state"), dict)
    ):
        raise UnicompError(f'{where}: codec record is not {{"class": str, "state": {{...}}}}')
    target = record["class"]
    module, _, qualname = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception as err:
        raise UnicompError(
            f"{where}: its input form {target} cannot be imported ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); install or put on PYTHONPATH "
            "the module that defines it"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, Codec)):
        raise UnicompError(f"{where}: its input form {target} is not a unicomp Codec class")
    try:
        return obj(spec, **json.loads(json.dumps(record["state"])))
    except (TypeError, ValueError) as err:
        raise UnicompError(
            f"{where}: its input form {target} does not rebuild from its state() "
            f"({type(err).__name__}: {err})"
        ) from None


def codec_from_header(meta: dict[str, str], spec: TaskSpec, where: str) -> Codec:
    """The codec of an adapter file (its header ``meta``): the recorded class and state where
    the task declared its form, else the built-in codec of its task and arguments."""
    import json

    if meta.get("codec"):
        try:
            record = json.loads(meta["codec"])
        except ValueError:
            raise UnicompError(f"{where}: header field 'codec' is not JSON") from None
        return _rebuild(record, spec, where)
    return codec_for(meta["task"], json.loads(meta["task_args"]), spec)
