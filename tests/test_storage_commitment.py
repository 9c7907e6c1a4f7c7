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
        deadline = time.monotonic() + timeout
        while not self.reports:
            assert time.monotonic() < deadline, "no N-EVENT-REPORT"
            time.sleep(0.05)
        return self.reports.pop(0)

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
        bad_uid = request(generate_uid(), [(CR, "1.2.x")])
        empty = request(generate_uid(), [])
        for ds, why in ((no_transaction, "Transaction UID"), (bad_uid, "item 1"),
                        (empty, "Referenced SOP Sequence")):
            status = requester.ask(ds)
            assert status.Status == 0x0115 and why in status.ErrorComment, (status, why)
        assert requester.ask(request(generate_uid(), kept), action_type=2).Status == 0x0123
        assert requester.ask(request(generate_uid(), kept), instance="1.2.3").Status == 0x0117
        assert requester.reports == []
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
