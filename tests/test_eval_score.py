"""`asr score` on text and JSONL files."""
import json

import jiwer
import pytest
import sacrebleu

from eval import score


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_files_wer_equals_jiwer(tmp_path, capsys):
    refs = ["the cat sat on the mat", "hello world", ""]
    hyps = ["the cat sat on mat", "hello big world", "noise"]
    ref, hyp = write(tmp_path / "ref.txt", refs), write(tmp_path / "hyp.txt", hyps)
    assert score.main(["--ref", str(ref), "--hyp", str(hyp)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["wer"]["value"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert (out["wer"]["deletions"], out["wer"]["insertions"], out["utterances"]) == (1, 2, 3)


def test_normalization_applies_to_wer(tmp_path):
    ref = write(tmp_path / "r.txt", ["Mr. Smith paid twenty dollars."])
    hyp = write(tmp_path / "h.txt", ["mister smith paid $20"])
    assert score.score_files(ref, hyp, ["wer"], "none")["wer"]["value"] > 0.5
    assert score.score_files(ref, hyp, ["wer"], "english")["wer"]["value"] == 0.0


def test_jsonl_matched_by_id_and_cer_for_chinese(tmp_path):
    ref = write(tmp_path / "ref.jsonl", [json.dumps({"id": "a", "text": "你好世界", "language": "zh"}),
                                         json.dumps({"id": "b", "text": "谢谢", "language": "zh"})])
    hyp = write(tmp_path / "hyp.jsonl", [json.dumps({"id": "b", "hypothesis": "谢谢"}),
                                         json.dumps({"id": "a", "hypothesis": "你好时间"})])
    out = score.score_files(ref, hyp)
    assert out["language"] == "zh" and "cer" in out
    assert out["cer"]["value"] == pytest.approx(2 / 6, abs=1e-12)


def test_bleu_and_chrf_on_raw_translations(tmp_path):
    refs, hyps = ["The cat sat on the mat.", "Hello there!"], ["The cat sat on a mat.", "Hello!"]
    ref = write(tmp_path / "ref.jsonl", [json.dumps({"id": str(i), "text": "x", "language": "fr", "translation": t,
                                                     "target_language": "en"}) for i, t in enumerate(refs)])
    hyp = write(tmp_path / "hyp.jsonl", [json.dumps({"id": str(i), "translation": t}) for i, t in enumerate(hyps)])
    out = score.score_files(ref, hyp, ["bleu", "chrf"], normalize="english")
    assert out["bleu"]["value"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)
    assert out["chrf"]["value"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score, abs=1e-9)
    assert out["bleu"]["on_raw_text"] and "tok:13a" in out["bleu"]["signature"]


@pytest.mark.parametrize("ref_lines,hyp_lines,message", [
    (["a", "b"], ["a"], "has 2 utterances but .* has 1"),
    ([json.dumps({"id": "x", "text": "a"}), json.dumps({"id": "y", "text": "b"})],
     [json.dumps({"id": "x", "text": "a"})], "1 id\\(s\\) in .*ref.* missing from .*hyp.*: y"),
    ([json.dumps({"id": "x", "text": "a"})],
     [json.dumps({"id": "x", "text": "a"}), json.dumps({"id": "z", "text": "b"})], "missing from .*ref.*: z"),
    ([json.dumps({"id": "x", "words": "a"})], [json.dumps({"id": "x", "text": "a"})], "line 1: no text field"),
    (['{"id": "x", "text": '], ["a"], "line 1: malformed JSON"),
])
def test_errors(tmp_path, capsys, ref_lines, hyp_lines, message):
    ref, hyp = write(tmp_path / "ref.jsonl", ref_lines), write(tmp_path / "hyp.jsonl", hyp_lines)
    if not ref_lines[0].startswith("{"):
        ref, hyp = write(tmp_path / "ref.txt", ref_lines), write(tmp_path / "hyp.txt", hyp_lines)
    with pytest.raises(score.ScoreError, match=message):
        score.score_files(ref, hyp)
    assert score.main(["--ref", str(ref), "--hyp", str(hyp)]) == 2
    assert capsys.readouterr().err.startswith("asr score: ")


def test_report_gives_cer_for_every_language_and_wer_only_for_spaced_ones():
    from eval.report import summarize

    records = [{"id": "a", "language": "en", "task": "transcribe", "reference": "the cat", "hypothesis": "the bat"},
               {"id": "b", "language": "zh", "task": "transcribe", "reference": "你好", "hypothesis": "你"}]
    report = summarize(records)
    en, zh = report["languages"]["en"], report["languages"]["zh"]
    assert en["cer"]["value"] == pytest.approx(1 / 7) and en["wer"]["value"] == pytest.approx(1 / 2)
    assert zh["cer"]["value"] == pytest.approx(1 / 2) and "wer" not in zh
    assert report["overall"]["cer"]["value"] == pytest.approx(2 / 9)  # summed over both languages
    assert report["overall"]["wer"]["value"] == pytest.approx(1 / 2)  # English only
