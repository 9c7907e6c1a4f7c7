"""Bad input, one test each: the node answers clearly or drops the peer,
keeps serving the next sender, and shows nothing half-written."""

import struct
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from nodetest import ROOT, dataset_bytes, run_dcmtk
from rawdicom import (
    ABORT,
    CR_STORAGE,
    EXPLICIT_LE,
    RawAssociation,
    c_store_rq,
    pdata,
    status_of,
)


def assert_still_serving_and_clean(node, sop_uid=None):
    assert node.alive(), node.log()
    assert node.echo_ok()
    deadline = time.monotonic() + 5
    while node.spool_files() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.spool_files() == [], "a half-received instance is left in the spool"
    if sop_uid:
        assert node.instance_rows(sop_uid) == 0
        assert not [p for p in node.instance_files() if sop_uid in p.name]


@pytest.fixture
def radiograph(rg1_copies):
    """An Explicit VR Little Endian radiograph: (SOP Instance UID, data set bytes)."""
    (path,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(path)
    return ds.SOPInstanceUID, dataset_bytes(path)


def open_store(node):
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT_LE])])
    return raw


def store_raw(node, sop_class: str, syntax: str, request_uid: str, data: bytes) -> dict:
    """One C-STORE of `data` (a data set's bytes, sent as they are) under a
    request naming `request_uid`; its response."""
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, sop_class, [syntax])])
    raw.send(pdata(1, True, True, c_store_rq(3, sop_class, request_uid)))
    for i in range(0, len(data), 16000):
        raw.send(pdata(1, False, i + 16000 >= len(data), data[i:i + 16000]))
    rsp = raw.read_command()
    raw.close()
    return rsp


def test_sender_aborting_mid_dataset(node, radiograph):
    sop_uid, data = radiograph
    raw = open_store(node)
    raw.send(pdata(1, True, True, c_store_rq(1, CR_STORAGE, sop_uid)))
    half = len(data) // 2
    for i in range(0, half, 16000):
        raw.send(pdata(1, False, False, data[i : min(i + 16000, half)]))
    raw.send(ABORT)
    raw.close()
    assert_still_serving_and_clean(node, sop_uid)
    assert "aborted by peer" in node.log()


@pytest.mark.parametrize("trailing", [1, 7, 8])
def test_bytes_after_the_last_element_are_named_so(node, radiograph, trailing):
    """A data set followed by a few extra bytes was refused "data set
    truncated at byte N": nothing was cut, bytes were added."""
    sop_uid, data = radiograph
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, sop_uid, data + bytes(trailing))
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert f"{trailing} stray bytes end the data set" in node.log(), node.log()[-2000:]
    assert rsp[0x0902].decode().startswith(f"{trailing} stray bytes end the data set")
    assert_still_serving_and_clean(node, sop_uid)


@pytest.mark.parametrize("tail", ["ff", "sop-uid-again", "pixel-data-again"])
def test_elements_after_the_pixel_data_out_of_order_or_twice_are_refused(node, radiograph, tail):
    """Acknowledged 0000, then unreadable by the node itself (its job
    failed, its notice and the broken original went to the PACS): eight
    0xFF bytes after the last element, an empty SOP Instance UID after the
    pixel data (read as the instance having none), a second empty Pixel
    Data. PS3.5 7.1: a data set's elements ascend, each once."""
    sop_uid, data = radiograph
    extra = {
        "ff": b"\xff" * 8,
        "sop-uid-again": struct.pack("<HH2sH", 0x0008, 0x0018, b"UI", 0),
        "pixel-data-again": struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 0),
    }[tail]
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, sop_uid, data + extra)
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert_still_serving_and_clean(node, sop_uid)


def test_a_data_set_of_many_tiny_items_is_refused(node, radiograph):
    """One sequence of a million one-element items, 18 MB sent, took 1.3 GB
    of the node's memory when read; 490,000 (under a count of items and
    elements alike), 1.2 GB. A data set may hold a million elements, an
    item counting as four."""
    sop_uid, data = radiograph
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 10) + struct.pack("<HH2sH", 0x0008, 0x0100, b"SH", 2) + b"AB"
    items = item * 200_001
    sequence = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, len(items)) + items
    at = data.index(struct.pack("<HH", 0x0010, 0x0010))  # Patient's Name: the sequence goes before it
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, sop_uid, data[:at] + sequence + data[at:])
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert rsp[0x0902].decode().startswith("more than 1000000 elements (an item counts 4)"), rsp[0x0902]
    assert_still_serving_and_clean(node, sop_uid)


