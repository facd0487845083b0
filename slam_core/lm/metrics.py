"""Training metrics: FLOPs per token, device peak FLOP/s, MFU, and the metrics log (CSV + TensorBoard).

FLOPs per trained token follow the PaLM paper (appendix B) / nanoGPT `estimate_mfu`: 6N for the matmuls of
forward + backward over all N parameters, plus 12 * L * H * Q * T for the attention scores and values
(L layers, H query heads of size Q, context T; the non-causal count). For the Slam shape (Qwen2.5-0.5B,
vocabulary 502, T = 1024): 6 * 358,347,904 + 12 * 24 * 14 * 64 * 1024 = 2.414 GFLOP per token, so an
H100 SXM (989.4 TFLOP/s dense bf16) at 100 % MFU trains 410k tokens/s (docs/performance.md).
"""

from __future__ import annotations

import csv
import io
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slam_core.atomic import write_text_atomic

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens_seen", "elapsed_s", "val_loss"]
# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, matched by substring of the CUDA device name; the
# first match wins, so specific names come before their family. Unknown devices get MFU = None.
BF16_PEAK_FLOPS: dict[str, float] = {
    "H100 PCIe": 756.5e12, "H100 NVL": 835.5e12, "H100": 989.4e12, "H200": 989.4e12, "GH200": 989.4e12,
    "A100": 312e12, "A6000": 154.8e12, "A5000": 111.1e12, "L40S": 362.1e12, "4090": 165.2e12,
}


def flops_per_token_for(n_params: int, n_layers: int, n_heads: int, head_dim: int, context_len: int) -> float:
    """6N + 12 * L * H * Q * T (PaLM appendix B, nanoGPT)."""
    return 6.0 * n_params + 12.0 * n_layers * n_heads * head_dim * context_len


def model_flops_per_token(model: torch.nn.Module, context_len: int) -> float:
    """FLOPs per trained token of an HF causal LM (parameters counted once; a tied head counts once)."""
    cfg = model.config
    n_heads = getattr(cfg, "num_attention_heads", 0) or 0
    head_dim = getattr(cfg, "head_dim", None) or (cfg.hidden_size // n_heads if n_heads else 0)
    n_params = sum(p.numel() for p in model.parameters())
    return flops_per_token_for(n_params, getattr(cfg, "num_hidden_layers", 0), n_heads, head_dim, context_len)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak for the training dtype, or None when unknown (CPU, fp32, unlisted GPU)."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def peak_flops_for_name(device_name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in device_name), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (CPU)."""
    return tokens_per_s * flops_per_token / peak_flops if peak_flops else None


def _wait_for_a_later_event_file_name(tensorboard_dir: Path) -> None:
    """TensorBoard replays a run's event files in name order, and a name starts with its creation second followed
    by a per-process counter that does not sort numerically (".10" < ".9"). A resumed writer created in the same
    second as the last file could therefore be replayed first and lose its purge; start it in a later second."""
    stamps = [int(p.name.split(".")[3]) for p in tensorboard_dir.glob("events.out.tfevents.*")
              if p.name.split(".")[3].isdigit()]
    if stamps and max(stamps) >= int(time.time()):
        time.sleep(max(stamps) + 1 - time.time())


class MetricsLog:
    """A metrics CSV (and optionally TensorBoard event files under `tensorboard_dir`).

    On resume, CSV rows after the restored step are dropped and TensorBoard events from that step on are
    purged (both will be redone), so a resumed run's curves have no duplicated steps.
    """

    def __init__(self, path: Path, resume_step: int, fields: list[str] = METRIC_FIELDS,
                 tensorboard_dir: Path | None = None) -> None:
        self.path, self.fields = path, fields
        if path.exists():
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            write_text_atomic(path, buf.getvalue())
        else:
            write_text_atomic(path, ",".join(fields) + "\n")
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            _wait_for_a_later_event_file_name(Path(tensorboard_dir))
            self._tb = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1 if resume_step else None)

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow({k: row.get(k) for k in self.fields})
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):  # None (unknown MFU) is skipped
                    self._tb.add_scalar(f"train/{key}", value, global_step=int(row["step"]))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class BackgroundReporter:
    """Runs metric-log appends and progress callbacks in order on one thread, off the training thread (a
    TensorBoard flush or a Prefect API call can take longer than a GPU step). `flush()` waits until
    everything submitted is done (before a checkpoint, so a resumed run never misses a logged step); an
    error in a job is re-raised by the next submit/flush/close."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="train-reporter", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    job()
            except BaseException as err:  # noqa: BLE001 — handed to the training thread
                self._error = err
            finally:
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        self._jobs.put(lambda: fn(*args))

    def flush(self) -> None:
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        self._raise()
