"""Synthetic speech for training and testing the shipped model: espeak-ng reading frequent-word texts.

Every example is a pure function of (seed, index, options): `example_spec` draws the text, voice and
augmentation numbers from its own random stream, and `render` turns the spec into audio. So a training set
can be generated once into a directory (`build_dataset`, which resumes and reuses a finished set) or on the
fly (`iter_examples`), and both give the same examples.

espeak-ng is driven through its command line (one short process per utterance, about 15 ms); rendering runs
in a few threads, since the work happens in the espeak-ng processes and in soxr, not in Python.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import subprocess
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from asr.wordlists import LANGUAGES, frequent_words

SAMPLE_RATE = 16_000  # the model's rate (audio_encoder.audio.SAMPLE_RATE)
ESPEAK_RATE = 22_050  # espeak-ng always writes 22.05 kHz
DEFAULT_SPEED = 175  # espeak-ng's defaults: words per minute and pitch (0-99)
DEFAULT_PITCH = 50

# Main voice first: it is the voice of the held-out evaluation ("default settings").
VOICES = {
    "en": ("en-us", "en-gb", "en-gb-x-rp", "en-us-nyc"),
    "es": ("es", "es-419"),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
    "it": ("it",),
    "pt": ("pt", "pt-br"),
}
# espeak-ng voice variants (formant and pitch profiles). The novelty ones (whisper, croak, robots) are left out.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")
FUNCTION_WORDS = 100  # the most frequent words, drawn by frequency in sentence-like texts
MANIFEST = "manifest.jsonl"
SETTINGS = "synth.json"
# FLAC: lossless 16-bit, about half the size of WAV here (noise limits compression), read by soundfile.
AUDIO_SUFFIX = ".flac"


@dataclass(frozen=True)
class SynthOptions:
    languages: tuple[str, ...] = LANGUAGES
    # (language, weight) pairs for drawing each example's language; unlisted languages weigh 1.
    # Empty: uniform, drawn as before weights existed (the same specs for the same seed).
    language_weights: tuple[tuple[str, float], ...] = ()
    # Text
    vocabulary: int = 3000  # most frequent words per language that texts draw from
    min_words: int = 3
    max_words: int = 12
    sentence_share: float = 0.5  # sentence-like texts; the rest are uniform random word sequences
    punctuate: bool = True  # capital first letter and final period, as a transcript is written
    # Voice
    default_voice_share: float = 0.3  # main voice at default speed and pitch, the evaluation condition
    accent_share: float = 0.3  # a regional voice (en-gb, es-419, pt-br...) instead of the main one
    variant_share: float = 0.6  # a voice variant (m1..f4)
    speed: tuple[int, int] = (120, 200)  # words per minute
    pitch: tuple[int, int] = (25, 75)
    # Signal
    peak_db: tuple[float, float] | None = (-20.0, -1.0)  # None keeps espeak-ng's level
    noise_share: float = 0.7
    snr_db: tuple[float, float] = (10.0, 40.0)
    pad_seconds: tuple[float, float] = (0.05, 0.6)  # silence before and after, each drawn from this range

    def __post_init__(self) -> None:
        unknown = [lang for lang in self.languages if lang not in VOICES]
        if not self.languages or unknown:
            raise ValueError(f"SynthOptions.languages: expected a non-empty subset of {LANGUAGES}, "
                             f"got {self.languages!r}")
        odd = [f"{lang}={w}" for lang, w in self.language_weights if lang not in self.languages or not w > 0]
        if odd:
            raise ValueError(f"SynthOptions.language_weights: expected positive weights for languages among "
                             f"{self.languages}, got {', '.join(odd)}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"SynthOptions: need 1 <= min_words <= max_words, got {self.min_words}, "
                             f"{self.max_words}")
        if self.vocabulary <= FUNCTION_WORDS:
            raise ValueError(f"SynthOptions.vocabulary must exceed {FUNCTION_WORDS}, got {self.vocabulary}")


# The held-out condition of issue 5: sentence-like texts read by the main voice at default settings, clean.
HELDOUT_SEED = 1_000_003
HELDOUT_OPTIONS = SynthOptions(sentence_share=1.0, default_voice_share=1.0, peak_db=None, noise_share=0.0,
                               pad_seconds=(0.2, 0.2))


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines one example's audio."""
    id: str
    text: str
    language: str
    voice: str  # espeak-ng -v argument, e.g. "fr-fr+f3"
    speed: int
    pitch: int
    peak_db: float | None
    snr_db: float | None  # None: no noise
    pad_left: float
    pad_right: float
    noise_seed: int


@dataclass(frozen=True)
class SynthExample:
    spec: SynthSpec
    audio: np.ndarray  # float32, mono, 16 kHz

    @property
    def text(self) -> str:
        return self.spec.text

    @property
    def language(self) -> str:
        return self.spec.language


