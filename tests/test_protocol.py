"""Upper-layer details other peers rarely exercise, sent by hand: a command
split over several PDVs and PDUs, several PDVs in one PDU, C-ECHO message IDs,
requests the standard does not allow, commands without a response, PDUs
announced and never sent."""

import socket
import struct
import subprocess
import threading
import time

import pydicom

from nodetest import dataset_bytes, free_port, node_binary
from rawdicom import (
    ABORT,
    CR_STORAGE,
    RawAssociation,
    VERIFICATION,
    RELEASE_RQ,
    associate_ac,
    associate_rq,
    c_store_rq,
    command_set,
    parse_command,
    pdata,
    status_of,
    u16,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"  # RG1_UNCI is explicit VR, despite its name


def test_command_split_over_several_pdvs_and_pdus(node, rg1_copies):
    (path,) = rg1_copies("UNCI", 1)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    data = dataset_bytes(path)
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT])])
    command = c_store_rq(77, CR_STORAGE, uid)
    # Three command fragments: two in separate PDUs, the last sharing a PDU
    # with the first data fragment.
    raw.send(pdata(1, True, False, command[:10]))
    raw.send(pdata(1, True, False, command[10:30]))
    last_cmd = pdata(1, True, True, command[30:])
    first_data = pdata(1, False, False, data[:1000])
    body = last_cmd[6:] + first_data[6:]
    raw.send(struct.pack(">BxI", 0x04, len(body)) + body)
    rest = data[1000:]
    for i in range(0, len(rest), 16000):
        raw.send(pdata(1, False, i + 16000 >= len(rest), rest[i : i + 16000]))
    rsp = raw.read_command()
    assert status_of(rsp) == 0x0000
    assert struct.unpack("<H", rsp[0x0120])[0] == 77
    raw.close()
    stored = node.stored_path(pydicom.dcmread(path, stop_before_pixels=True))
    assert dataset_bytes(stored) == data, "the data set is stored byte for byte as sent"


def test_echo_answers_each_message_id(node):
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(3, VERIFICATION, [IMPLICIT])])
    for message_id in (1, 2, 65535):
        body = (
            struct.pack("<HHI", 0, 0x0002, 18) + VERIFICATION.encode() + b"\0"
            + struct.pack("<HHIH", 0, 0x0100, 2, 0x0030)
            + struct.pack("<HHIH", 0, 0x0110, 2, message_id)
            + struct.pack("<HHIH", 0, 0x0800, 2, 0x0101)
        )
        command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
        raw.send(pdata(3, True, True, command))
        rsp = raw.read_command()
        assert struct.unpack("<H", rsp[0x0100])[0] == 0x8030
        assert struct.unpack("<H", rsp[0x0120])[0] == message_id
        assert status_of(rsp) == 0x0000
    raw.close()


def echo_rq(message_id: int) -> bytes:
    return command_set(
        (0x0002, VERIFICATION.encode()), (0x0100, u16(0x0030)),
        (0x0110, u16(message_id)), (0x0800, u16(0x0101)),
    )


def test_a_response_is_split_to_the_callers_maximum_pdu_length(node):
    """A caller announcing Maximum Length Received 64 got the C-ECHO-RSP in
    one 84-byte P-DATA-TF (PS3.8 9.3.1: no PDU longer than announced)."""
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT])], max_pdu=64)
    raw.send(pdata(1, True, True, echo_rq(7)))
    command, last = b"", False
    while not last:
        pdu_type, body = raw.read_pdu()
        assert pdu_type == 0x04 and len(body) <= 64, (pdu_type, len(body))
        control = body[5]
        assert control & 1, "a command fragment"
        command += body[6:]
        last = bool(control & 2)
    raw.close()
    rsp = parse_command(command)
    assert struct.unpack("<H", rsp[0x0120])[0] == 7 and status_of(rsp) == 0x0000


