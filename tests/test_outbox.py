"""The outbox against destinations that misbehave: one that never answers
holds up no other destination, one that stops reading times out; an answer
that is neither success nor warning is not a delivery, and one the database
cannot record pauses the destination; an operator's retry names a real
destination and also hurries deliveries waiting out their back-off; a
re-sent instance is routed by the rules for its caller."""

import signal
import threading
import time

import pydicom
import pytest
import requests

from nodetest import node_factory, rg1_copies, run_dcmtk  # noqa: F401 (fixtures)
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)
from test_pynetdicom_peers import PynetdicomReceiver, node_cli
from test_routing_orthanc import node_config, wait_until


def outbox(node) -> dict:
    with node.db() as c:
        return {d: (state, status) for d, state, status in
                c.execute("SELECT destination, state, last_status FROM outbox ORDER BY id")}


def test_a_destination_that_never_answers_holds_up_no_other(node_factory, rg1_copies, tmp_path):
    silent, fast = PynetdicomReceiver(ae_title="SILENT"), PynetdicomReceiver(ae_title="FAST")
    silent.hold = threading.Event()
    try:
        # `a-silent` sorts first: one loop over destinations served it first.
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "a-silent", "ae_title": "SILENT", "port": silent.port},
             {"name": "b-fast", "ae_title": "FAST", "port": fast.port}],
            [{"destinations": ["a-silent", "b-fast"]}],
            response_timeout_s=120,
        )
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        # Delivered to FAST while SILENT still holds its C-STORE.
        wait_until(lambda: uid in fast.received, timeout=30, what="delivery to the answering destination")
        assert uid not in silent.received
        wait_until(lambda: outbox(node).get("b-fast", (None,))[0] == "sent")
        assert outbox(node)["a-silent"][0] == "pending"
        silent.hold.set()
        wait_until(lambda: outbox(node)["a-silent"][0] == "sent", timeout=30)
    finally:
        silent.hold.set()
        silent.close()
        fast.close()


def test_cancel_and_pending_answers_are_not_deliveries(node_factory, rg1_copies, tmp_path):
    cancel, pending = PynetdicomReceiver(status=0xFE00), PynetdicomReceiver(status=0xFF00, ae_title="PEND")
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "cancel", "ae_title": "PYSCP", "port": cancel.port},
             {"name": "pending", "ae_title": "PEND", "port": pending.port}],
            [{"destinations": ["cancel", "pending"]}],
            retry_base_s=60, retry_cap_s=600,
        )
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: all(status for _, status in outbox(node).values()) and len(outbox(node)) == 2)
        assert outbox(node) == {"cancel": ("pending", "FE00H"), "pending": ("pending", "FF00H")}

        # The operator's retry: an unknown name is refused; a known one
        # makes the rows waiting out their back-off due now.
        url = f"http://127.0.0.1:{node.http_port}/api/deliveries/retry"
        r = requests.post(url + "?destination=pacs", timeout=10)
        assert r.status_code == 400 and r.json()["destinations"] == ["cancel", "pending"]
        cancel.status = 0x0000
        r = requests.post(url + "?destination=cancel", timeout=10)
        assert r.status_code == 200 and r.json() == {"requeued": 1}
        wait_until(lambda: outbox(node)["cancel"] == ("sent", "0000H"), timeout=30)
        assert outbox(node)["pending"] == ("pending", "FF00H")
    finally:
        cancel.close()
        pending.close()


def results_to(path, port: int):
    """A configuration whose one destination, DCMTK's storescp (the
    `storescp` fixture) on `port`, receives the results."""
    path.write_text('[[destinations]]\nname = "pacs"\nae_title = "STORESCP"\n'
                    f'host = "127.0.0.1"\nport = {port}\nresults = true\n')
    return path


def test_a_copy_whose_report_was_already_delivered_is_delivered_too(node_factory, rg1_copies, storescp, tmp_path):
    """The same radiograph re-sent with a change (a corrected comment):
    kept beside the first, analysed, linked to the first's report (same
    patient and study), which the results destination already has. The
    second job used to stay `reported`."""
    port, _ = storescp
    node = node_factory().start(config_file=results_to(tmp_path / "node.toml", port))
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 1, timeout=60)
    changed = pydicom.dcmread(f)
    changed.ImageComments = "corrected"
    f = tmp_path / "changed.dcm"
    changed.save_as(f, enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)  # other content
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs") == 2)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 2, timeout=60)
    assert node.count("SELECT COUNT(*) FROM outbox") == 1  # one report, sent once


