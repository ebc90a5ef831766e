"""WER/CER must equal jiwer's; BLEU/chrF++ must equal the sacrebleu command line."""
import json
import subprocess
import sys

import jiwer
import pytest

from eval import metrics

CASES = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "the cat sat on mat"),
    ("the cat sat", "the big cat sat down"),
    ("a b", "b a"),
    ("hello world", "goodbye moon"),
    ("one two three four", ""),                 # empty hypothesis: all deletions
    ("", "some inserted words"),                # empty reference: all insertions
    ("", ""),
    ("  spaced   out\ttext ", "spaced out text"),
    ("naïve café", "naive cafe"),
    ("你好世界", "你好时间"),
    ("repeat repeat repeat", "repeat"),
    ("x", "x y z w"),
]


@pytest.mark.parametrize("ref,hyp", CASES)
def test_single_utterance_equals_jiwer(ref, hyp):
    w = metrics.align(ref, hyp, "wer")
    j = jiwer.process_words(ref, hyp)
    assert (w.counts.hits, w.counts.substitutions, w.counts.deletions, w.counts.insertions) == \
        (j.hits, j.substitutions, j.deletions, j.insertions)
    assert w.counts.rate == pytest.approx(j.wer, abs=1e-12)
    c = metrics.align(ref, hyp, "cer")
    jc = jiwer.process_characters(ref, hyp)
    assert (c.counts.substitutions, c.counts.deletions, c.counts.insertions) == \
        (jc.substitutions, jc.deletions, jc.insertions)
    assert c.counts.rate == pytest.approx(jc.cer, abs=1e-12)


def test_corpus_rates_equal_jiwer_and_are_not_averages():
    refs = [r for r, _ in CASES]
    hyps = [h for _, h in CASES]
    assert metrics.wer(refs, hyps).value == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert metrics.cer(refs, hyps).value == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    # 1 error over 1 word and 0 errors over 9 words: corpus WER 0.1, not the mean 0.5
    assert metrics.wer(["a", "b c d e f g h i j"], ["x", "b c d e f g h i j"]).value == pytest.approx(0.1, abs=1e-12)


def test_empty_reference_convention():
    # documented: no reference words at all -> the insertion count (jiwer 4)
    assert metrics.wer([""], ["a b"]).value == 2.0
    assert metrics.wer([""], [""]).value == 0.0
    # an empty reference inside a corpus adds its insertions to the numerator only
    r = metrics.wer(["a b", ""], ["a b", "c"])
    assert (r.counts.insertions, r.counts.reference_length, r.value) == (1, 2, 0.5)


def test_alignment_pairs_and_dict():
    a = metrics.align("the cat sat", "the bat sat down")
    assert a.pairs() == [("the", "the"), ("cat", "bat"), ("sat", "sat"), (None, "down")]
    d = a.to_dict()
    assert d["counts"]["errors"] == 2 and d["ops"][1]["kind"] == "substitute"
    assert metrics.EditCounts.from_dict(d["counts"]) == a.counts


def test_language_units():
    assert [metrics.error_unit(x) for x in ("en", "zh-CN", "cmn_hans_cn", "ja_jp", "th", "lo", "my", "fr")] == \
        ["wer", "cer", "cer", "cer", "cer", "cer", "cer", "wer"]
    assert metrics.bleu_tokenizer("ja") == "char" and metrics.bleu_tokenizer("de") == "13a"


def test_bad_input_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        metrics.wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="unit must be"):
        metrics.align("a", "a", "ter")
    with pytest.raises(ValueError, match="empty corpus"):
        metrics.bleu([], [])


REFS = ["The cat sat on the mat.", "Hello there, world!", "It's a fine day, isn't it?", "Numbers: 1,000 and 2.5%"]
HYPS = ["The cat sat on mat.", "Hello world!", "It is a fine day, is it not?", "Numbers: 1000 and 2.5 %"]


def _sacrebleu_cli(tmp_path, refs, hyps, *extra):
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i",
                          str(tmp_path / "hyp.txt"), "-m", "bleu", "chrf", "--chrf-word-order", "2",
                          "-w", "6", *extra], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_bleu_chrf_equal_sacrebleu_cli(tmp_path):
    cli_bleu, cli_chrf = _sacrebleu_cli(tmp_path, REFS, HYPS)
    b, c = metrics.bleu(HYPS, REFS, "en"), metrics.chrf(HYPS, REFS, "en")
    assert b.value == pytest.approx(cli_bleu["score"], abs=1e-6)  # the CLI prints 6 decimals
    assert c.value == pytest.approx(cli_chrf["score"], abs=1e-6)
    assert b.signature == cli_bleu["signature"] and c.signature == cli_chrf["signature"]
    assert "tok:13a" in b.signature and "nw:2" in c.signature


def test_bleu_char_tokenizer_for_chinese(tmp_path):
    refs, hyps = ["今天天气很好。", "我喜欢学习中文"], ["今天天气不错。", "我喜欢中文"]
    cli_bleu, _ = _sacrebleu_cli(tmp_path, refs, hyps, "-tok", "char")
    b = metrics.bleu(hyps, refs, "zh")
    assert b.value == pytest.approx(cli_bleu["score"], abs=1e-6) and "tok:char" in b.signature
