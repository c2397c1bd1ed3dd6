"""Dataclass configs. Each field's ``help`` becomes its CLI flag's help; a run saves its
resolved config as ``config.yaml`` and can be re-run from it (``--config``).

Resolution order, later wins: field defaults < the task's ``default_train`` < ``--config``
YAML < explicit CLI flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from unicomp.errors import UnicompError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, dict | list):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """The one training loop's settings, shared by every model and task."""

    steps: int = _f(1000, "optimizer steps")
    batch_size: int = _f(32, "examples per optimizer step (split over --grad-accum micro-batches)")
    grad_accum: int = _f(1, "micro-batches per step")
    lr: float = _f(1e-3, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay on matrices (not biases or norms)")
    warmup_steps: int = _f(0, "linear warm-up steps")
    schedule: str = _f(
        "constant",
        "after warm-up: constant | cosine | linear",
        choices=("constant", "cosine", "linear"),
    )
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)")
    precision: str = _f(
        "auto",
        "auto: bf16 autocast where the hardware multiplies bf16 natively (GPU compute "
        "capability >= 8.0; CPU flag amx_bf16 or avx512_bf16; recorded in metrics.json), "
        "else fp32 | bf16 | fp32",
        choices=("auto", "bf16", "fp32"),
    )
    compile: bool = _f(False, "torch.compile the training forward (start-up cost; see docs)")
    eval_every: int = _f(100, "evaluate on the validation split and checkpoint every N steps")
    eval_batch_size: int = _f(256, "batch size for evaluation")
    seed: int = _f(0, "seed for initialisation, sampling and dropout")
    target_accuracy: float = _f(0.99, "note the first step with validation accuracy >= this")
    stop_at_target: bool = _f(False, "stop training once validation accuracy reaches the target")
    patience: int = _f(
        0,
        "early stopping: stop after this many evaluations without a better validation score "
        "(0 = off); the test score is always that of the best validation step",
    )
    time_limit_minutes: float = _f(
        0.0, "stop at the first evaluation after this much training time (0 = no limit)"
    )
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    progress: bool = _f(True, "show a progress bar")
    track: str = _f(
        "none",
        "also log the learning curve to an experiment tracker, in the run folder: "
        "tensorboard (RUN/tensorboard/) | wandb (RUN/wandb/; WANDB_MODE=offline works "
        "without network) | none",
        choices=("none", "tensorboard", "wandb"),
    )


# The task fields of the FPT and Perceiver configs (the same meaning in both).
TASK_HELP = (
    "task name (unicomp list), or array:PATH for your own .npz/.npy/.csv/.parquet file or "
    "folder (README: your own data)"
)
TASK_SOURCE_HELP = (
    "where a task that is not built in is defined, module:attribute; recorded by runs of "
    "tasks registered from Python or by entry point, so a re-run from config.yaml imports it "
    "again; null: a built-in task"
)


