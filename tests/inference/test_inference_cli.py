"""`pneumo-node infer` and `pneumo-node model info` end to end: the Rust
logits equal Python onnxruntime's on the same tensors, the contract printed
equals the model's metadata, and the demo model says so everywhere."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nodetest import ROOT, node_binary

MODEL = ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"
IMAGES = ROOT / "fixtures" / "imaging"
TOL = 1e-5
DEMO = "DEMO MODEL - NOT FOR DIAGNOSIS"


def node(*args, env: dict | None = None, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e["PNEUMO__LOG__LEVEL"] = "warn"
    e.update(env or {})
    return subprocess.run(
        [str(node_binary()), *map(str, args)], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout
    )


@pytest.fixture(scope="module")
def session():
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@pytest.mark.parametrize("name", ["rg1s_mono2.dcm", "rg1s_mono1.dcm", "rg1s_j2k_lossless.dcm", "rg1s_rescale.dcm"])
def test_infer_equals_python_onnxruntime_on_the_same_tensor(tmp_path, session, name):
    dcm = IMAGES / name
    npy = tmp_path / "t.npy"
    r = node("preprocess", dcm, "--out", npy)
    assert r.returncode == 0, r.stderr
    x = np.load(npy)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    (want,) = session.run(["logits"], {"image": x})

    r = node("infer", dcm, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    p = out["prediction"]
    got = np.array(p["logits"], dtype=np.float32)
    assert np.abs(got - want[0]).max() <= TOL, (got, want)
    probs = np.array(p["probabilities"])
    assert np.abs(probs - softmax(want[0].astype(np.float64))).max() <= TOL
    assert p["labels"] == ["pneumoconiosis", "normal"]
    assert p["p_positive"] == p["probabilities"][0]
    assert p["positive"] == (p["p_positive"] >= p["threshold"])
    assert p["execution_provider"] == "cpu"  # the CPU wheel; auto falls back
    assert p["model"]["name"] == "pneumollm-tiny" and p["model"]["weights_kind"] == "random-demo"
    meta = session.get_modelmeta().custom_metadata_map
    assert p["model"]["weights_sha256"] == meta["pneumo.weights_sha256"]
    assert p["warning"] == DEMO
    assert out["preprocess"]["output_width"] == 224


def test_preprocess_takes_its_spec_from_a_model(tmp_path):
    """`--model` makes the tensor the model's contract asks for (an
    engineer used to copy size, mean, std and dtype by hand)."""
    dcm = IMAGES / "rg1s_mono2.dcm"
    fp16 = ROOT / "fixtures" / "models" / "pneumollm-tiny-fp16.onnx"
    by_model, by_hand = tmp_path / "model.npy", tmp_path / "hand.npy"
    r = node("preprocess", dcm, "--model", fp16, "--out", by_model)
    assert r.returncode == 0, r.stderr
    assert node("preprocess", dcm, "--dtype", "f16", "--out", by_hand).returncode == 0
    a, b = np.load(by_model), np.load(by_hand)
    assert a.dtype == np.float16 and a.shape == (1, 3, 224, 224)
    assert np.array_equal(a, b)
    r = node("preprocess", dcm, "--model", fp16, "--size", "256")
    assert r.returncode != 0 and "cannot be used with" in r.stderr, r.stderr


def test_preprocess_writes_what_it_makes_for_this_account_only(tmp_path):
    """`preprocess --grey-out` wrote the radiograph at full resolution
    world-readable (0644) under the usual umask 0022."""
    out, grey = tmp_path / "t.npy", tmp_path / "g.npy"
    r = subprocess.run(["sh", "-c", f'umask 022 && exec "$0" "$@"', str(node_binary()), "preprocess",
                        str(IMAGES / "rg1s_mono2.dcm"), "--out", str(out), "--grey-out", str(grey)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    for f in (out, grey):
        assert f.stat().st_mode & 0o007 == 0, (f, oct(f.stat().st_mode))


def test_infer_names_a_file_it_cannot_read_in_store_s_words(tmp_path):
    """A text file was "Could not read from file", a cut one "Could not
    read data set token", and only after the model had loaded."""
    text, cut = tmp_path / "text.dcm", tmp_path / "cut.dcm"
    text.write_text("not an image")
    cut.write_bytes((IMAGES / "rg1s_mono2.dcm").read_bytes()[:3000])
    for path, said in ((text, "not a DICOM Part-10 file"), (tmp_path / "none.dcm", "cannot open: No such file")):
        r = node("infer", path, "--model", tmp_path / "no-model.onnx")  # the file is looked at first
        assert r.returncode == 1 and f"reading {path}: {said}" in r.stderr, r.stderr
    r = node("infer", cut)
    assert r.returncode == 1 and f"reading {cut}: its data set cannot be read (cut short?)" in r.stderr, r.stderr


