"""ONNX export of `tiny`: PyTorch vs ONNX Runtime (CPU), the contract, formats."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import export
from conftest import REPO, make_image
from pneumollm import TINY, build_model
from pneumollm.contract import CONTRACT_KEYS, contract_metadata, weights_sha256

TOL = 1e-5


def _meta(model, precision="fp32"):
    return contract_metadata(TINY, model_name="pneumollm-tiny", model_version="0.0.1", weights_kind="random-demo",
                             precision=precision, crop_mode="none", weights_sha=weights_sha256(model.state_dict()))


def _copy(model, attention="explicit"):
    m = build_model(TINY, attention=attention)
    m.load_state_dict(model.state_dict())
    return m


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, tiny_model):
    model = _copy(tiny_model)
    path = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    export.export_onnx(model, path, metadata=_meta(model), precision="fp32")
    return path


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_onnxruntime_matches_pytorch(fp32_onnx, tiny_model, batch):
    x = make_image(batch, seed=10 + batch)
    with torch.no_grad():
        ref = tiny_model(x).numpy()
    got = _session(fp32_onnx).run(["logits"], {"image": x.numpy()})[0]
    assert got.shape == (batch, 2)
    assert np.abs(got - ref).max() <= TOL


def test_graph_interface_and_checker(fp32_onnx):
    onnx.checker.check_model(str(fp32_onnx), full_check=True)
    m = onnx.load(str(fp32_onnx))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "image" and out.name == "logits"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inp) == ["batch", 3, 224, 224] and dims(out) == ["batch", 2]
    assert not fp32_onnx.with_name(fp32_onnx.name + ".data").exists()


def test_contract_in_metadata(fp32_onnx, tiny_model):
    meta = _session(fp32_onnx).get_modelmeta().custom_metadata_map
    assert set(CONTRACT_KEYS) <= set(meta)
    assert meta["pneumo.contract_version"] == "1"
    assert meta["pneumo.weights_kind"] == "random-demo"
    assert meta["pneumo.weights_sha256"] == weights_sha256(tiny_model.state_dict())
    assert json.loads(meta["pneumo.labels"]) == ["pneumoconiosis", "normal"]
    assert json.loads(meta["pneumo.input_shape"]) == ["batch", 3, 224, 224]
    assert json.loads(meta["pneumo.output_shape"]) == ["batch", 2]
    assert json.loads(meta["pneumo.mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["pneumo.std"]) == [0.229, 0.224, 0.225]
    assert float(meta["pneumo.decision_threshold"]) == 0.5
    assert (meta["pneumo.input_dtype"], meta["pneumo.output_dtype"]) == ("float32", "float32")
    assert meta["pneumo.score_function"] == "softmax" and meta["pneumo.output_kind"] == "logits"
    assert meta["pneumo.resize_filter"] == "bilinear-antialias" and meta["pneumo.crop_mode"] == "none"


def test_contract_keys_are_documented():
    doc = (REPO / "docs" / "model-contract.md").read_text()
    for key in CONTRACT_KEYS:
        assert f"`{key}`" in doc, key


@pytest.mark.parametrize("attention", ["sdpa", "ort-mha"])
def test_other_attention_forms_export_and_match(tmp_path, tiny_model, attention):
    model = _copy(tiny_model, attention)
    path = export.export_onnx(model, tmp_path / f"{attention}.onnx", metadata=_meta(model))
    nodes = onnx.load(str(path)).graph.node
    mha = sum(1 for n in nodes if (n.domain, n.op_type) == ("com.microsoft", "MultiHeadAttention"))
    softmax = sum(1 for n in nodes if n.op_type == "Softmax")
    if attention == "ort-mha":  # every attention is the fused operator; one Softmax left: the engine's
        assert (mha, softmax) == (TINY.vit_layers + TINY.llm_layers, 1)
    else:
        assert mha == 0
    x = make_image(2, seed=3)
    with torch.no_grad():
        ref = tiny_model(x).numpy()
    assert np.abs(_session(path).run(["logits"], {"image": x.numpy()})[0] - ref).max() <= TOL


@pytest.mark.parametrize("attention", ["explicit", "ort-mha"])
def test_graph_reads_no_shapes_at_run_time(tmp_path, tiny_model, attention):
    """Every reshape has a constant target (-1 for the batch, configured
    sizes for the rest), so the graph has no Shape subgraph: under ONNX
    Runtime's CUDA provider nothing needs the CPU, and a session with CPU
    fallback disabled can be built. The batch axis stays dynamic."""
    model = _copy(tiny_model, attention)
    path = export.export_onnx(model, tmp_path / f"{attention}.onnx", metadata=_meta(model))
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "Size", "ConstantOfShape", "Expand"}, ops
    for batch in (1, 3):
        x = make_image(batch, seed=batch)
        with torch.no_grad():
            ref = tiny_model(x).numpy()
        assert np.abs(_session(path).run(["logits"], {"image": x.numpy()})[0] - ref).max() <= TOL


def test_fused_attention_fp16_export_runs(tmp_path, tiny_model):
    model = _copy(tiny_model, "ort-mha").set_precision("fp16")
    path = export.export_onnx(model, tmp_path / "mha16.onnx", metadata=_meta(model, "fp16"), precision="fp16")
    x = make_image(2, seed=8)
    with torch.no_grad():
        ref32 = tiny_model(x).numpy()
    got = _session(path).run(["logits"], {"image": x.half().numpy()})[0]
    assert np.abs(got - ref32).max() < 5e-2


def test_fp16_export(tmp_path, tiny_model):
    model = _copy(tiny_model)
    path = export.export_onnx(model.set_precision("fp16"), tmp_path / "tiny16.onnx",
                              metadata=_meta(model.set_precision("fp16"), "fp16"), precision="fp16")
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    sess = _session(path)
    assert sess.get_modelmeta().custom_metadata_map["pneumo.input_dtype"] == "float16"
    x = make_image(2, seed=4)
    with torch.no_grad():
        ref16 = model(x.half()).numpy()
        ref32 = tiny_model(x).numpy()
    got = sess.run(["logits"], {"image": x.half().numpy()})[0]
    assert got.dtype == np.float32
    assert np.abs(got - ref16).max() < 5e-3  # ORT CPU and torch CPU fp16 round differently
    assert np.abs(got - ref32).max() < 5e-2


def _census(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


@pytest.mark.parametrize("attention", ["explicit", "ort-mha"])
def test_fused_folded_export_matches_the_reference_and_leaves_the_model_alone(tmp_path, tiny_model, attention):
    model = _copy(tiny_model, attention)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export.export_onnx(model, tmp_path / "fused.onnx", metadata=_meta(model), fused=True, fold_adapters=True)
    assert not model.fused and model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    ops = _census(path)
    vit, llm = TINY.vit_layers, TINY.llm_layers
    # every residual add meets its norm in one operator: all but the ViT's last block output
    assert ops["SkipLayerNormalization"] == 2 * vit - 1
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * llm  # the last one is the final norm
    assert ops["QuickGelu"] == vit and ops["RotaryEmbedding"] == 2 * llm
    assert ops.get("LayerNormalization") == 2  # ln_pre and the first block's ln_1
    assert ops["Sigmoid"] == llm + 1  # only SiLU: SwiGLU's and the projector's
    # adapters folded: per block, the q/k/v projection(s), out, two MLP matrices; the meta-net,
    # the engine's mix, the projector and the head add 2 + 1 + 2 + 1; explicit attention, 2 each
    attention_matmuls = 2 * (vit + llm) if attention == "explicit" else 0
    assert ops["MatMul"] == 4 * vit + 7 * llm + 6 + attention_matmuls
    assert not set(ops) & {"Shape", "Cast"}
    assert ops.get("Pow") == 1  # plain RMSNorm maths only once: the first LLaMA layer's attention_norm
    (out,) = onnx.load(str(path)).graph.output
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 2]
    stats = [n for n in onnx.load(str(path)).graph.node if n.op_type.startswith("Skip")]
    assert all(n.output[1] == n.output[2] == "" for n in stats)  # mean/inv_std not asked for
    for batch in (1, 3):
        x = make_image(batch, seed=20 + batch)
        with torch.no_grad():
            ref = tiny_model(x).numpy()
        assert np.abs(_session(path).run(["logits"], {"image": x.numpy()})[0] - ref).max() <= TOL


def test_fused_fp16_export_has_no_casts_around_norms(tmp_path, tiny_model):
    model = _copy(tiny_model, "ort-mha").set_precision("fp16")
    path = export.export_onnx(model, tmp_path / "fused16.onnx", metadata=_meta(model, "fp16"), precision="fp16",
                              fused=True, fold_adapters=True)
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if "LayerNormalization" in n.op_type:  # LayerNormalization, Skip(Simplified)LayerNormalization
            assert all(producer[i].op_type != "Cast" for i in n.input if i in producer), n.name
    casts = sum(1 for n in graph.node if n.op_type == "Cast")
    assert casts <= 4 * TINY.llm_layers + 6  # RoPE's fp32 in/out, the input, the fp32 engine and head
    x = make_image(2, seed=9)
    with torch.no_grad():
        ref16 = model(x.half()).float().numpy()
        ref32 = tiny_model(x).numpy()
    got = _session(path).run(["logits"], {"image": x.half().numpy()})[0]
    assert np.abs(got - ref16).max() < 5e-3 and np.abs(got - ref32).max() < 5e-2


def test_cli_fused_folded(tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert export.main(["--config", "tiny", "--random-seed", "3", "--attention", "ort-mha", "--fuse",
                        "--fold-adapters", "--out", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "attention ort-mha, fused, adapters folded" in printed
    assert float(printed.split("max |onnxruntime - torch| = ")[1]) <= TOL
    assert _census(out)["SkipLayerNormalization"] == 2 * TINY.vit_layers - 1


def test_external_data_above_threshold(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD", 0)
    model = _copy(tiny_model)
    path = export.export_onnx(model, tmp_path / "big.onnx", metadata=_meta(model))
    data = tmp_path / "big.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    x = make_image(1, seed=6)
    with torch.no_grad():
        ref = tiny_model(x).numpy()
    assert np.abs(_session(path).run(["logits"], {"image": x.numpy()})[0] - ref).max() <= TOL


def test_cli_requires_weights(capsys):
    with pytest.raises(SystemExit):
        export.main(["--config", "tiny", "--out", "x.onnx"])
    assert "--random-seed" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--opset", "16"], "--opset must be 17"),
    (["--decision-threshold", "1.5"], "--decision-threshold must be a probability"),
    (["--decision-threshold", "nan"], "--decision-threshold must be a probability"),
    (["--model-version", ""], "--model-version must not be empty"),
])
def test_cli_refuses_bad_options_as_usage_errors(capsys, option, message):
    """Said before any loading, as argparse says it (not a traceback)."""
    with pytest.raises(SystemExit) as stop:
        export.main(["--config", "tiny", "--random-seed", "0", "--out", "x.onnx", *option])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_committed_demo_model_is_reproducible(tmp_path):
    """`make demo-model` rebuilds the committed fixture bit for bit."""
    import make_demo

    make_demo.build(tmp_path)
    committed = REPO / "fixtures" / "models"
    for name in ["pneumollm-tiny.onnx", "pneumollm-tiny.inputs.npy", "pneumollm-tiny.expected-logits.npy",
                 "pneumollm-tiny-fp16.onnx", "pneumollm-tiny-fp16.expected-logits.npy"]:
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
    assert (committed / "pneumollm-tiny.onnx").stat().st_size < 5_000_000