def test_no_presentation_context_or_a_repeated_context_id_is_rejected(node):
    """PS3.8 7.1.1.13: at least one context, each with its own ID. A repeated
    ID was accepted twice, and a C-STORE on it then refused 0122 or parsed
    in the other context's transfer syntax (C000)."""
    for contexts in ([], [(1, VERIFICATION, [IMPLICIT]), (1, CR_STORAGE, [EXPLICIT])]):
        raw = RawAssociation(node.port)
        raw.send(associate_rq(node.ae_title, "RAWSCU", contexts))
        pdu_type, body = raw.read_pdu()
        raw.close()
        assert pdu_type == 0x03, contexts
        assert (body[1], body[2], body[3]) == (1, 1, 1)  # permanent, service user, no reason
    log = node.log()
    assert "no presentation context proposed" in log
    assert "presentation context ID 1 proposed twice" in log
    assert node.echo_ok()


def test_c_cancel_gets_no_response(node):
    """PS3.7 defines no C-CANCEL response; the node answered it with the
    non-existent command 0x8FFF."""
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT])])
    raw.send(pdata(1, True, True, command_set(
        (0x0100, u16(0x0FFF)), (0x0120, u16(1)), (0x0800, u16(0x0101)))))
    raw.send(pdata(1, True, True, echo_rq(5)))
    rsp = raw.read_command()  # the first answer is the echo's
    assert struct.unpack("<H", rsp[0x0100])[0] == 0x8030
    assert struct.unpack("<H", rsp[0x0120])[0] == 5
    raw.close()


def test_commands_no_response_can_answer_abort_the_association(node):
    """A response sent to the SCP, a command field that is no DIMSE request,
    a request without a Message ID: answered with invented command fields
    (0x8030 to a C-ECHO-RSP, 0x9234) or without (0000,0120). Now A-ABORT."""
    commands = {
        "C-ECHO-RSP": command_set((0x0002, VERIFICATION.encode()), (0x0100, u16(0x8030)),
                                  (0x0120, u16(1)), (0x0800, u16(0x0101)), (0x0900, u16(0))),
        "0x1234": command_set((0x0100, u16(0x1234)), (0x0110, u16(1)), (0x0800, u16(0x0101))),
        "no Message ID": command_set((0x0002, VERIFICATION.encode()), (0x0100, u16(0x0030)),
                                     (0x0800, u16(0x0101))),
    }
    for name, command in commands.items():
        raw = RawAssociation(node.port)
        raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT])])
        raw.send(pdata(1, True, True, command))
        pdu_type, _ = raw.read_pdu()
        assert pdu_type == 0x07, name
        assert raw.closed_by_peer(5), name
        raw.close()
    assert node.echo_ok()


def test_a_store_without_affected_sop_class_says_so(node, rg1_copies):
    (path,) = rg1_copies("UNCI", 1)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT])])
    raw.send(pdata(1, True, True, command_set(
        (0x0100, u16(0x0001)), (0x0110, u16(9)), (0x0700, u16(0)), (0x0800, u16(0)),
        (0x1000, uid.encode()))))
    raw.send(pdata(1, False, True, dataset_bytes(path)[:2000]))
    rsp = raw.read_command()
    raw.close()
    assert status_of(rsp) == 0xC000
    assert rsp[0x0902].rstrip(b"\0 ") == b"no Affected SOP Class UID"


def test_an_unsupported_operation_is_0211_and_no_refused_instance(node):
    """A C-FIND with its identifier was logged and counted as a refused
    instance ("C-STORE requests answered with a failure")."""
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [IMPLICIT])])
    raw.send(pdata(1, True, True, command_set(
        (0x0002, CR_STORAGE.encode()), (0x0100, u16(0x0020)), (0x0110, u16(3)),
        (0x0700, u16(0)), (0x0800, u16(0)))))
    raw.send(pdata(1, False, True, struct.pack("<HHI", 0x0010, 0x0010, 2) + b"*\0"))
    rsp = raw.read_command()
    raw.close()
    assert struct.unpack("<H", rsp[0x0100])[0] == 0x8020
    assert status_of(rsp) == 0x0211
    _, metrics = node.http("/metrics")
    assert "pneumo_instances_refused_total 0" in metrics.splitlines()
    assert "instance refused" not in node.log()


