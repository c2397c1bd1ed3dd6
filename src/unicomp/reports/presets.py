"""What each preset of ``unicomp reproduce`` runs: its experiments' sizes (:func:`preset`) and
its runs as job-runner cells (:mod:`unicomp.tools.jobs`).

- FPT (``fpt``, ``size``): ``unicomp fpt ablate`` suites written to ``OUT/_suites/``
  (:func:`suite_file`);
- Decision Transformer (``dt``) and Perceiver (``perceiver``): one cell per row, seed and
  learning rate (:func:`job_cells`);
- MinAtar (``atari``): per game and row, the first seed at every rate of the grid, the other
  seeds at the rate the first seed's validation loss chose (:func:`atari_cells`).

:func:`pick_jobs` picks, per row and seed, the cell of the learning-rate grid the claims read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from unicomp.errors import UnicompError
from unicomp.files import atomic_write_text
from unicomp.tools.jobs import Cell, finished_metrics

PRESETS = ("tiny", "quick", "paper", "minatar")
GROUPS = ("fpt", "size", "dt", "perceiver", "atari")

# Paper figures of the bit-XOR rows (REFERENCE_RESULTS.md, GPT-2 base).
_XOR_PAPER = {"FPT": 100, "frozen random init": 100, "full transformer": 100, "LSTM": 50.1,
              "output only": 56, "+ norms": 98, "+ input": 98}  # fmt: skip


def _fpt_tables(backbone: str, layers: int, lstm: str, lstm_lr: float) -> list[dict]:
    def row(label, **kw):
        return {"label": label, "backbone": backbone, "freeze": "paper", **kw} | (
            {"paper": _XOR_PAPER[label]} if label in _XOR_PAPER else {}
        )

    rand = f"random:{backbone}"
    return [
        {"title": "Backbones (Table 1)", "rows": [
            row("FPT"),
            row("frozen random init", backbone=rand),
            row("full transformer", backbone=rand, backbone_layers=layers, freeze="full"),
            row("LSTM", backbone=lstm, freeze="full", train={"lr": lstm_lr}),
        ]},
        {"title": "Parameters finetuned (Tables 9-13)", "rows": [
            row("output only", freeze="output-only"),
            row("+ norms", freeze="output+norm"),
            row("+ input", freeze="output+norm+input"),
            row("FPT"),
            row("+ feed-forward", freeze="+ff"),
            row("+ attention", freeze="+attn"),
            row("norms frozen", freeze="no-norm"),
        ]},
    ]  # fmt: skip


def _size_tables(small: str, large: str) -> list[dict]:
    return [{"title": "Model size", "rows": [
        {"label": "smaller FPT", "backbone": small, "freeze": "paper"},
        {"label": "larger FPT", "backbone": large, "freeze": "paper"},
    ]}]  # fmt: skip


# The learning-rate grid of the presets' sweeps: every compared row gets the rate of the grid
# with the best validation score (accuracy; a DT's loss), per seed, then is tested once.
_LRS = [3e-4, 1e-3, 3e-3]


def _dt_runs() -> dict[str, dict]:
    """The DT runs every preset trains on its Key-to-Door data (DTConfig fields)."""
    return {
        "DT": {},
        "DT K=1": {"context": 1},
        "BC": {"algo": "bc"},
        "DT delayed reward": {"delayed_reward": True},
    }


def _atari_runs() -> dict[str, dict]:
    """The rows every MinAtar game trains (DTConfig fields)."""
    return {"DT": {}, "DT K=1": {"context": 1}, "BC": {"algo": "bc"}}


# The paper's Atari DT (configs/dt-minatar.yaml): K=30, 6 layers, 8 heads, width 128.
_MINATAR_DT = {"context": 30, "rtg_scale": 1.0, "max_ep_len": 10_000, "hidden_size": 128,
               "n_layer": 6, "n_head": 8, "dropout": 0.1, "eval_sample": True,
               "eval_episodes": 20, "eval_envs": 20, "eval_max_steps": 10_000}  # fmt: skip


def preset(name: str, out: Path) -> dict:
    """The experiments of one preset; ``out`` is where tiny writes its random backbones."""
    if name == "tiny":
        small, large = str(out / "_backbones" / "gpt2-w32"), str(out / "_backbones" / "gpt2-w64")
        return {
            "about": "a smoke test (seconds per run): tiny random GPT-2s (2 layers, width 32 "
            "and 64) stand in for the pretrained models, a few steps each; verdicts mean "
            "nothing at this size",
            "expected": "about 1.5 CPU-minutes (each FPT run is a process of its own)",
            "tiny_backbones": {small: 32, large: 64},
            "decides": False,
            "fpt": {"task": "bit-xor", "seeds": [0], "chance": 0.5,
                    "train": {"steps": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 3,
                              "eval_batch_size": 64, "target_accuracy": 0.99},
                    "tables": _fpt_tables(small, 1, "lstm:1x32", 3e-4)},
            "size": {"task": "bit-xor", "seeds": [0],
                     "train": {"steps": 6, "batch_size": 8, "lr": 3e-3, "eval_every": 3,
                               "eval_batch_size": 64},
                     "tables": _size_tables(small, large)},
            "dt": {"episodes": 200, "seeds": [0], "runs": _dt_runs(),
                   "settings": {"context": 4, "max_ep_len": 16, "rtg_scale": 0.1,
                                "hidden_size": 16, "n_layer": 1, "dropout": 0.0,
                                "eval_targets": "1,0", "eval_episodes": 20, "eval_envs": 20,
                                "train": {"steps": 10, "batch_size": 16, "lr": 1e-3,
                                          "warmup_steps": 0, "eval_every": 5}}},
            "perceiver": {"task": "digits-inpaint", "seeds": [0],
                          "settings": {"num_latents": 8, "d_latent": 16, "num_blocks": 1,
                                       "self_attends_per_block": 1,
                                       "train": {"steps": 10, "eval_every": 5,
                                                 "batch_size": 16}}},
            "atari": {"games": ["MinAtar/Breakout-v1"], "seeds": [0, 1], "lrs": [1e-3, 3e-3],
                      "runs": _atari_runs(),
                      "dqn": {"steps": 400, "eval_every": 200, "eval_episodes": 2,
                              "learning_starts": 100},
                      "settings": {"context": 4, "rtg_scale": 1.0, "max_ep_len": 1000,
                                   "hidden_size": 16, "n_layer": 1, "n_head": 1,
                                   "dropout": 0.0, "eval_episodes": 4, "eval_envs": 4,
                                   "eval_max_steps": 50, "eval_sample": True,
                                   "train": {"steps": 4, "batch_size": 8, "lr": 1e-3,
                                             "warmup_steps": 0, "eval_every": 2}}},
        }  # fmt: skip
    if name == "quick":
        return {
            "about": "2 CPU cores, offline: bit XOR on minilm-l6 for the FPT claims, 3 seeds, "
            "every row at its learning rate chosen on validation (3e-4, 1e-3, 3e-3; at most "
            "300 steps of batch 32, no early stopping); model size as minilm-l6 against "
            "smollm2-135m (3 seeds, 150 steps, lr 3e-3); Key-to-Door from 3,000 random-policy "
            "episodes, a 2-layer width-32 DT, DT K=1, BC and DT with delayed rewards, each "
            "at its learning rate chosen on validation loss (3e-4, 1e-3, 3e-3; 3 seeds, "
            "1,500 steps, 300 evaluation episodes per target); Perceiver IO against Perceiver "
            "on digits-inpaint (3 seeds, 400 steps, learning rate chosen on validation)",
            "fpt": {"task": "bit-xor", "seeds": [0, 1, 2], "chance": 0.5,
                    "protocol": "sweep", "sweep": {"lrs": _LRS, "patience": 0},
                    "train": {"steps": 300, "batch_size": 32, "lr": 3e-3, "eval_every": 25,
                              "target_accuracy": 0.99},
                    "tables": _fpt_tables("minilm-l6", 3, "lstm:3x384", 3e-4)},
            "size": {"task": "bit-xor", "seeds": [0, 1, 2],
                     "train": {"steps": 150, "batch_size": 32, "lr": 3e-3, "eval_every": 25,
                               "target_accuracy": 0.99},
                     "tables": _size_tables("minilm-l6", "smollm2-135m")},
            "dt": {"episodes": 3000, "seeds": [0, 1, 2], "runs": _dt_runs(), "lrs": _LRS,
                   "settings": {"context": 16, "max_ep_len": 16, "rtg_scale": 0.1,
                                "hidden_size": 32, "n_layer": 2, "dropout": 0.0,
                                "eval_targets": "1,0", "eval_episodes": 300, "eval_envs": 100,
                                "train": {"steps": 1500, "batch_size": 64, "lr": 2e-3,
                                          "warmup_steps": 100, "eval_every": 250}}},
            "perceiver": {"task": "digits-inpaint", "seeds": [0, 1, 2], "lrs": _LRS,
                          "settings": {"train": {"steps": 400, "eval_every": 50}}},
        }  # fmt: skip
    if name == "paper":
        return {
            "about": "for a GPU: the paper's protocol where this library has it: bit XOR "
            "and model size at 3 seeds and 5,000 steps at the paper's lr 1e-3 (the paper "
            "reports convergence at 5e2 steps for FPT, 2e4 for random init), the paper's "
            "3-layer full transformer and 3 x 768 LSTM; Key-to-Door from 10,000 random "
            "episodes with the paper's gym DT size (3 layers, width 128), 3 seeds, 10,000 "
            "steps; Perceivers at 3 seeds, 5,000 steps",
            "expected": "not measured; estimated at 1-3 hours on one GPU (docs/reproduce.md)",
            "fpt": {"task": "bit-xor", "seeds": [0, 1, 2], "chance": 0.5,
                    "train": {"steps": 5000, "batch_size": 32, "lr": 1e-3, "eval_every": 100,
                              "target_accuracy": 0.99},
                    "tables": _fpt_tables("minilm-l6", 3, "lstm:3x768", 3e-4)},
            "size": {"task": "bit-xor", "seeds": [0, 1, 2],
                     "train": {"steps": 5000, "batch_size": 32, "lr": 1e-3, "eval_every": 100,
                               "target_accuracy": 0.99},
                     "tables": _size_tables("minilm-l6", "smollm2-135m")},
            "dt": {"episodes": 10000, "seeds": [0, 1, 2], "runs": _dt_runs(),
                   "settings": {"context": 16, "max_ep_len": 16, "rtg_scale": 0.1,
                                "hidden_size": 128, "n_layer": 3, "dropout": 0.1,
                                "eval_targets": "1,0", "eval_episodes": 1000,
                                "eval_envs": 100,
                                "train": {"steps": 10000, "batch_size": 64, "lr": 1e-4,
                                          "warmup_steps": 1000, "eval_every": 1000}}},
            "perceiver": {"task": "digits-inpaint", "seeds": [0, 1, 2],
                          "settings": {"train": {"steps": 5000, "eval_every": 250}}},
        }  # fmt: skip
    if name == "minatar":
        return {
            "about": "2 CPU cores, offline: the DT paper's Atari comparisons on MinAtar "
            "Breakout and Seaquest; per game a data set of 500,000 transitions (the paper's 1% "
            "of DQN Replay) made by a DQN learning from scratch (MinAtar's network and "
            "settings), then the paper's Atari DT (K=30, 6 layers, 8 heads, width 128), DT "
            "K=1 and BC, 3 seeds, 1,000 steps of batch 64 (2.5% of the paper's 20,000 x 128), "
            "each row's learning rate chosen on validation loss with seed 0 (3e-4, 1e-3), 20 "
            "evaluation episodes per target; scores normalised between the random policy (0) "
            "and the DQN that made the data (100)",
            "expected": "hours on 2 CPU cores; resumable (a killed call goes on from its "
            "checkpoints and finished runs)",
            "atari": {"games": ["MinAtar/Breakout-v1", "MinAtar/Seaquest-v1"],
                      "seeds": [0, 1, 2], "lrs": [3e-4, 1e-3], "runs": _atari_runs(),
                      "dqn": {"steps": 500_000, "eval_every": 50_000, "eval_episodes": 10},
                      "cql": {"steps": 100_000},
                      "settings": {**_MINATAR_DT,
                                   "train": {"steps": 1000, "batch_size": 64, "lr": 6e-4,
                                             "weight_decay": 0.1, "warmup_steps": 100,
                                             "grad_clip": 1.0, "precision": "fp32",
                                             "eval_every": 100}}},
        }  # fmt: skip
    raise UnicompError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")


def suite_file(out: Path, name: str, spec: dict) -> Path:
    data = {"name": name, "description": f"unicomp reproduce: the {name} claims",
            "protocol": spec.get("protocol", "paper"),
            **{k: spec[k] for k in ("task", "seeds", "train", "tables")}}  # fmt: skip
    if "sweep" in spec:
        data["sweep"] = spec["sweep"]
    if "task_args" in spec:
        data["task_args"] = spec["task_args"]
    path = out / "_suites" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def job_cells(out: Path, spec: dict) -> list[Cell]:
    """The DT, Perceiver and MinAtar runs of a preset as cells (key, label, seed, config)."""
    from unicomp.config import DTConfig, PerceiverConfig, check_config, from_dict

    cells = []
    if "dt" in spec:
        d = spec["dt"]
        for label, extra in d["runs"].items():
            for seed in d["seeds"]:
                for lr in d.get("lrs") or [None]:
                    key = f"dt/{label.lower().replace(' ', '-').replace('=', '')}/s{seed}"
                    key += "" if lr is None else f"/lr{lr:g}"
                    data = {**d["settings"], **extra, "data": str(out / "dt" / "key-to-door")}
                    data["train"] = {**d["settings"]["train"], "seed": seed, "progress": False}
                    if lr is not None:
                        data["train"]["lr"] = lr
                    cfg = check_config(from_dict(DTConfig, data, f"preset dt {label}"))
                    cfg.out = str(out / key)
                    cells.append(Cell(key, label, "dt", seed, cfg, lr=lr))
    if "perceiver" in spec:
        p = spec["perceiver"]
        from unicomp.experiments.perceiver import perceiver_task_defaults

        for model in ("perceiver-io", "perceiver"):
            for seed in p["seeds"]:
                for lr in p.get("lrs") or [None]:
                    key = f"perceiver/{model}/s{seed}" + ("" if lr is None else f"/lr{lr:g}")
                    data = {**p["settings"], "task": p["task"], "model": model}
                    data["train"] = {**perceiver_task_defaults(p["task"]),
                                     **p["settings"].get("train", {}), "seed": seed,
                                     "progress": False}  # fmt: skip
                    if lr is not None:
                        data["train"]["lr"] = lr
                    cfg = check_config(
                        from_dict(PerceiverConfig, data, f"preset perceiver {model}")
                    )
                    cfg.out = str(out / key)
                    cells.append(Cell(key, model, "perceiver", seed, cfg, lr=lr))
    if "atari" in spec:
        cells += atari_cells(out, spec["atari"])
    return cells


def game_slug(env_id: str) -> str:
    """ "breakout" for "MinAtar/Breakout-v1"."""
    return env_id.split("/")[-1].split("-v")[0].lower()


def atari_cells(out: Path, a: dict) -> list[Cell]:
    """Per game and row: the first seed at every rate of the grid; the other seeds at the rate
    the first seed's validation loss chose, once those runs are finished (until then they
    are not cells yet: the second round of :func:`unicomp.reports.reproduce.reproduce`)."""
    cells = []
    first, others = a["seeds"][0], a["seeds"][1:]
    for game in a["games"]:
        g = game_slug(game)
        for label in a["runs"]:
            row = f"atari/{g}/" + label.lower().replace(" ", "-").replace("=", "")
            grid = [_atari_cell(out, a, game, label, first, lr, f"{row}/s{first}/lr{lr:g}")
                    for lr in a["lrs"]]  # fmt: skip
            cells += grid
            done = [c for c in grid if (Path(c.cfg.out) / "metrics.json").is_file()]
            if len(done) == len(grid):
                for c in done:
                    c.status = "skipped"
                chosen = pick_jobs(grid)[0].lr
                cells += [_atari_cell(out, a, game, label, seed, chosen, f"{row}/s{seed}")
                          for seed in others]  # fmt: skip
    return cells


def _atari_cell(out: Path, a: dict, game: str, label: str, seed: int, lr: float, key: str) -> Cell:
    from unicomp.config import DTConfig, check_config, from_dict

    data = {**a["settings"], **a["runs"][label], "data": str(out / "atari" / game_slug(game))}
    data["train"] = {**a["settings"]["train"], "seed": seed, "progress": False, "lr": lr}
    cfg = check_config(from_dict(DTConfig, data, f"preset atari {game} {label}"))
    cfg.out = str(out / key)
    return Cell(key, label, f"atari:{game}", seed, cfg, lr=lr)


def cql_folder(out: Path, game: str, seed: int) -> Path:
    return out / "atari" / game_slug(game) / "cql" / f"s{seed}"


def pick_jobs(cells: list[Cell]) -> list[Cell]:
    """Per row and seed, the learning rate of the grid with the best validation score (a DT's
    lowest validation loss, a Perceiver's highest validation accuracy; ties: the lower rate):
    the runs the claims read. Cells without a grid pass through."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.table, cell.row, cell.seed), []).append(cell)
    chosen = []
    for group in groups.values():
        done = [(c, m) for c in group if (m := finished_metrics(c)) is not None]
        if len(group) == 1 or not done:
            chosen.append(group[0])
            continue

        def score(item):
            cell, m = item
            val = m["val_accuracy"] if cell.table == "perceiver" else -m["val_loss"]
            return (val, -(cell.lr or 0))

        chosen.append(max(done, key=score)[0])
    return chosen


def describe_run(cfg: Any) -> str:
    """A DT or Perceiver run's settings in one line (``--dry-run``)."""
    t = cfg.train
    if cfg.kind == "dt":
        what = (
            f"dt {cfg.algo} K={cfg.context} delayed_reward={cfg.delayed_reward} "
            f"{cfg.n_layer} layers x {cfg.hidden_size} data={cfg.data}"
        )
    else:
        what = f"{cfg.task} {cfg.model} {cfg.num_latents} latents x {cfg.d_latent}"
    return f"{what} steps={t.steps} lr={t.lr:g} batch={t.batch_size}"
