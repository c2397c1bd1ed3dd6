"""The claims' evidence, read from a preset's run records: which runs finished with the
settings the preset asks (:func:`recorded`), the data sets' and CQL's records, and the rows
:class:`unicomp.reports.claims.Evidence` holds for the verdicts (:func:`read_evidence`)."""

from __future__ import annotations

import json
from pathlib import Path

from unicomp.errors import UnicompError
from unicomp.reports.claims import Evidence
from unicomp.reports.presets import cql_folder
from unicomp.tools.jobs import Cell, config_changes, finished_metrics


def recorded(cell: Cell) -> bool:
    """A DT or Perceiver run's record is there and was made with the settings the preset asks
    (paths inside the records' folder, such as the data set's, may have moved with it)."""
    folder = Path(cell.cfg.out)
    if not (folder / "metrics.json").is_file():
        return False
    refused = config_changes(cell.cfg, folder)[1]
    if refused:
        raise UnicompError(
            f"{folder}: its config.yaml differs from what the preset asks "
            f"({', '.join(refused)}); re-run it or restore the record"
        )
    return True


def read_collection(out: Path) -> dict | None:
    """The Key-to-Door data set's record (collection.json), if it was made."""
    record = out / "dt" / "key-to-door" / "collection.json"
    return json.loads(record.read_text()) if record.is_file() else None


def cql_records(out: Path, a: dict) -> dict[str, list[dict]]:
    """The finished CQL runs by game (as :func:`read_evidence` takes runs); a record made with
    other settings than the preset's is an error, as for the DT runs."""
    if "cql" not in a:
        return {}
    records: dict[str, list[dict]] = {}
    for game in a["games"]:
        for seed in a["seeds"]:
            path = cql_folder(out, game, seed) / "metrics.json"
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


def read_evidence(
    results: dict, cells: list[Cell], collection: dict | None, spec: dict, cql: dict
) -> Evidence:
    """The rows the claims read: FPT and size rows from the suites' results, the chosen
    DT, Perceiver and MinAtar runs (``cells``) by row, CQL's runs and the data's success rate."""
    by_group: dict[str, dict[str, list[dict]]] = {"dt": {}, "perceiver": {}}
    atari: dict[str, dict[str, list[dict]]] = {}
    for cell in cells:
        m = finished_metrics(cell)
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
