"""Reports from a results JSONL (one line per utterance, written by eval.runner).

A result line holds: id, language, task, reference, hypothesis, and for translation reference_translation,
translation, target_language; edits (raw) and edits_normalized; timings audio_seconds, processing_seconds,
first_partial_latency (seconds or null) and final_lags (list of seconds).

The report recomputes every metric from the texts (the stored edits are for reading one line at a time), so
it depends only on the set of results, not on their order or on how many runs wrote them. Timings (RTF,
latencies) are the only parts that differ between two runs of the same model.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import metrics
from .normalize import normalizer_for_language

PERCENTILES = (50, 90, 99)


class ReportError(ValueError):
    """A results or report file that cannot be read; the message names it."""


def load_results(path: str | Path) -> list[dict]:
    """Result lines; a cut-off last line (a run killed mid-write) is ignored, a bad line elsewhere is an error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read results {path}: {e}") from None
    out = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break  # unfinished last line
            raise ReportError(f"{path} line {number}: malformed JSON ({e.msg})") from None
    return out


def _percentiles(values: list[float]) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES} | {"count": len(values)}


def _error_rates(records: list[dict]) -> dict:
    """CER over all records and WER over those of languages written with spaces, raw and normalized (a WER
    over Chinese or Japanese text would count whole sentences as words)."""
    out = {}
    for unit in ("wer", "cer"):
        group = [r for r in records if unit == "cer" or metrics.error_unit(r.get("language")) == "wer"]
        if not group:
            continue
        refs, hyps = [r["reference"] for r in group], [r.get("hypothesis", "") for r in group]
        norm = [normalizer_for_language(r.get("language")) for r in group]
        out[unit] = metrics.error_rate(refs, hyps, unit).to_dict()
        out[f"{unit}_normalized"] = metrics.error_rate([n(t) for n, t in zip(norm, refs)],
                                                       [n(t) for n, t in zip(norm, hyps)], unit).to_dict()
    return out


def _translation_scores(records: list[dict]) -> dict:
    pairs = [r for r in records if r.get("reference_translation") is not None]
    targets = {r.get("target_language") for r in pairs}
    if not pairs or len(targets) != 1:
        return {}  # BLEU across target languages (different tokenizers) means nothing
    target = targets.pop()
    refs = [r["reference_translation"] for r in pairs]
    hyps = [r.get("translation") or "" for r in pairs]
    return {"target_language": target, "bleu": metrics.bleu(hyps, refs, target).to_dict(),
            "chrf++": metrics.chrf(hyps, refs, target).to_dict()}


def _timings(records: list[dict]) -> dict:
    audio = sum(r.get("audio_seconds") or 0.0 for r in records)
    processing = sum(r.get("processing_seconds") or 0.0 for r in records)
    first = [r["first_partial_latency"] for r in records if r.get("first_partial_latency") is not None]
    lags = [lag for r in records for lag in (r.get("final_lags") or [])]
    return {"audio_seconds": audio, "processing_seconds": processing,
            "rtf": processing / audio if audio > 0 else None,
            "first_partial_latency": _percentiles(first), "final_lag": _percentiles(lags)}


def summarize(records: list[dict]) -> dict:
    """The report object: overall and per (source) language."""
    by_language: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_language[r.get("language") or "unknown"].append(r)

    def group(rs: list[dict]) -> dict:
        return {"utterances": len(rs), **_error_rates(rs), **_translation_scores(rs), "timings": _timings(rs)}

    tasks = sorted({r.get("task", "transcribe") for r in records})
    return {"tasks": tasks, "overall": group(records),
            "languages": {lang: group(rs) for lang, rs in sorted(by_language.items())}}


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _row(name: str, g: dict) -> str:
    def rate(key):
        return _fmt(g[key]["value"], 100) if key in g else "-"

    t = g["timings"]
    lat = (t["first_partial_latency"] or {}).get("p50")
    return (f"| {name} | {g['utterances']} | {rate('wer')} | {rate('wer_normalized')} | {rate('cer')} | "
            f"{rate('cer_normalized')} | {_fmt(g.get('bleu', {}).get('value'))} | "
            f"{_fmt(g.get('chrf++', {}).get('value'))} | {_fmt(t['rtf'], 1, 3)} | {_fmt(lat)} |")