def test_a_peer_that_stops_reading_loses_its_association(node_factory):
    """A peer that sends requests and never reads the responses (its
    receive window full) held the association, and a slot of
    max_associations, for as long as it kept the connection open: writes
    had no time limit. Now a write waits read_timeout_s at most."""
    import socket

    from rawdicom import IMPLICIT_LE, VERIFICATION, associate_rq, command_set, u16

    node = node_factory(dicom__read_timeout_s=2).start()
    echo = command_set((0x0002, VERIFICATION.encode()), (0x0100, u16(0x0030)), (0x0110, u16(1)),
                       (0x0800, u16(0x0101)))
    requests_ = pdata(1, True, True, echo) * 200
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", node.port))
    try:
        s.sendall(associate_rq(node.ae_title, "STALLER", [(1, VERIFICATION, [IMPLICIT_LE])]))
        header = s.recv(6)
        assert header[0] == 0x02, header  # A-ASSOCIATE-AC
        length = struct.unpack(">I", header[2:6])[0]
        while length:
            length -= len(s.recv(length))
        # requests until the node, blocked writing responses, takes no more
        s.setblocking(False)
        stalled_since = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                s.send(requests_)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1:
                    break
                time.sleep(0.05)
            except OSError:
                break  # already aborted
        deadline = time.monotonic() + 30
        while "not reading" not in node.log():
            assert time.monotonic() < deadline, node.log()[-2000:]
            time.sleep(0.2)
    finally:
        s.close()
    assert node.alive() and node.echo_ok()


def test_an_a_abort_before_any_association_is_not_answered(node):
    """PS3.8 state table, Sta2 with Evt16: the connection is closed and
    nothing sent (the node answered an A-ABORT with an A-ABORT)."""
    from rawdicom import ABORT, RawAssociation

    raw = RawAssociation(node.port)
    raw.send(ABORT)
    raw.sock.settimeout(10)
    assert raw.sock.recv(65536) == b"", "nothing is sent back"
    raw.close()
    assert node.echo_ok()


def test_a_c_echo_without_its_data_set_type_is_answered_at_once(node):
    """Command Data Set Type (0000,0800) left out of a C-ECHO-RQ: the node
    took a data set to follow and waited for it, until the read time-out
    aborted the association. Read as "no data set": answered."""
    from rawdicom import IMPLICIT_LE, VERIFICATION, RawAssociation, command_set, u16

    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT_LE])])
    raw.send(pdata(1, True, True, command_set(
        (0x0002, VERIFICATION.encode()), (0x0100, u16(0x0030)), (0x0110, u16(5)))))
    raw.sock.settimeout(5)
    rsp = raw.read_command()
    assert struct.unpack("<H", rsp[0x0100])[0] == 0x8030 and status_of(rsp) == 0x0000
    raw.close()


def test_a_sequence_sent_as_un_of_defined_length_is_walked_before_the_acknowledgement(node, radiograph):
    """(0400,0561) Original Attributes Sequence sent as UN of defined length
    holding implicit VR items nested thousands deep: the length walk took
    the value for bytes, and the node's reading of it as the sequence it is
    overflowed the parser's stack (the process died, at some depths after
    answering 0000, and at each restart while analysing it)."""
    sop_uid, data = radiograph
    depth = 3000
    opening = struct.pack("<HHI", 0x0400, 0x0561, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    inner = opening * depth + closing * depth
    item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
    un = struct.pack("<HH2sHI", 0x0400, 0x0561, b"UN", 0, len(item)) + item
    at = data.index(struct.pack("<HH", 0x7FE0, 0x0010))  # before the pixel data, in tag order
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, sop_uid, data[:at] + un + data[at:])
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert "nested deeper than" in rsp[0x0902].decode(), rsp[0x0902]
    assert_still_serving_and_clean(node, sop_uid)


