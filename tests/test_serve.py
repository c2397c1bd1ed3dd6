"""``unicomp serve``: the real server in a subprocess on a loopback port, called over HTTP."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.test_adapters import _listops_inputs, _xor_inputs, adapter_runs  # noqa: F401

httpx = pytest.importorskip("httpx", reason="the serve extra: pip install unicomp[serve]")
pytest.importorskip("fastapi", reason="the serve extra: pip install unicomp[serve]")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
BODY_LIMIT = 20_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(adapter_runs, tiny_bert, tmp_path_factory):  # noqa: F811
    """The server on bit-xor and listops adapters; yields (base URL, adapter folder)."""
    folder = tmp_path_factory.mktemp("served")
    for name, task in (("xor", "bit-xor"), ("listops", "listops")):
        shutil.copy(adapter_runs["files"] / f"{name}.safetensors", folder / f"{task}.safetensors")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "unicomp", "serve", "--backbone", tiny_bert,
        "--adapters", str(folder), "--port", str(port), "--batch-window-ms", "300",
        "--max-body-bytes", str(BODY_LIMIT), "--rescan-seconds", "0.5", "--threads", "1",
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600  # imports are slow on a busy 2-core machine
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"server did not start: {log.read_text()}"
            try:
                if httpx.get(f"{url}/tasks", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _in_process(adapter_runs, name):  # noqa: F811
    from unicomp.adapters import load_adapter

    return load_adapter(adapter_runs["files"] / f"{name}.safetensors")


def _test_inputs(adapter_runs, name, natural):  # noqa: F811
    from unicomp.experiments.fpt import load_fpt_run

    return natural(load_fpt_run(adapter_runs[name])[1].split("test").x)


def _predict(url: str, task: str, inputs) -> httpx.Response:
    return httpx.post(f"{url}/tasks/{task}/predict", json={"inputs": inputs}, timeout=120)


def test_tasks_lists_both_adapters(server, adapter_runs):  # noqa: F811
    url, _ = server
    listed = httpx.get(f"{url}/tasks", timeout=60).json()
    tasks = {t["name"]: t for t in listed["tasks"]}
    assert set(tasks) == {"bit-xor", "listops"} and listed["rejected"] == {}
    assert tasks["bit-xor"]["params"] == _in_process(adapter_runs, "xor").params
    assert "two strings of 5 bits" in tasks["bit-xor"]["input"]
    assert "ListOps expression" in tasks["listops"]["input"]
    assert listed["backbone"]["hash"].startswith("sha256-2:")


@pytest.mark.parametrize(
    "name, task, natural",
    [("xor", "bit-xor", _xor_inputs), ("listops", "listops", _listops_inputs)],
)
def test_http_predictions_equal_in_process(server, adapter_runs, name, task, natural):  # noqa: F811
    url, _ = server
    inputs = _test_inputs(adapter_runs, name, natural)[:16]
    response = _predict(url, task, inputs)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "task": task,
        "outputs": _in_process(adapter_runs, name).predict(inputs),
    }


BAD_REQUESTS = [
    # (task, body as JSON text, status, words in the error)
    ("bit-xor", '{"inputs": [["101", "11111"]]}', 422, "input 0: expected a string of 5"),
    ("bit-xor", '{"inputs": [["10101", "11111"], 7]}', 422, "input 1: expected a list of 2"),
    ("bit-xor", '{"inputs": 3}', 422, "inputs: Input should be a valid list"),
    ("bit-xor", '{"input": []}', 422, "inputs: Field required"),
    ("bit-xor", '{"inputs": [', 422, "body is not valid JSON"),
    ("bit-xor", '{"inputs": []}', 422, "expected a non-empty list"),
    ("listops", '{"inputs": ["[MAX 2 x ]"]}', 422, "input 0: unknown symbol 'x' at token 3"),
    ("listops", '{"inputs": [[1, 2]]}', 422, "input 0: expected a non-empty string"),
    ("no-such-task", '{"inputs": [1]}', 404, "unknown task 'no-such-task'; tasks: bit-xor"),
    ("bit-xor", '{"inputs": ["' + "1" * BODY_LIMIT + '"]}', 413, "exceeds the limit of 20000"),
]


def test_bad_requests_get_4xx_naming_the_problem_then_it_still_serves(server):
    url, _ = server
    for task, body, status, words in BAD_REQUESTS:
        response = httpx.post(
            f"{url}/tasks/{task}/predict",
            content=body,
            headers={"content-type": "application/json"},
            timeout=120,
        )
        assert response.status_code == status, (body[:60], response.text)
        assert words in response.json()["error"], (body[:60], response.text)
    ok = _predict(url, "bit-xor", [["10101", "11111"]])
    assert ok.status_code == 200 and len(ok.json()["outputs"]) == 1


def test_concurrent_requests_are_batched(server, adapter_runs):  # noqa: F811
    url, _ = server
    inputs = _test_inputs(adapter_runs, "xor", _xor_inputs)[:8]
    before = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda item: _predict(url, "bit-xor", [item]), inputs))
    after = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]
    expected = _in_process(adapter_runs, "xor").predict(inputs)
    assert [r.json()["outputs"][0] for r in responses] == expected
    assert after["requests"] - before["requests"] == 8
    # Eight requests within the 300 ms window: fewer model batches than requests.
    assert after["batches"] - before["batches"] < 8 and after["largest_batch"] > 1


def test_new_adapter_files_are_picked_up_without_restart(server, adapter_runs):  # noqa: F811
    url, folder = server
    (folder / "broken.safetensors").write_bytes(b"half a file")
    shutil.copy(adapter_runs["files"] / "memory.safetensors", folder / "bit-memory.safetensors")
    deadline = time.monotonic() + 120
    while True:  # the periodic rescan (0.5 s) loads it; GET /tasks would scan too
        listed = httpx.get(f"{url}/tasks", timeout=60).json()
        if "bit-memory" in {t["name"] for t in listed["tasks"]} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "bit-memory" in {t["name"] for t in listed["tasks"]}
    assert "cannot read adapter" in listed["rejected"]["broken"]["error"]
    item = ["01010101", "11110000", "0?0?0?01"]
    response = _predict(url, "bit-memory", [item])
    assert response.status_code == 200, response.text
    assert response.json()["outputs"] == _in_process(adapter_runs, "memory").predict([item])
    (folder / "bit-memory.safetensors").unlink()
    (folder / "broken.safetensors").unlink()
    listed = httpx.get(f"{url}/tasks", timeout=60).json()
    assert {t["name"] for t in listed["tasks"]} == {"bit-xor", "listops"}
    assert listed["rejected"] == {}
    assert _predict(url, "bit-memory", [item]).status_code == 404


def test_openapi_and_docs_pages(server):
    url, _ = server
    spec = httpx.get(f"{url}/openapi.json", timeout=60).json()
    assert "/tasks/{name}/predict" in spec["paths"] and "/tasks" in spec["paths"]
    assert httpx.get(f"{url}/docs", timeout=60).status_code == 200


def test_docs_curl_examples_run(server):
    """Every ``curl`` example in docs/serving.md, sent to the test server: the keys of the
    answer the docs show; an error the docs show, word for word."""
    url, _ = server
    examples = re.findall(
        r"^curl -s (?:-X POST )?(\S+)(?:[^\n]*? -d '([^\n]*)')?\n(.*?)```",
        DOCS.read_text(),
        re.M | re.S,
    )
    assert len(examples) >= 4
    for address, body, shown in examples:
        path = address.split("8000", 1)[1]
        if body:
            response = httpx.post(f"{url}{path}", json=json.loads(body), timeout=120)
        else:
            response = httpx.get(f"{url}{path}", timeout=60)
        if '"error"' in shown:
            assert response.status_code == 422 and response.json() == json.loads(shown)
            continue
        assert response.status_code == 200, (path, response.text)
        for key in re.findall(r'"(\w+)":', shown):
            assert f'"{key}":' in response.text, (path, key, response.text)


def test_docs_python_example_runs(adapter_runs, tmp_path):  # noqa: F811
    """The Python example of docs/serving.md, run where adapters/bit-xor.safetensors exists."""
    block = DOCS.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "adapters").mkdir()
    shutil.copy(
        adapter_runs["files"] / "xor.safetensors", tmp_path / "adapters/bit-xor.safetensors"
    )
    out = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"\['[01]{5}'\]", out.stdout), out.stdout


def test_the_server_logs_start_up_adapters_and_requests(adapter_runs, tiny_bert, tmp_path, caplog):  # noqa: F811
    """Python logging (``unicomp.serve``): a start-up line, a line per adapter loaded or
    refused with the reason, a line per request with its status and latency."""
    import logging

    from fastapi.testclient import TestClient

    from unicomp.serve import ServeConfig, create_app

    shutil.copy(adapter_runs["files"] / "xor.safetensors", tmp_path / "bit-xor.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"half a file")
    caplog.set_level(logging.INFO, logger="unicomp.serve")
    app = create_app(ServeConfig(backbone=tiny_bert, adapters=tmp_path, rescan=0))
    lines = [r.getMessage() for r in caplog.records if r.name == "unicomp.serve"]
    assert any(
        line.startswith(f"backbone {tiny_bert} (") and "tasks: bit-xor" in line for line in lines
    ), lines
    assert any(
        re.fullmatch(r"loaded task bit-xor from bit-xor.safetensors \(bit-xor, \d+ .*\)", line)
        for line in lines
    ), lines
    refused = [line for line in lines if line.startswith("refused broken.safetensors")]
    assert len(refused) == 1 and "cannot read adapter" in refused[0], lines
    caplog.clear()
    with TestClient(app) as client:
        inputs = _test_inputs(adapter_runs, "xor", _xor_inputs)[:2]
        ok = client.post("/tasks/bit-xor/predict", json={"inputs": inputs})
        missing = client.post("/tasks/nope/predict", json={"inputs": [1]})
    assert (ok.status_code, missing.status_code) == (200, 404)
    lines = [r.getMessage() for r in caplog.records if r.name == "unicomp.serve"]
    requests = [line for line in lines if line.startswith("POST ")]
    assert len(requests) == 2, lines
    assert re.fullmatch(r"POST /tasks/bit-xor/predict 200 \d+\.\d ms", requests[0]), requests
    assert re.fullmatch(r"POST /tasks/nope/predict 404 \d+\.\d ms", requests[1]), requests
