"""Every claim of the three papers, checked by one command: ``unicomp reproduce``.

    unicomp reproduce --preset tiny|quick|paper [--claims NAME,...] [--out DIR] [--jobs N]

A registry (:data:`CLAIMS`) names each claim of ../shared/MISSION.md with the paper's figure,
the experiments it needs and a verdict rule. A preset (:func:`preset`) sizes the experiments:

- FPT (``fpt``, ``size``): ``unicomp fpt ablate`` suites written to ``OUT/_suites/`` and run
  by :mod:`unicomp.ablate` (same cells, same skipping of finished runs, same tables and plots);
- Decision Transformer (``dt``): a Key-to-Door data set collected by a random policy
  (:func:`unicomp.rl.collect.collect`), then DT, DT K=1, BC and DT with delayed rewards
  trained and evaluated by :func:`unicomp.experiments.dt.run_dt` (``unicomp dt train``);
- Perceiver (``perceiver``): Perceiver IO and the plain Perceiver on the dense
  ``digits-inpaint`` task (:func:`unicomp.experiments.perceiver.run_perceiver`);
- the DT's Atari half at CPU scale (``atari``, the ``minatar`` preset): per MinAtar game, a
  data set made like DQN Replay (a learning DQN's whole experience,
  :func:`unicomp.rl.dqn_training.train_dqn_stream`), then DT (K=30), DT K=1 and BC, each row's
  learning rate chosen on validation loss with the first seed, the other seeds at that rate.

Every run is an ordinary run folder under ``OUT``; a finished one is skipped on a re-run (its
config.yaml checked against what the preset asks), a killed one resumes. Then
``OUT/report.md``, ``OUT/report.html`` (one self-contained page: images embedded as data:
URIs, no external resource) and ``OUT/claims.json`` are written.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from unicomp.ablate import Cell, _plan, load_suite, report_suite, run_suites
from unicomp.claims import CLAIM_NAMES, CLAIMS, Evidence, judge, select_claims
from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json, atomic_write_text
from unicomp.plots import plot_returns, pyplot, save_figure
from unicomp.runs import markdown_table, mean_std
from unicomp.verdicts import VERDICTS

PRESETS = ("tiny", "quick", "paper", "minatar")
__all__ = ["CLAIMS", "CLAIM_NAMES", "PRESETS", "VERDICTS", "preset", "reproduce"]
GROUPS = ("fpt", "size", "dt", "perceiver", "atari")

# --- presets ---------------------------------------------------------------------------------

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


# --- running ---------------------------------------------------------------------------------


def _make_tiny_backbones(backbones: dict[str, int]) -> None:
    """Seeded random GPT-2 folders (2 layers) for the tiny preset, written once."""
    import torch
    from transformers import GPT2Config, GPT2Model

    for folder, width in backbones.items():
        if (Path(folder) / "config.json").is_file():
            continue
        torch.manual_seed(0)
        cfg = GPT2Config(n_layer=2, n_embd=width, n_head=2, n_positions=64, vocab_size=64,
                         bos_token_id=0, eos_token_id=0)  # fmt: skip
        tmp = Path(folder + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        GPT2Model(cfg).save_pretrained(tmp)
        tmp.rename(folder)


def _suite_file(out: Path, name: str, spec: dict) -> Path:
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


def _job_cells(out: Path, spec: dict) -> list[Cell]:
    """The DT and Perceiver runs of a preset as ablate cells (key, label, seed, config)."""
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
        cells += _atari_cells(out, spec["atari"])
    return cells


def game_slug(env_id: str) -> str:
    """ "breakout" for "MinAtar/Breakout-v1"."""
    return env_id.split("/")[-1].split("-v")[0].lower()


def _atari_cells(out: Path, a: dict) -> list[Cell]:
    """Per game and row: the first seed at every rate of the grid; the other seeds at the rate
    the first seed's validation loss chose, once those runs are finished (until then they
    are not cells yet: the second round of :func:`reproduce`)."""
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


def _collect_minatar(out: Path, a: dict, jobs: int, say) -> dict[str, dict]:
    """Each game's data set (a learning DQN's whole experience), made once: a folder with
    its collection.json is kept when it was made with the preset's settings."""
    from unicomp.rl.dqn_training import train_dqn_stream

    records, todo = {}, []
    for game in a["games"]:
        folder = out / "atari" / game_slug(game)
        record = folder / "collection.json"
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("training_steps") != a["dqn"]["steps"] or saved.get("env_id") != game:
                raise UnicompError(
                    f"{folder} holds {saved.get('env_id')} data from "
                    f"{saved.get('training_steps')} DQN steps, the preset asks "
                    f"{a['dqn']['steps']} in {game}; choose another --out"
                )
            records[game] = saved
        else:
            shutil.rmtree(folder / "data", ignore_errors=True)  # a collection killed before
            todo.append((game, folder))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {}
        for game, folder in todo:
            say(f"training a DQN on {game} for {a['dqn']['steps']:,} steps into {folder}")
            folder.mkdir(parents=True, exist_ok=True)
            futures[game] = pool.submit(train_dqn_stream, game, folder, **a["dqn"],
                                        log=_silent)  # fmt: skip
        for game, future in futures.items():
            records[game] = future.result()
            say(f"{game}: DQN data set written")
    return records