def test_a_re_sent_instance_is_routed_by_the_rules_for_its_caller_once(node_factory, rg1_copies, tmp_path):
    """An instance first received from a caller no rule forwards, then
    re-sent (identical) by one a rule forwards: nothing is written again, but
    it is forwarded; re-sent once more, it is not sent a second time."""
    receiver = PynetdicomReceiver(ae_title="PACS")
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "pacs", "ae_title": "PACS", "port": receiver.port}],
            [{"destinations": ["pacs"], "calling_ae_titles": ["ER_CR"]}],
        )
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        run_dcmtk("storescu", "-aet", "OTHER", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        node.wait_for_analyses()
        assert outbox(node) == {}
        run_dcmtk("storescu", "-aet", "ER_CR", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: outbox(node).get("pacs", (None,))[0] == "sent")
        assert uid in receiver.received
        run_dcmtk("storescu", "-aet", "ER_CR", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        assert node.count("SELECT COUNT(*) FROM outbox") == 1 and node.instance_rows(uid) == 1
        assert node.count("SELECT COUNT(*) FROM jobs") == 1
    finally:
        receiver.close()


def results_destination(tmp_path, name: str, ae_title: str, port: int, more: str = ""):
    """A node configuration with one destination that takes the results,
    and `more` TOML after it."""
    config = tmp_path / "node.toml"
    config.write_text(f'[[destinations]]\nname = "{name}"\nae_title = "{ae_title}"\n'
                      f'host = "127.0.0.1"\nport = {port}\nresults = true\n' + more)
    return config


class SilentReader:
    """A destination that accepts the association and then reads nothing
    more (a PACS process stopped, a stalled network path): the sender's
    writes block once the socket buffers are full."""

    def __init__(self):
        import socket
        import struct

        from nodetest import free_port
        from rawdicom import associate_ac

        self.port = free_port()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen()
        self.conns = []

        def serve():
            try:
                while True:
                    conn, _ = self.server.accept()
                    self.conns.append(conn)
                    header = conn.recv(6, socket.MSG_WAITALL)
                    body = conn.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
                    conn.sendall(associate_ac(body))
            except OSError:
                pass  # closed

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.server.close()
        for c in self.conns:
            c.close()


class UnproposedSyntaxAcceptor:
    """A destination that accepts every presentation context in one
    transfer syntax, proposed or not (against PS3.8 9.3.3.2), and answers a
    release."""

    def __init__(self, syntax: str):
        import socket
        import struct

        from nodetest import free_port
        from rawdicom import associate_ac

        self.port = free_port()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen()
        self.associations = 0

        def answer(conn):
            with conn:
                while True:
                    header = conn.recv(6, socket.MSG_WAITALL)
                    if len(header) < 6:
                        return
                    body = conn.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)
                    if header[0] == 0x01:
                        self.associations += 1
                        conn.sendall(associate_ac(body, syntax=syntax))
                    elif header[0] == 0x05:
                        conn.sendall(bytes([0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
                        return
                    else:
                        return  # a P-DATA: nothing should come in a context never proposed

        def serve():
            try:
                while True:
                    conn, _ = self.server.accept()
                    threading.Thread(target=answer, args=(conn,), daemon=True).start()
            except OSError:
                pass  # closed

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.server.close()


def test_a_destination_accepting_a_syntax_never_proposed_parks_with_that_reason(node_factory, rg1_copies, tmp_path):
    """The reason said "accepted no presentation context" and, for the SR,
    named report.sop_class, which would not help: the peer accepted the
    contexts, in JPEG Baseline, which the node never proposed for an
    uncompressed image or an SR. Nothing is sent in such a context."""
    jpeg_baseline = "1.2.840.10008.1.2.4.50"
    peer = UnproposedSyntaxAcceptor(jpeg_baseline)
    try:
        config = results_destination(tmp_path, "odd", "ODD", peer.port,
                                     '[[routing.forward]]\ndestinations = ["odd"]\n')
        node = node_factory().start(config_file=config)
        (image,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'parked'") == 2, timeout=60)
        with node.db() as c:
            reasons = [r for (r,) in c.execute("SELECT last_status FROM outbox")]
        for reason in reasons:
            assert f"in transfer syntax {jpeg_baseline}, which was not proposed" in reason, reason
            assert "no presentation context" not in reason and "report.sop_class" not in reason, reason
        assert peer.associations >= 1
        assert "not proposed for it" in node.log() and node.echo_ok()
    finally:
        peer.close()


class SlowLink:
    """A TCP relay to `port` that passes what the node sends at about
    `rate` bytes a second (a throttled WAN link to a remote archive);
    `rate = None` passes it at once."""

    def __init__(self, port: int, rate: int = 160_000):
        import socket

        from nodetest import free_port

        self.rate, self.forwarded = rate, 0
        self.port = free_port()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen()

        def pipe(src, dst, throttled):
            try:
                while data := src.recv(16384):
                    dst.sendall(data)
                    if throttled:
                        self.forwarded += len(data)
                        if self.rate:
                            time.sleep(len(data) / self.rate)
            except OSError:
                pass
            finally:
                for end in (src, dst):
                    try:
                        end.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve():
            try:
                while True:
                    conn, _ = self.server.accept()
                    upstream = socket.create_connection(("127.0.0.1", port))
                    threading.Thread(target=pipe, args=(conn, upstream, True), daemon=True).start()
                    threading.Thread(target=pipe, args=(upstream, conn, False), daemon=True).start()
            except OSError:
                pass  # closed

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.server.close()


def test_a_forward_cut_by_the_end_of_the_shutdown_grace_is_sent_whole_after_the_restart(
        node_factory, rg1_copies, tmp_path):
    """A stop while a 7 MB original crawls over a slow link to the archive:
    the delivery is cut when dicom.shutdown_grace_s ends (the process does
    not wait for the link), the archive stores nothing of it, and the row
    stays owed: after the restart the instance is sent whole, once."""
    archive = PynetdicomReceiver(ae_title="REMOTE")
    link = SlowLink(archive.port)
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "remote", "ae_title": "REMOTE", "port": link.port}],
                             [{"destinations": ["remote"]}])
        node = node_factory(dicom__shutdown_grace_s=1).start(config_file=config)
        (image,) = rg1_copies("UNCI", 1)
        uid = pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        wait_until(lambda: link.forwarded > 1_000_000, timeout=60)
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(30)
        assert link.forwarded < image.stat().st_size, "the link was not slow enough to cut the delivery"
        assert "deliveries still running at the end of the shutdown grace" in node.log()
        assert archive.received == {}
        assert node.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'") == 1

        link.rate = None
        node.start()
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=60)
        assert list(archive.received) == [uid] and archive.stores == 1
        assert pydicom.dcmread(image).PixelData == archive.dataset(uid).PixelData
    finally:
        link.close()
        archive.close()


def test_a_destination_that_stops_reading_times_out_and_is_retried(node_factory, rg1_copies, tmp_path):
    """Writes have a deadline too: the delivery used to hang for good."""
    silent = SilentReader()
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "stalled", "ae_title": "STALLED", "port": silent.port}],
            [{"destinations": ["stalled"]}],
            response_timeout_s=2, retry_base_s=60, retry_cap_s=600,
        )
        node = node_factory().start(config_file=config)
        files = rg1_copies("UNCI", 3)  # 7 MB each: more than any socket buffer holds
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE last_status LIKE '%stopped reading%'") >= 1,
                   timeout=30)
        assert node.echo_ok()
        # The destination is put off: the rows behind wait, untried.
        assert node.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending'") == 3
    finally:
        silent.close()


def fill_the_disk_for_sent_rows(node):
    """A trigger stands for a full disk: "sent" cannot be written."""
    with node.db() as c:
        c.execute("CREATE TRIGGER full_disk BEFORE UPDATE ON outbox WHEN NEW.state = 'sent' "
                  "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")


def free_the_disk(node):
    with node.db() as c:
        c.execute("DROP TRIGGER full_disk")


def test_an_answer_the_database_cannot_record_pauses_the_destination(node_factory, rg1_copies, tmp_path):
    """The PACS stored it, but "sent" cannot be written (a trigger stands for
    a full disk): the row is still due. The loop used to send it again at
    once, hundreds of times; then after each 5 s pause (382 C-STOREs for 50
    instances a minute). It now pauses, longer each time, and records the
    answer it has when it can, without sending again."""
    receiver = PynetdicomReceiver(ae_title="PACS")
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "pacs", "ae_title": "PACS", "port": receiver.port}],
            [{"destinations": ["pacs"]}],
        )
        node = node_factory().start(config_file=config)
        fill_the_disk_for_sent_rows(node)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: receiver.stores >= 1)
        time.sleep(8)  # past the first pause (5 s)
        assert receiver.stores == 1, receiver.stores
        assert "deliveries paused" in node.log()
        free_the_disk(node)
        wait_until(lambda: outbox(node)["pacs"][0] == "sent", timeout=30)  # after the pause
        assert receiver.stores == 1, receiver.stores
        assert "delivered (recorded late)" in node.log()
    finally:
        receiver.close()


def test_a_re_sent_instance_brings_its_report_to_a_results_destination_added_since(
        node_factory, rg1_copies, storescp, tmp_path):
    """Analysed before any PACS was configured; the PACS added, the study
    re-sent: its SR, made already, is delivered (it never reached it)."""
    node = node_factory().start()
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1
    node.stop()

    port, received = storescp
    node.start(config_file=results_to(tmp_path / "node.toml", port))
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 1, timeout=30)
    (sr,) = received.iterdir()
    assert pydicom.dcmread(sr).Modality == "SR"
    assert node.count("SELECT COUNT(*) FROM jobs") == 1  # nothing analysed again


