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


def test_compressed_file_to_a_peer_without_its_syntax_is_a_clear_failure(storescp, rg1_copies):
    port, _ = storescp  # storescp accepts uncompressed syntaxes only by default
    (j2k,) = rg1_copies("J2KR", 1)
    (plain,) = rg1_copies("UNCI", 1)
    r = node_cli("store", f"STORESCP@127.0.0.1:{port}", j2k, plain)
    assert r.returncode != 0
    assert "no presentation context" in r.stdout
    assert "1 stored" in r.stdout


def test_unreachable_peer_is_an_error():
    r = node_cli("echo", f"NOBODY@127.0.0.1:{free_port()}")
    assert r.returncode != 0
    assert "cannot connect" in r.stderr