def _cql_folder(out: Path, game: str, seed: int) -> Path:
    return out / "atari" / game_slug(game) / "cql" / f"s{seed}"


def _run_cql(out: Path, a: dict, python: str | Path, jobs: int, say) -> None:
    """d3rlpy's DiscreteCQL (``unicomp dt external``, its settings for frames) per game and
    seed on the game's data, evaluated as the DT rows are; a finished run is kept."""
    from concurrent.futures import ThreadPoolExecutor

    from unicomp.experiments.external import run_external

    s = a["settings"]
    todo = [(game, seed) for game in a["games"] for seed in a["seeds"]
            if not (_cql_folder(out, game, seed) / "metrics.json").is_file()]  # fmt: skip

    def one(game: str, seed: int) -> None:
        folder = _cql_folder(out, game, seed)
        say(f"{folder}: d3rlpy DiscreteCQL, {a['cql']['steps']:,} steps")
        try:
            run_external("cql", str(out / "atari" / game_slug(game)), folder, env=game,
                         steps=a["cql"]["steps"], seed=seed, eval_episodes=s["eval_episodes"],
                         eval_envs=s["eval_envs"], eval_max_steps=s["eval_max_steps"],
                         python=python)  # fmt: skip
            say(f"{folder}: done")
        except UnicompError as err:
            say(f"{folder}: FAILED: {err}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is a process of its own
        list(pool.map(lambda job: one(*job), todo))


def _cql_records(out: Path, a: dict) -> dict[str, list[dict]]:
    """The finished CQL runs by game (as :func:`_evidence` takes runs); a record made with
    other settings than the preset's is an error, as for the DT runs."""
    if "cql" not in a:
        return {}
    records: dict[str, list[dict]] = {}
    for game in a["games"]:
        for seed in a["seeds"]:
            path = _cql_folder(out, game, seed) / "metrics.json"
            if not path.is_file():
                continue
            m = json.loads(path.read_text())
            if m.get("steps") != a["cql"]["steps"] or m.get("env") != game:
                raise UnicompError(
                    f"{path}: a CQL run of {m.get('steps')} steps in {m.get('env')}, the preset "
                    f"asks {a['cql']['steps']} in {game}; re-run it or restore the record"
                )
            records.setdefault(game, []).append({**m, "run": str(path.parent)})
    return records


def _silent(*_args) -> None:
    pass


def _run_job(cfg: Any, plan: str, threads: int, log: str) -> None:
    """One DT or Perceiver run, in a worker process (library calls, output to ``log``)."""
    import torch

    torch.set_num_threads(threads)
    from unicomp.experiments.kinds import kind_of_config

    saved = sys.stdout, sys.stderr
    with open(log, "a") as f:
        sys.stdout = sys.stderr = f
        try:
            kind_of_config(cfg).function("run")(cfg, resume=plan == "resume")
        finally:
            sys.stdout, sys.stderr = saved  # the worker runs the next job with its own log


def _run_jobs(cells: list[Cell], logs: Path, jobs: int, threads: int, say) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    todo = []
    for cell in cells:
        try:
            plan = _plan(cell)
        except UnicompError as err:
            cell.status, cell.error = "failed", str(err)
            say(f"{cell.key}: FAILED: {err}")
            continue
        if plan == "skip":
            cell.status = "skipped"
            say(f"{cell.key}: finished before, skipped")
        else:
            todo.append((cell, plan))
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            (cell, pool.submit(_run_job, cell.cfg, plan, threads, f"{logs / cell.file_stem}.log"))
            for cell, plan in todo
        ]  # fmt: skip
        for cell, future in futures:
            try:
                future.result()
                cell.status = "done"
                say(f"{cell.key}: done")
            except Exception as err:  # noqa: BLE001 (reported in the claims table)
                cell.status, cell.error = (
                    "failed",
                    str(err).splitlines()[0] if str(err) else repr(err),
                )
                say(f"{cell.key}: FAILED: {cell.error} (log {logs / cell.file_stem}.log)")


