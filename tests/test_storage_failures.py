"""Storage failing under the node: the data directory on a file system
that fills up (a small tmpfs: what was acknowledged is committed, the node
recovers by itself once there is space again, and a report it could not
write leaves nothing behind), its spool directory removed.

The full disk needs to mount a tmpfs (root, as CI runs); skipped with the
reason where the machine does not allow it."""

import shutil
import sqlite3
import subprocess
import time

import pydicom
import pytest
import requests

from nodetest import ROOT, node, node_factory, rg1_copies, run_dcmtk  # noqa: F401 (fixtures)
from test_routing_orthanc import wait_until


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path):
    """Writes zeros into `path` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def writable_from_outside(db_path) -> bool:
    """Whether another process can take the write lock (a node connection
    left inside a transaction holds it for good)."""
    c = sqlite3.connect(db_path, timeout=1)
    try:
        c.execute("BEGIN IMMEDIATE")
        c.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        c.close()


def test_a_full_disk_loses_nothing_acknowledged_and_the_node_recovers(node_factory, rg1_copies, small_disk):
    node = node_factory(node__min_free_mb="0")
    node.data_dir = small_disk / "var"
    skip_all = node.workdir / "skip-all.toml"
    skip_all.write_text('[routing]\nanalyse_modalities = ["XX"]\n')
    node.start(config_file=skip_all)
    first = rg1_copies("UNCI", 3)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *first[:2])
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'skipped'") == 2)
    node.stop()

    # Analysed now, on a disk with no room for their reports or for the
    # database's writes: SQLite fails statements with SQLITE_FULL.
    node.config_file = None
    node.start()
    ballast = small_disk / "ballast"
    fill(ballast)
    # A full disk is said to be full, not "not writable" (a permissions hunt)
    status, body = node.http("/readyz")
    assert status == 503 and any("is full" in r for r in body["reasons"]), body
    with open(ballast, "r+b") as f:  # room for the retry's own write, little more
        f.truncate(ballast.stat().st_size - 16 * 1024)
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry?state=skipped", timeout=40)
    assert r.status_code == 200, r.text
    wait_until(lambda: "disk is full" in node.log() or "No space left" in node.log(), timeout=30,
               what="the node meeting the full disk")
    time.sleep(3)  # several routing and claim rounds on the full disk
    assert not [p for p in node.spool_files() if p.name.startswith("generated-")], \
        "a report that could not be written left its part file"
    # said when it starts, not at every round
    assert node.log().count("cannot claim jobs") <= 2, node.log()[-3000:]

    ballast.unlink()
    # Once there is room: the database is not held by a connection stuck
    # in a transaction, a new instance is committed (visible to another
    # process, as after a restart), and the analyses finish by themselves.
    wait_until(lambda: writable_from_outside(node.data_dir / "pneumo-node.sqlite"), timeout=10,
               what="the database's write lock released")
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first[2])
    uid = pydicom.dcmread(first[2], stop_before_pixels=True).SOPInstanceUID
    assert node.instance_rows(uid) == 1, "acknowledged but not committed"
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 3, timeout=90,
               what="the analyses to finish after the disk has room again")
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") == 0
    node.stop()
    node.start()
    assert node.instance_rows(uid) == 1

    # A first start on the full disk says so (SQLite's own words are "disk
    # I/O error" or "unable to open database file"), and exits.
    node.stop()
    fill(ballast)
    from nodetest import node_binary

    env = dict(node.env(), PNEUMO__NODE__DATA_DIR=str(small_disk / "fresh"))
    r = subprocess.run([str(node_binary()), "serve"], env=env, cwd=node.workdir,
                       capture_output=True, text=True, timeout=60)
    ballast.unlink()
    assert r.returncode == 1 and "opening the store" in r.stderr, r.stderr
    assert "MB free: a full disk?" in r.stderr, r.stderr


def test_an_instance_larger_than_the_room_left_is_stopped_before_the_disk_fills(node_factory, small_disk, tmp_path):
    """`node.min_free_mb` is checked when a C-STORE arrives; a data set
    larger than the room above the floor used to be written to the last
    byte (acknowledged, and the database left without space). Now the
    transfer stops once the free space falls below half the floor."""
    import numpy as np

    node = node_factory(node__min_free_mb="16")
    node.data_dir = small_disk / "var"
    node.start()
    ballast = small_disk / "ballast"
    with open(ballast, "wb") as f:  # leave about 20 MB free: above the 16 MB floor
        free = shutil.disk_usage(small_disk).free
        f.write(b"\0" * (free - 20_000_000))
    big = tmp_path / "big.dcm"
    ds = pydicom.dcmread(ROOT / "fixtures" / "imaging" / "rg1s_mono2.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows = ds.Columns = 3000  # 18 MB of pixels
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelData = np.zeros((3000, 3000), np.uint16).tobytes()
    ds.save_as(big, enforce_file_format=True)

    r = run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, big, check=False)
    assert r.returncode != 0
    wait_until(lambda: "status=A700H error=\"out of disk space while receiving" in node.log(), timeout=10)
    assert node.instance_rows(ds.SOPInstanceUID) == 0
    assert not node.spool_files(), "the refused transfer's spool file was left"
    assert shutil.disk_usage(small_disk).free > 18_000_000, "its space was not given back"
    # The node still takes what fits.
    small = tmp_path / "small.dcm"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows = ds.Columns = 256
    ds.PixelData = np.zeros((256, 256), np.uint16).tobytes()
    ds.save_as(small, enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, small)
    assert node.instance_rows(ds.SOPInstanceUID) == 1


def test_a_spool_directory_removed_under_the_node_is_made_again(node, rg1_copies):
    """A clean-up script removes spool/: every store was refused A700
    until someone made it again."""
    import shutil

    shutil.rmtree(node.data_dir / "spool")
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    assert node.instance_rows(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) == 1
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1
    shutil.rmtree(node.data_dir / "spool")
    status, body = node.http("/readyz")
    assert status == 200, body


@pytest.mark.parametrize("damage", ["truncated", "one_byte_changed", "meta_transfer_syntax"])
def test_a_damaged_stored_file_is_neither_analysed_nor_sent_and_a_re_sent_copy_repairs_it(
        node_factory, rg1_copies, tmp_path, damage):
    """A stored file truncated on disk: the truncated file used to be sent
    to the destination (and aborted by it at every retry) and its analysis
    failed with "cannot be parsed"; a re-sent copy was answered as a
    duplicate and left the damage. Now both stop with a reason saying how
    to repair it, and sending the instance again repairs it and resumes
    them. A byte changed in the pixel data (the same size) was analysed and
    forwarded as if intact: only the size was compared."""
    from nodetest import free_port
    from test_pynetdicom_peers import PynetdicomReceiver

    def config(name, port, routing=""):
        path = tmp_path / name
        path.write_text(f"{routing}[[routing.forward]]\ndestinations = [\"pacs\"]\n"
                        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
                        f"port = {port}\n[outbox]\nretry_base_s = 600\nretry_cap_s = 600\n")
        return path

    pacs = PynetdicomReceiver(ae_title="PACS")
    try:
        # The PACS unreachable and nothing analysed: the file waits.
        hold = config("hold.toml", free_port(), '[routing]\nanalyse_modalities = ["XX"]\n')
        node = node_factory().start(config_file=hold)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'skipped'") == 1)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE attempts > 0") == 1, timeout=30)
        node.stop()
        stored = node.stored_path(ds)
        whole = stored.read_bytes()
        if damage == "truncated":
            stored.write_bytes(whole[: len(whole) // 2])
        elif damage == "meta_transfer_syntax":
            # the File Meta now says Big Endian: read, and sent, as such
            meta_end = stored_header_length(whole)
            syntax = pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
            assert syntax == "1.2.840.10008.1.2.1", syntax
            at = whole.index(b"1.2.840.10008.1.2.1\0", 132, meta_end)
            stored.write_bytes(whole[:at] + b"1.2.840.10008.1.2.2\0" + whole[at + 20:])
        else:
            changed = bytearray(whole)
            changed[-1000] ^= 0x40
            stored.write_bytes(bytes(changed))

        node.start(config_file=config("serve.toml", pacs.port))
        api = f"http://127.0.0.1:{node.http_port}/api"
        assert requests.post(f"{api}/jobs/retry?state=skipped", timeout=10).json() == {"requeued": 1}
        assert requests.post(f"{api}/deliveries/retry", timeout=10).json() == {"requeued": 1}
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") == 1, timeout=30)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'parked'") == 1, timeout=30)
        with node.db() as c:
            (reason,) = c.execute("SELECT reason FROM jobs").fetchone()
            (status,) = c.execute("SELECT last_status FROM outbox").fetchone()
        for text in (reason, status):
            assert "is damaged" in text and "send the instance to the node again" in text, text
        assert ds.SOPInstanceUID not in pacs.received, "the truncated file was sent"

        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        assert stored.read_bytes() == whole
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=30)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
        assert len(pacs.received[ds.SOPInstanceUID]) == len(whole) - stored_header_length(whole)
    finally:
        pacs.close()


def stored_header_length(part10: bytes) -> int:
    """Preamble, DICM and the File Meta group of a Part-10 file."""
    return 144 + int.from_bytes(part10[140:144], "little")


def test_a_report_file_lost_before_delivery_is_made_again_by_a_retry(node_factory, rg1_copies, tmp_path):
    """A report's file lost before it was delivered (a clean-up by hand, a
    disk error) could never be made again: its delivery was parked telling
    the operator to send the instance again, which does not make a report,
    and a retry of the job kept the row without a file."""
    from nodetest import free_port
    from test_pynetdicom_peers import PynetdicomReceiver

    def config(name, port):
        path = tmp_path / name
        path.write_text('[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
                        f"port = {port}\nresults = true\n[outbox]\nretry_base_s = 600\nretry_cap_s = 600\n")
        return path

    pacs = PynetdicomReceiver(ae_title="PACS", sop_classes=("1.2.840.10008.5.1.4.1.1.88.34",))
    try:
        node = node_factory().start(config_file=config("down.toml", free_port()))
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE attempts > 0") == 1, timeout=60)
        node.stop()
        with node.db() as c:
            (path, sr_uid) = c.execute(
                "SELECT path, sop_instance_uid FROM instances WHERE generated = 1").fetchone()
        (node.data_dir / path).unlink()

        node.start(config_file=config("up.toml", pacs.port))
        api = f"http://127.0.0.1:{node.http_port}/api"
        assert requests.post(f"{api}/deliveries/retry", timeout=10).json() == {"requeued": 1}
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'parked'") == 1, timeout=30)
        with node.db() as c:
            (status,) = c.execute("SELECT last_status FROM outbox").fetchone()
        assert "is missing" in status and "retry the analysis of its image" in status, status

        source = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        r = requests.post(f"{api}/jobs/retry?state=reported&sop_instance_uid={source}", timeout=10)
        assert r.json() == {"requeued": 1}, r.text
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=60)
        assert (node.data_dir / path).exists()
        assert sr_uid in pacs.received
        assert "made again under its UID" in node.log()
        assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1") == 1
    finally:
        pacs.close()


def test_a_malformed_database_is_not_ready_and_says_so(node_factory, rg1_copies):
    """A backup restored over a stale write-ahead log came up malformed:
    `/readyz` said ready and `pneumo_database_up` 1 while routing failed
    and every C-STORE was refused. SQLite's quick check at start finds it."""
    import gc

    node = node_factory().start()
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *rg1_copies("UNCI", 3))
    node.wait_for_analyses()
    node.stop()
    db = node.database_at_rest()
    with sqlite3.connect(db) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        # an index a start does not read (a malformed page a start reads
        # stops it: exit 1, "database disk image is malformed")
        (root,) = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox_by_sent_as'").fetchone()
    assert pages >= root
    gc.collect()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\x55" * page)  # the index's page overwritten: malformed

    node.start()
    def not_ready():
        status, body = node.http("/readyz")
        return status == 503 and any("malformed" in r for r in body["reasons"])
    wait_until(not_ready, timeout=30, what="/readyz naming the malformed database")
    metrics = requests.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    assert "pneumo_database_up 0" in metrics
    assert "the database is damaged" in node.log()
    assert node.alive()


