"""The prepared device check: the default commands end to end on one device, one JSON of
figures. Made for a session lent a GPU (at most a few minutes there), and run on the CPU by
the test suite (tests/test_device_readiness.py) so it cannot rot.

    python benchmarks/gpu_check.py --device cuda --out gpu-check.json
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/check.json   # what CI runs

What it runs, each through the `unicomp` command line in a subprocess (as a user would),
timed, its run folder's figures collected:

1. ``fpt train`` with its defaults (attention and precision ``auto``) on bit XOR, minilm-l6;
2. ``dt collect`` (random policy, Pendulum-v1), ``dt train`` and ``dt eval --device``;
3. ``fpt export-adapter`` of that FPT run, then ``serve --device`` on it: a few predict
   requests over HTTP (the device the server reports, each request's seconds);
4. with ``--torchrun`` and at least 2 GPUs: the FPT step under ``torchrun`` with 2 processes.

Every step's exit status and its last error line are recorded: a failing step is a finding,
not a crash of the check. The machine (CPU model and bf16 flags, GPU name and compute
capability), versions and the unicomp commit lead the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch


def machine(device: str) -> dict:
    from unicomp.train import cpu_bf16_flags

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_bf16_flags": cpu_bf16_flags(), "cores": os.cpu_count(),
            "torch": torch.__version__, "device": device}  # fmt: skip
    if device.startswith("cuda") and torch.cuda.is_available():
        d = torch.device(device)
        info["gpu"] = torch.cuda.get_device_name(d)
        info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(d)))
        info["gpus"] = torch.cuda.device_count()
    return info


def step(name: str, argv: list[str], results: dict, env: dict | None = None) -> bool:
    """Run one command; record its time, exit status and last error line."""
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = [x for x in (proc.stderr or "").splitlines() if x.strip()]
    results[name] = {
        "command": " ".join(argv),
        "exit": proc.returncode,
        "seconds": round(time.perf_counter() - t, 1),
        **({"error": lines[-1][:300]} if proc.returncode and lines else {}),
    }
    return proc.returncode == 0


def _http(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as answer:
        return json.loads(answer.read())


def serve_check(uni: list[str], backbone: str, adapters: Path, device: str, results: dict,
                requests: int = 5, start_timeout: float = 300) -> None:  # fmt: skip
    """``unicomp serve --device`` on the adapters of ``adapters``; ``requests`` predictions of
    bit XOR over HTTP, each timed; the server stopped after."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [*uni, "serve", "--backbone", backbone, "--adapters", str(adapters), "--port",
            str(port), "--device", device, "--rescan-seconds", "0"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    found: dict = {"command": " ".join(argv), "exit": 1}
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                if proc.poll() is not None or time.perf_counter() - t > start_timeout:
                    log.seek(0)
                    lines = [x for x in log.read().splitlines() if x.strip()] or ["no output"]
                    found["error"] = lines[-1][:300]
                    break
                try:
                    listed = _http(f"{url}/tasks")
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.5)
            if "error" not in found:
                found["start_seconds"] = round(time.perf_counter() - t, 1)
                found["device"] = listed["backbone"].get("device")
                found["tasks"] = [task["name"] for task in listed["tasks"]]
                seconds, outputs = [], 0
                for i in range(requests):
                    inputs = [[f"{i % 32:05b}", f"{(7 * i) % 32:05b}"]] * (1 + i)
                    r = time.perf_counter()
                    outputs += len(_http(f"{url}/tasks/bit-xor/predict", {"inputs": inputs})
                                   ["outputs"])  # fmt: skip
                    seconds.append(round(time.perf_counter() - r, 4))
                found |= {"exit": 0, "requests": requests, "outputs": outputs,
                          "request_seconds": seconds}  # fmt: skip
        except Exception as err:  # a failing step is a finding
            found["error"] = f"{type(err).__name__}: {err}"[:300]
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    found["seconds"] = round(time.perf_counter() - t, 1)
    results["serve"] = found


def read(path: Path, keys: tuple[str, ...]) -> dict:
    m = json.loads(path.read_text())
    return {k: m.get(k) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu [cuda]")
    ap.add_argument("--quick", action="store_true", help="a few steps each (the CI check)")
    ap.add_argument("--torchrun", action="store_true", help="also 2 processes (2+ GPUs)")
    ap.add_argument("--out", default="gpu-check.json", help="the JSON of figures")
    args = ap.parse_args()
    uni = [sys.executable, "-m", "unicomp"]
    steps = 20 if args.quick else 500
    results: dict = {"machine": machine(args.device)}
    from unicomp.provenance import provenance

    results["versions"] = provenance()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fpt = tmp / "fpt"
        if step("fpt_train", [*uni, "fpt", "train", "--task", "bit-xor", "--backbone",
                              "minilm-l6", "--steps", str(steps), "--eval-every",
                              str(max(steps // 4, 1)), "--device", args.device,
                              "--no-progress", "--out", str(fpt)], results):  # fmt: skip
            results["fpt_train"] |= read(fpt / "metrics.json", (
                "test_accuracy", "precision", "precision_reason", "attention", "device",
                "train_seconds", "steps", "data_on"))  # fmt: skip
            adapters = tmp / "adapters"
            adapters.mkdir()
            adapter = adapters / "bit-xor.safetensors"
            export = [*uni, "fpt", "export-adapter", str(fpt), "-o", str(adapter)]
            if step("export_adapter", export, results):
                serve_check(uni, "minilm-l6", adapters, args.device, results)
        data, dt = tmp / "pendulum", tmp / "dt"
        episodes = "8" if args.quick else "50"
        ok = step("dt_collect", [*uni, "dt", "collect", "--env", "Pendulum-v1", "--policy",
                                 "random", "--episodes", episodes, "--out", str(data)],
                  results)  # fmt: skip
        dt_steps = "10" if args.quick else "1000"
        if ok and step("dt_train", [*uni, "dt", "train", "--data", str(data), "--steps",
                                    dt_steps, "--warmup-steps", "2", "--eval-every", dt_steps,
                                    "--eval-episodes", "2", "--device", args.device,
                                    "--no-progress", "--out", str(dt)], results):  # fmt: skip
            results["dt_train"] |= read(dt / "metrics.json", (
                "test_loss", "return_mean", "precision", "device", "train_seconds"))  # fmt: skip
            if step("dt_eval", [*uni, "dt", "eval", "--run", str(dt), "--eval-episodes", "4",
                                "--device", args.device], results):  # fmt: skip
                results["dt_eval"] |= read(dt / "eval.json", ("return_mean", "device"))
        gpus = results["machine"].get("gpus", 0)
        if args.torchrun and gpus >= 2:
            ddp = tmp / "ddp"
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "unicomp.cli"]  # fmt: skip
            if step("fpt_torchrun_2", [*torchrun, "fpt", "train", "--task", "bit-xor",
                                       "--backbone", "minilm-l6", "--steps", str(steps),
                                       "--device", "cuda", "--no-progress", "--out",
                                       str(ddp)], results):  # fmt: skip
                results["fpt_torchrun_2"] |= read(ddp / "metrics.json", (
                    "test_accuracy", "processes", "train_seconds"))  # fmt: skip
        elif args.torchrun:
            results["fpt_torchrun_2"] = {"skipped": f"{gpus} GPU(s): needs 2"}
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("exit")]
    results["failed"] = failed
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written: {args.out}; failed steps: {', '.join(failed) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