def test_a_c_store_without_a_data_set_is_refused_logged_and_counted(node):
    """A C-STORE-RQ saying it has no data set was answered C000 but neither
    logged nor counted, unlike every other refusal."""
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [IMPLICIT])])
    raw.send(pdata(1, True, True, command_set(
        (0x0002, CR_STORAGE.encode()), (0x0100, u16(0x0001)), (0x0110, u16(7)),
        (0x0700, u16(0)), (0x0800, u16(0x0101)), (0x1000, b"1.2.3.4\0"))))
    rsp = raw.read_command()
    raw.close()
    assert status_of(rsp) == 0xC000
    wait_for_log(node, "C-STORE without a data set")
    assert "instance refused" in node.log()
    _, metrics = node.http("/metrics")
    assert "pneumo_instances_refused_total 1" in metrics.splitlines()
    assert node.echo_ok()


def test_a_pdu_trickling_into_an_idle_association_is_bounded_by_the_read_timeout(node_factory):
    """Once a PDU has begun, the rest must come within read_timeout_s, also
    when it starts an idle association's next message (the idle timeout,
    minutes, bounded it)."""
    node = node_factory(dicom__read_timeout_s=2, dicom__idle_timeout_s=120).start()
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT])])
    pdu = pdata(1, True, True, echo_rq(1))
    started = time.monotonic()
    closed = drip(raw, [bytes([byte]) for byte in pdu[:-1]], pause=0.5)
    assert closed and time.monotonic() - started < 30, "the trickling PDU was not cut off"
    wait_for_log(node, "PDU not complete within 2 s")


def drip(raw: RawAssociation, pieces: list, pause: float) -> bool:
    """Sends `pieces` one by one, `pause` seconds apart; whether the node
    closed the connection before the last."""
    closed = False
    for piece in pieces:
        try:
            raw.send(piece)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if raw.closed_by_peer(pause):
            closed = True
            break
    raw.close()
    return closed


def wait_for_log(node, text: str) -> None:
    # Logged once the abort is sent: poll, the close can come first.
    deadline = time.monotonic() + 10
    while text not in node.log():
        assert time.monotonic() < deadline, f"not logged: {text}"
        time.sleep(0.05)


def test_a_message_dripping_in_pdu_by_pdu_is_cut_off_and_the_node_serves_on(node_factory):
    """Each PDU of a message came within read_timeout_s while the message
    never ended: the association held its slot for good (max_associations
    such peers shut out every modality). A message must now arrive at
    min_receive_rate_kib_s on average once begun, after read_timeout_s."""
    node = node_factory(dicom__read_timeout_s=2, dicom__idle_timeout_s=120).start()
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT])])
    command = echo_rq(1)
    started = time.monotonic()
    # a P-DATA-TF of one byte a second: each PDU well within read_timeout_s
    pdus = [pdata(1, True, i == len(command) - 1, bytes([byte])) for i, byte in enumerate(command)]
    closed = drip(raw, pdus, pause=1.0)
    assert closed and time.monotonic() - started < 20, "the dripping message was not cut off"
    wait_for_log(node, "message arriving slower than 16 KiB/s")
    assert node.echo_ok()


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_announced_pdu_length_is_not_allocated_before_its_bytes_arrive(node_factory):
    """Six bytes announcing a large PDU made the node zero a buffer of that
    size at once: 60 connections announcing 1 MiB association requests, or
    4 associations announcing 64 MiB P-DATA, cost 60 MiB / 256 MiB."""
    node = node_factory(dicom__max_pdu=64 << 20).start()
    assert node.echo_ok()
    before = rss_kib(node.proc.pid)
    held = []
    for n in range(60):
        # from four addresses: one holds a quarter of the handshakes at most
        s = socket.create_connection(("127.0.0.1", node.port), source_address=(f"127.0.0.{2 + n % 4}", 0))
        s.sendall(struct.pack(">BxI", 0x01, (1 << 20) - 1))
        held.append(s)
    for _ in range(4):
        raw = RawAssociation(node.port)
        raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT])])
        raw.send(struct.pack(">BxI", 0x04, (64 << 20) - 8))
        held.append(raw.sock)
    time.sleep(1)
    grown_mib = (rss_kib(node.proc.pid) - before) / 1024
    for s in held:
        s.close()
    assert grown_mib < 32, f"{grown_mib:.0f} MiB for PDUs that never came"
    assert node.echo_ok()


