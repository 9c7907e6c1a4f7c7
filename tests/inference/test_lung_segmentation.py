"""A classifier whose contract says crop `lung-box`, end to end through
`pneumo-node infer`: the box comes from the lung segmentation model
(`inference.lung_segmentation_model`), and without one the run fails naming
that key. The lung-box classifier is the demo model with
`pneumo.crop_mode` changed, written into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from nodetest import ROOT, demo_model_with, node_binary, run_dcmtk

MODELS = ROOT / "fixtures" / "models"
SEG = MODELS / "lung-seg-synthetic.onnx"
IMAGE = ROOT / "fixtures" / "imaging" / "rg1s_mono2.dcm"


@pytest.fixture(scope="module")
def lung_box_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lung-box") / "pneumollm-tiny-lung-box.onnx"
    return demo_model_with(out, crop_mode="lung-box")


def infer(model: Path, seg: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PNEUMO__LOG__LEVEL"] = "warn"
    env["PNEUMO__INFERENCE__MODEL"] = str(model)
    env.pop("PNEUMO__INFERENCE__LUNG_SEGMENTATION_MODEL", None)
    if seg:
        env["PNEUMO__INFERENCE__LUNG_SEGMENTATION_MODEL"] = seg
    env["PNEUMO__INFERENCE__EXECUTION_PROVIDER"] = "cpu"
    return subprocess.run(
        [str(node_binary()), "infer", str(IMAGE), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_infer_crops_to_the_box_of_the_segmentation_mask(lung_box_model):
    r = infer(lung_box_model, str(SEG), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    pre = out["preprocess"]
    crop = pre["crop"]
    assert crop["mode"] == "lung-box", crop
    b = crop["box"]
    w, h = pre["columns"], pre["rows"]
    assert 0 <= b["x0"] < b["x1"] <= w and 0 <= b["y0"] < b["y1"] <= h, (b, w, h)
    assert (b["x0"], b["y0"], b["x1"], b["y1"]) != (0, 0, w, h), "the box is the whole image"
    # The synthetic model's window is 16..240 of 256: the box lies inside it.
    assert b["x0"] >= w * 16 // 256 - 1 and b["x1"] <= -(-w * 240 // 256) + 1, (b, w)
    assert b["y0"] >= h * 16 // 256 - 1 and b["y1"] <= -(-h * 240 // 256) + 1, (b, h)
    p = out["prediction"]
    assert len(p["probabilities"]) == 2


def test_infer_without_a_segmentation_model_names_the_key(lung_box_model):
    r = infer(lung_box_model, "")
    assert r.returncode != 0
    assert "inference.lung_segmentation_model" in r.stderr, r.stderr
    assert "lung-box" in r.stderr, r.stderr


def test_a_lung_box_for_a_model_that_reads_the_whole_image_is_refused():
    r = infer(MODELS / "pneumollm-tiny.onnx", "", "--lung-box", "20,30,200,220")
    assert r.returncode == 1 and "crop none" in r.stderr and "--lung-box" in r.stderr, r.stderr


def test_a_segmentation_model_without_its_contract_is_refused(lung_box_model):
    r = infer(lung_box_model, str(MODELS / "pneumollm-tiny.onnx"))
    assert r.returncode != 0
    assert "pneumo.seg.contract_version" in r.stderr, r.stderr


def test_the_synthetic_model_is_what_its_script_makes():
    spec = importlib.util.spec_from_file_location("make_synthetic_seg", MODELS / "make_synthetic_seg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert SEG.read_bytes() == mod.build().SerializeToString(), "run fixtures/models/make_synthetic_seg.py"


def segmentation_model_with_window(out: Path, first: int, past: int, centre: float = 0.5) -> Path:
    """The synthetic segmentation model with its window on rows and columns
    first..past (and its grey threshold at `centre`)."""
    import numpy as np
    from onnx import numpy_helper

    spec = importlib.util.spec_from_file_location("make_synthetic_seg", MODELS / "make_synthetic_seg.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.build()
    window = np.zeros(mod.SIZE, dtype=np.float32)
    window[first:past] = 1.0
    replace = {"centre": np.array(centre, dtype=np.float32),
               "rows": window.reshape(1, 1, mod.SIZE, 1), "cols": window.reshape(1, 1, 1, mod.SIZE)}
    for i, init in enumerate(m.graph.initializer):
        if init.name in replace:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(replace[init.name], init.name))
    out.write_bytes(m.SerializeToString())
    return out


def speck_segmentation_model(out: Path) -> Path:
    """A mask of one pixel, whatever the image (every grey value is "lung"
    inside a window of one pixel): a segmentation that found a speck."""
    return segmentation_model_with_window(out, 128, 129, centre=-1.0)


def test_a_lung_box_too_small_to_hold_lungs_is_refused(lung_box_model, tmp_path):
    """A segmentation that found a speck gave a 2x3-pixel box: the crop,
    stretched to the model's size, was a flat tensor, and the job a finding."""
    r = infer(lung_box_model, str(speck_segmentation_model(tmp_path / "speck.onnx")))
    assert r.returncode == 1 and "is too small to hold the lungs" in r.stderr, (r.stdout, r.stderr)
    r = infer(lung_box_model, "", "--lung-box", "100,100,101,101")
    assert r.returncode == 1 and "is too small to hold the lungs" in r.stderr, r.stderr