@pytest.mark.parametrize("case", ["deep-nesting", "cut-pixel-data"])
def test_a_stray_delimiter_does_not_hide_what_follows_it(node, radiograph, case):
    """The length check stopped at an item delimiter outside any item: what
    followed went unchecked. Sequences nested 3,000 deep behind it
    overflowed the parser's stack and killed the process (any accepted
    caller could); a Pixel Data cut short behind it was acknowledged 0000,
    then failed its analysis (DCMTK stops reading at the delimiter)."""
    sop_uid, data = radiograph
    pixel_at = data.index(struct.pack("<HH2s", 0x7FE0, 0x0010, b"OW"))
    stray = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    if case == "deep-nesting":
        depth = 3000
        opening = struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"SQ", 0, 0xFFFFFFFF) + \
            struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        sent = data[:pixel_at] + stray + opening * depth + closing * depth + data[pixel_at:]
    else:
        sent = data[:pixel_at] + stray + data[pixel_at:-50_000]
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, sop_uid, sent)
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert "delimiter (FFFE,E00D)" in rsp[0x0902].decode() + node.log(), node.log()[-2000:]
    assert_still_serving_and_clean(node, sop_uid)


@pytest.mark.parametrize("case", ["native-on-jpeg-ls", "encapsulated-on-explicit", "encapsulated-on-implicit"])
def test_pixel_data_contradicting_the_agreed_transfer_syntax_is_refused(node, radiograph, tmp_path, case):
    """Native pixel data on a context agreed as JPEG-LS, and JPEG-LS
    fragments on one agreed as Explicit or Implicit VR Little Endian, were
    acknowledged 0000: the job failed, and every forward of the original
    aborted the PACS's association (its parser could not read it), while
    the modality had been told it was stored (PS3.5 A.4)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    if case == "native-on-jpeg-ls":
        sop_uid, data = radiograph
        syntax = "1.2.840.10008.1.2.4.80"
    else:
        implicit = case == "encapsulated-on-implicit"
        ds = pydicom.dcmread(ROOT / "fixtures" / "imaging" / "rg1s_jpegls_lossless.dcm")
        ds.SOPInstanceUID = sop_uid = generate_uid()
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, implicit
        write_dataset(out, pydicom.Dataset(ds))
        data = out.getvalue()
        syntax = "1.2.840.10008.1.2" if implicit else EXPLICIT_LE
    rsp = store_raw(node, CR_STORAGE, syntax, sop_uid, data)
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    said = "native pixel data in an encapsulated" if case == "native-on-jpeg-ls" else "encapsulated pixel data in a native"
    assert rsp[0x0902].decode().startswith(said), rsp[0x0902]
    assert_still_serving_and_clean(node, sop_uid)


def test_a_data_set_of_another_instance_than_its_request_is_refused_a900(node, radiograph):
    """The request names one SOP Instance UID, the data set holds another:
    refused A900, nothing kept under either; the comment (64 characters
    at most) says which UID differs, then begins the data set's."""
    sop_uid, data = radiograph
    claimed = generate_uid()
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, claimed, data)
    assert status_of(rsp) == 0xA900, hex(status_of(rsp))
    comment = rsp[0x0902].decode().strip()
    assert comment.startswith("SOP Instance UIDs differ: data set's ") and len(comment) <= 64, comment
    assert sop_uid.startswith(comment.split()[-1]), comment
    assert_still_serving_and_clean(node, sop_uid)
    assert node.instance_rows(claimed) == 0


def test_truncated_pdu(node, radiograph):
    sop_uid, data = radiograph
    raw = open_store(node)
    raw.send(pdata(1, True, True, c_store_rq(1, CR_STORAGE, sop_uid)))
    pdu = pdata(1, False, True, data[:10000])
    raw.send(pdu[:5000])  # the header promises 10 kB; the sender then vanishes
    raw.close()
    assert_still_serving_and_clean(node, sop_uid)


