"""`slam` — the command line. Every subcommand is documented in `slam <command> --help`.

    slam run reproduce --preset smoke [--set train.budget_s=60 ...] [--data-root DIR]
    slam catalog summary [--data-root DIR]
    slam plan --preset slam [--set KEY=VALUE ...] [--gpu H100] [--json]
    slam units extract --audio DIR --out DIR [--centroids FILE] [--preset smoke] [--batch-size N]
    slam units convert-kmeans --pickle FILE --out FILE.npy --allow-unpickle
    slam model init --base <hub id|dir> --out DIR [--preset slam]
    slam eval --checkpoint DIR [--metrics tsc_like,sblimp,swuggy,ssc,tsc,salmon,genppl,judge] [--preset smoke]
    slam data prepare <source> [--subsets …] [--mirror URL] [--local-dir DIR] [--dry-run]
    slam vocode --units FILE --out WAV [--vocoder DIR_OR_NAME]
    slam synth <stinystories|spokenswag> --input <file|dir> [--out DIR] [--backend kokoro|espeak] [--voices …]
               [--seed N] [--workers N] [--g2p-workers N]
    slam report serve [--port N] [--data-root DIR ...]   # http://127.0.0.1:PORT/<root tag>/<run>/index.html
    slam deploy check [--deployment FLOW/NAME]          # which work pool has no worker, and how to start one
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flows.cli_common import (
    interrupted_exit, parse_overrides, positive_int, quiet_offline_env, report_rejected, run_reporting_errors,
    split_debug_flag, stop_on_sigterm,
)
from slam_core import published_kmeans

FLOWS = ("reproduce", "prepare-data", "train-lm", "evaluate")
# The inputs each flow checks before its work (slam_core/inputs.py), checked by `slam run` before the flow starts.
FLOW_INPUTS = {"reproduce": ("corpus", "units", "eval"), "prepare-data": ("corpus", "units"),
               "train-lm": ("corpus", "units"), "evaluate": ("corpus", "units", "eval")}


def cmd_run(args: argparse.Namespace) -> int:
    from flows.common import load_config
    from slam_core.data_root import check_data_root
    from slam_core.inputs import check_inputs

    overrides = parse_overrides(args.overrides)
    cfg = load_config(args.preset, overrides, args.data_root)  # the whole config and its files, before any flow
    check_inputs(cfg, FLOW_INPUTS[args.flow])  # what the flow would refuse, refused before Prefect starts
    if (recovered := check_data_root(cfg.data_root)) is not None:  # writable, catalog not locked (or corrupt)
        print(f"warning: {recovered}", file=sys.stderr)
    quiet_offline_env(args.verbose)
    from flows.evaluate import evaluate
    from flows.prepare_data import prepare_data
    from flows.temporary_server import one_writer_when_temporary
    from flows.reproduce import reproduce
    from flows.train_lm import train_lm

    flow = {"reproduce": reproduce, "prepare-data": prepare_data, "train-lm": train_lm, "evaluate": evaluate}[args.flow]
    one_writer_when_temporary()
    result = flow(preset=args.preset, overrides=overrides, data_root=args.data_root)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_catalog_summary(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from data_catalog import Catalog
    from slam_core.config import RunConfig, SlamConfig
    from slam_core.paths import catalog_path

    root = SlamConfig(run=RunConfig(data_root=args.data_root)).data_root
    if not catalog_path(root).exists():
        print(f"no catalog at {catalog_path(root)}: run `slam run reproduce --preset smoke` first", file=sys.stderr)
        return 1
    from data_catalog.alignments import alignment_shares

    catalog = Catalog(catalog_path(root))
    summary = catalog.summary()
    if shares := alignment_shares(catalog):  # only where word alignments were made (interleaving)
        summary["alignments"] = shares
    console = Console()
    titles = {"data": "Artifacts per stage, dataset and split", "quarantine": "Quarantined inputs",
              "eval": "Latest evaluation results", "alignments": "Word alignments: share of words aligned"}
    for name, rows in summary.items():
        table = Table(title=titles[name], min_width=len(titles[name]) + 4)  # a narrow table wrapped its title
        for col in (rows[0].keys() if rows else ["(none)"]):
            table.add_column(str(col))
        for row in rows:
            table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()])
        console.print(table)
    return 0


def cmd_units_extract(args: argparse.Namespace) -> int:
    from flows.common import load_config
    from slam_core.audio.io import BadAudioError, list_audio_files
    from slam_core.corpora.local import probe_duration_s, write_segments
    from slam_core.units import extract, shards
    from slam_core.units.quantizer import verify_centroids_source

    from slam_core.input_checks import check_centroids_file

    cfg = load_config(args.preset, parse_overrides(args.overrides), args.data_root)
    if args.batch_size:
        cfg.units.batch_size = args.batch_size
    audio = Path(args.audio)
    if not audio.is_dir():
        raise FileNotFoundError(f"audio folder not found — --audio {audio} — pass a directory of wav/flac/mp3/ogg files")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output is an existing file — --out {out} — pass a directory (new or of unit shards)")
    centroids = Path(args.centroids or cfg.kmeans_file or out / "centroids.npy")
    if not args.centroids and cfg.units.kmeans_path and cfg.units.kmeans_source_sha256:
        verify_centroids_source(centroids, cfg.units.kmeans_source_sha256)  # the preset's published quantiser
    if args.centroids or cfg.units.kmeans_path or centroids.exists():
        check_centroids_file(centroids, cfg.units.n_units, "--centroids" if args.centroids else "units.kmeans_path",
                             encoder=cfg.units.encoder)
    if not centroids.exists():  # fit on the input itself: whole files as segments, seeded frame sample
        rows = []
        for path in list_audio_files(args.audio):
            try:
                rows.append({"segment_id": str(path), "dataset": "custom", "split": "train", "source_path": str(path),
                             "start_s": 0.0, "end_s": probe_duration_s(path), "speaker": path.parent.name,
                             "text": None})
            except BadAudioError as err:
                print(f"skipping {err}", file=sys.stderr)
        if not rows:
            raise FileNotFoundError(f"no readable audio — --audio {args.audio} — add wav/flac/mp3/ogg files that "
                                    f"decode (the skipped ones are listed above)")
        segments = write_segments(rows, out / "kmeans-input-segments.parquet")
        fitter = extract.build_extractor(cfg.units, cfg.data_root, centroids=None, device=cfg.run.device)
        extract.fit_kmeans_from_segments([segments], fitter, cfg.units, cfg.run.seed, centroids)
        print(f"fitted {cfg.units.n_units} centroids on {len(rows)} file(s): {centroids}")
    extractor = extract.build_extractor(cfg.units, cfg.data_root, centroids=centroids, device=cfg.run.device)
    result = shards.extract_audio_dir(Path(args.audio), out, extractor, cfg.units.batch_size,
                                       cfg.units.shard_segments)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_units_convert_kmeans(args: argparse.Namespace) -> int:
    from slam_core.units.quantizer import convert_kmeans_pickle, load_centroids

    expected = None if args.sha256.lower() == "none" else args.sha256
    out = convert_kmeans_pickle(Path(args.pickle), Path(args.out), allow_unpickle=args.allow_unpickle,
                                expected_sha256=expected)
    print(f"{out}: {load_centroids(out).shape[0]} centroids of dim {load_centroids(out).shape[1]} "
          f"(use --set units.kmeans_path={out})")
    return 0


def cmd_model_init(args: argparse.Namespace) -> int:
    from flows.common import load_config
    from slam_core.lm import model

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output is an existing file (left untouched) — --out {out} — pass a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise FileExistsError(f"output directory holds other files (left untouched) — --out {out} — pass a new or "
                              f"empty directory, or a model directory to replace")
    cfg = load_config(args.preset, parse_overrides(args.overrides), args.data_root)
    cfg.model.base = args.base
    base = model.resolve_base(cfg.model, cfg.data_root)
    replacing = (out / "config.json").is_file()
    info = model.init_speech_lm(cfg.model, base, out, n_units=cfg.units.n_units, seed=cfg.run.seed)
    print(f"{info['path']}: {info['n_params']:,} parameters" + (" (replaced the model that was there)" if replacing
                                                                   else ""))
    for note in info.get("notes", []):
        print(f"note: {note}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from flows.common import load_config
    from slam_core.inputs import check_inputs
    from slam_core.discovery import split_usable_checkpoints

    overrides = parse_overrides(args.overrides) or {}
    if args.metrics:
        overrides["eval.metrics"] = json.dumps([m.strip() for m in args.metrics.split(",") if m.strip()])
    for key, value in (("eval.reference_path", args.reference_path), ("eval.vocoder", args.vocoder)):
        if value:
            overrides[key] = str(Path(value).expanduser().resolve())
    cfg = load_config(args.preset, overrides or None, args.data_root)
    check_inputs(cfg, FLOW_INPUTS["evaluate"])
    usable, rejected = split_usable_checkpoints([str(Path(c).expanduser().resolve()) for c in args.checkpoint],
                                                cfg.vocab_size)
    report_rejected(rejected)  # a bad checkpoint is reported; the good ones beside it are still evaluated
    if not usable:
        return 2
    quiet_offline_env()
    from flows.evaluate import evaluate
    from flows.temporary_server import one_writer_when_temporary

    one_writer_when_temporary()
    result = evaluate(preset=args.preset, overrides=overrides or None, data_root=args.data_root, checkpoints=usable)
    print(json.dumps(result, indent=2, default=str))
    return 2 if rejected else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slam", description="Train speech language models the Slamming way.")
    parser.add_argument("-v", "--verbose", "--debug", dest="verbose", action="store_true",
                        help="debug logging, and the traceback of an error (accepted anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, preset: str = "smoke") -> None:
        p.add_argument("--preset", default=preset, help=f"named preset: smoke, slam, slam_scaled, slam_large (default {preset})")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, e.g. train.budget_s=60 (repeatable)")
        p.add_argument("--data-root", default=None, help="artifact root (default $SLAM_DATA_ROOT, else ./slam-data)")

    run = sub.add_parser("run", help="run a flow locally (Prefect ephemeral server unless PREFECT_API_URL is set)")
    run.add_argument("flow", choices=FLOWS, help="which flow")
    common(run)
    run.set_defaults(func=cmd_run)

    cat = sub.add_parser("catalog", help="inspect the artifact catalog")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True)
    summ = cat_sub.add_parser("summary", help="hours and tokens per dataset/split, quarantine, latest eval results")
    summ.add_argument("--data-root", default=None, help="artifact root (default $SLAM_DATA_ROOT, else ./slam-data)")
    summ.set_defaults(func=cmd_catalog_summary)

    units = sub.add_parser("units", help="speech units")
    units_sub = units.add_subparsers(dest="units_command", required=True)
    ext = units_sub.add_parser("extract", help="tokenise every audio file under a directory into unit Parquet shards")
    ext.add_argument("--audio", required=True, help="directory of audio (wav/flac/mp3/ogg, recursive)")
    ext.add_argument("--out", required=True, help="output directory for units-NNNNN.parquet")
    ext.add_argument("--centroids", default=None,
                     help="k-means centroids (.npy/.safetensors); default units.kmeans_path, else fitted on the input "
                          "audio and saved as OUT/centroids.npy")
    ext.add_argument("--batch-size", type=positive_int, default=None, help="segments per encoder batch (>= 1)")
    common(ext)
    ext.set_defaults(func=cmd_units_extract)
    conv = units_sub.add_parser("convert-kmeans",
                                help="convert a (trusted) joblib/sklearn k-means pickle once into plain centroids")
    conv.add_argument("--pickle", required=True, help="the k-means pickle, e.g. the published textlesslib "
                      "mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin (its full sha256 is checked)")
    conv.add_argument("--sha256", default=published_kmeans.SHA256,
                      help="full sha256 the pickle must have (default: the published mHuBERT-25Hz km500 file's); "
                           "'none' converts any k-means file (its units will not match the published models)")
    conv.add_argument("--out", required=True, help="output centroids (.npy or .safetensors)")
    conv.add_argument("--allow-unpickle", action="store_true",
                      help="required: unpickling runs code from the file, so only do it for a file you trust")
    conv.set_defaults(func=cmd_units_convert_kmeans)

    mdl = sub.add_parser("model", help="speech LM models")
    mdl_sub = mdl.add_subparsers(dest="model_command", required=True)
    init = mdl_sub.add_parser("init", help="TWIST-initialise a 502-token speech LM from a text LM")
    init.add_argument("--base", required=True, help="text LM hub id or local dir (e.g. Qwen/Qwen2.5-0.5B)")
    init.add_argument("--out", required=True, help="output directory (HF save_pretrained layout)")
    common(init, preset="slam")
    init.set_defaults(func=cmd_model_init)

    ev = sub.add_parser("eval", help="evaluate checkpoints and record the results in the catalog")
    ev.add_argument("--checkpoint", action="append", required=True, help="checkpoint dir (repeatable)")
    ev.add_argument("--metrics", default=None,
                    help="comma-separated metrics (default: the preset's): tsc_like, ssc_like, sblimp, swuggy, "
                         "swuggy_inter, swuggy_oov, ssc, tsc, salmon, generate, genppl, judge")
    ev.add_argument("--reference-path", default=None,
                    help="root of the published eval sets (sblimp/, swuggy_inter/, swuggy_oov/, sSC/, tSC/, salmon/) "
                         "= --set eval.reference_path=DIR")
    ev.add_argument("--vocoder", default=None,
                    help="unit vocoder dir (textlesslib checkpoint + config JSON) for genppl/judge = --set eval.vocoder=DIR")
    common(ev)
    ev.set_defaults(func=cmd_eval)

    from flows.cli_data import add_data_parser
    from flows.cli_deploy import add_deploy_parser
    from flows.cli_eval_extra import add_vocode_parser
    from flows.cli_plan import add_plan_parser
    from flows.cli_synth import add_synth_parser
    from flows.cli_report import add_report_parser

    add_data_parser(sub)
    add_deploy_parser(sub)
    add_plan_parser(sub)
    add_vocode_parser(sub)
    add_synth_parser(sub)
    add_report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the `slam` process itself (not a caller's process, e.g. a test's)
    argv, debug = split_debug_flag(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    args.verbose = args.verbose or debug
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if own_process:
        stop_on_sigterm()
    try:
        return run_reporting_errors(args.func, args, debug=args.verbose)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        return interrupted_exit()


if __name__ == "__main__":
    sys.exit(main())