def test_a_job_is_delivered_only_once_its_companion_image_is(node_factory, rg1_copies, tmp_path):
    """A results destination that takes SRs but not the companion image
    (no presentation context for Secondary Capture): the SR is delivered,
    the image parked, and the job stays `reported` (it was `delivered`
    whatever became of the image); the status API lists both deliveries."""
    comprehensive_3d_sr = "1.2.840.10008.5.1.4.1.1.88.34"
    pacs = PynetdicomReceiver(ae_title="SRONLY", sop_classes=(comprehensive_3d_sr,))
    try:
        config = results_destination(tmp_path, "pacs", "SRONLY", pacs.port, '[report]\ncompanion_sc = true\n')
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state != 'pending'") == 2, timeout=60)
        assert node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1
        assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1

        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        (copy,) = requests.get(f"http://127.0.0.1:{node.http_port}/api/instances/{uid}", timeout=10).json()["copies"]
        states = sorted(d["state"] for d in copy["deliveries"])
        assert states == ["parked", "sent"], copy["deliveries"]
        parked = next(d for d in copy["deliveries"] if d["state"] == "parked")
        assert parked["kind"] == "report" and parked["sop_instance_uid"] != copy["job"]["sr_sop_instance_uid"]
        # Looked up by its own UID, a report's delivery is a report's too.
        sr_uid = copy["job"]["sr_sop_instance_uid"]
        (sr,) = requests.get(f"http://127.0.0.1:{node.http_port}/api/instances/{sr_uid}", timeout=10).json()["copies"]
        assert [d["kind"] for d in sr["deliveries"]] == ["report"], sr["deliveries"]
    finally:
        pacs.close()


def test_a_destination_that_is_down_gets_one_attempt_per_back_off_not_one_per_instance(
        node_factory, rg1_copies, tmp_path):
    """A study arriving while the PACS is down: each new row used to be due
    at once, whatever the destination's back-off, so every instance made
    its own connection attempt (67 in 2 s for three 60-image studies)."""
    from nodetest import free_port

    config = node_config(tmp_path / "node.toml",
                         [{"name": "pacs", "ae_title": "PACS", "port": free_port()}],
                         [{"destinations": ["pacs"]}], retry_base_s=60, retry_cap_s=600)
    node = node_factory().start(config_file=config)
    files = rg1_copies("UNCI", 8)
    for f in files:  # one association each, as modalities send
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 8)
    time.sleep(2)
    attempts = node.log().count("delivery failed; will retry")
    assert 1 <= attempts <= 2, node.log()[-3000:]
    with node.db() as c:
        due = {t for (t,) in c.execute("SELECT next_attempt_at_ms FROM outbox")}
    assert len(due) == 1, "the rows wait for the same next attempt"

    # What is owed, and why, without reading the database: a page at a time.
    api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
    page = requests.get(f"{api}?state=pending&destination=pacs&limit=5", timeout=10).json()
    assert len(page["deliveries"]) == 5 and page["next_before_id"] == page["deliveries"][-1]["id"]
    rest = requests.get(f"{api}?state=pending&before_id={page['next_before_id']}", timeout=10).json()
    assert len(rest["deliveries"]) == 3 and rest["next_before_id"] is None
    row = page["deliveries"][0]
    assert row["kind"] == "original" and row["configured"] is True and row["destination"] == "pacs"
    assert "Connection refused" in (row["last_status"] or "") or row["attempts"] == 0, row
    assert requests.get(f"{api}?state=lost", timeout=10).status_code == 400
    assert requests.get(f"{api}?dest=pacs", timeout=10).status_code == 400

    # The PACS is gone for good: the operator cancels what it is owed.
    assert requests.post(f"{api}/cancel", timeout=10).status_code == 400  # no destination: refused
    assert requests.post(f"{api}/cancel?destination=pacs&state=sent", timeout=10).status_code == 400
    r = requests.post(f"{api}/cancel?destination=pacs", timeout=10)
    assert r.status_code == 200 and r.json() == {"cancelled": 8}
    assert node.count("SELECT COUNT(*) FROM outbox") == 0
    assert "deliveries cancelled by the operator" in node.log()


def test_after_an_outage_an_image_reaches_the_pacs_before_its_report(node_factory, rg1_copies, tmp_path):
    """Rows go least-tried first: the image, tried while the PACS was down,
    went behind its report, made later and never tried, and the PACS had a
    report of an image it did not have."""
    from nodetest import free_port

    port = free_port()
    config = results_destination(tmp_path, "pacs", "PACS", port,
                                 '[[routing.forward]]\ndestinations = ["pacs"]\n'
                                 '[outbox]\nretry_base_s = 5\nretry_cap_s = 5\n')
    node = node_factory().start(config_file=config)
    (f,) = rg1_copies("UNCI", 1)
    image_uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    query = ("SELECT i.generated, o.attempts FROM outbox o JOIN instances i ON i.id = o.instance_id"
             " ORDER BY o.id")
    wait_until(lambda: [g for g, _ in node.db().execute(query)] == [0, 1], timeout=30,
               what="the image and its report owed")
    wait_until(lambda: node.db().execute(query).fetchall()[0][1] >= 1, what="the image tried")
    assert node.db().execute(query).fetchall()[1][1] == 0, "the report is not tried yet"

    pacs = PynetdicomReceiver(ae_title="PACS", port=port, sop_classes=(
        "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.88.34"))
    try:
        wait_until(lambda: len(pacs.received) == 2, timeout=30, what="both delivered")
        assert list(pacs.received)[0] == image_uid, "the image arrives first"
    finally:
        pacs.close()


def test_a_report_does_not_wait_for_an_image_the_pacs_aborts_on(node_factory, rg1_copies, tmp_path):
    """A PACS that aborts the association on the image (before any answer:
    the destination's failure, so the image goes first in every round): its
    report waited for the image's delivery, for good."""
    cr, sr_3d = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.88.34"
    pacs = PynetdicomReceiver(ae_title="PACS", sop_classes=(cr, sr_3d))
    pacs.abort_classes = (cr,)
    try:
        config = results_destination(tmp_path, "pacs", "PACS", pacs.port,
                                     '[[routing.forward]]\ndestinations = ["pacs"]\n'
                                     '[outbox]\nretry_base_s = 1\nretry_cap_s = 2\n')
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: len(pacs.received) == 1, timeout=40, what="the report delivered")
        (uid,) = pacs.received
        assert pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID != uid  # the report, not the image
        with node.db() as c:
            (state, status) = c.execute("SELECT o.state, o.last_status FROM outbox o"
                                        " JOIN instances i ON i.id = o.instance_id WHERE i.generated = 0").fetchone()
        assert state == "pending" and "aborted" in status, status
    finally:
        pacs.close()


