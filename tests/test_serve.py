"""``unicomp serve``: the real server in a subprocess on a loopback port, called over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
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
MAX_QUEUE = 4  # requests waiting per task on the test server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(backbone: str, folder: Path, log: Path, *flags: str):
    """``unicomp serve`` on ``folder`` in a subprocess on a free loopback port, its output in
    ``log``; yields (base URL, process)."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "unicomp", "serve", "--backbone", backbone,
        "--adapters", str(folder), "--port", str(port), "--threads", "1", *flags,
    ]  # fmt: skip
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
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(adapter_runs, tiny_bert, tmp_path_factory):  # noqa: F811
    """The server on bit-xor and listops adapters; yields (base URL, adapter folder)."""
    folder = tmp_path_factory.mktemp("served")
    for name, task in (("xor", "bit-xor"), ("listops", "listops")):
        shutil.copy(adapter_runs["files"] / f"{name}.safetensors", folder / f"{task}.safetensors")
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    flags = ["--batch-window-ms", "300", "--max-body-bytes", str(BODY_LIMIT)]
    flags += ["--rescan-seconds", "0.5", "--max-queue", str(MAX_QUEUE)]
    with _serving(tiny_bert, folder, log, *flags) as (url, _):
        yield url, folder


def _in_process(adapter_runs, name):  # noqa: F811
    from unicomp.serving.adapters import load_adapter

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
    # As strict as the task's TSV reader: malformed expressions are refused, not evaluated.
    ("listops", '{"inputs": ["] ] ]"]}', 422, "input 0: malformed expression: token 1: ']' closes"),
    ("listops", '{"inputs": ["[MAX"]}', 422, "input 0: malformed expression: 1 operator(s) never"),
    ("listops", '{"inputs": ["[MAX 2 3 ] 4"]}', 422, "token 5: '4' after the expression ended"),
    (
        "bit-xor",
        '{"inputs": ' + json.dumps([["10101", "11111"]] * 65) + "}",
        413,
        "65 inputs; at most 64 per request",
    ),
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
    inputs = _test_inputs(adapter_runs, "xor", _xor_inputs)[:MAX_QUEUE]
    before = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]
    with ThreadPoolExecutor(MAX_QUEUE) as pool:
        responses = list(pool.map(lambda item: _predict(url, "bit-xor", [item]), inputs))
    after = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]
    expected = _in_process(adapter_runs, "xor").predict(inputs)
    assert [r.json()["outputs"][0] for r in responses] == expected
    assert after["requests"] - before["requests"] == MAX_QUEUE
    # Four requests within the 300 ms window: fewer model batches than requests.
    assert after["batches"] - before["batches"] < MAX_QUEUE and after["largest_batch"] > 1


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
    """Python logging (logger ``unicomp.serve``): a start-up line, a line per adapter loaded or
    refused with the reason, a line per request with its status and latency."""
    import logging

    from fastapi.testclient import TestClient

    from unicomp.serving.serve import ServeConfig, create_app

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
    # a prediction's line names the model batch it ran in
    line = r"POST /tasks/bit-xor/predict 200 \d+\.\d ms batch 2"
    assert re.fullmatch(line, requests[0]), requests
    assert re.fullmatch(r"POST /tasks/nope/predict 404 \d+\.\d ms", requests[1]), requests


# --- limits, error shape, arguments ---------------------------------------------------------------
def test_a_full_queue_answers_503_with_retry_after(server):
    """More requests for one task than --max-queue within one batch window: the ones over the
    limit are answered at once, 503 with Retry-After, in the error shape; the others served."""
    url, _ = server
    with ThreadPoolExecutor(3 * MAX_QUEUE) as pool:
        responses = list(
            pool.map(lambda _: _predict(url, "bit-xor", [["10101", "11111"]]), range(3 * MAX_QUEUE))
        )
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503} and codes.count(200) >= MAX_QUEUE, codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1", r.headers
            assert "requests waiting, its limit; retry" in r.json()["error"], r.text


