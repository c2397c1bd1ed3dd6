"""Remote homology detection (FPT paper task 7; Lu et al. 2021, arXiv 2103.05247): read a
protein's amino-acid sequence, predict its SCOP fold, one of 1,195 classes. The data set is
TAPE's (Rao et al. 2019, arXiv 1906.08230), built from SCOP 1.75 (Hou et al. 2018, DeepSF).

Two sources (their readers: unicomp.data.proteins), both from a folder the user names
(``data_root`` task argument or $UNICOMP_DATA); nothing is downloaded:

1. TAPE's files, JSON or LMDB: ``remote_homology_{train,valid}`` and the three test sets
   ``remote_homology_test_{fold,superfamily,family}_holdout`` (``test_split`` picks one; the
   FPT paper reports the fold holdout), each record with ``primary`` (the sequence) and
   ``fold_label`` (0-1194). Searched in ``<root>/remote_homology/`` then ``<root>/``.
2. DeepSF's SCOP 1.75 FASTA files (github.com/multicom-toolbox/DeepSF, similarity-reduction
   set): ``Testdata_id{25,40,70}againstTrain.fasta`` with headers such as
   ``>d1sctb_ a.1.1.2 (B:) Hemoglobin I ...`` (domain id, SCOP class string), and
   ``fold_label_relation2.txt`` (``Fold<TAB>Label``, header line first) mapping the fold (the
   class string's first two fields, ``a.1``) to a label. Searched in ``<root>/scop-fold/``
   then ``<root>/``. These files are DeepSF's *test* sets only (filtered to at most 25%, 40%
   and 70% identity against DeepSF's training set; the 40% set lies inside the 70% set), so we
   build our own split, documented in ``data_source``:

   * test: every domain of the 25% file (the most remote from DeepSF's training set);
   * train + val: the domains of the 40% and 70% files that are not in the test file
     (deduplicated by domain id; any whose sequence equals a test sequence dropped too);
   * val: ``val_fraction`` (20%) of each fold's domains, rounded, drawn with ``split_seed``,
     never a fold's last domain, so every val fold also trains (DeepSF split 80/20 per fold).

   With DeepSF's files that is 711 test, 621 train and 115 val domains; 159 test sequences
   have a fold that never occurs in train (``data_source`` gives the count for any data).

Tokens: padding 0, ``<unk>`` 1, then the 25 IUPAC letters TAPE uses
(``ACDEFGHIKLMNPQRSTVWYBZXUO``); lowercase is read as uppercase. Any other character is an
error naming the file, record and character (``unknown=unk`` maps it to ``<unk>`` instead and
counts it in ``data_source``): a stray ``*``, ``-`` or digit usually means a wrong file.

Sequences longer than ``max_len`` (default 1024) keep their first ``max_len`` residues and are
counted in ``data_source``. (The FPT code instead skipped longer sequences and rescaled its
accuracies by 0.9739; we keep every example so that the whole test split is scored.)
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from unicomp.data import data_root as find_data_root
from unicomp.data.proteins import (
    N_FOLDS,
    FastaRecord,
    fold_of,
    read_fasta,
    read_fold_table,
    read_tape_json,
    read_tape_lmdb,
)
from unicomp.errors import DataError
from unicomp.tasks.base import TaskSpec
from unicomp.tasks.sequences import SequenceTask, TokenSequences

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWYBZXUO"  # 20 standard + B Z X (ambiguous), U O (rare); TAPE's
VOCAB = ("<pad>", "<unk>", *AMINO_ACIDS)
PAD, UNK = 0, 1


_BAD = 255
_TABLE = bytearray([_BAD]) * 256  # byte -> token id, for bytes.translate
for _i, _aa in enumerate(AMINO_ACIDS, start=2):
    _TABLE[ord(_aa)] = _TABLE[ord(_aa.lower())] = _i
_TABLE = bytes(_TABLE)

TAPE_PREFIX = "remote_homology"
TAPE_FILES = {"train": "train", "val": "valid"}
TEST_SPLITS = {
    "fold": "test_fold_holdout",
    "superfamily": "test_superfamily_holdout",
    "family": "test_family_holdout",
}
TAPE_FOLDERS = ("remote_homology", ".")
FASTA_TEST = "Testdata_id25againstTrain.fasta"
FASTA_POOL = ("Testdata_id40againstTrain.fasta", "Testdata_id70againstTrain.fasta")
FOLD_TABLE = "fold_label_relation2.txt"
FASTA_FOLDERS = ("scop-fold", ".")
SOURCES = ("auto", "json", "lmdb", "fasta")


def encode(
    seq: str, where: str, unknown: str = "error", counts: Counter | None = None
) -> np.ndarray:
    """Amino-acid letters -> uint8 token ids. ``where`` names the file and record for errors."""
    raw = seq.encode("ascii", errors="replace")  # non-ASCII -> '?', then reported below
    ids = np.frombuffer(raw.translate(_TABLE), dtype=np.uint8).copy()
    bad = np.flatnonzero(ids == _BAD)
    if len(bad):
        if unknown != "unk":
            pos = int(bad[0])
            raise DataError(
                f"{where}: character {seq[pos]!r} at residue {pos + 1} is not one of the 25 "
                f"amino-acid letters {AMINO_ACIDS}; fix the file or pass --task-arg unknown=unk"
            )
        ids[bad] = UNK
        if counts is not None:
            counts.update(seq[int(p)] for p in bad)
    return ids


def decode(ids: Iterable[int]) -> str:
    return "".join(VOCAB[int(i)] if int(i) > UNK else "?" for i in ids if int(i) != PAD)


# --- TAPE JSON and LMDB -----------------------------------------------------------------------


def tape_records(
    records: list[Any], path: Path, max_len: int, unknown: str, counts: Counter
) -> tuple[TokenSequences, int]:
    """TAPE records -> token sequences (cut at max_len) and the number of cut sequences."""
    if not records:
        raise DataError(f"{path}: no records")
    seqs, labels, cut = [], [], 0
    for i, rec in enumerate(records):
        name = f"record {i}"
        if isinstance(rec, dict) and "id" in rec:
            name += f" (id {' '.join(str(rec['id']).split())[:60]})"  # one line, whatever it is
        if not isinstance(rec, dict):
            raise DataError(f"{path}: {name}: expected a mapping, found {type(rec).__name__}")
        for field in ("primary", "fold_label"):
            if field not in rec:
                raise DataError(f"{path}: {name}: missing field {field!r}")
        seq, label = rec["primary"], rec["fold_label"]
        if not isinstance(seq, str) or not seq:
            raise DataError(f"{path}: {name}: 'primary' must be a non-empty string")
        if isinstance(label, bool) or not isinstance(label, Integral):
            raise DataError(f"{path}: {name}: 'fold_label' {label!r} is not an integer")
        if not 0 <= int(label) < N_FOLDS:
            raise DataError(f"{path}: {name}: 'fold_label' {label} is outside 0..{N_FOLDS - 1}")
        ids = encode(seq, f"{path}: {name}", unknown, counts)
        cut += len(ids) > max_len
        seqs.append(ids[:max_len])
        labels.append(int(label))
    return TokenSequences.from_list(seqs, labels), cut


# --- SCOP FASTA (DeepSF) ----------------------------------------------------------------------


# --- the task ----------------------------------------------------------------------------------
class RemoteHomology(SequenceTask):
    """Remote homology: amino-acid tokens -> SCOP fold (1,195 classes). See the module doc.

    Task arguments: source (auto | json | lmdb | fasta; auto tries them in that order),
    data_root, test_split (fold | superfamily | family; TAPE only), max_len (1024),
    unknown (error | unk), val_fraction and split_seed (FASTA only).
    """

    name = "remote-homology"
    vocab = VOCAB
    # Our defaults, not the paper's (it does not list them for this task).
    default_train = {
        "steps": 20000,
        "lr": 1e-3,
        "batch_size": 16,
        "eval_every": 1000,
        "eval_batch_size": 64,
    }

    def __init__(
        self,
        source: str = "auto",
        data_root: str | None = None,
        test_split: str = "fold",
        max_len: int = 1024,
        unknown: str = "error",
        val_fraction: float = 0.2,
        split_seed: int = 0,
    ):
        if source not in SOURCES:
            raise ValueError(f"source={source!r}; choices: {', '.join(SOURCES)}")
        if test_split not in TEST_SPLITS:
            raise ValueError(f"test_split={test_split!r}; choices: {', '.join(TEST_SPLITS)}")
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown={unknown!r}; choices: error, unk")
        if max_len < 1:
            raise ValueError("max_len must be at least 1")
        if not 0 <= val_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1)")
        root = find_data_root(data_root)
        if root is None:
            raise DataError(
                "remote-homology needs data: pass --task-arg data_root=DIR or set UNICOMP_DATA "
                "to a folder with TAPE's remote_homology_*.json or *.lmdb files, or DeepSF's "
                f"SCOP FASTA files ({FASTA_TEST}, {', '.join(FASTA_POOL)}, {FOLD_TABLE})"
            )
        self.max_len, self.unknown = max_len, unknown
        self._unknown_chars: Counter = Counter()
        kind, folder, files = self._locate(root, source, test_split)
        if kind == "fasta":
            splits, desc = self._from_fasta(folder, val_fraction, split_seed)
        else:
            splits, desc = self._from_tape(kind, files)
        train_folds = set(splits["train"].labels.tolist())
        unseen = sum(label not in train_folds for label in splits["test"].labels.tolist())
        desc += f"; {unseen} of {len(splits['test'])} test sequences have a fold absent from train"
        if self._unknown_chars:
            chars = ", ".join(f"{c!r} x{n}" for c, n in sorted(self._unknown_chars.items()))
            desc += f"; mapped to <unk> (unknown=unk): {chars}"
        self.set_splits(splits)
        self.spec = TaskSpec(
            max_len=self.longest(), d_out=N_FOLDS, n_classes=N_FOLDS, vocab_size=len(VOCAB)
        )
        self.data_source = desc

    # --- finding the files --------------------------------------------------------------------
    @staticmethod
    def _locate(root: Path, source: str, test_split: str) -> tuple[str, Path, dict[str, Path]]:
        """(kind, folder, {split: path}) of the first source found; DataError if none or if a
        source is present but incomplete."""
        names = {**TAPE_FILES, "test": TEST_SPLITS[test_split]}
        looked = []
        for kind in ("json", "lmdb", "fasta") if source == "auto" else (source,):
            for sub in FASTA_FOLDERS if kind == "fasta" else TAPE_FOLDERS:
                folder = (root / sub) if sub != "." else root
                if kind == "fasta":
                    files = {
                        "test": folder / FASTA_TEST,
                        "table": folder / FOLD_TABLE,
                        **{f"pool{i}": folder / n for i, n in enumerate(FASTA_POOL)},
                    }
                    required = ["test", "table"]
                else:
                    ext = ".json" if kind == "json" else ".lmdb"
                    files = {s: folder / f"{TAPE_PREFIX}_{n}{ext}" for s, n in names.items()}
                    required = list(files)
                present = {k: p for k, p in files.items() if p.exists()}
                looked.append(str(folder))
                if not present:
                    continue
                missing = [files[k].name for k in required if k not in present]
                if kind == "fasta" and not any(k.startswith("pool") for k in present):
                    missing.append(" or ".join(FASTA_POOL))
                if missing:
                    raise DataError(f"remote-homology: {folder} lacks {', '.join(missing)}")
                return kind, folder, present
        what = "TAPE or SCOP FASTA" if source == "auto" else source
        raise DataError(
            f"remote-homology: no {what} files in {', '.join(dict.fromkeys(looked))}; expected "
            f"TAPE's {TAPE_PREFIX}_{{train,valid,{TEST_SPLITS[test_split]}}}.json or .lmdb, "
            f"or {FASTA_TEST} + {FOLD_TABLE}"
        )

    # --- TAPE ---------------------------------------------------------------------------------
    def _from_tape(self, kind: str, files: dict[str, Path]) -> tuple[dict, str]:
        read = read_tape_json if kind == "json" else read_tape_lmdb
        splits, cut = {}, {}
        for split in ("train", "val", "test"):
            path = files[split]
            splits[split], cut[split] = tape_records(
                read(path), path, self.max_len, self.unknown, self._unknown_chars
            )
        desc = f"TAPE remote homology ({kind}) in {files['train'].parent}: " + ", ".join(
            f"{split} {files[split].name} ({len(s)})" for split, s in splits.items()
        )
        return splits, desc + self._cut_note(cut)

    def _cut_note(self, cut: dict[str, int]) -> str:
        counts = ", ".join(f"{n} {split}" for split, n in cut.items())
        return f"; sequences longer than max_len={self.max_len} cut to it: {counts}"

    # --- FASTA --------------------------------------------------------------------------------
    def _from_fasta(
        self, folder: Path, val_fraction: float, split_seed: int
    ) -> tuple[dict[str, TokenSequences], str]:
        table = read_fold_table(folder / FOLD_TABLE)
        test_path = folder / FASTA_TEST
        pool_paths = [folder / n for n in FASTA_POOL if (folder / n).exists()]

        def labelled(path: Path) -> list[tuple[FastaRecord, int, Path]]:
            out = []
            for rec in read_fasta(path):
                fold = fold_of(rec.sccs)
                if fold not in table:
                    raise DataError(
                        f"{path}: record {rec.domain} (line {rec.line}): fold {fold} is not in "
                        f"{FOLD_TABLE}"
                    )
                out.append((rec, table[fold], path))
            return out

        test = self._dedupe(labelled(test_path))
        test_ids = {rec.domain for rec, _, _ in test}
        test_seqs = {rec.sequence.upper() for rec, _, _ in test}
        pool_all = self._dedupe([item for p in pool_paths for item in labelled(p)])
        pool = [
            item
            for item in pool_all
            if item[0].domain not in test_ids and item[0].sequence.upper() not in test_seqs
        ]
        # Per-fold validation draw (DeepSF split 80/20 per fold); a fold's last domain trains.
        by_fold: dict[int, list] = defaultdict(list)
        for item in sorted(pool, key=lambda item: item[0].domain):
            by_fold[item[1]].append(item)
        rng = random.Random(split_seed)
        train, val = [], []
        for label in sorted(by_fold):
            items = by_fold[label]
            rng.shuffle(items)
            n_val = min(int(len(items) * val_fraction + 0.5), len(items) - 1)
            val += items[:n_val]
            train += items[n_val:]
        if not train or not val:
            raise DataError(
                f"remote-homology: {folder}: too few domains outside the test file to split "
                f"into train and val ({len(pool)} domains, val_fraction={val_fraction})"
            )
        splits, cut = {}, {}
        for split, items in (("train", train), ("val", val), ("test", test)):
            seqs = []
            for rec, _, path in items:
                where = f"{path}: record {rec.domain}"
                ids = encode(rec.sequence, where, self.unknown, self._unknown_chars)
                seqs.append(ids[: self.max_len])
            cut[split] = sum(len(rec.sequence) > self.max_len for rec, _, _ in items)
            splits[split] = TokenSequences.from_list(seqs, [label for _, label, _ in items])
        desc = (
            f"SCOP 1.75 FASTA (DeepSF) in {folder}, our split: test = {FASTA_TEST} "
            f"({len(test)}); train/val = the other domains of "
            f"{' + '.join(p.name for p in pool_paths)} ({len(pool)}, after removing "
            f"{len(pool_all) - len(pool)} test domains), val = {val_fraction:g} of each fold "
            f"(split_seed={split_seed}): train {len(train)}, val {len(val)}"
        )
        return splits, desc + self._cut_note(cut)

    @staticmethod
    def _dedupe(items: list[tuple[FastaRecord, int, Path]]) -> list:
        """One entry per domain id; the same id with another sequence or class is an error."""
        seen: dict[str, tuple[FastaRecord, int, Path]] = {}
        for item in items:
            rec, _, path = item
            first = seen.setdefault(rec.domain, item)
            if first is not item and (
                first[0].sequence.upper() != rec.sequence.upper() or first[0].sccs != rec.sccs
            ):
                raise DataError(
                    f"{path}: record {rec.domain} (line {rec.line}) differs from the record with "
                    f"the same id in {first[2]} (line {first[0].line})"
                )
        return list(seen.values())
