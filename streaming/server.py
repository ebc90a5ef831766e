"""`asr serve`: live captions over WebSockets (protocol in docs/protocol.md).

One model is shared by every session. Connections never call the model: they validate frames, turn
them into 16 kHz audio and queue it on their lane of the FairScheduler, whose single inference thread
feeds the sessions round-robin. A sender task per connection writes the resulting messages in order.

    server = StreamingServer(factory, ServerOptions(port=0))
    await server.start()            # server.port is the bound port
    ...
    await server.shutdown()         # stop accepting, finish every session's audio, send finals + done
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import signal
import sys
import time
import weakref
from collections import deque
from dataclasses import dataclass, replace
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from asr.cli_options import add_model_options
from lm.submodel import SPEC_FORMS

from . import protocol as P
from .scheduler import FairScheduler, Lane, SessionStats

log = logging.getLogger("streaming.server")


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8765                      # 0 = any free port (tests)
    max_sessions: int = 4
    token: str | None = None              # bearer token; None = no authentication
    max_frame_bytes: int = 2**20          # larger frames get too_large and are dropped
    transport_max_bytes: int = 16 * 2**20  # the websockets layer closes with 1009 past this
    idle_timeout: float = 60.0            # seconds without any message
    max_session_seconds: float = 4 * 3600.0  # wall-clock length of one session
    max_job_seconds: float = 2.0          # audio per scheduler turn (fairness granularity)
    max_pending_seconds: float = 30.0     # unprocessed audio per session before reading pauses
    batch_sessions: int = 4               # sessions whose decodes may share a forward (1 = one at a time)
    shutdown_timeout: float = 30.0        # grace period for sessions to finish at SIGTERM
    model_name: str = "gemma3n-speech"

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_frame_bytes", "transport_max_bytes", "batch_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerOptions.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "max_session_seconds", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ServerOptions.{name} must be > 0 seconds, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class _Outbox:
    """Messages to send, in order; a queued partial not yet sent is replaced by a newer one."""

    def __init__(self):
        self._items: deque = deque()
        self._event = asyncio.Event()

    def put(self, item) -> None:
        if isinstance(item, dict) and item.get("type") == "partial" and self._items:
            last = self._items[-1]
            if isinstance(last, dict) and last.get("type") == "partial":
                self._items[-1] = item
                return
        self._items.append(item)
        self._event.set()

    async def get(self):
        while not self._items:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()


_SHUTDOWN, _IDLE, _LIFETIME = "shutdown", "idle", "lifetime"


class Connection:
    """One WebSocket: the protocol state machine (await start -> streaming -> finishing)."""

    def __init__(self, server: "StreamingServer", ws: ServerConnection, session_id: str):
        self.server, self.ws, self.id = server, ws, session_id
        self.opts = server.options
        self.outbox = _Outbox()
        self.stats = SessionStats()
        self.start: P.StartRequest | None = None
        self.decoder: P.PcmDecoder | None = None
        self.lane: Lane | None = None
        self.segments = 0
        self.failed = False
        self.opened = time.monotonic()

    async def serve(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            ending = await self._receive_loop()
            if ending is not None:
                await self._finish(ending)
        except ConnectionClosed:
            if not self.failed:
                log.info("session %s: client disconnected", self.id)
        finally:
            if self.lane is not None:
                self.lane.close()
            self.outbox.put(_Close(P.CLOSE_NORMAL, ""))  # no-op if the sender already closed
            try:
                await asyncio.wait_for(sender, timeout=self.opts.shutdown_timeout)
            except (asyncio.TimeoutError, ConnectionClosed):
                sender.cancel()

    # --- receiving ---------------------------------------------------------------------------

    async def _receive_loop(self) -> str | None:
        """Handle messages until stop/timeout/shutdown (returned) or the session ends (None)."""
        while not self.failed:
            if self.lane is not None:
                await self.lane.wait_for_space()
            message = await self._next_message()
            if message in (_SHUTDOWN, _IDLE, _LIFETIME):
                return message
            if self.failed:
                return None
            try:
                if await self._handle(message):
                    return "stop"
            except P.ProtocolError as err:
                self._error(err.code, err.message)
        return None

    async def _next_message(self):
        now = time.monotonic()
        idle_at = now + self.opts.idle_timeout
        life_at = self.opened + self.opts.max_session_seconds
        recv = asyncio.ensure_future(self.ws.recv())
        done, _ = await asyncio.wait({recv, self.server._shutdown_wait}, timeout=max(0.0, min(idle_at, life_at) - now),
                                     return_when=asyncio.FIRST_COMPLETED)
        if recv in done:
            return recv.result()
        recv.cancel()  # safe with websockets: an unread message stays queued
        recv.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing left unretrieved
        if self.server._shutdown_wait in done:
            return _SHUTDOWN
        return _LIFETIME if time.monotonic() >= life_at else _IDLE

    async def _handle(self, message) -> bool:
        """One client frame; True when it was `stop`."""
        size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8"))
        if size > self.opts.max_frame_bytes:
            raise P.ProtocolError(P.TOO_LARGE, f"frame of {size} bytes is over this server's limit of "
                                               f"{self.opts.max_frame_bytes} bytes; it was dropped")
        if isinstance(message, bytes):
            if self.lane is None:
                raise P.ProtocolError(P.BAD_REQUEST, "binary audio frame before \"start\"; send start first")
            pcm = self.decoder.decode(message)
            self.stats.audio_arrived(self.decoder.seconds_in)
            self.lane.push(pcm)
            return False
        request = P.parse_client_message(message)
        if isinstance(request, P.StopRequest):
            if self.lane is None:
                raise P.ProtocolError(P.BAD_REQUEST, "\"stop\" before \"start\"")
            return True
        if self.lane is not None:
            raise P.ProtocolError(P.BAD_REQUEST, "\"start\" sent twice; this session has already started")
        await self._open_session(request)
        return False

    async def _open_session(self, start: P.StartRequest) -> None:
        try:
            session = await self.server.scheduler.call(self.server.factory, start, on_abandoned=_close_session)
        except ValueError as err:  # the model cannot serve this request; the client may send another start
            raise P.ProtocolError(P.BAD_REQUEST, f"start: {err}") from None
        except Exception:
            log.exception("session %s: creating the session failed", self.id)
            self._fatal(P.INTERNAL, "the server could not create a session", P.CLOSE_SERVER_FAULT)
            return
        self.start, self.decoder = start, P.PcmDecoder(start)
        self.lane = self.server.scheduler.lane(session, self._deliver, self.id)
        self.lane.finished.add_done_callback(self._lane_done)
        log.info("session %s: start task=%s language=%s target=%s rate=%d %s x%d%s", self.id, start.task,
                 start.language, start.target_language, start.sample_rate, start.encoding, start.channels,
                 f" submodel={start.submodel}" if start.submodel is not None else "")
        self.outbox.put(P.ready_message(self.id, self.opts.model_name))

    # --- results ---------------------------------------------------------------------------------

    def _deliver(self, events, _seconds: float) -> None:
        task = self.start.task
        for ev in map(P.as_event, events):
            if ev.kind == "final":
                self.outbox.put(P.final_message(self.segments, ev.text, ev.start, ev.end, ev.translation, task,
                                                ev.submodel))
                self.segments += 1
            else:
                self.outbox.put(P.partial_message(ev.text, ev.start, ev.end, ev.translation, task))

    def _lane_done(self, fut: asyncio.Future) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        self._fatal(P.INTERNAL, "decoding failed on the server; this session is closed", P.CLOSE_SERVER_FAULT)

    async def _finish(self, ending: str) -> None:
        """Feed the rest, send the remaining finals, then done (stop, shutdown) or close 1008 (timeouts)."""
        if ending in (_IDLE, _LIFETIME):
            what = (f"no message for {self.opts.idle_timeout:g} s" if ending == _IDLE
                    else f"session longer than {self.opts.max_session_seconds:g} s")
            self._error(P.TIMEOUT, f"{what}; finishing the audio received and closing")
        if self.lane is None:  # never started: nothing to finish
            code = P.CLOSE_GOING_AWAY if ending == _SHUTDOWN else P.CLOSE_CLIENT_FAULT
            self.outbox.put(_Close(code, "server shutting down" if ending == _SHUTDOWN else "timeout"))
            return
        self.lane.push(self.decoder.flush())
        try:
            await self.lane.finish()
        except (asyncio.CancelledError, Exception):
            return  # failure already reported by _lane_done, or the lane was abandoned
        stats = self.stats.summary(self.lane.busy_seconds, self.segments)
        report = getattr(self.lane.session, "report", None)
        stats.update(report() if report is not None else {})  # e.g. the sub-model it ended on
        log.info("session %s: done (%s) audio=%.2fs first_partial=%s final_lag_p50=%s p95=%s rtf=%s%s", self.id,
                 ending, stats["audio_seconds"], stats["first_partial_latency"], stats["final_lag_p50"],
                 stats["final_lag_p95"], stats["rtf"],
                 f" submodel={stats['submodel']} switches={stats['submodel_switches']}" if "submodel" in stats else "")
        if ending in (_IDLE, _LIFETIME):
            self.outbox.put(_Close(P.CLOSE_CLIENT_FAULT, "timeout"))
            return
        if ending == _SHUTDOWN:
            stats["ended_by"] = "server_shutdown"
        self.outbox.put(P.done_message(stats))
        self.outbox.put(_Close(P.CLOSE_NORMAL, "server shutting down" if ending == _SHUTDOWN else ""))

    def _error(self, code: str, message: str) -> None:
        log.info("session %s: error %s: %s", self.id, code, message)
        self.outbox.put(P.error_message(code, message))

    def _fatal(self, code: str, message: str, close_code: int) -> None:
        if self.failed:
            return
        self.failed = True
        self._error(code, message)
        self.outbox.put(_Close(close_code, code))
        if self.lane is not None:
            self.lane.close()

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, _Close):
                await self.ws.close(item.code, item.reason)
                return
            try:
                await self.ws.send(P.encode(item))
            except ConnectionClosed:
                if self.lane is not None:  # the client is gone: stop decoding for it
                    self.lane.close()
                raise
            self.stats.sent(item)


class StreamingServer:
    """The WebSocket server: admission (token, session limit), /health, connections, shutdown."""

    def __init__(self, factory: P.SessionFactory, options: ServerOptions = ServerOptions()):
        self.factory = factory
        self.options = options
        self.connections: set[Connection] = set()
        self.scheduler: FairScheduler | None = None
        self._ws_server = None
        self._unauthorized: weakref.WeakSet[ServerConnection] = weakref.WeakSet()
        self._shutdown_event: asyncio.Event | None = None
        self._shutdown_wait: asyncio.Future | None = None
        self._next_id = 0
        self._port = self.options.port

    @property
    def port(self) -> int:
        """The bound port (the real one when options.port is 0); kept after shutdown."""
        return self._port

    @property
    def shutting_down(self) -> bool:
        return self._shutdown_event is not None and self._shutdown_event.is_set()

    async def start(self) -> None:
        o = self.options
        # Batching needs the factory's batched decode (streaming.session.SessionFactory.run_batch).
        # Automatic stepping down reads the scheduler's load (streaming.session.SessionFactory.observe_load).
        self.scheduler = FairScheduler(o.max_job_seconds, o.max_pending_seconds, o.batch_sessions,
                                       getattr(self.factory, "run_batch", None),
                                       getattr(self.factory, "observe_load", None))
        self.scheduler.start()
        self._shutdown_event = asyncio.Event()
        self._shutdown_wait = asyncio.ensure_future(self._shutdown_event.wait())
        self._ws_server = await serve(self._handler, o.host, o.port, process_request=self._process_request,
                                      compression=None, max_size=o.transport_max_bytes, max_queue=8)
        self._port = self._ws_server.sockets[0].getsockname()[1]
        log.info("listening on ws://%s:%d (max %d sessions%s)", o.host, self.port, o.max_sessions,
                 ", token required" if o.token else "")

    async def shutdown(self) -> None:
        """Stop accepting; let every session finish its audio and send finals and done; close."""
        if self.shutting_down:
            return
        log.info("shutting down: finishing %d session(s)", len(self.connections))
        self._shutdown_event.set()
        self._ws_server.close(close_connections=False)
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(), self.options.shutdown_timeout)
        except asyncio.TimeoutError:
            log.warning("sessions still running after %gs; closing them", self.options.shutdown_timeout)
            for conn in list(self.connections):
                await conn.ws.close(P.CLOSE_GOING_AWAY, "server shutting down")
        await self.scheduler.stop()
        log.info("server stopped")

    def health(self) -> tuple[int, dict]:
        full = len(self.connections) >= self.options.max_sessions
        status = "shutting_down" if self.shutting_down else ("busy" if full else "ok")
        body = {"status": status, "sessions": len(self.connections), "max_sessions": self.options.max_sessions,
                "model": self.options.model_name, "protocol": P.PROTOCOL_VERSION}
        return (200 if status == "ok" else 503), body

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/health":
            code, body = self.health()
            headers = Headers([("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return Response(code, HTTPStatus(code).phrase, headers, json.dumps(body).encode() + b"\n")
        if self.options.token is not None and not self._authorized(request, url.query):
            self._unauthorized.add(connection)  # answered over the socket: error unauthorized + 1008
        return None

    def _authorized(self, request: Request, query: str) -> bool:
        given = None
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            given = header[7:].strip()
        elif "token" in (params := parse_qs(query)):
            given = params["token"][0]
        return given is not None and hmac.compare_digest(given.encode(), self.options.token.encode())

    async def _handler(self, ws: ServerConnection) -> None:
        if ws in self._unauthorized:
            self._unauthorized.discard(ws)
            await self._reject(ws, P.UNAUTHORIZED, "missing or wrong token (Authorization: Bearer <token> "
                                                   "or ?token=<token>)", P.CLOSE_UNAUTHORIZED)
            return
        if len(self.connections) >= self.options.max_sessions:
            await self._reject(ws, P.BUSY, f"server at capacity ({self.options.max_sessions} sessions); "
                                           "try again later", P.CLOSE_BUSY)
            return
        self._next_id += 1
        conn = Connection(self, ws, f"{self._next_id:04d}-{ws.id.hex[:8]}")
        self.connections.add(conn)
        try:
            await conn.serve()
        except Exception:  # never let one session's surprise reach the server
            log.exception("session %s: unexpected error", conn.id)
            try:
                await ws.send(P.encode(P.error_message(P.INTERNAL, "internal server error")))
                await ws.close(P.CLOSE_SERVER_FAULT, "internal")
            except ConnectionClosed:
                pass
        finally:
            self.connections.discard(conn)

    async def _reject(self, ws: ServerConnection, code: str, message: str, close_code: int) -> None:
        log.info("rejected %s: %s", ws.remote_address, code)
        try:
            await ws.send(P.encode(P.error_message(code, message)))
            await ws.close(close_code, code)
        except ConnectionClosed:
            pass


# --- command line ----------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `asr serve`."""
    d = ServerOptions()
    add_model_options(p, submodel_help="MatFormer sub-model for sessions that do not name one in `start` "
                                       "(default: the whole model); a session's own `submodel` field overrides "
                                       "it: " + SPEC_FORMS)
    p.add_argument("--host", default=d.host, help=f"address to listen on (default: {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"port (default: {d.port}; 0 = any free port)")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help=f"default: {d.max_sessions}")
    p.add_argument("--batch-sessions", type=int, default=d.batch_sessions,
                   help="decode up to N ready sessions together, one forward per token for all of them "
                        f"(1 = off; default: {d.batch_sessions})")
    elastic = p.add_mutually_exclusive_group()  # both at once would silently ignore --step-down
    elastic.add_argument("--step-down", action="append", metavar="NAME|ffn=..;skip=..",
                         help="when the server falls behind real time, sessions that did not pin a sub-model "
                              "step down to this one (repeat for more steps, largest first; default: the smaller "
                              "presets that fit the model, e.g. E2B under E4B); they step back up when the load "
                              "falls")
    elastic.add_argument("--no-step-down", action="store_true", help="never change a session's sub-model")
    p.add_argument("--encoder-push-ms", type=int, default=0,
                   help="hand audio to the encoder in pieces of at least this many ms (default 0: as it arrives); "
                        "each push reads every encoder weight, so with a large encoder (E2B, E4B) 500-1000 costs "
                        "less per second of audio (E2B int8, 640: 0.36 instead of 0.50 s), at that much more latency")
    p.add_argument("--token", help="require this bearer token (Authorization header or ?token=)")
    p.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes, help="default: 1 MiB")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout, help="seconds (default: 60)")
    p.add_argument("--max-session-seconds", type=float, default=d.max_session_seconds,
                   help="wall-clock limit per session (default: 4 h)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default: INFO)")


