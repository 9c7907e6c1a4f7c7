"""The model's files changed on disk under a running node: ONNX Runtime
maps the external-data file, so bytes copied over it changed the weights of
the running session (a mix of two models, reported under the first one's
contract). The node stops analysing, says so in /readyz and keeps the jobs
for the restart that loads the model anew. A moved stamp with the same bytes
(chmod, touch, a deployment copying the same file) is no change: it stopped
analyses too until the files were hashed at load and compared."""

import os
import time

import onnx
import requests

from nodetest import ROOT, run_dcmtk
from test_routing_orthanc import wait_until


def flip_last_byte(path):
    """The file's last byte's lowest bit flipped, in place (the same inode,
    as a write to a mapped file is)."""
    changed = bytearray(path.read_bytes())
    changed[-1] ^= 1
    with open(path, "r+b") as f:
        f.write(changed)


def tiny_model_with_external_data(folder):
    """The tiny model saved in `folder` with its weights in model.onnx.data
    (the file ONNX Runtime maps): (model path, data path)."""
    model = onnx.load(str(ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"))
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return path, folder / "model.onnx.data"


def test_a_model_file_changed_under_the_running_node_stops_analyses_until_a_restart(
        node_factory, rg1_copies, tmp_path):
    path, data = tiny_model_with_external_data(tmp_path / "v1")
    node = node_factory(inference__model=path).start()
    ready = lambda: requests.get(f"http://127.0.0.1:{node.http_port}/readyz")  # noqa: E731
    reported = lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'")  # noqa: E731
    assert ready().status_code == 200, ready().text
    wait_until(lambda: "model files hashed" in node.log(), timeout=60)
    # each file's hash, as sha256sum prints it, to check against a release's list
    import hashlib
    assert f"model.onnx.data={hashlib.sha256(data.read_bytes()).hexdigest()}" in node.log()
    first, second, third = rg1_copies("UNCI", 3)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    wait_until(lambda: reported() == 1, timeout=60)

    # What operations do to a model's files without changing them: chmod,
    # touch, and the same bytes written over the mapped file (`cp` in place).
    time.sleep(0.05)
    os.chmod(data, 0o640)
    path.touch()
    weights = data.read_bytes()
    with open(data, "r+b") as f:
        f.write(weights)
    r = ready()
    assert r.status_code == 200, r.text
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, second)
    wait_until(lambda: reported() == 2, timeout=60)

    # One weight's lowest bit flipped in place: other weights under the
    # running session.
    flip_last_byte(data)
    r = ready()
    assert r.status_code == 503, r.text
    (reason,) = [x for x in r.json()["reasons"] if "changed on disk" in x]
    assert "model.onnx.data" in reason and "no longer those loaded" in reason, reason
    assert "restarted" in reason, reason

    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, third)
    wait_until(lambda: "the model cannot run; the job waits" in node.log(), timeout=60)
    with node.db() as c:
        states = [s for (s,) in c.execute("SELECT state FROM jobs ORDER BY id")]
    assert states[:2] == ["reported", "reported"] and states[2] not in ("reported", "failed"), states

    node.stop()
    node.start()
    assert ready().status_code == 200, ready().text
    wait_until(lambda: reported() == 3, timeout=90)


def test_a_lung_segmentation_model_changed_under_the_running_node_stops_analyses(
        node_factory, rg1_copies, tmp_path):
    """The lung segmentation model (for a `lung-box` crop) was not stamped:
    replaced on disk, the node ran the old one on and said nothing."""
    import shutil

    from nodetest import demo_model_with

    seg = tmp_path / "seg.onnx"
    shutil.copy(ROOT / "fixtures" / "models" / "lung-seg-synthetic.onnx", seg)
    node = node_factory(inference__model=demo_model_with(tmp_path / "lung-box.onnx", crop_mode="lung-box"),
                        inference__lung_segmentation_model=seg).start()
    ready = lambda: requests.get(f"http://127.0.0.1:{node.http_port}/readyz")  # noqa: E731
    assert ready().status_code == 200, ready().text
    first, second = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)

    # The same file deployed again (a copy renamed over it): no change.
    replacement = tmp_path / "seg.new"
    shutil.copy(seg, replacement)
    replacement.rename(seg)
    assert ready().status_code == 200, ready().text
    # Another one: a byte of its weights changed.
    changed = bytearray(seg.read_bytes())
    changed[-1] ^= 1
    replacement.write_bytes(changed)
    replacement.rename(seg)
    r = ready()
    assert r.status_code == 503, r.text
    (reason,) = [x for x in r.json()["reasons"] if "changed on disk" in x]
    assert reason.startswith("lung segmentation:") and "seg.onnx" in reason, reason

    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, second)
    wait_until(lambda: "the model cannot run; the job waits" in node.log(), timeout=60)
    with node.db() as c:
        (state, reason) = c.execute("SELECT state, reason FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
    assert state not in ("reported", "failed") and "lung segmentation" in reason, (state, reason)

    node.stop()
    node.start()
    assert ready().status_code == 200, ready().text
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 2, timeout=90)


def test_the_loaded_weights_written_through_another_name_stop_analyses(node_factory, rg1_copies, tmp_path):
    """An identical copy renamed over the weights passed (the same bytes at
    the path) while the session still mapped the old file; written then
    through a hard link (a snapshot's), it fed the running model other
    weights, reported under its name, /readyz 200."""
    path, data = tiny_model_with_external_data(tmp_path / "v1")
    snapshot = tmp_path / "snapshot.data"
    os.link(data, snapshot)
    node = node_factory(inference__model=path).start()
    ready = lambda: requests.get(f"http://127.0.0.1:{node.http_port}/readyz")  # noqa: E731
    wait_until(lambda: "model files hashed" in node.log(), timeout=60)
    time.sleep(0.05)
    copy = tmp_path / "v1" / ".model.onnx.data.new"
    copy.write_bytes(data.read_bytes())
    copy.rename(data)
    assert ready().status_code == 200, ready().text
    flip_last_byte(snapshot)
    r = ready()
    assert r.status_code == 503, r.text
    (reason,) = [x for x in r.json()["reasons"] if "changed on disk" in x]
    assert "still open, was written" in reason, reason
    (image,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
    wait_until(lambda: "the model cannot run; the job waits" in node.log(), timeout=60)
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 0
