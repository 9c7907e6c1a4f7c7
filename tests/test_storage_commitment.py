"""Storage Commitment (push model) as SCP. A modality set to ask for
commitment before deleting its images had its request refused (no
presentation context), and marked every study sent to the node as not
committed. The node answers on the same association, right after the
N-ACTION response: every instance it acknowledged was durable first."""

import time

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage, StorageCommitmentPushModel

from nodetest import node_factory, rg1_copies, run_dcmtk  # noqa: F401

COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
CR = ComputedRadiographyImageStorage


def request(transaction_uid, refs):
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = []
    for class_uid, instance_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = class_uid
        item.ReferencedSOPInstanceUID = instance_uid
        ds.ReferencedSOPSequence.append(item)
    return ds


def first_report(reports, timeout):
    """The first N-EVENT-REPORT received (taken off `reports`), waited for."""
    deadline = time.monotonic() + timeout
    while not reports:
        assert time.monotonic() < deadline, "no N-EVENT-REPORT"
        time.sleep(0.05)
    return reports.pop(0)


class Requester:
    """A modality asking for commitment, taking the result on its association."""

    def __init__(self, node, transfer_syntax="1.2.840.10008.1.2"):
        self.reports = []
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(StorageCommitmentPushModel, [transfer_syntax])
        self.assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                                  evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report)])
        assert self.assoc.is_established
        (self.context,) = self.assoc.accepted_contexts

    def on_report(self, event):
        self.reports.append((event.request.EventTypeID, event.request.AffectedSOPInstanceUID,
                             event.event_information))
        return 0x0000, None

    def ask(self, ds, action_type=1, instance=COMMITMENT_INSTANCE):
        status, _ = self.assoc.send_n_action(ds, action_type, StorageCommitmentPushModel, instance)
        return status

    def result(self, timeout=20):
        return first_report(self.reports, timeout)

    def release(self):
        self.assoc.release()


def uids(sequence):
    return [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in sequence]


