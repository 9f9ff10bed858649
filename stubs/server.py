"""The lifecycle every stub shares: an aiohttp app on its own event loop in a background thread.

A stub subclasses ``ScriptedServer``, adds its routes in ``_routes`` and speaks its wire format
there; this module owns the rest: start/stop and the context manager, recording what arrives
(``records``: method, path, query, headers, body, the client's port; ``requests``; ``headers``;
``arrivals``),
TCP_NODELAY, the helpers a fault needs (``_hang``, ``_abort``, ``_cut``, ``_send``), the framing
of a body, and the command line (``serve_main``). Never imports ``nexpy``: a stub is an
independent peer.

Framing (``framing=``, ``--framing``): how a body's end is marked on the wire, since a cut looks
different in each and real servers and proxies use both (DESIGN §9).
``chunked`` (aiohttp's default for a stream): ``Transfer-Encoding: chunked``; a cut leaves the
chunked body incomplete. ``close``: HTTP/1.1 ``Connection: close`` with neither chunking nor a
``Content-Length`` (simple servers, some proxies): the body ends where the connection does, so a
clean cut (FIN) looks to the client exactly like a finished body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from aiohttp import web

from stubs.script import Script

__all__ = ["FRAMINGS", "ScriptedServer", "serve_main", "status_fault"]

ScriptLike = Script | Mapping[str, Any] | list[Any] | None

FRAMINGS = ("chunked", "close")


class _CloseDelimited(web.StreamResponse):
    """A response whose body ends when the connection closes: no chunking, no Content-Length,
    ``Connection: close``. aiohttp chunks any HTTP/1.1 body of unknown length unless its length
    check is off (as for its own WebSocket responses)."""

    _length_check = False

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.force_close()


@web.middleware
async def _nodelay(request: web.Request, handler: Any) -> web.StreamResponse:
    # aiohttp sets TCP_NODELAY itself; set it again explicitly, since without it every small
    # response waits ~44 ms for a delayed ACK (DESIGN §8).
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    resp: web.StreamResponse = await handler(request)
    return resp


class ScriptedServer:
    """A scripted HTTP server on its own event loop in a background thread.

    Subclasses set ``url_path`` (what ``url`` adds to ``base_url``), ``cli_module`` and
    ``cli_options`` (for ``serve_main``), and add their routes in ``_routes``.
    """

    url_path: ClassVar[str] = ""
    cli_module: ClassVar[str] = "stubs.server"
    # Extra command-line options: (flag, argparse keywords); each dest is a constructor keyword.
    cli_options: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()

    def __init__(
        self,
        script: ScriptLike = None,
        *,
        record: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        framing: str = "chunked",
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r} (known: {', '.join(FRAMINGS)})")
        self.script = script if isinstance(script, Script) else Script.from_obj(script)
        self.framing = framing
        self.host = host
        self.port = port
        self._record_path = Path(record) if record else None
        self._record_file: Any = None
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._requests: list[Any] = []
        self._arrivals: list[float] = []
        self._call_counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._started = time.time()

    # -- public -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """What a client takes as its base URL: ``base_url`` plus ``url_path``."""
        return self.base_url + self.url_path

    @property
    def records(self) -> list[dict[str, Any]]:
        """Each recorded request as {"method", "path", "query", "headers", "body", "port"} (a
        copy); "port" is the client's: requests on one kept-alive connection share it."""
        with self._lock:
            return list(self._records)

    @property
    def requests(self) -> list[Any]:
        """The recorded request bodies, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def headers(self) -> list[dict[str, str]]:
        """The headers of each recorded request, names lower-cased, in the order of
        ``requests``."""
        with self._lock:
            return [{k.lower(): v for k, v in r["headers"].items()} for r in self._records]

    @property
    def arrivals(self) -> list[float]:
        """``time.time()`` when each recorded request arrived, in the order of ``requests``."""
        with self._lock:
            return list(self._arrivals)

    def start(self) -> Self:
        """Start serving in a background thread; return once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("stub server already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart())
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="stub-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving: hanging requests are cut, the socket is closed, the thread joined."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    def __enter__(self) -> Self:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for subclasses -------------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        """Add the stub's routes to `app`."""
        raise NotImplementedError

    async def _receive(self, request: web.Request) -> tuple[bool, Any, int]:
        """Read and record `request`: (parsed, body, index in ``requests``). A body that is not
        JSON is recorded, and returned, as ``{"_invalid_json": text}`` with parsed False."""
        arrived = time.time()
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
            parsed = True
        except ValueError:
            body, parsed = {"_invalid_json": raw.decode("utf-8", "replace")}, False
        return parsed, body, self._record(body, arrived, request)

    def _record(self, body: Any, arrived: float, request: web.Request) -> int:
        """Record one request; its index in ``requests``. Appends the body to ``record=``."""
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": dict(request.headers),
            "body": body,
            "port": (request.transport.get_extra_info("peername") or (None, None))[1]
            if request.transport is not None
            else None,
        }
        with self._lock:
            self._records.append(entry)
            self._requests.append(body)
            self._arrivals.append(arrived)
            if self._record_file is not None:
                self._record_file.write(json.dumps(body) + "\n")
                self._record_file.flush()
            return len(self._requests) - 1

    def _next_call_id(self) -> str:
        """A fresh tool call id: ``call_1``, ``call_2``, ..."""
        with self._lock:
            self._call_counter += 1
            return f"call_{self._call_counter}"

    async def _stub_requests(self, request: web.Request) -> web.Response:
        """``GET /_stub/requests``: ``requests`` as JSON."""
        return web.json_response(self.requests)

    async def _stub_arrivals(self, request: web.Request) -> web.Response:
        """``GET /_stub/arrivals``: ``arrivals`` as JSON."""
        return web.json_response(self.arrivals)

    async def _open_stream(
        self, request: web.Request, content_type: str = "text/event-stream"
    ) -> web.StreamResponse:
        """A prepared 200 streaming response (SSE unless told otherwise), in the server's
        framing."""
        headers = {"Content-Type": content_type}
        if content_type == "text/event-stream":
            headers["Cache-Control"] = "no-cache"
        cls = _CloseDelimited if self.framing == "close" else web.StreamResponse
        resp = cls(status=200, headers=headers)
        await resp.prepare(request)
        return resp

    async def _body(
        self,
        request: web.Request,
        data: bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        upto: int | None = None,
    ) -> web.StreamResponse:
        """A whole (non-streamed) body in the server's framing: ``Content-Length`` when chunked
        (aiohttp's way for a body of known size), close-delimited otherwise. With ``upto``,
        only that many bytes are written and the response is left open for a fault to cut."""
        if self.framing == "close":
            resp: web.StreamResponse = _CloseDelimited(status=status)
        else:
            resp = web.StreamResponse(status=status)
            resp.content_length = len(data)
        resp.content_type = content_type
        await resp.prepare(request)
        await resp.write(data if upto is None else data[:upto])
        if upto is None:
            await resp.write_eof()
        return resp

    async def _send(self, resp: web.StreamResponse, events: list[bytes], delay: float) -> None:
        """Write `events`, `delay` seconds apart."""
        for i, event in enumerate(events):
            if delay and i:
                await asyncio.sleep(delay)
            await resp.write(event)

    async def _hang(self, request: web.Request) -> None:
        """Wait until the client goes away or the server stops."""
        assert self._stopping is not None
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)

    def _stopping_now(self, request: web.Request) -> bool:
        """Whether the client went away or the server is stopping (ends an endless fault)."""
        transport = request.transport
        stopping = self._stopping is not None and self._stopping.is_set()
        return stopping or transport is None or transport.is_closing()

    def _abort(self, request: web.Request) -> None:
        """Cut the connection with a reset (RST): what a crashed peer or a killed proxy does."""
        transport = request.transport
        if transport is not None:
            transport.abort()

    def _cut(self, request: web.Request) -> None:
        """Close the connection cleanly (FIN) wherever the body is: what a server process that
        exits mid-answer, or a proxy that times out, looks like. In ``close`` framing the client
        cannot tell it from a finished body; in ``chunked`` framing the body is incomplete."""
        transport = request.transport
        if transport is not None:
            transport.close()

    # -- lifecycle ------------------------------------------------------------------------------

    async def _astart(self) -> None:
        self._stopping = asyncio.Event()
        if self._record_path is not None:
            self._record_file = open(self._record_path, "a", encoding="utf-8")  # noqa: SIM115
        app = web.Application(middlewares=[_nodelay], client_max_size=64 * 1024 * 1024)
        self._routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def _astop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        await asyncio.sleep(0)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def status_fault(
    reply: Mapping[str, Any], fault: str, error_body: Callable[[int, str], Any]
) -> web.Response:
    """The whole response of a ``status`` (default 500, JSON) or ``html`` (default 502) fault:
    the scripted ``body``, else ``error_body(status, message)``; ``Retry-After`` if scripted."""
    status = int(reply.get("status") or (500 if fault == "status" else 502))
    err = reply.get("body")
    if err is None:
        err = error_body(status, f"stub fault: HTTP {status}")
    text = err if isinstance(err, str) else json.dumps(err)
    kind = "text/html" if fault == "html" else "application/json"
    headers = {}
    if reply.get("retry_after") is not None:
        headers["Retry-After"] = str(reply["retry_after"])
    return web.Response(status=status, text=text, content_type=kind, headers=headers)


def serve_main(server_cls: type[ScriptedServer], argv: list[str] | None, description: str) -> int:
    """The stubs' command line: ``--host``, ``--port``, ``--script`` and the class's
    ``cli_options``; bind, print exactly one line (``url``), serve until SIGTERM or SIGINT."""
    ap = argparse.ArgumentParser(prog=f"python -m {server_cls.cli_module}", description=description)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", help="JSON script file (default: echo every request)")
    ap.add_argument("--framing", choices=FRAMINGS, default="chunked", help="how a body ends")
    extra = [ap.add_argument(flag, **kw).dest for flag, kw in server_cls.cli_options]
    args = ap.parse_args(argv)

    script = Script.load(args.script) if args.script else Script()
    options = {dest: getattr(args, dest) for dest in extra}
    srv = server_cls(script, host=args.host, port=args.port, framing=args.framing, **options)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    srv.start()
    sys.stdout.write(srv.url + "\n")
    sys.stdout.flush()
    while not done.wait(0.5):
        pass
    srv.stop()
    return 0
