"""The websocket server on loopback with a real websockets client and a deterministic fake session.

The fake turns audio energy into words: every burst of sound becomes one word named by its peak
amplitude ("w3" for a peak of 0.3), final once 0.2 s of silence follow it (or at finish), shown as a
partial while it lasts. Every await is bounded by a timeout."""
import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager
from urllib.request import urlopen
from urllib.error import HTTPError

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streaming import protocol as P
from streaming.server import ServerOptions, StreamingServer

T = 5.0  # seconds: bound on every single await in these tests
FRAME = 160  # 10 ms at 16 kHz


class EnergyWords:
    """A StreamingSession that needs no model: sound bursts -> words (see the module docstring)."""

    def __init__(self, start: P.StartRequest, delay: float = 0.0):
        self.start, self.delay = start, delay
        self.pos = 0                      # samples consumed
        self.rest = np.zeros(0, np.float32)
        self.word_start = None            # sample index where the current burst began
        self.word_end = 0
        self.peak = 0.0
        self.silence = 0

    def _event(self, kind):
        text = f"w{round(self.peak * 10)}"
        tr = text.upper() if self.start.task == "translate" else None
        return P.SessionEvent(kind, text, self.word_start / 16000, self.word_end / 16000, tr)

    def feed(self, pcm):
        if self.delay:
            time.sleep(self.delay)
        if self.start.language == "crash":
            raise RuntimeError("session bug")
        data = np.concatenate([self.rest, pcm])
        n = data.size // FRAME * FRAME
        self.rest = data[n:]
        events = []
        for frame in data[:n].reshape(-1, FRAME):
            loud = float(np.sqrt(np.mean(frame ** 2))) > 0.02
            if loud:
                if self.word_start is None:
                    self.word_start, self.peak = self.pos, 0.0
                self.peak = max(self.peak, float(np.max(np.abs(frame))))
                self.word_end, self.silence = self.pos + FRAME, 0
            elif self.word_start is not None:
                self.silence += 1
                if self.silence >= 20:
                    events.append(self._event("final"))
                    self.word_start = None
            self.pos += FRAME
        if self.word_start is not None:
            events.append(self._event("partial"))
        return events

    def finish(self):
        events = [e for e in self.feed(np.zeros(FRAME - self.rest.size % FRAME, np.float32)) if e.kind == "final"]
        if self.word_start is not None:
            events.append(self._event("final"))
            self.word_start = None
        return events


def factory(start):
    if start.language == "xx":
        raise ValueError("language 'xx' is not supported by this model")
    return EnergyWords(start)


def bursts(peaks, burst=0.3, gap=0.4, rate=16000):
    """Sine bursts with the given peaks, each followed by silence."""
    t = np.arange(int(burst * rate)) / rate
    parts = []
    for p in peaks:
        parts += [(p * np.sin(2 * np.pi * 300 * t)).astype(np.float32), np.zeros(int(gap * rate), np.float32)]
    return np.concatenate(parts)


def s16(wave):
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


@asynccontextmanager
async def running(factory=factory, **options):
    server = StreamingServer(factory, ServerOptions(port=0, **options))
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.shutdown(), T)


def url(server, path="/"):
    return f"ws://127.0.0.1:{server.port}{path}"


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), T))


async def recv_until(ws, kind):
    """Messages up to and including the first of type `kind`."""
    out = []
    while True:
        out.append(await recv(ws))
        if out[-1]["type"] == kind:
            return out


async def closed(ws):
    await asyncio.wait_for(ws.wait_closed(), T)
    return ws.close_code


async def stream(server, wave, start=None, chunk=1600, path="/"):
    """A whole well-behaved session; returns all messages and the close code."""
    async with connect(url(server, path), open_timeout=T) as ws:
        await ws.send(json.dumps(start or {"type": "start"}))
        assert (await recv(ws))["type"] == "ready"
        for i in range(0, wave.size, chunk):
            await ws.send(s16(wave[i:i + chunk]))
        await ws.send(json.dumps({"type": "stop"}))
        messages = await recv_until(ws, "done")
        return messages, await closed(ws)


def finals(messages):
    return [m for m in messages if m["type"] == "final"]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_full_flow_ready_partials_finals_done_close_1000():
    async def main():
        async with running() as server:
            return await stream(server, bursts([0.3, 0.6, 0.9]))
    messages, code = run(main())
    fin = finals(messages)
    assert [f["text"] for f in fin] == ["w3", "w6", "w9"]
    assert [f["segment"] for f in fin] == [0, 1, 2]
    assert fin[0]["start"] == pytest.approx(0.0, abs=0.011) and fin[0]["end"] == pytest.approx(0.3, abs=0.011)
    assert fin[1]["start"] == pytest.approx(0.7, abs=0.011)  # times are stream seconds (10 ms frames)
    assert any(m["type"] == "partial" for m in messages)
    done = messages[-1]
    assert done["stats"]["audio_seconds"] == pytest.approx(2.1, abs=1e-3)
    for key in ("first_partial_latency", "final_lag_p50", "final_lag_p95", "rtf"):
        assert isinstance(done["stats"][key], float) and done["stats"][key] >= 0
    assert code == 1000


