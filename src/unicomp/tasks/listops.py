"""ListOps (Nangia & Bowman 2018) in the Long Range Arena setting (Tay et al. 2021,
arXiv 2011.04006), the FPT paper's task 3 (Lu et al. 2021, arXiv 2103.05247, sec. 3).

An expression nests the operators MIN, MAX, MED (median) and SM (sum modulo 10) over the
digits 0-9; the label is its value (10 classes)::

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   ->   5

Surface tokens are LRA's: ``[MIN [MAX [MED [SM ]`` and the digits. LRA's released TSV files
also wrap every partial application in parentheses, ``( ( ( [MAX 2 ) 9 ) ] )``; the
parentheses follow from the brackets (they carry no extra information) but we keep every
symbol we are given. Two departures of earlier pipelines that we do *not* repeat: the FPT
code tokenised with tfds' default tokenizer, which drops every non-alphanumeric symbol (so
``]`` vanished and expressions became ambiguous), and cut inputs at 512 tokens.

Data comes from our own generator (default) or from LRA's TSV files when the user has them.

Generator (our code, following the conventions of LRA's ``lra_benchmarks/data/listops.py``):
a node at depth ``d < max_depth`` is an operator with probability 0.25, else a digit; nodes at
``max_depth`` are digits (the root is depth 1, so at most ``max_depth - 1`` operators nest);
an operator takes 2 to ``max_args`` arguments, uniformly. Expressions whose length (operators,
digits and ``]``, parentheses not counted, as LRA counts) falls outside
[``min_len``, ``max_len``] are rejected, and all expressions are distinct, so train, val and
test are disjoint. Departures from LRA, for clarity: the root is always an operator (LRA
could draw a lone digit, which its length bounds then rejected), the length bounds are
inclusive (LRA's are strict), and each split has its own random stream, so the test set does
not change when ``n_train`` does. LRA sizes (96,000 / 2,000 / 2,000; lengths 500 to 2,000)
are the defaults. Generated splits are cached as ``.npz`` in ``unicomp.data.cache_dir()``,
keyed by every generator argument.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from unicomp.data import cache_dir
from unicomp.data import data_root as find_data_root
from unicomp.errors import DataError, UnicompError
from unicomp.files import atomic_write
from unicomp.tasks.base import TaskSpec
from unicomp.tasks.sequences import SequenceTask, TokenSequences

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
# id 0 is padding (TaskSpec convention); every surface symbol has its own id.
VOCAB = ("<pad>", *DIGITS, *OPERATORS, END, "(", ")")
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
_DIGIT_SET = frozenset(DIGITS)
_DIGIT_ID = [TOKEN_ID[d] for d in DIGITS]
_OP_ID = [TOKEN_ID[op] for op in OPERATORS]
_END_ID, _LPAREN_ID, _RPAREN_ID = TOKEN_ID[END], TOKEN_ID["("], TOKEN_ID[")"]

OPERATOR_P = 0.25  # LRA's VALUE_P: a node below max_depth is an operator with this probability
MIN_ARGS = 2  # LRA draws randint(2, max_args) arguments
MAX_MISSES = 100_000  # LRA's settings accept about one draw in three
_GENERATOR_VERSION = 1  # bump when the generator's output for the same arguments changes
TSV_NAMES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
TSV_FOLDERS = ("listops", "lra_release/listops-1000", ".")  # under the data root, in order
# Bounds on one expression, read or generated. LRA's longest rows are about 6,000 tokens with
# their parentheses and nest at most 9 operators; a row far beyond that is a damaged or hostile
# file, and the model's attention, quadratic in the row length, would never finish on it.
MAX_ROW_TOKENS = 20_000
MAX_NESTING = 100  # operators open at once


# --- tokeniser and reference evaluator ------------------------------------------------------------
def tokenize(text: str) -> list[int]:
    """Whitespace-separated symbols -> ids; every symbol is kept. Unknown symbol: ValueError."""
    ids = []
    for pos, tok in enumerate(text.split()):
        i = TOKEN_ID.get(tok)
        if i is None or i == 0:
            raise ValueError(f"unknown symbol {tok!r} at token {pos + 1}")
        ids.append(i)
    return ids


def detokenize(ids: Iterable[int]) -> str:
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != 0)


def apply_operator(op: str, args: Sequence[int]) -> int:
    """The value of one operator over its argument values."""
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        # LRA computes int(np.median(args)): the mean of the two middle values for an even
        # count, truncated; for digits that is floor division.
        s = sorted(args)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown operator {op!r}")


def evaluate(tokens: Iterable[str], max_nesting: int = MAX_NESTING) -> int:
    """Value (0-9) of one expression given as surface tokens; ValueError if it is malformed or
    nests more than ``max_nesting`` operators.

    One left-to-right pass with a stack of open operators. Parentheses must balance among
    themselves; they do not nest with the brackets (LRA writes ``( [MAX 2 ) 9 ] )``).
    """
    stack: list[list] = []  # each frame: [operator, argument values...]
    result: int | None = None
    parens = 0
    for pos, tok in enumerate(tokens, 1):
        value: int | None = None
        if tok in _DIGIT_SET:
            value = int(tok)
        elif tok in OPERATORS:
            if result is not None and not stack:
                raise ValueError(f"token {pos}: {tok} after the expression ended")
            stack.append([tok])
            if len(stack) > max_nesting:
                raise ValueError(f"token {pos}: more than {max_nesting} operators nested (limit)")
        elif tok == END:
            if not stack:
                raise ValueError(f"token {pos}: ']' closes no operator")
            op, *args = stack.pop()
            if not args:
                raise ValueError(f"token {pos}: {op} has no arguments")
            value = apply_operator(op, args)
        elif tok == "(":
            parens += 1
        elif tok == ")":
            parens -= 1
            if parens < 0:
                raise ValueError(f"token {pos}: ')' without '('")
        else:
            raise ValueError(f"token {pos}: unknown symbol {tok!r}")
        if value is not None:
            if stack:
                stack[-1].append(value)
            elif result is None:
                result = value
            else:
                raise ValueError(f"token {pos}: {tok!r} after the expression ended")
    if stack:
        raise ValueError(f"{len(stack)} operator(s) never closed with ']'")
    if parens:
        raise ValueError(f"{parens} '(' never closed")
    if result is None:
        raise ValueError("no expression")
    return result


# --- generator ------------------------------------------------------------------------------------
class _TooLong(Exception):
    pass


def _draw_expression(
    rnd: random.Random, max_depth: int, max_args: int, max_len: int, parens: bool
) -> tuple[bytearray, int, int]:
    """One random expression: (token ids, its LRA length, its value). _TooLong once it
    exceeds max_len, so oversized trees are abandoned early."""
    out = bytearray()
    length = 0
    uniform = rnd.random

    def node(depth: int) -> int:
        nonlocal length
        if depth == 1 or (depth < max_depth and uniform() < OPERATOR_P):
            n_args = MIN_ARGS + int(uniform() * (max_args - MIN_ARGS + 1))
            op = int(uniform() * len(OPERATORS))
            if parens:  # LRA's written form: one '(' per partial application
                out.extend(bytes([_LPAREN_ID]) * (n_args + 1))
            out.append(_OP_ID[op])
            length += 2  # the operator and its ']'
            args = []
            for _ in range(n_args):
                args.append(node(depth + 1))
                if parens:
                    out.append(_RPAREN_ID)
                if length > max_len:
                    raise _TooLong
            out.append(_END_ID)
            if parens:
                out.append(_RPAREN_ID)
            return apply_operator(OPERATORS[op], args)
        digit = int(uniform() * 10)
        out.append(_DIGIT_ID[digit])
        length += 1
        return digit

    value = node(1)
    return out, length, value


def max_possible_length(max_depth: int, max_args: int) -> int:
    """LRA length of the largest expression the generator can draw."""
    length = 1  # a digit at max_depth
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def check_bounds(min_len: int, max_len: int, max_depth: int, max_args: int) -> None:
    """ValueError for generator settings that can produce no expression."""
    if not (2 <= max_depth <= MAX_NESTING + 1) or max_args < MIN_ARGS:
        raise ValueError(
            f"ListOps needs 2 <= max_depth <= {MAX_NESTING + 1} and max_args >= {MIN_ARGS}"
        )
    if min_len > max_len or not (2 + MIN_ARGS <= max_len <= MAX_ROW_TOKENS):
        raise ValueError(
            f"min_len={min_len}, max_len={max_len}: need min_len <= max_len and "
            f"{2 + MIN_ARGS} <= max_len <= {MAX_ROW_TOKENS} (the shortest expression is e.g. "
            "[MAX 1 2 ])"
        )
    biggest = max_possible_length(max_depth, max_args)
    if min_len > biggest:
        raise ValueError(
            f"min_len={min_len} is unreachable: with max_depth={max_depth} and "
            f"max_args={max_args} the longest expression has {biggest} tokens"
        )


def generate(
    n: int,
    seed: int | str,
    min_len: int,
    max_len: int,
    max_depth: int = 10,
    max_args: int = 10,
    parens: bool = False,
    exclude: set[bytes] | None = None,
) -> tuple[list[bytes], list[int]]:
    """``n`` distinct random expressions (token-id bytes) and their values.

    ``exclude`` holds digests of expressions that must not be drawn (those of other splits);
    the new ones are added to it.
    """
    check_bounds(min_len, max_len, max_depth, max_args)
    seen = exclude if exclude is not None else set()
    rnd = random.Random(seed)  # str seeds hash with SHA-512: stable across runs and platforms
    seqs: list[bytes] = []
    labels: list[int] = []
    misses = 0  # draws in a row that gave nothing new: too many means the bounds are too tight
    while len(seqs) < n:
        if misses >= MAX_MISSES:
            raise ValueError(
                f"ListOps generator found only {len(seqs)} of {n} distinct expressions with "
                f"lengths {min_len}-{max_len}: {MAX_MISSES} draws in a row gave nothing new; "
                "widen the length bounds"
            )
        misses += 1
        try:
            out, length, value = _draw_expression(rnd, max_depth, max_args, max_len, parens)
        except _TooLong:
            continue
        if length < min_len:
            continue
        key = hashlib.blake2b(out, digest_size=16).digest()
        if key in seen:
            continue
        seen.add(key)
        misses = 0
        seqs.append(bytes(out))
        labels.append(value)
    return seqs, labels


def generate_splits(
    sizes: dict[str, int], seed: int, **kwargs
) -> dict[str, tuple[list[bytes], list[int]]]:
    """Test, then val, then train, each from its own stream and disjoint from the others."""
    seen: set[bytes] = set()
    out = {}
    for name in ("test", "val", "train"):
        out[name] = generate(sizes[name], f"listops/{seed}/{name}", exclude=seen, **kwargs)
    return out


def _cached(
    kind: str, key: dict, build: Callable[[], tuple[dict[str, TokenSequences], str]]
) -> tuple[dict[str, TokenSequences], str, str]:
    """Splits from the cache, else ``build()`` them and cache them (atomically, as .npz).

    ``key`` holds everything the result depends on; returns (splits, build's note, where the
    data came from).
    """
    key_text = json.dumps({**key, "version": _GENERATOR_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    path = cache_dir() / "listops" / f"{kind}-{digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key_text:
                splits = {
                    name: TokenSequences(z[f"{name}_tokens"], z[f"{name}_offsets"], z[f"{name}_y"])
                    for name in ("train", "val", "test")
                }
                return splits, str(z["note"]), f"read from the cache {path}"
    except (OSError, KeyError, ValueError, EOFError):
        pass  # missing or unreadable cache: build again and overwrite it
    splits, note = build()
    arrays: dict[str, np.ndarray] = {"key": np.array(key_text), "note": np.array(note)}
    for name, seqs in splits.items():
        arrays.update(
            {f"{name}_tokens": seqs.flat, f"{name}_offsets": seqs.offsets, f"{name}_y": seqs.labels}
        )
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    try:
        atomic_write(path, lambda f: f.write(buffer.getvalue()), own_folder=True)
        where = f"cached in {path}"
    except (OSError, UnicompError) as err:  # an unwritable cache must not stop a run
        where = f"not cached: {str(err).splitlines()[0]}"
    return splits, note, where


# --- LRA's TSV files ------------------------------------------------------------------------------
def find_tsv_folder(root: Path) -> Path | None:
    for sub in TSV_FOLDERS:
        folder = root / sub
        if any((folder / name).is_file() for name in TSV_NAMES.values()):
            return folder
    return None


def read_tsv(path: Path, keep_parens: bool = True) -> tuple[TokenSequences, int]:
    """One LRA ListOps TSV (header ``Source<TAB>Target``): the sequences and the number of
    rows whose Target differs from our evaluation (the file's label is kept)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it: {err}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file; expected a header 'Source<TAB>Target' and rows")
    if lines[0].rstrip("\r").split("\t") != ["Source", "Target"]:
        raise DataError(f"{path}: line 1: header is {lines[0][:60]!r}; expected 'Source\\tTarget'")
    seqs: list[bytes] = []
    labels: list[int] = []
    mismatches = 0
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2:
            raise DataError(
                f"{path}: line {lineno}: {len(fields)} tab-separated fields, expected 2"
            )
        source, target = fields[0], fields[1].strip()
        if not (target.isascii() and target.isdigit() and 0 <= int(target) <= 9):
            raise DataError(f"{path}: line {lineno}: Target {target[:20]!r} is not a digit 0-9")
        tokens = source.split()
        if len(tokens) > MAX_ROW_TOKENS:
            raise DataError(
                f"{path}: line {lineno}: {len(tokens)} tokens; rows are limited to "
                f"{MAX_ROW_TOKENS} (LRA's longest have about 6,000)"
            )
        try:
            value = evaluate(tokens)
        except ValueError as err:
            raise DataError(f"{path}: line {lineno}: malformed expression: {err}") from None
        if not keep_parens:
            tokens = [t for t in tokens if t not in ("(", ")")]
        mismatches += value != int(target)
        seqs.append(bytes(TOKEN_ID[t] for t in tokens))
        labels.append(int(target))
    if not seqs:
        raise DataError(f"{path}: no rows after the header")
    return TokenSequences.from_list(seqs, labels), mismatches


# --- the task -------------------------------------------------------------------------------------
class ListOps(SequenceTask):
    """ListOps: read an expression's tokens, predict its value (10 classes).

    Task arguments:
      source: ``auto`` (LRA TSVs if the data folder has them, else generate), ``generate`` or
        ``tsv``; data_root: folder with the TSVs (else $UNICOMP_DATA), searched as
        ``<root>/listops/``, ``<root>/lra_release/listops-1000/``, ``<root>/``;
      n_train, n_val, n_test, min_len, max_len, max_depth, max_args, seed: the generator;
      parens: generated - write LRA's parentheses (default no); TSV - keep the file's
        parentheses (default yes; ``false`` gives the inputs LRA's own pipeline saw);
      max_tokens: cut longer sequences to this many tokens (default: never cut).
    """

    name = "listops"
    vocab = VOCAB
    # Our defaults, not the paper's: the FPT paper does not list ListOps hyperparameters.
    # Evaluation batches stay small because sequences reach 2,000 tokens.
    default_train = {
        "steps": 20000,
        "lr": 1e-3,
        "batch_size": 16,
        "eval_every": 1000,
        "eval_batch_size": 32,
    }

    def __init__(
        self,
        source: str = "auto",
        data_root: str | None = None,
        n_train: int = 96_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        min_len: int = 500,
        max_len: int = 2000,
        max_depth: int = 10,
        max_args: int = 10,
        seed: int = 0,
        parens: bool | None = None,
        max_tokens: int | None = None,
    ):
        if source not in ("auto", "generate", "tsv"):
            raise ValueError(f"source={source!r}; choices: auto, generate, tsv")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        folder = None
        if source != "generate":
            root = find_data_root(data_root)
            folder = find_tsv_folder(root) if root is not None else None
            if folder is None and (source == "tsv" or data_root is not None):
                where = root if root is not None else "no folder (set data_root or UNICOMP_DATA)"
                raise DataError(
                    f"listops: no LRA TSV files ({', '.join(TSV_NAMES.values())}) in {where}"
                    f" or its {', '.join(TSV_FOLDERS[:2])} subfolders"
                )
        if folder is not None:
            splits, desc = self._read_tsvs(folder, keep_parens=parens is not False)
        else:
            splits, desc = self._generate(
                n_train, n_val, n_test, min_len, max_len, max_depth, max_args, seed, bool(parens)
            )
        if max_tokens is not None:
            cut = {}
            for name in list(splits):
                splits[name], cut[name] = splits[name].truncate(max_tokens)
            desc += (
                f"; cut to the first {max_tokens} tokens (max_tokens): "
                + ", ".join(f"{n} {name}" for name, n in cut.items())
                + " sequences cut"
            )
        self.set_splits(splits)
        self.spec = TaskSpec(max_len=self.longest(), d_out=10, n_classes=10, vocab_size=len(VOCAB))
        self.data_source = desc

    @staticmethod
    def _read_tsvs(folder: Path, keep_parens: bool) -> tuple[dict[str, TokenSequences], str]:
        paths = {name: folder / file for name, file in TSV_NAMES.items()}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            raise DataError(f"listops: {folder} lacks {', '.join(missing)}")

        def build() -> tuple[dict[str, TokenSequences], str]:
            splits, notes = {}, []
            for name, path in paths.items():
                splits[name], bad = read_tsv(path, keep_parens)
                if bad:
                    notes.append(f"; {bad} {path.name} Targets differ from our evaluation (kept)")
            return splits, "".join(notes)

        # Parsing 96,000 long rows takes minutes in Python: cache the token ids, keyed by
        # each file's path, size and modification time.
        stats = {
            n: (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for n, p in paths.items()
        }
        splits, note, where = _cached("tsv", {"files": stats, "keep_parens": keep_parens}, build)
        kept = "every symbol kept" if keep_parens else "parentheses dropped (parens=false)"
        desc = (
            f"LRA TSV files {', '.join(TSV_NAMES.values())} in {folder}; {kept}{note}; "
            f"token ids {where}"
        )
        return splits, desc

    @staticmethod
    def _generate(
        n_train: int,
        n_val: int,
        n_test: int,
        min_len: int,
        max_len: int,
        max_depth: int,
        max_args: int,
        seed: int,
        parens: bool,
    ) -> tuple[dict[str, TokenSequences], str]:
        sizes = {"train": n_train, "val": n_val, "test": n_test}
        if min(sizes.values()) < 1:
            raise ValueError("n_train, n_val and n_test must each be at least 1")
        kwargs = dict(
            min_len=min_len, max_len=max_len, max_depth=max_depth, max_args=max_args, parens=parens
        )
        check_bounds(min_len, max_len, max_depth, max_args)  # fail before any cache lookup
        args = {**sizes, "seed": seed, **kwargs}

        def build() -> tuple[dict[str, TokenSequences], str]:
            pairs = generate_splits(sizes, seed, **kwargs)
            return {name: TokenSequences.from_list(*pair) for name, pair in pairs.items()}, ""

        splits, _, where = _cached("generated", args, build)
        text = ", ".join(f"{k}={v}" for k, v in args.items())
        return splits, f"generated (LRA grammar, our generator): {text}; {where}"