def test_a_write_ahead_log_unwritable_for_a_moment_leaves_no_connection_read_only(node_factory, rg1_copies):
    """The database's -wal made unwritable for a moment (an administrator's
    chattr or chown, undone): SQLite opened the log read-only on the
    connections that met it so, and kept it so. Long after the file was
    writable again, most C-STOREs were refused ("attempt to write a
    readonly database") and jobs stalled, until a restart."""
    from test_pynetdicom_peers import sender

    node = node_factory().start()
    files = rg1_copies("UNCI", 12)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, files[0])
    node.wait_for_analyses()
    wal = node.data_dir / "pneumo-node.sqlite-wal"
    if subprocess.run(["chattr", "+i", wal], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here (not root, or a file system without it)")
    try:
        refused = []
        for f in files[1:3]:
            assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
            refused.append(assoc.send_c_store(pydicom.dcmread(f)).Status)
            assoc.release()
        assert all(s == 0xA700 for s in refused), refused
        # Said: /readyz said ready (its probe connection began a write
        # without touching the log).
        code, body = node.http("/readyz")
        assert code == 503 and any("pneumo-node.sqlite-wal cannot be written" in r for r in body["reasons"]), body
        time.sleep(3)  # the node's loops meet it too
    finally:
        subprocess.run(["chattr", "-i", wal], check=True)
    assert node.http("/readyz")[0] == 200
    # Writable again: after at most the one write that finds a connection
    # still read-only, every instance is taken, each on its own
    # association (each may take another pooled connection).
    statuses = []
    for f in files[3:]:
        assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
        statuses.append(assoc.send_c_store(pydicom.dcmread(f)).Status)
        assoc.release()
    assert statuses.count(0xA700) <= 1 and statuses[-8:] == [0] * 8, [hex(s) for s in statuses]
    node.wait_for_analyses(timeout=120)
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('reported', 'delivered')") \
        == 1 + statuses.count(0), node.log()[-3000:]


def test_analyses_whose_outcome_could_not_be_recorded_finish_once_the_database_takes_writes(
        node_factory, rg1_copies):
    """Jobs analysed while the -wal could not be written: their outcome
    could not be recorded, and they stayed `analysing` for the whole lease
    (5 min) after the file was writable again, each charged an attempt."""
    node = node_factory(pipeline__lease_s="600").start()
    files = rg1_copies("UNCI", 12)
    wal = node.data_dir / "pneumo-node.sqlite-wal"
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, files[0])
    node.wait_for_analyses()
    if subprocess.run(["chattr", "+i", wal], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here (not root, or a file system without it)")
    subprocess.run(["chattr", "-i", wal], check=True)
    sending = subprocess.Popen(["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                                *map(str, files[1:])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the fault falls while analyses run
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'analysing'") > 0
               or sending.poll() is not None, timeout=30)
    subprocess.run(["chattr", "+i", wal], check=True)
    try:
        time.sleep(3)
    finally:
        subprocess.run(["chattr", "-i", wal], check=True)
    sending.wait(timeout=60)
    hit = "cannot record the job's outcome" in node.log()
    if not hit:
        pytest.skip("no analysis was running when the fault fell")
    # Well inside the 600 s lease: recorded by the process that held it.
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('received', 'queued', 'analysing')")
               == 0, timeout=90, what="the analyses recorded")
    assert "the job's outcome is recorded now" in node.log(), node.log()[-3000:]