def options_from_args(args: argparse.Namespace, model_name: str) -> ServerOptions:
    return ServerOptions(host=args.host, port=args.port, max_sessions=args.max_sessions, token=args.token,
                         batch_sessions=getattr(args, "batch_sessions", ServerOptions.batch_sessions),
                         max_frame_bytes=args.max_frame_bytes, idle_timeout=args.idle_timeout,
                         max_session_seconds=args.max_session_seconds, model_name=model_name)


def load_factory(args: argparse.Namespace) -> tuple[P.SessionFactory, str]:
    """The model (loaded once, shared by all sessions) and the session factory over it.

    Raises ValueError naming what failed (no session implementation, a model that does not load)."""
    from asr.loading import load_model_for_command

    from .elastic import label
    from .session import SessionOptions, session_factory

    push_ms = getattr(args, "encoder_push_ms", 0)
    try:
        SessionOptions(encoder_push_ms=push_ms)  # checked before the model loads, not at the first session
    except ValueError as e:
        raise ValueError(f"--encoder-push-ms: {e}") from None
    model = load_model_for_command(args.model, args.device, args.dtype, getattr(args, "quantize", None))
    name = (getattr(model, "metadata", None) or {}).get("name") or str(getattr(model, "source", "")) or "gemma3n"
    batch = min(getattr(args, "batch_sessions", ServerOptions.batch_sessions), args.max_sessions)
    step_down = [] if getattr(args, "no_step_down", False) else getattr(args, "step_down", None)
    try:
        factory = session_factory(model, batch_sessions=batch, max_sessions=args.max_sessions,
                                  submodel=getattr(args, "submodel", None), step_down=step_down,
                                  **({"encoder_push_ms": push_ms} if push_ms else {}))
    except ValueError as e:
        raise ValueError(f"--submodel/--step-down: {e}") from None
    if factory.elastic is not None:
        log.info("sub-models: sessions start on %s and step down to %s when behind real time",
                 label(factory.elastic.ladder[0]), ", then ".join(label(m) for m in factory.elastic.ladder[1:]))
    return factory, name


def _close_session(session) -> None:
    """A session created for a connection that went away meanwhile: give back its cache slot."""
    close = getattr(session, "close", None)
    if close is not None:
        close()


async def serve_until_signal(server: StreamingServer) -> None:
    """Start `server` and run it until SIGTERM/SIGINT, then shut it down gracefully."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("signal received")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    await server.shutdown()


def run(args: argparse.Namespace) -> int:
    """Entry point of `asr serve`; returns the exit status (2 for a bad option or model)."""
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = options_from_args(args, "")
        factory, name = load_factory(args)
    except ValueError as err:
        print(f"asr serve: {err}", file=sys.stderr)
        return 2
    asyncio.run(serve_until_signal(StreamingServer(factory, replace(options, model_name=name))))
    return 0