def _describe(cfg: Any) -> str:
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


def _collect_key_to_door(out: Path, episodes: int, say) -> dict:
    from unicomp.rl.collect import Component, collect

    data = out / "dt" / "key-to-door"
    record = data / "collection.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("episodes") == episodes:
            return saved
        raise UnicompError(
            f"{data} holds {saved.get('episodes')} episodes, the preset asks {episodes}; "
            "choose another --out"
        )
    shutil.rmtree(data, ignore_errors=True)  # a collection killed before its record
    say(f"collecting {episodes} random-policy Key-to-Door episodes into {data}")
    return collect("KeyToDoor-v0", (Component("random"),), episodes, data, n_envs=100, log=say)


def _default_out(name: str) -> Path:
    return Path("runs") / f"reproduce-{name}"


def reproduce(
    name: str,
    out: Path | None = None,
    claims: str | None = None,
    jobs: int = 2,
    dry_run: bool = False,
    report_only: bool = False,
    d3rlpy_python: str | Path | None = None,
    say=print,
) -> dict:
    """Run (or skip) every experiment the chosen claims need, then write the report.

    ``report_only``: train nothing; the report, its tables and verdicts come from the run
    records already in ``out`` (config.yaml, metrics.json, curve.csv of each run, and
    ``run.json``: when, where and how long the runs were made). A run without a record is
    reported as missing.

    ``d3rlpy_python``: the python of a d3rlpy venv (``unicomp dt external``); with it the
    MinAtar games also train d3rlpy's DiscreteCQL on each game's data, one run per seed.
    Without it CQL is not run and the claims that read it say so."""
    if jobs < 1:
        raise UnicompError(f"--jobs must be >= 1, got {jobs}")
    chosen = select_claims(claims)
    out = (out or _default_out(name)).absolute()
    if report_only and not out.is_dir():
        raise UnicompError(f"--report-only: {out} holds no run records")
    spec = preset(name, out)
    # a preset measures the claims of its groups; naming others is an error
    outside = [c.name for c in chosen if c.group not in spec]
    if claims and outside:
        raise UnicompError(
            f"--claims: the {name} preset does not measure {', '.join(outside)} "
            f"(it runs {', '.join(g for g in GROUPS if g in spec)})"
        )
    chosen = [c for c in chosen if c.group in spec]
    groups = {c.group for c in chosen}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    suites = {
        g: load_suite(str(_suite_file(out, g, spec[g])), out / "fpt")
        for g in ("fpt", "size")
        if g in groups
    }
    jobbed = ("dt", "perceiver", "atari")
    cells = _job_cells(out, {g: spec[g] for g in jobbed if g in groups})
    if dry_run:
        from unicomp.ablate import describe

        lines = [describe(s) for s in suites.values()]
        lines += [f"  {c.key}: {_describe(c.cfg)}" for c in cells]
        return {"dry_run": "\n".join(lines)}
    t0 = time.time()
    if report_only:
        results = {g: report_suite(suite) for g, suite in suites.items()}
        collection = _read_collection(out) if "dt" in groups else None
        for cell in cells:
            cell.status = "skipped" if _recorded(cell) else "not run"
    else:
        if spec.get("tiny_backbones") and suites:
            _make_tiny_backbones(spec["tiny_backbones"])
        # the size suite first: its larger model's runs are the longest, the others fill the
        # slots
        order = sorted(suites, key=lambda g: g != "size")
        done = (
            run_suites([suites[g] for g in order], out / "fpt" / "logs", jobs, threads, say)
            if suites
            else []
        )
        results = dict(zip(order, done, strict=True))
        collection = (
            _collect_key_to_door(out, spec["dt"]["episodes"], say) if "dt" in groups else None
        )
        if "atari" in groups:
            _collect_minatar(out, spec["atari"], jobs, say)
        _run_jobs(cells, out / "logs", jobs, threads, say)
        if "atari" in groups:  # the other seeds, at the rates the first seed's runs chose
            known = {c.key for c in cells}
            more = [c for c in _atari_cells(out, spec["atari"]) if c.key not in known]
            _run_jobs(more, out / "logs", jobs, threads, say)
            cells += more
            if d3rlpy_python is not None:
                _run_cql(out, spec["atari"], d3rlpy_python, jobs, say)
            elif "cql" in spec["atari"]:
                say("CQL not run on MinAtar: pass --d3rlpy-python (a d3rlpy venv's python)")
        _write_run_record(name, spec, out, time.time() - t0, suites, cells)
    chosen_cells = pick_jobs(cells)
    cql = _cql_records(out, spec["atari"]) if "atari" in groups else {}
    figures = _figures(out, suites, results, chosen_cells, collection, spec, cql)
    ev = _evidence(results, chosen_cells, collection, spec, cql)
    decides = spec.get("decides", True)
    rows = []
    for claim in chosen:
        ours, verdict, reason = judge(claim, ev, decides)
        rows.append({"claim": claim.name, "text": claim.text, "paper": claim.paper,
                     "ours": ours, "verdict": verdict, "reason": reason,
                     "figures": [f for f in claim.figures if f in figures]})  # fmt: skip
    info = _read_run_record(out)
    report = {"preset": name, "budget": spec["about"], **info, "claims": rows,
              "figures": figures}  # fmt: skip
    atomic_write_json(out / "claims.json", report)
    blocks = _blocks(report, out)
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks, out))
    return report