def test_pdu_length_of_4_gb(node, radiograph):
    sop_uid, _ = radiograph
    raw = open_store(node)
    raw.send(pdata(1, True, True, c_store_rq(1, CR_STORAGE, sop_uid)))
    raw.send(struct.pack(">BxI", 0x04, 0xFFFFFFFF) + bytes(64))
    pdu_type, _ = raw.read_pdu()
    assert pdu_type == 0x07, "expected an A-ABORT"
    assert raw.closed_by_peer(5)
    assert_still_serving_and_clean(node, sop_uid)
    assert "exceeds the maximum" in node.log()


def test_garbage_instead_of_associate_rq(node):
    raw = RawAssociation(node.port)
    raw.send(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
    assert raw.closed_by_peer(5)
    assert_still_serving_and_clean(node)
    assert "unrecognised PDU type" in node.log()


@pytest.mark.parametrize(
    "payload",
    [
        # (0008,0016) UI claiming 1000 bytes, of which 10 arrive
        struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 1000) + b"1.2.3.4.5.",
        # a well-formed data set without SOP Instance UID and the rest
        struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CR",
        # an element claiming 4 GB: refused before any parser allocates it
        struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 2) + b"CR"
        + struct.pack("<HH2sHI", 0x0008, 0x0070, b"UT", 0, 0xFFFFFFF0) + b"x" * 64,
    ],
    ids=["truncated-element", "no-uids", "4-gb-element"],
)
def test_dataset_that_does_not_parse(node, payload):
    sop_uid = generate_uid()
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT_LE])])
    raw.send(pdata(1, True, True, c_store_rq(5, CR_STORAGE, sop_uid)))
    raw.send(pdata(1, False, True, payload))
    rsp = raw.read_command()
    assert 0xC000 <= status_of(rsp) <= 0xCFFF, hex(status_of(rsp))
    if len(payload) > 64:
        assert b"element (0008,0070)" in rsp[0x0902]  # the Error Comment (64 characters at most)
        assert "claims 4294967280 bytes" in node.log()
    assert struct.unpack("<H", rsp[0x0120])[0] == 5  # MessageIDBeingRespondedTo
    assert rsp[0x1000].rstrip(b"\0").decode() == sop_uid
    assert 0x0902 in rsp  # an Error Comment says why
    raw.close()
    assert_still_serving_and_clean(node, sop_uid)
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 0") == 0


def test_silent_peer_is_dropped_after_the_idle_timeout(node_factory):
    node = node_factory(dicom__idle_timeout_s=2, dicom__read_timeout_s=2).start()
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT_LE])])
    started = time.monotonic()
    assert raw.closed_by_peer(10), "the idle association was not dropped"
    assert 1.5 < time.monotonic() - started < 8
    # A connection that never sends its A-ASSOCIATE-RQ is dropped too.
    silent = RawAssociation(node.port)
    assert silent.closed_by_peer(10)
    assert_still_serving_and_clean(node)


def test_a_sender_after_all_that_still_stores(node, rg1_copies):
    (path,) = rg1_copies("UNCI", 1)
    bad = RawAssociation(node.port)
    bad.send(b"\x01\x00\xff\xff\xff\xff")
    bad.close()
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert node.instance_rows(ds.SOPInstanceUID) == 1


