"""HTML report: inline plots, audio players for WAVs copied next to it, metrics beside the paper, skips."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from slam_core.eval.report import PAPER_TABLE2, markdown_summary, read_metrics_csv, write_report

EVAL_ROWS = [
    {"metric": "tsc_like", "accuracy": 0.75, "n": 40, "ci_low": 0.5981, "ci_high": 0.8581},
    {"metric": "sblimp", "accuracy": 0.5, "n": 3, "ci_low": 0.12533, "ci_high": 0.87467},
    {"metric": "genppl", "value": 123.456, "n": 4},
]


def _metrics_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _png_images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_report_with_plots_table_audio_generations_and_config(tmp_path: Path) -> None:
    csv_path = _metrics_csv(tmp_path / "metrics.csv", "step,loss,lr,grad_norm,tokens_per_s,elapsed_s",
                            [f"{s},{6.0 - s * 0.1},{1e-3 * min(1, s / 3)},1.0,1000,{s}" for s in range(1, 21)])
    wav = tmp_path / "gen0.wav"
    sf.write(wav, np.zeros(1600, dtype=np.float32), 16000)
    extra_png = tmp_path / "extra.png"
    extra_png.write_bytes(base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="))
    gens = [{"pair_id": "s0", "prompt_units": [1, 2, 3], "generated_units": [4, 5], "wav_path": str(wav)},
            {"pair_id": "s1<x>", "prompt_units": [7], "generated_units": []}]
    out = write_report(tmp_path / "reports" / "index.html", "demo", csv_path, EVAL_ROWS, gens,
                       {"run": {"name": "demo", "note": "<b>"}}, paper_reference=PAPER_TABLE2["Slam"],
                       extra_plots={"units histogram": extra_png})
    page = out.read_text()
    images = _png_images(page)
    assert len(images) == 3 and all(img.startswith(b"\x89PNG") for img in images)
    assert '<img alt="pre-training grad norm, tokens/s and MFU"' in page  # panels for the columns the CSV has
    assert images[2] == extra_png.read_bytes()
    assert "http://" not in page and "https://" not in page          # nothing to fetch
    # accuracy in %, interval in %; the smoke proxy in its own table, labelled, with no paper value beside it
    assert "75.00 %" in page and "[59.81, 85.81]" in page and "82.04 (tsc)" not in page
    proxies = page[page.index("<h3>Smoke proxies"):page.index("<h3>Beside the paper")]
    assert "tsc_like (proxy of tSC)" in proxies and "not comparable" in proxies and "paper (Slam)" not in proxies
    assert "75.00 %" in proxies and "sblimp" not in proxies
    assert page.index("On the paper's evaluation sets") < page.index("Smoke proxies")
    assert "<td>58.86</td>" in page and "123.46" in page and "<td>62.80</td>" in page
    audio = re.findall(r'<audio controls preload=none src="([^"]+)"', page)
    assert audio == ["audio/gen0.wav"] and (out.parent / audio[0]).read_bytes() == wav.read_bytes()
    assert "<code>1 2 3</code>" in page and "<code>4 5</code>" in page
    assert "s1&lt;x&gt;" in page and "&lt;b&gt;" in page             # escaped, not markup
    assert "<details>" in page and "&quot;name&quot;: &quot;demo&quot;" in page
    assert sorted(p.name for p in out.parent.iterdir()) == ["audio", "index.html"]
    # Table 2 beside this run: paper rows and the evaluated metrics in the paper's columns
    assert "paper: Slam (-DPO)" in page and "<td>88.30</td>" in page and "this run" in page


def test_pretraining_and_dpo_curves_are_separate_sections(tmp_path: Path) -> None:
    pre = _metrics_csv(tmp_path / "pre.csv", "step,loss,lr,grad_norm,tokens_per_s,mfu,val_loss",
                       [f"{s},{6 - s * 0.1},0.001,1.0,1000,0.3," for s in range(1, 30)] + ["29,,,,,,3.2"])
    dpo = _metrics_csv(tmp_path / "dpo.csv", "step,loss,lr,grad_norm,reward_margin,reward_accuracy,tokens_per_s",
                       [f"{s},{0.69 - s * 0.01},0.0005,0.5,{s * 0.1},0.6,800" for s in range(1, 11)])
    page = write_report(tmp_path / "index.html", "r", pre, [], None, {}, dpo_metrics_csv=dpo).read_text()
    pre_part = page[page.index("<h2>Pre-training</h2>"):page.index("<h2>DPO</h2>")]
    dpo_part = page[page.index("<h2>DPO</h2>"):page.index("<h2>Metrics</h2>")]
    assert 'alt="pre-training train and validation loss with the learning rate"' in pre_part
    assert 'alt="pre-training grad norm, tokens/s and MFU"' in pre_part and len(_png_images(pre_part)) == 2
    assert 'alt="DPO DPO loss with the learning rate"' in dpo_part and len(_png_images(dpo_part)) == 2
    assert _png_images(pre_part)[0] != _png_images(dpo_part)[0]


def test_report_names_skips_and_unvocoded_samples(tmp_path: Path) -> None:
    rows = [{"checkpoint": "/r/dpo-1/checkpoints/step-9", "metric": "genppl", "value": None, "n": 0,
             "details": '{"skipped": "no vocoder configured (eval.vocoder)"}'},
            {"checkpoint": "/r/dpo-1/checkpoints/step-9", "metric": "auto_bleu", "value": 0.0388, "n": 10,
             "details": '{"n_empty": 2, "n_samples": 12}'}]
    gens = [{"pair_id": "a", "prompt_units": [1, 2], "generated_units": [3]}]
    page = write_report(tmp_path / "index.html", "r", None, rows, gens, {},
                        audio_note="no vocoder configured (eval.vocoder): unit sequences only, no audio").read_text()
    assert "skipped: no vocoder configured (eval.vocoder)" in page and "2 of 12 transcripts empty" in page
    assert "3.88 %" in page and "<audio" not in page and "unit sequences only, no audio" in page


def test_report_is_deterministic(tmp_path: Path) -> None:
    csv_path = _metrics_csv(tmp_path / "metrics.csv", "step,loss", ["1,5.0", "2,4.0"])
    a = write_report(tmp_path / "a.html", "r", csv_path, EVAL_ROWS, None, {})
    b = write_report(tmp_path / "b.html", "r", csv_path, EVAL_ROWS, None, {})
    assert a.read_bytes() == b.read_bytes()


def test_report_tolerates_missing_and_partial_metrics(tmp_path: Path) -> None:
    no_csv = write_report(tmp_path / "a.html", "r", None, [], None, {}).read_text()
    assert "no pre-training metrics" in no_csv and _png_images(no_csv) == [] and "<h2>DPO</h2>" not in no_csv
    no_loss = _metrics_csv(tmp_path / "m1.csv", "step,lr", ["1,0.1"])
    assert "no pre-training metrics" in write_report(tmp_path / "b.html", "r", no_loss, [], None, {}).read_text()
    # columns in another order, an extra column, a blank cell and a non-numeric cell
    odd = _metrics_csv(tmp_path / "m2.csv", "elapsed_s,loss,step,val_loss", ["1,5.0,1,", "2,,2,4.5", "3,nan?,3,", "4,3.0,4,4.0"])
    assert len(_png_images(write_report(tmp_path / "c.html", "r", odd, [], None, {}).read_text())) == 1
    assert read_metrics_csv(odd) == [{"elapsed_s": 1.0, "loss": 5.0, "step": 1.0}, {"elapsed_s": 2.0, "step": 2.0, "val_loss": 4.5},
                                     {"elapsed_s": 3.0, "step": 3.0}, {"elapsed_s": 4.0, "loss": 3.0, "step": 4.0, "val_loss": 4.0}]


def test_markdown_summary_table() -> None:
    md = markdown_summary(EVAL_ROWS)
    lines = md.strip().splitlines()
    assert lines[0] == "| metric | value | n | 95 % interval |"
    assert lines[2] == "| tsc_like | 75.00 % | 40 | [59.81, 85.81] |"
    assert lines[4] == "| genppl | 123.46 | 4 |  |"


def test_throughput_plot_only_for_columns_present(tmp_path: Path) -> None:
    from slam_core.eval.report import throughput_plot

    with_speed = _metrics_csv(tmp_path / "a.csv", "step,loss,grad_norm,tokens_per_s,mfu",
                              ["1,5.0,2.0,1000,0.4", "2,4.0,1.5,1100,0.45"])
    only_loss = _metrics_csv(tmp_path / "b.csv", "step,loss", ["1,5.0", "2,4.0"])
    no_mfu = _metrics_csv(tmp_path / "c.csv", "step,loss,grad_norm,tokens_per_s,mfu", ["1,5.0,2.0,1000,", "2,4.0,1.5,1100,"])
    assert throughput_plot(only_loss) is None
    pngs = [base64.b64decode(throughput_plot(p).split(",", 1)[1]) for p in (with_speed, no_mfu)]
    heights = [int.from_bytes(png[20:24], "big") for png in pngs]  # IHDR height
    assert heights[0] / heights[1] > 1.3  # three panels vs two (an empty MFU column gets none)


def test_report_lists_caveats_first(tmp_path: Path) -> None:
    """A fitted k-means and metrics skipped under eval.allow_skip are named at the top of the report."""
    rows = [{"checkpoint": "c", "metric": "genppl", "value": None, "n": 0,
             "details": '{"skipped": "no vocoder configured (eval.vocoder)"}'},
            {"checkpoint": "c", "metric": "auto_bleu", "value": None, "n": 0,
             "details": '{"skipped": "no vocoder configured (eval.vocoder)"}'}]
    config = {"derived": {"warnings": ["units from a k-means fitted on this run's speech (units.fit_kmeans=true): "
                                       "incompatible with the published vocoder and models"]}}
    page = write_report(tmp_path / "index.html", "r", None, rows + [{**r, "checkpoint": "c"} for r in EVAL_ROWS], None,
                        config).read_text()
    caveats = page[page.index("<h2>Caveats</h2>"):page.index("<h2>Pre-training</h2>")]
    assert "incompatible with the published vocoder and models" in caveats
    assert "not measured: auto_bleu, genppl — no vocoder configured (eval.vocoder)" in caveats
    assert "tsc_like" not in caveats
    assert "Caveats" not in write_report(tmp_path / "clean.html", "r", None, EVAL_ROWS, None, {}).read_text()


def test_loss_plot_has_one_validation_curve_per_held_out_set(tmp_path: Path) -> None:
    from slam_core.eval.report import loss_curves, loss_plot

    csv_path = _metrics_csv(tmp_path / "m.csv", "step,loss,lr,val_loss,val_loss/librispeech/dev-other,val_loss/librispeech/dev-clean",
                            ["1,6.0,0.1,,,", "2,5.0,0.1,,,", "2,,,4.9,5.2,4.8"])
    curves = loss_curves(read_metrics_csv(csv_path))
    assert [label for label, _, _ in curves] == ["train loss", "val loss", "val loss librispeech/dev-clean",
                                                 "val loss librispeech/dev-other"]
    assert curves[2][1:] == ([2.0], [4.8]) and curves[3][1:] == ([2.0], [5.2]) and curves[0][2] == [6.0, 5.0]
    pooled_only = _metrics_csv(tmp_path / "p.csv", "step,loss,val_loss", ["1,6.0,", "2,,4.9"])
    assert [label for label, _, _ in loss_curves(read_metrics_csv(pooled_only))] == ["train loss", "val loss"]
    assert loss_plot(csv_path) != loss_plot(pooled_only)  # the extra curves are drawn
