"""HTML run report (inline PNG plots, generated audio next to it) and a markdown summary for Prefect artifacts."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slam_core.atomic import write_bytes_atomic, write_text_atomic
from slam_core.run_summary import PROXY_METRICS, checkpoint_label, read_metrics_csv

log = logging.getLogger(__name__)

# Paper Table 2 (1×A5000 rows) and Table 3 (scaled): accuracies in %, GenPPL, auto-BLEU (in %) as printed;
# GPTScore (the judge, 1-5) only in Table 3: Slam 2.09, Slam (scaled) 2.69, TWIST-1.3B 1.82.
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "Slam": {"sblimp": 58.86, "ssc": 58.04, "tsc": 82.04, "genppl": 62.8, "auto_bleu": 3.88, "judge": 2.09},
    "Slam (-DPO)": {"sblimp": 56.45, "ssc": 55.59, "tsc": 78.01, "genppl": 88.3, "auto_bleu": 3.47},
    "Slam scaled (Table 3)": {"sblimp": 61.11, "ssc": 61.30, "tsc": 84.18, "genppl": 46.6, "auto_bleu": 3.75,
                              "judge": 2.69},
    "TWIST-1.3B": {"sblimp": 57.00, "ssc": 52.4, "tsc": 70.6, "genppl": 131.8, "auto_bleu": 3.20, "judge": 1.82},
}
PAPER_COLUMNS = (("sblimp", "sBLIMP ↑"), ("ssc", "sSC ↑"), ("tsc", "tSC ↑"), ("genppl", "GenPPL ↓"),
                 ("auto_bleu", "Auto-BLEU ↓"), ("judge", "GPTScore ↑"))
PERCENT_METRICS = {"auto_bleu", "cm_generate_auto_bleu"}  # stored as a fraction, printed in % as the paper does
AUDIO_DIR = "audio"  # generated WAVs are copied here, next to index.html
CROSS_MODAL_PREFIX = "cm_tsc_"  # cross-modal StoryCloze rows (slam_core.eval.cross_modal.metric_name)
CM_GENERATE_PREFIX = "cm_generate_"  # cross-modal generation rows (slam_core.eval.cm_generate.METRICS)

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}code{font-size:85%;word-break:break-all}
.note{color:#777;font-size:90%}"""


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _series(rows: list[dict[str, float]], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) over the rows where y is numeric; x falls back to the row index when a row lacks it."""
    picked = [(row.get(x, float(i)), row[y]) for i, row in enumerate(rows) if y in row]
    return [p[0] for p in picked], [p[1] for p in picked]


def loss_curves(rows: list[dict[str, float]]) -> list[tuple[str, list[float], list[float]]]:
    """(label, steps, values) of each loss curve in a metrics table: train, pooled validation, then one per
    held-out set (`val_loss/<set>`, e.g. LibriSpeech dev-clean and dev-other on the paper presets)."""
    cols = {name for row in rows for name in row}
    curves = [("train loss", *_series(rows, "step", "loss"))]
    if "val_loss" in cols:
        curves.append(("val loss", *_series(rows, "step", "val_loss")))
    for col in sorted(c for c in cols if c.startswith("val_loss/")):
        curves.append((f"val loss {col.split('/', 1)[1]}", *_series(rows, "step", col)))
    return curves


def loss_plot(metrics_csv: Path) -> str | None:
    """Train loss, validation loss (pooled and per held-out set, where logged) and the learning rate on a second
    axis, as a PNG data URI; None without a loss column."""
    # a bare Figure renders with Agg and touches no pyplot global state (safe in Prefect worker threads)
    from matplotlib.figure import Figure

    rows = read_metrics_csv(metrics_csv)
    cols = {name for row in rows for name in row}
    if "loss" not in cols:
        return None
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    for label, steps, values in loss_curves(rows):
        # the train curve is dense; validation points are few, so they get markers
        ax.plot(steps, values, "-" if label == "train loss" else "o-", label=label)
    ax.set_xlabel("step" if "step" in cols else "row")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    if "lr" in cols:
        ax_lr = ax.twinx()
        ax_lr.plot(*_series(rows, "step", "lr"), color="tab:orange", alpha=0.6)
        ax_lr.set_ylabel("lr", color="tab:orange")
    return _png_data_uri(fig)


# (column, axis label) of the optimiser-health and speed panels, in display order (DPO logs the rewards).
THROUGHPUT_PANELS = (("grad_norm", "grad norm (before clip)"), ("tokens_per_s", "tokens/s"), ("mfu", "MFU"),
                     ("reward_margin", "reward margin"), ("reward_accuracy", "reward accuracy"))


def throughput_plot(metrics_csv: Path) -> str | None:
    """Grad norm, tokens/s and MFU per step (one panel each, where the CSV has numbers) as a PNG data URI."""
    from matplotlib.figure import Figure

    rows = read_metrics_csv(metrics_csv)
    panels = [(col, label) for col, label in THROUGHPUT_PANELS if any(col in row for row in rows)]
    if not panels:
        return None
    fig = Figure(figsize=(8, 2.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (col, label) in zip(axes, panels):
        ax.plot(*_series(rows, "step", col), color="tab:purple")
        ax.set_ylabel(label)
    axes[-1].set_xlabel("step")
    return _png_data_uri(fig)


def _row_value(row: dict[str, Any]) -> tuple[float | None, bool]:
    """(value, in_percent): accuracies and auto-BLEU are reported in % like the paper."""
    if row.get("accuracy") is not None:
        return 100.0 * float(row["accuracy"]), True
    value = row.get("value")
    if value is not None and row.get("metric") in PERCENT_METRICS:
        return 100.0 * float(value), True
    return (None if value is None else float(value)), False


def _note(row: dict[str, Any]) -> str:
    """Why a row has no value (skipped metrics), or what a generative row left out (empty transcripts)."""
    try:
        details = json.loads(row.get("details") or "{}") if isinstance(row.get("details"), str) else (row.get("details") or {})
    except json.JSONDecodeError:
        return ""
    if "skipped" in details:
        return f"skipped: {details['skipped']}"
    parts = []
    if details.get("n_empty"):
        parts.append(f"{details['n_empty']} of {details.get('n_samples', '?')} transcripts empty (excluded)")
    if details.get("n_unparsable") or details.get("n_failed"):
        parts.append(f"{details.get('n_unparsable', 0)} unparsable, {details.get('n_failed', 0)} failed of "
                     f"{details.get('n', '?')} judge answers")
    if details.get("n_out_of_range"):
        parts.append(f"{details['n_out_of_range']} judge score(s) outside 1-5 (kept, as SlamKit)")
    if details.get("n_short"):
        parts.append(f"{details['n_short']} prompt(s) from files under {details.get('min_file_s')} s not judged")
    return "; ".join(parts)



def _paper_value(metric: str, paper: dict[str, float] | None) -> str:
    return f"{paper[metric]:.2f}" if paper and metric in paper else ""


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def metrics_sections_html(eval_rows: Sequence[dict[str, Any]], paper_reference: dict[str, float] | None) -> list[str]:
    """The metrics on the paper's sets (beside the paper's number), then the smoke proxies in their own table
    under a heading that says they are proxies, with no paper column."""
    cross = [r for r in eval_rows if str(r.get("metric", "")).startswith(CROSS_MODAL_PREFIX)]
    generated = [r for r in eval_rows if str(r.get("metric", "")).startswith(CM_GENERATE_PREFIX)]
    real = [r for r in eval_rows if r.get("metric") not in PROXY_METRICS and r not in cross and r not in generated]
    proxies = [r for r in eval_rows if r.get("metric") in PROXY_METRICS]
    out = []
    if real or not (proxies or cross or generated):
        out += ["<h3>On the paper's evaluation sets</h3>", metrics_table_html(real, paper_reference)]
    if cross:
        out += ["<h3>Cross-modal StoryCloze (interleaved LM)</h3>",
                "<p class=note>SlamKit's cm_tsc: cm_tsc_&lt;prompt&gt;2&lt;ending&gt;, t = text, s = speech; the "
                "correct ending's mean log-prob over the whole sequence beats the incorrect one's (ties 0.5). For scale: "
                "SlamKit's docs/SLAM.md lists 'Scaling Interleaving' (9B) at 62.4 sSC / 82.9 tSC, speech-only "
                "metrics on the published sets, not these.</p>",
                metrics_table_html(cross, None)]
    if generated:
        out += cm_generate_html(generated)
    if proxies:
        names = ", ".join(f"{m} (proxy of {p})" for m, p in PROXY_METRICS.items())
        out += ["<h3>Smoke proxies (built-in pairs)</h3>",
                f"<p class=note>{html.escape(names)}: pair accuracy on the run's own synthetic stories and triples, "
                "a check that training learns, not the paper's sSC/tSC; their numbers are not comparable with "
                "the paper's.</p>", metrics_table_html(proxies, None)]
    return out


def cm_generate_html(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The cm_generate rows (GenPPL of the text continuations of spoken prompts, auto-BLEU in %) and, per
    checkpoint, the continuations themselves from the rows' details."""
    out = ["<h3>Cross-modal generation: speech prompt → text (interleaved LM)</h3>",
           "<p class=note>SlamKit's cm_generate: each prompt's first seconds of speech, then &lt;text&gt;; the "
           "sampled text is the continuation alone. SlamKit only saves the texts; GenPPL (under eval.ppl_lm) and "
           "auto-BLEU of them are this project's addition.</p>", metrics_table_html(rows, None)]
    shown: set[str] = set()
    for row in rows:
        details = _details(row)
        if not details.get("samples") or str(row.get("checkpoint")) in shown:
            continue
        shown.add(str(row.get("checkpoint")))
        items = "".join(
            f"<tr><td class=l>{html.escape(str(s.get('item_id')))}</td>"
            f"<td class=l>{html.escape(str(s.get('prompt_text', '')))}</td>"
            f"<td class=l>{html.escape(str(s.get('continuation', '')).strip()) or '<i>(empty)</i>'}</td>"
            f"<td>{_fmt(None if s.get('nll') is None else math.exp(float(s['nll'])))}</td></tr>"
            for s in details["samples"])
        out.append(f"<p>{html.escape(checkpoint_label(str(row.get('checkpoint'))))}:</p><table><tr>"
                   "<th class=l>prompt item</th><th class=l>prompt file's text (the model heard its first "
                   "seconds)</th><th class=l>continuation</th><th>PPL</th></tr>" + items + "</table>")
    return out


