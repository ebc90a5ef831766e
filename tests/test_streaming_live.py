"""`asr serve` with a real (small random) model and `asr stream` as separate processes on loopback:
the whole path a user runs, including raw PCM from stdin and a graceful SIGTERM."""
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from asr.synth import synthesize


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(random_checkpoint):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "asr", "serve", "--model", str(random_checkpoint),
                             "--port", str(port), "--max-sessions", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                assert r.status == 200 and json.loads(r.read())
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("server did not come up: " + proc.stdout.read())
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def talk(tmp_path_factory):
    wave = np.concatenate([synthesize("good morning everybody", "en"), np.zeros(12000, np.float32),
                           synthesize("see you tomorrow", "en")])
    path = tmp_path_factory.mktemp("talk") / "talk.wav"
    sf.write(path, wave, 16000)
    return path, wave


def test_stream_a_file_gets_finals_and_done(server, talk):
    _, port = server
    path, _ = talk
    r = subprocess.run([sys.executable, "-m", "asr", "stream", str(path), "--url", f"ws://127.0.0.1:{port}",
                        "--speed", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "no finals printed"
    assert "audio_seconds" in r.stderr or "rtf" in r.stderr  # done stats


def test_raw_pcm_from_stdin(server, talk):
    _, port = server
    _, wave = talk
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    r = subprocess.run([sys.executable, "-m", "asr", "stream", "-", "--url", f"ws://127.0.0.1:{port}",
                        "--speed", "0"], input=pcm, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.strip()


def test_sigterm_stops_cleanly(server):
    proc, port = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
