"""Compressed originals forwarded to a destination that takes only
uncompressed data (DCMTK's storescp by default, like many an older PACS or
teaching archive): decompressed on the way, every frame, with the pixels an
independent decoder (pydicom with pylibjpeg, pyjpegls) gets from the
original, the same SOP Instance UID and attributes, and a lossy image
marked as such. What cannot be decompressed (colour, a codec this build
lacks, a Number of Frames the fragments cannot hold) is parked with its reason while the rest is delivered."""

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from nodetest import ROOT, node_factory, run_dcmtk  # noqa: F401 (fixtures)
from test_pynetdicom_peers import node_cli
from test_routing_orthanc import node_config, wait_until
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)

FIXTURES = ROOT / "fixtures" / "imaging"
LOSSLESS = ["rle", "jpeg_lossless_p14", "jpeg_lossless_sv1", "jpegls_lossless",
            "j2k_lossless", "htj2k_lossless"]
LOSSY = {"jpeg_baseline": "ISO_10918_1", "jpeg_extended": "ISO_10918_1",
         "jpeg_extended_12bit": "ISO_10918_1", "jpegls_nearlossless": "ISO_14495_1",
         "j2k_lossy": "ISO_15444_1", "htj2k_lossy": "ISO_15444_15"}
# The DCT syntaxes: libjpeg-turbo's accurate IDCT and libjpeg's may round
# a sample differently; every other codec decodes exactly.
DCT = {"jpeg_baseline", "jpeg_extended", "jpeg_extended_12bit"}

LOSSY_TAGS = ("LossyImageCompression", "LossyImageCompressionMethod", "LossyImageCompressionRatio")


def forwarding_node(node_factory, tmp_path, port):
    config = node_config(tmp_path / "node.toml",
                         [{"name": "old-pacs", "ae_title": "STORESCP", "port": port}],
                         [{"destinations": ["old-pacs"]}])
    return node_factory().start(config_file=config)


def fresh_copy(src, dst, drop=()):
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword in drop:
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(dst, enforce_file_format=True)
    return ds


def received_by_uid(out):
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}


def outbox_rows(node):
    """{SOP Instance UID: (state, last status)} of the outbox."""
    with node.db() as c:
        return {uid: (state, status) for uid, state, status in c.execute(
            "SELECT i.sop_instance_uid, o.state, o.last_status FROM outbox o JOIN instances i ON i.id = o.instance_id")}


def outbox_states(node):
    return {uid: state for uid, (state, _) in outbox_rows(node).items()}


def dciodvfy_errors(path):
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")}


def test_every_compressed_syntax_is_decompressed_for_a_destination_without_it(node_factory, storescp, tmp_path):
    port, out = storescp
    node = forwarding_node(node_factory, tmp_path, port)
    sources = {}
    for name in LOSSLESS + list(LOSSY):
        # Without the lossy attributes: the node must add them for a lossy syntax.
        dst = tmp_path / f"{name}.dcm"
        sources[name] = (dst, fresh_copy(FIXTURES / f"rg1s_{name}.dcm", dst, drop=LOSSY_TAGS))
    r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", *(p for p, _ in sources.values()))
    assert r.returncode == 0, r.stdout + r.stderr
    uids = {ds.SOPInstanceUID for _, ds in sources.values()}
    wait_until(lambda: uids <= {u for u, s in outbox_states(node).items() if s == "sent"},
               timeout=90, what=f"deliveries: {outbox_states(node)}")
    got = received_by_uid(out)
    for name, (path, sent) in sources.items():
        received = pydicom.dcmread(got[sent.SOPInstanceUID])
        assert received.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, "1.2.840.10008.1.2"), name
        expected, decoded = sent.pixel_array.astype(int), received.pixel_array.astype(int)
        assert decoded.shape == expected.shape, name
        assert np.abs(decoded - expected).max() <= (1 if name in DCT else 0), name
        if name in LOSSY:
            assert received.LossyImageCompression == "01", name
            assert received.LossyImageCompressionMethod == LOSSY[name], name
        else:
            assert "LossyImageCompression" not in received, name
        # Every other attribute as the modality sent it.
        others = [e.keyword for e in sent if e.keyword not in LOSSY_TAGS + ("PixelData",)]
        for keyword in others:
            assert received.get(keyword) == sent.get(keyword), (name, keyword)
        assert dciodvfy_errors(got[sent.SOPInstanceUID]) <= dciodvfy_errors(path), name