def test_an_instance_the_pacs_aborts_on_holds_up_no_later_image(node_factory, rg1_copies, tmp_path):
    """Due alone, the row a PACS aborts on was the first C-STORE of its
    association: lost before any answer, it put the whole destination off,
    and every image and report owed there meanwhile waited up to
    retry_cap_s, at each of its turns. Two such instances put it off still,
    but what is owed to it from then on is tried at once."""
    cr, dx = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"
    pacs = PynetdicomReceiver(ae_title="PACS", sop_classes=(cr, dx))
    pacs.abort_classes = (cr,)
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": pacs.port}],
                             [{"destinations": ["pacs"]}], retry_base_s=30, retry_cap_s=300)
        node = node_factory().start(config_file=config)
        f, g = rg1_copies("UNCI", 2)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE attempts = 1") == 1,
                   what="the image the PACS aborts on tried")
        assert "on this instance; the others go on" in node.log()
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, g)
        wait_until(lambda: "on two instances in a row" in node.log(), what="a second such image")
        assert "does the destination know this node's AE title" in node.log()

        later = pydicom.dcmread(f)
        later.SOPClassUID = later.file_meta.MediaStorageSOPClassUID = dx
        later.SOPInstanceUID = later.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        later.save_as(tmp_path / "dx.dcm", enforce_file_format=True)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "dx.dcm")
        # At once, not after the aborted one's 30 s.
        wait_until(lambda: later.SOPInstanceUID in pacs.received, timeout=15, what="the later image delivered")
    finally:
        pacs.close()


def test_a_pacs_too_slow_to_answer_two_instances_is_said_to_be_slow(node_factory, rg1_copies, tmp_path):
    """Two instances in a row unanswered within outbox.response_timeout_s:
    the reason asked whether the PACS knew the node's AE title (the hint
    for an abort), not whether it was slow or the time-out short."""
    pacs = PynetdicomReceiver(ae_title="PACS")
    pacs.hold = threading.Event()
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": pacs.port}],
                             [{"destinations": ["pacs"]}], retry_base_s=1, retry_cap_s=2,
                             response_timeout_s=2)
        node = node_factory().start(config_file=config)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 2))
        wait_until(lambda: "on two instances in a row" in node.log(), timeout=60, what="two time-outs")
        line = next(l for l in node.log().splitlines() if "on two instances in a row" in l)
        assert "outbox.response_timeout_s (2 s) too short" in line and "AE title" not in line, line
    finally:
        pacs.hold.set()
        pacs.close()


def test_an_operator_moves_what_a_renamed_destination_is_owed(node_factory, rg1_copies, storescp, tmp_path):
    """The PACS was down and is then configured under another name: its
    rows stayed owed to the old one. The operator moves them; an instance
    the new name is already owed (sent again since) is not sent twice."""
    from nodetest import free_port

    port, out = storescp
    down = node_config(tmp_path / "old.toml", [{"name": "pacs", "ae_title": "PACS", "port": free_port()}],
                       [{"destinations": ["pacs"]}], retry_base_s=60, retry_cap_s=600)
    node = node_factory().start(config_file=down)
    files = rg1_copies("UNCI", 3)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE destination = 'pacs'") == 3)
    node.stop()
    renamed = node_config(tmp_path / "new.toml", [{"name": "pacs-main", "ae_title": "STORESCP", "port": port}],
                          [{"destinations": ["pacs-main"]}])
    node.start(config_file=renamed)
    # Said at start, not when the rows next fall due (up to retry_cap_s later).
    wait_until(lambda: "deliveries owed to a destination that is not configured" in node.log(), timeout=10,
               what="the warning at start")
    assert "destination=pacs state=pending deliveries=3" in node.log(), node.log()[-2000:]
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, files[0])  # owed to pacs-main anew
    wait_until(lambda: len(list(out.iterdir())) == 1, what="the re-sent instance delivered")

    api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
    # The old name lists its rows, and "none" under a filter that matches
    # none of them (it was a 400 "no destination named", as for a typo)
    assert node.http("/api/deliveries?destination=pacs")[0] == 200
    assert node.http("/api/deliveries?destination=pacs&state=parked") == \
        (200, {"deliveries": [], "next_before_id": None})
    assert requests.post(f"{api}/move?from=pacs&to=nowhere", timeout=10).status_code == 400
    assert requests.post(f"{api}/move?from=pacs-main&to=pacs-main", timeout=10).status_code == 400
    assert requests.post(f"{api}/move?to=pacs-main", timeout=10).status_code == 400
    assert node.count("SELECT COUNT(*) FROM outbox WHERE destination = 'pacs'") == 3  # refusals changed nothing
    r = requests.post(f"{api}/move?from=pacs&to=pacs-main", timeout=10)
    assert r.status_code == 200 and r.json() == {"moved": 2, "dropped": 1}, r.text
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 3, timeout=30,
               what="the moved deliveries sent")
    assert node.count("SELECT COUNT(*) FROM outbox WHERE destination = 'pacs'") == 0
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.iterdir()} == sent
    assert len(list(out.iterdir())) == 3  # each once
    assert "deliveries moved by the operator" in node.log()


