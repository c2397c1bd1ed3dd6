"""Load-and-fault test of ``unicomp serve`` on loopback: clients keep asking while the adapter
files under them are added, replaced, corrupted and removed.

    python benchmarks/serve_faults.py --backbone minilm-l6 \\
        --adapter adapters/bit-xor.safetensors --seconds 60 --clients 8

Starts the real server (``python -m unicomp serve``, serve_load.Server) on a temporary folder
holding the adapter as task ``main``, rescanning every 0.1 s. For ``--seconds``, ``--clients``
threads send requests (the task's example input, three times) to ``main`` (three in four) and
to ``extra-0`` .. ``extra-3``, while one thread changes the folder, in turn, every ``--pause``
seconds:

* ``flip``: ``main`` rewritten in place by a version whose head is negated (other outputs),
  with the same size and mtime, as ``cp -p`` or ``rsync -t`` leave a file;
* ``truncate``: ``main`` cut to half its bytes in place;
* ``garbage``: ``main`` overwritten in place by random bytes of the same size and mtime;
* ``restore``: ``main`` replaced by the original (a new file renamed over it);
* ``add``: a copy of the original as the next ``extra-<k>``; ``remove``: the oldest one removed.

Checks, per request: 200 only with the outputs of one whole adapter (``main``: the original's
or the negated one's, for all three inputs; an extra: the original's); 404 only for an extra
(absent at that moment); 503 is the server saying it is busy; any other status (a 500), or a
request without an answer (a connection error), is a failure. The server's resident memory
after a warm-up and at the end: flat within 10% + 20 MB. Prints the figures and one JSON
line; ``--out`` writes the record (results/benchmarks/<name>.json); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from _measure import write_record  # benchmarks/ helper
from serve_load import Server, memory

EXTRAS = 4


def _negated_head(path: Path) -> bytes:
    """The adapter file of ``path`` with its head's weights and bias negated: the same size
    (same header, same tensor shapes), other outputs."""
    from safetensors.torch import save

    from unicomp.serving.adapters import read_adapter

    tensors, meta = read_adapter(path)
    for name in ("head.weight", "head.bias"):
        if name in tensors:
            tensors[name] = -tensors[name]
    data = save(tensors, metadata=meta)
    if len(data) != path.stat().st_size:
        sys.exit(f"{path}: the negated file has {len(data)} bytes, the original another size")
    return data


def _in_place(path: Path, data: bytes, keep_mtime: bool = True) -> None:
    """``data`` written into ``path`` itself (same inode), its mtime kept, as ``cp -p`` does."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class Folder:
    """The changes the mutator makes, in turn, each counted."""

    def __init__(self, folder: Path, original: bytes, negated: bytes):
        self.folder, self.original, self.negated = folder, original, negated
        self.main = folder / "main.safetensors"
        self.extras: list[int] = []  # the extra-<k> files present, oldest first
        self.next_extra = 0
        self.done: Counter = Counter()

    def flip(self) -> None:
        _in_place(
            self.main, self.negated if self.main.read_bytes() != self.negated else self.original
        )

    def truncate(self) -> None:
        size = self.main.stat().st_size
        with open(self.main, "r+b") as f:
            f.truncate(size // 2)

    def garbage(self) -> None:
        _in_place(self.main, os.urandom(len(self.original)))

    def restore(self) -> None:
        tmp = self.folder / ".main.tmp"  # not *.safetensors: the server never reads it
        tmp.write_bytes(self.original)
        os.replace(tmp, self.main)

    def add(self) -> None:
        k = self.next_extra % EXTRAS
        self.next_extra += 1
        if k not in self.extras:
            shutil.copy(self.main.with_name(".original"), self.folder / f"extra-{k}.safetensors")
            self.extras.append(k)

    def remove(self) -> None:
        if self.extras:
            (self.folder / f"extra-{self.extras.pop(0)}.safetensors").unlink()

    def run(self, stop_at: float, pause: float) -> None:
        steps = [self.flip, self.truncate, self.restore, self.add, self.flip, self.garbage,
                 self.restore, self.flip, self.add, self.remove]  # fmt: skip
        k = 0
        while time.monotonic() < stop_at:
            step = steps[k % len(steps)]
            step()
            self.done[step.__name__] += 1
            k += 1
            time.sleep(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--adapter", required=True, help="an adapter file (any task)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=60, help="duration of the load")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between changes")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--window-ms", type=float, default=5.0, help="batching window")
    parser.add_argument("--seed", type=int, default=0, help="the clients' random choices")
    parser.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    args = parser.parse_args()
    source = Path(args.adapter)
    original, negated = source.read_bytes(), _negated_head(source)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapters"
        folder.mkdir()
        (folder / ".original").write_bytes(original)  # what ``add`` copies
        (folder / "main.safetensors").write_bytes(original)
        flags = ("--rescan-seconds", "0.1", "--request-timeout", "30")
        server = Server(args.backbone, folder, args.threads, args.window_ms, *flags)
        try:
            result = _load_and_faults(server, folder, original, negated, args)
        finally:
            server.stop()
    checks = result["checks"]
    codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(result["status"].items()))
    print(
        f"{result['requests']:,} requests in {result['seconds']} s from {args.clients} "
        f"clients ({codes}); without an answer: {result['lost']}; answered otherwise "
        f"than allowed: {result['unexpected']}; folder changes: {sum(result['changes'].values()):,}"
    )
    print(
        f"server RSS {result['rss_before_mb']} MB after warm-up, {result['rss_after_mb']} MB after"
    )
    print(json.dumps(result))
    if args.out:
        rows = [
            [f"requests, {args.clients} clients, {result['seconds']} s", f"{result['requests']:,}"],
            ["answers by status", codes],
            ["requests without an answer", str(result["lost"])],
            ["answers otherwise than allowed (a 200 not from one whole adapter, a 404 for "
             "the served task, another status)", str(result["unexpected"])],
            ["folder changes (" + ", ".join(f"{k} {n}" for k, n in result["changes"].items()) + ")",
             f"{sum(result['changes'].values()):,}"],
            ["server RSS after warm-up / after the load",
             f"{result['rss_before_mb']:,.0f} MB / {result['rss_after_mb']:,.0f} MB"],
        ]  # fmt: skip
        about = (
            f"`unicomp serve` on {args.backbone}, task {result['task']}, under {args.clients} "
            f"clients while its adapter files change every {args.pause:g} s "
            f"({args.threads} server thread(s), batching window {args.window_ms:g} ms)."
        )
        write_record(args.out, about, ["", "figure"], rows, results=result)
    if not all(checks.values()):
        sys.exit(f"failed: {', '.join(k for k, ok in checks.items() if not ok)}")