@dataclass
class FPTConfig:
    """A Frozen Pretrained Transformer run."""

    kind: ClassVar[str] = "fpt"  # the run family (unicomp.experiments.kinds), in config.yaml

    task: str = _f("bit-xor", TASK_HELP)
    task_source: str | None = _f(None, TASK_SOURCE_HELP)
    backbone: str = _f(
        "minilm-l6",
        "backbone name, random:<name>, stats:<name>, lstm[:<layers>x<width>], run:<run folder>, "
        "hub id or local folder",
    )
    freeze: str = _f("paper", "freeze policy (unicomp list)")
    backbone_layers: int | None = _f(
        None,
        "keep only the first N blocks of the backbone (the paper's smaller from-scratch "
        "transformers, e.g. 3 layers on CIFAR-10); null: all",
    )
    readout: str = _f(
        "last", "classification readout: last real token | masked mean", choices=("last", "mean")
    )
    # Departure from the official code, which kept GPT-2's dropout of 0.1 in the frozen
    # layers: noise in fixed features only slows learning (bit XOR on minilm-l6 reached 99.8%
    # validation accuracy at step 400 without it, 76% at step 1250 with it). Set 0.1 to match.
    backbone_dropout: float | None = _f(0.0, "dropout inside the backbone (None: its own)")
    attn_implementation: str | None = _f(
        "auto",
        "auto: sdpa (the fused kernel) where the backbone has it, else eager, by rule | "
        "measure: time a training step with eager and with sdpa and keep the faster (machine "
        "load can change the pick) | eager | sdpa (the choice is saved in config.yaml; null in "
        "a config file: transformers' default)",
        choices=("auto", "measure", "eager", "sdpa"),
    )
    task_args: dict = _f({}, "task constructor arguments, KEY=VALUE (repeatable)")
    out: str | None = _f(None, "run folder (default runs/<task>-<backbone>-<freeze>-s<seed>)")
    feature_cache: str = _f(
        "auto",
        "output-only runs: train the head on features computed once (unicomp.features). "
        "auto: cached on disk where they are fixed (a data set without augmentation) and the "
        "run sees at least an epoch of them | off "
        "| memory | disk",
        choices=("auto", "off", "memory", "disk"),
    )
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class PerceiverConfig:
    """A Perceiver IO (or plain Perceiver) run; see unicomp.models.perceiver_io."""

    kind: ClassVar[str] = "perceiver"

    task: str = _f("bit-xor", TASK_HELP)
    task_source: str | None = _f(None, TASK_SOURCE_HELP)
    model: str = _f(
        "perceiver-io",
        "perceiver-io: query decoder | perceiver: mean of the latents -> linear head",
        choices=("perceiver-io", "perceiver"),
    )
    pretrained: str | None = _f(
        None,
        "encoder + process from a transformers Perceiver checkpoint: language-perceiver, "
        "vision-perceiver-learned, ..., a hub id or a local folder (sizes then come from it)",
    )
    freeze_pretrained: bool = _f(False, "keep the pretrained encoder + process frozen")
    num_latents: int = _f(32, "latent array length N")
    d_latent: int = _f(64, "latent channels D (also the input and query channels)")
    num_blocks: int = _f(2, "repeats of the block of latent self-attention layers")
    self_attends_per_block: int = _f(2, "latent self-attention layers per block")
    num_heads: int = _f(4, "attention heads (self-attention, encoder and decoder)")
    share_weights: bool = _f(True, "the block repeats share weights (Perceiver paper)")
    widening: int = _f(1, "MLP widening factor of the latent self-attention layers")
    queries: str = _f(
        "auto",
        "decoder queries: auto (single for classification, else learned) | learned | fourier "
        "| single | inputs",
        choices=("auto", "learned", "fourier", "single", "inputs"),
    )
    # Fourier by default: on bit-xor (defaults, lr 1e-3) it reached validation accuracy 1.0
    # at step 600, where a learned table (init std 0.02) was still at chance (0.50).
    input_pos: str = _f(
        "fourier",
        "input positions: fourier features (concatenated) | a learned table (added)",
        choices=("fourier", "learned"),
    )
    dropout: float = _f(0.0, "dropout on attention probabilities")
    task_args: dict = _f({}, "task constructor arguments, KEY=VALUE (repeatable)")
    out: str | None = _f(None, "run folder (default runs/<task>-<model>-L<num_latents>-s<seed>)")
    train: TrainConfig = field(default_factory=TrainConfig)


class RegisteredNames:
    """The names of a registry's entries as a field's ``choices``, read when they are checked
    or shown, so that entries registered later count: those of ``registry`` (its name in
    unicomp.registry) whose registration ``kwargs`` match ``where`` (a missing one reads as
    False)."""

    def __init__(self, registry: str, **where: Any):
        self.registry, self.where = registry, where

    def __iter__(self):
        from unicomp import registry

        entries = getattr(registry, self.registry)
        wanted = self.where.items()
        return iter(
            [e.name for e in entries if all(e.kwargs.get(k, False) == v for k, v in wanted)]
        )

    def __contains__(self, name: object) -> bool:
        return name in list(self)


