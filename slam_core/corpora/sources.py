"""Registry of every speech source slam can prepare: where it lives, what it holds, how to check it.

HTTP sources list the official file name of each part under `base_url`; a mirror replaces only the base URL.
Checksums are the published ones where known (OpenSLR 12 publishes md5sum.txt for LibriSpeech; the sha256s
are the ones torchaudio pins). Libri-Light publishes no checksums: those parts are unverified (None).
Hub sources name a dataset repo and a revision; `None` means the default branch, logged as unpinned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["http", "hub", "local", "eval"]


@dataclass(frozen=True)
class Part:
    """One downloadable file (or one subset of a hub/local source)."""

    name: str
    filename: str | None = None
    md5: str | None = None
    sha256: str | None = None
    approx_bytes: int | None = None
    approx_hours: float | None = None


@dataclass(frozen=True)
class Source:
    name: str
    kind: SourceKind
    description: str
    licence: str
    layout: str
    parts: tuple[Part, ...] = ()
    base_url: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    default_parts: tuple[str, ...] = ()
    homepage: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"source '{self.name}' has no part '{name}' (known: {', '.join(self.part_names())})")

    def part_names(self) -> list[str]:
        return [p.name for p in self.parts]

    def url(self, part: str, mirror: str | None = None) -> str:
        """Official file name of `part` under the official base URL or `mirror`."""
        base = (mirror or self.base_url or "").rstrip("/")
        if not base:
            raise ValueError(f"source '{self.name}' is not downloaded over HTTP")
        return f"{base}/{self.part(part).filename}"


_OPENSLR12 = "https://www.openslr.org/resources/12"
_LIBRISPEECH_PARTS = (
    # name, md5 (openslr.org/resources/12/md5sum.txt), sha256 (torchaudio), bytes, hours
    ("dev-clean", "42e2234ba48799c1f50f24a7926300a1",
     "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3", 337_926_286, 5.4),
    ("dev-other", "c8d0bcc9cca99d4f8b62fcc847357931",
     "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365", 314_305_928, 5.3),
    ("test-clean", "32fa31d27d2e1cad72775fee3f4849a9",
     "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23", 346_663_984, 5.4),
    ("test-other", "fb5a50374b501bb3bac4815ee91d3135",
     "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29", 328_757_843, 5.1),
    ("train-clean-100", "2a93770f6d5c6c964bc36631d331a522",
     "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2", 6_387_309_499, 100.6),
    ("train-clean-360", "c0e676e450a7ff2f54aeade5171606fa",
     "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf", 23_049_477_885, 363.6),
    ("train-other-500", "d1a0fd59409feb2c614ce4d30c387708", None, 30_593_501_606, 496.7),
)

SOURCES: dict[str, Source] = {
    "librispeech": Source(
        name="librispeech", kind="http", homepage="https://www.openslr.org/12/",
        description="LibriSpeech ASR corpus (OpenSLR 12): 960 h of read English audiobooks with transcripts.",
        licence="CC BY 4.0", base_url=_OPENSLR12,
        layout="LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + <speaker>-<chapter>.trans.txt",
        parts=tuple(Part(n, f"{n}.tar.gz", md5, sha, size, h) for n, md5, sha, size, h in _LIBRISPEECH_PARTS),
        default_parts=("train-clean-100", "train-clean-360", "train-other-500", "dev-clean"),
    ),
    "librilight": Source(
        name="librilight", kind="http", homepage="https://github.com/facebookresearch/libri-light",
        description="Libri-Light unlabelled audiobooks (LibriVox) with voice-activity JSON beside each file.",
        licence="MIT (code); audio from LibriVox, public domain",
        base_url="https://dl.fbaipublicfiles.com/librilight/data",
        layout="<subset>/<speaker>/<book>/<file>.flac + <file>.json ({'voice_activity': [[start_s, end_s], ...]})",
        parts=(Part("small", "small.tar", approx_bytes=35 * 10**9, approx_hours=577.0),
               Part("medium", "medium.tar", approx_bytes=321 * 10**9, approx_hours=5_193.0),
               Part("large", "large.tar", approx_bytes=3_050 * 10**9, approx_hours=51_934.0)),
        default_parts=("small",),
    ),
    "stinystories": Source(
        name="stinystories", kind="hub", hub_id="slprl/sTinyStories", revision=None,
        description="Spoken TinyStories (FastSpeech2, LJ voice, 16 kHz) with text and word alignment.",
        licence="see the dataset card (TinyStories: CDLA-Sharing-1.0)",
        layout="data/*.parquet with columns audio {bytes, path}, text, aligned_text, split_sentence",
        parts=(Part("train"),), default_parts=("train",),
        extra={"audio_column": "audio", "text_column": "text"},
    ),
    "spokenswag": Source(
        name="spokenswag", kind="hub", hub_id="slprl/SpokenSwag", revision=None,
        description="SpokenSwag preference triples (prompt/chosen/rejected speech) used for DPO.",
        licence="MIT", layout="data/train-*.parquet (audio + text columns)",
        parts=(Part("train"),), default_parts=("train",),
    ),
    "salmon": Source(
        name="salmon", kind="hub", hub_id="slprl/salmon", revision=None,
        description="SALMon acoustic-consistency benchmark (positive/negative audio pairs per part).",
        licence="see the dataset card", layout="<part>/*.parquet with positive_audio, negative_audio",
        parts=tuple(Part(p) for p in ("bg_alignment", "bg_all_consistency", "bg_domain_consistency",
                                      "gender_consistency", "rir_consistency", "sentiment_alignment",
                                      "sentiment_consistency", "speaker_consistency")),
        extra={"subsets_are_folders": "true"},
    ),
    "peoples_speech": Source(
        name="peoples_speech", kind="hub", hub_id="MLCommons/peoples_speech", revision=None,
        homepage="https://huggingface.co/datasets/MLCommons/peoples_speech",
        description="People's Speech test utterances (34,898; 16 kHz): the second GenPPL prompt domain of the "
                    "paper's Appendix D.3 (eval.genppl_prompts=peoples_speech).",
        licence="CC-BY / CC-BY-SA (see the dataset card)",
        layout="test/test-*.parquet with columns id, audio {bytes, path}, duration_ms, text",
        parts=(Part("test", approx_bytes=4_100_000_000, approx_hours=64.0),), default_parts=("test",),
        extra={"audio_column": "audio", "text_column": "text", "subsets_are_folders": "true"},
    ),
    "local": Source(
        name="local", kind="local", licence="yours",
        description="Any folder of wav/flac/mp3/ogg (recursive), optional same-stem .txt transcripts; VAD-segmented.",
        layout="<root>/**/<name>.{wav,flac,mp3,ogg} [+ <name>.txt]", parts=(Part("train"),), default_parts=("train",),
    ),
}

# Published evaluation sets: local directories only (Google-Drive zips / ZeroSpeech re-releases).
EVAL_SETS: dict[str, Source] = {
    name: Source(name=name, kind="eval", licence=lic, description=desc, layout=layout)
    for name, lic, desc, layout in (
        ("sblimp", "ZeroSpeech 2021 terms", "sBLIMP syntactic pairs", "<dir>/<sub>/<i>+<...>.wav, pairs (2i, 2i+1)"),
        ("swuggy_inter", "ZeroSpeech 2021 terms", "sWUGGY in-vocabulary pairs", "<dir>/<sub>/<i>_<...>.wav"),
        ("swuggy_oov", "ZeroSpeech 2021 terms", "sWUGGY out-of-vocabulary pairs", "<dir>/<sub>/<i>_<...>.wav"),
        ("ssc", "StoryCloze terms", "Spoken StoryCloze", "<dir>/<i>_<...>.wav (flat)"),
        ("tsc", "StoryCloze terms", "Topic StoryCloze", "<dir>/<i>_<...>.wav (flat)"),
    )
}
EVAL_SETS["salmon_local"] = Source(
    name="salmon_local", kind="eval", licence="see slp-rl/salmon", description="SALMon part dirs (wav layout)",
    layout="<dir>/<part>/sample_<i>_<j>.wav, j=0 positive, j=1 negative",
)


def get_source(name: str) -> Source:
    """The registered source or eval set `name` (error lists the known names)."""
    table = {**SOURCES, **EVAL_SETS}
    if name not in table:
        raise KeyError(f"unknown source '{name}' (known: {', '.join(sorted(table))})")
    return table[name]


def select_parts(source: Source, subsets: list[str] | None) -> list[Part]:
    """The requested parts (default: the source's default parts, else all), validated against the registry."""
    names = list(subsets) if subsets else list(source.default_parts or source.part_names())
    return [source.part(n) for n in names]