# ---------------------------------------------------------------- texts


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _pick_words(rng: np.random.Generator, words: tuple[str, ...], n: int, sentence: bool) -> list[str]:
    # Sentence-like: function words (drawn by Zipf weight) between content words, as in real text;
    # otherwise uniform over the list, so rare words are heard as often as common ones.
    zipf = 1.0 / np.arange(1, FUNCTION_WORDS + 1)
    zipf /= zipf.sum()
    out: list[str] = []
    while len(out) < n:
        if sentence and rng.random() < 0.45:
            word = words[int(rng.choice(FUNCTION_WORDS, p=zipf))]
        else:
            word = words[int(rng.integers(FUNCTION_WORDS if sentence else 0, len(words)))]
        if not out or word != out[-1]:
            out.append(word)
    return out


def _write(words: list[str], language: str, punctuate: bool) -> str:
    if language == "en":  # the pronoun is always written upper case: I, I'm, I'll
        words = ["I" + w[1:] if w == "i" or w.startswith("i'") else w for w in words]
    text = " ".join(words)
    return text[:1].upper() + text[1:] + "." if punctuate else text


def make_text(rng: np.random.Generator, language: str, options: SynthOptions) -> str:
    """One random text in `language`: a sentence-like sequence or a uniform word sequence."""
    words = frequent_words(language, options.vocabulary)
    n = int(rng.integers(options.min_words, options.max_words + 1))
    sentence = rng.random() < options.sentence_share
    return _write(_pick_words(rng, words, n, sentence), language, options.punctuate)


# ---------------------------------------------------------------- specs and rendering


def _pick_language(rng: np.random.Generator, options: SynthOptions) -> str:
    if not options.language_weights:
        return options.languages[int(rng.integers(len(options.languages)))]
    weights = dict(options.language_weights)
    p = np.array([weights.get(lang, 1.0) for lang in options.languages])
    return options.languages[int(rng.choice(len(p), p=p / p.sum()))]


def example_spec(seed: int, index: int, options: SynthOptions = SynthOptions()) -> SynthSpec:
    """The example number `index` of the stream `seed`, independent of every other index."""
    rng = np.random.default_rng([seed, index])
    language = _pick_language(rng, options)
    text = make_text(rng, language, options)
    voices = VOICES[language]
    if rng.random() < options.default_voice_share:
        voice, speed, pitch = voices[0], DEFAULT_SPEED, DEFAULT_PITCH
    else:
        voice = voices[int(rng.integers(1, len(voices)))] if len(voices) > 1 and rng.random() < options.accent_share \
            else voices[0]
        if rng.random() < options.variant_share:
            voice += "+" + VARIANTS[int(rng.integers(len(VARIANTS)))]
        speed = int(rng.integers(options.speed[0], options.speed[1] + 1))
        pitch = int(rng.integers(options.pitch[0], options.pitch[1] + 1))
    peak = _uniform(rng, *options.peak_db) if options.peak_db is not None else None
    snr = _uniform(rng, *options.snr_db) if rng.random() < options.noise_share else None
    return SynthSpec(id=f"{language}-{seed}-{index:07d}", text=text, language=language, voice=voice,
                     speed=speed, pitch=pitch, peak_db=peak, snr_db=snr,
                     pad_left=_uniform(rng, *options.pad_seconds), pad_right=_uniform(rng, *options.pad_seconds),
                     noise_seed=int(rng.integers(2**31)))