# --- the node's SCU --------------------------------------------------------

RELEASE_RP = struct.pack(">BxI", 0x06, 4) + bytes(4)


class ReleaseQuirkScp(threading.Thread):
    """A storage SCP that stores instances, then answers the A-RELEASE-RQ
    as PS3.8 7.2.2 allows: with its own A-RELEASE-RQ (a release collision),
    or with more P-DATA before its A-RELEASE-RP. Records what the node sent
    after its A-RELEASE-RQ. With the quirk "abort", it aborts the
    association after answering the first C-STORE; with "wrong-uid" its
    response names another SOP Instance UID."""

    def __init__(self, quirk: str):
        super().__init__(daemon=True)
        self.quirk = quirk
        self.port = free_port()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.after_release = []
        self.start()

    def read_to_the_close(self, raw, conn):
        """The PDU types the node sends until it closes the connection."""
        while True:
            try:
                self.after_release.append(raw.read_pdu()[0])
            except (OSError, ValueError, struct.error):
                break
        conn.close()

    def run(self):
        conn, _ = self.server.accept()
        conn.settimeout(20)
        raw = RawAssociation.__new__(RawAssociation)
        raw.sock = conn
        _, rq = raw.read_pdu()
        raw.send(associate_ac(rq))
        command, command_done, context_id = b"", False, 1
        while True:
            pdu_type, body = raw.read_pdu()
            if pdu_type == 0x05:
                break
            pos = 0
            while pos < len(body):
                length, context_id, control = struct.unpack_from(">IBB", body, pos)
                data = body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 1:
                    command += data
                    command_done = bool(control & 2)
                elif control & 2 and command_done and self.quirk == "release-instead":
                    # released instead of answering: what follows, to the close
                    raw.send(RELEASE_RQ)
                    self.read_to_the_close(raw, conn)
                    return
                elif control & 2 and command_done:
                    rq_cmd = parse_command(command)
                    raw.send(pdata(context_id, True, True, command_set(
                        (0x0002, rq_cmd[0x0002]), (0x0100, u16(0x8001)),
                        (0x0120, rq_cmd[0x0110]), (0x0800, u16(0x0101)), (0x0900, u16(0)),
                        (0x1000, b"1.2.3.4.5.6.7.8.9\0" if self.quirk == "wrong-uid" else rq_cmd[0x1000]))))
                    command, command_done = b"", False
                    if self.quirk == "abort":
                        raw.send(ABORT)
                        conn.close()
                        return
        if self.quirk == "silent-release":
            # never answers the A-RELEASE-RQ: what follows, to the close
            self.read_to_the_close(raw, conn)
            return
        if self.quirk == "collision":
            raw.send(RELEASE_RQ)
            self.after_release.append(raw.read_pdu()[0])  # the requestor answers first
            raw.send(RELEASE_RP)
        else:
            raw.send(pdata(context_id, True, True, echo_rq(99)))
            raw.send(RELEASE_RP)
        conn.close()


def test_a_response_naming_another_instance_is_reported(rg1_copies):
    """Success for the instance sent, but the response names another one
    (crossed answers at the peer): it was taken silently."""
    (path,) = rg1_copies("UNCI", 1)
    scp = ReleaseQuirkScp("wrong-uid")
    done = subprocess.run([node_binary(), "store", f"QUIRK@127.0.0.1:{scp.port}", path],
                          capture_output=True, text=True, timeout=60)
    scp.join(20)
    assert "the response names another instance, 1.2.3.4.5.6.7.8.9" in done.stdout, done.stdout + done.stderr


