"""`slam synth <stinystories|spokenswag> --input <file|dir> [--out DIR] [--backend kokoro|espeak] [--voices …]
[--seed N] [--workers N] [--g2p-workers N]`: synthetic speech in sharded, seeded, resumable Parquet.

Registered in flows/cli.py with `add_synth_parser(sub)`. Runs the shards directly in worker processes
(no Prefect server); `--prefect` runs the same jobs through the `synthesize` flow instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from flows.cli_common import non_negative_int, positive_int


def synth_config(args: argparse.Namespace):
    """(SlamConfig, seed) from the preset, --set overrides and the synth options given on the command line."""
    from flows.cli_common import parse_overrides
    from flows.common import load_config
    from slam_core.synth.jobs import default_voices

    cfg = load_config(args.preset, parse_overrides(args.overrides), args.data_root)
    options = {"backend": args.backend, "workers": args.workers, "shard_rows": args.shard_rows,
               "max_utterance_chars": args.max_chars, "kokoro_model": args.kokoro_model,
               "kokoro_g2p_workers": args.g2p_workers}
    for key, value in options.items():
        if value is not None:
            setattr(cfg.synth, key, value)
    if args.voices:
        setattr(cfg.synth, "spokenswag_voices" if args.kind == "spokenswag" else "voices", list(args.voices))
    elif args.backend and args.kind == "stinystories" and args.backend != args.preset_backend:
        # the preset's voices belong to its own backend: use the new backend's default single voice
        cfg.synth.voices = default_voices(args.backend)
    return cfg, cfg.run.seed if args.seed is None else args.seed


def cmd_synth(args: argparse.Namespace) -> int:
    from flows.cli_common import quiet_offline_env

    from slam_core.inputs import check_synth_input

    args.preset_backend = _preset_backend(args.preset)
    cfg, seed = synth_config(args)  # the whole config, validated before any shard or flow starts
    check_synth_input(args.kind, args.input)
    quiet_offline_env(args.verbose)
    if args.prefect:
        from flows.synthesize import synthesize
        from flows.temporary_server import one_writer_when_temporary

        one_writer_when_temporary()
        result = synthesize(kind=args.kind, input=args.input, out=args.out, backend=args.backend, voices=args.voices,
                            seed=args.seed, workers=args.workers, split=args.split, limit=args.limit,
                            preset=args.preset, overrides=_overrides_dict(args), data_root=args.data_root)
        print(json.dumps(result, indent=2, default=str))
        return 0
    from slam_core.paths import catalog_path
    from slam_core.synth.jobs import SHARD_FUNCTIONS, run_synthesis
    from slam_core.synth.shards import run_recorded_shards

    result = run_synthesis(args.kind, args.input, cfg.synth, seed, cfg.data_root,
                           lambda jobs: run_recorded_shards(jobs, cfg.synth.workers, catalog_path(cfg.data_root),
                                                            shard_functions=SHARD_FUNCTIONS),
                           args.out, args.split, limit=args.limit, max_auto_bleu=cfg.corpus.swag_max_auto_bleu)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _preset_backend(preset: str) -> str:
    from slam_core.presets import get_preset

    return get_preset(preset).synth.backend


def _overrides_dict(args: argparse.Namespace) -> dict[str, Any] | None:
    """--set overrides plus the synth options the flow takes as config (shard size, split length, model)."""
    from flows.cli_common import parse_overrides

    overrides: dict[str, Any] = parse_overrides(args.overrides) or {}
    for key, value in (("shard_rows", args.shard_rows), ("max_utterance_chars", args.max_chars),
                       ("kokoro_model", args.kokoro_model), ("kokoro_g2p_workers", args.g2p_workers)):
        if value is not None:
            overrides[f"synth.{key}"] = value
    return overrides or None


def add_synth_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `slam synth …` on the top-level subparsers."""
    syn = subparsers.add_parser("synth", help="synthesise sTinyStories or SpokenSwag speech (sharded, resumable)")
    syn.add_argument("kind", choices=("stinystories", "spokenswag"), help="which synthetic set")
    syn.add_argument("--input", required=True,
                     help="stinystories: STORIES Parquet or TinyStories text (hub-layout dir, .txt, text Parquet); "
                          "spokenswag: TRIPLES Parquet, a SWAG hub-layout dir, or a published SpokenSwag dir")
    syn.add_argument("--out", default=None,
                     help="output directory, gets <split>/data-NNNNN.parquet or <split>/preferences-NNNNN.parquet "
                          "(default <data root>/synth/<kind>, where the paper preset's prepare flow reads them)")
    syn.add_argument("--backend", choices=("kokoro", "espeak"), default=None, help="TTS backend (default: the preset's)")
    syn.add_argument("--voices", nargs="+", default=None,
                     help="voices drawn per story/pair from the seed (default: one voice for stinystories; "
                          "af_heart am_fenrir bf_emma bm_george for spokenswag on kokoro)")
    syn.add_argument("--seed", type=non_negative_int, default=None, help="seed for voices and decoder noise (default: the preset's)")
    syn.add_argument("--workers", type=positive_int, default=None, help="worker processes (default synth.workers)")
    syn.add_argument("--g2p-workers", type=non_negative_int, default=None,
                     help="Kokoro G2P worker processes per synthesis worker, 0: in-process (default "
                          "synth.kokoro_g2p_workers: up to 8 on CUDA, none on the CPU)")
    syn.add_argument("--split", default="train", help="split of the text table to speak: train, heldout or all")
    syn.add_argument("--limit", type=positive_int, default=None, help="at most this many stories/pairs (per split for text input)")
    syn.add_argument("--shard-rows", type=positive_int, default=None, help="utterances or pairs per shard (default synth.shard_rows)")
    syn.add_argument("--max-chars", type=positive_int, default=None, help="split stories longer than this many characters")
    syn.add_argument("--kokoro-model", default=None, help="Kokoro hub id or local dir (config.json, *.pth, voices/)")
    syn.add_argument("--prefect", action="store_true", help="run through the Prefect `synthesize` flow")
    syn.add_argument("--preset", default="smoke", help="preset whose synth config is the starting point (default smoke)")
    syn.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. synth.kokoro_speed=1.1 (repeatable)")
    syn.add_argument("--data-root", default=None, help="artifact root holding the catalog (default $SLAM_DATA_ROOT, else ./slam-data)")
    syn.set_defaults(func=cmd_synth)
    return syn