def _load_and_faults(server: Server, folder: Path, original: bytes, negated: bytes, args) -> dict:
    url = server.url
    example = server.tasks["tasks"][0]["example"]
    inputs = [example] * 3

    def ask(client: httpx.Client, task: str) -> httpx.Response:
        return client.post(f"{url}/tasks/{task}/predict", json={"inputs": inputs}, timeout=60)

    with httpx.Client() as client:  # the two whole answers, and a warm-up
        expected_original = ask(client, "main").json()["outputs"]
        (folder / "main.safetensors").write_bytes(negated)
        httpx.get(f"{url}/tasks", timeout=60)  # a scan: the negated file is served
        expected_negated = ask(client, "main").json()["outputs"]
        (folder / "main.safetensors").write_bytes(original)
        httpx.get(f"{url}/tasks", timeout=60)
        for _ in range(20):
            ask(client, "main")
    if expected_negated == expected_original:
        sys.exit("the negated head gives the same outputs: choose another adapter")
    rss_before = memory(server.proc.pid)
    status: Counter = Counter()
    lost, unexpected, problems = [0], [0], []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def client_loop(k: int) -> None:
        rng = random.Random(args.seed * 1000 + k)
        with httpx.Client() as client:
            while time.monotonic() < stop_at:
                task = "main" if rng.random() < 0.75 else f"extra-{rng.randrange(EXTRAS)}"
                try:
                    r = ask(client, task)
                except httpx.TransportError as err:
                    with lock:
                        lost[0] += 1
                        problems.append(f"{task}: no answer ({type(err).__name__})")
                    continue
                whole = {"main": (expected_original, expected_negated)}.get(
                    task, (expected_original,)
                )
                try:  # an answer not in the JSON error shape is a failure too
                    body = r.json()
                    ok = (
                        (r.status_code == 200 and body["outputs"] in whole)
                        or (r.status_code == 404 and task != "main")
                        or (r.status_code == 503 and "retry" in body["error"])
                    )
                except (ValueError, KeyError, TypeError):
                    ok = False
                with lock:
                    status[str(r.status_code)] += 1
                    if not ok:
                        unexpected[0] += 1
                        problems.append(f"{task}: {r.status_code} {r.text[:200]}")

    changes = Folder(folder, original, negated)
    started = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(args.clients)]
    threads.append(threading.Thread(target=changes.run, args=(stop_at, args.pause)))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = round(time.monotonic() - started, 1)
    listed = httpx.get(f"{url}/tasks", timeout=60).json()
    rss_after = memory(server.proc.pid)
    before, after = rss_before["rss_mb"], rss_after["rss_mb"]
    return {
        "task": listed["tasks"][0]["task"] if listed["tasks"] else None,
        "clients": args.clients,
        "seconds": seconds,
        "requests": sum(status.values()) + lost[0],
        "status": dict(status),
        "lost": lost[0],
        "unexpected": unexpected[0],
        "problems": problems[:20],
        "changes": dict(changes.done),
        "rss_before_mb": before,
        "rss_after_mb": after,
        "peak_mb": rss_after["peak_mb"],
        "checks": {
            "every request answered": lost[0] == 0,
            "no 5xx but 503": not any(c.startswith("5") and c != "503" for c in status),
            "every 200 from one whole adapter, 404 only for an absent extra": unexpected[0] == 0,
            "RSS flat (within 10% + 20 MB)": after <= before * 1.1 + 20,
        },
    }


if __name__ == "__main__":
    main()
