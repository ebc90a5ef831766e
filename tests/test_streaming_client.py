"""`asr stream` against a real server on loopback (fake session from test_streaming_server)."""
import argparse
import asyncio
import io
import threading

import numpy as np
import soundfile as sf

from streaming import client as C
from streaming.server import ServerOptions, StreamingServer
from test_streaming_server import bursts, factory, running, s16, url


def test_stream_audio_from_raw_bytes_with_odd_reads_and_tty_printer():
    """Raw s16le arrives in reads that split samples; the words still come out; partials redraw in place."""
    class Dribble(io.BytesIO):  # reads of 333 bytes: odd, so samples straddle reads
        def read(self, n=-1):
            return super().read(min(n, 333))

    async def main():
        async with running() as server:
            out = io.StringIO()
            options = C.ClientOptions(url(server), speed=0)
            result = await asyncio.wait_for(C.stream_audio(C.raw_chunks(Dribble(s16(bursts([0.3, 0.8]))), 3200),
                                                           options, C.Printer(out, io.StringIO(), tty=True)), 10)
            return result, out.getvalue()
    result, shown = asyncio.run(main())
    assert result.text == "w3 w8" and result.close_code == 1000 and result.stats["audio_seconds"] == 1.4
    assert "\r\x1b[K" in shown and "] w3\n" in shown and "] w8\n" in shown


def test_stop_event_ends_audio_early_and_still_gets_finals():
    async def main():
        async with running() as server:
            stop = asyncio.Event()
            chunks = list(C.waveform_chunks(bursts([0.5] * 20), 1600))
            options = C.ClientOptions(url(server), speed=20.0)
            task = asyncio.create_task(C.stream_audio(chunks, options, stop=stop))
            await asyncio.sleep(0.15)
            stop.set()
            return await asyncio.wait_for(task, 10)
    result = asyncio.run(main())
    assert result.stats is not None and 0 < result.stats["audio_seconds"] < 14.0
    assert result.finals and all(f["text"] == "w5" for f in result.finals)


def test_cli_run_on_a_file_prints_finals(tmp_path, capsys):
    """`asr stream FILE --speed 0` end to end: load_audio (44.1 kHz stereo wav) -> server -> printed finals."""
    wave = bursts([0.4, 0.9], rate=44100)
    path = tmp_path / "talk.wav"
    sf.write(path, np.stack([wave, wave], axis=1), 44100, subtype="FLOAT")
    ready, port, stop = threading.Event(), [], None
    loop = asyncio.new_event_loop()

    async def serve():
        nonlocal stop
        server = StreamingServer(factory, ServerOptions(port=0))
        await server.start()
        port.append(server.port)
        stop = asyncio.Event()
        ready.set()
        await stop.wait()
        await server.shutdown()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        parser = argparse.ArgumentParser()
        C.add_arguments(parser)
        args = parser.parse_args([str(path), "--url", f"ws://127.0.0.1:{port[0]}", "--speed", "0"])
        status = C.run(args)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
    captured = capsys.readouterr()
    assert status == 0
    assert [line.split("] ")[1] for line in captured.out.splitlines()] == ["w4", "w9"]
    assert "rtf" in captured.err


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    C.add_arguments(parser)
    assert C.run(parser.parse_args(["-", "--task", "translate"])) == 2
    assert C.run(parser.parse_args([str(tmp_path / "missing.wav")])) == 2
    err = capsys.readouterr().err
    assert "--target-language" in err and "missing.wav" in err


def test_cli_unreachable_server_exits_1(tmp_path, capsys):
    path = tmp_path / "a.wav"
    sf.write(path, bursts([0.5]), 16000)
    parser = argparse.ArgumentParser()
    C.add_arguments(parser)
    assert C.run(parser.parse_args([str(path), "--url", "ws://127.0.0.1:9", "--speed", "0"])) == 1
    assert "cannot stream" in capsys.readouterr().err