def test_resampled_stereo_float_and_translate():
    """44.1 kHz stereo f32 is mixed and resampled: the same words come out; translations ride along."""
    async def main():
        wave = np.repeat(bursts([0.5, 0.8], rate=44100)[:, None], 2, axis=1)
        start = {"type": "start", "task": "translate", "language": "es", "target_language": "en",
                 "sample_rate": 44100, "encoding": "pcm_f32le", "channels": 2}
        async with running() as server, connect(url(server)) as ws:
            await ws.send(json.dumps(start))
            await recv(ws)
            data = wave.astype("<f4").tobytes()
            for i in range(0, len(data), 8 * 4410):
                await ws.send(data[i:i + 8 * 4410])
            await ws.send('{"type": "stop"}')
            return await recv_until(ws, "done")
    messages = run(main())
    assert [(f["text"], f["translation"]) for f in finals(messages)] == [("w5", "W5"), ("w8", "W8")]
    assert all("translation" in m for m in messages if m["type"] == "partial")


def test_several_sessions_at_once_get_their_own_words():
    async def main():
        async with running(max_sessions=4) as server:
            return await asyncio.gather(*(stream(server, bursts(p)) for p in ([0.2], [0.4, 0.5], [0.7, 0.8, 0.9])))
    results = run(main())
    assert [[f["text"] for f in finals(m)] for m, _ in results] == [["w2"], ["w4", "w5"], ["w7", "w8", "w9"]]
    assert [code for _, code in results] == [1000] * 3


BAD_INPUTS = [
    # (what the client sends, in order, after connecting; expected error code)
    (['{"type": "stop"}'], P.BAD_REQUEST),                                  # text before start
    (["{nope"], P.BAD_REQUEST),                                             # bad JSON
    (['{"type": "start"}', '{"type": "hello"}'], P.BAD_REQUEST),            # unknown type
    ([b"\x00\x00"], P.BAD_REQUEST),                                         # binary before start
    (['{"type": "start"}', b"\x00\x00\x00"], P.BAD_REQUEST),                # odd byte count
    (['{"type": "start", "sample_rate": 96000}'], P.UNSUPPORTED_AUDIO),    # unsupported rate
    (['{"type": "start", "encoding": "opus"}'], P.UNSUPPORTED_AUDIO),      # unsupported encoding
    (['{"type": "start", "channels": 3}'], P.UNSUPPORTED_AUDIO),           # unsupported channels
    (['{"type": "start"}', b"\x00" * (64 * 1024 + 2)], P.TOO_LARGE),        # oversized frame
    (['{"type": "start"}', '{"type": "start"}'], P.BAD_REQUEST),           # start twice
    (['{"type": "start", "language": "xx"}'], P.BAD_REQUEST),              # model refuses the request
]


@pytest.mark.parametrize("sends, code", BAD_INPUTS)
def test_bad_input_gets_its_code_and_session_continues(sends, code):
    """The error comes back, then the same connection still streams words; another session is unaffected."""
    async def main():
        async with running(max_frame_bytes=64 * 1024) as server:
            other = asyncio.create_task(stream(server, bursts([0.4, 0.6])))
            async with connect(url(server)) as ws:
                for item in sends:
                    await ws.send(item)
                got = [m for m in await recv_until(ws, "error")]
                if not any(m["type"] == "ready" for m in got):
                    await ws.send('{"type": "start"}')
                    await recv_until(ws, "ready")
                await ws.send(s16(bursts([0.3])))
                await ws.send('{"type": "stop"}')
                rest = await recv_until(ws, "done")
                still = (finals(rest), await closed(ws))
            return got[-1], still, await other
    error, (fin, code_after), (other_messages, other_code) = run(main())
    assert error["code"] == code and error["message"]
    assert [f["text"] for f in fin] == ["w3"] and code_after == 1000
    assert [f["text"] for f in finals(other_messages)] == ["w4", "w6"] and other_code == 1000


def test_abrupt_disconnect_then_server_still_serves():
    async def main():
        async with running() as server:
            ws = await connect(url(server))
            await ws.send('{"type": "start"}')
            await recv(ws)
            await ws.send(s16(bursts([0.5])))
            ws.transport.abort()  # no close handshake at all
            await asyncio.sleep(0.1)
            return await stream(server, bursts([0.7])), len(server.connections)
    (messages, code), _ = run(main())
    assert [f["text"] for f in finals(messages)] == ["w7"] and code == 1000


def test_internal_error_closes_only_that_session_with_1011():
    async def main():
        async with running() as server:
            other = asyncio.create_task(stream(server, bursts([0.4])))
            async with connect(url(server)) as ws:
                await ws.send('{"type": "start", "language": "crash"}')
                await recv(ws)
                await ws.send(s16(bursts([0.5])))
                err = await recv_until(ws, "error")
                code = await closed(ws)
            return err[-1], code, await other
    err, code, (messages, other_code) = run(main())
    assert err["code"] == P.INTERNAL and code == 1011
    assert [f["text"] for f in finals(messages)] == ["w4"] and other_code == 1000