def job_outcome(node, timeout: float = 60.0):
    """(state, reason, result) of the one job, once it is reported or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.db() as c:
            row = c.execute("SELECT state, reason, result_json FROM jobs").fetchone()
        if row and row[0] in ("reported", "delivered", "failed"):
            return row[0], row[1], json.loads(row[2]) if row[2] else None
        time.sleep(0.2)
    raise TimeoutError(node.log())


@pytest.mark.parametrize("with_seg", [True, False, "speck"], ids=["with-segmentation", "without", "speck"])
def test_the_pipeline_uses_the_segmentation_model(node_factory, rg1_copies, lung_box_model, with_seg, tmp_path):
    settings = {"inference__model": lung_box_model, "inference__execution_provider": "cpu"}
    if with_seg == "speck":
        settings["inference__lung_segmentation_model"] = speck_segmentation_model(tmp_path / "speck.onnx")
    elif with_seg:
        settings["inference__lung_segmentation_model"] = SEG
    node = node_factory(**settings).start()
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    state, reason, result = job_outcome(node)
    if with_seg == "speck":
        assert state == "failed" and "imaging: lung-box-too-small: lung box" in reason, (state, reason)
        assert node.echo_ok()
    elif with_seg:
        assert state == "reported", (state, reason)
        pre = result["preprocessing"]
        crop = pre["crop"]
        b = crop["box"]
        w, h = pre["columns"], pre["rows"]
        assert crop["mode"] == "lung-box", crop
        assert 0 <= b["x0"] < b["x1"] <= w and 0 <= b["y0"] < b["y1"] <= h, (b, w, h)
        assert (b["x0"], b["y0"], b["x1"], b["y1"]) != (0, 0, w, h), "the box is the whole image"
    else:
        assert state == "failed", (state, reason)
        assert "inference.lung_segmentation_model" in reason, reason
        assert "inference.lung_segmentation_model is not set" in node.log()


def test_another_segmentation_model_gives_another_report(node_factory, rg1_copies, lung_box_model, tmp_path):
    """The classifier's input cropped to another segmentation model's box
    gives another result: after a re-analysis the API said Present while
    the report the hospital held (its UID derived from the classifier's
    contract only, so kept) still said Absent."""
    import pydicom
    import requests

    node = node_factory(inference__model=lung_box_model, inference__execution_provider="cpu",
                        inference__lung_segmentation_model=SEG).start()
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    assert job_outcome(node)[0] == "reported"

    def reports():
        with node.db() as c:
            return dict(c.execute("SELECT sop_instance_uid, path FROM instances "
                                  "WHERE generated = 1 AND modality = 'SR'").fetchall())

    first = reports()
    _, ready = node.http("/readyz")
    first_sha = ready["model"]["lung_segmentation"]["sha256"]
    node.stop()
    other = segmentation_model_with_window(tmp_path / "narrow.onnx", 64, 192)
    node.settings["inference__lung_segmentation_model"] = other
    node.start()
    _, ready = node.http("/readyz")
    assert ready["model"]["lung_segmentation"]["sha256"] != first_sha
    uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry",
                      params={"state": "reported", "sop_instance_uid": uid}, timeout=10)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60
    while len(reports()) < 2:
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    (new_uid,) = set(reports()) - set(first)
    sr = pydicom.dcmread(node.data_dir / reports()[new_uid])
    params = [str(e.value) for e in sr.iterall() if e.tag == 0x0040A160]
    assert f"lung_segmentation_sha256={ready['model']['lung_segmentation']['sha256']}" in params, params


def test_a_segmentation_model_whose_output_is_never_finite_is_refused_when_loaded(lung_box_model, tmp_path):
    """NaN everywhere: the node started ready and sent every image a notice
    saying its lungs could not be found, blaming the image for the model."""
    nan_seg = segmentation_model_with_window(tmp_path / "nan.onnx", 16, 240, centre=float("nan"))
    r = infer(lung_box_model, str(nan_seg))
    assert r.returncode == 1 and "is not finite for a ramp nor for a flat grey image" in r.stderr, r.stderr