def _details(row: dict[str, Any]) -> dict[str, Any]:
    details = row.get("details") or {}
    if isinstance(details, str):
        try:
            details = json.loads(details)
        except json.JSONDecodeError:
            return {}
    return details if isinstance(details, dict) else {}


def metrics_table_html(eval_rows: Sequence[dict[str, Any]], paper_reference: dict[str, float] | None) -> str:
    with_ckpt = any(row.get("checkpoint") for row in eval_rows)
    head = "<tr>" + ("<th class=l>checkpoint</th>" if with_ckpt else "")
    head += "<th class=l>metric</th><th>value</th><th>n</th><th>95 % interval</th>"
    head += "<th>paper (Slam)</th>" if paper_reference else ""
    head += "<th class=l>note</th></tr>"
    body = []
    for row in eval_rows:
        value, is_acc = _row_value(row)
        scale = 100.0 if is_acc else 1.0
        ci = (f"[{_fmt(row['ci_low'] * scale)}, {_fmt(row['ci_high'] * scale)}]"
              if row.get("ci_low") is not None and row.get("ci_high") is not None else "")
        cells = [f"<td class=l>{html.escape(checkpoint_label(str(row['checkpoint'])))}</td>"] if with_ckpt else []
        cells += [f"<td class=l>{html.escape(str(row.get('metric', '?')))}</td>",
                 f"<td>{_fmt(value)}{' %' if is_acc else ''}</td>",
                 f"<td>{html.escape(str(row.get('n', '')))}</td>", f"<td>{ci}</td>"]
        if paper_reference:
            cells.append(f"<td>{html.escape(_paper_value(str(row.get('metric')), paper_reference))}</td>")
        cells.append(f"<td class=l>{html.escape(_note(row))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _audio_html(wav_path: str, out_dir: Path) -> str:
    """An <audio> player for a copy of the WAV placed next to the report (audio/<name>, relative link)."""
    path = Path(wav_path)
    if not path.is_file():
        return f"<span class=note>missing audio {html.escape(str(path))}</span>"
    target = out_dir / AUDIO_DIR / path.name
    data = path.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        write_bytes_atomic(target, data)
    return f'<audio controls preload=none src="{html.escape(AUDIO_DIR + "/" + path.name)}"></audio>'


def generations_html(generations: Sequence[dict[str, Any]], out_dir: Path, audio_note: str | None = None) -> str:
    parts = [f"<p class=note>{html.escape(audio_note)}</p>"] if audio_note else []
    for row in generations:
        prompt = " ".join(str(u) for u in row.get("prompt_units", []))
        cont = " ".join(str(u) for u in row.get("generated_units", []))
        audio = _audio_html(row["wav_path"], out_dir) if row.get("wav_path") else ""
        transcript = f"<p>transcript: {html.escape(row['transcript'].strip())}</p>" if row.get("transcript") else ""
        parts.append(
            f"<h3>{html.escape(str(row.get('pair_id', '?')))}</h3>{audio}{transcript}"
            f"<p><b>prompt</b> ({len(row.get('prompt_units', []))} units): <code>{prompt}</code></p>"
            f"<p><b>continuation</b> ({len(row.get('generated_units', []))} units): <code>{cont}</code></p>")
    return "".join(parts)


def paper_table_html(eval_rows: Sequence[dict[str, Any]]) -> str:
    """The paper's Table 2 columns for its rows and for every evaluated checkpoint of this run."""
    head = "<tr><th class=l>model</th>" + "".join(f"<th>{html.escape(t)}</th>" for _, t in PAPER_COLUMNS) + "</tr>"
    body = ["<tr><td class=l>paper: " + html.escape(name) + "</td>"
            + "".join(f"<td>{_fmt(vals.get(k))}</td>" for k, _ in PAPER_COLUMNS) + "</tr>"
            for name, vals in PAPER_TABLE2.items()]
    by_ckpt: dict[str, dict[str, float | None]] = {}
    for row in eval_rows:
        if row.get("metric") in dict(PAPER_COLUMNS):
            by_ckpt.setdefault(str(row.get("checkpoint", "")), {})[str(row["metric"])] = _row_value(row)[0]
    body += ["<tr><td class=l>this run: " + html.escape(checkpoint_label(c)) + "</td>"
             + "".join(f"<td>{_fmt(vals.get(k))}</td>" for k, _ in PAPER_COLUMNS) + "</tr>"
             for c, vals in by_ckpt.items()]
    return f"<table>{head}{''.join(body)}</table>"


def _curves_html(metrics_csv: Path | None, what: str, loss_alt: str, speed_alt: str) -> list[str]:
    curve = loss_plot(Path(metrics_csv)) if metrics_csv and Path(metrics_csv).is_file() else None
    if not curve:
        return [f"<p class=note>no {what} metrics (metrics.csv missing or without a loss column)</p>"]
    out = [f'<img alt="{what} {loss_alt}" src="{curve}">']
    speed = throughput_plot(Path(metrics_csv))
    if speed:
        out.append(f'<img alt="{what} {speed_alt}" src="{speed}">')
    return out


def write_report(
    out_html: Path, run_name: str, metrics_csv: Path | None, eval_rows: list[dict[str, Any]],
    generations: list[dict[str, Any]] | None, config: dict[str, Any],
    paper_reference: dict[str, float] | None = None, extra_plots: dict[str, Path] | None = None,
    audio_note: str | None = None, dpo_metrics_csv: Path | None = None, data_notes: Sequence[str] = (),
) -> Path:
    """Write one HTML report atomically (plots inlined as PNG; generated WAVs copied to `audio/` beside it and
    played with <audio> tags); return its path.

    `eval_rows`: dicts with "metric" and either "accuracy" (0-1, shown in %) or "value", plus optional
    "n", "ci_low", "ci_high". `paper_reference`: metric -> published number (e.g. PAPER_TABLE2["Slam"]).
    `extra_plots`: title -> PNG file to embed. `audio_note`: shown above the samples (e.g. no vocoder).
    `metrics_csv` is the pre-training run's, `dpo_metrics_csv` the DPO run's (its own section). `data_notes`: lines
    about the data the run read (e.g. the SpokenSwag pairs the repetition filter dropped), a "Data" section.
    """
    sections = [f"<h1>slam run: {html.escape(run_name)}</h1>", caveats_html(config, eval_rows)]
    if data_notes:
        sections.append("<h2>Data</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in data_notes) + "</ul>")
    sections.append("<h2>Pre-training</h2>")
    sections += _curves_html(metrics_csv, "pre-training", "train and validation loss with the learning rate",
                             "grad norm, tokens/s and MFU")
    if dpo_metrics_csv:
        sections.append("<h2>DPO</h2>")
        sections += _curves_html(dpo_metrics_csv, "DPO", "DPO loss with the learning rate",
                                 "grad norm, tokens/s and rewards")
    for title, png in (extra_plots or {}).items():
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        sections.append(f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" '
                        f'src="data:image/png;base64,{data}">')
    sections += ["<h2>Metrics</h2>", *metrics_sections_html(eval_rows, paper_reference),
                 "<h3>Beside the paper (Tables 2 and 3; accuracies and Auto-BLEU in %, GPTScore 1–5)</h3>",
                 paper_table_html(eval_rows)]
    if generations:
        sections += ["<h2>Generations</h2>", generations_html(generations, Path(out_html).parent, audio_note)]
    config_json = html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))
    sections.append(f"<h2>Config</h2><details><summary>resolved config</summary><pre>{config_json}</pre></details>")
    page = (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>slam: {html.escape(run_name)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>\n")
    write_text_atomic(out_html, page)
    log.info("report written to %s (%d bytes)", out_html, len(page))
    return Path(out_html)


def caveats_html(config: dict[str, Any], eval_rows: Sequence[dict[str, Any]]) -> str:
    """What makes this run not comparable with the paper, at the top of the report: the recorded config's
    warnings (e.g. a freshly fitted k-means) and every metric recorded as skipped, with its reason."""
    items = [html.escape(w) for w in (config.get("derived") or {}).get("warnings", [])]
    skipped = {}
    for row in eval_rows:
        note = _note(row)
        if note.startswith("skipped: "):
            skipped.setdefault(note[len("skipped: "):], []).append(str(row.get("metric", "?")))
    items += [f"not measured: {html.escape(', '.join(sorted(set(metrics))))} — {html.escape(reason)}"
              for reason, metrics in skipped.items()]
    if not items:
        return ""
    return "<h2>Caveats</h2><ul class=caveats>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def markdown_summary(eval_rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the eval rows (for a Prefect markdown artifact)."""
    lines = ["| metric | value | n | 95 % interval |", "|---|---:|---:|---|"]
    for row in eval_rows:
        value, is_acc = _row_value(row)
        scale = 100.0 if is_acc else 1.0
        ci = (f"[{_fmt(row['ci_low'] * scale)}, {_fmt(row['ci_high'] * scale)}]"
              if row.get("ci_low") is not None and row.get("ci_high") is not None else "")
        lines.append(f"| {row.get('metric', '?')} | {_fmt(value)}{' %' if is_acc else ''} | {row.get('n', '')} | {ci} |")
    return "\n".join(lines) + "\n"
