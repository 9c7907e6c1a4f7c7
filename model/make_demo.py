#!/usr/bin/env python3
"""Rebuild the bundled demo model and its expected outputs (`make demo-model`).

Writes, under fixtures/models/ (or --out-dir):
  pneumollm-tiny.onnx                  tiny configuration, seeded random weights
                                       (seed 0, weights kind random-demo), fp32
  pneumollm-tiny.inputs.npy            fixed inputs, float32 [2,3,224,224], already
                                       normalised with the contract's mean/std
  pneumollm-tiny.expected-logits.npy   PyTorch's logits for them, float32 [2,2]
  pneumollm-tiny-fp16.onnx             the same weights exported in fp16 (input
                                       float16), as the CUDA export is made
  pneumollm-tiny-fp16.expected-logits.npy
                                       PyTorch fp16's logits for the inputs rounded
                                       to float16, float32 [2,2]

Deterministic for the pinned torch/onnx versions of model/requirements.txt.
Refuses to write if ONNX Runtime and PyTorch differ by more than 1e-5 (fp32),
or by more than 1e-2 relative to the largest logit (fp16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from export import export_onnx, ort_logits
from pneumollm import TINY, build_model, random_init
from pneumollm.contract import MEAN, STD, contract_metadata, weights_sha256

SEED = 0
NAME = "pneumollm-tiny"
VERSION = "1.0.0"
TOLERANCE = 1e-5
REL_TOLERANCE_FP16 = 1e-2
REPO = Path(__file__).resolve().parent.parent


def demo_inputs(size: int = 224) -> np.ndarray:
    """Two grey images in [0,1], replicated to 3 channels and normalised.

    0: seeded uniform noise (numpy PCG64, seed 0);
    1: a smooth synthetic pattern (two dark ovals on a bright gradient).
    """
    rng = np.random.default_rng(SEED)
    noise = rng.random((size, size), dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    pattern = 0.35 + 0.5 * yy
    for cx in (0.3, 0.7):
        inside = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1.0
        pattern = np.where(inside, 0.15 + 0.1 * np.sin(12 * yy), pattern)
    grey = np.stack([noise, pattern]).astype(np.float32)  # [2, H, W]
    rgb = np.repeat(grey[:, None], 3, axis=1)  # [2, 3, H, W]
    mean = np.asarray(MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return ((rgb - mean) / std).astype(np.float32)


def build(out_dir: Path) -> None:
    torch.manual_seed(SEED)
    model = random_init(build_model(TINY), SEED).set_precision("fp32")
    meta = contract_metadata(TINY, model_name=NAME, model_version=VERSION, weights_kind="random-demo",
                             precision="fp32", crop_mode="none", weights_sha=weights_sha256(model.state_dict()))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / f"{NAME}.onnx"
    export_onnx(model, onnx_path, metadata=meta, precision="fp32")

    inputs = demo_inputs(TINY.image_size)
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy().astype(np.float32)
    got = ort_logits(onnx_path, inputs)
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise SystemExit(f"ONNX Runtime differs from PyTorch by {diff:.3g} > {TOLERANCE}")
    np.save(out_dir / f"{NAME}.inputs.npy", inputs)
    np.save(out_dir / f"{NAME}.expected-logits.npy", expected)
    probs = np.exp(expected - expected.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    size = onnx_path.stat().st_size
    print(f"wrote {onnx_path} ({size} bytes), sha256 of weights {meta['pneumo.weights_sha256']}")
    print(f"expected logits {expected.tolist()}, P(pneumoconiosis) {probs[:, 0].tolist()}, "
          f"max |ort - torch| {diff:.3g}")
    build_fp16(out_dir, inputs)


def build_fp16(out_dir: Path, inputs: np.ndarray) -> None:
    """The fp16 export of the same weights: the element types a CUDA export
    has, small enough to test the node's float16 input path on the CPU."""
    model = random_init(build_model(TINY), SEED).set_precision("fp16")
    meta = contract_metadata(TINY, model_name=NAME, model_version=VERSION, weights_kind="random-demo",
                             precision="fp16", crop_mode="none", weights_sha=weights_sha256(model.state_dict()))
    onnx_path = out_dir / f"{NAME}-fp16.onnx"
    export_onnx(model, onnx_path, metadata=meta, precision="fp16")
    x16 = inputs.astype(np.float16)
    with torch.no_grad():
        expected = model(torch.from_numpy(x16)).float().numpy()
    got = ort_logits(onnx_path, x16)
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    if rel > REL_TOLERANCE_FP16:
        raise SystemExit(f"fp16: ONNX Runtime differs from PyTorch by {rel:.3g} (relative) > {REL_TOLERANCE_FP16}")
    np.save(out_dir / f"{NAME}-fp16.expected-logits.npy", expected.astype(np.float32))
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes), fp16 logits {expected.tolist()}, "
          f"relative |ort - torch| {rel:.3g}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=REPO / "fixtures" / "models")
    build(p.parse_args(argv).out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
