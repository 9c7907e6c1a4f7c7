"""pynetdicom as sender and as receiver; association control."""

import subprocess
import threading
import time

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    MRImageStorage,
    Verification,
)

from nodetest import dataset_bytes, free_port, node_binary, run_dcmtk, same_dataset
from rawdicom import IMPLICIT_LE, VERIFICATION, RawAssociation, associate_rq, rejection

CR = ComputedRadiographyImageStorage


def sender(max_pdu: int = 16384, calling: str = "PYNETDICOM") -> AE:
    ae = AE(ae_title=calling)
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CR, ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
    ae.add_requested_context(Verification)
    return ae


@pytest.mark.parametrize("max_pdu", [16384, 1048576])
def test_several_instances_per_association(node_factory, rg1_copies, max_pdu):
    node = node_factory(dicom__max_pdu=max_pdu).start()
    files = rg1_copies("UNCI", 4)
    assoc = sender(max_pdu).associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    for f in files:
        status = assoc.send_c_store(pydicom.dcmread(f))
        assert status.Status == 0x0000
    assoc.release()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert node.instance_rows(ds.SOPInstanceUID) == 1
        assert same_dataset(node.stored_path(ds), f)


def test_four_associations_at_once(node, rg1_copies):
    files = rg1_copies("UNCI", 12)
    results, errors = [], []

    def send(chunk):
        try:
            assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
            for f in chunk:
                results.append(assoc.send_c_store(f).Status)
            assoc.release()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == [0] * 12
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 0") == 12


# Rejections are read from the A-ASSOCIATE-RJ PDU itself: pynetdicom, when a
# rejection arrives before its main thread looks, reports a failed connection
# and an abort instead (a race in pynetdicom 3.0.4, seen under load).


def test_ae_titles_with_control_characters_or_blank_are_rejected_and_logged_escaped(node):
    """A line feed in an AE title wrote a forged line into the node's log
    (the calling title was accepted and logged raw); a blank calling AE
    title was accepted and logged empty."""
    forged = "INFO forged"  # the title has 16 characters at most
    assert rejection(node.port, node.ae_title, f"X\n{forged}") == (0x01, 0x01, 0x03)
    assert rejection(node.port, "PNEU\nMO", "X") == (0x01, 0x01, 0x07)
    assert rejection(node.port, "PNE\0UMO", "X") == (0x01, 0x01, 0x07)
    assert rejection(node.port, node.ae_title, " " * 16) == (0x01, 0x01, 0x03)
    assert node.echo_ok()
    log = node.log()
    assert not any(line.startswith(forged) for line in log.splitlines()), log[-2000:]
    assert "\0" not in log
    assert "calling AE title has control characters" in log and "calling AE title is blank" in log


def test_wrong_called_ae_is_rejected(node):
    # permanent, service user, called AE title not recognised
    assert rejection(node.port, "SOMEONE_ELSE", "PYNETDICOM") == (0x01, 0x01, 0x07)
    r = run_dcmtk("echoscu", "-aec", "SOMEONE_ELSE", "127.0.0.1", node.port, check=False)
    assert r.returncode != 0 and "Called AE Title Not Recognized" in r.stdout + r.stderr, r.stdout + r.stderr
    assert node.echo_ok()


def test_calling_ae_not_allowed_and_host_check(node_factory, tmp_path):
    config = tmp_path / "allow.toml"
    config.write_text(
        '[[dicom.allowed_callers]]\nae_title = "GOODMOD"\nhost = "127.0.0.1"\n'
        '[[dicom.allowed_callers]]\nae_title = "ELSEWHERE"\nhost = "10.9.9.9"\n'
        '[[dicom.allowed_callers]]\nae_title = "ECHOSCU"\n'
    )
    node = node_factory().start(config_file=config)
    # permanent, service user, calling AE title not recognised
    assert rejection(node.port, node.ae_title, "INTRUDER") == (0x01, 0x01, 0x03)
    assert rejection(node.port, node.ae_title, "ELSEWHERE") == (0x01, 0x01, 0x03)  # wrong host
    # the log tells the two apart: a listed caller from another host
    assert "calling AE title not in dicom.allowed_callers" in node.log()
    assert "is in dicom.allowed_callers, but not from 127.0.0.1" in node.log()
    assoc = sender(calling="GOODMOD").associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assoc.release()