def test_commitment_is_answered_for_what_was_kept_and_not_for_the_rest(node_factory, rg1_copies):
    node = node_factory().start()
    files = rg1_copies("UNCI", 3)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files[:2])
    kept = [(CR, pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files[:2]]
    never_sent = (CR, pydicom.dcmread(files[2], stop_before_pixels=True).SOPInstanceUID)
    other_class = ("1.2.840.10008.5.1.4.1.1.1.1", kept[0][1])  # DX: it came as CR

    for syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
        requester = Requester(node, syntax)
        try:
            transaction = generate_uid()
            status = requester.ask(request(transaction, kept))
            assert status.Status == 0x0000, status
            event_type, instance, info = requester.result()
            assert (event_type, instance) == (1, COMMITMENT_INSTANCE)
            assert info.TransactionUID == transaction
            assert uids(info.ReferencedSOPSequence) == kept
            assert "FailedSOPSequence" not in info
            assert info.RetrieveAETitle == node.ae_title

            transaction = generate_uid()
            status = requester.ask(request(transaction, kept + [never_sent, other_class]))
            assert status.Status == 0x0000, status
            event_type, _, info = requester.result()
            assert event_type == 2 and info.TransactionUID == transaction
            assert uids(info.ReferencedSOPSequence) == kept
            failed = {(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID): i.FailureReason
                      for i in info.FailedSOPSequence}
            assert failed == {(never_sent[1], CR): 0x0112, (other_class[1], other_class[0]): 0x0119}, failed
        finally:
            requester.release()
    log = node.log()
    assert "storage commitment" in log and "committed=2 failed=2" in log, log[-3000:]
    assert "storage commitment result delivered" in log


def test_bad_commitment_requests_are_refused_and_the_node_goes_on(node_factory, rg1_copies):
    node = node_factory().start()
    (image,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
    kept = [(CR, pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)]
    requester = Requester(node)
    try:
        no_transaction = request(generate_uid(), kept)
        del no_transaction.TransactionUID
        no_instance = request(generate_uid(), kept)
        del no_instance.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        empty = request(generate_uid(), [])
        for ds, why in ((no_transaction, "Transaction UID"), (no_instance, "item 1: no Referenced SOP Instance"),
                        (empty, "Referenced SOP Sequence")):
            status = requester.ask(ds)
            assert status.Status == 0x0115 and why in status.ErrorComment, (status, why)
        assert requester.ask(request(generate_uid(), kept), action_type=2).Status == 0x0123
        assert requester.ask(request(generate_uid(), kept), instance="1.2.3").Status == 0x0117
        assert requester.reports == []
        # An item whose UID is none, or empty, fails alone (each failed
        # the whole request); leading zeros pass, as at C-STORE.
        status = requester.ask(request(generate_uid(),
                                       kept + [(CR, "1.2.x"), (CR, "1.2.099.1"), (CR, "")]))
        assert status.Status == 0x0000, status
        event_type, _, info = requester.result()
        assert event_type == 2 and uids(info.ReferencedSOPSequence) == kept
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == \
            [("1.2.x", 0x0112), ("1.2.099.1", 0x0112), ("", 0x0112)]
        # the association still serves
        status = requester.ask(request(generate_uid(), kept))
        assert status.Status == 0x0000 and requester.result()[0] == 1
    finally:
        requester.release()
    # and the node: a storage and a commitment on a new association
    (second,) = rg1_copies("UNCI", 2)[1:]
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, second)
    requester = Requester(node)
    try:
        sop = pydicom.dcmread(second, stop_before_pixels=True).SOPInstanceUID
        assert requester.ask(request(generate_uid(), [(CR, sop)])).Status == 0x0000
        assert requester.result()[0] == 1
    finally:
        requester.release()


def test_a_request_nested_thousands_deep_is_refused_before_it_is_parsed(node_factory):
    """A valid request followed by 20,000 nested sequences (720 KB, under
    the 16 MiB limit) overflowed the parser's stack: the process died. The
    request's data set is walked first, as a C-STORE's is. (Sent raw:
    pynetdicom would parse and re-encode it.)"""
    import struct

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from rawdicom import RawAssociation, command_set, pdata, u16

    node = node_factory().start()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, request(generate_uid(), [(CR, generate_uid())]))
    depth = 20_000
    opening = struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF) + \
        struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    # (0009,1010) sorts after (0008,1199): the data set stays in order
    data = buffer.getvalue() + opening * depth + closing * depth
    command = command_set((0x0003, b"1.2.840.10008.1.20.1"), (0x0100, u16(0x0130)), (0x0110, u16(7)),
                          (0x0800, u16(0)), (0x1001, COMMITMENT_INSTANCE.encode()), (0x1008, u16(1)))
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, StorageCommitmentPushModel, ["1.2.840.10008.1.2.1"])])
    raw.send(pdata(1, True, True, command))
    for i in range(0, len(data), 16000):
        raw.send(pdata(1, False, i + 16000 >= len(data), data[i:i + 16000]))
    rsp = raw.read_command()
    raw.close()
    assert int.from_bytes(rsp[0x0900], "little") == 0x0115, rsp
    assert b"nested deeper than" in rsp[0x0902], rsp[0x0902]
    assert node.alive() and node.echo_ok()


def test_a_file_cut_short_is_not_committed(node_factory, rg1_copies):
    """A stored file emptied or cut was reported committed (present was
    enough), and a modality deletes its copy on commitment."""
    node = node_factory().start()
    files = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
    node.wait_for_analyses()
    kept = [(CR, pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    damaged = node.stored_path(pydicom.dcmread(files[1], stop_before_pixels=True))
    damaged.write_bytes(damaged.read_bytes()[:1000])
    requester = Requester(node)
    try:
        assert requester.ask(request(generate_uid(), kept)).Status == 0x0000
        event_type, _, info = requester.result()
        assert event_type == 2 and uids(info.ReferencedSOPSequence) == kept[:1]
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == [(kept[1][1], 0x0112)]
    finally:
        requester.release()
    assert "instances not committed" in node.log() and "count=1" in node.log()


def test_commitment_can_be_turned_off(node_factory):
    node = node_factory(dicom__storage_commitment="false").start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.add_requested_context(CR)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    try:
        assert assoc.is_established
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [CR]
        assert [c.abstract_syntax for c in assoc.rejected_contexts] == [StorageCommitmentPushModel]
    finally:
        assoc.release()


class ResultListener:
    """A requester's own SCP, taking commitment results on associations
    the node opens (the node as SCP of the class: role selection)."""

    def __init__(self, ae_title="MODALITY", port=None, status=0x0000):
        from nodetest import free_port

        self.reports, self.status = [], status
        self.port = port or free_port()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(StorageCommitmentPushModel, ["1.2.840.10008.1.2"],
                                      scu_role=True, scp_role=True)
        self.server = None

    def start(self):
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_N_EVENT_REPORT, self.on_report)])
        return self

    def on_report(self, event):
        self.reports.append((event.request.EventTypeID, event.assoc.requestor.ae_title,
                             event.event_information))
        return self.status, None

    def result(self, timeout=30):
        return first_report(self.reports, timeout)

    def stop(self):
        if self.server:
            self.server.shutdown()