def _run_espeak(args: list[str], text: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["espeak-ng", *args], input=text, capture_output=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError("espeak-ng is not installed (Debian/Ubuntu: apt install espeak-ng)") from None


@functools.lru_cache(maxsize=None)
def installed_voices() -> frozenset[str]:
    """Voice and variant names espeak-ng knows (lower case)."""
    names = set()
    for args in (["--voices"], ["--voices=variant"]):
        for line in _run_espeak(args).stdout.decode(errors="replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 5:
                names.add(fields[1].lower() if args == ["--voices"] else fields[4].lower().removeprefix("!v/"))
    return frozenset(names)


def _check_voice(voice: str) -> None:
    # espeak-ng falls back to a default voice for unknown names ("no-such" reads as Norwegian, an unknown
    # variant is ignored) and still exits 0, so a typo would silently give the wrong language.
    base, _, variant = voice.lower().partition("+")
    known = installed_voices()
    if base not in known or (variant and variant not in known):
        raise RuntimeError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices` and "
                           f"`espeak-ng --voices=variant`)")


def espeak(text: str, voice: str, speed: int = DEFAULT_SPEED, pitch: int = DEFAULT_PITCH) -> np.ndarray:
    """espeak-ng's rendering of `text`, resampled to 16 kHz float32."""
    if not text.strip():
        raise ValueError("espeak: the text to synthesize is empty")
    _check_voice(voice)
    # Text on stdin (-b 1: UTF-8), so a text starting with "-" is not read as an option.
    done = _run_espeak(["-v", voice, "-s", str(speed), "-p", str(pitch), "-b", "1", "--stdin", "--stdout"],
                       text.encode("utf-8"))
    if done.returncode != 0:
        raise RuntimeError(f"espeak-ng -v {voice} failed: {done.stderr.decode(errors='replace').strip()}")
    wave, rate = sf.read(io.BytesIO(done.stdout), dtype="float32")
    return soxr.resample(wave, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def render(spec: SynthSpec) -> np.ndarray:
    """The audio of `spec`: speech at its level, silence padding, then noise over the whole clip."""
    speech = espeak(spec.text, spec.voice, spec.speed, spec.pitch)
    peak = float(np.abs(speech).max())
    if spec.peak_db is not None and peak > 0:
        speech = speech * (10 ** (spec.peak_db / 20) / peak)
    pads = (round(spec.pad_left * SAMPLE_RATE), round(spec.pad_right * SAMPLE_RATE))
    audio = np.pad(speech, pads)
    if spec.snr_db is not None:
        # Noise level from the speech's RMS, so the SNR holds whatever the gain.
        rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64)))) if speech.size else 0.0
        noise = np.random.default_rng(spec.noise_seed).standard_normal(audio.size)
        audio = audio + (rms * 10 ** (-spec.snr_db / 20) * noise).astype(np.float32)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def synthesize(text: str, language: str, voice: str | None = None) -> np.ndarray:
    """`text` read by the language's main voice (or `voice`) at espeak-ng's default speed and pitch, 16 kHz."""
    if language not in VOICES:
        raise ValueError(f"synthesize: unsupported language {language!r}; expected one of {LANGUAGES}")
    return espeak(text, voice or VOICES[language][0])


def _render_all(specs: Iterable[SynthSpec], workers: int) -> Iterator[SynthExample]:
    if workers <= 1:
        yield from (SynthExample(s, render(s)) for s in specs)
        return
    with ThreadPoolExecutor(workers) as pool:
        specs = list(specs)
        for start in range(0, len(specs), 64 * workers):  # bounded look-ahead keeps memory flat
            chunk = specs[start:start + 64 * workers]
            yield from (SynthExample(s, a) for s, a in zip(chunk, pool.map(render, chunk)))


def iter_examples(seed: int, count: int, options: SynthOptions = SynthOptions(), start: int = 0,
                  workers: int = 2) -> Iterator[SynthExample]:
    """Examples `start` .. `start + count - 1` of the stream `seed`, in order."""
    return _render_all((example_spec(seed, i, options) for i in range(start, start + count)), workers)


# ---------------------------------------------------------------- datasets on disk


def _specs(seed: int, count: int, options: SynthOptions, exclude_texts: Iterable[str]) -> list[SynthSpec]:
    exclude = set(exclude_texts)
    specs: list[SynthSpec] = []
    index = 0
    while len(specs) < count:
        spec = example_spec(seed, index, options)
        index += 1
        if spec.text not in exclude:
            specs.append(spec)
            exclude.add(spec.text)  # no text twice in one set
        if index > 20 * count + 1000:
            raise ValueError(f"could not draw {count} distinct texts; widen SynthOptions (vocabulary, words)")
    return specs


def write_dataset(out_dir: str | Path, specs: list[SynthSpec], workers: int = 2, progress: bool = False) -> Path:
    """Render `specs` to out_dir/audio/<id>.flac and write out_dir/manifest.jsonl; returns the manifest path.

    Manifest lines are {"id", "audio" (relative to the manifest), "text", "language", "voice", "speed",
    "pitch"}. Audio files already present are kept (each is written under a temporary name, then renamed,
    so a file that exists is complete): an interrupted run resumes where it stopped.
    """
    out = Path(out_dir)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not (out / "audio" / f"{s.id}{AUDIO_SUFFIX}").exists()]

    def save(spec: SynthSpec) -> None:  # runs in the pool: FLAC encoding is parallel work too
        path = out / "audio" / f"{spec.id}{AUDIO_SUFFIX}"
        tmp = path.with_name(path.stem + ".tmp" + AUDIO_SUFFIX)
        sf.write(tmp, render(spec), SAMPLE_RATE, subtype="PCM_16")
        tmp.replace(path)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"synthesizing {out}", unit="utt")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(save, todo):
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    lines = [json.dumps({"id": s.id, "audio": f"audio/{s.id}{AUDIO_SUFFIX}", "text": s.text,
                         "language": s.language, "voice": s.voice, "speed": s.speed, "pitch": s.pitch},
                        ensure_ascii=False)
             for s in specs]
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out / MANIFEST)
    return out / MANIFEST


def build_dataset(out_dir: str | Path, count: int, seed: int = 0, options: SynthOptions = SynthOptions(),
                  workers: int = 2, exclude_texts: Iterable[str] = (), progress: bool = False) -> Path:
    """A cached training set: generated once, reused when out_dir already holds the same settings."""
    out = Path(out_dir)
    settings = json.loads(json.dumps({"seed": seed, "count": count, "options": dataclasses.asdict(options)}))
    settings_path = out / SETTINGS
    if settings_path.exists():
        found = json.loads(settings_path.read_text())
        if found != settings:
            raise ValueError(f"{settings_path}: this directory holds a synthetic set made with other settings "
                             f"({found}); use a fresh directory or delete it")
        manifest = out / MANIFEST
        if manifest.exists() and sum(1 for _ in manifest.open(encoding="utf-8")) == count:
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings, indent=1))
    return write_dataset(out, _specs(seed, count, options, exclude_texts), workers, progress)


def training_texts(count: int, seed: int = 0, options: SynthOptions = SynthOptions()) -> list[str]:
    """The texts of `build_dataset(_, count, seed, options)`, without rendering any audio (a few seconds for
    16,000): what a held-out set must exclude."""
    return [spec.text for spec in _specs(seed, count, options, ())]


def trained_texts(model_dir: str | Path) -> list[str]:
    """The training texts of a model made by `asr train` (its config records the data's size and seed)."""
    config_path = Path(model_dir) / "config.json"
    try:
        data = json.loads(config_path.read_text())["gemma3n_speech"]["trained"]["data"]
        count, seed = int(data["utterances"]), int(data["seed"])
        weights = tuple((str(k), float(v)) for k, v in data.get("language_weights", {}).items())
    except FileNotFoundError:
        raise ValueError(f"{config_path}: not found (expected a model directory made by `asr train`)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"{config_path}: no gemma3n_speech.trained.data record (utterances, seed); "
                         "was this model trained by `asr train`?") from None
    return training_texts(count, seed, SynthOptions(language_weights=weights))


def build_heldout(out_dir: str | Path, per_language: int, seed: int = HELDOUT_SEED,
                  languages: tuple[str, ...] = LANGUAGES, exclude_texts: Iterable[str] = (),
                  workers: int = 2) -> Path:
    """The held-out evaluation set: `per_language` sentences per language, main voice, default settings.

    Pass the training texts as `exclude_texts` so no held-out sentence was heard in training.
    """
    exclude = list(exclude_texts)
    specs: list[SynthSpec] = []
    for language in languages:
        options = dataclasses.replace(HELDOUT_OPTIONS, languages=(language,))
        specs += _specs(seed, per_language, options, exclude)
    return write_dataset(out_dir, specs, workers)


def read_manifest(path: str | Path) -> list[dict]:
    """Manifest records with "audio" resolved to an absolute path; checks the fields every line needs."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
        missing = [k for k in ("id", "audio", "text", "language") if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{number}: field(s) {missing} missing or not strings")
        record["audio"] = str((path.parent / record["audio"]).resolve())
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> None:
    """python -m asr.synth OUT --count N: build a training set (or --heldout K per language) in OUT."""
    import argparse
    import time
    parser = argparse.ArgumentParser(prog="python -m asr.synth", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1000, help="training examples (ignored with --heldout)")
    parser.add_argument("--heldout", type=int, default=0, metavar="K", help="held-out set, K per language")
    parser.add_argument("--seed", type=int, default=0, help="training draw; with --heldout, another held-out draw")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--exclude-model", type=Path, metavar="DIR",
                        help="with --heldout: leave out every text the model in DIR was trained on "
                             "(read from its config; for the bundled model: asr/assets/model)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if args.heldout:
        try:
            exclude = trained_texts(args.exclude_model) if args.exclude_model else ()
        except ValueError as e:
            parser.error(str(e))
        # --seed picks another held-out draw (0: the one `asr train` checks during training).
        manifest = build_heldout(args.out, args.heldout, seed=HELDOUT_SEED + args.seed, workers=args.workers,
                                 exclude_texts=exclude)
    else:
        manifest = build_dataset(args.out, args.count, args.seed, workers=args.workers, progress=True)
    records = read_manifest(manifest)
    seconds = sum(sf.info(r["audio"]).duration for r in records)
    elapsed = time.perf_counter() - start
    print(f"{manifest}: {len(records)} examples, {seconds / 3600:.2f} h of audio, {elapsed:.1f} s "
          f"({len(records) / elapsed:.1f} examples/s)")


if __name__ == "__main__":
    main()