def _recorded(cell: Cell) -> bool:
    """A DT or Perceiver run's record is there and was made with the settings the preset asks
    (paths inside the records' folder, such as the data set's, may have moved with it)."""
    from unicomp.ablate import _config_changes

    folder = Path(cell.cfg.out)
    if not (folder / "metrics.json").is_file():
        return False
    refused = _config_changes(cell.cfg, folder)[1]
    if refused:
        raise UnicompError(
            f"{folder}: its config.yaml differs from what the preset asks "
            f"({', '.join(refused)}); re-run it or restore the record"
        )
    return True


def _read_collection(out: Path) -> dict | None:
    record = out / "dt" / "key-to-door" / "collection.json"
    return json.loads(record.read_text()) if record.is_file() else None


def pick_jobs(cells: list[Cell]) -> list[Cell]:
    """Per row and seed, the learning rate of the grid with the best validation score (a DT's
    lowest validation loss, a Perceiver's highest validation accuracy; ties: the lower rate):
    the runs the claims read. Cells without a grid pass through."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.table, cell.row, cell.seed), []).append(cell)
    chosen = []
    for group in groups.values():
        done = [(c, m) for c in group if (m := _metrics(c)) is not None]
        if len(group) == 1 or not done:
            chosen.append(group[0])
            continue

        def score(item):
            cell, m = item
            val = m["val_accuracy"] if cell.table == "perceiver" else -m["val_loss"]
            return (val, -(cell.lr or 0))

        chosen.append(max(done, key=score)[0])
    return chosen


def _metrics(cell: Cell) -> dict | None:
    path = Path(cell.cfg.out) / "metrics.json"
    return (
        json.loads(path.read_text())
        if cell.status in ("done", "skipped") and path.is_file()
        else None
    )


def _evidence(
    results: dict, cells: list[Cell], collection: dict | None, spec: dict, cql: dict
) -> Evidence:
    by_group: dict[str, dict[str, list[dict]]] = {"dt": {}, "perceiver": {}}
    atari: dict[str, dict[str, list[dict]]] = {}
    for cell in cells:
        m = _metrics(cell)
        if m is not None:
            t = cell.cfg.train
            run = {**m, "run": cell.cfg.out, "lr": t.lr, "batch_size": t.batch_size}
            game = cell.table.partition("atari:")[2]
            table = atari.setdefault(game, {}) if game else by_group[cell.table]
            table.setdefault(cell.row, []).append(run)
    for game, runs in cql.items():
        atari.setdefault(game, {})["CQL"] = runs
    rows = {g: {r["label"]: r for r in results[g]["rows"]} if g in results else {}
            for g in ("fpt", "size")}  # fmt: skip
    data_success = None
    if collection:
        data_success = (
            collection["components"][0].get("success_rate")
            if collection.get("components")
            else None
        )
        data_success = data_success if data_success is not None else collection.get("success_rate")
    return Evidence(rows["fpt"], rows["size"], by_group["dt"], by_group["perceiver"],
                    spec.get("fpt", {}).get("chance", 0.5), data_success,
                    atari)  # fmt: skip


# --- figures ---------------------------------------------------------------------------------


def _shown(path: str | Path) -> str:
    """A path for a command line: relative to the working folder where it is inside it."""
    path, here = Path(path).absolute(), Path.cwd()
    return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)


def _rel(path: str | Path, out: Path) -> str:
    """A path for a link in the report (relative to the report's folder)."""
    path = Path(path).absolute()
    return str(path.relative_to(out)) if path.is_relative_to(out) else str(path)


def _figures(
    out: Path, suites: dict, results: dict, cells: list[Cell], collection, spec, cql: dict
) -> dict:
    """Every figure of the report: {key: {title, file, runs, command}} (paths relative to
    ``out``); FPT plots come from ablate, the rest are drawn here from the run folders."""
    figs: dict[str, dict] = {}
    for group, suite in suites.items():
        cmd = f"unicomp fpt ablate --suite {_shown(suite.path)} --out {_shown(suite.root)}"
        for i, table in enumerate(suite.tables):
            rows = [r for r in results[group]["rows"] if r["table"] == table["title"]]
            runs = sorted({run for r in rows for run in r["runs"]})
            stem = suite.out / _slug(table["title"])
            for kind, what in (("bars", "test accuracy (mean ± std over seeds; red: paper)"),
                               ("curves", "validation accuracy against step")):  # fmt: skip
                figs[f"{group}-{i}" + ("" if kind == "bars" else "-curves")] = {
                    "title": f"{table['title']}: {what}",
                    "file": _rel(f"{stem}-{kind}.png", out),
                    "runs": [_rel(r, out) for r in runs],
                    "command": cmd,
                }
    # the first seed's FPT run (under a sweep: the learning rate chosen on validation)
    fpt_rows = [r for r in results.get("fpt", {}).get("rows", []) if r["label"] == "FPT"]
    runs = fpt_rows[0]["runs"] if fpt_rows else []
    fpt_run = Path(runs[0]) if runs else out / "none"
    png = out / "figures" / "attention.png"
    has_weights = (fpt_run / "best.safetensors").is_file()
    if (fpt_run / "metrics.json").is_file() and (png.is_file() or has_weights):
        from unicomp.attention import attention_command

        if not png.is_file():
            attention_command(fpt_run, example=0, split="test", out=png)
        figs["attention"] = {
            "title": "attention of the trained FPT (test example 0), mean over heads per layer",
            "file": _rel(png, out), "runs": [_rel(fpt_run, out)],
            "command": f"unicomp fpt attention {_shown(fpt_run)} --example 0 "
                       f"--out {_shown(png)}",
        }  # fmt: skip
    dt = [c for c in cells if c.table == "dt" and _metrics(c)]
    if dt:
        figs.update(_dt_figures(out, dt, collection))
    pc = [c for c in cells if c.table == "perceiver" and _metrics(c)]
    if pc:
        figs.update(_perceiver_figures(out, pc))
    at = [c for c in cells if c.table.startswith("atari:") and _metrics(c)]
    if at:
        figs.update(_atari_figures(out, at, cql))
    return {k: v for k, v in figs.items() if (out / v["file"]).is_file()}


def _slug(text: str) -> str:
    from unicomp.ablate import slug

    return slug(text)


def _train_command(cell: Cell, kind: str) -> str:
    run = _shown(cell.cfg.out)
    return f"unicomp {kind} train --config {run}/config.yaml --out {run}"


def _dt_figures(out: Path, cells: list[Cell], collection) -> dict:
    plt = pyplot()
    by_label: dict[str, list[dict]] = {}
    for c in cells:
        by_label.setdefault(c.row, []).append(_metrics(c))
    figs = {}
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(by_label)
    means = [100 * statistics.fmean([m["success_rate"] for m in by_label[k]]) for k in labels]
    stds = [100 * mean_std([m["success_rate"] for m in by_label[k]], single=0.0)[1] for k in labels]
    ax.bar(range(len(labels)), means, yerr=stds, capsize=3, label="unicomp")
    paper = {"DT": 71.8, "BC": 1.4}
    marks = [(i, paper[k]) for i, k in enumerate(labels) if k in paper]
    if marks:
        ax.scatter(*zip(*marks, strict=True), color="red", marker="_", s=500, linewidths=2.5,
                   zorder=3, label="paper (1K episodes)")  # fmt: skip
    if collection:
        rate = collection["components"][0].get("success_rate")
        if rate is not None:
            ax.axhline(100 * rate, color="gray", ls="--", label="random policy (the data)")
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("Key-to-Door success (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7)
    ax.set_title("Decision Transformer on Key-to-Door (target return 1)")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "dt-bars.png")
    cmd = "; ".join(_train_command(c, "dt") for c in cells[:1]) + " (each run likewise)"
    figs["dt-bars"] = {"title": "Key-to-Door success by algorithm (mean ± std over seeds)",
                       "file": "figures/dt-bars.png", "runs": [_rel(c.cfg.out, out) for c in cells],
                       "command": cmd}  # fmt: skip
    dts = [c for c in cells if c.row == "DT"]
    if dts:  # the same picture as unicomp plot draws for DT runs
        png = out / "figures" / "dt-targets.png"
        plot_returns({Path(c.cfg.out): _metrics(c)["eval"] for c in dts}, png)
        runs = [_shown(c.cfg.out) for c in dts]
        figs["dt-targets"] = {"title": "DT return against target return (each seed)",
                              "file": _rel(png, out), "runs": [_rel(c.cfg.out, out) for c in dts],
                              "command": f"unicomp plot {' '.join(runs)} -o curves.png "
                                         "(-> curves-returns.png)"}  # fmt: skip
    return figs


def _atari_figures(out: Path, cells: list[Cell], cql: dict) -> dict:
    """Normalised score by row (and CQL's where it ran), one group of bars per game (mean ±
    std over seeds)."""
    plt = pyplot()
    games = list(dict.fromkeys(c.table.partition(":")[2] for c in cells))
    rows = list(dict.fromkeys(c.row for c in cells)) + (["CQL"] if cql else [])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(rows)
    for j, row in enumerate(rows):
        means, stds = [], []
        for game in games:
            runs = (
                cql.get(game, [])
                if row == "CQL"
                else [_metrics(c) for c in cells if c.row == row and c.table == f"atari:{game}"]
            )
            scores = [m.get("normalized_score_mean") for m in runs]
            scores = [v for v in scores if v is not None]
            means.append(statistics.fmean(scores) if scores else 0.0)
            stds.append(mean_std(scores, single=0.0)[1] if scores else 0.0)
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(games))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=row)
    ax.axhline(0, color="gray", lw=0.8)
    ax.axhline(100, color="gray", ls="--", lw=0.8, label="the DQN that made the data")
    ax.set_xticks(range(len(games)), games)
    ax.set_ylabel("normalised score (0 random, 100 the data's DQN)")
    ax.legend(fontsize=7)
    ax.set_title("Decision Transformer on MinAtar (1% DQN-replay-like data)")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "atari-bars.png")
    return {
        "atari-bars": {
            "title": "MinAtar: normalised score by algorithm (mean ± std over seeds)",
            "file": "figures/atari-bars.png",
            "runs": [_rel(c.cfg.out, out) for c in cells]
            + [_rel(r["run"], out) for runs in cql.values() for r in runs],
            "command": _train_command(cells[0], "dt") + " (each run likewise)",
        }
    }


