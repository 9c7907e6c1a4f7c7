"""CP-246: sequences that reach the node as UN of undefined length, their
items in implicit VR, as PACS routers pass on sequences they do not know.
The node stores them as received, reads them (header and analysis), and
the SR carries what they held. Likewise standard attributes sent as UN
(PS3.5 §6.2.2): read as their dictionary VR.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pydicom
from nodetest import ROOT, dataset_bytes, node, node_factory, procedure_reported  # noqa: F401 (fixtures)
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid
from test_routing_orthanc import wait_until

UNDEFINED = 0xFFFFFFFF


def implicit(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, element, len(value) if length is None else length) + value


def item(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return implicit(0xFFFE, 0xE000, body, UNDEFINED) + implicit(0xFFFE, 0xE00D, b"")


def un_element(group: int, element: int, value: bytes, length: int | None = None) -> bytes:
    """An explicit VR UN element (its length: the value's unless given)."""
    return (struct.pack("<HH", group, element) + b"UN\0\0"
            + struct.pack("<I", len(value) if length is None else length) + value)


def un_sequence(group: int, element: int, *items: bytes) -> bytes:
    """The element as CP-246 has it: explicit VR UN, undefined length,
    implicit VR items, sequence delimiter."""
    return un_element(group, element, b"".join(items) + implicit(0xFFFE, 0xE0DD, b""), UNDEFINED)


def write_part10(dst: Path, file_meta: pydicom.Dataset, body: bytes) -> None:
    """A Part-10 file of `body` (data set bytes written by hand) as they are."""
    meta = DicomBytesIO()
    write_file_meta_info(meta, file_meta, enforce_standard=True)
    dst.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + body)


def explicit(elements) -> bytes:
    ds = pydicom.Dataset()
    for e in elements:
        ds.add(e)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def with_un_sequences(src: Path, dst: Path) -> pydicom.Dataset:
    """`src` with its Procedure Code Sequence and a private sequence
    (group 0019, before (0020,0010)) sent as UN of undefined length."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.pop(0x00081032, None)
    code = item(
        implicit(0x0008, 0x0100, b"RPID5145"),  # Code Value
        implicit(0x0008, 0x0102, b"RADLEX"),  # Coding Scheme Designator
        implicit(0x0008, 0x0104, b"XR CHEST PA"),  # Code Meaning
    )
    private = item(
        implicit(0x0019, 0x0010, b"ACME 1.0"),
        implicit(0x0019, 0x1002, b"calibration 7 "),
        implicit(0x0019, 0x1003, item(implicit(0x0019, 0x0010, b"ACME 1.0"))
                 + implicit(0xFFFE, 0xE0DD, b""), UNDEFINED),  # a nested sequence
    )
    before = [e for e in ds if e.tag < 0x00081032]
    middle = [e for e in ds if 0x00081032 < e.tag < 0x00190000]
    after = [e for e in ds if e.tag > 0x00191001]
    creator = struct.pack("<HH", 0x0019, 0x0010) + b"LO" + struct.pack("<H", 8) + b"ACME 1.0"
    body = (explicit(before) + un_sequence(0x0008, 0x1032, code) + explicit(middle)
            + creator + un_sequence(0x0019, 0x1001, private) + explicit(after))
    write_part10(dst, ds.file_meta, body)
    return ds


def send_file_bytes(node, path: Path, sop_class: str) -> None:
    """C-STORE of the file's data set bytes as they are, in Explicit VR
    Little Endian, as a router passes them on (storescu, or pynetdicom by
    default, would decode and re-encode the sequences)."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="ROUTER")
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False


def reported_procedure(node) -> pydicom.Dataset:
    """Once the one job is reported: its SR's procedure code."""
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    with node.db() as c:
        (sr_rel,) = c.execute("SELECT path FROM instances WHERE generated = 1").fetchone()
    return procedure_reported(pydicom.dcmread(node.data_dir / sr_rel))


def test_sequences_sent_as_un_of_undefined_length_are_stored_read_and_reported(node, tmp_path):
    path = tmp_path / "cp246.dcm"
    ds = with_un_sequences(ROOT / "fixtures" / "imaging" / "rg1s_mono1.dcm", path)
    # DCMTK and pydicom read the file as CP-246 says (the check of the fixture).
    read = pydicom.dcmread(path)
    assert read.ProcedureCodeSequence[0].CodeValue == "RPID5145"

    send_file_bytes(node, path, ds.SOPClassUID)

    stored = node.stored_path(ds)
    assert dataset_bytes(stored) == dataset_bytes(path)  # kept as received
    code = reported_procedure(node)
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "RPID5145", "RADLEX", "XR CHEST PA")


