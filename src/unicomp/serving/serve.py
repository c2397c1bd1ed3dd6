"""``unicomp serve``: many FPT tasks over HTTP from one frozen backbone (FastAPI + uvicorn).

The backbone is loaded once; every adapter file (``*.safetensors``, unicomp.serving.adapters) in the
folder is loaded around that same object, by reference: the frozen weights exist once however
many tasks are served. Endpoints:

* ``GET /tasks``: the backbone (name, parameters, hash), each task (name, task, input and
  output spec with an example, parameter count, freeze policy, test metrics) and the files
  that were refused, with why;
* ``POST /tasks/{name}/predict`` with ``{"inputs": [...]}`` -> ``{"task", "outputs"}``;
* ``GET /stats``: requests, inputs and model batches per task (micro-batching at work);
* ``/openapi.json`` and ``/docs``: FastAPI's OpenAPI description.

Every error answer is JSON ``{"error": "..."}``, one line naming what was wrong: 404 unknown
task or endpoint, 405 wrong method, 413 a body, an input count or a token count over its limit,
422 a malformed body or an input the task does not take, 503 (with ``Retry-After``) a task's
queue full or no answer within the request time-out.

Logs (Python logging, logger ``unicomp.serve``; ``unicomp serve`` prints them with a time
stamp): one line at start-up (the backbone, the folder, the tasks), one per adapter file
loaded, reloaded, dropped or refused (with why), one per HTTP request (method, path, status,
milliseconds).

Micro-batching: the requests for one task that arrive within ``batch_window`` seconds of the
first run through the model as one batch, of at most ``max_batch`` inputs and ``max_tokens``
padded tokens (a request that does not fit waits for the next batch; none is split). Inputs are
checked and encoded once, on a thread, before a request joins the queue. All model work (loading
and forward passes) runs on one worker thread, since the backbone is shared.

Reload: the adapter folder is scanned again on ``GET /tasks``, on a request for an unknown task,
and every ``rescan`` seconds. A file is read again when its identity (device, inode, size,
mtime, ctime) changed or is too recent to trust, and rebuilt only when its bytes' SHA-256
differs from the last read's; the new adapter is built whole before it takes the old one's
place, batches under way finish on the adapter their requests were encoded for, and a file that
fails leaves the adapter before it serving (and is listed under ``rejected``).
"""
# No ``from __future__ import annotations``: FastAPI reads the route functions' annotations,
# which name classes local to create_app.

import asyncio
import contextlib
import hashlib
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


_MAX_PORT = 65_535
KEEP_ALIVE_S = 5  # an idle connection is closed after this (uvicorn's timeout_keep_alive)
SHUTDOWN_S = 30  # on Ctrl-C, requests in flight get this long to finish
ENDPOINTS = "endpoints: GET /tasks, POST /tasks/NAME/predict, GET /stats, GET /docs"
# A file's identity (device, inode, size, mtime, ctime) is trusted only once its last change is
# this much older than the read: a rewrite within one tick of a coarse file-system clock (FAT:
# 2 s) can leave the identity as it was, so until then the file is hashed again at each scan.
_SETTLE_NS = 2_000_000_000
_CLOSE: Any = object()  # queued after a removed task's requests: its worker answers, then stops