def _perceiver_figures(out: Path, cells: list[Cell]) -> dict:
    plt = pyplot()
    by: dict[str, list[float]] = {}
    for c in cells:
        by.setdefault(c.row, []).append(_metrics(c)["test_accuracy"])
    fig, ax = plt.subplots(figsize=(5, 4))
    labels = list(by)
    ax.bar(labels, [100 * statistics.fmean(by[k]) for k in labels],
           yerr=[100 * mean_std(by[k], single=0.0)[1] for k in labels], capsize=3)  # fmt: skip
    ax.set_ylabel("hidden-pixel test accuracy (%)")
    ax.set_title("Perceiver IO vs Perceiver: digits-inpaint")
    fig.tight_layout()
    save_figure(fig, out / "figures" / "perceiver-bars.png")
    runs = [_rel(c.cfg.out, out) for c in cells]
    figs = {"perceiver-bars": {"title": "Perceiver IO against Perceiver (mean ± std over seeds)",
                               "file": "figures/perceiver-bars.png", "runs": runs,
                               "command": _train_command(cells[0], "perceiver")}}  # fmt: skip
    first = cells[0]
    if (Path(first.cfg.out) / "examples.png").is_file():
        figs["perceiver-examples"] = {
            "title": f"{first.row} test images: input, prediction, target",
            "file": _rel(Path(first.cfg.out) / "examples.png", out), "runs": [runs[0]],
            "command": _train_command(first, "perceiver"),
        }  # fmt: skip
    return figs


