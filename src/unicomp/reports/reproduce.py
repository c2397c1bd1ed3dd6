"""Every claim of the three papers, checked by one command: ``unicomp reproduce``.

    unicomp reproduce --preset tiny|quick|paper [--claims NAME,...] [--out DIR] [--jobs N]

A registry (:data:`CLAIMS`) names each claim of ../shared/MISSION.md with the paper's figure,
the experiments it needs and a verdict rule. A preset (:func:`preset`,
:mod:`unicomp.reports.presets`) sizes the experiments:

- FPT (``fpt``, ``size``): ``unicomp fpt ablate`` suites written to ``OUT/_suites/`` and run
  by :mod:`unicomp.tools.ablate` (same cells, same skipping of finished runs, same tables and
  plots);
- Decision Transformer (``dt``): a Key-to-Door data set collected by a random policy
  (:func:`unicomp.rl.collect.collect`), then DT, DT K=1, BC and DT with delayed rewards
  trained and evaluated by :func:`unicomp.experiments.dt.run_dt` (``unicomp dt train``);
- Perceiver (``perceiver``): Perceiver IO and the plain Perceiver on the dense
  ``digits-inpaint`` task (:func:`unicomp.experiments.perceiver.run_perceiver`);
- the DT's Atari half at CPU scale (``atari``, the ``minatar`` preset): per MinAtar game, a
  data set made like DQN Replay (a learning DQN's whole experience,
  :func:`unicomp.rl.dqn_training.train_dqn_stream`), then DT (K=30), DT K=1 and BC, each row's
  learning rate chosen on validation loss with the first seed, the other seeds at that rate.

Every run is an ordinary run folder under ``OUT``, trained by :mod:`unicomp.tools.jobs` (a finished
one is skipped on a re-run, its config.yaml checked against what the preset asks; a killed
one resumes). Then the claims are judged on the records (:mod:`unicomp.reports.evidence`) and
``OUT/report.md``, ``OUT/report.html`` (one self-contained page: images embedded as data:
URIs, no external resource; :mod:`unicomp.reports.claims_report`) and ``OUT/claims.json`` are
written.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

from unicomp.errors import UnicompError
from unicomp.files import atomic_write_json, atomic_write_text
from unicomp.reports.claims import CLAIM_NAMES, CLAIMS, judge, select_claims
from unicomp.reports.claims_report import draw_figures, report_blocks, shown, to_html, to_markdown
from unicomp.reports.evidence import cql_records, read_collection, read_evidence, recorded
from unicomp.reports.presets import (
    GROUPS,
    PRESETS,
    atari_cells,
    cql_folder,
    describe_run,
    game_slug,
    job_cells,
    pick_jobs,
    preset,
    suite_file,
)
from unicomp.reports.verdicts import VERDICTS
from unicomp.tools.ablate import load_suite, report_suite, run_suites
from unicomp.tools.jobs import Cell, run_cells

__all__ = ["CLAIMS", "CLAIM_NAMES", "PRESETS", "VERDICTS", "preset", "reproduce"]


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


def _run_cql(out: Path, a: dict, python: str | Path, jobs: int, say) -> None:
    """d3rlpy's DiscreteCQL (``unicomp dt external``, its settings for frames) per game and
    seed on the game's data, evaluated as the DT rows are; a finished run is kept."""
    from concurrent.futures import ThreadPoolExecutor

    from unicomp.experiments.dt import EvalSettings
    from unicomp.experiments.external import run_external

    s = a["settings"]
    evaluation = EvalSettings(
        episodes=s["eval_episodes"], n_envs=s["eval_envs"], max_steps=s["eval_max_steps"]
    )
    todo = [(game, seed) for game in a["games"] for seed in a["seeds"]
            if not (cql_folder(out, game, seed) / "metrics.json").is_file()]  # fmt: skip

    def one(game: str, seed: int) -> None:
        folder = cql_folder(out, game, seed)
        say(f"{folder}: d3rlpy DiscreteCQL, {a['cql']['steps']:,} steps")
        try:
            run_external("cql", str(out / "atari" / game_slug(game)), folder, env=game,
                         steps=a["cql"]["steps"], seed=seed, evaluation=evaluation,
                         python=python)  # fmt: skip
            say(f"{folder}: done")
        except UnicompError as err:
            say(f"{folder}: FAILED: {err}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each run is a process of its own
        list(pool.map(lambda job: one(*job), todo))


def _silent(*_args) -> None:
    pass


def _run_jobs(cells: list[Cell], logs: Path, jobs: int, say) -> None:
    """Run the DT, Perceiver and MinAtar cells (unicomp.tools.jobs), each one's outcome said as it
    comes."""
    for event in run_cells(cells, logs, jobs):
        cell = event.cell
        if event.what == "skipped":
            say(f"{cell.key}: finished before, skipped")
        elif event.what == "done":
            say(f"{cell.key}: done")
        else:
            where = f" (log {event.log})" if event.log else ""
            say(f"{cell.key}: FAILED: {cell.error}{where}")


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
    suites = {
        g: load_suite(str(suite_file(out, g, spec[g])), out / "fpt")
        for g in ("fpt", "size")
        if g in groups
    }
    jobbed = ("dt", "perceiver", "atari")
    cells = job_cells(out, {g: spec[g] for g in jobbed if g in groups})
    if dry_run:
        from unicomp.tools.ablate import describe

        lines = [describe(s) for s in suites.values()]
        lines += [f"  {c.key}: {describe_run(c.cfg)}" for c in cells]
        return {"dry_run": "\n".join(lines)}
    t0 = time.time()
    if report_only:
        results = {g: report_suite(suite) for g, suite in suites.items()}
        collection = read_collection(out) if "dt" in groups else None
        for cell in cells:
            cell.status = "skipped" if recorded(cell) else "not run"
    else:
        if spec.get("tiny_backbones") and suites:
            _make_tiny_backbones(spec["tiny_backbones"])
        # the size suite first: its larger model's runs are the longest, the others fill the
        # slots
        order = sorted(suites, key=lambda g: g != "size")
        done = (
            run_suites([suites[g] for g in order], out / "fpt" / "logs", jobs, say=say)
            if suites
            else []
        )
        results = dict(zip(order, done, strict=True))
        collection = (
            _collect_key_to_door(out, spec["dt"]["episodes"], say) if "dt" in groups else None
        )
        if "atari" in groups:
            _collect_minatar(out, spec["atari"], jobs, say)
        _run_jobs(cells, out / "logs", jobs, say)
        if "atari" in groups:  # the other seeds, at the rates the first seed's runs chose
            known = {c.key for c in cells}
            more = [c for c in atari_cells(out, spec["atari"]) if c.key not in known]
            _run_jobs(more, out / "logs", jobs, say)
            cells += more
            if d3rlpy_python is not None:
                _run_cql(out, spec["atari"], d3rlpy_python, jobs, say)
            elif "cql" in spec["atari"]:
                say("CQL not run on MinAtar: pass --d3rlpy-python (a d3rlpy venv's python)")
        _write_run_record(name, spec, out, time.time() - t0, suites, cells)
    chosen_cells = pick_jobs(cells)
    cql = cql_records(out, spec["atari"]) if "atari" in groups else {}
    figures = draw_figures(out, suites, results, chosen_cells, collection, cql)
    ev = read_evidence(results, chosen_cells, collection, spec, cql)
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
    blocks = report_blocks(report, out)
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks, out))
    return report


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
        "command": f"unicomp reproduce --preset {name} --out {shown(out)}",
    }
    atomic_write_json(path, record)


def _read_run_record(out: Path) -> dict:
    path = out / "run.json"
    if path.is_file():
        return json.loads(path.read_text())
    raise UnicompError(f"{path} is missing: the record of when and where the runs were made")
