"""The published mHuBERT-25Hz k-means 500 quantiser (TWIST / textlesslib), which the paper, SlamKit, the released
Slam models and the unit HiFi-GAN vocoder all use. Plain constants, so the config can name them without loading
faiss or torch.

The digest is the full sha256 that SlamKit's checkpoint manager verifies
(`slamkit/vocoder/textless_checkpoint_manager/__init__.py`, entry `mhubert-base-25hz-kmeans-500`).
"""

from __future__ import annotations

URL = ("https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/"
       "mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin")
FILE_NAME = URL.rsplit("/", 1)[1]
SHA256 = "03cc04a9c24fec4285e73e709c485756d8f116aa8e724eac555de6a7cf8d28ad"
# Where the paper presets expect the converted centroids (relative to the data root).
CENTROIDS_PATH = "quantizer/mhubert_base_25hz_L11_km500.npy"
INCOMPATIBLE_NOTE = ("units from a k-means fitted on this run's speech (units.fit_kmeans=true): incompatible with "
                     "the published vocoder and models (unit ids mean something else)")


def convert_command(out_path: str) -> str:
    """The one-time conversion that provides the published centroids at `out_path`."""
    return (f"download {URL} and run `slam units convert-kmeans --pickle {FILE_NAME} --out {out_path} "
            f"--allow-unpickle`")