def test_infer_text_output_says_demo_decision_and_provider():
    r = node("infer", IMAGES / "rg1s_mono2.dcm")
    assert r.returncode == 0, r.stderr
    assert DEMO in r.stdout
    assert "execution provider  cpu" in r.stdout
    assert "P(pneumoconiosis" in r.stdout and "decision" in r.stdout
    # and the log says it at load
    assert DEMO in r.stderr


def test_model_option_and_configuration_key_choose_the_model(tmp_path):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(MODEL.read_bytes())
    r = node("infer", IMAGES / "rg1s_mono2.dcm", "--json", "--model", copy)
    assert r.returncode == 0, r.stderr
    r2 = node("infer", IMAGES / "rg1s_mono2.dcm", "--json", env={"PNEUMO__INFERENCE__MODEL": str(copy)})
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r.stdout)["prediction"] == json.loads(r2.stdout)["prediction"]
    r3 = node("infer", IMAGES / "rg1s_mono2.dcm", env={"PNEUMO__INFERENCE__MODEL": str(tmp_path / "none.onnx")})
    assert r3.returncode == 1 and "does not exist" in r3.stderr


def test_default_model_and_library_are_found_from_another_directory(tmp_path):
    r = node("model", "info", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pneumollm-tiny" in r.stdout and DEMO in r.stdout


def test_model_info_prints_the_contract(session):
    r = node("model", "info", MODEL, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    meta = session.get_modelmeta().custom_metadata_map
    c = info["contract"]
    assert c["model_name"] == meta["pneumo.model_name"]
    assert c["model_version"] == meta["pneumo.model_version"]
    assert c["weights_kind"] == meta["pneumo.weights_kind"]
    assert c["weights_sha256"] == meta["pneumo.weights_sha256"]
    assert c["input_name"] == meta["pneumo.input_name"]
    assert c["input_shape"] == json.loads(meta["pneumo.input_shape"])
    assert c["output_shape"] == json.loads(meta["pneumo.output_shape"])
    assert c["input_dtype"] == meta["pneumo.input_dtype"]
    assert c["labels"] == json.loads(meta["pneumo.labels"])
    assert c["positive_label"] == meta["pneumo.positive_label"]
    assert c["decision_threshold"] == float(meta["pneumo.decision_threshold"])
    assert c["input_size"] == int(meta["pneumo.input_size"])
    # as written in the model, not widened from f32 (0.48500001430511475)
    assert c["mean"] == json.loads(meta["pneumo.mean"]) == info["preprocess"]["mean"]
    assert c["std"] == json.loads(meta["pneumo.std"])
    assert c["resize_filter"] == meta["pneumo.resize_filter"]
    assert c["crop_mode"] == meta["pneumo.crop_mode"]
    assert info["preprocess"]["width"] == 224 and info["preprocess"]["crop"] == "none"
    assert info["warning"] == DEMO
    assert info["onnxruntime"]["version"] == ort.__version__

    text = node("model", "info", MODEL)
    assert text.returncode == 0 and DEMO in text.stdout and meta["pneumo.weights_sha256"] in text.stdout


def test_model_info_does_not_hand_a_models_control_characters_to_the_terminal(tmp_path):
    """A model named with escape sequences (a clear screen, a colour) drove
    the operator's terminal through `model info`, and went into its
    reports as written."""
    from nodetest import demo_model_with

    model = demo_model_with(tmp_path / "m.onnx", model_name="pneumo\x1b[2J\x1b[31mred\r", model_version="1\x07")
    text = node("model", "info", model)
    # refused (the name goes into every report too), and said escaped
    assert text.returncode == 1, text.stdout
    assert "\x1b" not in text.stderr and "\r" not in text.stderr, repr(text.stderr)
    assert "pneumo.model_name" in text.stderr and "holds a control or text-direction character" in text.stderr


@pytest.mark.parametrize("weights", ["deleted", "truncated"])
def test_model_info_never_reads_the_external_weights(tmp_path, weights):
    """The model saved with every weight in an external-data file (as the
    13.5 GB full model is): `model info` reads the contract from the small
    .onnx alone, so it still works once the .data file is gone or cut short,
    while `infer`, which needs the weights, fails with a clear error."""
    onnx_path = tmp_path / "tiny-external.onnx"
    data_path = tmp_path / "tiny-external.onnx.data"
    onnx.save_model(
        onnx.load(str(MODEL)),
        str(onnx_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path.name,
        size_threshold=0,
    )
    assert data_path.stat().st_size > onnx_path.stat().st_size
    tensors = ROOT / "fixtures" / "models" / "pneumollm-tiny.inputs.npy"
    expected = np.load(ROOT / "fixtures" / "models" / "pneumollm-tiny.expected-logits.npy")
    # With its weights, the copy is the demo model.
    r = node("infer", "--tensor", tensors, "--model", onnx_path, "--json")
    assert r.returncode == 0, r.stderr
    rust = np.array([p["logits"] for p in json.loads(r.stdout)["predictions"]], dtype=np.float32)
    assert np.abs(rust - expected).max() <= TOL

    if weights == "deleted":
        data_path.unlink()
    else:
        data_path.write_bytes(data_path.read_bytes()[:1000])

    r = node("model", "info", onnx_path, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    reference = json.loads(node("model", "info", MODEL, "--json").stdout)
    assert info["contract"] == reference["contract"]
    assert info["path"] == str(onnx_path)
    text = node("model", "info", onnx_path)
    assert text.returncode == 0 and DEMO in text.stdout and "pneumollm-tiny" in text.stdout

    r = node("infer", "--tensor", tensors, "--model", onnx_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "panicked" not in r.stderr, r.stderr
    assert "cannot load model" in r.stderr and str(onnx_path) in r.stderr, r.stderr


def test_committed_inputs_rust_equals_python_and_expected(session):
    inputs = ROOT / "fixtures" / "models" / "pneumollm-tiny.inputs.npy"
    expected = np.load(ROOT / "fixtures" / "models" / "pneumollm-tiny.expected-logits.npy")
    (python,) = session.run(["logits"], {"image": np.load(inputs)})
    r = node("infer", "--tensor", inputs, "--json")
    assert r.returncode == 0, r.stderr
    preds = json.loads(r.stdout)["predictions"]
    rust = np.array([p["logits"] for p in preds], dtype=np.float32)
    assert rust.shape == (2, 2)
    assert np.abs(rust - python).max() <= TOL, (rust, python)
    assert np.abs(rust - expected).max() <= TOL, (rust, expected)
    assert all(p["warning"] == DEMO for p in preds)


def test_f16_tensor_file_is_accepted(tmp_path):
    x = np.load(ROOT / "fixtures" / "models" / "pneumollm-tiny.inputs.npy")
    f16 = tmp_path / "x16.npy"
    np.save(f16, x.astype(np.float16))
    r = node("infer", "--tensor", f16, "--json")
    assert r.returncode == 0, r.stderr
    expected = np.load(ROOT / "fixtures" / "models" / "pneumollm-tiny.expected-logits.npy")
    rust = np.array([p["logits"] for p in json.loads(r.stdout)["predictions"]], dtype=np.float32)
    assert np.abs(rust - expected).max() < 0.05  # fp16 rounding of the input only


def test_a_tensor_file_without_images_is_an_error(tmp_path):
    empty = tmp_path / "none.npy"
    np.save(empty, np.zeros((0, 3, 224, 224), np.float32))
    for json_flag in ([], ["--json"]):
        r = node("infer", "--tensor", empty, *json_flag)
        assert r.returncode == 1 and "holds no image" in r.stderr, (r.stdout, r.stderr)


def test_an_fp16_model_gets_the_radiograph_in_float16(tmp_path):
    """The fp16 export (input float16, as for CUDA): `infer` feeds it the
    preprocessed radiograph rounded to float16, and its logits equal Python
    onnxruntime's on that same float16 tensor."""
    fp16 = ROOT / "fixtures" / "models" / "pneumollm-tiny-fp16.onnx"
    dcm = IMAGES / "rg1s_mono1.dcm"
    npy = tmp_path / "t.npy"
    assert node("preprocess", dcm, "--out", npy).returncode == 0
    sess = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    (want,) = sess.run(["logits"], {"image": np.load(npy).astype(np.float16)})
    r = node("infer", dcm, "--json", "--model", fp16)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)["prediction"]
    assert np.abs(np.array(p["logits"], dtype=np.float32) - want[0]).max() <= TOL
    assert p["probabilities"][0] == pytest.approx(softmax(want[0].astype(np.float64))[0], abs=1e-5)


def test_printing_into_a_closed_pipe_ends_quietly():
    """`pneumo-node check-config | head -1`: the reader goes away after one
    line; the node ends without a panic (it used to print 'failed printing
    to stdout: Broken pipe' and a backtrace)."""
    for args in ("check-config", "model info"):
        r = subprocess.run(["bash", "-c", f'"{node_binary()}" {args} | head -1 >/dev/null; echo "${{PIPESTATUS[0]}}"'],
                           capture_output=True, text=True, timeout=60)
        assert "panicked" not in r.stderr, r.stderr
        assert r.stdout.strip() in ("0", "141"), (args, r.stdout, r.stderr)


def test_every_graph_optimization_level_gives_the_same_result():
    """`inference.graph_optimization` lowers ONNX Runtime's optimisation
    (its layout optimiser killed the process on a float16 ViT export):
    each level loads the model and gives its logits; an unknown one is
    refused naming the key."""
    logits = {}
    for level in ("all", "extended", "basic", "disabled"):
        r = node("infer", IMAGES / "rg1s_mono2.dcm", "--json", env={"PNEUMO__INFERENCE__GRAPH_OPTIMIZATION": level})
        assert r.returncode == 0, (level, r.stderr)
        logits[level] = json.loads(r.stdout)["prediction"]["logits"]
    for level, z in logits.items():
        assert np.allclose(z, logits["all"], atol=1e-5), (level, z, logits["all"])
    r = node("infer", IMAGES / "rg1s_mono2.dcm", env={"PNEUMO__INFERENCE__GRAPH_OPTIMIZATION": "fastest"})
    assert r.returncode != 0 and "graph_optimization" in r.stderr, r.stderr


def test_infer_never_prints_a_probability_that_reads_on_the_other_side_of_the_threshold(tmp_path):
    """Six decimals printed "P = 0.500000 < threshold 0.5": the probability
    is printed in full where its six decimals would compare with the
    threshold otherwise than it does."""
    from nodetest import demo_model_with

    image = IMAGES / "rg1s_mono2.dcm"
    p = json.loads(node("infer", image, "--json").stdout)["prediction"]["p_positive"]
    six = float(f"{p:.6f}")
    assert six != p
    threshold = (p + six) / 2  # between the value and its six decimals
    model = demo_model_with(tmp_path / "m.onnx", decision_threshold=repr(threshold))
    r = node("infer", image, "--model", model)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("decision"))
    assert f"= {p!r} " in line or f"= {p} " in line, (line, p)
