"""The bundled demo model (fixtures/models/pneumollm-tiny.onnx) under ONNX Runtime.

No torch here: the committed inputs go through onnxruntime and must give the
committed expected logits; the contract in the ONNX metadata must hold every
documented key.  Rebuild the fixture with `make demo-model`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "fixtures" / "models"
ONNX = MODELS / "pneumollm-tiny.onnx"
TOL = 1e-5

# Every key of docs/model-contract.md (contract version 1).
CONTRACT_KEYS = [
    "pneumo.contract_version", "pneumo.model_name", "pneumo.model_version", "pneumo.model_config",
    "pneumo.weights_kind", "pneumo.weights_sha256", "pneumo.weights_sha256_method", "pneumo.precision",
    "pneumo.input_name", "pneumo.input_shape", "pneumo.input_dtype", "pneumo.input_layout",
    "pneumo.output_name", "pneumo.output_shape", "pneumo.output_dtype", "pneumo.output_kind",
    "pneumo.labels", "pneumo.positive_label", "pneumo.score_function", "pneumo.decision_threshold",
    "pneumo.input_size", "pneumo.color_mode", "pneumo.input_range", "pneumo.mean", "pneumo.std",
    "pneumo.resize_filter", "pneumo.resize_mode", "pneumo.crop_mode",
]


@pytest.fixture(scope="module")
def session():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(ONNX), opts, providers=["CPUExecutionProvider"])


def test_demo_model_is_small():
    assert ONNX.stat().st_size < 5_000_000


def test_demo_model_reproduces_expected_logits(session):
    inputs = np.load(MODELS / "pneumollm-tiny.inputs.npy")
    expected = np.load(MODELS / "pneumollm-tiny.expected-logits.npy")
    assert inputs.dtype == np.float32 and inputs.shape == (2, 3, 224, 224)
    assert expected.dtype == np.float32 and expected.shape == (2, 2)
    meta = session.get_modelmeta().custom_metadata_map
    (got,) = session.run([meta["pneumo.output_name"]], {meta["pneumo.input_name"]: inputs})
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOL
    # one image at a time gives the same (dynamic batch axis)
    for i in range(len(inputs)):
        (one,) = session.run(["logits"], {"image": inputs[i:i + 1]})
        assert np.abs(one[0] - expected[i]).max() <= TOL


def test_demo_model_contract(session):
    meta = session.get_modelmeta().custom_metadata_map
    missing = [k for k in CONTRACT_KEYS if k not in meta]
    assert not missing, missing
    assert meta["pneumo.contract_version"] == "1"
    assert meta["pneumo.model_name"] == "pneumollm-tiny"
    assert meta["pneumo.weights_kind"] == "random-demo"
    assert re.fullmatch(r"[0-9a-f]{64}", meta["pneumo.weights_sha256"])
    assert meta["pneumo.weights_sha256_method"] == "pneumo-state-dict-v1"
    assert meta["pneumo.precision"] == "fp32"
    assert json.loads(meta["pneumo.labels"]) == ["pneumoconiosis", "normal"]
    assert meta["pneumo.positive_label"] == "pneumoconiosis"
    assert meta["pneumo.score_function"] == "softmax" and meta["pneumo.output_kind"] == "logits"
    assert float(meta["pneumo.decision_threshold"]) == 0.5
    assert int(meta["pneumo.input_size"]) == 224
    assert json.loads(meta["pneumo.mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["pneumo.std"]) == [0.229, 0.224, 0.225]
    assert json.loads(meta["pneumo.input_range"]) == [0.0, 1.0]
    assert meta["pneumo.resize_filter"] == "bilinear-antialias"
    assert meta["pneumo.resize_mode"] == "stretch"
    assert meta["pneumo.crop_mode"] == "none"
    assert meta["pneumo.color_mode"] == "grey-to-rgb"
    assert meta["pneumo.input_layout"] == "NCHW"
    # the metadata describes the graph as it is
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == meta["pneumo.input_name"] and out.name == meta["pneumo.output_name"]
    assert inp.type == "tensor(float)" and meta["pneumo.input_dtype"] == "float32"
    assert out.type == "tensor(float)" and meta["pneumo.output_dtype"] == "float32"
    assert inp.shape == json.loads(meta["pneumo.input_shape"])
    assert out.shape == json.loads(meta["pneumo.output_shape"])


def test_contract_keys_match_the_documentation():
    doc = (REPO / "docs" / "model-contract.md").read_text()
    documented = re.findall(r"^\| `(pneumo\.[a-z0-9_]+)` \|", doc, flags=re.M)
    assert documented == CONTRACT_KEYS


def test_fp16_demo_model_takes_float16_and_matches_pytorch_fp16():
    """The fp16 export (the element types of a CUDA export) under the CPU
    provider: float16 input, float32 logits within 1e-2 (relative) of
    PyTorch fp16's."""
    path = MODELS / "pneumollm-tiny-fp16.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["pneumo.precision"] == "fp16" and meta["pneumo.input_dtype"] == "float16"
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.type == "tensor(float16)" and out.type == "tensor(float)"
    assert path.stat().st_size < 5_000_000
    x16 = np.load(MODELS / "pneumollm-tiny.inputs.npy").astype(np.float16)
    expected = np.load(MODELS / "pneumollm-tiny-fp16.expected-logits.npy")
    (got,) = sess.run(["logits"], {"image": x16})
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-2


def test_demo_models_read_no_shapes_at_run_time():
    """No Shape subgraph (constant reshape targets, -1 for the batch): what
    lets ONNX Runtime's CUDA provider run every node (model/tests checks
    the exporter itself)."""
    import onnx

    for name in ("pneumollm-tiny.onnx", "pneumollm-tiny-fp16.onnx"):
        ops = {n.op_type for n in onnx.load(str(MODELS / name)).graph.node}
        assert not ops & {"Shape", "Size", "ConstantOfShape", "Expand"}, (name, ops)
