"""Load benchmark of ``unicomp serve`` on loopback: latency, throughput and memory.

    nice -n 10 .venv/bin/python benchmarks/serve_load.py --backbone minilm-l6 \\
        --adapter adapters/bit-xor.safetensors --adapter adapters/listops.safetensors

Starts the real server (``python -m unicomp serve``) in a subprocess on a free loopback port,
twice, on temporary folders of adapter files copied from ``--adapter`` (cycled to 10 files):

1. **one adapter** (the first): latency of ``--requests`` sequential requests of one input
   (median, p95), then throughput of ``--clients`` concurrent clients sending one-input
   requests for ``--seconds`` (requests/s; model batches from ``GET /stats``); the server's
   resident memory (RSS, and its peak, VmHWM, from /proc) after that;
2. **ten adapters**: one request to each, then the server's RSS and peak;
3. **ten separate full models**: a process that loads each of the ten adapter files with its
   own copy of the backbone (``unicomp.load_adapter(path)``, no sharing), predicts one input
   with each, and reports its RSS and peak.

The criterion: the ten-adapter server within 10% of the one-adapter server plus
the nine further adapter files' bytes. Clients run in this process, on the same machine as
the server (their CPU time is the server's loss). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _measure import write_record  # benchmarks/ helper


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, float]:
    """Resident memory of process ``pid`` now and at its peak, in MB (Linux /proc)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MB
    return {"rss_mb": round(fields["VmRSS"], 1), "peak_mb": round(fields["VmHWM"], 1)}


class Server:
    """``unicomp serve`` on ``folder`` in a subprocess, until ``stop``; ``flags``: more of its
    flags (a flag given again overrides the one before)."""

    def __init__(self, backbone: str, folder: Path, threads: int, window_ms: float, *flags: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "unicomp", "serve", "--backbone", backbone,
            "--adapters", str(folder), "--port", str(self.port), "--threads", str(threads),
            "--batch-window-ms", str(window_ms), "--rescan-seconds", "0", *flags,
        ]  # fmt: skip
        self.log = folder.parent / f"server-{self.port}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        t = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                self.tasks = httpx.get(f"{self.url}/tasks", timeout=10).json()
                break
            except httpx.TransportError:
                time.sleep(0.5)
        self.start_seconds = time.perf_counter() - t

    def predict(self, client: httpx.Client, task: str, inputs: list) -> list:
        r = client.post(f"{self.url}/tasks/{task}/predict", json={"inputs": inputs}, timeout=300)
        r.raise_for_status()
        return r.json()["outputs"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _fill(folder: Path, adapters: list[Path], n: int) -> list[str]:
    """``n`` adapter files in ``folder``, copies of ``adapters`` in turn; their task names."""
    folder.mkdir()
    names = []
    for k in range(n):
        src = adapters[k % len(adapters)]
        name = f"{src.stem}-{k}" if n > 1 else src.stem
        shutil.copy(src, folder / f"{name}.safetensors")
        names.append(name)
    return names


def latency(server: Server, task: str, example, n: int) -> dict[str, float]:
    times = []
    with httpx.Client() as client:
        server.predict(client, task, [example])  # warm-up
        for _ in range(n):
            t = time.perf_counter()
            server.predict(client, task, [example])
            times.append(time.perf_counter() - t)
    times.sort()
    return {
        "median_ms": round(1000 * statistics.median(times), 2),
        "p95_ms": round(1000 * times[min(len(times) - 1, int(0.95 * len(times)))], 2),
        "requests": n,
    }


def throughput(server: Server, task: str, example, clients: int, seconds: float) -> dict:
    before = httpx.get(f"{server.url}/stats", timeout=60).json()[task]
    counts = [0] * clients
    stop_at = time.perf_counter() + seconds

    def client_loop(k: int) -> None:
        with httpx.Client() as client:
            while time.perf_counter() < stop_at:
                server.predict(client, task, [example])
                counts[k] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    after = httpx.get(f"{server.url}/stats", timeout=60).json()[task]
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients,
        "requests": sum(counts),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(sum(counts) / elapsed, 1),
        "mean_batch": round((after["inputs"] - before["inputs"]) / max(batches, 1), 2),
    }


