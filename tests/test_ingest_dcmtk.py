"""DCMTK senders: what arrives is what was sent, each instance once."""


import pydicom

from nodetest import node_factory, run_dcmtk, same_dataset  # noqa: F401 (fixture)
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)


def test_echoscu(node):
    assert node.echo_ok()


def test_fifty_radiographs_arrive_identical_and_once(node, rg1_copies):
    uncompressed = rg1_copies("UNCI", 25)
    j2k = rg1_copies("J2KR", 25)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *uncompressed)
    run_dcmtk("storescu", "-xv", "-aec", node.ae_title, "127.0.0.1", node.port, *j2k)
    for sent in uncompressed + j2k:
        ds = pydicom.dcmread(sent, stop_before_pixels=True)
        stored = node.stored_path(ds)
        assert stored.exists(), stored
        assert same_dataset(stored, sent), sent
        meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert node.instance_rows(ds.SOPInstanceUID) == 1
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 0") == 50
    assert node.count("SELECT COUNT(*) FROM jobs") == 50
    # Once the analyses (which spool their reports too) are done, nothing is left in the spool.
    node.wait_for_analyses()
    assert node.spool_files() == []


def test_resending_the_same_instance_is_a_success_that_writes_nothing(node, rg1_copies):
    (path,) = rg1_copies("UNCI", 1)
    for _ in range(2):
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert node.instance_rows(ds.SOPInstanceUID) == 1
    received = node.stored_path(ds)
    assert [p for p in received.parent.iterdir()] == [received]


def test_same_uid_other_content_is_kept_beside_the_first(node, rg1_copies, tmp_path):
    (path,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(path)
    ds.PatientComments = "a corrected copy"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, changed)
    assert node.instance_rows(ds.SOPInstanceUID) == 2
    first = node.stored_path(ds)
    assert same_dataset(first, path)
    beside = [p for p in first.parent.iterdir() if p != first]
    assert len(beside) == 1 and same_dataset(beside[0], changed)
    assert "same SOP Instance UID with different content" in node.log()