def test_a_port_in_use_is_named_once_with_its_key(tmp_path):
    """The error names the setting and says why once (the cause used to be
    printed twice: the message and its source)."""
    import os
    import socket
    import subprocess

    from nodetest import free_port, node_binary

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = dict(os.environ, PNEUMO__NODE__DATA_DIR=str(tmp_path / "var"),
               PNEUMO__DICOM__PORT=str(taken.getsockname()[1]), PNEUMO__HTTP__PORT=str(free_port()))
    try:
        r = subprocess.run([str(node_binary()), "serve"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert r.returncode == 1
    (line,) = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert "dicom.port" in line and line.count("Address already in use") == 1, line


def test_sigterm_lets_the_transfer_in_progress_finish_and_ends_idle_associations(node, radiograph):
    """A restart during a transfer: the C-STORE half received when SIGTERM
    comes is completed, stored and answered success; an association idle
    between messages is aborted at once; then the process exits, without
    waiting out the grace period."""
    import signal

    sop_uid, data = radiograph
    busy, idle = open_store(node), open_store(node)
    busy.send(pdata(1, True, True, c_store_rq(1, CR_STORAGE, sop_uid)))
    half = len(data) // 2
    for i in range(0, half, 16000):
        busy.send(pdata(1, False, False, data[i : min(i + 16000, half)]))
    time.sleep(0.3)
    node.proc.send_signal(signal.SIGTERM)
    assert idle.read_pdu()[0] == 0x07  # A-ABORT while nothing is in flight
    time.sleep(0.3)
    assert node.alive()  # still finishing the busy one
    for i in range(half, len(data), 16000):
        end = min(i + 16000, len(data))
        busy.send(pdata(1, False, end == len(data), data[i:end]))
    assert status_of(busy.read_command()) == 0x0000
    assert busy.read_pdu()[0] == 0x07  # then aborted: the node is going
    node.proc.wait(10)  # well inside dicom.shutdown_grace_s (30 s)
    assert "association aborted between messages: the node is shutting down" in node.log()
    node.start()
    assert node.instance_rows(sop_uid) == 1


@pytest.mark.parametrize("bad_uid", ["1.2.abc", "../../x", "1.2.3 4", "1.2..3", "1.2.3.", "1." + "2" * 64])
def test_a_sop_instance_uid_that_is_no_uid_is_refused_by_name(node, rg1_copies, tmp_path, bad_uid):
    """Letters or an inner space in the SOP Instance UID: refused (C000)
    naming the attribute and the character. Letters were refused with the
    parser's words ("Invalid UID in file meta information group"); a space
    was stored and forwarded, its analysis failing later."""
    (src,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = bad_uid
    del ds.PixelData  # one PDU
    path = tmp_path / "bad-uid.dcm"
    ds.save_as(path, enforce_file_format=True)
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT_LE])])
    raw.send(pdata(1, True, True, c_store_rq(7, CR_STORAGE, bad_uid)))
    raw.send(pdata(1, False, True, dataset_bytes(path)))
    rsp = raw.read_command()
    raw.close()
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    comment = rsp[0x0902].decode()
    assert comment.startswith("SOP Instance UID: "), comment  # the rest in the log
    assert "PS3.5 9.1" in node.log()
    assert_still_serving_and_clean(node)
    assert node.count("SELECT COUNT(*) FROM instances") == 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("attribute", ["StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("bad_uid", ["../../../tmp/evil", "1.2.x", "1." + "2" * 70])
def test_a_study_or_series_uid_that_is_no_uid_is_refused_by_name(node, rg1_copies, tmp_path, attribute, bad_uid):
    """Acknowledged 0000, such an image's analysis failed ("the source
    attribute StudyInstanceUID is invalid") and no notice could be made in
    its study: the radiologist was never told. Refused (C000) by name, as
    a SOP Instance UID that is no UID is."""
    (src,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(src)
    setattr(ds, attribute, bad_uid)
    path = tmp_path / "bad-study.dcm"
    ds.save_as(path, enforce_file_format=True)
    rsp = store_raw(node, CR_STORAGE, EXPLICIT_LE, ds.SOPInstanceUID, dataset_bytes(path))
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    name = {"StudyInstanceUID": "Study Instance UID", "SeriesInstanceUID": "Series Instance UID"}[attribute]
    assert rsp[0x0902].decode().startswith(f"{name}: "), rsp[0x0902]
    assert_still_serving_and_clean(node, ds.SOPInstanceUID)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uids_with_leading_zeros_are_analysed_and_referenced_as_they_are(node, rg1_copies, tmp_path):
    """Older modalities write UID components with leading zeros (PS3.5
    forbids them). The image was stored, but its analysis failed ("not a
    valid UID"): no result. The report must name the very study and image,
    so it references them as they are."""
    (src,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = "1.2.840.0113654.2.70.1.001"
    ds.SeriesInstanceUID = "1.2.840.0113654.2.70.1.001.02"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.840.0113654.2.70.1.001.02.0003"
    path = tmp_path / "leading-zeros.dcm"
    ds.save_as(path, enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    node.wait_for_analyses()
    with node.db() as c:
        state, reason, sr_path = c.execute(
            "SELECT j.state, j.reason, r.path FROM jobs j LEFT JOIN instances r ON r.id = j.sr_instance_id").fetchone()
    assert state in ("reported", "delivered"), reason
    sr = pydicom.dcmread(node.data_dir / sr_path)
    assert sr.StudyInstanceUID == ds.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def cut_in_pixel_data(path, tmp_path, encapsulated):
    """(SOP Class UID, SOP Instance UID, transfer syntax, data set bytes cut
    halfway through its pixel data) of a copy of `path` with fresh UIDs."""
    from nodetest import copy_with_new_uids

    dst = tmp_path / "whole.dcm"
    copy_with_new_uids(path, dst)
    ds = pydicom.dcmread(dst)
    data = dataset_bytes(dst)
    at = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010)
    assert at > 0 and (b"\xff\xff\xff\xff" in data[at:at + 12]) == encapsulated
    cut = at + (len(data) - at) // 2
    return ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, data[:cut]


@pytest.mark.parametrize("fixture", ["rg1s_mono2.dcm", "rg1s_jpeg_lossless_sv1.dcm"])
def test_a_data_set_cut_in_its_pixel_data_is_refused_not_acknowledged(node, rg1_copies, tmp_path, fixture):
    """A sender that stops halfway through the pixel data but marks its last
    fragment as last: the header parsed, so the instance was acknowledged
    0000 (the sender may then delete its copy) and stored broken; it is
    refused C000 now, naming the pixel data, and what was stored before
    stays."""
    from nodetest import ROOT

    (good,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, good)
    good_uid = pydicom.dcmread(good).SOPInstanceUID
    encapsulated = "jpeg" in fixture
    sop_class, sop_uid, syntax, cut = cut_in_pixel_data(
        ROOT / "fixtures" / "imaging" / fixture, tmp_path, encapsulated)
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, sop_class, [syntax])])
    raw.send(pdata(1, True, True, c_store_rq(7, sop_class, sop_uid)))
    raw.send(pdata(1, False, True, cut))
    rsp = raw.read_command()
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    comment = rsp[0x0902].decode()
    assert ("fragment" in comment) if encapsulated else ("(7FE0,0010)" in comment), comment
    raw.close()
    assert_still_serving_and_clean(node, sop_uid)
    assert node.instance_rows(good_uid) == 1
    # A data set with an undefined-length sequence never closed after the
    # pixel data: refused too.
    whole = dataset_bytes(tmp_path / "whole.dcm")
    open_sq = struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, sop_class, [syntax])])
    raw.send(pdata(1, True, True, c_store_rq(8, sop_class, sop_uid)))
    raw.send(pdata(1, False, True, whole + open_sq + item))
    rsp = raw.read_command()
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    raw.close()
    assert_still_serving_and_clean(node, sop_uid)