# What a second --data says (dt train, dt external): several data sets go in one flag.
SEVERAL_DATA = "several data sets go in one --data, comma-separated: --data A,B"


@dataclass
class DTConfig:
    """A Decision Transformer run (offline RL): train on a trajectory data set, then act in
    the environment conditioned on target returns."""

    kind: ClassVar[str] = "dt"
    data: str = _f(
        "",
        "trajectory data set: a Minari folder (unicomp dt collect), a Minari data set id "
        "(mujoco/hopper/medium-v0, in $MINARI_DATASETS_PATH) or a D4RL .hdf5 (needs --env); "
        "several, comma-separated (A,B), are trained on together (one environment, the same "
        "observations and actions)",
        once=SEVERAL_DATA,
    )
    env: str | None = _f(None, "gymnasium id to act in (default: the data set's)")
    algo: str = _f(
        "dt",
        "dt: Decision Transformer | bc: behaviour cloning | pbc: %%BC, BC on the best "
        "--top-percent of the data",
        choices=RegisteredNames("OFFLINE_RL_METHODS", external=False),
    )
    policy: str = _f(
        "dt-noreturn",
        "BC/%%BC network: dt-noreturn (the DT without return tokens) | mlp (state -> action)",
        choices=("dt-noreturn", "mlp"),
    )
    top_percent: float = _f(
        100.0, "train on the best X%% of the data's steps by episode return (paper %%BC: 10/25/40)"
    )
    delayed_reward: bool = _f(
        False, "all of an episode's reward at its last step, in training and acting (paper 5.5)"
    )
    context: int = _f(20, "K, the context in timesteps (paper: 20 for gym)")
    rtg_scale: float = _f(1000.0, "returns-to-go are divided by this (paper: 1000 for MuJoCo)")
    max_ep_len: int = _f(1000, "rows of the timestep embedding (later steps reuse the last)")
    hidden_size: int = _f(128, "model width (paper: 128)")
    n_layer: int = _f(3, "GPT-2 layers (paper: 3 for gym, 6 for Atari)")
    n_head: int = _f(1, "attention heads (paper: 1 for gym, 8 for Atari)")
    dropout: float = _f(0.1, "dropout on embeddings, attention and residuals (paper: 0.1)")
    attn_implementation: str | None = _f(None, "eager | sdpa (default: transformers' choice)")
    backbone: str | None = _f(
        None,
        "a pretrained transformer as the DT's backbone (minilm-l6, smollm2-135m, random:<name>, "
        "stats:<name>, hub id or folder; its width replaces hidden_size, n_layer, n_head); "
        "null: the paper's GPT-2 built from hidden_size/n_layer/n_head",
    )
    freeze: str = _f(
        "full", "freeze policy of the --backbone (unicomp list): paper | full | output-only | ..."
    )
    val_fraction: float = _f(0.05, "episodes held out for validation (checkpoint selection)")
    test_fraction: float = _f(0.05, "episodes held out for the test loss")
    eval_targets: str = _f(
        "",
        "target returns, comma-separated (default: the paper's for the env, else the data's "
        "best return and the midpoint between it and the data's median return)",
    )
    eval_episodes: int = _f(10, "evaluation episodes per target (0: no evaluation)")
    eval_seed: int = _f(10_000, "evaluation episode i resets with eval_seed + i")
    eval_envs: int = _f(16, "environments stepped together in evaluation")
    eval_max_steps: int = _f(0, "evaluation time limit (0: the env's own)")
    eval_window: str = _f(
        "exact",
        "context past K steps: exact (recompute) | rolling (cached, approximate)",
        choices=("exact", "rolling"),
    )
    eval_sample: bool = _f(
        False, "discrete actions drawn from the predicted distribution (the official Atari way)"
    )
    out: str | None = _f(None, "run folder (default runs/dt-<data folder>-s<seed>)")
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def task(self) -> str:  # resolve() looks up training defaults by task name
        return "dt"


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


_SIMPLE = {"int": (int,), "float": (float, int), "str": (str,), "bool": (bool,), "dict": (dict,)}


