"""``unicomp serve``: many FPT tasks over HTTP from one frozen backbone (FastAPI + uvicorn).

The backbone is loaded once; every adapter file (``*.safetensors``, unicomp.adapters) in the
folder is loaded around that same object, by reference: the frozen weights exist once however
many tasks are served. Endpoints:

* ``GET /tasks``: the backbone (name, parameters, hash), each task (name, task, input and
  output spec with an example, parameter count, freeze policy, test metrics) and the files
  that were refused, with why;
* ``POST /tasks/{name}/predict`` with ``{"inputs": [...]}`` -> ``{"task", "outputs"}``; bad
  input is a 4xx JSON ``{"error": "..."}`` naming what was wrong (404 unknown task, 413 body
  over the limit, 422 malformed body or an input the task does not take);
* ``GET /stats``: requests, inputs and model batches per task (micro-batching at work);
* ``/openapi.json`` and ``/docs``: FastAPI's OpenAPI description.

Logs (Python logging, logger ``unicomp.serve``; ``unicomp serve`` prints them with a time
stamp): one line at start-up (the backbone, the folder, the tasks), one per adapter file
loaded, reloaded, dropped or refused (with why), one per HTTP request (method, path, status,
milliseconds).

Micro-batching: the requests for one task that arrive within ``batch_window`` seconds of the
first (up to ``max_batch`` inputs) run through the model as one batch. All model work (loading
and forward passes) runs on one worker thread, since the backbone is shared. The adapter folder
is scanned again on ``GET /tasks``, on a request for an unknown task, and every ``rescan``
seconds: new files are loaded, changed ones reloaded, removed ones dropped, without a restart.
"""
# No ``from __future__ import annotations``: FastAPI reads the route functions' annotations,
# which name classes local to create_app.

import asyncio
import contextlib
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unicomp.errors import UnicompError

log = logging.getLogger("unicomp.serve")


def _require_fastapi() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise UnicompError(
            f"unicomp serve needs FastAPI and uvicorn ({err.name} is missing): "
            'pip install "unicomp[serve]" (scripts/setup.sh installs it)'
        ) from None


@dataclass
class ServeConfig:
    backbone: str
    adapters: Path
    seed: int = 0  # the backbone's seed (random:/stats: names)
    batch_window: float = 0.005  # seconds a batch waits for more requests after its first
    max_batch: int = 64  # inputs per model batch (and per request)
    max_body_bytes: int = 1_000_000
    rescan: float = 2.0  # seconds between scans of the folder; 0: only on request
    device: str = "auto"  # where the backbone and every adapter run: auto | cpu | cuda | cuda:N