def test_a_release_never_answered_ends_with_an_abort(rg1_copies):
    """A peer that never answered the A-RELEASE-RQ saw the connection
    closed after 60 s without the A-ABORT PS3.8 9.2 calls for (ARTIM
    expiry, AA-2); and `store` waited 60 s whatever `outbox.response_timeout_s`
    said."""
    import os

    (path,) = rg1_copies("UNCI", 1)
    scp = ReleaseQuirkScp("silent-release")
    started = time.monotonic()
    done = subprocess.run([node_binary(), "store", f"QUIRK@127.0.0.1:{scp.port}", path],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PNEUMO__OUTBOX__RESPONSE_TIMEOUT_S": "2"})
    scp.join(20)
    assert time.monotonic() - started < 20
    assert done.returncode == 0 and "1 stored" in done.stdout, done.stdout + done.stderr
    assert scp.after_release == [0x07], scp.after_release  # A-ABORT, then the close


def test_a_rejection_says_what_to_fix():
    """The reason was Rust's debug form of the rejection source
    ("permanent: ServiceUser(CallingAETitleNotRecognized)")."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="STRICT")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["ONLY_THIS_ONE"]
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        done = subprocess.run([node_binary(), "echo", f"STRICT@127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert done.returncode != 0
    assert "rejected" in done.stderr and "permanently: calling AE title `PNEUMO` not recognized" in done.stderr, \
        done.stderr


def test_the_scu_completes_a_release_the_standard_allows(rg1_copies):
    """A release collision, or P-DATA before the A-RELEASE-RP: `store` said
    "protocol error", exited 1 and printed none of the results the peer had
    already given (the instance was stored)."""
    (path,) = rg1_copies("UNCI", 1)
    for quirk in ("collision", "pdata-first"):
        scp = ReleaseQuirkScp(quirk)
        done = subprocess.run(
            [node_binary(), "store", f"QUIRK@127.0.0.1:{scp.port}", path],
            capture_output=True, text=True, timeout=60,
        )
        scp.join(20)
        assert done.returncode == 0, (quirk, done.stdout, done.stderr)
        assert done.stdout.startswith("OK "), (quirk, done.stdout)
        assert "1 stored, 0 with warnings, 0 failed" in done.stdout
        if quirk == "collision":
            assert scp.after_release == [0x06]  # A-RELEASE-RP


def test_a_release_asked_by_the_receiver_is_answered_and_not_aborted(rg1_copies):
    """A receiver that releases instead of answering a C-STORE: the node
    answered A-RELEASE-RP and then, at once, A-ABORT; the releasing side
    closes the connection (PS3.8 7.2.1)."""
    (path,) = rg1_copies("UNCI", 1)
    scp = ReleaseQuirkScp("release-instead")
    done = subprocess.run([node_binary(), "store", f"QUIRK@127.0.0.1:{scp.port}", path],
                          capture_output=True, text=True, timeout=60)
    scp.join(20)
    assert done.returncode == 1 and "released the association" in done.stdout, (done.stdout, done.stderr)
    assert scp.after_release == [0x06], scp.after_release


def test_the_scu_keeps_the_answers_given_before_the_association_was_lost(rg1_copies):
    """The peer aborts after storing the first of three files: `store` used
    to print only "association aborted by the peer", not that the first
    file was stored."""
    paths = rg1_copies("UNCI", 3)
    scp = ReleaseQuirkScp("abort")
    done = subprocess.run(
        [node_binary(), "store", f"QUIRK@127.0.0.1:{scp.port}", *paths],
        capture_output=True, text=True, timeout=60,
    )
    scp.join(20)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("OK "), lines
    assert all(line.startswith("FAILED ") for line in lines[1:3]), lines
    assert "1 stored, 0 with warnings, 2 failed" in done.stdout


def test_a_malformed_associate_rq_is_aborted_and_the_log_says_why(node):
    """An item running past the end of the A-ASSOCIATE-RQ: aborted, and the
    log named no cause ("malformed A-ASSOCIATE-RQ" for every fault), so a
    site could not tell its modality what was wrong."""
    import struct

    rq = associate_rq(node.ae_title, "RAWSCU", [(1, VERIFICATION, [IMPLICIT])])
    # the last item (User Information) claims 200 bytes more than it has
    at = rq.rfind(b"\x50\x00")
    (length,) = struct.unpack(">H", rq[at + 2:at + 4])
    bad = rq[:at + 2] + struct.pack(">H", length + 200) + rq[at + 4:]
    raw = RawAssociation(node.port)
    raw.send(bad)
    pdu_type, _ = raw.read_pdu()
    raw.close()
    assert pdu_type == 0x07, "expected an A-ABORT"
    (line,) = [l for l in node.log().splitlines() if "malformed A-ASSOCIATE-RQ" in l]
    assert "error=" in line and len(line.split("error=", 1)[1]) > 10, line
    assert node.echo_ok()


def test_items_of_unknown_type_in_an_associate_rq_are_skipped(node):
    """PS3.8 9.3.1: items of unrecognised types are ignored and skipped. The
    node aborted an A-ASSOCIATE-RQ carrying one (DCMTK accepts it)."""
    rq = associate_rq(node.ae_title, "RAWSCU", [(1, VERIFICATION, [IMPLICIT])])
    body = rq[6:]
    first_context = body.index(b"\x20\x00", 68)
    body = (body[:first_context] + struct.pack(">BxH", 0x15, 3) + b"abc" + body[first_context:]
            + struct.pack(">BxH", 0x7F, 0))
    raw = RawAssociation(node.port)
    raw.send(struct.pack(">BxI", 0x01, len(body)) + body)
    pdu_type, _ = raw.read_pdu()
    raw.close()
    assert pdu_type == 0x02, "expected an A-ASSOCIATE-AC"
    (line,) = accepted_lines(node, 1)
    assert "accepted=1" in line, line


def test_sub_items_of_unknown_type_in_a_presentation_context_are_skipped(node):
    """PS3.8 9.3.1 again, inside a presentation context item: the node
    aborted the association for one unknown sub-item (0x45)."""
    rq = associate_rq(node.ae_title, "RAWSCU", [(1, VERIFICATION, [IMPLICIT])])
    body = rq[6:]
    at = body.index(b"\x20\x00", 68)
    (length,) = struct.unpack(">H", body[at + 2:at + 4])
    extra = struct.pack(">BxH", 0x45, 3) + b"xyz"
    item = (body[at:at + 2] + struct.pack(">H", length + len(extra)) + body[at + 4:at + 8] + extra
            + body[at + 8:at + 4 + length])
    body = body[:at] + item + body[at + 4 + length:]
    raw = RawAssociation(node.port)
    raw.send(struct.pack(">BxI", 0x01, len(body)) + body)
    pdu_type, _ = raw.read_pdu()
    raw.close()
    assert pdu_type == 0x02, f"expected an A-ASSOCIATE-AC, got {pdu_type:#x}"
    (line,) = accepted_lines(node, 1)
    assert "accepted=1" in line, line


def accepted_lines(node, n: int) -> list:
    """The log's first `n` "association accepted" lines, waited for: the
    node logs the line after it has sent the A-ASSOCIATE-AC."""
    deadline = time.monotonic() + 5
    while True:
        lines = [l for l in node.log().splitlines() if "association accepted" in l]
        if len(lines) >= n or time.monotonic() > deadline:
            return lines[:n]
        time.sleep(0.05)


def test_the_sop_classes_refused_in_negotiation_are_logged(node):
    """findscu against the node: every context refused, and the log said only
    "accepted=0", never which SOP class a site's C-FIND asked for."""
    study_root_find = "1.2.840.10008.5.1.4.1.2.2.1"
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, study_root_find, [IMPLICIT]), (3, VERIFICATION, [IMPLICIT]),
                                  (5, study_root_find, [EXPLICIT])])
    raw.close()
    (line,) = accepted_lines(node, 1)
    assert f"refused={study_root_find}" in line and "accepted=1" in line, line
    assert node.echo_ok()
    ok = accepted_lines(node, 2)[-1]
    assert "refused=" not in ok, ok


