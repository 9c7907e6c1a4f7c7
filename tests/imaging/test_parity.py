"""Parity of `pneumo-node preprocess` with the Python reference
(tests/reference/preprocess.py) over every imaging fixture: max |rust - ref|
on the normalised tensor.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import preprocess as ref  # tests/reference/preprocess.py (put on sys.path by conftest)

SMALL_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "imaging"

TOL = 1e-3
# Refused by the node, each with its own test below.
REFUSED: set[str] = set()

SMALL = sorted(p for p in SMALL_DIR.glob("*.dcm") if p.stem not in REFUSED)
BIG_NAMES = [
    "RG1_UNCI",
    "RG1_J2KR",
    "RG1_J2KI",
    "rg1_implicit",
    "rg1_bigendian",
    "rg1_deflated",
    "rg1_rle",
    "rg1_jpeg_lossless_p14",
    "rg1_jpeg_lossless_sv1",
    "rg1_jpeg_lossless_pt2",
    "rg1_jpegls_lossless",
    "rg1_jpegls_nearlossless",
    "rg1_j2k_lossless",
    "rg1_j2k_lossy",
    "rg1_jpeg_baseline",
    "rg1_jpeg_extended",
    "rg1_jpeg_extended_12bit",
    "rg1_bits8_ow_bigendian",
]


def run_rust(node_bin: str, path: Path, tmp: Path, *extra: str) -> tuple[np.ndarray, dict, np.ndarray]:
    out = tmp / f"{path.stem}.npy"
    grey = tmp / f"{path.stem}.grey.npy"
    r = subprocess.run(
        [node_bin, "preprocess", str(path), "--out", str(out), "--grey-out", str(grey), *extra],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    return np.load(out), report, np.load(grey)


def check(node_bin: str, path: Path, tmp: Path) -> float:
    t_rust, report, grey_rust = run_rust(node_bin, path, tmp)
    t_ref, info = ref.preprocess(str(path))
    assert t_rust.shape == t_ref.shape == (1, 3, 224, 224)
    assert t_rust.dtype == np.float32
    diff = float(np.abs(t_rust - t_ref).max())
    print(f"parity {path.name}: max |rust - ref| = {diff:.3g}")
    assert report["voi"] == info["voi"]
    assert report["modality_lut"] == info["modality_lut"]
    assert report["inverted"] == info["inverted"]
    assert report["shuttered_pixels"] == info.get("shuttered_pixels", 0)
    assert report["crop"]["mode"] == "none"
    grey_ref, _ = ref.grey(ref.read(str(path)))
    assert np.abs(grey_rust - grey_ref).max() <= 1e-6
    assert diff <= TOL
    return diff


@pytest.mark.parametrize("path", SMALL, ids=[p.stem for p in SMALL])
def test_parity_small(node_bin, path, tmp_path):
    check(node_bin, path, tmp_path)


@pytest.mark.parametrize("name", BIG_NAMES)
def test_parity_full_size(node_bin, big_fixtures, name, tmp_path):
    check(node_bin, big_fixtures[name], tmp_path)


def test_lung_box_crop(node_bin, tmp_path):
    path = SMALL_DIR / "rg1s_mono1.dcm"
    box = (31, 17, 201, 190)
    t_rust, report, _ = run_rust(
        node_bin, path, tmp_path, "--crop", "lung-box", "--lung-box", ",".join(map(str, box))
    )
    t_ref, _ = ref.preprocess(str(path), box=box)
    assert np.abs(t_rust - t_ref).max() <= TOL
    assert report["crop"] == {"mode": "lung-box", "box": dict(zip(("x0", "y0", "x1", "y1"), box))}


def test_size_mean_std_come_from_arguments(node_bin, tmp_path):
    path = SMALL_DIR / "rg1s_sigmoid.dcm"
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.15)
    t_rust, report, _ = run_rust(
        node_bin, path, tmp_path, "--size", "96x64", "--mean", "0.5,0.4,0.3", "--std", "0.25,0.2,0.15"
    )
    t_ref, _ = ref.preprocess(str(path), size=(96, 64), mean=mean, std=std)
    assert t_rust.shape == (1, 3, 64, 96)
    assert np.abs(t_rust - t_ref).max() <= TOL
    assert report["output_width"] == 96 and report["output_height"] == 64


def test_f16_output(node_bin, tmp_path):
    path = SMALL_DIR / "rg1s_mono1.dcm"
    t_rust, report, _ = run_rust(node_bin, path, tmp_path, "--dtype", "f16")
    assert t_rust.dtype == np.float16 and report["dtype"] == "f16"
    t_ref, _ = ref.preprocess(str(path))
    assert np.abs(t_rust.astype(np.float32) - t_ref).max() <= 3e-3


def run_refused(node_bin: str, path: Path, tmp: Path) -> str:
    """stderr of a preprocess that must fail and write nothing."""
    out = tmp / "x.npy"
    r = subprocess.run([node_bin, "preprocess", str(path), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode != 0, r.stdout
    assert not out.exists()
    return r.stderr


def test_refused_syntax_off_the_list(node_bin, tmp_path):
    """JPEG 2000 Part 2 (multi-component): stored and routed by the node,
    never analysed; the refusal names the syntax."""
    import pydicom

    ds = pydicom.dcmread(SMALL_DIR / "rg1s_j2k_lossless.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    ds.save_as(tmp_path / "part2.dcm")
    err = run_refused(node_bin, tmp_path / "part2.dcm", tmp_path)
    assert "1.2.840.10008.1.2.4.92" in err and "cannot be decoded" in err


def _with_jpeg(tmp: Path, name: str, codestream: bytes, **attrs) -> Path:
    """The 12-bit JPEG Extended fixture with another codestream (and
    attributes), in one fragment padded to even length."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(SMALL_DIR / "rg1s_jpeg_extended_12bit.dcm")
    ds.PixelData = encapsulate([codestream + b"\0" * (len(codestream) % 2)])
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(tmp / name)
    return tmp / name