def multi_frame(path, frames=3, rows=64, cols=48):
    """A Multi-frame Grayscale Word SC image, 12 bits stored, different
    content in each frame, Explicit VR Little Endian."""
    from pydicom.dataset import FileDataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Frames^Three", "MF1", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(7)
    pixels = np.stack([(rng.integers(0, 400, (rows, cols)) + 1200 * f).astype(np.uint16) for f in range(frames)])
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return pixels


@pytest.mark.parametrize("offset_table", ["+ot", "-ot"])
def test_a_multi_frame_image_in_many_fragments_is_decompressed_frame_by_frame(
        node_factory, storescp, tmp_path, offset_table):
    """1 kB fragments: each frame spans several, found by the Basic Offset
    Table, or without one by the codestream each frame starts with."""
    port, out = storescp
    node = forwarding_node(node_factory, tmp_path, port)
    plain, jpeg = tmp_path / "mf.dcm", tmp_path / "mf-jpeg.dcm"
    pixels = multi_frame(plain)
    run_dcmtk("dcmcjpeg", "+el", "+fs", "1", offset_table, plain, jpeg)
    sent = pydicom.dcmread(jpeg)
    assert len(sent.PixelData) > 0 and sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.57"
    r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", jpeg)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: outbox_states(node).get(sent.SOPInstanceUID) == "sent", timeout=60,
               what=f"delivery: {outbox_states(node)}")
    received = pydicom.dcmread(received_by_uid(out)[sent.SOPInstanceUID])
    assert received.NumberOfFrames == 3
    assert np.array_equal(received.pixel_array, pixels)


def test_what_cannot_be_decompressed_is_parked_with_its_reason_and_the_rest_delivered(
        node_factory, storescp, tmp_path):
    port, out = storescp
    node = forwarding_node(node_factory, tmp_path, port)
    # A colour JPEG (secondary capture, YBR_FULL_422): not decompressed.
    rgb = tmp_path / "rgb.dcm"
    ds = pydicom.dcmread(FIXTURES / "rg1s_bits8.dcm")
    grey = ds.pixel_array
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.stack([grey, grey // 2, 255 - grey], axis=-1).astype(np.uint8).tobytes()
    ds.save_as(rgb, enforce_file_format=True)
    colour = tmp_path / "rgb-jpeg.dcm"
    run_dcmtk("dcmcjpeg", "+eb", rgb, colour)
    colour_uid = pydicom.dcmread(colour, stop_before_pixels=True).SOPInstanceUID  # new: lossy
    # A syntax this build has no decoder for (JPEG 2000 Part 2), the codestream
    # of a Part 1 file: the destination cannot take it either.
    part2 = tmp_path / "part2.dcm"
    p2 = fresh_copy(FIXTURES / "rg1s_j2k_lossless.dcm", part2)
    p2.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    p2.save_as(part2, enforce_file_format=True)
    # A Number of Frames far beyond its one fragment must not size a buffer.
    frames = tmp_path / "frames.dcm"
    bogus = fresh_copy(FIXTURES / "rg1s_jpegls_lossless.dcm", frames)
    bogus.NumberOfFrames = 2147483647
    bogus.save_as(frames, enforce_file_format=True)
    # 15-bit samples under Bits Allocated 8: decompressed into bytes, the
    # PACS got noise (their low bytes) and answered success.
    byte = tmp_path / "byte.dcm"
    narrow = fresh_copy(FIXTURES / "rg1s_j2k_lossless.dcm", byte)
    narrow.BitsAllocated, narrow.BitsStored, narrow.HighBit = 8, 8, 7
    narrow.save_as(byte, enforce_file_format=True)
    # 15-bit samples under Bits Stored 12: decompressed, they went out with
    # bits above Bits Stored, noise to any viewer, and were answered success.
    twelve = tmp_path / "twelve.dcm"
    understated = fresh_copy(FIXTURES / "rg1s_j2k_lossless.dcm", twelve)
    understated.BitsStored, understated.HighBit = 12, 11
    understated.save_as(twelve, enforce_file_format=True)
    grey_jpeg = tmp_path / "grey.dcm"
    grey_uid = fresh_copy(FIXTURES / "rg1s_jpeg_lossless_sv1.dcm", grey_jpeg).SOPInstanceUID
    r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", colour, part2, frames, byte, twelve,
                 grey_jpeg)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: outbox_states(node).get(grey_uid) == "sent", timeout=60,
               what=f"delivery: {outbox_states(node)}")
    wait_until(lambda: outbox_states(node).get(colour_uid) == "parked"
               and outbox_states(node).get(p2.SOPInstanceUID) == "parked"
               and outbox_states(node).get(bogus.SOPInstanceUID) == "parked"
               and outbox_states(node).get(narrow.SOPInstanceUID) == "parked"
               and outbox_states(node).get(understated.SOPInstanceUID) == "parked",
               timeout=60, what=f"parked: {outbox_states(node)}")
    reasons = {uid: status for uid, (_, status) in outbox_rows(node).items()}
    assert "colour" in reasons[colour_uid] and "decompressing" in reasons[colour_uid], reasons[colour_uid]
    assert "no presentation context" in reasons[p2.SOPInstanceUID], reasons[p2.SOPInstanceUID]
    assert "NumberOfFrames" in reasons[bogus.SOPInstanceUID], reasons[bogus.SOPInstanceUID]
    assert "15-bit samples, more than Bits Allocated 8" in reasons[narrow.SOPInstanceUID], reasons
    assert "BitsStored" in reasons[understated.SOPInstanceUID], reasons[understated.SOPInstanceUID]
    assert set(received_by_uid(out)) == {grey_uid}
    assert node.alive() and node.echo_ok()