# --- the report ------------------------------------------------------------------------------


def _train_seconds(suites: dict, cells) -> tuple[int, float]:
    folders = [c.cfg.out for s in suites.values() for c in s.prepare + s.cells] + [
        c.cfg.out for c in cells
    ]
    runs, seconds = 0, 0.0
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text())
            runs += 1
            seconds += (m.get("train_seconds") or 0) + (m.get("feature_seconds") or 0)
    return runs, seconds


def _write_run_record(name: str, spec: dict, out: Path, seconds: float, suites, cells) -> None:
    """``OUT/run.json``: when, where and how long the runs were made, the one record of the
    preset's time (wall time summed over the calls that trained; a call that found every
    run finished adds nothing)."""
    import torch

    from unicomp.provenance import bf16_flags, machine, provenance

    path = out / "run.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    runs, train_seconds = _train_seconds(suites, cells)
    train_seconds = round(train_seconds, 1)
    trained = runs != before.get("runs") or train_seconds != before.get("train_seconds")
    if before and not trained:
        return
    record = {
        "preset": name,
        "runs": runs,
        "train_seconds": train_seconds,
        "wall_seconds": round((before.get("wall_seconds") or 0) + seconds, 1),
        "calls": (before.get("calls") or 0) + 1,
        "machine": machine(),
        "bf16_flags": bf16_flags(),
        "versions": {
            **provenance(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"unicomp reproduce --preset {name} --out {_shown(out)}",
    }
    atomic_write_json(path, record)


def _read_run_record(out: Path) -> dict:
    path = out / "run.json"
    if path.is_file():
        return json.loads(path.read_text())
    raise UnicompError(f"{path} is missing: the record of when and where the runs were made")


def _blocks(report: dict, out: Path) -> list[tuple]:
    """The report as blocks, rendered to Markdown and to HTML alike."""
    v = report["versions"]
    commit = f"{v['git_commit']}{' (with uncommitted changes)' if v['git_dirty'] else ''}"
    b: list[tuple] = [
        ("h", 1, f"unicomp reproduce: the papers' claims ({report['preset']} preset)"),
        ("p", f"Budget: {report['budget']}."),
        (
            "table",
            ["what", "value"],
            [
                ["command", report["command"]],
                ["date", report["date"]],
                ["machine", f"{report['machine']}; bf16 flags: {report['bf16_flags']}"],
                [
                    "versions",
                    f"unicomp {v['unicomp_version']}, torch {v['torch']}, transformers "
                    f"{v['transformers_version']}, Python {v['python']}",
                ],
                ["git commit", report.get("code") or commit or "unknown (not a git checkout)"],
                [
                    "time",
                    f"{report['wall_seconds'] / 60:.1f} minutes of wall time "
                    f"({report['calls']} call{'s' if report['calls'] > 1 else ''}); "
                    f"{report['runs']} run folders, {report['train_seconds'] / 60:.1f} "
                    "minutes of training in all",
                ],
            ],
        ),  # fmt: skip
        ("h", 2, "Claims"),
        ("p", RULES_TEXT),
        (
            "table",
            [
                "claim",
                "paper's figure",
                "ours [budget: fraction of the paper's]",
                "verdict",
                "reason",
                "figures",
            ],
            [
                [
                    f"{r['claim']}: {r['text']}",
                    r["paper"],
                    r["ours"],
                    r["verdict"],
                    r["reason"],
                    Refs(r["figures"]),
                ]
                for r in report["claims"]
            ],
        ),  # fmt: skip
        ("h", 2, "Figures"),
    ]
    for key, f in report["figures"].items():
        b += [("h", 3, f"{key}: {f['title']}", f"fig-{key}"), ("img", f["file"], f["title"]),
              ("links", [("run folder " + r, r) for r in f["runs"]]),
              ("code", f["command"])]  # fmt: skip
    return b


RULES_TEXT = (
    "Ours: mean ± std over seeds (n = seeds), and each row's budget: its training examples "
    "(steps x batch) as a fraction of what the paper needed (unknown where our references "
    "do not say), and its model size (the paper's FPT: GPT-2 base, 124M parameters). A "
    "difference counts beyond the margin: the larger of 1 point and twice the standard error"
    " of the difference, which adds each figure's evaluation noise (its "
    "test elements or episodes) to the seeds' spread. A compared row that did not learn "
    "(at or near chance or its test split's constant answer) makes the claim 'not "
    "measured'; 'holds' and 'does not hold' need 3 seeds in every row ('indicative' with "
    "fewer); a baseline below half the paper's budget, or a failure with any row below it, "
    "is 'not at this budget'; a figure not "
    "in the records is 'missing'. The rules: docs/reproduce.md."
)


class Refs(list):
    """A table cell naming figures: plain names in Markdown, links in HTML."""

    def __str__(self) -> str:
        return ", ".join(self) or "-"


def to_markdown(blocks: list[tuple]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            lines += [markdown_table(block[1], block[2]), ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({block[1]})", ""]
        elif kind == "links":
            lines += [", ".join(f"[{text}]({href})" for text, href in block[1]), ""]
        elif kind == "code":
            lines += ["```bash", block[1], "```", ""]
    return "\n".join(lines)


_CSS = """body{font-family:sans-serif;max-width:1150px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:4px 6px;
vertical-align:top;font-size:13px}th{background:#eee}img{max-width:100%;border:1px solid #ddd}
pre{background:#f4f4f4;padding:6px;white-space:pre-wrap}.holds{background:#d8f5d8}
.partly{background:#fff3c4}.does-not-hold{background:#f8d0d0}.not-measured,.missing,
.not-at-this-budget{background:#e4e4e4}.indicative{background:#eef3ff}"""


def to_html(blocks: list[tuple], out: Path) -> str:
    """One page, nothing loaded from elsewhere: images as data: URIs, the style inline."""
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(blocks[0][2])}</title><style>{_CSS}</style></head><body>"]  # fmt: skip
    for block in blocks:
        kind = block[0]
        if kind == "h":
            anchor = f" id='{e(block[3])}'" if len(block) > 3 else ""
            parts.append(f"<h{block[1]}{anchor}>{e(block[2])}</h{block[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            body = ""
            for row in block[2]:
                tds = []
                for x in row:
                    if isinstance(x, Refs):  # links to the figures below
                        refs = ", ".join(f"<a href='#fig-{e(k)}'>{e(k)}</a>" for k in x)
                        tds.append(f"<td>{refs or '-'}</td>")
                        continue
                    css = str(x).replace(" ", "-") if str(x) in VERDICTS else ""
                    tds.append(f"<td class='{css}'>" if css else "<td>")
                    tds[-1] += f"{e(str(x))}</td>"
                body += "<tr>" + "".join(tds) + "</tr>"
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode((out / block[1]).read_bytes()).decode()
            parts.append(f"<p><img alt='{e(block[2])}' src='data:image/png;base64,{data}'></p>")
        elif kind == "links":
            links = ", ".join(f"<a href='{e(href)}'>{e(text)}</a>" for text, href in block[1])
            parts.append(f"<p>{links}</p>")
        elif kind == "code":
            parts.append(f"<pre>{e(block[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
