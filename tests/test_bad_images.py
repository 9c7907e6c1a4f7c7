"""Radiographs the node accepts and stores but cannot analyse, sent over
DICOM like any other: each is kept, its job fails with the imaging
refusal's reason, and the node goes on analysing the next good image.
"""

from __future__ import annotations

import struct

import numpy as np
import pydicom
from nodetest import ROOT, node, node_factory, run_dcmtk  # noqa: F401 (fixtures)
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid
from test_routing_orthanc import wait_until

FIXTURES = ROOT / "fixtures" / "imaging"


def _fresh(path, **attrs) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    uid = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def bad_radiographs(tmp) -> dict[str, tuple[str, str, str]]:
    """name -> (file, storescu flag proposing its syntax, expected reason)."""
    out = {}

    def save(name: str, ds: pydicom.Dataset, propose: str, reason: str) -> None:
        path = tmp / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[name] = (str(path), propose, reason)

    jpeg = _fresh(FIXTURES / "rg1s_jpeg_extended_12bit.dcm")
    stream = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    cut = stream[: len(stream) // 2]
    jpeg.PixelData = encapsulate([cut + b"\0" * (len(cut) % 2)])
    save("truncated_jpeg", jpeg, "-xx", "imaging: decode: decoding pixel data (1.2.840.10008.1.2.4.51) failed: libjpeg-turbo")

    # dicom-rs's RLE decoder panicked on a truncated segment ("imaging task
    # failed: task panicked"): a decode error like any other, found short
    # before the decoder runs.
    rle = _fresh(FIXTURES / "rg1s_rle.dcm")
    stream = next(generate_frames(rle.PixelData, number_of_frames=1))
    cut = stream[: len(stream) // 2]
    rle.PixelData = encapsulate([cut + b"\0" * (len(cut) % 2)])
    save("truncated_rle", rle, "-xr",
         "imaging: decode: decoding pixel data (1.2.840.10008.1.2.5) failed: the RLE frame decodes to")

    # A JPEG-LS codestream larger than Rows says: analysed (and forwarded)
    # cropped to the header's size, as if whole.
    taller = _fresh(FIXTURES / "rg1s_jpegls_lossless.dcm")
    taller.Rows = taller.Rows - 10
    save("codestream_larger_than_header", taller, "-xt",
         "imaging: decode: decoding pixel data (1.2.840.10008.1.2.4.80) failed: the JPEG-LS"
         f" codestream is 230x244, the data set says 230x{taller.Rows}")

    # Codestreams of the header's byte count but another shape: the
    # registry's decoders filled Rows x Columns from them, and a transposed,
    # sheared or cut image was analysed as a chest.
    def reshaped(name, fixture, propose, syntax, rows, cols, codec_name):
        ds = _fresh(FIXTURES / fixture)
        ds.Rows, ds.Columns = rows, cols
        save(name, ds, propose, f"imaging: decode: decoding pixel data ({syntax}) failed: the {codec_name}")

    reshaped("j2k_transposed", "rg1s_j2k_lossless.dcm", "-xv", "1.2.840.10008.1.2.4.90", 230, 244,
             "JPEG 2000 codestream is 230x244, the data set says 244x230")
    reshaped("j2k_wider", "rg1s_j2k_lossy.dcm", "-xw", "1.2.840.10008.1.2.4.91", 232, 242,
             "JPEG 2000 codestream is 230x244, the data set says 242x232")
    reshaped("jpegls_transposed", "rg1s_jpegls_lossless.dcm", "-xt", "1.2.840.10008.1.2.4.80",
             230, 244, "JPEG-LS codestream is 230x244, the data set says 244x230")
    reshaped("rle_shorter", "rg1s_rle.dcm", "-xr", "1.2.840.10008.1.2.5", 234, 230,
             "RLE frame decodes to 56120 bytes a segment, the data set's 230x234 need 53820")

    # Codestreams holding more bits than the data set says (PS3.5 8.2): cut
    # to Bits Stored, or decoded into Bits Allocated, they were noise, and
    # got a confident finding (and, decompressed for a PACS, were sent so).
    narrow = _fresh(FIXTURES / "rg1s_j2k_lossless.dcm", BitsStored=12, HighBit=11)  # samples up to 26169
    save("j2k_more_bits_than_bits_stored", narrow, "-xv",
         "imaging: invalid-attribute: attribute BitsStored has an unusable value: 12: ")
    lossy = _fresh(FIXTURES / "rg1s_j2k_lossy.dcm", BitsStored=12, HighBit=11)
    save("lossy_j2k_more_bits_than_bits_stored", lossy, "-xw",
         "imaging: invalid-attribute: attribute BitsStored has an unusable value: 12: ")
    byte = _fresh(FIXTURES / "rg1s_jpegls_lossless.dcm", BitsAllocated=8, BitsStored=8, HighBit=7)
    save("jpegls_more_bits_than_bits_allocated", byte, "-xt",
         "imaging: decode: decoding pixel data (1.2.840.10008.1.2.4.80) failed: the JPEG-LS codestream "
         "has 16-bit samples, more than Bits Allocated 8")
    base = FIXTURES / "rg1s_mono2.dcm"
    rgb = _fresh(base, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
                 BitsAllocated=8, BitsStored=8, HighBit=7)
    rgb.PixelData = np.zeros((rgb.Rows, rgb.Columns, 3), np.uint8).tobytes()
    rgb["PixelData"].VR = "OB"
    save("colour", rgb, "-xe", "imaging: colour")

    # Type 1 attributes missing or empty: a signed image read as unsigned
    # (its negative samples the brightest) was analysed.
    unsigned_guess = _fresh(base)
    del unsigned_guess.PixelRepresentation
    save("no_pixel_representation", unsigned_guess, "-xe",
         "imaging: missing-attribute: required attribute PixelRepresentation is missing or empty")
    empty = _fresh(base)
    empty["PixelRepresentation"].value = None
    save("empty_pixel_representation", empty, "-xe",
         "imaging: missing-attribute: required attribute PixelRepresentation is missing or empty")
    no_bits_stored = _fresh(base)
    del no_bits_stored.BitsStored
    save("no_bits_stored", no_bits_stored, "-xe",
         "imaging: missing-attribute: required attribute BitsStored is missing or empty")

    two = _fresh(base, NumberOfFrames=2)
    two.PixelData = two.PixelData * 2
    save("multi_frame", two, "-xe", "imaging: multi-frame")

    short = _fresh(base)
    short.Rows = short.Rows + 10
    save("short_pixel_data", short, "-xe", "imaging: pixel-data-length")

    none = _fresh(base)
    del none.PixelData
    save("no_pixel_data", none, "-xe", "imaging: no-pixel-data")

    floats = _fresh(base)
    del floats.PixelData
    floats.FloatPixelData = np.zeros(floats.Rows * floats.Columns, np.float32).tobytes()
    save("float_pixel_data", floats, "-xe",
         "imaging: float-pixel-data: no Pixel Data: the data set holds Float Pixel Data (7FE0,0008)")

    # Samples stored up to High Bit 15 (bits 4-15), as DCMTK reads them:
    # taken from the low 12 bits they were noise, and analysed.
    high = _fresh(FIXTURES / "rg1s_bits12.dcm", HighBit=15)
    high.PixelData = (high.pixel_array.astype(np.uint16) << 4).tobytes()
    save("samples_at_high_bit", high, "-xe",
         "imaging: invalid-attribute: attribute HighBit has an unusable value: 15 with Bits Stored 12")

    # Nothing to read: each got the demo model's "present" for a flat tensor.
    black = _fresh(base)
    black.PixelData = np.zeros(black.Rows * black.Columns, np.uint16).tobytes()
    save("all_black", black, "-xe", "imaging: no-image-content: no image content: every pixel is 0")
    padded = _fresh(base)
    padded.add_new(0x00280120, "US", 100)  # Pixel Padding Value
    padded.PixelData = np.full(padded.Rows * padded.Columns, 100, np.uint16).tobytes()
    save("all_padding", padded, "-xe", "imaging: no-image-content")
    for name, (rows, cols) in {"one_pixel": (1, 1), "sliver": (3, 500)}.items():
        tiny = _fresh(base, Rows=rows, Columns=cols)
        tiny.PixelData = np.arange(rows * cols, dtype=np.uint16).tobytes()
        save(name, tiny, "-xe",
             f"imaging: too-small: image too small to analyse: {cols}x{rows}, at least 64 pixels each way")

    # A display shutter that shows a speck (its values written in another
    # grid) or nothing: the speck was analysed as a whole chest.
    speck = _fresh(base, ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=100,
                   ShutterRightVerticalEdge=104, ShutterUpperHorizontalEdge=100,
                   ShutterLowerHorizontalEdge=104)
    save("shutter_shows_a_speck", speck, "-xe",
         "imaging: shutter-hides-image: the display shutter (RECTANGULAR) shows only 5x5 pixels")
    hidden = _fresh(base, ShutterShape=["RECTANGULAR", "CIRCULAR"], ShutterLeftVerticalEdge=1,
                    ShutterRightVerticalEdge=50, ShutterUpperHorizontalEdge=1, ShutterLowerHorizontalEdge=50,
                    CenterOfCircularShutter=[200, 200], RadiusOfCircularShutter=20)
    save("shutter_shows_nothing", hidden, "-xe",
         "imaging: shutter-hides-image: the display shutter (RECTANGULAR\\CIRCULAR) shows nothing")

    # A compressed file of a few megabytes claiming a hundred million
    # pixels: decoded (and its grey image made) before anything looked at
    # its size; up to 65535x65535 is 8 GB.
    side = 10_001
    huge = _fresh(base, Rows=side, Columns=side, BitsAllocated=8, BitsStored=8, HighBit=7,
                  PixelRepresentation=0)
    runs, rest = divmod(side * side, 128)
    segment = b"\x81\x00" * runs + bytes([rest - 1]) + b"\x01" * rest  # replicate runs, one literal
    huge.PixelData = encapsulate([struct.pack("<16I", 1, 64, *[0] * 14) + segment])
    huge.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.5"
    save("too_large", huge, "-xr", "imaging: too-large: image too large to analyse: 10001x10001, at most 100000000 pixels")

    wide = _fresh(base, BitsAllocated=32, BitsStored=32, HighBit=31)
    wide.PixelData = np.zeros(wide.Rows * wide.Columns, np.uint32).tobytes()
    save("bits_allocated_32", wide, "-xe", "imaging: bits-allocated")
    return out


def test_bad_radiographs_fail_their_jobs_and_the_node_keeps_analysing(node, tmp_path):
    bad = bad_radiographs(tmp_path)
    for path, propose, _ in bad.values():
        run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)
    good = _fresh(FIXTURES / "rg1s_mono1.dcm")
    good.save_as(tmp_path / "good.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "good.dcm")

    def job(path):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        with node.db() as c:
            return c.execute(
                "SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id"
                " WHERE i.sop_instance_uid = ?",
                (uid,),
            ).fetchone()

    wait_until(lambda: (job(tmp_path / "good.dcm") or ("",))[0] == "reported", timeout=60)
    for name, (path, _, reason) in bad.items():
        wait_until(lambda: (job(path) or ("",))[0] == "failed", timeout=30)
        state, why = job(path)
        assert why.startswith(reason), f"{name}: {why}"
        # Kept exactly as received, whatever the analysis made of it.
        ds = pydicom.dcmread(path)
        assert pydicom.dcmread(node.stored_path(ds)).SOPInstanceUID == ds.SOPInstanceUID
    assert node.alive()
    # The API gives an operator the same reasons.
    status, body = node.http("/api/jobs?state=failed")
    assert status == 200
    reasons = {j["sop_instance_uid"]: j["reason"] for j in body["jobs"]}
    for path, _, reason in bad.values():
        assert reasons[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID].startswith(reason)
    # The log's "analysis failed" line, one an operator must act on, names
    # the image (it gave a job number only, which the API cannot look up).
    failed = [line for line in node.log().splitlines() if "analysis failed" in line]
    assert len(failed) >= len(bad) and all("sop_instance_uid=" in line for line in failed), failed[:3]


def test_a_high_bit_off_by_one_with_samples_in_the_low_bits_is_analysed_as_they_are(tmp_path):
    """Writers that get High Bit wrong mostly keep their samples in the low
    Bits Stored bits: read so, such a file gives the same answer as the
    correct one (only samples above those bits are refused)."""
    import json
    import subprocess

    from nodetest import node_binary

    def p_positive(path):
        r = subprocess.run([str(node_binary()), "infer", str(path), "--json"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT, check=True)
        return json.loads(r.stdout)["prediction"]["p_positive"]

    right = FIXTURES / "rg1s_bits12.dcm"
    for high_bit in (12, 15):
        off = _fresh(right, HighBit=high_bit)
        off.save_as(tmp_path / f"hb{high_bit}.dcm", enforce_file_format=True)
        assert p_positive(tmp_path / f"hb{high_bit}.dcm") == p_positive(right)


def test_an_overlay_above_bits_stored_reads_alike_in_rle_and_native(tmp_path):
    """An old CR unit keeps an overlay in bit 15 above Bits Stored 15: the
    native image was analysed (the bit masked, as viewers do), the same
    pixels RLE-compressed refused as "bits set above the low 15" (RLE
    codes the words as stored, overlay included)."""
    import json
    import subprocess

    from nodetest import node_binary
    from pydicom.uid import RLELossless

    ds = _fresh(FIXTURES / "rg1s_mono2.dcm")
    pixels = ds.pixel_array.copy()
    pixels[20:60, 20:120] |= 0x8000
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    ds.BitsStored, ds.HighBit = 16, 15  # (pydicom checks the words against Bits Stored)
    ds.compress(RLELossless, pixels)
    ds.BitsStored, ds.HighBit = 15, 14
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)

    def logits(name):
        r = subprocess.run([str(node_binary()), "infer", str(tmp_path / name), "--json"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 0, (name, r.stderr)
        return json.loads(r.stdout)["prediction"]["logits"]

    assert logits("rle.dcm") == logits("native.dcm")


def test_infer_refuses_an_image_with_nothing_to_read_as_the_pipeline_does(tmp_path):
    """`pneumo-node infer` calls the pipeline's refusal: a blank or tiny
    image exits non-zero with the same reason, and prints no probability."""
    import subprocess

    from nodetest import node_binary

    for name in ("all_black", "one_pixel", "sliver"):
        path, _, reason = bad_radiographs(tmp_path)[name]
        r = subprocess.run([str(node_binary()), "infer", path, "--json"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode != 0, f"{name}: {r.stdout}"
        assert reason.removeprefix("imaging: ").split(": ", 1)[1] in r.stderr, f"{name}: {r.stderr}"
        assert "p_positive" not in r.stdout


def test_one_rle_frame_in_several_fragments_is_analysed_as_the_whole_frame(tmp_path):
    """Some senders cut a frame into fragments (against PS3.5 A.4.2 for
    RLE); the registry's decoder took the first fragment as the frame, and
    the job failed ("Invalid RLE segment range")."""
    import json
    import struct
    import subprocess

    from nodetest import node_binary

    ds = _fresh(FIXTURES / "rg1s_rle.dcm")
    stream = next(generate_frames(ds.PixelData, number_of_frames=1))
    pieces = [stream[i:i + 4096] for i in range(0, len(stream), 4096)]
    assert len(pieces) > 1 and all(len(p) % 2 == 0 for p in pieces)
    item = lambda b: b"\xfe\xff\x00\xe0" + struct.pack("<I", len(b)) + b  # noqa: E731
    ds.PixelData = item(b"") + b"".join(item(p) for p in pieces) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    ds.save_as(tmp_path / "fragments.dcm", enforce_file_format=True)

    def p_positive(path):
        r = subprocess.run([str(node_binary()), "infer", str(path), "--json"], capture_output=True,
                           text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["prediction"]["p_positive"]

    assert p_positive(tmp_path / "fragments.dcm") == p_positive(FIXTURES / "rg1s_rle.dcm")
