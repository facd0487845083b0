"""reproduce-interleaved: SlamKit's interleaved speech-text path, for the presets with interleave.enabled
(`slam_interleaved`, `smoke_interleaved`); `reproduce` hands such presets here.

    1. speech       built-in corpus: its training stories spoken into sTinyStories-layout shards at
                    corpus.stinystories_dir (with the backend's word timings), when none are there yet
    2. prepare-data segments -> k-means -> units of every set (the speech-only flow, unchanged)
    3. alignments   word times of each interleave.interleaved_sets segment shard, beside its units
                    (synthesis timings for sTinyStories, Whisper word timestamps for real speech)
    4. init         TWIST init keeping the base's text vocabulary, + 500 units + <speech>/<text>
    5. token docs   interleaved (units + words), speech-only (units) and text-only (training stories) shards
    6. pretrain     the three sets mixed by train.dataset_weights (SlamKit's 0.2024 / 0.5433 / 0.2543)
    7. evaluate     cross-modal StoryCloze and cm_generate (speech prompt -> text continuation, GenPPL and
                    auto-BLEU), as interleave.cross_modal_metrics names them, into eval_results; the HTML report

Run: `slam run reproduce --preset smoke_interleaved` or `python -m flows.interleaved --preset smoke_interleaved`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import check_resources, device_name, fp, gather_with_progress, load_config, save_resolved
from flows.entry import user_facing
from flows.prepare_data import configured_dir, prepare_data, uses_stinystories
from slam_core.align.stage import AlignSettings, alignment_fingerprint
from slam_core.align.words import words_path_for
from slam_core.config import SlamConfig
from slam_core.config_interleave import CM_GENERATE
from slam_core.corpora.hub import list_parquet_files
from slam_core.device import set_cpu_threads, use_cpu_threads
from slam_core.discovery import data_root_checkpoint_digest
from slam_core.lm.interleave_stage import layout_digest, text_shard_ranges
from slam_core.lm.model import TINY_BASE_NAME
from slam_core.paths import stage_dir
from slam_core.run_summary import checkpoint_label, stage_rows
from slam_core.synth.jobs import run_synthesis
from tasks import align, data, interleave, train
from tasks import evaluate as ev
from tasks.artifacts import publish_run_story
from tasks.common import catalog_at
from tasks.synth import synthesize_shard

TEXT_STORIES_PER_SHARD = 20_000


def speak_stories(cfg: SlamConfig, stories_path: str, root: str) -> None:
    """The built-in corpus' training stories as sTinyStories-layout shards at corpus.stinystories_dir (its last
    folder is the split, `train`), one cached synthesis task per shard; nothing when shards are there."""
    story_dir = configured_dir(cfg, cfg.corpus.stinystories_dir or "")
    if not uses_stinystories(cfg) or cfg.corpus.source != "builtin" or (
            story_dir.is_dir() and list_parquet_files(story_dir)):
        return  # shards there, or another source: prepare-data says what is missing
    if story_dir.name != "train":
        raise ValueError(f"corpus.stinystories_dir: {story_dir} must end in /train to be written from the corpus")

    def run_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        futures = [synthesize_shard.submit(j["kind"], j["args"], cfg.synth.workers, j["out_path"], j["dataset"],
                                           j["split"], j["fingerprint"], root) for j in jobs]
        return gather_with_progress(futures, "sTinyStories synthesis shards")

    info = run_synthesis("stinystories", stories_path, cfg.synth, cfg.run.seed, root, run_jobs, story_dir.parent,
                         "train")
    print(f"sTinyStories layout: {info.get('rows', '?')} utterances spoken into {story_dir}")


def align_sets(cfg: SlamConfig, prepared: dict[str, Any], dev: str, root: str) -> dict[str, list[dict[str, Any]]]:
    """set name -> per shard {units, words, fingerprint} of every training set named in interleave.interleaved_sets."""
    futures: dict[str, list[tuple[str, Any]]] = {}
    for name, info in prepared["set_shards"].items():
        dataset, _, split = name.partition("/")
        if info["role"] != "train" or dataset not in cfg.interleave.interleaved_sets:
            continue
        icfg = cfg.interleave
        settings = AlignSettings(method=icfg.alignment_method(dataset), asr_model=icfg.asr_model,
                                 asr_max_tokens=icfg.asr_max_tokens)
        for seg_path, seg_fp, units_path in zip(info["segments"], info["segment_fingerprints"], info["units"]):
            align_fp = alignment_fingerprint(settings, seg_fp)
            futures.setdefault(name, []).append((units_path, align.align_words.submit(
                asdict(settings), seg_path, str(words_path_for(units_path)), dataset, split, seg_fp, align_fp,
                root, dev)))
    missing = sorted(set(cfg.interleave.interleaved_sets) - {n.partition("/")[0] for n in futures})
    if missing:
        raise ValueError(f"interleave.interleaved_sets: no training unit shards of {', '.join(missing)} "
                         f"(sets of this run: {', '.join(sorted(prepared['set_shards']))})")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, items in futures.items():
        results = gather_with_progress([f for _, f in items], f"{name} word-alignment shards")
        out[name] = [{"units": u, "words": r["path"], "fingerprint": r["fingerprint"]}
                     for (u, _), r in zip(items, results)]
        words = sum(r["words"] for r in results)
        print(f"{name}: {sum(r['tokens'] for r in results):,} of {words:,} words aligned")
    return out


def doc_shards(cfg: SlamConfig, prepared: dict[str, Any], aligned: dict[str, list[dict[str, Any]]],
               corpus: dict[str, Any], init_dir: str, init_fp: str, root: str) -> list[dict[str, Any]]:
    """One token-docs task per interleaved shard, speech-only units shard and slice of training stories."""
    spans = {"method": cfg.interleave.method, "span": cfg.interleave.span, "prob": cfg.interleave.prob}
    jobs: list[tuple[str, str, dict[str, Any], str]] = []  # kind, name, inputs, fingerprint
    for name, shards in aligned.items():
        for i, s in enumerate(shards):
            jobs.append(("interleaved", f"{name.replace('/', '-')}-{i:05d}", {"units": s["units"], "words": s["words"]},
                         fp("token-docs", cfg, (), init_fp, s["fingerprint"], kind="interleaved", **spans,
                            units=Path(s["units"]).name)))
    speech_sets = cfg.interleave.speech_sets
    for name, info in prepared["set_shards"].items():
        if info["role"] == "train" and (not speech_sets or name.partition("/")[0] in speech_sets):
            for i, (u, u_fp) in enumerate(zip(info["units"], info["unit_fingerprints"])):
                jobs.append(("speech", f"{name.replace('/', '-')}-{i:05d}", {"units": u},
                             fp("token-docs", cfg, (), init_fp, u_fp, kind="speech")))
    for lo, hi in text_shard_ranges(corpus["stories"], TEXT_STORIES_PER_SHARD):
        jobs.append(("text", f"stories-{lo:09d}", {"stories": corpus["stories"], "lo": lo, "hi": hi},
                     fp("token-docs", cfg, (), init_fp, corpus["fingerprint"], kind="text", lo=lo, hi=hi)))
    futures = [interleave.token_docs.submit(
        kind, inputs, str(stage_dir(cfg.data_root, "tokens", kind, "train") / f"{name}-{key[:12]}.parquet"),
        init_dir, cfg.interleave, cfg.run.seed, key, root) for kind, name, inputs, key in jobs]
    results = gather_with_progress(futures, "token-docs shards")
    for kind in ("text", "interleaved", "speech"):
        mine = [r for (k, *_), r in zip(jobs, results) if k == kind]
        print(f"token docs {kind}: {len(mine)} shard(s), {sum(r['rows'] for r in mine):,} docs, "
              f"{sum(r.get('tokens') or 0 for r in mine):,} tokens")
    return results


def cross_modal_layout(cfg: SlamConfig, corpus: dict[str, Any], root: str) -> tuple[str, str]:
    """(folder, digest) of the cross-modal StoryCloze layout: the published one (interleave.cross_modal_dir) or the
    stand-in spoken from the held-out stories."""
    icfg = cfg.interleave
    if icfg.cross_modal_dir:
        layout = str(configured_dir(cfg, icfg.cross_modal_dir))
        if not Path(layout).is_dir():
            raise FileNotFoundError(f"interleave.cross_modal_dir: {layout} is not a folder (SlamKit's cross_ms_tSC "
                                    "layout: {base}_mutual/_correct/_incorrect .wav + .txt)")
        return layout, layout_digest(layout)
    stand_fp = fp("synth-pairs", cfg, ("synth",), corpus["fingerprint"], kind="cross_modal_tsc",
                  max_items=icfg.max_cross_modal_items)
    layout = str(stage_dir(cfg.data_root, "synth", "cross_modal_tsc", stand_fp[:16]))
    return layout, interleave.cross_modal_stand_in(corpus["stories"], cfg.synth, cfg.run.seed, layout,
                                                   icfg.max_cross_modal_items, stand_fp, root)["fingerprint"]


def cross_modal(cfg: SlamConfig, checkpoints: list[str], init_dir: str, layout: str, layout_key: str,
                prepared: dict[str, Any], dev: str, root: str) -> list[dict[str, Any]]:
    """Cross-modal StoryCloze (the cm_tsc_* of interleave.cross_modal_metrics) of every checkpoint: the layout
    tokenised once, each metric recorded in eval_results."""
    icfg = cfg.interleave
    metrics = [m for m in icfg.cross_modal_metrics if m != CM_GENERATE]
    if not metrics:
        return []
    tok_fp = fp("pair-units", cfg, ("units",), prepared["centroids"], layout_key, eval_set="cross_modal_tsc")
    units_path = str(stage_dir(cfg.data_root, "pairs", "published") / f"cross_modal_tsc-{tok_fp}.parquet")
    interleave.tokenise_cross_modal(layout, prepared["centroids"], cfg.units, dev, units_path, tok_fp, root)
    results = []
    for c in checkpoints:
        score_fp = fp("cross-modal", cfg, (), tok_fp, data_root_checkpoint_digest(root, c), str(Path(c).resolve()),
                      metrics=metrics, max_items=icfg.max_cross_modal_items,
                      spans=[icfg.method, icfg.span, icfg.prob])
        results += interleave.score_cross_modal(cfg.run.name, c, init_dir, units_path, metrics,
                                                icfg, cfg.run.seed, cfg.eval.batch_size, dev, score_fp, root)
    return results


def cm_generation(cfg: SlamConfig, checkpoints: list[str], init_dir: str, layout: str, layout_key: str,
                  prepared: dict[str, Any], dev: str, root: str) -> list[dict[str, Any]]:
    """SlamKit's cm_generate when interleave.cross_modal_metrics names it: the first prompts' `_mutual.wav` cut and
    tokenised once, then text continuations of each checkpoint with their GenPPL / auto-BLEU in eval_results."""
    icfg = cfg.interleave
    if CM_GENERATE not in icfg.cross_modal_metrics:
        return []
    prompt_fp = fp("pair-units", cfg, ("units",), prepared["centroids"], layout_key, eval_set="cm_generate_prompts",
                   n=icfg.cm_generate_prompts, prompt_s=icfg.cm_generate_prompt_s)
    prompts_path = str(stage_dir(cfg.data_root, "pairs", "published") / f"cm_generate_prompts-{prompt_fp}.parquet")
    interleave.tokenise_cm_prompts(layout, icfg, prepared["centroids"], cfg.units, dev, prompts_path, prompt_fp, root)
    out = []
    for c in checkpoints:
        gen_fp = fp("cm-generate", cfg, (), prompt_fp, data_root_checkpoint_digest(root, c), str(Path(c).resolve()),
                    sampling=[icfg.cm_generate_temperature, icfg.cm_generate_top_k, icfg.cm_generate_max_new_tokens],
                    judge=[cfg.eval.ppl_lm, cfg.eval.genppl_bos], spans=[icfg.method, icfg.span, icfg.prob])
        out_dir = str(stage_dir(cfg.data_root, "eval", cfg.run.name, "cm_generate") / gen_fp[:16])
        out += interleave.cm_generate(cfg.run.name, c, init_dir, prompts_path, layout, icfg, cfg.eval, cfg.run.seed,
                                      dev, out_dir, gen_fp, root)
    return out


@flow(name="reproduce-interleaved", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
@user_facing
def reproduce_interleaved(preset: str = "smoke_interleaved", overrides: dict[str, Any] | None = None,
                          data_root: str | None = None) -> dict[str, Any]:
    """Every stage of the interleaved path; returns the report path, the cross-modal results and the checkpoint."""
    cfg = load_config(preset, overrides, data_root)
    if not cfg.interleave.enabled:
        raise ValueError(f"interleave.enabled is false in preset '{preset}': run the speech-only `reproduce` flow")
    check_resources(cfg)  # the evaluation inputs too: cm_generate's judge LM, before any work
    root, seed, dev = str(cfg.data_root), cfg.run.seed, device_name(cfg)
    catalog_at(root).record_run(cfg.run.name, cfg.resolve())
    save_resolved(cfg, "reproduce-interleaved")
    if dev == "cpu":
        set_cpu_threads(cfg.parallel.max_workers)

    # 1-2. Text corpus, sTinyStories-layout speech (built-in corpus), segments and units of every set.
    corpus_fp = fp("corpus", cfg, ("corpus",))
    corpus = data.prepare_corpus(cfg.corpus, seed, str(stage_dir(cfg.data_root, "raw", "builtin")), corpus_fp, root)
    speak_stories(cfg, corpus["stories"], root)
    prepared = prepare_data(preset, overrides, root)
    print(f"data: {prepared['tokens']:,} unit tokens from {prepared['audio_hours']:.2f} h of speech")

    # 3. Word alignments beside the units of the interleaved sets.
    aligned = align_sets(cfg, prepared, dev, root)

    # 4. TWIST init keeping the text vocabulary (the tiny base's tokenizer is trained on the corpus stories).
    tiny = cfg.model.base == TINY_BASE_NAME
    init_fp = fp("interleave-init", cfg, ("model",), *([corpus_fp] if tiny else []), n_units=cfg.units.n_units,
                 text_vocab_size=cfg.interleave.text_vocab_size if tiny else None)
    init_dir = str(stage_dir(cfg.data_root, "models") / f"interleaved-lm-init-{init_fp}")
    init = interleave.init_interleaved_lm(cfg.model, corpus["stories"], cfg.interleave.text_vocab_size,
                                          cfg.units.n_units, seed, init_dir, init_fp, root)
    print(f"interleaved LM initialised from {cfg.model.base}: {init['n_params']:,} parameters")

    # 5-6. Token docs of the three sets, then pre-training on their mix (called directly: main thread).
    if dev == "cpu":
        use_cpu_threads(cfg.interleave.cpu_threads)
    docs = doc_shards(cfg, prepared, aligned, corpus, init_dir, init_fp, root)
    pre_fp = fp("pretrain", cfg, ("model", "train"), init_fp, *sorted(d["fingerprint"] for d in docs))
    run_dir = str(stage_dir(cfg.data_root, "checkpoints", cfg.run.name) / f"pretrain-{pre_fp}")
    pre = train.pretrain(init_dir, [d["path"] for d in docs], cfg.model, cfg.train, run_dir, seed, dev, pre_fp, root,
                         cfg.parallel, None)
    print(f"pre-training: {pre['summary'].get('steps', pre.get('rows'))} steps, mix {pre['summary'].get('mix', '')}")

    # 7. Cross-modal StoryCloze, the report and the run's story.
    checkpoints = [pre["checkpoint"]]
    layout, layout_key = cross_modal_layout(cfg, corpus, root)
    results = cross_modal(cfg, checkpoints, init_dir, layout, layout_key, prepared, dev, root)
    for r in results:
        print(f"{r['metric']:>10} {r['accuracy']:.3f} (95% CI {r['ci_low']:.3f}-{r['ci_high']:.3f}, n={r['n']}) "
              f"{checkpoint_label(r['checkpoint'])}")
    generated = cm_generation(cfg, checkpoints, init_dir, layout, layout_key, prepared, dev, root)
    for r in generated:
        print(f"{r['metric']:>10} {'skipped' if r['value'] is None else format(r['value'], '.3f')} (n={r['n']}) "
              f"{checkpoint_label(r['checkpoint'])}")
    metrics_csv = str(Path(run_dir) / "metrics.csv")
    rows = ev.accuracy_rows(catalog_at(root), cfg.run.name)
    stamp = Path(metrics_csv).stat().st_mtime_ns if Path(metrics_csv).is_file() else 0
    report_fp = fp("report", cfg, ("eval", "interleave"), *sorted(f"{r['checkpoint']}|{r['metric']}|{r['value']}|"
                                                                   f"{r['created_at']}" for r in rows),
                   metrics_csv, str(stamp))
    out_html = str(stage_dir(cfg.data_root, "reports", cfg.run.name) / "index.html")
    report = ev.write_report(cfg.run.name, out_html, metrics_csv, None, cfg.resolve(), report_fp, root)["report"]
    stages = stage_rows(prepared, {"pretrain": pre}, {"computed": len(results) + len(generated)})
    story = publish_run_story(cfg.run.name, root, report, stages)
    print(f"report: {report} (browse it at {story['report_url']} after `slam report serve --data-root {root}`)")
    return {"report": report, "report_url": story["report_url"], "results": results, "generated": generated,
            "checkpoints": checkpoints, "stages": stages}


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(reproduce_interleaved, __doc__)
