"""Protein data files for the remote homology task (unicomp.tasks.proteins): TAPE's JSON and
LMDB records, DeepSF's SCOP 1.75 FASTA files and fold table. Readers only: each returns
the file's records as they are, or raises a one-line DataError naming the file and what is
wrong; turning records into tokens and splits is the task's work."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

from unicomp.data.pickles import load_data_pickle
from unicomp.errors import DataError

# --- SCOP folds -------------------------------------------------------------------------------
N_FOLDS = 1195  # SCOP 1.75 folds in TAPE's remote homology task


def read_tape_json(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a JSON list of records")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply; expected a list of records") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, found {type(records).__name__}")
    return records


def read_tape_lmdb(path: Path) -> list[Any]:
    """TAPE's LMDB layout: key b'num_examples' -> pickled count, keys b'0', b'1', ... ->
    pickled record dicts."""
    try:
        import lmdb
    except ImportError:
        raise DataError(
            f"{path}: reading TAPE's LMDB files needs the lmdb package: pip install lmdb "
            "(or pip install 'unicomp[proteins]'), or use TAPE's JSON files"
        ) from None
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir())
    except lmdb.Error as err:
        raise DataError(f"{path}: cannot open it as an LMDB database: {err}") from None
    # TAPE stores its records as pickles, and unpickling can run code: we only ever unpickle
    # from the folder the user named as holding TAPE's data (data_root / UNICOMP_DATA), and
    # only containers, numbers, strings and numpy arrays (unicomp.data.pickles.load_data_pickle).
    try:
        # LMDB maps the file into memory: reading a page past the end of a truncated file
        # kills the process (SIGBUS), so compare the size the database claims with the file's.
        data_file = path / "data.mdb" if path.is_dir() else path
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        if data_file.stat().st_size < need:
            raise DataError(
                f"{data_file}: truncated LMDB file ({data_file.stat().st_size} bytes, the "
                f"database needs {need})"
            )
        with env.begin(write=False) as txn:
            raw_count = txn.get(b"num_examples")
            if raw_count is None:
                keys = sorted((k for k, _ in txn.cursor() if k.isdigit()), key=int)
            else:
                count = _unpickle(raw_count, path, "num_examples")
                if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
                    raise DataError(
                        f"{path}: num_examples is {repr(count)[:40]}, expected a count >= 0"
                    )
                keys = [str(i).encode() for i in range(int(count))]
            records = []
            for key in keys:
                raw = txn.get(key)
                if raw is None:
                    raise DataError(f"{path}: record {key.decode()} is missing")
                records.append(_unpickle(raw, path, f"record {key.decode()}"))
    except lmdb.Error as err:
        raise DataError(f"{path}: cannot read the LMDB database: {err}") from None
    finally:
        env.close()
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _unpickle(raw: bytes, path: Path, what: str) -> Any:
    try:
        return load_data_pickle(io.BytesIO(raw))  # see read_tape_lmdb
    except Exception as err:
        raise DataError(f"{path}: {what} cannot be unpickled: {err}") from None


@dataclass
class FastaRecord:
    domain: str  # SCOP domain id, e.g. d1sctb_
    sccs: str  # SCOP class string, e.g. a.1.1.2
    sequence: str
    line: int  # header line number, for messages


def read_fasta(path: Path) -> list[FastaRecord]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    records: list[FastaRecord] = []
    parts: list[str] = []

    def close() -> None:
        if records:
            rec = records[-1]
            rec.sequence = "".join(parts)
            if not rec.sequence:
                raise DataError(f"{path}: record {rec.domain} (line {rec.line}) has no sequence")

    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            close()
            fields = line[1:].split()
            if len(fields) < 2 or len(fields[1].split(".")) < 2:
                raise DataError(
                    f"{path}: line {lineno}: header {line[:60]!r} lacks a domain id and a SCOP "
                    "class string such as 'a.1.1.2'"
                )
            records.append(FastaRecord(fields[0], fields[1], "", lineno))
            parts = []
        elif not records:
            raise DataError(f"{path}: line {lineno}: sequence without a '>' header before it")
        else:
            parts.append(line)
    close()
    if not records:
        raise DataError(f"{path}: no FASTA records (empty file?)")
    return records


def read_fold_table(path: Path) -> dict[str, int]:
    """``fold_label_relation2.txt``: a ``Fold<TAB>Label`` header, then ``a.1<TAB>0`` rows."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    table: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or (lineno == 1 and fields == ["Fold", "Label"]):
            continue
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise DataError(f"{path}: line {lineno}: expected 'FOLD<TAB>LABEL', found {line!r}")
        fold, label = fields[0], int(fields[1])
        if label >= N_FOLDS:
            raise DataError(f"{path}: line {lineno}: label {label} is outside 0..{N_FOLDS - 1}")
        if fold in table:
            raise DataError(f"{path}: line {lineno}: fold {fold} listed twice")
        table[fold] = label
    if not table:
        raise DataError(f"{path}: no fold labels (empty file?)")
    return table


def fold_of(sccs: str) -> str:
    return ".".join(sccs.split(".")[:2])