HEADER = ("| language | utts | WER % | WER norm % | CER % | CER norm % | BLEU | chrF++ | RTF | first partial p50 s |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def render_markdown(report: dict) -> str:
    lines = ["# Evaluation report", "", f"Tasks: {', '.join(report['tasks'])}", "", HEADER,
             _row("**overall**", report["overall"])]
    lines += [_row(lang, g) for lang, g in report["languages"].items()]
    t = report["overall"]["timings"]
    for key, title in (("first_partial_latency", "First-partial latency"), ("final_lag", "Final lag")):
        if t[key]:
            lines += ["", f"{title} (s): " + ", ".join(f"p{p} {t[key][f'p{p}']:.3f}" for p in PERCENTILES)
                      + f" over {t[key]['count']}"]
    signatures = {s for g in [report["overall"], *report["languages"].values()]
                  for k in ("bleu", "chrf++") if k in g for s in [g[k]["signature"]]}
    if signatures:
        lines += ["", "sacrebleu signatures:", *[f"- `{s}`" for s in sorted(signatures)]]
    lines += ["", "WER/CER: corpus level (summed edits / summed reference length); normalized = English "
              "normalizer for en, basic elsewhere. BLEU/chrF++ on raw text."]
    return "\n".join(lines) + "\n"


def plot(report: dict, records: list[dict], out_dir: Path) -> list[Path]:
    """wer_per_language.png (bars, raw and normalized) and, with streaming timings, latency_cdf.png."""
    from matplotlib.figure import Figure  # the object API renders with Agg and never opens a window

    written = []
    langs = list(report["languages"])
    raw, norm = [], []
    for lang in langs:
        g = report["languages"][lang]
        unit = "wer" if "wer" in g else "cer"
        raw.append(100 * g[unit]["value"] if unit in g else 0.0)
        norm.append(100 * g[f"{unit}_normalized"]["value"] if unit in g else 0.0)
    fig = Figure(figsize=(max(4, 1.2 * len(langs) + 2), 3.5))
    ax = fig.add_subplot()
    x = np.arange(len(langs))
    ax.bar(x - 0.2, raw, 0.4, label="raw")
    ax.bar(x + 0.2, norm, 0.4, label="normalized")
    ax.set_xticks(x, langs)
    ax.set_ylabel("error rate % (CER for zh/ja/th/lo/my)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "wer_per_language.png", dpi=100)
    written.append(out_dir / "wer_per_language.png")
    first = sorted(r["first_partial_latency"] for r in records if r.get("first_partial_latency") is not None)
    lags = sorted(lag for r in records for lag in (r.get("final_lags") or []))
    if first or lags:
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        for values, label in ((first, "first partial latency"), (lags, "final lag")):
            if values:
                ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=label)
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "latency_cdf.png", dpi=100)
        written.append(out_dir / "latency_cdf.png")
    return written


def write_report(results: str | Path, out_dir: str | Path | None = None, plots: bool = True) -> dict:
    """Read results.jsonl, write report.json, report.md and the plots into `out_dir` (default: beside it)."""
    results = Path(results)
    out_dir = Path(out_dir) if out_dir else results.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_results(results)
    if not records:
        raise ReportError(f"{results}: no results to report")
    report = summarize(records)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if plots:
        plot(report, records, out_dir)
    return report


def _load_report(report: dict | str | Path) -> dict:
    if isinstance(report, dict):
        return report
    path = Path(report)
    path = path / "report.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"cannot read report {path}: {e}") from None


_COMPARED = (("wer", 100, "WER %"), ("wer_normalized", 100, "WER norm %"), ("cer", 100, "CER %"),
             ("cer_normalized", 100, "CER norm %"), ("bleu", 1, "BLEU"), ("chrf++", 1, "chrF++"))


def compare(report_a: dict | str | Path, report_b: dict | str | Path, names: tuple[str, str] = ("A", "B")) -> str:
    """Markdown table of two reports side by side (reports, report.json paths or run folders)."""
    a, b = _load_report(report_a), _load_report(report_b)
    lines = [f"| language | metric | {names[0]} | {names[1]} | {names[1]} - {names[0]} |", "|---|---|---|---|---|"]
    groups = [("overall", a["overall"], b["overall"])]
    groups += [(lang, a["languages"].get(lang, {}), b["languages"].get(lang, {}))
               for lang in sorted(set(a["languages"]) | set(b["languages"]))]
    for name, ga, gb in groups:
        for key, scale, title in _COMPARED + (("rtf", 1, "RTF"),):
            va = ga.get("timings", {}).get("rtf") if key == "rtf" else ga.get(key, {}).get("value")
            vb = gb.get("timings", {}).get("rtf") if key == "rtf" else gb.get(key, {}).get("value")
            if va is None and vb is None:
                continue
            delta = (vb - va) * scale if va is not None and vb is not None else None
            digits = 3 if key == "rtf" else 2
            lines.append(f"| {name} | {title} | {_fmt(va, scale, digits)} | {_fmt(vb, scale, digits)} | "
                         f"{_fmt(delta, 1, digits)} |")
    return "\n".join(lines) + "\n"