def requesters_config(node, listener_port, ae_title="MODALITY"):
    path = node.workdir / "requesters.toml"
    path.write_text(f'[[dicom.commitment_requesters]]\nae_title = "{ae_title}"\n'
                    f'host = "127.0.0.1"\nport = {listener_port}\n')
    return path


def test_a_requester_set_so_gets_its_result_on_an_association_the_node_opens(node_factory, rg1_copies):
    """Requesters such as Orthanc release their association once the
    N-ACTION is answered and take the result on one of their own: they got
    none, and kept the commitment pending. Others still get it on theirs."""
    listener = ResultListener().start()
    try:
        node = node_factory()
        node.start(requesters_config(node, listener.port))
        files = rg1_copies("UNCI", 2)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, files[0])
        kept = [(CR, pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)]
        never_sent = (CR, pydicom.dcmread(files[1], stop_before_pixels=True).SOPInstanceUID)
        requester = Requester(node)
        transaction = generate_uid()
        assert requester.ask(request(transaction, kept + [never_sent])).Status == 0x0000
        requester.release()
        event_type, calling_ae, info = listener.result()
        assert (event_type, calling_ae.strip()) == (2, node.ae_title)
        assert info.TransactionUID == transaction and uids(info.ReferencedSOPSequence) == kept
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in info.FailedSOPSequence] == \
            [(never_sent[1], 0x0112)]
        assert requester.reports == []
        time.sleep(0.5)
        assert 'pneumo_commitment_results{state="sent"} 1' in node.http("/metrics")[1]

        # another requester: on its own association, as before
        other = Requester.__new__(Requester)
        other.reports = []
        ae = AE(ae_title="OTHER")
        ae.add_requested_context(StorageCommitmentPushModel)
        other.assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, other.on_report)])
        try:
            assert other.ask(request(generate_uid(), kept)).Status == 0x0000
            assert other.result()[0] == 1
        finally:
            other.release()
        assert listener.reports == []
    finally:
        listener.stop()


def test_a_result_the_requester_cannot_take_yet_is_kept_across_a_restart(node_factory, rg1_copies):
    """The requester's SCP is down when it asks: the result is retried,
    and still owed after the node restarts; nothing is lost."""
    from nodetest import free_port

    port = free_port()
    node = node_factory()
    node.start(requesters_config(node, port))
    (image,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
    kept = [(CR, pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)]
    requester = Requester(node)
    transaction = generate_uid()
    assert requester.ask(request(transaction, kept)).Status == 0x0000
    requester.release()
    deadline = time.monotonic() + 20
    while "storage commitment result not sent" not in node.log():
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.1)
    assert 'pneumo_commitment_results{state="pending"} 1' in node.http("/metrics")[1]
    node.stop()
    listener = ResultListener(port=port).start()
    try:
        node.start()
        event_type, _, info = listener.result(timeout=40)
        assert event_type == 1 and info.TransactionUID == transaction
        assert uids(info.ReferencedSOPSequence) == kept
        time.sleep(0.5)
        assert listener.reports == []  # once
    finally:
        listener.stop()
    assert "storage commitment result delivered" in node.log()


def test_a_result_the_requester_refuses_is_not_sent_again(node_factory, rg1_copies):
    listener = ResultListener(status=0x0110).start()
    try:
        node = node_factory()
        node.start(requesters_config(node, listener.port))
        (image,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        requester = Requester(node)
        sop = pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID
        assert requester.ask(request(generate_uid(), [(CR, sop)])).Status == 0x0000
        requester.release()
        listener.result()
        time.sleep(8)  # past the first retry's wait
        assert listener.reports == []
        assert "storage commitment result not taken by the requester" in node.log()
        assert node.alive() and node.echo_ok()
    finally:
        listener.stop()


def test_orthanc_gets_its_commitment_result(node_factory, rg1_copies, tmp_path):
    """Orthanc (1.10) asks with an N-ACTION, releases, and takes the
    N-EVENT-REPORT on its own DICOM server: its commitment stayed
    "Pending" for ever. Set as a requester, it gets the result."""
    from nodetest import free_port
    from orthanc import Orthanc

    node = node_factory()
    orthanc_port = free_port()
    node.start(requesters_config(node, orthanc_port, ae_title="ORTHANC"))
    pacs = Orthanc(tmp_path / "orthanc", dicom_port=orthanc_port,
                   modalities={"pneumo": [node.ae_title, "127.0.0.1", node.port]}).start()
    try:
        files = rg1_copies("UNCI", 2)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, files[0])
        kept = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
        missing = pydicom.dcmread(files[1], stop_before_pixels=True).SOPInstanceUID
        answer = pacs.post("/modalities/pneumo/storage-commitment", {
            "DicomInstances": [{"SOPClassUID": CR, "SOPInstanceUID": kept},
                               {"SOPClassUID": CR, "SOPInstanceUID": missing}]})
        deadline = time.monotonic() + 30
        while (report := pacs.get(answer["Path"]))["Status"] == "Pending":
            assert time.monotonic() < deadline, (report, node.log()[-3000:])
            time.sleep(0.2)
        assert report["Status"] == "Failure", report  # one of the two is missing
        assert report["Success"] == [{"SOPClassUID": CR, "SOPInstanceUID": kept}], report
        assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in report["Failures"]] == [(missing, 0x0112)], report
    finally:
        pacs.stop()