def test_a_pacs_without_3d_sr_gets_the_node_s_reports_as_comprehensive_sr(node_factory, rg1_copies, tmp_path):
    """An older PACS knows Comprehensive SR but not Comprehensive 3D SR (the
    default). Its reports were parked for good ("no presentation context"),
    and reports already made could not be made again in another class. The
    node's own report now goes as Comprehensive SR, the same document under
    a UID of its own (another class is another instance), the same UID
    each time it is sent."""
    import subprocess

    comprehensive_sr = "1.2.840.10008.5.1.4.1.1.88.33"
    pacs = PynetdicomReceiver(ae_title="OLDPACS", sop_classes=(comprehensive_sr,))
    try:
        config = results_destination(tmp_path, "pacs", "OLDPACS", pacs.port)
        node = node_factory().start(config_file=config)
        first, second = rg1_copies("UNCI", 2)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state != 'pending'") == 1, timeout=60)
        with node.db() as c:
            state, reason, report_uid, report_path = c.execute(
                "SELECT o.state, o.last_status, i.sop_instance_uid, i.path FROM outbox o "
                "JOIN instances i ON i.id = o.instance_id").fetchone()
        (sent_uid,) = pacs.received
        assert state == "sent" and f"sent as Comprehensive SR {sent_uid}" in reason, (state, reason)
        assert sent_uid != report_uid and sent_uid.startswith("2.25.")
        sent, stored = pacs.dataset(sent_uid), pydicom.dcmread(node.data_dir / report_path)
        assert sent.SOPClassUID == comprehensive_sr and stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
        assert sent.SOPInstanceUID == sent_uid
        assert sent.ContentSequence == stored.ContentSequence and sent.SeriesInstanceUID == stored.SeriesInstanceUID
        # A valid Comprehensive SR (dciodvfy knows each IOD's rules).
        copy = tmp_path / "sent.dcm"
        sent.file_meta = pydicom.dataset.FileMetaDataset()
        sent.file_meta.MediaStorageSOPClassUID, sent.file_meta.MediaStorageSOPInstanceUID = comprehensive_sr, sent_uid
        sent.file_meta.TransferSyntaxUID = pacs.transfer_syntax[sent_uid]
        pydicom.dcmwrite(copy, sent, enforce_file_format=True)
        out = subprocess.run(["/usr/bin/dciodvfy", str(copy)], capture_output=True, text=True, errors="replace")
        assert "ComprehensiveSR" in out.stdout + out.stderr, out.stderr
        assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []

        # Found by the UID the PACS holds (the only one its viewer shows).
        code, body = node.http(f"/api/instances/{sent_uid}")
        assert code == 200 and body["copies"][0]["sop_instance_uid"] == report_uid, body
        (delivery,) = body["copies"][0]["deliveries"]
        assert delivery["sent_as_uid"] == sent_uid and delivery["sop_instance_uid"] == report_uid, delivery
        code, body = node.http(f"/api/deliveries?sop_instance_uid={sent_uid}")
        assert [d["sent_as_uid"] for d in body["deliveries"]] == [sent_uid], body

        # Sent again (a PACS that lost it), asked by either UID: the same
        # UID each time, not another document.
        for uid in (report_uid, sent_uid):
            stores = pacs.stores
            r = requests.post(f"http://127.0.0.1:{node.http_port}/api/deliveries/resend",
                              params={"destination": "pacs", "sop_instance_uid": uid})
            assert r.status_code == 200 and r.json()["resent"] == 1, r.text
            wait_until(lambda: pacs.stores == stores + 1
                       and node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=30)
        assert list(pacs.received) == [sent_uid]
        with node.db() as c:
            (reason,) = c.execute("SELECT last_status FROM outbox WHERE state = 'sent'").fetchone()
        # why it went so this time: as before, not "takes no 3D SR" again
        assert f"sent as Comprehensive SR {sent_uid}: again, as the destination received it before" in reason, \
            reason

        # report.sop_class = "comprehensive": reports are made so, and go as they are.
        node.stop()
        node.settings["report__sop_class"] = "comprehensive"
        node.start()
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, second)
        wait_until(lambda: len(pacs.received) == 2, timeout=60)
        with node.db() as c:
            reasons = [r for (r,) in c.execute("SELECT last_status FROM outbox WHERE state = 'sent'")]
        assert sum("sent as" in r for r in reasons) == 1, reasons
    finally:
        pacs.close()


COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.33"


class RefusesThreeD(PynetdicomReceiver):
    """Accepts Comprehensive 3D SR in negotiation, answers 0122 to its
    C-STOREs."""
    refused = 0

    def on_store(self, event):
        if event.request.AffectedSOPClassUID == COMPREHENSIVE_3D_SR:
            self.refused += 1
            return 0x0122
        return super().on_store(event)


def test_a_pacs_refusing_3d_sr_at_c_store_gets_the_report_as_comprehensive_sr(node_factory, rg1_copies, tmp_path):
    """A PACS that accepts Comprehensive 3D SR in negotiation and answers
    0122 (SOP class not supported) to its C-STORE: the report was parked
    for good, and no setting could deliver it. It goes as Comprehensive SR
    at once, and stays parked only if that is refused too."""

    class RefusesBoth(PynetdicomReceiver):
        def on_store(self, event):
            self.stores += 1
            return 0x0122

    pacs = RefusesThreeD(ae_title="PICKY", sop_classes=(COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR))
    stubborn = RefusesBoth(ae_title="STUBBORN", sop_classes=(COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR))
    try:
        config = results_destination(tmp_path, "pacs", "PICKY", pacs.port,
                                     f'[[destinations]]\nname = "stubborn"\nae_title = "STUBBORN"\n'
                                     f'host = "127.0.0.1"\nport = {stubborn.port}\nresults = true\n')
        node = node_factory().start(config_file=config)
        (image,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state != 'pending'") == 2, timeout=60)
        (sent_uid,) = pacs.received
        assert pacs.refused == 1 and pacs.dataset(sent_uid).SOPClassUID == COMPREHENSIVE_SR
        with node.db() as c:
            states = dict(c.execute("SELECT destination, state || ' ' || last_status FROM outbox"))
        assert states["pacs"].startswith("sent") and f"sent as Comprehensive SR {sent_uid}" in states["pacs"], states
        # Refused in both classes: parked, after one try of each.
        assert states["stubborn"].startswith("parked 0122H") and stubborn.stores == 2, (states, stubborn.stores)
        assert "refused Comprehensive 3D SR at C-STORE" in node.log()
        # Sent again on request: as Comprehensive SR at once (a resend cost
        # one refused 3D C-STORE first).
        r = requests.post(f"http://127.0.0.1:{node.http_port}/api/deliveries/resend",
                          params={"destination": "pacs", "sop_instance_uid": sent_uid}, timeout=10)
        assert r.json() == {"resent": 1}, r.text
        stores = pacs.stores
        wait_until(lambda: pacs.stores == stores + 1, timeout=30, what="the resend")
        assert pacs.refused == 1
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=30)
        # The next image's report goes as Comprehensive SR at once: the
        # destination's refusal is remembered, not met once per report.
        second = rg1_copies("UNCI", 2)[1]
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, second)
        wait_until(lambda: len(pacs.received) == 2, timeout=60, what="the second report")
        assert pacs.refused == 1
    finally:
        pacs.close()
        stubborn.close()


def test_a_backlog_of_reports_to_a_pacs_refusing_3d_sr_meets_one_refusal(node_factory, rg1_copies, tmp_path):
    """Reports owed together to a PACS that answers 0122 to Comprehensive
    3D SR: each report of the association's batch was sent as 3D SR and
    refused in turn (60 refusals in one burst); after the first, the rest
    go in a new association as Comprehensive SR."""
    from nodetest import free_port

    port = free_port()
    config = results_destination(tmp_path, "pacs", "PICKY", port,
                                 "[outbox]\nretry_base_s = 1\nretry_cap_s = 2\n")
    node = node_factory().start(config_file=config)
    images = rg1_copies("UNCI", 4)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *images)
    # The PACS down until the four reports are owed together.
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts > 0") == 4,
               timeout=90, what="four reports owed")
    pacs = RefusesThreeD(ae_title="PICKY", sop_classes=(COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR), port=port)
    try:
        wait_until(lambda: len(pacs.received) == 4, timeout=60, what="the four reports")
        assert pacs.refused == 1, pacs.refused
        assert all(pacs.dataset(uid).SOPClassUID == COMPREHENSIVE_SR for uid in pacs.received)
    finally:
        pacs.close()