def test_a_class_proposed_in_syntaxes_the_node_lacks_is_not_logged_as_refused(node):
    """CR proposed only in the retired JPEG 4.52 (result 4), and again in
    Explicit VR (accepted): the log said "refused=<CR>" both times, read as
    "CR refused" under a configuration that accepts CR."""
    cr, retired_jpeg = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.4.52"
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, cr, [retired_jpeg])])
    raw.close()
    (line,) = accepted_lines(node, 1)
    assert f"refused_for_transfer_syntax={cr}" in line and " refused=" not in line, line
    assert "WARN" in line, line  # it can carry nothing
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, cr, [retired_jpeg]), (3, cr, [EXPLICIT])])
    raw.close()
    line = accepted_lines(node, 2)[-1]
    assert "refused" not in line and "INFO" in line, line


def test_a_chest_cad_sr_and_an_enhanced_dose_sr_are_taken_by_the_chest_profile(node):
    """Another chest CAD's SR and an Enhanced X-Ray Radiation Dose SR in a
    study with a radiograph were refused: Orthanc failed the whole send,
    and the radiograph was neither analysed nor forwarded."""
    chest_cad, enhanced_dose = "1.2.840.10008.5.1.4.1.1.88.65", "1.2.840.10008.5.1.4.1.1.88.76"
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, chest_cad, [EXPLICIT]), (3, enhanced_dose, [EXPLICIT])])
    raw.close()
    (line,) = accepted_lines(node, 1)
    assert "accepted=2" in line and "refused" not in line, line