def test_a_sequence_sent_as_un_of_defined_length_reaches_the_sr(node, tmp_path):
    """The same Procedure Code Sequence as UN with a defined length (a router
    that knew the length): read as a sequence, its code in the SR."""
    src = ROOT / "fixtures" / "imaging" / "rg1s_mono1.dcm"
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.pop(0x00081032, None)
    code = item(implicit(0x0008, 0x0100, b"RPID5145"), implicit(0x0008, 0x0102, b"RADLEX"),
                implicit(0x0008, 0x0104, b"XR CHEST PA"))
    body = (explicit([e for e in ds if e.tag < 0x00081032]) + un_element(0x0008, 0x1032, code)
            + explicit([e for e in ds if e.tag > 0x00081032]))
    path = tmp_path / "un-defined.dcm"
    write_part10(path, ds.file_meta, body)
    send_file_bytes(node, path, ds.SOPClassUID)
    code = reported_procedure(node)
    assert (code.CodeValue, code.CodeMeaning) == ("RPID5145", "XR CHEST PA")


def with_un_values(src: Path, dst: Path, keywords: set[str]) -> pydicom.Dataset:
    """`src` with the attributes named in `keywords` sent as explicit VR UN,
    their values the bytes of the implicit encoding (PS3.5 §6.2.2)."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    body = b""
    for e in ds:
        if e.keyword in keywords:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, True
            write_dataset(fp, pydicom.Dataset({e.tag: e}))
            value = fp.getvalue()[8:]  # after the implicit tag and length
            body += un_element(e.tag.group, e.tag.element, value)
        else:
            body += explicit([e])
    write_part10(dst, ds.file_meta, body)
    return ds


UN_HEADER = {"Modality", "BodyPartExamined", "ViewPosition", "SamplesPerPixel", "PhotometricInterpretation",
             "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
             "WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "ImagerPixelSpacing"}


def test_standard_attributes_sent_as_un_are_read_as_their_vr(node, tmp_path):
    """A radiograph whose modality, body part and image attributes came
    through a router as UN: stored as received, read as CR/CHEST, analysed
    to the same result as the same image with proper VRs."""
    src = ROOT / "fixtures" / "imaging" / "rg1s_mono1.dcm"
    proper = tmp_path / "proper.dcm"
    plain = pydicom.dcmread(src)
    plain.SOPInstanceUID = plain.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    plain.save_as(proper, enforce_file_format=True)
    un = tmp_path / "un.dcm"
    ds = with_un_values(src, un, UN_HEADER)
    assert sum(1 for e in pydicom.dcmread(un, stop_before_pixels=True) if e.keyword in UN_HEADER) >= 12
    for path in (proper, un):
        send_file_bytes(node, path, ds.SOPClassUID)
    assert dataset_bytes(node.stored_path(ds)) == dataset_bytes(un)  # kept as received
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 2, timeout=60)
    with node.db() as c:
        row = c.execute("SELECT modality, body_part_examined FROM instances WHERE sop_instance_uid = ?",
                        (ds.SOPInstanceUID,)).fetchone()
        results = [json.loads(r)["prediction"]["probabilities"] for (r,) in c.execute(
            "SELECT result_json FROM jobs ORDER BY id")]
    assert row == ("CR", "CHEST")
    assert results[0] == results[1]


def test_preprocess_reads_a_cp246_file(tmp_path):
    import subprocess

    from nodetest import node_binary

    path = tmp_path / "cp246.dcm"
    with_un_sequences(ROOT / "fixtures" / "imaging" / "rg1s_mono1.dcm", path)
    r = subprocess.run([str(node_binary()), "preprocess", str(path), "--out", str(tmp_path / "t.npy")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t.npy").exists()


def test_a_cp246_file_is_forwarded_to_a_destination_that_takes_implicit_vr_only(node_factory, tmp_path):
    """Forwarding re-encodes when the destination accepts only Implicit VR
    Little Endian: the node reads the file with its CP-246 reader there too,
    and the destination receives the sequences as sequences."""
    from test_pynetdicom_peers import PynetdicomReceiver
    from test_routing_orthanc import node_config

    receiver = PynetdicomReceiver(ae_title="OLDPACS", transfer_syntaxes=["1.2.840.10008.1.2"])
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "old", "ae_title": "OLDPACS", "port": receiver.port}],
                             [{"destinations": ["old"]}], retry_base_s=1)
        node = node_factory().start(config_file=config)
        path = tmp_path / "cp246.dcm"
        ds = with_un_sequences(ROOT / "fixtures" / "imaging" / "rg1s_mono1.dcm", path)
        send_file_bytes(node, path, ds.SOPClassUID)
        wait_until(lambda: ds.SOPInstanceUID in receiver.received, timeout=30)
        assert receiver.transfer_syntax[ds.SOPInstanceUID] == "1.2.840.10008.1.2"
        got = receiver.dataset(ds.SOPInstanceUID)
        assert got.ProcedureCodeSequence[0].CodeValue == "RPID5145"
        assert got.PixelData == pydicom.dcmread(path).PixelData
    finally:
        receiver.close()