def test_a_backlog_needing_more_than_one_association_is_sent_not_parked(node_factory, tmp_path):
    """A PACS back after an outage, owed 100 instances of 50 SOP classes in
    two syntaxes (150 presentation contexts; one association holds 128)
    with `outbox.batch = 500`: what did not fit the first association was
    parked as "no presentation context", never retried."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pynetdicom import StoragePresentationContexts
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class
    from nodetest import free_port

    classes = [c.abstract_syntax for c in StoragePresentationContexts
               if c.abstract_syntax.startswith("1.2.840.10008.5.1.4.1.1.")
               and uid_to_service_class(c.abstract_syntax) is StorageServiceClass][:50]
    files = []
    for n, sop_class in enumerate(classes):
        for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
            ds = Dataset()
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, pydicom.uid.generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
            ds.PatientID, ds.Modality = f"P{n}", "OT"
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = syntax
            path = tmp_path / f"{len(files):03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    port = free_port()
    config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "BIGPACS", "port": port}],
                         [{"destinations": ["pacs"]}], batch=500, retry_base_s=60, retry_cap_s=600)
    node = node_factory(dicom__accept="all-storage").start(config_file=config)
    r = node_cli("store", f"{node.ae_title}@127.0.0.1:{node.port}", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 100)
    pacs = PynetdicomReceiver(ae_title="BIGPACS", sop_classes=classes, port=port)
    try:
        api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
        assert requests.post(f"{api}/retry?destination=pacs", timeout=10).status_code == 200
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state != 'pending'") == 100, timeout=60,
                   what="every row answered")
        assert node.count("SELECT COUNT(*) FROM outbox WHERE state = 'parked'") == 0
        assert len(pacs.received) == 100
    finally:
        pacs.close()


def test_a_destination_that_is_down_gets_one_attempt_per_back_off_not_one_per_batch(
        node_factory, rg1_copies, tmp_path):
    """12 rows owed, batches of 3: when they fell due together, each batch
    made its own connection attempt, four in a row."""
    from nodetest import free_port

    config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": free_port()}],
                         [{"destinations": ["pacs"]}], batch=3, retry_base_s=60, retry_cap_s=600)
    node = node_factory().start(config_file=config)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 12))
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 12)
    wait_until(lambda: node.log().count("delivery failed; will retry") >= 1)
    time.sleep(1)
    before = node.log().count("delivery failed; will retry")
    api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
    assert requests.post(f"{api}/retry", timeout=10).json() == {"requeued": 12}
    wait_until(lambda: node.log().count("delivery failed; will retry") > before)
    time.sleep(2)
    assert node.log().count("delivery failed; will retry") == before + 1, node.log()[-3000:]


def test_rows_moved_or_cancelled_while_their_batch_is_in_flight_are_not_sent_there(
        node_factory, rg1_copies, tmp_path):
    """An operator moves what a slow destination is owed while a batch to
    it is being sent: the association went on sending the moved rows to the
    old destination and recorded its answers on them, now owed to the new
    one, which never got them ("sent" with the old one's 0000H)."""
    from nodetest import free_port

    slow_port = free_port()
    fast = PynetdicomReceiver(ae_title="FAST")
    slow = None
    try:
        config = node_config(tmp_path / "node.toml",
                             [{"name": "slow", "ae_title": "SLOW", "port": slow_port},
                              {"name": "fast", "ae_title": "FAST", "port": fast.port}],
                             [{"destinations": ["slow"]}], response_timeout_s=120, retry_base_s=60)
        node = node_factory().start(config_file=config)
        files = rg1_copies("UNCI", 5)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 5)
        wait_until(lambda: "delivery failed; will retry" in node.log())  # down: all put off
        # Back, but slow: the five go in one batch, the first held there.
        slow = PynetdicomReceiver(ae_title="SLOW", port=slow_port)
        slow.hold = threading.Event()
        api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
        assert requests.post(f"{api}/retry?destination=slow", timeout=10).json() == {"requeued": 5}
        wait_until(lambda: slow.entered == 1)
        assert requests.post(f"{api}/move?from=slow&to=fast", timeout=10).json() == {"moved": 5, "dropped": 0}
        slow.hold.set()
        uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        wait_until(lambda: set(fast.received) == uids, timeout=60, what="everything delivered to the new destination")
        time.sleep(1)
        assert slow.entered == 1, "the moved rows were sent to the old destination"
        with node.db() as c:
            rows = c.execute("SELECT destination, state FROM outbox").fetchall()
        assert rows == [("fast", "sent")] * 5, rows
        assert node.log().count("no longer owed here") == 4
    finally:
        for peer in (slow, fast):
            if peer:
                if peer.hold:
                    peer.hold.set()
                peer.close()


def node_sending_to(receiver, node_factory, tmp_path, ae_title: str = "FULLPACS"):
    """A node whose one destination, `pacs`, is `receiver` (1 min back-off)."""
    config = node_config(tmp_path / "node.toml",
                         [{"name": "pacs", "ae_title": ae_title, "port": receiver.port}],
                         [{"destinations": ["pacs"]}], retry_base_s=60, retry_cap_s=600)
    return node_factory().start(config_file=config)


def test_a_destination_out_of_resources_gets_one_instance_per_back_off(node_factory, rg1_copies, tmp_path):
    """A full archive answers A700 to every C-STORE: each owed instance was
    sent and refused, one WARN each, at every back-off (thousands for a
    backlog). Two refusals in a row now put off the rest with them, untried."""
    receiver = PynetdicomReceiver(status=0xA700, ae_title="FULLPACS")
    try:
        node = node_sending_to(receiver, node_factory, tmp_path)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 6))
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 6)
        wait_until(lambda: receiver.entered >= 1)
        time.sleep(2)
        assert receiver.entered <= 3, receiver.entered  # 3: a row made after the first refusals began
        with node.db() as c:
            rows = c.execute("SELECT attempts, last_status FROM outbox WHERE state = 'pending'").fetchall()
        # The tried ones say why; the others wait with them, untried.
        assert len(rows) == 6 and sum("A700H" in (s or "") for _, s in rows) == receiver.entered, rows
        assert all(a == 0 for a, s in rows if s is None), rows
        assert node.log().count("refused; will retry") == receiver.entered, node.log()[-3000:]

        # The operator's retry: one attempt, not six (the archive was full at
        # its last answer: a refusal of another row is the archive again).
        before = receiver.entered
        api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
        assert requests.post(f"{api}/retry", timeout=10).json() == {"requeued": 6}
        wait_until(lambda: receiver.entered > before)
        time.sleep(2)
        assert receiver.entered == before + 1

        # Space freed: everything goes.
        receiver.status = 0x0000
        assert requests.post(f"{api}/retry", timeout=10).json() == {"requeued": 6}
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 6)
        assert len(receiver.received) == 6
    finally:
        receiver.close()


def test_a_full_destination_is_known_across_associations_as_rows_arrive_one_by_one(
        node_factory, rg1_copies, tmp_path):
    """Two A7xx in a row were counted within one association: images a
    modality sent one at a time each got an association of their own, each
    tried and refused (a WARN each). One row refused is that instance's
    (the next row is tried at once); refusals of two rows put the
    destination off, whichever associations carried them."""
    receiver = PynetdicomReceiver(status=0xA700, ae_title="FULLPACS")
    try:
        node = node_sending_to(receiver, node_factory, tmp_path)
        for n, path in enumerate(rg1_copies("UNCI", 5), start=1):
            run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
            if n <= 2:
                wait_until(lambda: node.count(
                    "SELECT COUNT(*) FROM outbox WHERE last_status LIKE '%A700H%'") == n)
        time.sleep(3)
        assert receiver.entered == 2, receiver.entered
        assert node.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts = 0") == 3
    finally:
        receiver.close()