def test_too_many_associations(node_factory):
    node = node_factory(dicom__max_associations=2).start()
    held = [sender().associate("127.0.0.1", node.port, ae_title=node.ae_title) for _ in range(2)]
    assert all(a.is_established for a in held)
    # transient, service provider (presentation), local limit exceeded
    assert rejection(node.port, node.ae_title, "PYNETDICOM") == (0x02, 0x03, 0x02)
    for a in held:
        a.release()
    again = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert again.is_established
    again.release()
    _, text = node.http("/metrics")
    assert "pneumo_associations_rejected_total 1" in text.splitlines()


def test_one_address_never_holds_every_association(node_factory):
    """One host keeping its associations open (a C-ECHO on each just inside
    idle_timeout_s) held every slot: every modality was refused "local
    limit exceeded" for as long as it liked. One address holds three
    quarters of them at most."""
    node = node_factory(dicom__max_associations=4).start()
    held = [sender().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=("127.0.0.2", 0))
            for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        fourth = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=("127.0.0.2", 0))
        assert fourth.is_rejected
        assert "association limit per address (3 of 4) reached by 127.0.0.2" in node.log()
        other = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title, bind_address=("127.0.0.3", 0))
        assert other.is_established, "another address is served"
        other.release()
    finally:
        for a in held:
            a.release()


def assert_both_slots_free(node):
    """Two associations (the node's max_associations here) open at once."""
    held = [sender().associate("127.0.0.1", node.port, ae_title=node.ae_title) for _ in range(2)]
    assert all(a.is_established for a in held)
    for a in held:
        a.release()


def test_bare_connections_do_not_take_the_association_slots(node_factory):
    """TCP connections that send nothing (a port scan, a load balancer's
    health check) used to count against max_associations until
    read_timeout_s: a modality was then refused "local limit exceeded"."""
    import socket

    node = node_factory(dicom__max_associations=2).start()
    bare = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(5)]
    try:
        time.sleep(0.2)
        assert_both_slots_free(node)
    finally:
        for s in bare:
            s.close()


def test_silent_connections_from_one_address_do_not_shut_out_the_others(node_factory):
    """Silent connections from one host (64 here, renewed as they time out)
    held every handshake slot: every modality was refused for
    read_timeout_s. One address now holds a quarter of them at most."""
    import socket

    node = node_factory(dicom__max_associations=2).start()  # 64 handshakes, 16 per address

    def silent(source: str) -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.connect(("127.0.0.1", node.port))
        return s

    held = [silent("127.0.0.2") for _ in range(16)]
    try:
        time.sleep(0.2)
        extra = silent("127.0.0.2")
        extra.settimeout(5)
        assert extra.recv(1) == b"", "the 17th silent connection from one address is closed"
        extra.close()
        assert "from this address (16); closing this one" in node.log()
        # another address is served
        assert_both_slots_free(node)
        assert node.echo_ok()
    finally:
        for s in held:
            s.close()


def test_rejected_requests_do_not_take_the_association_slots(node_factory):
    """A rejected request used to hold an association slot while the node
    waited (2 s) for the peer to close: peers that never close, sending
    requests nobody accepts, locked out every sender."""
    node = node_factory(dicom__max_associations=2).start()
    wrong = [RawAssociation(node.port) for _ in range(4)]
    try:
        for raw in wrong:
            raw.send(associate_rq("NOT-THIS-NODE", "HOSTILE", [(1, VERIFICATION, [IMPLICIT_LE])]))
            assert raw.read_pdu()[0] == 0x03
        # The four rejected connections are still open: the node must not
        # count them as associations.
        assert_both_slots_free(node)
    finally:
        for raw in wrong:
            raw.close()
    assert "called AE title `NOT-THIS-NODE` is not this node's" in node.log()