@dataclass
class _Task:
    adapter: Any
    state: tuple[int, int]  # (mtime_ns, size) of the file when loaded
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: asyncio.Task | None = None
    requests: int = 0
    inputs: int = 0
    batches: int = 0
    largest_batch: int = 0


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Server:
    """The backbone, the loaded adapters and their batch queues."""

    def __init__(self, cfg: ServeConfig):
        from unicomp.adapters import backbone_hash
        from unicomp.backbones.hf import load_backbone
        from unicomp.train import pick_device

        if not cfg.adapters.is_dir():
            raise UnicompError(f"--adapters {cfg.adapters}: no such folder")
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.backbone = load_backbone(cfg.backbone, seed=cfg.seed).eval()
        self.backbone.requires_grad_(False)
        self.hash = backbone_hash(self.backbone)  # of the weights as loaded, before the move
        self.backbone.to(self.device)
        self.tasks: dict[str, _Task] = {}
        self.rejected: dict[str, dict[str, Any]] = {}  # name -> {"file", "error", "state"}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="unicomp-model")
        self._scan_lock = asyncio.Lock()

    # --- the adapter folder ------------------------------------------------------------------
    def _files(self) -> dict[str, tuple[Path, tuple[int, int]]]:
        found = {}
        for path in sorted(self.cfg.adapters.glob("*.safetensors")):
            with contextlib.suppress(OSError):  # removed meanwhile
                st = path.stat()
                found[path.stem] = (path, (st.st_mtime_ns, st.st_size))
        return found

    def _load(self, path: Path):
        from unicomp.adapters import load_adapter

        return load_adapter(path, self.backbone, device=self.device)

    def scan_now(self) -> None:
        """Synchronous scan (at start-up, before the event loop serves)."""
        for name, (path, state) in self._files().items():
            self._loaded(name, path, state, *self._try_load(path))

    def _try_load(self, path: Path) -> tuple[Any, str | None]:
        try:
            return self._load(path), None
        except UnicompError as err:
            return None, str(err)
        except Exception as err:  # a file being written, or any surprise: refuse, keep serving
            return None, f"{type(err).__name__}: {err}"

    def _loaded(self, name: str, path: Path, state, adapter, error: str | None) -> None:
        old = self.tasks.pop(name, None)
        if old is not None and old.worker is not None:
            old.worker.cancel()
        self.rejected.pop(name, None)
        if adapter is None:
            self.rejected[name] = {"file": path.name, "error": error, "state": state}
            log.warning("refused %s (task %s): %s", path.name, name, error)
        else:
            self.tasks[name] = _Task(adapter, state)
            log.info(
                "%s task %s from %s (%s, %d parameters of its own)",
                "reloaded" if old is not None else "loaded",
                name,
                path.name,
                adapter.task,
                adapter.params,
            )

    async def scan(self) -> None:
        """Load new and changed adapter files, drop removed ones."""
        async with self._scan_lock:
            files = self._files()
            for name in [n for n in self.tasks if n not in files]:
                task = self.tasks.pop(name)
                if task.worker is not None:
                    task.worker.cancel()
                log.info("dropped task %s: its file is gone", name)
            for name in [n for n in self.rejected if n not in files]:
                del self.rejected[name]
            loop = asyncio.get_running_loop()
            for name, (path, state) in files.items():
                known = self.tasks.get(name) or self.rejected.get(name)
                current = known.state if isinstance(known, _Task) else (known or {}).get("state")
                if current == state:
                    continue
                adapter, error = await loop.run_in_executor(self.executor, self._try_load, path)
                self._loaded(name, path, state, adapter, error)

    async def rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rescan)
            with contextlib.suppress(Exception):
                await self.scan()

    # --- predictions ---------------------------------------------------------------------------
    async def predict(self, name: str, inputs: list[Any]) -> list[Any]:
        from unicomp.codecs import InputError

        if name not in self.tasks:
            await self.scan()
        task = self.tasks.get(name)
        if task is None:
            why = (
                f" (its file was refused: {self.rejected[name]['error']})"
                if name in self.rejected
                else ""
            )
            raise HTTPError(
                404, f"unknown task {name!r}{why}; tasks: {', '.join(self.tasks) or 'none'}"
            )
        if not inputs:
            raise HTTPError(422, "inputs: expected a non-empty list of inputs")
        if len(inputs) > self.cfg.max_batch:
            raise HTTPError(
                422, f"inputs: {len(inputs)} inputs; at most {self.cfg.max_batch} per request"
            )
        try:  # checked here, so that one bad request never fails the batch it would join
            task.adapter.codec.encode(inputs)
        except InputError as err:
            raise HTTPError(422, str(err)) from None
        except Exception as err:  # a shape no check foresaw: still the request's fault
            raise HTTPError(
                422, f"inputs: not {task.adapter.task} inputs ({type(err).__name__}: {err})"
            ) from None
        task.requests += 1
        task.inputs += len(inputs)
        future = asyncio.get_running_loop().create_future()
        await task.queue.put((inputs, future))
        if task.worker is None:
            task.worker = asyncio.create_task(self._batches(task))
        try:
            return await future
        except asyncio.CancelledError:
            raise HTTPError(
                503, f"task {name!r} was reloaded or removed meanwhile; retry"
            ) from None

    async def _batches(self, task: _Task) -> None:
        """One task's worker: gather requests for ``batch_window`` seconds (or ``max_batch``
        inputs), run them as one batch, hand each request its outputs."""
        loop = asyncio.get_running_loop()
        pending: list[tuple[list, asyncio.Future]] = []
        try:
            while True:
                pending = [await task.queue.get()]
                size = len(pending[0][0])
                deadline = loop.time() + self.cfg.batch_window
                while size < self.cfg.max_batch:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(task.queue.get(), timeout)
                    except TimeoutError:
                        break
                    pending.append(item)
                    size += len(item[0])
                batch = [x for inputs, _ in pending for x in inputs]
                task.batches += 1
                task.largest_batch = max(task.largest_batch, len(batch))
                try:
                    outputs = await loop.run_in_executor(self.executor, task.adapter.predict, batch)
                except Exception as err:  # noqa: BLE001 (reported to each request)
                    for _, future in pending:
                        if not future.done():
                            future.set_exception(HTTPError(500, f"{type(err).__name__}: {err}"))
                    continue
                start = 0
                for inputs, future in pending:
                    if not future.done():
                        future.set_result(outputs[start : start + len(inputs)])
                    start += len(inputs)
        finally:  # cancelled (task reloaded or removed): the waiting requests learn it
            for _, future in pending:
                if not future.done():
                    future.cancel()
            while not task.queue.empty():
                _, future = task.queue.get_nowait()
                future.cancel()

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": {
                "name": self.cfg.backbone,
                "params": sum(p.numel() for p in self.backbone.parameters()),
                "hash": self.hash,
                "source": self.backbone.source,
                "device": str(self.device),
            },
            "tasks": [t.adapter.describe() for t in self.tasks.values()],
            "rejected": {
                n: {"file": r["file"], "error": r["error"]} for n, r in self.rejected.items()
            },
        }

    def stats(self) -> dict[str, Any]:
        return {
            name: {
                "requests": t.requests,
                "inputs": t.inputs,
                "batches": t.batches,
                "largest_batch": t.largest_batch,
            }
            for name, t in self.tasks.items()
        }