def test_rows_of_several_attempt_counts_wait_one_back_off_together(node_factory, rg1_copies, tmp_path):
    """A PACS down while rows arrive: rows tried 0, 1, 2, 3 times each fell
    due by their own back-off, so the destination got an attempt every few
    seconds (17 in 95 s with a 30 s cap). A failure now puts every row off
    by the back-off of the most-tried one."""
    from nodetest import free_port

    config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": free_port()}],
                         [{"destinations": ["pacs"]}], batch=2, retry_base_s=1, retry_cap_s=8)
    node = node_factory().start(config_file=config)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 8))
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 8)
    wait_until(lambda: "delivery failed; will retry" in node.log())
    with node.db() as c:  # an outage of a while, rows of every age
        c.execute("UPDATE outbox SET attempts = id % 4, next_attempt_at_ms = 0")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE next_attempt_at_ms = 0") == 0, timeout=10)
    before = node.log().count("delivery failed; will retry")
    time.sleep(6)  # the back-off of a row tried 3 times: 8 s
    assert node.log().count("delivery failed; will retry") == before, node.log()[-2000:]
    with node.db() as c:
        due = {t for (t,) in c.execute("SELECT next_attempt_at_ms FROM outbox")}
    assert len(due) == 1, due


def test_one_instance_refused_out_of_resources_holds_up_no_other(node_factory, rg1_copies, tmp_path):
    """A PACS that answers A700 for one instance only (too large for it now)
    and takes the rest: that one headed every batch and put the others off
    with it, for good."""
    files = rg1_copies("UNCI", 6)
    refused = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    receiver = PynetdicomReceiver(ae_title="PACS", status=lambda uid: 0xA700 if uid == refused else 0)
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": receiver.port}],
                             [{"destinations": ["pacs"]}], batch=3, retry_base_s=1, retry_cap_s=2)
        node = node_factory().start(config_file=config)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 5, timeout=30)
        with node.db() as c:
            (pending,) = c.execute("SELECT i.sop_instance_uid FROM outbox o JOIN instances i "
                                   "ON i.id = o.instance_id WHERE o.state = 'pending'").fetchall()
        assert pending == (refused,)  # still owed, retried
    finally:
        receiver.close()


def test_a_delivery_taken_but_not_recorded_and_then_moved_goes_to_the_new_destination(
        node_factory, rg1_copies, tmp_path):
    """The disk full after the PACS took an instance; the operator then
    moved what it was owed to another destination: the taken answer was
    recorded as pacs2's, and pacs2 never received the instance."""
    pacs, pacs2 = PynetdicomReceiver(ae_title="PACS"), PynetdicomReceiver(ae_title="PACS2")
    try:
        config = node_config(tmp_path / "node.toml",
                             [{"name": "pacs", "ae_title": "PACS", "port": pacs.port},
                              {"name": "pacs2", "ae_title": "PACS2", "port": pacs2.port}],
                             [{"destinations": ["pacs"]}])
        node = node_factory().start(config_file=config)
        fill_the_disk_for_sent_rows(node)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: pacs.stores == 1)
        api = f"http://127.0.0.1:{node.http_port}/api/deliveries"
        assert requests.post(f"{api}/move?from=pacs&to=pacs2", timeout=10).json() == {"moved": 1, "dropped": 0}
        free_the_disk(node)
        wait_until(lambda: outbox(node).get("pacs2", ("",))[0] == "sent", timeout=30)
        assert pacs2.stores == 1 and pacs.stores == 1
    finally:
        pacs.close()
        pacs2.close()


class OneInstanceBreaks(PynetdicomReceiver):
    """Takes every instance but one, on which it aborts the association
    (`how="abort"`) or never answers (`how="silent"`), as PACSs do with a
    data set they cannot parse."""

    def __init__(self, poison: str, how: str, **kw):
        super().__init__(**kw)
        self.poison, self.how, self.tries, self.aborted = poison, how, 0, 0
        from pynetdicom import evt
        self.server.bind(evt.EVT_PDU_RECV, self.on_pdu)

    def on_pdu(self, event):
        # An A-ABORT PDU received (a closed connection is no PDU).
        self.aborted += type(event.pdu).__name__ == "A_ABORT_RQ"

    def on_store(self, event):
        if event.request.AffectedSOPInstanceUID == self.poison:
            self.tries += 1
            if self.how == "abort":
                event.assoc.abort()
            else:
                time.sleep(4)  # past the node's response timeout
            return 0xC000
        return super().on_store(event)


@pytest.mark.parametrize("how", ["abort", "silent"])
def test_one_instance_a_pacs_aborts_on_or_never_answers_holds_up_no_other(
        node_factory, rg1_copies, tmp_path, how):
    """It went first in every round, the association ended on it, and the
    destination was put off with everything else it was owed, for good
    (the operator saw the others pending, untried, with no reason)."""
    files = rg1_copies("UNCI", 6)
    poison = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    receiver = OneInstanceBreaks(poison, how, ae_title="PACS")
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": receiver.port}],
                             [{"destinations": ["pacs"]}], batch=3, retry_base_s=1, retry_cap_s=4,
                             response_timeout_s=2)
        node = node_factory().start(config_file=config)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 5, timeout=60)
        with node.db() as c:
            ((uid, attempts, why),) = c.execute(
                "SELECT i.sop_instance_uid, o.attempts, o.last_status FROM outbox o JOIN instances i "
                "ON i.id = o.instance_id WHERE o.state = 'pending'").fetchall()
        assert uid == poison and attempts >= 1  # still owed
        assert ("aborted" if how == "abort" else "no response") in why, why
        # Retried on its own, after the others: the log names it.
        wait_until(lambda: "the others go on" in node.log(), timeout=30)
        failed = [line for line in node.log().splitlines() if "failed" in line and "WARN" in line]
        assert failed and all(poison in line for line in failed), failed
        assert len(receiver.received) == 5
        if how == "silent":  # the node gave up on it with an A-ABORT, not a closed connection
            assert receiver.aborted >= 1
        # The operator drops that one instance's row, not all the PACS is owed.
        api = f"http://127.0.0.1:{node.http_port}/api/deliveries/cancel?destination=pacs"
        assert requests.post(f"{api}&sop_instance_uid=%20", timeout=10).status_code == 400
        assert requests.post(f"{api}&study_instance_uid=1.2.3.4", timeout=10).json() == {"cancelled": 0}
        assert requests.post(f"{api}&sop_instance_uid={poison}", timeout=10).json() == {"cancelled": 1}
        assert node.count("SELECT COUNT(*) FROM outbox WHERE state != 'sent'") == 0
    finally:
        receiver.close()


class ReleasesAfterOne(PynetdicomReceiver):
    """Takes one instance per association, then asks to release it while the
    node's next C-STORE waits for its answer (an acceptor may release)."""

    def on_store(self, event):
        if getattr(event.assoc, "stored_one", False):
            self.released += 1
            threading.Thread(target=event.assoc.release, daemon=True).start()
            time.sleep(1)
            return 0xC000  # never reaches the node: the association is released
        event.assoc.stored_one = True
        return super().on_store(event)