@dataclass
class ServeConfig:
    """The server's settings (``unicomp serve``'s flags; docs/serving.md lists them)."""

    backbone: str
    adapters: Path
    seed: int = 0  # the backbone's seed (random:/stats: names)
    batch_window: float = 0.005  # seconds a batch waits for more requests after its first
    max_batch: int = 64  # inputs per model batch
    max_inputs: int | None = None  # inputs per request (None: max_batch)
    max_tokens: int = 16_384  # input tokens per request, and padded tokens per model batch
    max_queue: int = 64  # requests per task waiting or running; more: 503 with Retry-After
    request_timeout: float = 60.0  # seconds a request waits for its outputs; then 503
    max_body_bytes: int = 1_000_000
    max_connections: int = 256  # open connections (uvicorn's limit_concurrency)
    rescan: float = 2.0  # seconds between scans of the folder; 0: only on request
    device: str = "auto"  # where the backbone and every adapter run: auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        """Every value in its range, checked before anything loads: one line naming each bad
        one, in the command's flags."""
        from unicomp.config import MAX_SEED

        if self.max_inputs is None:
            self.max_inputs = self.max_batch
        checks = [
            ("--seed", self.seed, 0 <= self.seed <= MAX_SEED, f"in 0..{MAX_SEED}"),
            ("--batch-window-ms", self.batch_window * 1000, 0 <= self.batch_window <= 60,
             "in 0..60000"),
            ("--max-batch", self.max_batch, self.max_batch >= 1, ">= 1"),
            ("--max-inputs", self.max_inputs, 1 <= self.max_inputs <= self.max_batch,
             f"in 1..--max-batch ({self.max_batch})"),
            ("--max-tokens", self.max_tokens, self.max_tokens >= 1, ">= 1"),
            ("--max-queue", self.max_queue, self.max_queue >= 1, ">= 1"),
            ("--request-timeout", self.request_timeout, 0 < self.request_timeout < 1e6,
             "> 0 (seconds)"),
            ("--max-body-bytes", self.max_body_bytes, self.max_body_bytes >= 1, ">= 1"),
            ("--max-connections", self.max_connections, self.max_connections >= 1, ">= 1"),
            ("--rescan-seconds", self.rescan, 0 <= self.rescan < 1e6, ">= 0"),
        ]  # fmt: skip
        bad = [f"{flag} must be {want}, got {value}" for flag, value, ok, want in checks if not ok]
        if bad:
            raise UnicompError("serve: " + "; ".join(bad))


@dataclass
class _Request:
    """One accepted request: its inputs encoded for ``adapter``, which its batch runs on."""

    adapter: Any
    x: Any  # (n, T) token ids or (n, T, d_in) features
    mask: Any  # (n, T) or None
    context: Any  # one entry per input for the codec's finish, or None
    future: asyncio.Future

    @property
    def n(self) -> int:
        return len(self.x)


@dataclass
class _Task:
    """One served task: its adapter (replaced whole when its file changes: a batch keeps the
    adapter its requests were encoded for), what ``GET /tasks`` says of it (computed once, at
    load), its queue of requests and its counters."""

    adapter: Any
    info: dict[str, Any]
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    worker: asyncio.Task | None = None
    waiting: int = 0  # requests accepted and not yet answered
    closed: bool = False  # its file is gone: the queued requests are answered, then no more
    requests: int = 0
    inputs: int = 0
    batches: int = 0
    largest_batch: int = 0


@dataclass(frozen=True)
class _Seen:
    """An adapter file as the server last read it."""

    key: tuple[int, ...]  # (device, inode, size, mtime_ns, ctime_ns), taken before the read
    digest: str  # SHA-256 of the bytes read
    read_ns: int  # wall clock just before the read

    def settled(self, key: tuple[int, ...]) -> bool:
        """Whether the file is surely the one read: the same identity, last changed well
        before the read (else the bytes are hashed again)."""
        return key == self.key and max(key[3], key[4]) < self.read_ns - _SETTLE_NS


class HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class Server:
    """The backbone, the loaded adapters and their batch queues."""

    def __init__(self, cfg: ServeConfig):
        from unicomp.backbones.loading import load_backbone
        from unicomp.serving.adapters import backbone_hash
        from unicomp.train import pick_device

        if not cfg.adapters.is_dir():
            raise UnicompError(f"--adapters {cfg.adapters}: no such folder")
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.backbone = load_backbone(cfg.backbone, seed=cfg.seed).eval()
        self.backbone.requires_grad_(False)
        # Said once, now: during a forward pass an adapter's tensors stand in for some of the
        # backbone's (functional_call), so its parameters are not to be read then.
        self.backbone_info = {
            "name": cfg.backbone,
            "params": sum(p.numel() for p in self.backbone.parameters()),
            "hash": backbone_hash(self.backbone),  # of the weights as loaded, before the move
            "source": self.backbone.source,
            "device": str(self.device),
        }
        self.hash = self.backbone_info["hash"]
        self.backbone.to(self.device)
        self.tasks: dict[str, _Task] = {}
        self.rejected: dict[str, dict[str, str]] = {}  # name -> {"file", "error"}
        self.seen: dict[str, _Seen] = {}  # every file read, served or refused
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="unicomp-model")
        self._scan_lock = asyncio.Lock()

    # --- the adapter folder ------------------------------------------------------------------
    # A scan stats every file (on the event loop: cheap); a file that is new, or whose identity
    # changed or is not yet settled, is read and hashed on the model thread; where the bytes
    # differ from those last read it is built there, in full, and only then put in place of
    # the adapter before it (on the event loop, between batches). A file that fails is listed
    # under ``rejected`` and the adapter before it, if any, keeps serving.
    def _changed(self) -> list[tuple[str, Path, tuple[int, ...]]]:
        """Drop the tasks whose file is gone; the files to read again."""
        found = {}
        for path in sorted(self.cfg.adapters.glob("*.safetensors")):
            with contextlib.suppress(OSError):  # removed meanwhile
                st = path.stat()
                key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                found[path.stem] = (path, key)
        for name in [n for n in self.seen if n not in found]:
            del self.seen[name]
            self.rejected.pop(name, None)
            task = self.tasks.pop(name, None)
            if task is not None:
                task.closed = True
                task.queue.put_nowait(_CLOSE)
                log.info("dropped task %s: its file is gone", name)
        return [
            (name, path, key)
            for name, (path, key) in found.items()
            if name not in self.seen or not self.seen[name].settled(key)
        ]

    def _read(self, files: list[tuple[str, Path, tuple[int, ...]]]) -> list[tuple]:
        """On the model thread: each file's bytes hashed, and built where they are new."""
        from unicomp.serving.adapters import load_adapter

        done = []
        for name, path, key in files:
            read_ns = time.time_ns()
            try:
                data = path.read_bytes()
            except OSError as err:  # removed meanwhile, or not a file: the next scan says
                seen = _Seen(key, "", read_ns)
                done.append((name, path, seen, None, f"cannot read adapter {path} ({err})"))
                continue
            seen = _Seen(key, hashlib.sha256(data).hexdigest(), read_ns)
            before = self.seen.get(name)
            if before is not None and before.digest == seen.digest:
                done.append((name, path, seen, None, None))  # touched, not changed
                continue
            try:
                adapter = load_adapter(path, self.backbone, device=self.device, data=data)
                done.append((name, path, seen, (adapter, adapter.describe()), None))
            except UnicompError as err:
                done.append((name, path, seen, None, str(err)))
            except Exception as err:  # any surprise: refused, the server keeps serving
                done.append((name, path, seen, None, f"{type(err).__name__}: {err}"))
        return done

    def _install(self, done: list[tuple]) -> None:
        """On the event loop: the adapters built put in place, the refusals noted."""
        for name, path, seen, built, error in done:
            self.seen[name] = seen
            task = self.tasks.get(name)
            if error is not None:
                self.rejected[name] = {"file": path.name, "error": error}
                kept = "; the adapter loaded before keeps serving" if task else ""
                log.warning("refused %s (task %s): %s%s", path.name, name, error, kept)
                continue
            if built is None:
                continue
            self.rejected.pop(name, None)
            adapter, info = built
            if task is None:
                self.tasks[name] = _Task(adapter, info)
            else:
                task.adapter, task.info = adapter, info
            log.info(
                "%s task %s from %s (%s, %d parameters of its own)",
                "loaded" if task is None else "reloaded",
                name,
                path.name,
                adapter.task,
                adapter.params,
            )

    def scan_now(self) -> None:
        """Synchronous scan (at start-up, before the event loop serves)."""
        self._install(self._read(self._changed()))

    async def scan(self) -> None:
        """Load new and changed adapter files, drop removed ones."""
        async with self._scan_lock:
            files = self._changed()
            if files:
                loop = asyncio.get_running_loop()
                self._install(await loop.run_in_executor(self.executor, self._read, files))

    async def rescan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.rescan)
            with contextlib.suppress(Exception):
                await self.scan()

    # --- predictions ---------------------------------------------------------------------------
    async def predict(self, name: str, inputs: list[Any], note: dict | None = None) -> list[Any]:
        cfg = self.cfg
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
        if len(inputs) > cfg.max_inputs:
            raise HTTPError(
                413, f"inputs: {len(inputs)} inputs; at most {cfg.max_inputs} per request"
            )
        if task.waiting >= cfg.max_queue:
            raise HTTPError(
                503,
                f"task {name!r} has {task.waiting} requests waiting, its limit; retry shortly",
                retry_after=1,
            )
        task.waiting += 1
        try:
            adapter = task.adapter  # the one these inputs are checked and encoded for
            x, mask, context = await self._encode(adapter, inputs)
            tokens = int(mask.sum()) if mask is not None else x.shape[0] * x.shape[1]
            if tokens > cfg.max_tokens:
                raise HTTPError(
                    413, f"inputs: {tokens} tokens in all; at most {cfg.max_tokens} per request"
                )
            if task.closed:
                raise HTTPError(404, f"task {name!r}: its file was removed")
            future = asyncio.get_running_loop().create_future()
            task.queue.put_nowait(_Request(adapter, x, mask, context, future))
            task.requests += 1
            task.inputs += len(inputs)
            if task.worker is None or task.worker.done():
                task.worker = asyncio.create_task(self._batches(task))
            try:  # on time-out the future is cancelled: a batch not yet run leaves it out
                outputs, batch = await asyncio.wait_for(future, cfg.request_timeout)
                if note is not None:
                    note["batch"] = batch  # the model batch it ran in, for the request's log line
                return outputs
            except TimeoutError:
                raise HTTPError(
                    503,
                    f"task {name!r}: no answer within {cfg.request_timeout:g} s (the model is "
                    "busy); retry later",
                    retry_after=max(1, round(cfg.request_timeout)),
                ) from None
        finally:
            task.waiting -= 1

    async def _encode(self, adapter, inputs: list[Any]):
        """The inputs checked and encoded once, on a thread (not the event loop's); a bad one
        fails its own request alone."""
        from unicomp.serving.codecs import InputError

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, adapter.codec.encode_context, inputs)
        except InputError as err:
            raise HTTPError(422, str(err)) from None
        except Exception as err:  # a shape no check foresaw: still the request's fault
            raise HTTPError(
                422, f"inputs: not {adapter.task} inputs ({type(err).__name__}: {err})"
            ) from None

    def _fits(self, batch: list[_Request], item: _Request) -> bool:
        """Whether ``item`` may join ``batch``: the same adapter, at most ``max_batch`` inputs
        and ``max_tokens`` padded tokens in all."""
        n = sum(r.n for r in batch) + item.n
        width = max(r.x.shape[1] for r in (*batch, item))
        return (
            item.adapter is batch[0].adapter
            and n <= self.cfg.max_batch
            and n * width <= self.cfg.max_tokens
        )

    async def _batches(self, task: _Task) -> None:
        """One task's worker: gather requests for ``batch_window`` seconds while they fit
        (``_fits``), run them as one batch, hand each request its outputs. A request that
        does not fit waits for the next batch; none is split."""
        loop = asyncio.get_running_loop()
        held: _Request | None = None
        while True:
            first = held if held is not None else await task.queue.get()
            held = None
            if first is _CLOSE:
                return
            if first.future.done():  # its client stopped waiting
                continue
            batch = [first]
            deadline = loop.time() + self.cfg.batch_window
            while sum(r.n for r in batch) < self.cfg.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(task.queue.get(), timeout)
                except TimeoutError:
                    break
                if item is not _CLOSE and item.future.done():
                    continue
                if item is _CLOSE or not self._fits(batch, item):
                    held = item
                    break
                batch.append(item)
            await self._run(task, batch)

    async def _run(self, task: _Task, batch: list[_Request]) -> None:
        x, mask = _stack(batch)
        context = None if batch[0].context is None else [c for r in batch for c in r.context]
        task.batches += 1
        task.largest_batch = max(task.largest_batch, len(x))
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(
                self.executor, batch[0].adapter.run, x, mask, context
            )
        except Exception as err:  # noqa: BLE001 (reported to each request)
            log.exception("task %s: a batch of %d inputs failed", batch[0].adapter.name, len(x))
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(HTTPError(500, f"{type(err).__name__}: {err}"))
            return
        start = 0
        for r in batch:
            if not r.future.done():
                r.future.set_result((outputs[start : start + r.n], len(x)))
            start += r.n

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone_info,
            "tasks": [t.info for t in self.tasks.values()],
            "rejected": dict(self.rejected),
        }

    def stats(self) -> dict[str, Any]:
        return {
            name: {
                "requests": t.requests,
                "inputs": t.inputs,
                "batches": t.batches,
                "largest_batch": t.largest_batch,
                "waiting": t.waiting,
            }
            for name, t in self.tasks.items()
        }