def test_file_meta_elements_inside_a_data_set_are_not_kept_in_the_stored_file(node, radiograph):
    """A sender that sends a file's meta with its data set (group 0002 in
    the data set, which PS3.10 7.1 does not allow): stored as received, the
    file had two Transfer Syntax UIDs and pydicom read it as Big Endian
    (dciodvfy: no SOP Instance UID). Accepted, and stored without them."""
    sop_uid, data = radiograph

    def meta_element(element, vr, value):
        if len(value) % 2:
            value += b"\0"
        return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value

    inner_meta = meta_element(0x0002, b"UI", CR_STORAGE.encode()) + meta_element(
        0x0010, b"UI", b"1.2.840.10008.1.2.2")  # Big Endian, the wrong syntax
    raw = open_store(node)
    raw.send(pdata(1, True, True, c_store_rq(9, CR_STORAGE, sop_uid)))
    sent = inner_meta + data
    for i in range(0, len(sent), 16000):
        raw.send(pdata(1, False, i + 16000 >= len(sent), sent[i:i + 16000]))
    rsp = raw.read_command()
    raw.close()
    assert status_of(rsp) == 0x0000, hex(status_of(rsp))
    (path,) = [p for p in node.instance_files() if sop_uid in p.name]
    stored = pydicom.dcmread(path)
    assert stored.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert stored.SOPInstanceUID == sop_uid and stored.Rows > 0
    assert not [e for e in stored if e.tag.group == 0x0002]
    assert path.read_bytes().endswith(data)
    assert "File Meta Information elements (group 0002)" in node.log()
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1
    assert_still_serving_and_clean(node)