def test_busy_at_max_sessions_then_free_again():
    async def main():
        async with running(max_sessions=1) as server:
            async with connect(url(server)) as first:
                await first.send('{"type": "start"}')
                await recv(first)
                async with connect(url(server)) as second:
                    busy = await recv(second)
                    code = await closed(second)
            await asyncio.sleep(0.05)
            return busy, code, await stream(server, bursts([0.3]))
    busy, code, (messages, last_code) = run(main())
    assert busy["code"] == P.BUSY and code == 1013
    assert [f["text"] for f in finals(messages)] == ["w3"] and last_code == 1000


def test_token_header_query_and_wrong_token():
    async def main():
        async with running(token="s3cret") as server:
            ok_header = await stream_with(server, "/", {"Authorization": "Bearer s3cret"})
            ok_query = await stream_with(server, "/live?token=s3cret", None)
            async with connect(url(server, "/?token=wrong")) as ws:
                err = await recv(ws)
                code = await closed(ws)
            async with connect(url(server)) as ws:
                err2 = await recv(ws)
            return ok_header, ok_query, err, code, err2

    async def stream_with(server, path, headers):
        async with connect(url(server, path), additional_headers=headers) as ws:
            await ws.send('{"type": "start"}')
            return (await recv(ws))["type"]
    ok_header, ok_query, err, code, err2 = run(main())
    assert ok_header == ok_query == "ready"
    assert err["code"] == err2["code"] == P.UNAUTHORIZED and code == 1008


def test_health_200_json_then_503_when_full():
    async def main():
        async with running(max_sessions=1) as server:
            get = lambda: _get(f"http://127.0.0.1:{server.port}/health")
            free = await asyncio.to_thread(get)
            async with connect(url(server)) as ws:
                await ws.send('{"type": "start"}')
                await recv(ws)
                full = await asyncio.to_thread(get)
            return free, full
    (code1, body1), (code2, body2) = run(main())
    assert code1 == 200 and body1["status"] == "ok" and body1["max_sessions"] == 1
    assert code2 == 503 and body2["status"] == "busy"


def _get(address):
    try:
        with urlopen(address, timeout=T) as r:
            return r.status, json.loads(r.read())
    except HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("limits", [{"idle_timeout": 0.3}, {"max_session_seconds": 0.5}])
def test_timeouts_send_timeout_then_finals_and_close_1008(limits):
    """Idle for too long, or a session older than its limit: timeout, the open word is finished, 1008."""
    async def main():
        async with running(**limits) as server, connect(url(server)) as ws:
            await ws.send('{"type": "start"}')
            await recv(ws)
            await ws.send(s16(bursts([0.6], gap=0.05)))  # a word still open when the client goes quiet
            messages = []
            try:
                while True:
                    messages.append(await recv(ws))
            except ConnectionClosed:
                pass
            return messages, ws.close_code
    messages, code = run(main())
    assert any(m["type"] == "error" and m["code"] == P.TIMEOUT for m in messages)
    assert [f["text"] for f in finals(messages)] == ["w6"] and code == 1008


def test_graceful_shutdown_delivers_finals_and_done():
    async def main():
        server = StreamingServer(factory, ServerOptions(port=0))
        await server.start()
        async with connect(url(server)) as ws:
            await ws.send('{"type": "start"}')
            await recv(ws)
            await ws.send(s16(bursts([0.4, 0.7], gap=0.3)[:-3000]))  # the last word is still open
            await asyncio.sleep(0.2)
            shutdown = asyncio.create_task(server.shutdown())
            messages = await recv_until(ws, "done")
            code = await closed(ws)
            await asyncio.wait_for(shutdown, T)
        try:  # no longer accepting
            await connect(url(server), open_timeout=1)
            refused = False
        except OSError:
            refused = True
        return messages, code, refused
    messages, code, refused = run(main())
    assert [f["text"] for f in finals(messages)] == ["w4", "w7"]
    assert messages[-1]["stats"]["ended_by"] == "server_shutdown" and code == 1000 and refused


def test_sigterm_finishes_sessions_then_stops():
    """serve_until_signal: SIGTERM -> the open session still gets its finals and done, close 1000."""
    import os
    import signal
    from streaming.server import serve_until_signal

    async def main():
        server = StreamingServer(factory, ServerOptions(port=0))
        task = asyncio.create_task(serve_until_signal(server))
        for _ in range(200):
            if server.port:
                break
            await asyncio.sleep(0.01)
        async with connect(url(server)) as ws:
            await ws.send('{"type": "start"}')
            await recv(ws)
            await ws.send(s16(bursts([0.6], gap=0.05)))
            await asyncio.sleep(0.1)
            os.kill(os.getpid(), signal.SIGTERM)
            messages = await recv_until(ws, "done")
            code = await closed(ws)
        await asyncio.wait_for(task, T)
        return messages, code
    messages, code = run(main())
    assert [f["text"] for f in finals(messages)] == ["w6"] and code == 1000
