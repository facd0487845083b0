"""Batch-invariant units: a segment's features and units are the same bits alone, in batches of any
composition, at any position, with any amount of block padding (CPU here; CUDA in the `gpu` test), for the
row-wise kernels (the default: conv stack, positional conv and transformer on concatenated rows) and the
previous per-item ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import HubertModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slam_core.audio.io import read_audio  # noqa: E402
from slam_core.units import UnitExtractor  # noqa: E402
from slam_core.units.encoder import tiny_encoder_config  # noqa: E402
from slam_core.units.frontend import InvariantFeatureEncoder  # noqa: E402
from slam_core.units.invariant import InvariantTransformer, RowOps, resolve_matmul, triton_available  # noqa: E402
from shared_data import REAL_SPEECH  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


def _model(stable: bool, layers: int = 3, hidden: int = 96) -> HubertModel:
    torch.manual_seed(0)
    cfg = tiny_encoder_config(hidden_size=hidden, num_layers=layers)
    # HuBERT-base's layout (group norm over time in conv layer 0, post-LN) or the large models' stable LN
    cfg.do_stable_layer_norm, cfg.feat_extract_norm = stable, "layer" if stable else "group"
    cfg.num_conv_pos_embeddings = 16  # longer than the tiny default, so utterance edges matter
    return HubertModel(cfg).eval()


def _waves(seed: int = 0) -> list[np.ndarray]:
    """Real recordings and cuts of them (where the shared data is, as on every CPU test host), and noise;
    lengths 0.05-16 s."""
    rng = np.random.default_rng(seed)
    waves = [(0.1 * rng.standard_normal(int(rng.uniform(0.5, 6) * 16_000))).astype(np.float32) for _ in range(4)]
    if (REAL_SPEECH / "audio1.flac").is_file() or not torch.cuda.is_available():
        a, b = (read_audio(REAL_SPEECH / f"audio{i}.flac") for i in (1, 2))
        waves = [a, b[:40_000], a[1000:41_000 + 999], b, a[5:20_000], b[7:47_007], a[:700], b[3:9_000]] + waves
    return waves


@pytest.mark.parametrize("stable,kernels", [(False, "rows"), (True, "rows"), (False, "per_item")])
def test_rows_do_not_depend_on_batch_position_or_padding(stable, kernels):
    model = _model(stable)
    rng = np.random.default_rng(1)
    lengths = [37, 250, 3, 129, 300, 64, 1, 255]
    feats = [torch.randn(n, model.config.conv_dim[-1], generator=torch.Generator().manual_seed(n)) for n in lengths]
    for block_rows in (64, 256):
        transformer = InvariantTransformer(model, 3, block_rows=block_rows, kernels=kernels)
        alone = [transformer([f])[0] for f in feats]
        for _ in range(6):
            pick = rng.permutation(len(feats))[: rng.integers(2, len(feats) + 1)]
            together = transformer([feats[i] for i in pick])
            for i, out in zip(pick, together):
                assert torch.equal(out, alone[i]), (block_rows, list(pick), i)
    # and the arithmetic is HubertModel's (the padded path, itself tested against HubertModel.forward)
    with torch.no_grad():
        ref = UnitExtractor(model, None, 3, batching="padded")._encode_padded(feats[1][None], [lengths[1]])[0]
    assert torch.allclose(alone[1], ref, atol=1e-5)


@pytest.mark.parametrize("stable,pos_kernel", [(False, 16), (True, 15)])
@pytest.mark.parametrize("block_rows", [64, 256])
def test_conv_frontend_is_the_feature_encoder_and_position_free(stable, pos_kernel, block_rows):
    """The row-wise conv stack (gathered windows + matmuls, GroupNorm per item) computes HubertFeatureEncoder,
    and an utterance's frames are the same bits at any position among any others; the row-wise positional
    conv (even and odd kernels) is the per-item one."""
    model = _model(stable)
    if pos_kernel != model.config.num_conv_pos_embeddings:
        model.config.num_conv_pos_embeddings = pos_kernel
        torch.manual_seed(1)
        model = HubertModel(model.config).eval()
    frontend = InvariantFeatureEncoder(model, RowOps(torch.device("cpu"), "blocks", block_rows))
    waves = [torch.from_numpy(w) for w in _waves()[:10] if len(w) >= 1_000]
    alone = [frontend([w])[0] for w in waves]
    with torch.no_grad():
        for w, a in zip(waves, alone):
            assert torch.allclose(a, model.feature_extractor(w[None])[0].T, atol=1e-4, rtol=1e-4)
    rng = np.random.default_rng(3)
    for _ in range(4):
        order = rng.permutation(len(waves))[: rng.integers(2, len(waves) + 1)]
        for i, got in zip(order, frontend([waves[i] for i in order])):
            assert torch.equal(got, alone[i]), (list(order), i)
    rows = InvariantTransformer(model, 3, block_rows=block_rows)
    per_item = InvariantTransformer(model, 3, block_rows=block_rows, kernels="per_item")
    x = torch.cat(alone[:4]) @ torch.randn(alone[0].shape[1], model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    spans = list(zip(np.cumsum([0] + [len(a) for a in alone[:3]]), np.cumsum([len(a) for a in alone[:4]])))
    got = rows._positional_rows(x, spans)
    want = per_item._per_item(per_item._positional, x, spans, x.shape[1])
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stable,kernels", [(False, "rows"), (True, "rows"), (False, "per_item")])
def test_units_equal_one_at_a_time_in_every_batch_composition(stable, kernels):
    model = _model(stable)
    waves = _waves()
    plain = UnitExtractor(model, None, 3)
    centroids = np.concatenate(plain.features(waves))[::7][:40].copy()
    extractor = UnitExtractor(model, centroids, 3, invariant_kernels=kernels)
    alone_feats = [extractor.features([w])[0] for w in waves]
    alone_units = [extractor.frames([w])[0] for w in waves]
    rng = np.random.default_rng(2)
    for batch_size in (2, 3, 5, 16):
        pick = rng.permutation(len(waves))[: rng.integers(3, len(waves) + 1)]
        feats = extractor.features([waves[i] for i in pick], batch_size=batch_size)
        units = extractor.frames([waves[i] for i in pick], batch_size=batch_size)
        for i, f, u in zip(pick, feats, units):
            assert np.array_equal(f, alone_feats[i]), (batch_size, i)
            assert np.array_equal(u, alone_units[i]), (batch_size, i)


def test_matmul_backend_choice():
    assert resolve_matmul("auto", torch.device("cpu")) == "blocks"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_matmul("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="units.invariant_matmul='fast'"):
        resolve_matmul("fast", torch.device("cpu"))


@pytest.mark.skipif(not triton_available(), reason="triton not installed (the CUDA kernel is checked in its interpreter)")
def test_triton_kernel_is_a_row_invariant_linear_in_the_interpreter():
    """The kernel's arithmetic under TRITON_INTERPRET=1 on CPU: equals x @ w.T + b, and a row's result does
    not depend on which rows surround it (the GPU's own rounding is checked by the `gpu` test)."""
    script = textwrap.dedent("""
        import torch
        from slam_core.units.triton_linear import linear
        torch.manual_seed(0)
        for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 3e-2)):
            x, w, b = torch.randn(150, 96).to(dtype), torch.randn(200, 96).to(dtype), torch.randn(200).to(dtype)
            y = linear(x, w, b)
            assert torch.allclose(y.float(), x.float() @ w.float().T + b.float(), atol=tol, rtol=tol), dtype
            assert torch.equal(linear(x[37:90].contiguous(), w, b), y[37:90]), dtype
            assert torch.equal(linear(x, w), linear(x, w, torch.zeros_like(b))), dtype
        print("ok")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("matmul,kernels,dtype", [("triton", "rows", torch.float16), ("triton", "rows", torch.float32),
                                                   ("blocks", "rows", torch.float16), ("triton", "per_item", torch.float16)])
def test_units_are_batch_invariant_on_cuda(matmul, kernels, dtype):
    """HuBERT-base shape (random weights, 4 layers to stay quick) on the GPU: every segment's units and features
    equal its lone extraction in batches of several sizes and compositions, and at other positions (the
    default row-wise kernels with varlen attention in fp16, Triton fp32, cuBLAS blocks, the per-item ones)."""
    if matmul == "triton" and not triton_available():
        pytest.skip("triton not installed")
    from transformers import HubertConfig

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072,
                       conv_dim=(512,) * 8, conv_stride=(5, 2, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2, 2))
    model = HubertModel(cfg).eval()
    rng = np.random.default_rng(0)
    waves = _waves() + [(0.1 * rng.standard_normal(int(rng.uniform(1, 20) * 16_000))).astype(np.float32)
                        for _ in range(40)]
    centroids = rng.standard_normal((500, 768)).astype(np.float32)
    extractor = UnitExtractor(model, centroids, 4, "cuda", dtype, invariant_matmul=matmul, invariant_kernels=kernels)
    if kernels == "rows" and dtype == torch.float16:
        from slam_core.units.invariant import varlen_attention

        assert extractor.invariant.attention == ("varlen" if varlen_attention() else "per_item")
    alone_feats = [extractor.features([w])[0] for w in waves]
    alone_units = [extractor.frames([w])[0] for w in waves]
    if kernels == "rows":  # the conv stack alone, at other positions among other utterances (no length sorting)
        padded = [extractor._padded_wave(w) for w in waves]
        lone = [extractor.frontend([w])[0] for w in padded]
        for order in (rng.permutation(len(waves)), np.arange(len(waves))[::-1]):
            for i, got in zip(order, extractor.frontend([padded[i] for i in order])):
                assert torch.equal(got, lone[i]), (i, list(order).index(i))
    for batch_size in (3, 16, 64):
        pick = rng.permutation(len(waves))[: rng.integers(len(waves) // 2, len(waves) + 1)]
        feats = extractor.features([waves[i] for i in pick], batch_size=batch_size)
        units = extractor.frames([waves[i] for i in pick], batch_size=batch_size)
        for i, f, u in zip(pick, feats, units):
            assert np.array_equal(f, alone_feats[i]), (matmul, batch_size, i)
            assert np.array_equal(u, alone_units[i]), (matmul, batch_size, i)