def test_unsupported_abstract_syntax_is_rejected_alone(node, rg1_copies):
    ae = sender()
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    by_syntax = {cx.abstract_syntax: cx for cx in assoc.rejected_contexts + assoc.accepted_contexts}
    assert by_syntax[MRImageStorage].result == 0x03  # abstract syntax not supported
    assert by_syntax[CR].result == 0x00
    (path,) = rg1_copies("UNCI", 1)
    assert assoc.send_c_store(path).Status == 0x0000
    assoc.release()


def test_what_a_cr_room_sends_with_its_images_is_stored_and_not_analysed(node, tmp_path):
    """A dose report, a presentation state, a key object selection or a
    scanned requisition sent with the radiographs was refused under the
    default `chest`, which failed the modality's (or a PACS's) whole send
    of the study, the radiographs included."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    companions = {
        "1.2.840.10008.5.1.4.1.1.88.67": "SR",  # X-Ray Radiation Dose SR
        "1.2.840.10008.5.1.4.1.1.88.59": "KO",  # Key Object Selection
        "1.2.840.10008.5.1.4.1.1.11.1": "PR",   # Grayscale Softcopy Presentation State
        "1.2.840.10008.5.1.4.1.1.104.1": "DOC",  # Encapsulated PDF
    }
    ae = sender()
    for sop_class in companions:
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    uids = {}
    for sop_class, modality in companions.items():
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.PatientID, ds.PatientName = modality, "ROOM", "Room^Companion"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        assert assoc.send_c_store(ds).Status == 0x0000, sop_class
        uids[ds.SOPInstanceUID] = modality
    assoc.release()
    from test_routing_orthanc import wait_until

    def states():
        with node.db() as c:
            return {uid: c.execute("SELECT j.state FROM jobs j JOIN instances i ON i.id = j.instance_id"
                                   " WHERE i.sop_instance_uid = ?", (uid,)).fetchone() for uid in uids}
    wait_until(lambda: all(s == ("skipped",) for s in states().values()), what="stored, not analysed")


def test_all_storage_accepts_mr_and_also_accept_a_private_class(node_factory):
    """A vendor's private class travelling with a study (Siemens CSA
    Non-Image) was refused even under all-storage: Orthanc failed its
    whole send of the study."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    csa = "1.3.12.2.1107.5.9.1"
    node = node_factory(dicom__accept="all-storage", dicom__also_accept=csa).start()
    ae = sender()
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(csa, ExplicitVRLittleEndian)
    ae.add_requested_context("1.3.12.2.1107.5.9.2", ExplicitVRLittleEndian)  # not named: refused
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
    assert MRImageStorage in accepted and csa in accepted and "1.3.12.2.1107.5.9.2" not in accepted
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = csa, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "MR", "CSA"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()


# --- the node as SCU -------------------------------------------------------


class PynetdicomReceiver:
    """A pynetdicom Storage SCP that keeps the raw bytes it receives and
    answers with `status` (or `status(sop_instance_uid)` when callable)."""

    def __init__(self, status: int = 0x0000, ae_title: str = "PYSCP",
                 transfer_syntaxes=("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90"),
                 sop_classes=(CR,), port: int = None):
        self.received = {}
        self.transfer_syntax = {}  # SOP Instance UID -> the syntax it came in
        self.status = status
        # While set, each C-STORE is answered only once it is cleared (a
        # destination that accepts the association and then does not answer).
        self.hold = None
        # SOP classes whose C-STORE aborts the association, unanswered (a
        # PACS that cannot take that data set).
        self.abort_classes = ()
        self.stores = 0  # C-STOREs answered, repeats included
        self.entered = 0  # C-STOREs begun (answered or held)
        self.port = port or free_port()
        ae = AE(ae_title=ae_title)
        for sop_class in sop_classes:
            ae.add_supported_context(sop_class, list(transfer_syntaxes))
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self.on_store)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def on_store(self, event):
        self.entered += 1
        if self.hold is not None:
            self.hold.wait(60)
        if event.request.AffectedSOPClassUID in self.abort_classes:
            event.assoc.abort()
            return 0xC000  # never sent: the association is gone
        uid = event.request.AffectedSOPInstanceUID
        self.stores += 1
        self.received[uid] = event.request.DataSet.getvalue()
        self.transfer_syntax[uid] = event.context.transfer_syntax
        return self.status(uid) if callable(self.status) else self.status

    def dataset(self, uid: str) -> pydicom.Dataset:
        """What arrived for `uid`, decoded in the syntax it came in."""
        from pydicom.filereader import read_dataset
        from pydicom.filebase import DicomBytesIO

        ts = pydicom.uid.UID(self.transfer_syntax[uid])
        fp = DicomBytesIO(self.received[uid])
        return read_dataset(fp, ts.is_implicit_VR, ts.is_little_endian)

    def close(self):
        self.server.shutdown()


