"""Test helpers for the corpus tests: a local HTTP file server with misbehaving endpoints, and archives in the
real LibriSpeech / Libri-Light layouts built from tiny synthetic audio."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16_000


class FileServer:
    """Serves `files` (name -> bytes) on 127.0.0.1:<free port>.

    /files/<name>   normal, honours Range (206)
    /drop/<name>    the first request sends full headers but only `drop_after` bytes, then closes
    /norange/<name> ignores Range, always 200 with the whole file
    Every request is logged as (path, Range header) in `requests`.
    """

    def __init__(self, files: dict[str, bytes], drop_after: int = 1000) -> None:
        self.files = files
        self.drop_after = drop_after
        self.requests: list[tuple[str, str | None]] = []
        self.hits: dict[str, int] = defaultdict(int)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                kind, _, name = self.path.lstrip("/").partition("/")
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                server.hits[self.path] += 1
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = int(rng.split("=")[1].split("-")[0]) if rng and kind != "norange" else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if head:
                    return
                if kind == "drop" and server.hits[self.path] == 1:
                    self.wfile.write(body[: server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def tone(seconds: float, freq_hz: float = 220.0, seed: int = 0) -> np.ndarray:
    """A quiet sine plus a little seeded noise (speech is not needed where no VAD runs)."""
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.3 * np.sin(2 * np.pi * freq_hz * t) + noise).astype(np.float32)


def flac_bytes(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE_HZ, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A deterministic .tar.gz of regular files (name -> bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def librispeech_members(part: str, bad_utterance: bool = False) -> tuple[dict[str, bytes], dict[str, str]]:
    """LibriSpeech/<part>/<spk>/<chap>/<spk>-<chap>-<utt>.flac + <spk>-<chap>.trans.txt; returns (members, texts)."""
    members: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    for spk, chap in (("19", "198"), ("84", "121123")):
        lines = []
        for utt in range(3):
            utt_id = f"{spk}-{chap}-{utt:04d}"
            texts[utt_id] = f"UTTERANCE {utt} OF CHAPTER {chap}"
            lines.append(f"{utt_id} {texts[utt_id]}")
            data = flac_bytes(tone(0.5 + 0.25 * utt, 200 + 40 * utt, seed=utt))
            if bad_utterance and spk == "84" and utt == 2:
                data = b"this is not audio"
            members[f"LibriSpeech/{part}/{spk}/{chap}/{utt_id}.flac"] = data
        members[f"LibriSpeech/{part}/{spk}/{chap}/{spk}-{chap}.trans.txt"] = ("\n".join(lines) + "\n").encode()
    return members, texts


def librilight_members(subset: str) -> tuple[dict[str, bytes], dict[str, list[list[float]]]]:
    """<subset>/<spk>/<book>/<file>.flac + <file>.json with voice_activity; returns (members, vad per file)."""
    vad = {"100/sea_fairies_0812/01_baum": [[0.2, 1.0], [1.3, 2.1], [2.4, 3.9], [4.0, 5.5]],
           "100/sea_fairies_0812/02_baum": [[0.0, 6.5]],
           "207/emma_1234/03_austen": [[0.5, 1.5], [2.0, 2.5]]}
    members: dict[str, bytes] = {}
    for rel, spans in vad.items():
        members[f"{subset}/{rel}.flac"] = flac_bytes(tone(7.0, 180.0))
        members[f"{subset}/{rel}.json"] = json.dumps(
            {"voice_activity": spans, "book_meta": {"id": rel.split("/")[1]}, "snr": 10.0}).encode()
    return members, vad


def write_tree(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root
