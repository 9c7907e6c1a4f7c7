"""The model contract written into the ONNX file's metadata_props.

Every key is documented in docs/model-contract.md; the node reads exactly
these.  Values are strings; lists are compact JSON.
"""

from __future__ import annotations

import hashlib
import json

import torch

from .config import PneumoLLMConfig

CONTRACT_VERSION = "1"
WEIGHTS_HASH_METHOD = "pneumo-state-dict-v1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
LABELS = ["pneumoconiosis", "normal"]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
WEIGHTS_KINDS = ("trained", "random-demo")
CROP_MODES = ("none", "lung-box")
PRECISIONS = {"fp32": "float32", "fp16": "float16"}

CONTRACT_KEYS = (
    "pneumo.contract_version",
    "pneumo.model_name",
    "pneumo.model_version",
    "pneumo.model_config",
    "pneumo.weights_kind",
    "pneumo.weights_sha256",
    "pneumo.weights_sha256_method",
    "pneumo.precision",
    "pneumo.input_name",
    "pneumo.input_shape",
    "pneumo.input_dtype",
    "pneumo.input_layout",
    "pneumo.output_name",
    "pneumo.output_shape",
    "pneumo.output_dtype",
    "pneumo.output_kind",
    "pneumo.labels",
    "pneumo.positive_label",
    "pneumo.score_function",
    "pneumo.decision_threshold",
    "pneumo.input_size",
    "pneumo.color_mode",
    "pneumo.input_range",
    "pneumo.mean",
    "pneumo.std",
    "pneumo.resize_filter",
    "pneumo.resize_mode",
    "pneumo.crop_mode",
)


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"))


_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict, method `pneumo-state-dict-v1`.

    For each entry in ascending order of its key (byte order of the UTF-8 key):
    the key in UTF-8, a NUL byte, the dtype name (`float32`, `float16`), a NUL
    byte, the shape as decimal sizes joined by `,` (empty for a scalar), a NUL
    byte, then the tensor's elements in row-major order as little-endian bytes
    of that dtype.  The state dict is the model's as exported (our key names,
    the export precision); the RoPE tables and the emitter mask are constants,
    not weights, and are not in it.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict, key=lambda k: k.encode("utf-8")):
        t = state_dict[key].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"unsupported dtype {t.dtype} for '{key}'")
        h.update(key.encode("utf-8") + b"\0")
        h.update(_DTYPE_NAMES[t.dtype].encode() + b"\0")
        h.update(",".join(str(s) for s in t.shape).encode() + b"\0")
        arr = t.numpy()
        h.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def contract_metadata(cfg: PneumoLLMConfig, *, model_name: str, model_version: str, weights_kind: str,
                      precision: str, crop_mode: str, weights_sha: str,
                      decision_threshold: float = 0.5) -> dict[str, str]:
    if weights_kind not in WEIGHTS_KINDS:
        raise ValueError(f"weights_kind must be one of {WEIGHTS_KINDS}")
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}")
    if not 0.0 <= decision_threshold <= 1.0:
        raise ValueError("decision_threshold must be in [0, 1]")
    meta = {
        "pneumo.contract_version": CONTRACT_VERSION,
        "pneumo.model_name": model_name,
        "pneumo.model_version": model_version,
        "pneumo.model_config": cfg.name,
        "pneumo.weights_kind": weights_kind,
        "pneumo.weights_sha256": weights_sha,
        "pneumo.weights_sha256_method": WEIGHTS_HASH_METHOD,
        "pneumo.precision": precision,
        "pneumo.input_name": INPUT_NAME,
        "pneumo.input_shape": _json(["batch", 3, cfg.image_size, cfg.image_size]),
        "pneumo.input_dtype": PRECISIONS[precision],
        "pneumo.input_layout": "NCHW",
        "pneumo.output_name": OUTPUT_NAME,
        "pneumo.output_shape": _json(["batch", cfg.num_classes]),
        "pneumo.output_dtype": "float32",
        "pneumo.output_kind": "logits",
        "pneumo.labels": _json(LABELS),
        "pneumo.positive_label": LABELS[0],
        "pneumo.score_function": "softmax",
        "pneumo.decision_threshold": repr(float(decision_threshold)),
        "pneumo.input_size": str(cfg.image_size),
        "pneumo.color_mode": "grey-to-rgb",
        "pneumo.input_range": _json([0.0, 1.0]),
        "pneumo.mean": _json(MEAN),
        "pneumo.std": _json(STD),
        "pneumo.resize_filter": "bilinear-antialias",
        "pneumo.resize_mode": "stretch",
        "pneumo.crop_mode": crop_mode,
    }
    assert tuple(meta) == CONTRACT_KEYS
    return meta
