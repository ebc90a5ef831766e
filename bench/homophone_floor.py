"""How many word errors no model can avoid on asr.synth's held-out texts: words espeak-ng says alike.

The held-out texts are random words from 3,000-word lists (asr.synth), so context cannot tell "machine"
from "machines", which espeak-ng pronounces identically. For each language this prints:
- the homophone floor: the word error rate of an ideal listener that hears each word's phonemes exactly and
  writes the likeliest spelling (the held-out texts' word distribution: Zipf-weighted function words, then
  uniform over the rest); no model can do better on average;
- with --results (an `asr eval` results.jsonl): how many of the measured word errors are substitutions by
  a word with the same phonemes.

    python bench/homophone_floor.py [--results runs/offline/results.jsonl]
"""
from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asr.synth import FUNCTION_WORDS, HELDOUT_OPTIONS, LANGUAGES, VOICES  # noqa: E402
from asr.wordlists import frequent_words  # noqa: E402


def phonemes(words: list[str], language: str) -> list[str]:
    """espeak-ng's phoneme string of each word, said alone (one clause per word)."""
    voice = VOICES[language][0]
    out = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice], input="\n".join(w + "." for w in words),
                         capture_output=True, text=True, check=True).stdout.strip().split("\n")
    if len(out) != len(words):
        raise RuntimeError(f"espeak-ng gave {len(out)} phoneme strings for {len(words)} {language} words")
    return [o.strip() for o in out]


def word_probabilities(n: int) -> np.ndarray:
    """P(word) in a held-out text (asr.synth._pick_words with sentence-like texts): 45% Zipf over the
    function words, 55% uniform over the rest."""
    zipf = 1.0 / np.arange(1, FUNCTION_WORDS + 1)
    p = np.full(n, 0.55 / (n - FUNCTION_WORDS))
    p[:FUNCTION_WORDS] = 0.45 * zipf / zipf.sum()
    return p


def floor(language: str) -> tuple[float, list[list[str]]]:
    """(homophone floor, the likeliest groups of words spelt differently and said alike)."""
    words = list(frequent_words(language, HELDOUT_OPTIONS.vocabulary))
    p = word_probabilities(len(words))
    groups = defaultdict(list)
    for i, ph in enumerate(phonemes(words, language)):
        groups[ph].append(i)
    rate = sum(p[g].sum() - p[g].max() for g in groups.values())
    shared = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: -p[g].sum())
    return float(rate), [[words[i] for i in g] for g in shared[:5]]


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c in " '").split()


def homophone_errors(results: Path) -> dict[str, Counter]:
    """Per language: reference words, word errors, and substitutions by a word said alike."""
    import jiwer

    stats: dict[str, Counter] = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        lang, ref, hyp = r["language"], _words(r["reference"]), _words(r["hypothesis"])
        c = stats.setdefault(lang, Counter())
        c["words"] += len(ref)
        if not ref:
            continue
        said = functools.partial(_said, lang)
        for chunk in jiwer.process_words(" ".join(ref), " ".join(hyp) or "<empty>").alignments[0]:
            if chunk.type == "equal":
                continue
            c["errors"] += max(chunk.ref_end_idx - chunk.ref_start_idx, chunk.hyp_end_idx - chunk.hyp_start_idx)
            if chunk.type == "substitute":
                pairs = zip(ref[chunk.ref_start_idx:chunk.ref_end_idx], hyp[chunk.hyp_start_idx:chunk.hyp_end_idx])
                c["homophones"] += sum(said(a) == said(b) for a, b in pairs)
    return stats


@functools.lru_cache(maxsize=None)
def _said(language: str, word: str) -> str:
    return phonemes([word], language)[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="an asr eval results.jsonl to split into homophone errors")
    args = parser.parse_args(argv)
    measured = homophone_errors(args.results) if args.results else {}
    print("| language | homophone floor (WER %) | likeliest homophone groups |"
          + (" measured WER % | of it homophone substitutions |" if measured else ""))
    print("|---|---:|---|" + ("---:|---:|" if measured else ""))
    for lang in LANGUAGES:
        rate, groups = floor(lang)
        row = f"| {lang} | {100 * rate:.1f} | {'; '.join(' / '.join(g) for g in groups)} |"
        if lang in measured:
            c = measured[lang]
            row += f" {100 * c['errors'] / c['words']:.1f} | {100 * c['homophones'] / c['words']:.1f} |"
        print(row)


if __name__ == "__main__":
    main()