_SEPARATE = """
import json, sys
from pathlib import Path
import unicomp
models = [unicomp.load_adapter(p) for p in sys.argv[1:]]  # each loads its own backbone
for m in models:
    m.predict([m.codec.example])
fields = {}
for line in Path("/proc/self/status").read_text().splitlines():
    key, _, value = line.partition(":")
    if key in ("VmRSS", "VmHWM"):
        fields[key] = round(int(value.split()[0]) / 1024, 1)
print(json.dumps({"rss_mb": fields["VmRSS"], "peak_mb": fields["VmHWM"], "models": len(models)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--adapter", action="append", required=True, help="an adapter file")
    parser.add_argument("--requests", type=int, default=200, help="sequential latency requests")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20, help="throughput duration")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--window-ms", type=float, default=5.0, help="batching window")
    parser.add_argument("--n-adapters", type=int, default=10)
    parser.add_argument(
        "--out",
        help="write the record behind the docs' table here (results/benchmarks/<name>.json)",
    )
    args = parser.parse_args()
    adapters = [Path(p) for p in args.adapter]
    result: dict = {"backbone": args.backbone, "threads": args.threads, "window_ms": args.window_ms}
    result["adapter_bytes"] = {p.name: p.stat().st_size for p in adapters}
    with tempfile.TemporaryDirectory() as tmp:
        one = _fill(Path(tmp) / "one", adapters[:1], 1)[0]
        server = Server(args.backbone, Path(tmp) / "one", args.threads, args.window_ms)
        try:
            info = server.tasks
            example = info["tasks"][0]["example"]
            result["backbone_params"] = info["backbone"]["params"]
            result["task"] = info["tasks"][0]["task"]
            result["latency_batch1"] = latency(server, one, example, args.requests)
            result["throughput"] = throughput(server, one, example, args.clients, args.seconds)
            result["server_1_adapter"] = memory(server.proc.pid)
        finally:
            server.stop()
        ten = _fill(Path(tmp) / "ten", adapters, args.n_adapters)
        server = Server(args.backbone, Path(tmp) / "ten", args.threads, args.window_ms)
        try:
            with httpx.Client() as client:
                for task in server.tasks["tasks"]:
                    server.predict(client, task["name"], [task["example"]])
            assert len(server.tasks["tasks"]) == args.n_adapters, server.tasks["rejected"]
            result[f"server_{args.n_adapters}_adapters"] = memory(server.proc.pid)
        finally:
            server.stop()
        files = sorted(str(p) for p in (Path(tmp) / "ten").glob("*.safetensors"))
        out = subprocess.run(
            [sys.executable, "-c", _SEPARATE, *files], capture_output=True, text=True, check=True
        )
        result[f"separate_{args.n_adapters}_full_models"] = json.loads(out.stdout.splitlines()[-1])
        extra_mb = sum((Path(tmp) / "ten" / f"{n}.safetensors").stat().st_size for n in ten[1:])
    one_rss = result["server_1_adapter"]["rss_mb"]
    ten_rss = result[f"server_{args.n_adapters}_adapters"]["rss_mb"]
    bound = one_rss + extra_mb / 2**20
    result["ten_vs_one_plus_adapters"] = round(ten_rss / bound, 3)
    lat, thr = result["latency_batch1"], result["throughput"]
    print(f"backbone {args.backbone} ({result['backbone_params']:,} parameters), task {one}")
    print(f"latency, batch 1: median {lat['median_ms']} ms, p95 {lat['p95_ms']} ms")
    print(
        f"throughput, {thr['clients']} clients: {thr['requests_per_s']} requests/s "
        f"(mean model batch {thr['mean_batch']})"
    )
    for key in ("server_1_adapter", f"server_{args.n_adapters}_adapters"):
        print(f"{key}: RSS {result[key]['rss_mb']} MB, peak {result[key]['peak_mb']} MB")
    sep = result[f"separate_{args.n_adapters}_full_models"]
    print(
        f"{args.n_adapters} separate full models: RSS {sep['rss_mb']} MB, peak {sep['peak_mb']} MB"
    )
    print(
        f"{args.n_adapters} adapters / (1 adapter + the other files' bytes): "
        f"{result['ten_vs_one_plus_adapters']}"
    )
    print(json.dumps(result))
    if args.out:
        n, sep = args.n_adapters, result[f"separate_{args.n_adapters}_full_models"]
        rows = [
            [f"latency, batch 1 ({args.requests} requests)",
             f"median {lat['median_ms']} ms, p95 {lat['p95_ms']} ms"],
            [f"throughput, {thr['clients']} concurrent clients ({thr['seconds']} s)",
             f"{thr['requests_per_s']} requests/s, mean model batch {thr['mean_batch']} inputs"],
            ["server RSS, 1 adapter (after the load above)",
             f"{result['server_1_adapter']['rss_mb']:,.0f} MB"],
            [f"server RSS, {n} adapters", f"{result[f'server_{n}_adapters']['rss_mb']:,.0f} MB"],
            [f"{n} separate full models, one process (no server)", f"{sep['rss_mb']:,.0f} MB"],
            [f"{n} adapters / (1 adapter + the {n - 1} further files' bytes)",
             f"{result['ten_vs_one_plus_adapters']}"],
        ]  # fmt: skip
        about = (
            f"`unicomp serve` on {args.backbone} ({result['backbone_params']:,} parameters), "
            f"task {result['task']}, {args.threads} server thread(s), batching window "
            f"{args.window_ms:g} ms."
        )
        write_record(args.out, about, ["", "figure"], rows, results=result)


if __name__ == "__main__":
    main()