def node_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(node_binary()), *map(str, args)], capture_output=True, text=True, timeout=120)


def test_node_scu_to_pynetdicom_sends_the_file_bytes(rg1_copies):
    receiver = PynetdicomReceiver()
    try:
        files = rg1_copies("UNCI", 2) + rg1_copies("J2KR", 1)
        r = node_cli("echo", f"PYSCP@127.0.0.1:{receiver.port}")
        assert r.returncode == 0, r.stderr
        r = node_cli("store", f"PYSCP@127.0.0.1:{receiver.port}", *files)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3 stored" in r.stdout
        for f in files:
            uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            assert receiver.received[uid] == dataset_bytes(f)
    finally:
        receiver.close()


def test_peer_answering_a700_is_a_failure(rg1_copies):
    receiver = PynetdicomReceiver(status=0xA700)
    try:
        (f,) = rg1_copies("UNCI", 1)
        r = node_cli("store", f"PYSCP@127.0.0.1:{receiver.port}", f)
        assert r.returncode != 0
        assert "FAILED" in r.stdout and "A700H" in r.stdout
    finally:
        receiver.close()


def test_peer_answering_a_warning_is_reported(rg1_copies):
    receiver = PynetdicomReceiver(status=0xB000)
    try:
        (f,) = rg1_copies("UNCI", 1)
        r = node_cli("store", f"PYSCP@127.0.0.1:{receiver.port}", f)
        assert r.returncode == 0
        assert "WARNING" in r.stdout and "B000H" in r.stdout
    finally:
        receiver.close()


def test_node_scu_reencodes_for_a_peer_that_takes_only_implicit_vr(rg1_copies):
    """Implicit VR Little Endian is the one syntax every SCP supports; an
    older PACS may take nothing else. The node proposes it beside the file's
    own syntax and re-encodes the data set for it."""
    receiver = PynetdicomReceiver(ae_title="OLDPACS", transfer_syntaxes=["1.2.840.10008.1.2"])
    try:
        (f,) = rg1_copies("UNCI", 1)  # Explicit VR Little Endian
        r = node_cli("store", f"OLDPACS@127.0.0.1:{receiver.port}", f)
        assert r.returncode == 0, r.stdout + r.stderr
        src = pydicom.dcmread(f)
        assert receiver.transfer_syntax[src.SOPInstanceUID] == "1.2.840.10008.1.2"
        got = receiver.dataset(src.SOPInstanceUID)
        assert got.PixelData == src.PixelData and got.PatientName == src.PatientName
    finally:
        receiver.close()


def test_node_scu_reencodes_implicit_vr_for_a_peer_that_takes_only_explicit_vr(rg1_copies, tmp_path):
    """A PACS configured to take only Explicit VR (against PS3.5 10.1, but
    one setting away in Orthanc) parked Implicit VR originals for good, with
    a reason saying the fallback had been proposed."""
    receiver = PynetdicomReceiver(ae_title="NEWPACS", transfer_syntaxes=["1.2.840.10008.1.2.1"])
    try:
        (f,) = rg1_copies("UNCI", 1)
        src = pydicom.dcmread(f)
        implicit = tmp_path / "implicit.dcm"
        src.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
        src.save_as(implicit, enforce_file_format=True, implicit_vr=True, little_endian=True)
        r = node_cli("store", f"NEWPACS@127.0.0.1:{receiver.port}", implicit)
        assert r.returncode == 0, r.stdout + r.stderr
        assert receiver.transfer_syntax[src.SOPInstanceUID] == "1.2.840.10008.1.2.1"
        got = receiver.dataset(src.SOPInstanceUID)
        assert got.PixelData == src.PixelData and got.PatientName == src.PatientName
    finally:
        receiver.close()
