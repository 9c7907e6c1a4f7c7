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