def test_a_pacs_that_releases_mid_association_is_answered_and_no_attempt_is_counted(
        node_factory, rg1_copies, tmp_path):
    """Its A-RELEASE-RQ was answered with an abort, and the instance in
    flight counted as a failed delivery, putting the destination off."""
    from nodetest import free_port

    port = free_port()
    config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": port}],
                         [{"destinations": ["pacs"]}], retry_base_s=2, retry_cap_s=2)
    node = node_factory().start(config_file=config)
    # The PACS is down while the instances arrive: they then go together,
    # several to an association.
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 4))
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox") == 4)
    wait_until(lambda: "delivery failed; will retry" in node.log())
    with node.db() as c:
        before = dict(c.execute("SELECT id, attempts FROM outbox"))
    failures = node.log().count("will retry")
    receiver = ReleasesAfterOne(ae_title="PACS", port=port)
    receiver.released = 0
    try:
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 4, timeout=60)
        assert receiver.released >= 1 and len(receiver.received) == 4
        with node.db() as c:  # one attempt each: the one that went through
            after = dict(c.execute("SELECT id, attempts FROM outbox"))
        assert after == {i: a + 1 for i, a in before.items()}, (before, after)
        assert "released the association before answering" in node.log()
        assert node.log().count("will retry") == failures and "protocol error" not in node.log()
    finally:
        receiver.close()


def test_a_cancelled_or_moved_resend_keeps_the_record_of_the_earlier_delivery(node_factory, rg1_copies, tmp_path):
    """An operator resends a delivered original to a PACS that now refuses
    it, then cancels (or moves) the resend: the row was deleted (moved), and
    with it the record that the PACS had the instance (/api/instances and
    the sent count no longer said so). The row goes back to sent; a moved
    resend gets a row of its own at the other destination."""
    from nodetest import free_port

    def post(path):
        r = requests.post(f"http://127.0.0.1:{node.http_port}{path}", timeout=10)
        return r.status_code, r.json()

    def rows():
        with node.db() as c:
            return sorted(c.execute("SELECT destination, state FROM outbox").fetchall())

    peer = PynetdicomReceiver()
    try:
        config = tmp_path / "node.toml"
        config.write_text(
            f'[[destinations]]\nname = "pacs"\nae_title = "PYSCP"\nhost = "127.0.0.1"\nport = {peer.port}\n'
            f'[[destinations]]\nname = "other"\nae_title = "GONE"\nhost = "127.0.0.1"\nport = {free_port()}\n'
            '[[routing.forward]]\ndestinations = ["pacs"]\n')
        node = node_factory().start(config_file=config)
        (image,) = rg1_copies("UNCI", 1)
        sop = pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, image)
        wait_until(lambda: rows() == [("pacs", "sent")], timeout=60)
        peer.status = 0xA700  # out of resources: retried, stays pending
        for step in ("cancel", "move"):
            assert post(f"/api/deliveries/resend?destination=pacs&sop_instance_uid={sop}") == (200, {"resent": 1})
            tried = peer.stores
            wait_until(lambda: peer.stores > tried, timeout=30, what="the resend tried")
            if step == "cancel":
                assert post(f"/api/deliveries/cancel?destination=pacs&sop_instance_uid={sop}") == (
                    200, {"cancelled": 1})
                assert rows() == [("pacs", "sent")]
                (delivery,) = node.http(f"/api/deliveries?sop_instance_uid={sop}")[1]["deliveries"]
                assert delivery["state"] == "sent", delivery
                assert delivery["last_status"].startswith("resend cancelled; sent before at 20"), delivery
            else:
                assert post("/api/deliveries/move?from=pacs&to=other") == (200, {"moved": 1, "dropped": 0})
                assert rows() == [("other", "pending"), ("pacs", "sent")]
        _, metrics = node.http("/metrics")
        assert 'pneumo_outbox{destination="pacs",state="sent"} 1' in metrics, metrics
        # A resend cancelled while it was on the wire, then taken: its row
        # said "resend cancelled" though the PACS had it again.
        import threading
        peer.status, peer.hold = 0x0000, threading.Event()
        assert post(f"/api/deliveries/resend?destination=pacs&sop_instance_uid={sop}") == (200, {"resent": 1})
        entered = peer.entered
        wait_until(lambda: peer.entered > entered, timeout=30, what="the resend on the wire")
        assert post(f"/api/deliveries/cancel?destination=pacs&sop_instance_uid={sop}") == (200, {"cancelled": 1})
        stores = peer.stores
        peer.hold.set()
        wait_until(lambda: peer.stores > stores, timeout=30, what="the resend answered")

        def last_status():
            deliveries = node.http(f"/api/deliveries?sop_instance_uid={sop}&destination=pacs")[1]["deliveries"]
            return deliveries[0]["state"], deliveries[0]["last_status"]
        wait_until(lambda: not last_status()[1].startswith("resend cancelled"), timeout=30,
                   what="the answer recorded")
        assert last_status()[0] == "sent", last_status()
    finally:
        peer.close()


class AbortsEveryStore(PynetdicomReceiver):
    """Accepts the association, then aborts it at the first C-STORE, as
    Orthanc does with a caller whose AE title it does not know."""

    def on_store(self, event):
        self.entered += 1
        event.assoc.abort()
        return 0xC000


def test_a_destination_lost_before_any_answer_backs_off_by_doubling_whatever_row_is_tried(
        node_factory, rg1_copies, tmp_path):
    """Each such failure tries one row, and rows go least-tried first: the
    back-off followed the most-tried row, so it grew once per round of the
    whole backlog (8 rows: 8 connections every 4 s, then 8 every 8 s). Now
    it doubles with each failure in a row; the reason asks whether the
    destination knows the node's AE title. (The first row lost so is that
    row's failure alone: the next association, on another row, tells.)"""
    receiver = AbortsEveryStore(ae_title="PACS")
    try:
        config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PACS", "port": receiver.port}],
                             [{"destinations": ["pacs"]}], retry_base_s=1, retry_cap_s=64)
        node = node_factory().start(config_file=config)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 8))
        failures = lambda: [line for line in node.log().splitlines() if "delivery failed; will retry" in line]
        wait_until(lambda: len(failures()) >= 4, timeout=30)
        delays = [int(line.split("retry_in_s=")[1].split()[0]) for line in failures()]
        assert delays[:4] == [2, 4, 8, 16], failures()
        assert "does the destination know this node's AE title" in failures()[0], failures()[0]
        assert node.log().count("on this instance; the others go on") == 1
        assert abs(receiver.entered - 1 - len(failures())) <= 1
        with node.db() as c:
            whys = {why for (why,) in c.execute("SELECT last_status FROM outbox WHERE attempts > 0")}
        assert any(f"AE title {node.ae_title}, and take" in why for why in whys), whys
    finally:
        receiver.close()