class _RequestLog:
    """ASGI middleware: one log line per HTTP request, with its status and how long it took
    to answer (outermost, so that answers of the other middleware are logged too)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            ms = 1000 * (time.perf_counter() - started)
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, ms)


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is
    parsed (by its Content-Length, or while it streams in without one: the application then
    sees an empty body and its answer is replaced by the 413)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send, int(length))
        seen, over, answered = 0, False, False

        async def limited():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request" and not over:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message):
            nonlocal answered
            if not over:
                return await send(message)
            if not answered:
                answered = True
                await self._refuse(send, seen)

        await self.app(scope, limited, guarded)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps(
            {"error": f"request body of {size}+ bytes exceeds the limit of {self.limit} bytes"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(cfg: ServeConfig):
    """The FastAPI application of ``cfg``: the backbone and the folder's adapters loaded now."""
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    server = Server(cfg)
    server.scan_now()
    log.info(
        "backbone %s (%s...) loaded; adapters from %s; tasks: %s",
        cfg.backbone,
        server.hash[:19],
        cfg.adapters,
        ", ".join(server.tasks) or "none yet",
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        rescans = asyncio.create_task(server.rescan_forever()) if cfg.rescan > 0 else None
        yield
        if rescans is not None:
            rescans.cancel()
        server.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="unicomp",
        summary=f"FPT tasks on one frozen backbone ({cfg.backbone})",
        lifespan=lifespan,
    )
    app.state.server = server

    class PredictRequest(BaseModel):
        inputs: list[Any] = Field(
            description="the task's natural inputs (GET /tasks: each task's input and example)"
        )

    class PredictResponse(BaseModel):
        task: str
        outputs: list[Any]

    @app.exception_handler(HTTPError)
    async def _http_error(_request: Request, err: HTTPError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError):
        parts = []
        for e in err.errors():
            loc = e.get("loc", ())
            if e.get("type") == "json_invalid":
                error = (e.get("ctx") or {}).get("error", "")
                parts.append(f"body is not valid JSON ({error} at character {loc[-1]})")
                continue
            where = ".".join(str(p) for p in loc if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        message = "; ".join(parts) + ' (expected a JSON body {"inputs": [...]})'
        return JSONResponse({"error": message}, status_code=422)

    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        """The backbone, every task served (name, input/output spec, parameters) and the
        adapter files refused, with why. Scans the adapter folder first."""
        await server.scan()
        return server.describe()

    @app.post("/tasks/{name}/predict", response_model=PredictResponse)
    async def predict(name: str, body: PredictRequest) -> PredictResponse:
        """Outputs for the inputs, in order; requests arriving together are batched."""
        outputs = await server.predict(name, body.inputs)
        return PredictResponse(task=name, outputs=outputs)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """Per task: requests, inputs, model batches, the largest batch."""
        return server.stats()

    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(_RequestLog)  # added last: the outermost
    return app


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load everything, then serve until interrupted."""
    _require_fastapi()
    import uvicorn

    if not log.handlers:  # the logs on stdout, unless the caller set up logging
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s unicomp serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    app = create_app(cfg)
    log.info("serving http://%s:%d/tasks, /docs", host, port)
    started = time.perf_counter()
    uvicorn.run(app, host=host, port=port, log_level="warning")
    log.info("stopped after %.0f s", time.perf_counter() - started)
