"""kill -9 while senders stream: whatever a sender was told succeeded
survives the restart, on disk and in the database."""

import threading
import time

import pydicom

from nodetest import same_dataset
from test_pynetdicom_peers import sender


def test_kill_9_during_ingest_loses_nothing_acknowledged(node_factory, rg1_copies):
    node = node_factory().start()
    files = rg1_copies("UNCI", 60)
    acknowledged, lock = [], threading.Lock()

    def stream(chunk):
        try:
            assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
            for f in chunk:
                status = assoc.send_c_store(f)
                if status and status.Status == 0x0000:
                    with lock:
                        acknowledged.append(f)
        except Exception:
            pass  # the node dies under us: expected

    threads = [threading.Thread(target=stream, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    # Kill once a few instances are through and more are in flight.
    deadline = time.monotonic() + 60
    while len(acknowledged) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    node.kill9()
    for t in threads:
        t.join(60)
    assert 8 <= len(acknowledged) < len(files), "the kill should land mid-stream"

    node.start()  # same data directory and port
    with node.db() as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for f in acknowledged:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert node.instance_rows(ds.SOPInstanceUID) == 1, f
        assert node.count(
            "SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE i.sop_instance_uid = ?",
            ds.SOPInstanceUID,
        ) == 1
        assert same_dataset(node.stored_path(ds), f)
    # The transfers the kill cut were cleared at start; the reports the
    # restarted pipeline is writing pass through the spool, so wait for them.
    node.wait_for_analyses()
    assert node.spool_files() == []
    # Every row points at a complete file.
    with node.db() as c:
        for (path, size) in c.execute("SELECT path, file_size FROM instances"):
            assert (node.data_dir / path).stat().st_size == size
    assert node.echo_ok()


def test_an_instance_whose_analysis_kills_the_node_every_time_fails_after_three_attempts(node_factory, rg1_copies):
    """The node dies (kill -9, as a codec crash or the OOM killer would) while
    analysing the same radiograph, three times: after the third restart that
    job is failed with the reason instead of being taken again, the instance
    is kept, and the next radiograph is analysed."""
    from nodetest import run_dcmtk
    from test_routing_orthanc import wait_until

    node = node_factory(pipeline__concurrency=1).start()
    poison, good = rg1_copies("J2KR", 2)  # JPEG 2000 decoding: ~0.5 s to catch it analysing
    run_dcmtk("storescu", "-xv", "-aec", node.ae_title, "127.0.0.1", node.port, poison)

    def job():
        with node.db() as c:
            return c.execute("SELECT state, attempts, reason FROM jobs").fetchone()

    for attempt in (1, 2, 3):
        deadline = time.monotonic() + 30
        while (job() or ("", 0))[:2] != ("analysing", attempt):  # poll tightly: kill while it decodes
            assert time.monotonic() < deadline, job()
            time.sleep(0.005)
        node.kill9()
        assert job()[:2] == ("analysing", attempt)
        node.start()
    wait_until(lambda: job()[0] == "failed", timeout=30)
    state, attempts, reason = job()
    assert attempts == 3 and reason.startswith("analysis started 3 times and never finished")
    assert node.instance_rows(pydicom.dcmread(poison, stop_before_pixels=True).SOPInstanceUID) == 1
    # the warning follows the commit the state was read from
    wait_until(lambda: "analysis never finished: job failed, not retried" in node.log(), timeout=10)
    # Its notice (an SR saying it was not analysed, and why) is made from
    # the header alone: reading it does not run the decoder that crashed.
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE notice_instance_id IS NOT NULL") == 1, timeout=10)
    with node.db() as c:
        (notice_path,) = c.execute("SELECT i.path FROM jobs j JOIN instances i ON i.id = j.notice_instance_id").fetchone()
    notice = pydicom.dcmread(node.data_dir / notice_path)
    assert notice.Modality == "SR" and "never finished" in str(notice.ContentSequence[-1].ContentSequence[-1].TextValue)

    run_dcmtk("storescu", "-xv", "-aec", node.ae_title, "127.0.0.1", node.port, good)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    assert node.alive()


def test_a_second_node_on_the_same_data_directory_refuses_to_start(node_factory, rg1_copies):
    """Starting the same configuration twice (or two configurations naming
    one data directory) must not touch the running node: the second process
    used to clear its spool under a transfer in progress, take back its jobs
    and send every delivery a second time."""
    import subprocess

    from nodetest import free_port, node_binary, run_dcmtk

    node = node_factory().start()
    in_progress = node.data_dir / "spool" / "transfer-in-progress.part"
    in_progress.write_bytes(b"half a data set")
    second = node.env()
    second.update({"PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__PORT": str(free_port())})
    out = subprocess.run([str(node_binary()), "serve"], env=second, cwd=node.workdir,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "in use by another pneumo-node process" in out.stderr, out.stderr
    assert in_progress.exists()
    in_progress.unlink()
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1


def test_a_database_deleted_under_the_running_node_stops_acknowledgements(node_factory, rg1_copies):
    """SQLite writes on into a deleted file: the node used to answer success
    and lose those instances at its next start. It now refuses (A700) and
    says why in /readyz; a restart warns that instances/ has files the new
    database does not know."""
    from nodetest import run_dcmtk
    from test_pynetdicom_peers import sender

    node = node_factory().start()
    first, second = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    for suffix in ("", "-wal", "-shm"):
        path = node.data_dir / f"pneumo-node.sqlite{suffix}"
        if path.exists():
            path.unlink()
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(second)
    assoc.release()
    assert status.Status == 0xA700, status
    code, body = node.http("/readyz")
    assert code == 503 and any("is gone" in r for r in body["reasons"]), body
    assert node.alive()
    node.stop()
    node.start()
    assert "a start found instances/ holding files and the database no instance" in node.log()


def test_a_database_truncated_under_the_running_node_is_not_ready(node_factory, rg1_copies):
    """The database truncated while the node ran: every C-STORE was refused
    (A700, "database disk image is malformed") while /readyz, answered from
    SQLite's page cache, said ready."""
    from nodetest import run_dcmtk
    from test_pynetdicom_peers import sender

    node = node_factory().start()
    first, second = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    # after a restart, so that the rows are in the file (a clean stop
    # checkpoints the write-ahead log), not only in the log
    node.stop()
    node.start()
    with open(node.data_dir / "pneumo-node.sqlite", "r+b") as f:
        f.truncate(0)
    code, body = node.http("/readyz")
    assert code == 503 and any("is damaged" in r for r in body["reasons"]), body
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(second)
    assoc.release()
    assert status.Status == 0xA700, status
    assert node.http("/readyz")[0] == 503  # until a restart, whatever SQLite writes back
    code, metrics = node.http("/metrics")  # still scraped, saying so
    assert code == 200 and "pneumo_database_up 0" in metrics, (code, metrics[-300:])
    assert "pneumo_instances_refused_total 1" in metrics
    assert "restore the database" in node.log(), "the log says what to do"
    assert node.alive() and node.echo_ok()


def test_a_write_ahead_log_deleted_under_the_running_node_stops_acknowledgements(node_factory, rg1_copies):
    """The database's -wal deleted while the node ran: SQLite wrote on
    into the deleted file, instances were acknowledged, /readyz said ready,
    and a kill -9 then lost everything committed since the last checkpoint
    (acknowledged instances included, delivered rows sent again). Now
    refused (A700) and not ready; a clean stop folds the deleted log into
    the database, and nothing acknowledged before is lost."""
    from nodetest import run_dcmtk

    node = node_factory().start()
    first, second = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    (node.data_dir / "pneumo-node.sqlite-wal").unlink()
    # An operator looking into the database makes a new, empty -wal: still
    # refused (a check of the path alone acknowledged again, then lost)
    import sqlite3
    try:
        with sqlite3.connect(node.data_dir / "pneumo-node.sqlite", timeout=1) as look:
            look.execute("SELECT COUNT(*) FROM instances").fetchone()
    except sqlite3.Error:
        pass
    assert (node.data_dir / "pneumo-node.sqlite-wal").exists()
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(second)
    assoc.release()
    assert status.Status == 0xA700, status
    code, body = node.http("/readyz")
    assert code == 503 and any("write-ahead log" in r and "is gone" in r for r in body["reasons"]), body
    assert "pneumo_database_up 0" in node.http("/metrics")[1]
    node.stop()
    node.start()
    assert node.http("/readyz")[0] == 200
    assert node.instance_rows(pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID) == 1
    assert node.instance_rows(pydicom.dcmread(second, stop_before_pixels=True).SOPInstanceUID) == 0


def test_a_database_locked_for_writing_by_another_process_is_not_ready(node_factory, rg1_copies):
    """A sqlite3 shell left in a transaction holds the write lock: every
    C-STORE waited 30 s and was refused (A700, its comment cut to "(code:
    5) database"), while /readyz and pneumo_database_up, answered by reads,
    said all was well. Released, the node takes instances again."""
    import sqlite3

    from test_pynetdicom_peers import sender

    node = node_factory().start()
    locked, after = rg1_copies("UNCI", 2)
    holder = sqlite3.connect(node.data_dir / "pneumo-node.sqlite", isolation_level=None, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, body = node.http("/readyz")
        assert code == 503 and any("database locked for writing" in r for r in body["reasons"]), body
        assert "pneumo_database_up 0" in node.http("/metrics")[1]
        # Pollers at once: each answered at once with the last probe's
        # finding, not queued 2 s behind one another (twenty waited 9 s).
        from concurrent.futures import ThreadPoolExecutor
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda _: node.http("/readyz")[0], range(10)))
        assert time.monotonic() - started < 6 and set(codes) == {503}, (time.monotonic() - started, codes)
        patient = sender()
        patient.dimse_timeout = patient.network_timeout = 90
        assoc = patient.associate("127.0.0.1", node.port, ae_title=node.ae_title)
        status = assoc.send_c_store(locked)  # waits the node's 30 s for the lock
        assoc.release()
        assert status.Status == 0xA700, status
        assert str(status.ErrorComment).startswith("database is locked"), status.ErrorComment
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert node.http("/readyz")[0] == 200
    assert "pneumo_database_up 1" in node.http("/metrics")[1]
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(after)
    assoc.release()
    assert status.Status == 0x0000, status


def test_an_instance_the_database_refuses_leaves_no_file(node, rg1_copies):
    """The row cannot be committed after the file was moved into place (here
    a trigger stands for a locked or full database): A700, and the file is
    removed, so a refusal leaves nothing behind (on a full disk, its space is
    what recovery needs). The next instance is stored."""
    from test_pynetdicom_peers import sender

    refused, accepted = rg1_copies("UNCI", 2)
    uid = pydicom.dcmread(refused, stop_before_pixels=True).SOPInstanceUID
    with node.db() as c:
        c.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON instances WHEN NEW.sop_instance_uid = '{uid}' "
                  "BEGIN SELECT RAISE(ABORT, 'database refuses'); END")
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.send_c_store(refused).Status == 0xA700
    assert assoc.send_c_store(accepted).Status == 0x0000
    assoc.release()
    assert not [p for p in node.instance_files() if uid in p.name]
    assert node.instance_rows(uid) == 0


def test_clean_restarts_during_analysis_fail_no_job(node_factory, rg1_copies):
    """SIGTERM while analyses ran left them `analysing` with the attempt
    counted: the jobs at the head of the queue, claimed first after every
    restart, failed "analysis started 3 times and never finished" after
    three restarts. A clean stop now lets them finish or puts them back."""
    from nodetest import run_dcmtk

    node = node_factory(pipeline__max_attempts=2).start()
    files = rg1_copies("UNCI", 12)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
    for _ in range(3):
        deadline = time.monotonic() + 30
        while not node.count("SELECT COUNT(*) FROM jobs WHERE state = 'analysing'"):
            # The restarted node may finish what was left between two looks.
            if not node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('received', 'queued')"):
                break
            assert time.monotonic() < deadline, "no analysis started"
            time.sleep(0.01)
        node.stop()  # SIGTERM, mid-analysis
        assert node.proc.returncode == 0
        assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'analysing'") == 0
        if not node.count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"):
            break
        node.start()
    node.start()
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") == 0, node.log()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 12
    assert "closed pool" not in node.log()


def test_patient_data_is_not_readable_by_other_accounts(node_factory, rg1_copies):
    """Every instance, the database and their folders were 0644/0755 under
    the usual umask 0022: any local account could read the radiographs."""
    import os
    import stat

    from nodetest import run_dcmtk

    old = os.umask(0o022)  # what the node is started with, usually
    try:
        node = node_factory().start()
    finally:
        os.umask(old)
    (first,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    written = [node.data_dir / "pneumo-node.sqlite", node.data_dir / "instances"]
    written += list((node.data_dir / "instances").rglob("*"))
    assert len(written) > 5, written
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path}: {oct(mode)}"