# A number as YAML 1.2 and Python write it; PyYAML (YAML 1.1) reads 1e-3 or 5E4 (no dot) as a
# string, so a value matching this for a float field (or a --task-arg) is taken as a float.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def yaml_number(value: Any) -> Any:
    """``"1e-3"`` -> 0.001: a string that is a number in scientific notation; else ``value``."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _checked(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Check a value against the field's declared type (``X | None`` allows null) and its
    choices; ints are accepted where floats are declared."""
    kind = str(f.type)
    if value is None and kind.endswith("| None"):
        return None
    if kind.startswith("float"):
        value = yaml_number(value)  # PyYAML reads 1e-3 (no dot) as a string
    allowed = _SIMPLE.get(kind.split(" |")[0], (object,))
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise UnicompError(f"{where}: {f.name} must be {kind}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UnicompError(f"{where}: {f.name} must be one of {', '.join(choices)}, got {value!r}")
    if kind.startswith("float") and not math.isfinite(value):
        raise UnicompError(f"{where}: {f.name} must be a finite number, got {value!r}")
    return float(value) if kind.startswith("float") else value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build a config dataclass, rejecting unknown keys and wrongly typed values with a
    message naming them."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kind = getattr(cls, "kind", None)  # a run's config.yaml names its family: this one's
    if kind is not None and "kind" in data:
        data = dict(data)
        given = data.pop("kind")
        if given != kind:
            raise UnicompError(
                f"{where}: kind {given!r}: the config of another family of runs than {kind}"
            )
    # YAML keys can be numbers or hold control characters: keep the message on one line.
    unknown = sorted(k if k.isprintable() else repr(k) for k in map(str, set(data) - set(names)))
    if unknown:
        raise UnicompError(
            f"{where}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(names)}"
        )
    kwargs = {}
    for key, value in data.items():
        if key == "train":
            if not isinstance(value, dict | None):
                raise UnicompError(f"{where}: train must be a mapping, got {value!r}")
            kwargs[key] = from_dict(TrainConfig, value or {}, f"{where}: train")
        else:
            kwargs[key] = _checked(names[key], value, where)
    return cls(**kwargs)


def save_yaml(cfg: Any, path: Path, comments: list[str] | tuple[str, ...] = ()) -> None:
    """``cfg`` as YAML, a run config's ``kind`` first; ``comments`` as ``# ...`` lines at the
    end (facts for the reader that loading ignores, e.g. the device ``auto`` resolved to)."""
    from unicomp.files import atomic_write_text

    data = to_dict(cfg)
    kind = getattr(type(cfg), "kind", None)
    text = yaml.safe_dump({"kind": kind, **data} if kind else data, sort_keys=False)
    atomic_write_text(path, text + "".join(f"# {line}\n" for line in comments))


# The families a run folder may record (unicomp.experiments.kinds), and what messages call
# their runs.
KIND_TITLES = {
    "fpt": "an FPT run",
    "perceiver": "a Perceiver run",
    "dt": "a Decision Transformer / behaviour cloning run",
    "external": "a run of another program (dt external)",
    "ts-baseline": "a time-series baseline run (ts baseline)",
}


def recorded_kind(config: dict | None, metrics: dict | None = None) -> str | None:
    """The family of a run (unicomp.experiments.kinds) from its records: its config.yaml's
    ``kind``; for folders written before runs recorded it, the fields only that family's
    config.yaml has, and for runs of other programs (no config.yaml) metrics.json's task;
    None for anything else. The one place that tells the families apart by their fields."""
    if config is None:
        return "external" if (metrics or {}).get("task") == "offline-rl" else None
    if "kind" in config:
        return str(config["kind"])
    if "data" in config or "algo" in config:
        return "dt"
    if "backbone" in config or "freeze" in config:
        return "fpt"
    if "model" in config or "num_latents" in config:
        return "perceiver"
    if "method" in config:
        return "ts-baseline"
    return None


# Deeper than any config; a YAML nested thousands deep would exhaust Python's recursion
# (PyYAML's composer recurses per level) and end in a RecursionError traceback.
MAX_YAML_DEPTH = 100


class StrictYAMLLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what it would silently resolve or crash on: a key
    given twice in one mapping (SafeLoader keeps the last) and nesting deeper than
    ``MAX_YAML_DEPTH``. Both are ``yaml.YAMLError``s naming the line."""

    _depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self._depth >= MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested more than {MAX_YAML_DEPTH} levels deep (line {mark.line + 1})",
                mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}  # key -> the line it was first given on
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    given = key in lines
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    continue
                if given:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} given twice (lines {lines[key]} and {line}); keep one",
                        key_node.start_mark,
                    )
                lines[key] = line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML text as data: safe tags only, no duplicate keys, bounded nesting
    (:class:`StrictYAMLLoader`)."""
    return yaml.load(text, Loader=StrictYAMLLoader)  # noqa: S506 (a SafeLoader)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise UnicompError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:  # a folder, unreadable, not UTF-8 text
        raise UnicompError(f"config file {path}: cannot read it ({err})") from None
    except yaml.YAMLError as err:
        raise UnicompError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UnicompError(f"config file {path}: expected a mapping at the top level")
    return data


# --- CLI generation ------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_task_args(items: list[str]) -> dict[str, Any]:
    """``--task-arg KEY=VALUE`` flags as a dict, each value read as YAML; one-line errors."""
    pairs = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise UnicompError(f"--task-arg {item!r}: expected KEY=VALUE")
        try:
            pairs[k] = _parse_value(v)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UnicompError(f"--task-arg {item!r}: bad YAML value ({problem})") from None
    return pairs


def _parse_value(text: str) -> Any:
    return yaml_number(parse_yaml(text))  # numbers (1e-3 too), booleans, null


_Number = TypeVar("_Number", int, float)


def comma_numbers(text: str, kind: type[_Number], flag: str) -> list[_Number]:
    """``"8,16, 32"`` -> [8, 16, 32]: each comma-separated item as ``kind`` (int or float),
    empty items skipped; a bad item is a one-line error naming ``flag``."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise UnicompError(f"{flag} {text!r}: expected {noun} separated by commas") from None


# A flag given as "none" or "null" for an optional field: distinct from "flag not given".
_NULL = type("Null", (), {"__repr__": lambda self: "null"})()


def _converter(kind: str):
    """``int``, ``float | None`` ... -> a function turning the flag's text into that type."""
    base = {"int": int, "float": float}.get(kind.split(" |")[0], str)
    if not kind.endswith("| None"):
        return base

    def convert(text: str):
        return _NULL if text.lower() in ("none", "null") else base(text)

    convert.__name__ = base.__name__  # argparse names the type in its error message
    return convert


class HelpFormatter(argparse.HelpFormatter):
    """States each option's default once, as ``[default: X]``: the text add_dataclass_args
    attaches (computed only when help is printed: task defaults import the task classes),
    else the argparse default where it is a value (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = getattr(action, "shown_default", None)
        if shown is not None:
            shown = shown()
        elif action.option_strings and not (
            action.default is None or action.default is False or action.default == "==SUPPRESS=="
        ):
            shown = _show(action.default)
        if shown is None:
            return text
        return f"{text} [default: {str(shown).replace('%', '%%')}]"


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def train_settings(defaults: dict, given: dict) -> dict:
    """The train settings of a run: the task's ``defaults`` under the ``given`` ones (--config,
    flags). A default ``warmup_fraction`` (not a setting of its own) makes the warm-up that
    fraction of the run's steps where ``warmup_steps`` is not given: the DT's 0.1, the paper's
    10,000 of 100,000 steps, so that a short run is not spent inside a 10,000-step warm-up."""
    defaults = dict(defaults)
    fraction = defaults.pop("warmup_fraction", None)  # given, it is an unknown key
    settings = {**defaults, **given}
    if fraction is not None and "warmup_steps" not in given:
        steps = settings.get("steps", TrainConfig.steps)
        if isinstance(steps, int) and not isinstance(steps, bool):  # else from_dict says why
            settings["warmup_steps"] = max(0, round(fraction * steps))
    return settings


def task_train_defaults(task_defaults: Any, task: str) -> TrainConfig:
    """The TrainConfig a run of ``task`` gets before --config and flags: the field defaults
    under ``task_defaults(task)`` (the task's ``default_train``, or the Perceiver or DT
    defaults); what resolve() starts from, --help states and ``unicomp list --task`` prints."""
    settings = train_settings(task_defaults(task), {})
    return from_dict(TrainConfig, settings, f"training defaults of task {task}")


def _task_loads(name: str) -> bool:
    """Whether task ``name``'s class can be imported here. A task of another package (entry
    point, ``register_task``) whose module cannot be imported (a package it needs is not
    installed here) is left out of the defaults --help states, so that one broken plug-in
    does not break every command's --help; running that task reports the ImportError. A
    built-in task that cannot be imported is a bug of ours: it raises."""
    from unicomp.tasks.catalog import TASKS

    entry = TASKS.entry(name)
    try:
        entry.load()
    except ImportError:
        if entry.origin == "catalog":
            raise
        return False
    return True


def _train_default_text(cls: type, task_defaults: Any) -> Any:
    """For each TrainConfig field: a function giving its resolved default for --help. One
    value where every task resolves to it (DT has one task); else "task default", with the
    value for the default task."""
    fixed = "task" not in {f.name for f in dataclasses.fields(cls)}  # DTConfig: always "dt"
    main_task = cls().task
    cache: dict[str, Any] = {}

    def table() -> dict[str, TrainConfig]:
        if "table" not in cache:
            from unicomp.tasks.catalog import TASKS

            tasks = [main_task] if fixed else [t for t in TASKS.names() if _task_loads(t)]
            cache["table"] = {t: task_train_defaults(task_defaults, t) for t in tasks}
        return cache["table"]

    def text(name: str) -> Any:
        def shown() -> str:
            configs = table()
            values = {_show(getattr(c, name)) for c in configs.values()}
            main = _show(getattr(configs[main_task], name))
            fraction = task_defaults(main_task).get("warmup_fraction")
            if name == "warmup_steps" and fixed and fraction is not None:
                return f"{fraction:.0%} of --steps ({main} at {configs[main_task].steps})"
            if len(values) == 1:
                return main
            return f"task default ({main} for {main_task}; others: unicomp list --task NAME)"

        return shown

    return text


def given_once(hint: str) -> type[argparse.Action]:
    """A flag that a second use would silently override: the second is an error, ``hint``
    saying what to write instead."""

    class Once(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if getattr(namespace, self.dest, None) is not None:
                raise argparse.ArgumentError(self, f"given more than once; {hint}")
            setattr(namespace, self.dest, values)

    return Once


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, task_defaults: Any = None, _train_text: Any = None
) -> None:
    """One flag per field (nested TrainConfig fields flattened); every default is None so
    that only flags the user typed override the lower layers. ``task_defaults`` (what
    resolve() is given) makes --help state each training setting's resolved default
    (shown with :class:`HelpFormatter`)."""
    for f in dataclasses.fields(cls):
        if f.name == "train":
            text = _train_default_text(cls, task_defaults) if task_defaults else None
            add_dataclass_args(parser, TrainConfig, _train_text=text)
            continue
        help_text = f.metadata.get("help", "")
        if f.name == "task_args":
            parser.add_argument(
                "--task-arg",
                dest="task_args",
                action="append",
                default=None,
                metavar="KEY=VALUE",
                help=help_text + "; the task's are listed by unicomp list --task NAME",
            )
            continue
        if f.type in ("bool", bool):
            action = parser.add_argument(
                _flag(f.name),
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            once = f.metadata.get("once")
            action = parser.add_argument(
                _flag(f.name),
                dest=f.name,
                type=_converter(str(f.type)),
                default=None,
                choices=f.metadata.get("choices"),
                help=help_text,
                **({"action": given_once(once)} if once else {}),
            )
        explained = "default" in help_text or "null:" in help_text  # its help says what None does
        if _train_text is not None:
            action.shown_default = _train_text(f.name)
        elif not (f.default == "" or (f.default is None and explained)):
            action.shown_default = lambda value=f.default: _show(value)


def resolve(cls: type, args: argparse.Namespace, task_defaults: Any) -> Any:
    """Build the resolved config from the layers described in the module docstring.
    ``task_defaults(task_name) -> dict`` gives the task's TrainConfig overrides."""
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}
    where = f"config file {args.config}" if getattr(args, "config", None) else "config"
    if getattr(args, "config", None):
        data = load_yaml(args.config)
        train = data.pop("train", None) or {}
        for name, value in (("train", train), ("task_args", data.get("task_args") or {})):
            if not isinstance(value, dict):
                raise UnicompError(f"{where}: {name} must be a mapping, got {value!r}")
        if data.get("task_args"):
            data["task_args"] = {k: yaml_number(v) for k, v in data["task_args"].items()}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in vars(args).items():
        if value is None or key in ("config", "func", "command", "sub", "resume", "overwrite"):
            continue
        if value is _NULL:
            value = None
        if key == "task_args":
            data["task_args"] = {**(data.get("task_args") or {}), **parse_task_args(value)}
        elif key in train_fields:
            train[key] = value
        else:
            data[key] = value
    task = data.get("task", cls().task)
    if not isinstance(task, str):
        raise UnicompError(f"{where}: task must be str, got {task!r}")
    if "task_source" in {f.name for f in dataclasses.fields(cls)}:
        from unicomp.tasks.catalog import TASK_SHORTHANDS, ensure_task, expand_task

        task_args = dict(data.get("task_args") or {})
        shorthand = TASK_SHORTHANDS.get(task.partition(":")[0]) if ":" in task else None
        if (
            shorthand
            and getattr(args, "task", None)
            and not any(
                item.partition("=")[0] == shorthand
                for item in getattr(args, "task_args", None) or []
            )
        ):  # --task array:NEW over a --config's path: the flag wins, as flags do
            task_args.pop(shorthand, None)
        task, task_args = expand_task(task, task_args)
        if task != data.get("task", cls().task):
            data["task"], data["task_args"] = task, task_args
        ensure_task(task, data.get("task_source"), where)
    data["train"] = train_settings(task_defaults(task), train)
    return check_config(from_dict(cls, data, where), where)