def test_the_same_instance_in_another_transfer_syntax_is_not_stored_analysed_or_forwarded_again(
        node_factory, storescp, rg1_copies, tmp_path):
    """Senders re-send in whatever syntax they negotiate: Implicit VR this
    time (storescu -xi), JPEG-LS or RLE lossless (a router that compressed
    it). The same data set: a success that stores nothing, runs no second
    analysis and forwards nothing twice. Used to be kept beside the first as
    "different content", analysed and forwarded again."""
    from test_routing_orthanc import node_config, wait_until

    port, out = storescp
    config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "STORESCP", "port": port}],
                         [{"destinations": ["pacs"]}])
    node = node_factory().start(config_file=config)
    (path,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    jpeg_ls, rle = tmp_path / "jls.dcm", tmp_path / "rle.dcm"
    run_dcmtk("dcmcjpls", path, jpeg_ls)
    run_dcmtk("dcmcrle", path, rle)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    run_dcmtk("storescu", "-xi", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    run_dcmtk("storescu", "-xt", "-aec", node.ae_title, "127.0.0.1", node.port, jpeg_ls)
    run_dcmtk("storescu", "-xr", "-aec", node.ae_title, "127.0.0.1", node.port, rle)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1)
    assert node.instance_rows(ds.SOPInstanceUID) == 1
    assert node.log().count("the same data set in another encoding (transfer syntax, or sequence and item lengths): not stored again") == 3
    assert "different content" not in node.log()
    assert node.count("SELECT COUNT(*) FROM jobs") == 1
    assert node.count("SELECT COUNT(*) FROM outbox") == 1
    assert len(list(out.iterdir())) == 1
    # A real change is still a second version.
    changed = tmp_path / "changed.dcm"
    full = pydicom.dcmread(path)
    full.PatientComments = "corrected"
    full.save_as(changed, enforce_file_format=True)
    run_dcmtk("storescu", "-xi", "-aec", node.ae_title, "127.0.0.1", node.port, changed)
    assert node.instance_rows(ds.SOPInstanceUID) == 2


def test_big_endian_and_deflated_radiographs_are_stored_so_and_analysed_alike(node, rg1_copies, tmp_path):
    """The two native syntaxes off the usual path: Explicit VR Big Endian
    (retired, still sent by old modalities; DCMTK's dcmconv makes the file,
    pynetdicom sends it as is) and Deflated Explicit VR Little Endian
    (storescu -xd). Both kept in their syntax and analysed to the same
    probabilities as the Explicit VR Little Endian original."""
    import json
    import subprocess

    from pynetdicom import AE

    original, deflated, big = rg1_copies("UNCI", 3)
    big_endian = tmp_path / "big_endian.dcm"
    subprocess.run(["/usr/bin/dcmconv", "+tb", str(big), str(big_endian)], check=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, original)
    run_dcmtk("storescu", "-xd", "-aec", node.ae_title, "127.0.0.1", node.port, deflated)
    ae = AE(ae_title="OLDMODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", ["1.2.840.10008.1.2.2"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(big_endian).Status == 0x0000
    assoc.release()
    node.wait_for_analyses()
    with node.db() as c:
        rows = c.execute("SELECT i.transfer_syntax_uid, j.state, j.result_json FROM jobs j "
                         "JOIN instances i ON i.id = j.instance_id ORDER BY j.id").fetchall()
    assert [(ts, state) for ts, state, _ in rows] == [
        ("1.2.840.10008.1.2.1", "reported"), ("1.2.840.10008.1.2.1.99", "reported"),
        ("1.2.840.10008.1.2.2", "reported")]
    probabilities = [json.loads(r)["prediction"]["probabilities"] for _, _, r in rows]
    assert probabilities[1] == probabilities[0] and probabilities[2] == probabilities[0]


def test_a_private_sequence_re_sent_with_defined_lengths_is_the_same_data_set(node, rg1_copies, tmp_path):
    """An Implicit VR image with private sequences of undefined length,
    re-sent with defined lengths (as DCMTK writes them): read as a sequence
    the first time and as bytes the second (no dictionary entry says SQ),
    it was kept as "different content", analysed and forwarded again."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from test_pynetdicom_peers import node_cli

    (path,) = rg1_copies("UNCI", 1)

    def with_private_sequences(undefined: bool) -> Dataset:
        ds = pydicom.dcmread(path)
        ds.add_new((0x0019, 0x0010), "LO", "ACME IMAGING")
        nested = Dataset()
        nested.add_new((0x0029, 0x0010), "LO", "ACME")
        nested.add_new((0x0029, 0x1001), "OB", b"x" * 300)
        inner = Dataset()
        inner.add_new((0x0019, 0x1002), "LO", "detector 2")
        inner.add_new((0x0019, 0x1003), "SQ", Sequence([nested]))
        ds.add_new((0x0019, 0x1001), "SQ", Sequence([inner, Dataset()]))
        for sequence in (ds[0x0019, 0x1001], inner[0x0019, 0x1003]):
            sequence.is_undefined_length = undefined
            for item in sequence.value:
                item.is_undefined_length_sequence_item = undefined
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        return ds

    files = []
    for undefined in (True, False):
        out = tmp_path / f"private_sq_{'undefined' if undefined else 'defined'}.dcm"
        with_private_sequences(undefined).save_as(out, enforce_file_format=True)
        files.append(out)
    undefined_bytes, defined_bytes = (f.read_bytes() for f in files)
    sequence_undefined = b"\x19\x00\x01\x10\xff\xff\xff\xff"  # (0019,1001), length FFFFFFFF
    assert sequence_undefined in undefined_bytes and sequence_undefined not in defined_bytes
    for f in files:  # each sent as it is
        r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", f)
        assert r.returncode == 0, r.stdout + r.stderr
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    assert node.instance_rows(uid) == 1, node.log()[-2000:]
    assert "the same data set in another encoding" in node.log()
    assert "different content" not in node.log()
