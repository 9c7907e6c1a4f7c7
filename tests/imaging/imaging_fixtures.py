"""Imaging test fixtures, all derived from RG1 (pydicom-data, a CR chest image,
1955x1841, 15 bits stored, MONOCHROME1).

- ``make_small(outdir)``: the committed set under fixtures/imaging/: RG1
  downscaled 8x (block mean) with one attribute variant or one transfer
  syntax per file (see fixtures/imaging/README.md).
- ``make_big(outdir)``: full-size RG1 in every transfer syntax, generated at
  test time into var/test-fixtures/imaging/ (not committed).

Encoders: DCMTK (dcmconv, dcmcrle, dcmcjpeg, dcmcjpls, called by full path)
and pydicom with pylibjpeg-openjpeg for JPEG 2000.

    python tests/imaging/imaging_fixtures.py small fixtures/imaging
    python tests/imaging/imaging_fixtures.py big var/test-fixtures/imaging
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    generate_uid,
)

DCMCONV = "/usr/bin/dcmconv"
DCMCRLE = "/usr/bin/dcmcrle"
DCMCJPEG = "/usr/bin/dcmcjpeg"
DCMCJPLS = "/usr/bin/dcmcjpls"

# Transfer syntax variants: name -> how to make it from an Explicit VR LE file.
TS_VARIANTS = {
    "implicit": [DCMCONV, "+ti"],
    "bigendian": [DCMCONV, "+tb"],
    "deflated": [DCMCONV, "+td"],
    "rle": [DCMCRLE],
    "jpeg_lossless_p14": [DCMCJPEG, "+el"],
    "jpeg_lossless_sv1": [DCMCJPEG, "+e1"],
    # process 14 with a point transform (predictor 7, Pt 2): lossy, and what
    # a decoder that predicts from shifted samples gets wrong
    "jpeg_lossless_pt2": [DCMCJPEG, "+el", "+sv", "7", "+pt", "2"],
    "jpegls_lossless": [DCMCJPLS, "+el"],
    "jpegls_nearlossless": [DCMCJPLS, "+en", "+md", "3"],
    "j2k_lossless": "j2k-lossless",
    "j2k_lossy": "j2k-lossy",
}
# For 8-bit data only.
TS_VARIANTS_8BIT = {
    "jpeg_baseline": [DCMCJPEG, "+eb"],
    "jpeg_extended": [DCMCJPEG, "+ee"],
}


def rg1_path() -> str:
    return get_testdata_file("RG1_UNCI.dcm")


def _fresh(ds: Dataset) -> Dataset:
    ds = copy.deepcopy(ds)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _set_pixels(ds: Dataset, arr: np.ndarray, bits_stored: int, signed: bool = False) -> None:
    bits_alloc = 8 if arr.dtype.itemsize == 1 else 16
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds["PixelData"].VR = "OB" if bits_alloc == 8 else "OW"
    ds.PixelData = arr.tobytes()


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def downscale(arr: np.ndarray, f: int) -> np.ndarray:
    h, w = (arr.shape[0] // f) * f, (arr.shape[1] // f) * f
    a = arr[:h, :w].astype(np.float64).reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return np.rint(a).astype(arr.dtype)


def encode(src: Path, dst: Path, how) -> Path:
    """One transfer-syntax variant of an Explicit VR LE file."""
    if isinstance(how, list):
        subprocess.run([*how, str(src), str(dst)], check=True, capture_output=True)
        return dst
    ds = pydicom.dcmread(src)
    if how == "j2k-lossless":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    elif how == "j2k-lossy":
        ds.compress(JPEG2000, encoding_plugin="pylibjpeg", j2k_cr=[15])
    else:
        raise ValueError(how)
    return _save(ds, dst)


def _lut_item(first: int, bits: int, data: np.ndarray) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data) % 65536, first, bits]
    item["LUTDescriptor"].VR = "US"
    item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())
    return item


def attribute_variants(base: Dataset) -> dict[str, Dataset]:
    """Variants of a 15-bit MONOCHROME1 image, each exercising one step."""
    arr = base.pixel_array.astype(np.int64)
    out: dict[str, Dataset] = {}

    def variant(name: str) -> Dataset:
        ds = _fresh(base)
        ds.SeriesDescription = f"imaging fixture {name}"
        out[name] = ds
        return ds

    variant("mono1")

    ds = variant("mono2")
    ds.PhotometricInterpretation = "MONOCHROME2"
    _set_pixels(ds, (32767 - arr).astype(np.uint16), 15)
    ds.WindowCenter, ds.WindowWidth = 32767 - 15000, 30000

    ds = variant("mono2_inverse")
    ds.PhotometricInterpretation = "MONOCHROME2"
    _set_pixels(ds, arr.astype(np.uint16), 15)
    ds.PresentationLUTShape = "INVERSE"

    ds = variant("sigmoid")
    ds.VOILUTFunction = "SIGMOID"
    ds.WindowCenter, ds.WindowWidth = 12000, 9000

    ds = variant("linear_exact")
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.WindowCenter, ds.WindowWidth = 12000, 9000

    ds = variant("two_windows")
    ds.WindowCenter, ds.WindowWidth = [11000, 15000], [7000, 30000]

    ds = variant("voi_lut_seq")
    del ds.WindowCenter, ds.WindowWidth
    curve = 65535 * (np.linspace(0, 1, 4096) ** 0.6)
    ds.VOILUTSequence = Sequence([_lut_item(2000, 16, np.rint(curve)[::-1])])

    ds = variant("no_voi")
    del ds.WindowCenter, ds.WindowWidth

    ds = variant("rescale")
    _set_pixels(ds, (arr // 2).astype(np.uint16), 14)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -1024, "US"
    ds.WindowCenter, ds.WindowWidth = 15000 - 1024, 30000

    ds = variant("modality_lut_seq")
    a12 = (arr >> 3).astype(np.uint16)
    _set_pixels(ds, a12, 12)
    mcurve = np.rint(3 * np.arange(4096) + 0.0002 * np.arange(4096) ** 2)
    ds.ModalityLUTSequence = Sequence([_lut_item(0, 16, mcurve)])
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    ds.WindowCenter, ds.WindowWidth = 9000, 14000

    padded = arr.copy()
    b = max(2, arr.shape[0] // 20)
    padded[:b, :] = 32767
    padded[-b:, :] = 32767
    padded[:, :b] = 32767
    ds = variant("padding")
    _set_pixels(ds, padded.astype(np.uint16), 15)
    ds.PixelPaddingValue = 32767
    ds["PixelPaddingValue"].VR = "US"
    ds = variant("padding_no_voi")
    _set_pixels(ds, padded.astype(np.uint16), 15)
    ds.PixelPaddingValue = 32767
    ds["PixelPaddingValue"].VR = "US"
    del ds.WindowCenter, ds.WindowWidth
    ds = variant("padding_range")
    rng = arr.copy()
    rng[:b, :] = 0
    rng[-b:, :] = 5
    _set_pixels(ds, rng.astype(np.uint16), 15)
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 0, 10
    ds["PixelPaddingValue"].VR = ds["PixelPaddingRangeLimit"].VR = "US"
    del ds.WindowCenter, ds.WindowWidth

    ds = variant("signed16")
    _set_pixels(ds, (arr - 16384).astype(np.int16), 16, signed=True)
    ds.WindowCenter, ds.WindowWidth = 15000 - 16384, 30000

    ds = variant("signed12_padding")
    s12 = (arr >> 3) - 2048
    s12[:b, :] = -2048
    _set_pixels(ds, s12.astype(np.int16), 12, signed=True)
    ds.PixelPaddingValue = -2048
    ds["PixelPaddingValue"].VR = "SS"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    del ds.WindowCenter, ds.WindowWidth

    ds = variant("bits8")
    _set_pixels(ds, (arr >> 7).astype(np.uint8), 8)
    ds.WindowCenter, ds.WindowWidth = 117, 234

    ds = variant("bits12")
    _set_pixels(ds, (arr >> 3).astype(np.uint16), 12)
    ds.WindowCenter, ds.WindowWidth = 1875, 3750

    # Display shutters: what a viewer shows (the collimated border outside
    # them is painted black, or in the Shutter Presentation Value).
    rows, cols = arr.shape
    ds = variant("shutter_rectangular")
    ds.ShutterShape = "RECTANGULAR"
    ds.ShutterLeftVerticalEdge, ds.ShutterRightVerticalEdge = cols // 8, cols - cols // 6
    ds.ShutterUpperHorizontalEdge, ds.ShutterLowerHorizontalEdge = rows // 10, rows - rows // 7
    ds = variant("shutter_circular_rectangular")
    ds.ShutterShape = ["CIRCULAR", "RECTANGULAR"]
    ds.CenterOfCircularShutter = [rows // 2, cols // 2 + 3]
    ds.RadiusOfCircularShutter = min(rows, cols) * 9 // 20
    ds.ShutterLeftVerticalEdge, ds.ShutterRightVerticalEdge = 1, cols - cols // 5
    ds.ShutterUpperHorizontalEdge, ds.ShutterLowerHorizontalEdge = 1, rows
    ds.ShutterPresentationValue = 20000
    ds = variant("shutter_polygonal")
    ds.ShutterShape = "POLYGONAL"
    ds.VerticesOfThePolygonalShutter = [5, cols // 2, rows // 2, cols - 4, rows - 3, cols * 3 // 4,
                                        rows - 3, cols // 4, rows // 2 + 1, 6]
    return out


def make_small(outdir: str | Path, factor: int = 8) -> list[Path]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rg1 = pydicom.dcmread(rg1_path())
    base = _fresh(rg1)
    _set_pixels(base, downscale(rg1.pixel_array, factor), 15)
    files = []
    for name, ds in attribute_variants(base).items():
        files.append(_save(ds, outdir / f"rg1s_{name}.dcm"))
    src = outdir / "rg1s_mono1.dcm"
    for name, how in TS_VARIANTS.items():
        files.append(encode(src, outdir / f"rg1s_{name}.dcm", how))
    for name, how in TS_VARIANTS_8BIT.items():
        files.append(encode(outdir / "rg1s_bits8.dcm", outdir / f"rg1s_{name}.dcm", how))
    files += make_htj2k(src, outdir, "rg1s")
    # 12-bit lossy JPEG (process 4), what CR/DX send as JPEG Extended.
    files.append(encode(outdir / "rg1s_bits12.dcm", outdir / "rg1s_jpeg_extended_12bit.dcm", [DCMCJPEG, "+ee"]))
    return files


OJPH_COMPRESS = "/usr/bin/ojph_compress"  # Debian package openjph-tools


def make_htj2k(src: Path, outdir: Path, stem: str) -> list[Path]:
    """HTJ2K lossless (RPCL) and lossy variants with OpenJPH, when installed."""
    import tempfile

    from pydicom.encaps import encapsulate

    if not Path(OJPH_COMPRESS).exists():
        return []
    ds0 = pydicom.dcmread(src)
    arr = ds0.pixel_array
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        pgm = Path(tmp) / "in.pgm"
        maxval = (1 << int(ds0.BitsStored)) - 1
        header = f"P5\n{arr.shape[1]} {arr.shape[0]}\n{maxval}\n".encode()
        pgm.write_bytes(header + arr.astype(">u2").tobytes())
        for name, ts, opts in (
            ("htj2k_lossless", "1.2.840.10008.1.2.4.202", ["-reversible", "true"]),
            ("htj2k_lossy", "1.2.840.10008.1.2.4.203", ["-qstep", "0.002"]),
        ):
            j2c = Path(tmp) / f"{name}.j2c"
            subprocess.run([OJPH_COMPRESS, "-i", str(pgm), "-o", str(j2c), *opts], check=True, capture_output=True)
            ds = _fresh(ds0)
            ds.file_meta.TransferSyntaxUID = ts
            ds.PixelData = encapsulate([j2c.read_bytes()])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            if name.endswith("lossy"):
                ds.LossyImageCompression = "01"
            files.append(_save(ds, outdir / f"{stem}_{name}.dcm"))
    return files


def make_big(outdir: str | Path) -> list[Path]:
    """Full-size RG1 in each transfer syntax; skips files already present."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    src = Path(rg1_path())
    files = []
    for name, how in TS_VARIANTS.items():
        dst = outdir / f"rg1_{name}.dcm"
        if not dst.exists():
            tmp = dst.with_suffix(".tmp")
            encode(src, tmp, how)
            os.replace(tmp, dst)
        files.append(dst)
    def reduced(bits: int, window: tuple[int, int]) -> Path:
        """RG1 (15-bit) shifted down to `bits` bits, with a window to match."""
        dst = outdir / f"rg1_bits{bits}.dcm"
        if not dst.exists():
            rg1 = pydicom.dcmread(src)
            ds = _fresh(rg1)
            _set_pixels(ds, (rg1.pixel_array >> (15 - bits)).astype(np.uint8 if bits <= 8 else np.uint16), bits)
            ds.WindowCenter, ds.WindowWidth = window
            _save(ds, dst)
        return dst

    # 8-bit data for Baseline and 8-bit Extended, 12-bit for process 4.
    variants = [(reduced(8, (117, 234)), name, how) for name, how in TS_VARIANTS_8BIT.items()]
    variants.append((reduced(12, (1875, 3750)), "jpeg_extended_12bit", [DCMCJPEG, "+ee"]))
    for source, name, how in variants:
        dst = outdir / f"rg1_{name}.dcm"
        if not dst.exists():
            encode(source, dst, how)
        files.append(dst)
    # 8-bit samples in OW words, big endian (PS3.5 8.1.1: the first sample
    # in each word's low-order byte; a BE file swaps the bytes, not the order).
    dst = outdir / "rg1_bits8_ow_bigendian.dcm"
    if not dst.exists():
        ds = pydicom.dcmread(reduced(8, (117, 234)))
        ds["PixelData"].VR = "OW"
        ow = _save(ds, outdir / "rg1_bits8_ow.tmp")
        encode(ow, dst, [DCMCONV, "+tb"])
        ow.unlink()
    files.append(dst)
    return files


if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    made = make_small(out) if kind == "small" else make_big(out)
    for f in made:
        print(f, f.stat().st_size)
