"""Storage failing under the node: the data directory on a file system
that fills up (a small tmpfs: what was acknowledged is committed, the node
recovers by itself once there is space again, and a report it could not
write leaves nothing behind), its spool directory removed.

The full disk needs to mount a tmpfs (root, as CI runs); skipped with the
reason where the machine does not allow it."""

import sqlite3
import subprocess
import time

import pydicom
import pytest
import requests

from nodetest import node, node_factory, rg1_copies, run_dcmtk  # noqa: F401 (fixtures)
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
    with open(ballast, "r+b") as f:  # room for the retry's own write, little more
        f.truncate(ballast.stat().st_size - 16 * 1024)
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry?state=skipped", timeout=40)
    assert r.status_code == 200, r.text
    wait_until(lambda: "disk is full" in node.log() or "No space left" in node.log(), timeout=30,
               what="the node meeting the full disk")
    time.sleep(3)  # several routing and claim rounds on the full disk
    assert not [p for p in node.spool_files() if p.name.startswith("generated-")], \
        "a report that could not be written left its part file"

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