@pytest.mark.parametrize("cut", ["inflated", "stream"])
def test_a_deflated_data_set_cut_short_is_refused_not_acknowledged(node, tmp_path, cut):
    """A Deflated data set cut in its pixel data (re-deflated, or its
    compressed stream cut): acknowledged 0000 and stored unreadable, as
    the length check skipped Deflated data sets. Refused C000 now."""
    import zlib

    from nodetest import ROOT, copy_with_new_uids

    deflated = "1.2.840.10008.1.2.1.99"
    dst = tmp_path / "deflated.dcm"
    copy_with_new_uids(ROOT / "fixtures" / "imaging" / "rg1s_deflated.dcm", dst)
    ds = pydicom.dcmread(dst)
    assert ds.file_meta.TransferSyntaxUID == deflated
    stream = dataset_bytes(dst)
    inflated = zlib.decompress(stream, -15)
    if cut == "inflated":
        body = zlib.compressobj(9, zlib.DEFLATED, -15)
        sent = body.compress(inflated[: len(inflated) - 1000]) + body.flush()
    else:
        sent = stream[: len(stream) - 200]
    rsp = store_raw(node, ds.SOPClassUID, deflated, ds.SOPInstanceUID, sent)
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert_still_serving_and_clean(node, ds.SOPInstanceUID)
    # the whole one is taken
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, dst)
    assert node.instance_rows(ds.SOPInstanceUID) == 1


def test_a_deflated_data_set_that_inflates_past_256_mib_is_refused(node, tmp_path):
    """A radiograph with one private element of 300 MB of zeros, deflated:
    about 300 KB over the wire. Acknowledged, stored and analysed, each
    read of its header held the gigabyte-scale value in memory (three times
    per instance: an upload of a few MB could cost gigabytes). Refused C000
    now, before anything of it is kept; the node goes on serving."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from nodetest import ROOT, copy_with_new_uids

    deflated = "1.2.840.10008.1.2.1.99"
    dst = tmp_path / "bomb.dcm"
    copy_with_new_uids(ROOT / "fixtures" / "imaging" / "rg1s_deflated.dcm", dst)
    ds = pydicom.dcmread(dst)
    ds.add_new(0x00090010, "LO", "BOMB")
    ds.add_new(0x00091000, "OB", bytes(300 << 20))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    body = zlib.compressobj(9, zlib.DEFLATED, -15)
    sent = body.compress(fp.getvalue()) + body.flush()
    del fp
    assert len(sent) < 1 << 20, len(sent)
    rsp = store_raw(node, ds.SOPClassUID, deflated, ds.SOPInstanceUID, sent)
    assert status_of(rsp) == 0xC000, hex(status_of(rsp))
    assert "deflated data set inflates past 256 MiB" in node.log()
    assert rsp[0x0902].decode().startswith("deflated data set inflates past 256 MiB")
    assert_still_serving_and_clean(node, ds.SOPInstanceUID)


@pytest.mark.parametrize("cut", ["abort", "command"])
def test_a_c_store_cut_off_is_named_in_the_log(node, cut):
    """An A-ABORT in the middle of a data set, or a new command there: the
    log said "association aborted by peer instances=0" (or "unexpected
    command fragment"), not which C-STORE was dropped."""
    uid = generate_uid()
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT_LE])])
    raw.send(pdata(1, True, True, c_store_rq(9, CR_STORAGE, uid)))
    raw.send(pdata(1, False, False, b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100"))
    raw.send(ABORT if cut == "abort" else pdata(1, True, True, c_store_rq(10, CR_STORAGE, generate_uid())))
    deadline = time.monotonic() + 10
    while "C-STORE cut off" not in node.log():
        assert time.monotonic() < deadline, node.log()[-2000:]
        time.sleep(0.1)
    raw.close()
    (line,) = [l for l in node.log().splitlines() if "C-STORE cut off" in l]
    assert uid in line and "message_id=9" in line, line
    assert node.http(f"/api/instances/{uid}")[0] == 404 and node.echo_ok()