def test_a_requester_that_never_answers_holds_up_no_other(node_factory, rg1_copies):
    """Results were sent one at a time: each of five owed to a requester
    that accepts connections and never answers took the response time-out,
    and another requester's result waited behind them all."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    listener = ResultListener(ae_title="OK_SCU").start()
    try:
        node = node_factory(outbox__response_timeout_s="20")
        config = node.workdir / "requesters.toml"
        config.write_text(
            '[[dicom.commitment_requesters]]\nae_title = "SILENT"\nhost = "127.0.0.1"\n'
            f'port = {silent.getsockname()[1]}\n'
            '[[dicom.commitment_requesters]]\nae_title = "OK_SCU"\nhost = "127.0.0.1"\n'
            f'port = {listener.port}\n')
        node.start(config)
        (image,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        kept = [(CR, pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)]
        for _ in range(5):
            ask_apart(node, "SILENT", kept)
        asked = time.monotonic()
        ask_apart(node, "OK_SCU", kept)
        listener.result(timeout=60)
        # behind five silent ones in turn it came after 100 s (5 x 20 s);
        # sent in rounds, after the silent one's 20 s
        assert time.monotonic() - asked < 10
        # the silent requester is tried once a round, its others put off
        deadline = time.monotonic() + 45
        while "not tried: " not in "".join(
                str(r) for r in node.db().execute("SELECT last_status FROM commitment_results")):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # A stop does not wait for the silent requester (it held the grace).
        ask_apart(node, "SILENT", kept)
        time.sleep(1)
        stopping = time.monotonic()
        node.stop()
        assert time.monotonic() - stopping < 8
        assert "still running at the end of the shutdown grace" not in node.log()
    finally:
        listener.stop()
        silent.close()


def test_a_requester_that_refuses_the_node_the_scp_role_is_told_so(node_factory, rg1_copies):
    listener = ResultListener()
    listener.ae.supported_contexts = []
    listener.ae.add_supported_context(StorageCommitmentPushModel, ["1.2.840.10008.1.2"],
                                      scu_role=True, scp_role=False)
    listener.start()
    try:
        node = node_factory()
        node.start(requesters_config(node, listener.port))
        (image,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        ask_apart(node, "MODALITY", [(CR, pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)])
        deadline = time.monotonic() + 20
        while "accepted no Storage Commitment Push Model context with the node as its SCP" not in node.log():
            assert time.monotonic() < deadline, node.log()[-3000:]
            time.sleep(0.2)
        assert listener.reports == [] and node.alive()
    finally:
        listener.stop()


def ask_apart(node, calling_ae, refs):
    """A requester that asks and releases at once (its result goes apart)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    status, _ = assoc.send_n_action(request(generate_uid(), refs), 1, StorageCommitmentPushModel,
                                    COMMITMENT_INSTANCE)
    assoc.release()
    assert status.Status == 0x0000


def test_results_owed_to_a_requester_no_longer_configured_are_given_up(node_factory, rg1_copies):
    from nodetest import free_port

    node = node_factory()
    node.start(requesters_config(node, free_port(), ae_title="GONE"))
    (image,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
    ask_apart(node, "GONE", [(CR, pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID)])
    node.stop()
    node.start(requesters_config(node, free_port(), ae_title="OTHER"))
    deadline = time.monotonic() + 20
    while 'pneumo_commitment_results{state="given_up"} 1' not in node.http("/metrics")[1]:
        assert time.monotonic() < deadline, node.log()[-3000:]
        time.sleep(0.2)
    assert "storage commitment results given up: the requester is no longer in" in node.log()
