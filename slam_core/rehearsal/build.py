"""Build every rehearsal input once under one directory and say, as config overrides, where each one lies.

`build_inputs(dir, size, seed, speech_files)` writes the model stand-ins, corpora and evaluation sets, then
`manifest.json` last: a directory with a manifest of the same size, seed and recipe is complete and reused.
`input_overrides(manifest)` maps it onto the paper preset's fields, as a user on an offline machine points
the config at local copies (`--set units.encoder=/models/mhubert-base-25hz ...`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

from slam_core.atomic import write_text_atomic
from slam_core.rehearsal import corpora, models

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Corpus sizes per rehearsal size: enough for every stage to have work (train and held-out splits, a few
# shards), small enough that synthesis and unit extraction take seconds.
CORPUS_SIZES: dict[str, dict[str, int]] = {
    "real": {"train_stories": 48, "heldout_stories": 16, "sentences_per_story": 4, "librispeech_utterances": 24,
             "librilight_files": 4, "eval_pairs": 24},
    "tiny": {"train_stories": 6, "heldout_stories": 4, "sentences_per_story": 2, "librispeech_utterances": 4,
             "librilight_files": 2, "eval_pairs": 4},
}


def recipe_digest() -> str:
    """Digest of the builders' source: a changed recipe never reuses inputs built by an older one."""
    source = inspect.getsource(models) + inspect.getsource(corpora) + json.dumps(CORPUS_SIZES, sort_keys=True)
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def build_inputs(out_dir: str | Path, size: str, seed: int, speech_files: list[Path],
                 device: str = "cpu") -> dict[str, Any]:
    """Every input of the rehearsal preset under `out_dir`; returns the manifest (paths, parameter counts,
    build seconds per item)."""
    out_dir = Path(out_dir).resolve()
    shapes = models.shapes_for(size)
    key = {"size": size, "seed": seed, "recipe": recipe_digest(), "speech": sorted(str(f) for f in speech_files)}
    existing = read_manifest(out_dir)
    if existing is not None and existing.get("key") == key:
        log.info("rehearsal inputs in %s are complete (size %s): reused", out_dir, size)
        return existing
    sizes = CORPUS_SIZES[size]
    built: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def step(name: str, fn, path: Path, *args, **kwargs) -> Any:
        t0 = time.perf_counter()
        result = fn(path, *args, **kwargs)
        built[name] = {"path": str(path), **(result if isinstance(result, dict) else {})}
        timings[name] = round(time.perf_counter() - t0, 2)
        log.info("rehearsal input %s built in %.1f s", name, timings[name])
        return built[name]

    stories, triples = corpora.text_corpus(sizes["train_stories"], sizes["heldout_stories"],
                                           sizes["sentences_per_story"], seed)
    sentences = [s for story in stories for s in story["sentences"]]
    all_text = sentences + [t[k] for t in triples for k in ("prompt_text", "chosen_text", "rejected_text")]
    words = sorted({w.strip(".,!?;:'\"").lower() for t in all_text for w in t.split()} - {""})
    waves = corpora.read_speech(speech_files)

    step("tinystories", corpora.write_tinystories, out_dir / "text" / "tinystories", stories)
    step("swag", corpora.write_swag, out_dir / "text" / "swag", triples, seed)
    step("librispeech", corpora.write_librispeech, out_dir / "speech" / "librispeech",
         corpora.SpeechCutter(waves, seed), sentences, sizes["librispeech_utterances"], seed)
    step("librilight", corpora.write_librilight, out_dir / "speech" / "librilight",
         corpora.SpeechCutter(waves, seed + 1), sizes["librilight_files"], seed)
    step("eval_sets", corpora.write_eval_sets, out_dir / "reference", corpora.SpeechCutter(waves, seed + 2),
         sizes["eval_pairs"], words)
    step("hubert", models.build_hubert, out_dir / "models" / "mhubert-base-25hz", shapes, seed, device)
    step("centroids", models.centroids_from_features, out_dir / "models" / "mhubert-base-25hz",
         shapes.encoder_layer, shapes.n_units, waves, out_dir / "models" / "km500.npy", seed, device)
    step("text_lm", models.build_text_lm, out_dir / "models" / "qwen2.5-0.5b", shapes, seed, device)
    step("kokoro", models.build_kokoro, out_dir / "models" / "kokoro-82m", shapes, all_text, seed)
    step("vocoder", models.build_vocoder, out_dir / "models" / "hifigan", shapes, seed)
    step("whisper", models.build_whisper, out_dir / "models" / "whisper-large-v3-turbo.pt", shapes, seed)
    step("ppl_lm", models.build_ppl_lm, out_dir / "models" / "llama-3.2-1b", shapes, words, seed, device)

    manifest = {"key": key, "size": size, "seed": seed, "dir": str(out_dir), "built": built,
                "build_s": timings, "encoder_layer": shapes.encoder_layer, "n_units": shapes.n_units,
                "notes": shapes.notes}
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def input_overrides(manifest: dict[str, Any]) -> dict[str, Any]:
    """Config overrides that point the rehearsal preset at the built inputs."""
    b = manifest["built"]
    return {
        "corpus.tinystories_local_dir": b["tinystories"]["path"],
        "corpus.swag_local_dir": b["swag"]["path"],
        "corpus.librispeech_dir": b["librispeech"]["path"],
        "corpus.librispeech_train_parts": [p for p in corpora.LIBRISPEECH_PARTS if p.startswith("train")],
        "corpus.librispeech_val_parts": [p for p in corpora.LIBRISPEECH_PARTS if p.startswith("dev")],
        "corpus.librilight_dir": b["librilight"]["path"],
        "corpus.librilight_subsets": [corpora.LIBRILIGHT_SUBSET],
        "units.encoder": b["hubert"]["path"],
        "units.layer": manifest["encoder_layer"],
        "units.n_units": manifest["n_units"],
        "units.kmeans_path": b["centroids"]["path"],
        "units.kmeans_source_sha256": None,  # not the published quantiser: its origin is not checked
        "model.base": b["text_lm"]["path"],
        "synth.kokoro_model": b["kokoro"]["path"],
        "eval.reference_path": b["eval_sets"]["path"],
        "eval.vocoder": b["vocoder"]["path"],
        "eval.asr_model": b["whisper"]["path"],
        "eval.ppl_lm": b["ppl_lm"]["path"],
    }