def test_jpip_referenced_deflate_is_refused_in_negotiation(node):
    """JPIP (HTJ2K) Referenced Deflate were accepted, then every data set
    in them refused at C-STORE (deflated, and the node inflates only
    Deflated Explicit VR Little Endian's): refused per context, the sender
    offers another syntax."""
    cr = "1.2.840.10008.5.1.4.1.1.1"
    for n, syntax in enumerate(("1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"), start=1):
        raw = RawAssociation(node.port)
        raw.associate(node.ae_title, [(1, cr, [syntax]), (3, cr, [EXPLICIT])])
        raw.close()
        line = accepted_lines(node, n)[-1]
        assert "accepted=1" in line, line
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, cr, ["1.2.840.10008.1.2.4.95"])])
    raw.close()
    line = accepted_lines(node, 3)[-1]
    assert f"refused_for_transfer_syntax={cr}" in line and "accepted=0" in line, line


def test_what_a_peer_sends_cannot_forge_a_log_line(node):
    """A newline in a value the node logs (here a refused SOP class) wrote
    a line of the caller's choosing into the text log."""
    forged = "2026-01-01T00:00:00.000000Z  INFO pneumo_node::ingest: instance stored sop_instance_uid=9.9.9"
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, "1.2.3\n" + forged + "\r\x1b[31m", [IMPLICIT]),
                                  (3, VERIFICATION, [IMPLICIT])])
    raw.close()
    (line,) = accepted_lines(node, 1)
    assert 'refused="1.2.3\\n2026-01-01' in line, line
    assert not any(l.startswith("2026-01-01") for l in node.log().splitlines())
    assert node.echo_ok()
    # Fields of the peer's choosing inside the line (a logfmt reader kept
    # the last calling_ae), and names of 8,000 characters: quoted and cut.
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, "1.2.3 calling_ae=CT_ROOM_1 accepted=1", [IMPLICIT]),
                                  (3, "9" * 8000, [IMPLICIT]), (5, VERIFICATION, [IMPLICIT])])
    raw.close()
    line = accepted_lines(node, 3)[-1]
    assert 'refused="1.2.3 calling_ae=CT_ROOM_1 accepted=1",' in line and len(line) < 1000, line


