"""Reference preprocessing: a DICOM radiograph to the model input tensor.

Written from the steps in docs/imaging.md (the DICOM grayscale pipeline of
PS3.3 C.11 and the model contract), independently of the Rust code, with
pydicom (decoding), numpy (grey levels) and Pillow (resize). JPEG is
decoded by DCMTK's `dcmdjpeg` (IJG libjpeg, 8 and 12 bits, accurate integer
IDCT, and lossless process 14): the standard lets DCT decoders differ by one
level, pydicom's JPEG plugins either round differently (pylibjpeg) or stop
at 8 bits (Pillow), and its lossless decode is wrong under a point transform.
The parity test compares the Rust output with this.

    python tests/reference/preprocess.py FILE --out tensor.npy [--size 224]
        [--mean 0.485,0.456,0.406] [--std 0.229,0.224,0.225] [--box x0,y0,x1,y1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np
import pydicom
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DCMTK_JPEG = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # DCT
              "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")  # lossless
DCMDJPEG = "/usr/bin/dcmdjpeg"


def read(path: str):
    """The data set of `path`, JPEG decompressed by DCMTK first."""
    ds = pydicom.dcmread(path)
    if str(ds.file_meta.TransferSyntaxUID) not in DCMTK_JPEG:
        return ds
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/native.dcm"
        subprocess.run([DCMDJPEG, path, out], check=True, capture_output=True)
        return pydicom.dcmread(out)


def _signed(v: int, signed: bool, bits: int = 16) -> int:
    """A US-or-SS value read unsigned, as the signed value it stands for."""
    half = 1 << (bits - 1)
    if signed and half <= v < 2 * half:
        return v - 2 * half
    return v


def _lut(item, first_signed: bool):
    """(first_mapped, bits, entries as float64) of a LUT item."""
    desc = [int(v) for v in item.LUTDescriptor]
    n = desc[0] or 65536
    first = _signed(desc[1], first_signed)
    bits = desc[2]
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        if bits <= 8 and len(raw) == n:
            data = np.frombuffer(raw, dtype=np.uint8)
        else:
            data = np.frombuffer(raw, dtype="<u2")[:n]
    else:
        data = np.asarray(raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw])[:n]
    return first, bits, data.astype(np.float64)


def _apply_lut(x: np.ndarray, lut) -> np.ndarray:
    first, _bits, data = lut
    idx = np.clip(np.floor(x) - first, 0, len(data) - 1).astype(np.int64)
    return data[idx]


def grey(ds) -> tuple[np.ndarray, dict]:
    """Steps 1-4: stored values -> [0, 1], bone bright, padding black."""
    info: dict = {}
    if ds.get("SamplesPerPixel", 1) != 1 or ds.PhotometricInterpretation not in (
        "MONOCHROME1",
        "MONOCHROME2",
    ):
        raise ValueError("colour")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame")
    bs = int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1

    # 1. stored values: keep Bits Stored bits, sign-extend when signed.
    arr = ds.pixel_array.astype(np.int64) & ((1 << bs) - 1)
    if signed:
        arr = np.where(arr >= (1 << (bs - 1)), arr - (1 << bs), arr)

    # Pixel padding (stored units), a value or an inclusive range.
    pad = np.zeros(arr.shape, dtype=bool)
    if "PixelPaddingValue" in ds:
        p = _signed(int(ds.PixelPaddingValue), signed)
        lim = ds.get("PixelPaddingRangeLimit")
        lo, hi = (p, p) if lim is None else sorted((p, _signed(int(lim), signed)))
        pad = (arr >= lo) & (arr <= hi)

    # 2. Modality LUT: sequence, else rescale, else identity.
    x = arr.astype(np.float64)
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        m = _apply_lut(x, _lut(ds.ModalityLUTSequence[0], signed))
        info["modality_lut"] = "lut-sequence"
    elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        m = x * slope + intercept
        info["modality_lut"] = "rescale"
    else:
        m = x
        info["modality_lut"] = "identity"

    # 3. VOI: first window (if usable), else first VOI LUT, else min-max.
    def first(v):
        if v is None:
            return None
        return float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v)

    c, w = first(ds.get("WindowCenter")), first(ds.get("WindowWidth"))
    func = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
    if func not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        func = "LINEAR"
    usable = c is not None and w is not None and (w >= 1.0 if func == "LINEAR" else w > 0.0)
    if usable:
        info.update(voi="window", window_center=c, window_width=w, voi_function=func)
        if func == "LINEAR":
            y = np.where(
                m <= c - 0.5 - (w - 1) / 2,
                0.0,
                np.where(m > c - 0.5 + (w - 1) / 2, 1.0, ((m - (c - 0.5)) / max(w - 1, 1e-300) + 0.5)),
            )
        elif func == "LINEAR_EXACT":
            y = np.where(m <= c - w / 2, 0.0, np.where(m > c + w / 2, 1.0, (m - c) / w + 0.5))
        else:
            y = 1.0 / (1.0 + np.exp(-4.0 * (m - c) / w))
    elif "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        lut_signed = signed or float(ds.get("RescaleIntercept", 0.0)) < 0
        lut = _lut(ds.VOILUTSequence[0], lut_signed)
        y = np.clip(_apply_lut(m, lut) / ((1 << lut[1]) - 1), 0.0, 1.0)
        info["voi"] = "voi-lut-sequence"
    else:
        vals = m[~pad]
        lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
        y = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
        info.update(voi="min-max", window_center=(lo + hi) / 2, window_width=hi - lo)

    # 4. MONOCHROME1 or Presentation LUT Shape INVERSE: invert; padding black.
    inverse = ds.PhotometricInterpretation == "MONOCHROME1" or str(
        ds.get("PresentationLUTShape", "")
    ).strip().upper() == "INVERSE"
    if inverse:
        y = 1.0 - y
    y = np.where(pad, 0.0, y)
    info["inverted"] = bool(inverse)

    # 4b. Display shutter (PS3.3 C.7.6.11): what lies outside every shape
    # is shown in the Shutter Presentation Value, else black.
    shown = shutter_mask(ds, y.shape)
    if shown is not None:
        value = int(ds.get("ShutterPresentationValue", 0)) / 65535.0
        y = np.where(shown, y, value)
        info["shuttered_pixels"] = int((~shown).sum())
    return y.astype(np.float32), info


def shutter_mask(ds, shape) -> np.ndarray | None:
    """True where the display shutter shows the image (1-based pixel
    centres; the shapes' intersection); None without a shutter."""
    kinds = [str(k).strip().upper() for k in _values(ds.get("ShutterShape"))]
    if not kinds:
        return None
    rows, cols = np.mgrid[1 : shape[0] + 1, 1 : shape[1] + 1].astype(np.float64)
    shown = np.ones(shape, dtype=bool)
    for kind in kinds:
        if kind == "RECTANGULAR":
            left, right = float(ds.ShutterLeftVerticalEdge), float(ds.ShutterRightVerticalEdge)
            upper, lower = float(ds.ShutterUpperHorizontalEdge), float(ds.ShutterLowerHorizontalEdge)
            shown &= (cols >= left) & (cols <= right) & (rows >= upper) & (rows <= lower)
        elif kind == "CIRCULAR":
            cr, cc = (float(v) for v in ds.CenterOfCircularShutter)
            r = float(ds.RadiusOfCircularShutter)
            shown &= (rows - cr) ** 2 + (cols - cc) ** 2 <= r * r
        elif kind == "POLYGONAL":
            v = [float(x) for x in ds.VerticesOfThePolygonalShutter]
            shown &= _inside_polygon(list(zip(v[0::2], v[1::2])), shape)
    return shown


def _inside_polygon(vertices, shape) -> np.ndarray:
    """Even-odd rule on each row's centre line: an edge crosses row y when
    exactly one of its ends has row <= y; inside between pairs of
    crossings, ends included."""
    inside = np.zeros(shape, dtype=bool)
    cols = np.arange(1, shape[1] + 1, dtype=np.float64)
    for i in range(shape[0]):
        y = i + 1.0
        xs = sorted(
            c0 + (y - r0) * (c1 - c0) / (r1 - r0)
            for (r0, c0), (r1, c1) in zip(vertices, vertices[1:] + vertices[:1])
            if (r0 <= y) != (r1 <= y)
        )
        for a, b in zip(xs[0::2], xs[1::2]):
            inside[i] |= (cols >= a) & (cols <= b)
    return inside


def _values(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]


def preprocess(
    path: str,
    size: tuple[int, int] = (224, 224),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, dict]:
    """The [1, 3, H, W] float32 tensor and what was done."""
    ds = read(path)
    g, info = grey(ds)
    img = Image.fromarray(g)  # mode "F"
    assert img.mode == "F"
    if box is not None:  # 5. crop
        img = img.crop(box)
    img = img.resize(size, Image.BILINEAR)  # 6. resize
    r = np.asarray(img, dtype=np.float32)
    chans = [(r - np.float32(mu)) / np.float32(sd) for mu, sd in zip(mean, std)]  # 7. normalise
    return np.stack(chans)[None].astype(np.float32), info


def _floats(s: str):
    return tuple(float(v) for v in s.split(","))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="224")
    ap.add_argument("--mean", default=",".join(map(str, IMAGENET_MEAN)))
    ap.add_argument("--std", default=",".join(map(str, IMAGENET_STD)))
    ap.add_argument("--box", default=None)
    a = ap.parse_args(argv)
    w, _, h = a.size.partition("x")
    size = (int(w), int(h or w))
    box = tuple(int(v) for v in a.box.split(",")) if a.box else None
    t, info = preprocess(a.file, size, _floats(a.mean), _floats(a.std), box)
    np.save(a.out, t)
    json.dump(info, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