def _codestream(path: Path) -> bytes:
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_truncated_lossy_jpeg_is_a_decode_error(node_bin, tmp_path):
    """Half a codestream: libjpeg-turbo would fill the rest with grey and
    warn; the node treats the warning as an error and analyses nothing."""
    full = _codestream(SMALL_DIR / "rg1s_jpeg_extended_12bit.dcm")
    err = run_refused(node_bin, _with_jpeg(tmp_path, "cut.dcm", full[: len(full) // 2]), tmp_path)
    assert "1.2.840.10008.1.2.4.51" in err and "libjpeg-turbo" in err


def test_lossy_jpeg_larger_than_its_data_set_is_refused(node_bin, tmp_path):
    full = _codestream(SMALL_DIR / "rg1s_jpeg_extended_12bit.dcm")
    path = _with_jpeg(tmp_path, "rows.dcm", full)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows = ds.Rows + 8
    ds.save_as(path)
    err = run_refused(node_bin, path, tmp_path)
    assert "the JPEG codestream is" in err and f"the data set says {ds.Columns}x{ds.Rows}" in err


def test_colour_jpeg_in_a_grey_data_set_is_refused(node_bin, tmp_path):
    import io

    import pydicom
    from PIL import Image

    ds = pydicom.dcmread(SMALL_DIR / "rg1s_jpeg_baseline.dcm")
    buf = io.BytesIO()
    Image.new("RGB", (ds.Columns, ds.Rows), (200, 30, 30)).save(buf, format="JPEG")
    err = run_refused(node_bin, _with_jpeg(tmp_path, "rgb.dcm", buf.getvalue(), BitsAllocated=8, BitsStored=8, HighBit=7), tmp_path)
    assert "colour components" in err
