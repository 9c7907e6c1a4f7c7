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
    assert node.spool_files() == []
    # Every row points at a complete file.
    with node.db() as c:
        for (path, size) in c.execute("SELECT path, file_size FROM instances"):
            assert (node.data_dir / path).stat().st_size == size
    assert node.echo_ok()
