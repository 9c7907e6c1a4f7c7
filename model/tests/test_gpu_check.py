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
    assert res["form"] == "fused"  # the default: fused operators, adapters folded
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


def test_kernel_summary_classes_and_ranks_per_run():
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu_check import summarise_kernels

    kernels = [("sm90_xmma_gemm_f16f16_f32", 3000.0), ("fmha_cutlassF_f16_aligned", 1000.0),
               ("void onnxruntime::cuda::LayerNormKernel<half>", 400.0),
               ("void vectorized_elementwise_kernel<Mul>", 600.0), ("Memcpy HtoD", 200.0)]
    s = summarise_kernels(kernels, runs=2, top=2)
    assert s["gpu_ms_per_run"] == 2.6
    assert s["by_class_ms_per_run"] == {"matmul": 1.5, "attention": 0.5, "elementwise/other": 0.3,
                                        "norm": 0.2, "copy": 0.1}
    assert s["top_kernels_ms_per_run"] == [["sm90_xmma_gemm_f16f16_f32", 1.5], ["fmha_cutlassF_f16_aligned", 0.5]]


def test_compare_forms_dry_run_times_both_graphs_against_pytorch(tmp_path):
    out = tmp_path / "forms.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--compare-forms", "--config", "tiny", "--device", "cpu",
         "--work", str(tmp_path / "work"), "--batches", "1", "2", "--rounds", "1", "--seconds", "0.05",
         "--out", str(out)], check=True, timeout=300, capture_output=True, text=True)
    res = json.loads(out.read_text())
    assert res["last_step"] == "done" and set(res["forms"]) == {"fused", "plain"}
    fused, plain = res["forms"]["fused"], res["forms"]["plain"]
    assert fused["nodes"] < plain["nodes"] / 2  # 317 against 687 for tiny
    assert fused["rel_error"] <= 1e-5 and plain["rel_error"] <= 1e-5
    assert all(set(t) >= {"torch", "fused", "plain"} for t in res["images_per_s"].values())
    assert "| 2 |" in r.stdout and "fused / plain" in r.stdout