def test_a_dct_jpeg_that_says_it_is_not_lossy_is_marked_lossy_when_decompressed(node_factory, storescp, tmp_path):
    """A JPEG Baseline image whose header says Lossy Image Compression "00"
    went out native still saying "00": the syntax, the only sign left, was
    gone. DCT JPEG is lossy whatever the header says; JPEG 2000 may be
    reversible, so its "00" stands. A "01" without a method gets one."""
    port, out = storescp
    node = forwarding_node(node_factory, tmp_path, port)
    cases = {"jpeg_baseline": "00", "j2k_lossy": "00", "jpeg_extended": "01"}
    sent = {}
    for name, said in cases.items():
        path = tmp_path / f"{name}.dcm"
        ds = fresh_copy(FIXTURES / f"rg1s_{name}.dcm", path, drop=LOSSY_TAGS)
        ds.LossyImageCompression = said
        ds.save_as(path, enforce_file_format=True)
        sent[name] = (path, ds.SOPInstanceUID)
    r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", *(p for p, _ in sent.values()))
    assert r.returncode == 0, r.stdout + r.stderr
    uids = {uid for _, uid in sent.values()}
    wait_until(lambda: uids <= {u for u, s in outbox_states(node).items() if s == "sent"}, timeout=60)
    got = received_by_uid(out)
    marks = {name: (pydicom.dcmread(got[uid]).get("LossyImageCompression"),
                    pydicom.dcmread(got[uid]).get("LossyImageCompressionMethod")) for name, (_, uid) in sent.items()}
    assert marks == {"jpeg_baseline": ("01", "ISO_10918_1"), "j2k_lossy": ("00", None),
                     "jpeg_extended": ("01", "ISO_10918_1")}, marks


def test_an_icon_compressed_with_the_image_is_dropped_when_it_is_decompressed(node_factory, storescp, tmp_path):
    """DCMTK's dcmcrle compresses an Icon Image Sequence with the image: the
    image was decompressed for a destination without RLE, the icon left
    encapsulated in the native data set, and the destination (storescp)
    refused it A700 at every retry."""
    from pydicom.dataset import Dataset

    port, out = storescp
    node = forwarding_node(node_factory, tmp_path, port)
    native = tmp_path / "native.dcm"
    ds = fresh_copy(FIXTURES / "rg1s_mono2.dcm", native)
    icon = Dataset()
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.Rows, icon.Columns = 48, 64
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(256)) * 12
    ds.IconImageSequence = [icon]
    # and one nested in a Referenced Image Sequence item (DCMTK compresses
    # it too; the first fix dropped top-level icons only)
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    reference.IconImageSequence = [icon]
    ds.ReferencedImageSequence = [reference]
    ds.save_as(native, enforce_file_format=True)
    rle = tmp_path / "rle.dcm"
    subprocess.run(["/usr/bin/dcmcrle", str(native), str(rle)], check=True, timeout=60)
    sent = pydicom.dcmread(rle)
    assert sent.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    assert sent.IconImageSequence[0]["PixelData"].is_undefined_length  # the icon is encapsulated too
    assert sent.ReferencedImageSequence[0].IconImageSequence[0]["PixelData"].is_undefined_length
    r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", rle)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: outbox_states(node).get(ds.SOPInstanceUID) == "sent", timeout=60,
               what=f"the forward sent ({outbox_rows(node)})")
    got = pydicom.dcmread(received_by_uid(out)[ds.SOPInstanceUID])
    assert "IconImageSequence" not in got
    assert "IconImageSequence" not in got.ReferencedImageSequence[0]
    assert got.ReferencedImageSequence[0].ReferencedSOPInstanceUID == reference.ReferencedSOPInstanceUID
    assert np.array_equal(got.pixel_array, pydicom.dcmread(native).pixel_array)
