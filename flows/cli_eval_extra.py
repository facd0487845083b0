"""`slam vocode`: turn unit ids into a 16 kHz WAV with the unit HiFi-GAN vocoder (registered by flows/cli.py).

    slam vocode --units units.json --out a.wav
    slam vocode --units shard.parquet --segment-id ID --out a.wav [--predict-durations]
    slam vocode --units generations.json --index 0 --out a.wav [--vocoder DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read_units_for_vocoding(
    path: str | Path, segment_id: str | None = None, index: int | None = None,
) -> tuple[list[int], list[int] | None]:
    """(units, durations or None) from a JSON list of unit ids, a UNITS Parquet file/dir + `segment_id`, or a
    generations JSON (rows with prompt_units + generated_units) + `index` (prompt and continuation joined)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such units file")
    if path.is_dir() or path.suffix == ".parquet":
        return _units_from_parquet(path, segment_id)
    try:
        data: Any = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON units list or generations file ({err})") from None
    if isinstance(data, list) and all(isinstance(u, int) for u in data):
        return [int(u) for u in data], None
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        if index is None:
            raise ValueError(f"{path}: a generations file needs --index (0..{len(data) - 1})")
        if not 0 <= index < len(data):
            raise ValueError(f"{path}: --index {index} out of range (0..{len(data) - 1})")
        row = data[index]
        return [int(u) for u in row.get("prompt_units", [])] + [int(u) for u in row["generated_units"]], None
    raise ValueError(f"{path}: expected a JSON list of unit ids or of generation rows")


def _units_from_parquet(path: Path, segment_id: str | None) -> tuple[list[int], list[int] | None]:
    import pyarrow.parquet as pq

    if not segment_id:
        raise ValueError(f"{path}: a UNITS Parquet input needs --segment-id")
    table = pq.read_table(path, columns=["segment_id", "units", "durations"], filters=[("segment_id", "=", segment_id)])
    if table.num_rows == 0:
        raise ValueError(f"{path}: no segment with id {segment_id!r}")
    row = table.slice(0, 1).to_pylist()[0]
    return [int(u) for u in row["units"]], [int(d) for d in row["durations"]]


def cmd_vocode(args: argparse.Namespace) -> int:
    from slam_core.eval.vocoder import load_vocoder, resolve_vocoder_files, vocode, write_wav_16k

    units, durations = read_units_for_vocoding(args.units, args.segment_id, args.index)
    checkpoint, config = resolve_vocoder_files(args.vocoder)
    vocoder = load_vocoder(checkpoint, config, device=args.device, allow_unsafe_pickle=args.allow_unsafe_pickle)
    wave = vocode(vocoder, units, None if args.predict_durations else durations)
    out = write_wav_16k(args.out, wave)
    print(json.dumps({"wav": str(out), "n_units": len(units), "seconds": round(len(wave) / 16000, 3),
                      "durations": "predicted" if durations is None or args.predict_durations else "from input"}))
    return 0


def add_vocode_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `slam vocode` on the top-level subparsers object."""
    from slam_core.eval.vocoder import DEFAULT_VOCODER_NAME

    p = subparsers.add_parser("vocode", help="synthesise a 16 kHz WAV from unit ids with the unit HiFi-GAN vocoder")
    p.add_argument("--units", required=True,
                   help="JSON list of unit ids, a UNITS Parquet file/dir (+ --segment-id), "
                        "or a generations JSON (+ --index)")
    p.add_argument("--out", required=True, help="output WAV path")
    p.add_argument("--vocoder", default=DEFAULT_VOCODER_NAME,
                   help=f"directory with the checkpoint + config JSON, or {DEFAULT_VOCODER_NAME} "
                        "(looked up in $TEXTLESS_CHECKPOINT_ROOT, default ~/.textless)")
    p.add_argument("--segment-id", default=None, help="segment to vocode from a UNITS Parquet input")
    p.add_argument("--index", type=int, default=None, help="row of a generations JSON (prompt + continuation)")
    p.add_argument("--predict-durations", action="store_true",
                   help="use the vocoder's duration predictor even when the input has durations")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="load a checkpoint that needs full unpickling (only for files you trust)")
    p.set_defaults(func=cmd_vocode)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m flows.cli_eval_extra vocode ...`) until flows/cli.py registers it."""
    parser = argparse.ArgumentParser(prog="slam")
    add_vocode_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