# --- ranges: one place checks every value before anything is built or written -----------------
_MAX_BATCH = 1 << 20  # examples in one batch; far above any task here, far below memory errors
_MAX_LR = 1e6
# Optimizer steps: 10^9 is past any run here (the DT paper's longest is 10^5; the FPT paper's
# 10^5 too) and keeps a typo such as 1e26 from being a run that never ends.
MAX_STEPS = 10**9
MAX_EVAL_EPISODES = 10**6  # per target return; each is at least one environment step
MAX_SEED = 2**63 - 1


def _range_problems(cfg: Any) -> list[str]:
    """Each value outside its range, as ``name must be ..., got value``."""
    problems: list[str] = []

    def need(ok: bool, name: str, what: str, value: Any) -> None:
        if not ok:
            problems.append(f"{name} must be {what}, got {value!r}")

    def at_least(name: str, low: int | float, obj: Any, high: int | float | None = None) -> None:
        value = getattr(obj, name)
        top = "" if high is None else f" and <= {high}"
        need(low <= value and (high is None or value <= high), name, f">= {low}{top}", value)

    def fraction(name: str, obj: Any, top_open: bool = True) -> None:
        value = getattr(obj, name)
        if value is None:
            return
        ok = 0 <= value < 1 if top_open else 0 <= value <= 1
        need(ok, name, "in [0, 1)" if top_open else "in [0, 1]", value)

    t = cfg.train if hasattr(cfg, "train") else cfg
    at_least("steps", 1, t, MAX_STEPS)
    at_least("batch_size", 1, t, _MAX_BATCH)
    at_least("grad_accum", 1, t, _MAX_BATCH)
    need(t.lr > 0 and t.lr < _MAX_LR, "lr", f"> 0 and < {_MAX_LR:g}", t.lr)
    at_least("weight_decay", 0, t)
    at_least("warmup_steps", 0, t, MAX_STEPS)
    at_least("grad_clip", 0, t)
    at_least("eval_every", 1, t, MAX_STEPS)
    at_least("eval_batch_size", 1, t, _MAX_BATCH)
    need(0 <= t.seed <= MAX_SEED, "seed", f"in 0..{MAX_SEED}", t.seed)
    fraction("target_accuracy", t, top_open=False)
    at_least("time_limit_minutes", 0, t)
    at_least("patience", 0, t)
    if not problems and t.batch_size % t.grad_accum:
        problems.append(f"batch_size {t.batch_size} must be divisible by grad_accum {t.grad_accum}")
    device_problem = _device_problem(t.device)
    if device_problem:
        problems.append(device_problem)
    if isinstance(cfg, FPTConfig):
        fraction("backbone_dropout", cfg)
        if cfg.backbone_layers is not None:
            at_least("backbone_layers", 1, cfg, 1 << 10)
    elif isinstance(cfg, PerceiverConfig):
        for name in ("num_latents", "d_latent", "num_blocks", "self_attends_per_block"):
            at_least(name, 1, cfg, 1 << 16)
        at_least("num_heads", 1, cfg, 1 << 10)
        at_least("widening", 1, cfg, 1 << 10)
        fraction("dropout", cfg)
    elif isinstance(cfg, DTConfig):
        at_least("context", 1, cfg, 1 << 16)
        need(cfg.rtg_scale > 0, "rtg_scale", "> 0", cfg.rtg_scale)
        at_least("max_ep_len", 1, cfg, 1 << 24)
        at_least("hidden_size", 1, cfg, 1 << 16)
        at_least("n_layer", 1, cfg, 1 << 10)
        at_least("n_head", 1, cfg, 1 << 10)
        if cfg.n_head >= 1 and cfg.hidden_size % cfg.n_head:
            problems.append(
                f"n_head must divide hidden_size, got n_head {cfg.n_head} for hidden_size "
                f"{cfg.hidden_size}"
            )
        fraction("dropout", cfg)
        if cfg.freeze != "full" and not cfg.backbone:
            problems.append(f"freeze {cfg.freeze!r} needs a backbone (--backbone NAME)")
        fraction("val_fraction", cfg)
        fraction("test_fraction", cfg)
        if cfg.val_fraction + cfg.test_fraction >= 1:
            problems.append("val_fraction + test_fraction must be < 1")
        need(0 < cfg.top_percent <= 100, "top_percent", "in (0, 100]", cfg.top_percent)
        at_least("eval_episodes", 0, cfg, MAX_EVAL_EPISODES)
        at_least("eval_envs", 1, cfg, 1 << 12)
        at_least("eval_max_steps", 0, cfg, MAX_STEPS)
        need(0 <= cfg.eval_seed <= MAX_SEED, "eval_seed", f"in 0..{MAX_SEED}", cfg.eval_seed)
    return problems


def _device_problem(device: str) -> str | None:
    """None if ``device`` names a device this machine has, else why not."""
    if device in ("auto", "cpu"):
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        return f"device must be auto, cpu, cuda or cuda:N, got {device!r}"
    if parsed.type == "cpu":
        return None
    if parsed.type != "cuda":
        return f"device must be auto, cpu, cuda or cuda:N, got {device!r}"
    if not torch.cuda.is_available():
        return f"device {device!r}: this machine (torch {torch.__version__}) has no CUDA device"
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        return f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
    return None


def check_config(cfg: Any, where: str = "config") -> Any:
    """Raise one UnicompError naming every value outside its range (``steps: 0``, ``lr: -1``,
    ``device: banana``, DT heads that do not divide the width, ...); else return ``cfg``.
    Called when a config is resolved and again before a run writes anything."""
    problems = _range_problems(cfg)
    if problems:
        raise UnicompError(f"{where}: {'; '.join(problems)}")
    return cfg
