"""The node's SCU against DCMTK's storescp."""

import subprocess

import pydicom
import pytest

from nodetest import DCMTK, free_port, same_dataset, wait_for_port
from test_pynetdicom_peers import node_cli


@pytest.fixture
def storescp(tmp_path):
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(
        [str(DCMTK / "storescp"), "-aet", "STORESCP", "-od", str(out), "-uf", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    yield port, out
    proc.terminate()
    proc.wait(10)


def test_echo_and_store_to_storescp(storescp, rg1_copies):
    port, out = storescp
    r = node_cli("echo", f"STORESCP@127.0.0.1:{port}")
    assert r.returncode == 0 and "0000H" in r.stdout, r.stdout + r.stderr
    files = rg1_copies("UNCI", 3)
    r = node_cli("store", f"STORESCP@127.0.0.1:{port}", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        matches = list(out.glob(f"*{uid}*"))
        assert len(matches) == 1
        assert same_dataset(matches[0], f)


def test_compressed_file_to_a_peer_without_its_syntax_is_decompressed_or_a_clear_failure(
        storescp, rg1_copies, tmp_path):
    port, out = storescp  # storescp accepts uncompressed syntaxes only by default
    (j2k,) = rg1_copies("J2KR", 1)
    (plain,) = rg1_copies("UNCI", 1)
    # JPEG 2000 Part 2: no decoder in this build, so no way to the peer.
    part2 = tmp_path / "part2.dcm"
    ds = pydicom.dcmread(j2k)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.92"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    ds.save_as(part2, enforce_file_format=True)
    r = node_cli("store", f"STORESCP@127.0.0.1:{port}", j2k, part2, plain)
    assert r.returncode != 0
    (failed,) = [line for line in r.stdout.splitlines() if line.startswith("FAILED")]
    assert "part2.dcm" in failed and "no presentation context" in failed, r.stdout
    assert "2 stored" in r.stdout
    uid = pydicom.dcmread(j2k, stop_before_pixels=True).SOPInstanceUID
    (received,) = out.glob(f"*{uid}*")
    got = pydicom.dcmread(received)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (got.pixel_array == pydicom.dcmread(j2k).pixel_array).all()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_file_with_letters_in_its_uid_fails_with_the_rule_named(storescp, rg1_copies, tmp_path):
    """dicom-rs's "Invalid UID in file meta information group", behind
    "not a DICOM Part-10 file", named neither the rule nor the cure."""
    port, out = storescp
    (plain,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(plain)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.abc"
    ds.save_as(tmp_path / "letters.dcm", enforce_file_format=True)
    r = node_cli("store", f"STORESCP@127.0.0.1:{port}", tmp_path / "letters.dcm", plain)
    assert r.returncode != 0
    (failed,) = [line for line in r.stdout.splitlines() if line.startswith("FAILED")]
    assert "letters.dcm" in failed and "other than digits and dots (PS3.5 9.1)" in failed, r.stdout
    assert "Part-10" not in failed and "1 stored" in r.stdout


def test_unreachable_peer_is_an_error():
    r = node_cli("echo", f"NOBODY@127.0.0.1:{free_port()}")
    assert r.returncode != 0
    assert "cannot connect" in r.stderr


def test_a_peer_port_that_answers_http_is_named_as_no_dicom():
    """A PACS's web port given for its DICOM port (Orthanc 8042 for 4242)
    failed with "unrecognised PDU type 0x48", naming neither the peer nor
    the mistake."""
    import socket
    import threading

    # What a web server answers a request it cannot read.
    server = socket.create_server(("127.0.0.1", 0))

    def answer_http():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    threading.Thread(target=answer_http, daemon=True).start()
    try:
        port = server.getsockname()[1]
        r = node_cli("echo", f"ORTHANC@127.0.0.1:{port}")
    finally:
        server.close()
    assert r.returncode != 0
    assert f"ORTHANC@127.0.0.1:{port} answered with something that is no DICOM" in r.stderr, r.stderr
    assert f"an HTTP answer begins): is {port} the peer's DICOM port?" in r.stderr, r.stderr


def test_ae_titles_given_on_the_command_line_are_checked_before_connecting(storescp, rg1_copies):
    """`--calling-ae` of 17 characters failed inside the association
    request ("could not encode PDU: Could not write chunk"), and a called
    title with a backslash went on the wire."""
    port, out = storescp
    (f,) = rg1_copies("UNCI", 1)
    for args, said in (
        (["--calling-ae", "A" * 17, f"STORESCP@127.0.0.1:{port}", f], "must have 1 to 16 characters"),
        (["--calling-ae", "CR\\1", f"STORESCP@127.0.0.1:{port}", f], "backslash"),
        (["STORE\\SCP@127.0.0.1:" + str(port), f], "backslash"),
    ):
        r = node_cli("store", *args)
        assert r.returncode == 2 and said in r.stderr, (args, r.returncode, r.stderr)
        assert "encode PDU" not in r.stderr, r.stderr
    assert list(out.iterdir()) == []
    r = node_cli("store", "--calling-ae", "A" * 16, f"STORESCP@127.0.0.1:{port}", f)
    assert r.returncode == 0, r.stderr


def test_a_deflated_data_set_of_odd_length_reaches_dcmtk(tmp_path):
    """A deflate stream may end on an odd byte (the committed fixture's data
    set is 102,899 bytes); sent as it is, DCMTK aborted the association
    ("Odd Fragment Length") and the outbox retried it forever. It goes with
    the trailing NUL of PS3.5 A.5 and arrives with the same pixels."""
    import struct

    from nodetest import ROOT

    source = ROOT / "fixtures" / "imaging" / "rg1s_deflated.dcm"
    raw = source.read_bytes()
    assert (len(raw) - 144 - struct.unpack("<I", raw[140:144])[0]) % 2 == 1
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen([str(DCMTK / "storescp"), "-aet", "STORESCP", "+xd", "-od", str(out), "-uf", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        r = node_cli("store", f"STORESCP@127.0.0.1:{port}", source)
        assert r.returncode == 0, r.stdout + r.stderr
        (received,) = out.iterdir()
        got, sent = pydicom.dcmread(received), pydicom.dcmread(source)
        assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
        assert got.PixelData == sent.PixelData and got.SOPInstanceUID == sent.SOPInstanceUID
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_directory_s_other_files_are_skipped_not_failed(storescp, rg1_copies, tmp_path):
    port, out = storescp
    folder = tmp_path / "export"
    folder.mkdir()
    (f,) = rg1_copies("UNCI", 1)
    (folder / "image.dcm").write_bytes(f.read_bytes())
    (folder / "notes.txt").write_text("study exported for the AI node\n")
    r = node_cli("store", f"STORESCP@127.0.0.1:{port}", folder)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SKIPPED" in r.stdout and "notes.txt" in r.stdout
    assert "1 stored" in r.stdout and len(list(out.iterdir())) == 1
    # named explicitly, it is tried and reported
    r = node_cli("store", f"STORESCP@127.0.0.1:{port}", folder / "notes.txt")
    assert r.returncode != 0
