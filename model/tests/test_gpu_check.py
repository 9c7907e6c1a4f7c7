"""model/gpu_check.py, the script a GPU lease runs once, dry-run here on the
CPU with the tiny model: a broken script would otherwise be found only on
the GPU machine, at the cost of the lease."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "gpu_check.py"


def test_dry_run_exports_waits_for_onnxruntime_measures_and_tabulates(tmp_path):
    marker = tmp_path / "ready"
    marker.write_text("")  # ONNX Runtime "arrived"
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        [sys.executable, str(SCRIPT), "--config", "tiny", "--device", "cpu", "--attention", "ort-mha",
         "--work", str(tmp_path / "work"), "--wait-for", str(marker), "--batches", "1", "2",
         "--rounds", "1", "--seconds", "0.05", "--out", str(out / "gpu_check.json")],
        check=True, timeout=300)
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["last_step"] == "done"
    assert res["attention"] == "ort-mha" and res["torch_attention"] == "sdpa"
    assert res["no_cpu_fallback"] and res["session_providers"] == ["CPUExecutionProvider"]
    assert res["rel_error"] <= 1e-4
    assert set(res["images_per_s"]) == {"1", "2"}
    assert all(t["torch"] > 0 and t["ort_python"] > 0 for t in res["images_per_s"].values())
    table = subprocess.run([sys.executable, str(SCRIPT), "--table", str(out)], check=True,
                           capture_output=True, text=True).stdout
    assert "| 2 |" in table and "Rust execution provider: not run" in table


def test_wait_for_gives_up_with_the_file_named(tmp_path):
    missing = tmp_path / "never"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", "tiny", "--device", "cpu", "--attention", "explicit",
         "--work", str(tmp_path / "work"), "--wait-for", str(missing), "--wait-seconds", "1"],
        capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and f"{missing} did not appear" in r.stderr