def test_ae_titles_padded_with_nuls_are_accepted(node):
    """An older modality pads its titles with NULs, not spaces: the node
    refused it (control characters), where DCMTK accepts it. The padding is
    dropped; a NUL inside a title is still refused."""
    padded = lambda title: title + "\0" * (16 - len(title))  # noqa: E731
    raw = RawAssociation(node.port)
    raw.send(associate_rq(padded(node.ae_title), padded("KAMERA"), [(1, VERIFICATION, [IMPLICIT])]))
    pdu_type, _ = raw.read_pdu()
    raw.close()
    assert pdu_type == 0x02, "expected an A-ASSOCIATE-AC"
    (line,) = accepted_lines(node, 1)
    assert "calling_ae=KAMERA " in line, line
    raw = RawAssociation(node.port)
    raw.send(associate_rq(node.ae_title, "KAM\0ERA", [(1, VERIFICATION, [IMPLICIT])]))
    pdu_type, _ = raw.read_pdu()
    raw.close()
    assert pdu_type == 0x03, "a NUL inside a title: expected an A-ASSOCIATE-RJ"


def test_ae_titles_outside_ascii_are_refused(node):
    """PS3.5 6.2: an AE title is of the default character repertoire. A
    Latin-1 `É` (0xC9) was accepted (and logged garbled); UTF-8's was
    refused only for its 0x89 byte, a C1 control character."""
    for raw_title in (b"KAM\xc9RA", "KAMÉRA".encode()):
        rq = associate_rq(node.ae_title, "KAMXRA", [(1, VERIFICATION, [IMPLICIT])])
        rq = rq.replace(b"KAMXRA" + b" " * (len(raw_title) - 6), raw_title, 1)
        raw = RawAssociation(node.port)
        raw.send(rq)
        pdu_type, _ = raw.read_pdu()
        raw.close()
        assert pdu_type == 0x03, f"{raw_title!r}: expected an A-ASSOCIATE-RJ"
    assert node.log().count("characters outside ASCII") == 2, node.log()[-2000:]
    assert node.echo_ok()


def test_a_c_echo_is_of_verification_and_its_answer_names_no_instance(node):
    """A C-ECHO naming CR Image Storage was answered 0000 (a C-STORE
    naming another class than its context's is refused 0122), and an
    Affected SOP Instance UID in a C-ECHO came back in its response, which
    PS3.7 9.3.5.2 gives none. A C-ECHO announcing a data set was answered
    at once and the association aborted when the data came: its data is
    now read, then it is refused."""
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, VERIFICATION, [IMPLICIT]), (3, CR_STORAGE, [IMPLICIT])])

    def echo(pc_id, message_id, sop_class, instance=None, data=None):
        elements = [(0x0002, sop_class.encode()), (0x0100, u16(0x0030)), (0x0110, u16(message_id)),
                    (0x0800, u16(0x0101 if data is None else 0x0000))]
        if instance:
            elements.append((0x1000, instance.encode()))
        raw.send(pdata(pc_id, True, True, command_set(*elements)))
        if data is not None:
            raw.send(pdata(pc_id, False, True, data))
        return raw.read_command()

    plain = echo(1, 1, VERIFICATION, instance="1.2.3.4")
    assert status_of(plain) == 0x0000 and 0x1000 not in plain, plain
    assert status_of(echo(3, 2, CR_STORAGE)) == 0x0122
    with_data = echo(1, 3, VERIFICATION, data=bytes(8))
    assert status_of(with_data) == 0x0211, hex(status_of(with_data))
    assert status_of(echo(1, 4, VERIFICATION)) == 0x0000  # still associated
    raw.close()
    assert node.echo_ok()