def _stack(batch: list[_Request]):
    """One model batch from requests encoded apart: token rows (2-D) right-padded with id 0
    and mask 0 to the longest, as the codec pads the rows of one request."""
    import torch
    import torch.nn.functional as F

    width = max(r.x.shape[1] for r in batch)

    def pad(t):
        return F.pad(t, (0, width - t.shape[1])) if t.dim() == 2 else t

    x = torch.cat([pad(r.x) for r in batch])  # (B, T) or (B, T, d_in)
    mask = None if batch[0].mask is None else torch.cat([pad(r.mask) for r in batch])
    return x, mask


class _RequestLog:
    """ASGI middleware: one log line per HTTP request, with its status and how long it took
    to answer (outermost, so that answers of the other middleware are logged too)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        note = scope["unicomp_log"] = {}  # what the app adds to this request's line

        async def noted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noted)
        finally:
            ms = 1000 * (time.perf_counter() - started)
            batch = f" batch {note['batch']}" if "batch" in note else ""
            log.info("%s %s %d %.1f ms%s", scope["method"], scope["path"], status, ms, batch)


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the
    application sees any of it (by its Content-Length, or, without one (chunked), as soon as
    the bytes received pass the limit); a body within it is read whole, then handed on."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _answer(send, 413, self._over(int(length)))
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await _answer(send, 413, self._over(seen))
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if handed:
                return await receive()  # after the body: the disconnect, when it comes
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _over(self, size: int) -> str:
        return f"request body of {size}+ bytes exceeds the limit of {self.limit} bytes"


async def _answer(send, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    """An error answer sent straight on the ASGI channel, in the one shape: {"error": ...}."""
    body = json.dumps({"error": error}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def create_app(cfg: ServeConfig):
    """The FastAPI application of ``cfg``: the backbone and the folder's adapters loaded now."""
    _require_fastapi()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

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
        for task in server.tasks.values():
            if task.worker is not None:
                task.worker.cancel()
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

    # One shape for every error answer: {"error": "one line"} (FastAPI's own are {"detail"}).
    @app.exception_handler(HTTPError)
    async def _http_error(_request: Request, err: HTTPError):
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after else None
        return JSONResponse({"error": str(err)}, status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request: Request, err: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        if err.status_code == 404:
            message = f"{where}: no such endpoint; {ENDPOINTS}"
        elif err.status_code == 405:
            allowed = (err.headers or {}).get("Allow", "")
            message = f"{where}: method not allowed (allowed: {allowed}); {ENDPOINTS}"
        else:
            message = f"{where}: {err.detail}"
        return JSONResponse({"error": message}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception):  # a bug: logged with its trace
        return JSONResponse(
            {"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500
        )

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
    async def predict(name: str, body: PredictRequest, request: Request) -> PredictResponse:
        """Outputs for the inputs, in order; requests arriving together are batched."""
        outputs = await server.predict(name, body.inputs, request.scope.get("unicomp_log"))
        return PredictResponse(task=name, outputs=outputs)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """Per task: requests, inputs, model batches, the largest batch, requests waiting."""
        return server.stats()

    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes)
    app.add_middleware(_RequestLog)  # added last: the outermost
    return app


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load everything, then serve until interrupted."""
    if not 1 <= port <= _MAX_PORT:  # before anything loads
        raise UnicompError(f"serve: --port must be in 1..{_MAX_PORT}, got {port}")
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
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        limit_concurrency=cfg.max_connections,  # beyond: uvicorn's own 503, in plain text
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=SHUTDOWN_S,
    )
    log.info("stopped after %.0f s", time.perf_counter() - started)