def test_an_over_limit_chunked_body_is_refused_before_the_model_runs(server):
    """A body without Content-Length whose first chunk is a whole valid request and whose
    next ones pass the limit: 413, and no model batch ran (was: the model ran, then 413)."""
    url, _ = server
    before = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]["batches"]

    def chunks():
        yield b'{"inputs": [["10101", "11111"]]}'
        for _ in range(3):
            yield b" " * (BODY_LIMIT // 2)

    response = httpx.post(
        f"{url}/tasks/bit-xor/predict",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert "exceeds the limit of 20000 bytes" in response.json()["error"]
    time.sleep(0.5)  # a batch window and more: a model batch would have run by now
    assert httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]["batches"] == before


def test_every_error_has_one_shape(server):
    """404, 405 and 422 answers of FastAPI's own (unknown path, wrong method, bad body) are
    {"error": "one line"}, as the server's own are (were {"detail": ...})."""
    url, _ = server
    cases = [
        ("GET", "/nothing-here", None, 404, "GET /nothing-here: no such endpoint; endpoints:"),
        ("DELETE", "/tasks", None, 405, "DELETE /tasks: method not allowed (allowed: GET)"),
        ("GET", "/tasks/bit-xor/predict", None, 405, "method not allowed (allowed: POST)"),
        ("POST", "/tasks/bit-xor/predict", "[1]", 422, "body: Input should be a valid dict"),
        ("POST", "/tasks/nope/predict", '{"inputs": [1]}', 404, "unknown task 'nope'"),
    ]
    for method, path, body, status, words in cases:
        response = httpx.request(
            method,
            f"{url}{path}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert response.status_code == status, (path, response.text)
        answer = response.json()
        assert list(answer) == ["error"] and "\n" not in answer["error"], answer
        assert words in answer["error"], (path, answer)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--seed", "-1"], "--seed must be in 0..9223372036854775807, got -1"),
        (["--port", "99999"], "--port must be in 1..65535, got 99999"),
        (["--max-batch", "4", "--max-inputs", "8"], "--max-inputs must be in 1..--max-batch (4)"),
        (["--max-queue", "0", "--request-timeout", "nan"], "--max-queue must be >= 1, got 0; "),
        (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
    ],
)
def test_out_of_range_serve_flags_are_one_line_errors_before_anything_loads(
    flags, words, tmp_path, capsys, monkeypatch
):
    """Refused before the backbone or any adapter loads (was: --seed -1 served and refused
    every adapter; --port 99999 an OverflowError traceback after everything had loaded)."""
    import unicomp.serving.serve
    from unicomp.cli import main

    def no_loading(*_args, **_kwargs):
        raise AssertionError("loading started")

    monkeypatch.setattr(unicomp.serving.serve, "create_app", no_loading)
    args = ["serve", "--backbone", "no-such-backbone", "--adapters", str(tmp_path), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("unicomp: error: serve: "), err
    assert words in err, err


def test_the_listing_reads_no_backbone_parameters_mid_batch(adapter_runs, tiny_bert, tmp_path):  # noqa: F811
    """GET /tasks while a batch runs: during a forward pass the adapter's position table stands
    in for the backbone's, so parameters counted then differ (were 20,640 and 20,832 by turns);
    the server counts them once, at load."""
    import torch

    from unicomp.serving.serve import ServeConfig, Server

    shutil.copy(adapter_runs["files"] / "xor.safetensors", tmp_path / "bit-xor.safetensors")
    server = Server(ServeConfig(backbone=tiny_bert, adapters=tmp_path, device="cpu"))
    server.scan_now()
    try:
        quiet = server.describe()
        during = []
        # after every module's forward pass, the backbone's included: a listing mid-batch
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda *_: during.append(server.describe())
        )
        try:
            server.tasks["bit-xor"].adapter.predict([["10101", "00111"]])
        finally:
            hook.remove()
        assert during and all(d == quiet for d in during), (quiet["backbone"], during)
    finally:
        server.executor.shutdown()


# --- reload by content, and the limits of one batch -----------------------------------------------
WINDOW_S = 0.5


@pytest.fixture(scope="module")
def limited(adapter_runs, tiny_bert, tmp_path_factory):  # noqa: F811
    """A server with small limits (4 inputs a batch, 40 tokens a request) on bit-xor and
    listops, rescanning every 0.2 s; yields (URL, folder, log file). Each test leaves the
    folder as it found it."""
    folder = tmp_path_factory.mktemp("limited")
    for name, task in (("xor", "bit-xor"), ("listops", "listops")):
        shutil.copy(adapter_runs["files"] / f"{name}.safetensors", folder / f"{task}.safetensors")
    log = tmp_path_factory.mktemp("limited-log") / "server.log"
    flags = ["--max-batch", "4", "--max-tokens", "40", "--batch-window-ms", str(WINDOW_S * 1000)]
    with _serving(tiny_bert, folder, log, *flags, "--rescan-seconds", "0.2") as (url, _):
        yield url, folder, log


def _negated(path: Path) -> bytes:
    """The adapter file with its head negated: the same size, other outputs."""
    from safetensors.torch import save

    from unicomp.serving.adapters import read_adapter

    tensors, meta = read_adapter(path)
    tensors["head.weight"], tensors["head.bias"] = -tensors["head.weight"], -tensors["head.bias"]
    data = save(tensors, metadata=meta)
    assert len(data) == path.stat().st_size
    return data


def _write_in_place(path: Path, data: bytes) -> None:
    """As ``cp -p`` writes: into the same file (inode), then its mtime set back."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def xor_versions(limited, adapter_runs, tmp_path):  # noqa: F811
    """(path served, original bytes, negated bytes, their outputs on INPUTS); the original is
    put back afterwards."""
    from unicomp.serving.adapters import load_adapter

    _, folder, _ = limited
    path = folder / "bit-xor.safetensors"
    original = (adapter_runs["files"] / "xor.safetensors").read_bytes()
    negated = _negated(adapter_runs["files"] / "xor.safetensors")
    (tmp_path / "negated.safetensors").write_bytes(negated)
    outputs = (
        _in_process(adapter_runs, "xor").predict(XOR_INPUTS),
        load_adapter(tmp_path / "negated.safetensors").predict(XOR_INPUTS),
    )
    assert outputs[0] != outputs[1]
    yield path, original, negated, outputs
    path.write_bytes(original)
    httpx.get(f"{limited[0]}/tasks", timeout=60)


XOR_INPUTS = [["10101", "11111"], ["00000", "01010"], ["11100", "00111"]]


def test_batches_hold_at_most_max_batch_inputs(limited, adapter_runs):  # noqa: F811
    """Two concurrent 3-input requests at --max-batch 4: two batches of 3, each request
    answered whole (was one batch of 6)."""
    url, _, _ = limited
    before = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: _predict(url, "bit-xor", XOR_INPUTS), range(2)))
    after = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]
    expected = _in_process(adapter_runs, "xor").predict(XOR_INPUTS)
    assert [r.json()["outputs"] for r in responses] == [expected, expected]
    assert after["largest_batch"] <= 4 and after["batches"] - before["batches"] == 2


def test_request_budgets_are_refused_before_the_model_runs(limited, adapter_runs):  # noqa: F811
    """More inputs than --max-inputs (here --max-batch, 4) or more input tokens than
    --max-tokens (40): 413 naming the limit, and no model batch runs."""
    from unicomp.serving.adapters import read_adapter

    url, _, _ = limited
    max_len = json.loads(read_adapter(adapter_runs["files"] / "listops.safetensors")[1]["spec"])[
        "max_len"
    ]
    length = min(max_len, 20)
    assert length > 10  # four of them pass 40 tokens
    long = "[SM " + " ".join(["1"] * (length - 2)) + " ]"
    before = httpx.get(f"{url}/stats", timeout=60).json()
    many = _predict(url, "bit-xor", XOR_INPUTS * 2)
    tokens = _predict(url, "listops", [long] * 4)
    after = httpx.get(f"{url}/stats", timeout=60).json()
    assert many.status_code == 413 and many.json() == {
        "error": "inputs: 6 inputs; at most 4 per request"
    }
    assert tokens.status_code == 413, tokens.text
    assert tokens.json()["error"] == f"inputs: {4 * length} tokens in all; at most 40 per request"
    assert [after[t]["batches"] for t in after] == [before[t]["batches"] for t in after]
    assert _predict(url, "listops", [long]).status_code == 200


def test_a_file_replaced_with_the_same_size_and_mtime_is_reloaded(limited, xor_versions):
    """As ``cp -p`` or ``rsync -t`` leave it: same size, same mtime, other bytes. Served after
    the next scan (was: the old adapter served forever)."""
    url, _, log = limited
    path, original, negated, (old, new) = xor_versions
    assert _predict(url, "bit-xor", XOR_INPUTS).json()["outputs"] == old
    before = path.stat()
    _write_in_place(path, negated)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    httpx.get(f"{url}/tasks", timeout=60)  # a scan (the periodic one would do it too)
    assert _predict(url, "bit-xor", XOR_INPUTS).json()["outputs"] == new
    _write_in_place(path, original)
    httpx.get(f"{url}/tasks", timeout=60)
    assert _predict(url, "bit-xor", XOR_INPUTS).json()["outputs"] == old
    assert log.read_text().count("reloaded task bit-xor from bit-xor.safetensors") >= 2


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_replacement_leaves_the_working_adapter_serving(limited, xor_versions, damage):
    """A half-written or garbled file in place of a served one: listed under rejected with the
    reason, the refusal logged, the adapter loaded before still served (was: 404 until the file
    was rewritten)."""
    url, _, log = limited
    path, original, _, (old, _) = xor_versions
    bad = {
        "truncated": original[: len(original) // 2],
        "garbage": os.urandom(len(original)),
        "empty": b"",
    }[damage]
    _write_in_place(path, bad)
    listed = httpx.get(f"{url}/tasks", timeout=60).json()
    assert "bit-xor" in {t["name"] for t in listed["tasks"]}
    assert "cannot read adapter" in listed["rejected"]["bit-xor"]["error"], listed["rejected"]
    response = _predict(url, "bit-xor", XOR_INPUTS)
    assert response.status_code == 200 and response.json()["outputs"] == old
    assert "refused bit-xor.safetensors (task bit-xor): cannot read adapter" in log.read_text()
    assert "the adapter loaded before keeps serving" in log.read_text()
    path.write_bytes(original)
    listed = httpx.get(f"{url}/tasks", timeout=60).json()
    assert listed["rejected"] == {}


@pytest.mark.parametrize("change", ["touch", "replace"])
def test_a_file_changed_during_a_batch_window_fails_no_request(limited, xor_versions, change):
    """Three requests waiting in a batch window while their adapter's file is touched, or
    rewritten with another adapter, and the folder scanned: every one answered 200, each by
    one whole adapter (was: the waiting requests answered 503)."""
    url, _, _ = limited
    path, _, negated, (old, new) = xor_versions
    n = 3  # one-input requests: a batch of 3 below --max-batch 4 waits for its whole window
    before = httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]["requests"]
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_predict, url, "bit-xor", XOR_INPUTS[:1]) for _ in range(n)]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/stats", timeout=60).json()["bit-xor"]["requests"] < before + n:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if change == "touch":  # all three are queued now, their batch window open
            os.utime(path)
        else:
            path.write_bytes(negated)
        httpx.get(f"{url}/tasks", timeout=60)  # a scan, now
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses]
    for r in responses:
        assert r.json()["outputs"] in (old[:1], new[:1])
