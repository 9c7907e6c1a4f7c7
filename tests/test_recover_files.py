"""A database backup restored over newer files: the instances acknowledged
after the backup are files the database does not name. Their senders were
told success and will not send them again; without `recover-files` they
were never analysed nor forwarded (and retention never removed them)."""

from __future__ import annotations

import gc
import sqlite3
import subprocess

import pydicom
from nodetest import copy_with_new_uids, data_store, node_binary, node_factory, run_dcmtk  # noqa: F401
from test_routing_orthanc import wait_until
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)


def recover(node, *args) -> subprocess.CompletedProcess:
    config = ["--config", str(node.config_file)] if node.config_file else []
    cmd = [str(node_binary()), *config, "recover-files", *args]
    return subprocess.run(cmd, env=node.env(), cwd=node.workdir, capture_output=True, text=True, timeout=120)


def test_files_newer_than_a_restored_database_are_recorded_analysed_and_forwarded(
        node_factory, storescp, tmp_path):
    port, received = storescp
    config = tmp_path / "node.toml"
    config.write_text('[[destinations]]\nname = "pacs"\nae_title = "STORESCP"\n'
                      f'host = "127.0.0.1"\nport = {port}\nresults = true\n'
                      '[[routing.forward]]\ndestinations = ["pacs"]\nmodalities = ["CR"]\n')
    node = node_factory().start(config_file=config)
    sources = [copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / f"{n}.dcm", new_study=True)
               for n in range(3)]
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "0.dcm")
    # Its report delivered before the backup (owed in the backup, it went
    # to the PACS again after the restore: a fifth file there).
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 1, timeout=60)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state <> 'sent'") == 0, timeout=60)
    node.stop()
    backup = tmp_path / "backup.sqlite"
    live, copy = node.db(), sqlite3.connect(backup)
    live.backup(copy)  # SQLite's online backup, as docs/operations.md says
    copy.close()
    live.close()

    node.start()
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "1.dcm")
    # One sent under the node's own AE title (its `store` calls so by
    # default): an image all the same, not a report of this node's.
    run_dcmtk("storescu", "-aet", node.ae_title, "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "2.dcm")
    node.wait_for_analyses()
    node.stop()
    # The restore: the backup's database over the newer files.
    db = node.database_at_rest()
    db.write_bytes(backup.read_bytes())
    assert node.count("SELECT COUNT(*) FROM jobs") == 1
    # A start on the restored database without recover-files: the two
    # acknowledged instances (and their reports) were unknown to the node
    # without a word.
    node.start()
    wait_until(lambda: "files under instances/ that the database does not name" in node.log(), timeout=60)
    # the two images; their two reports are made again when they are
    # analysed, and recover-files leaves them: said apart, not counted
    assert "files=2" in node.log() and "recover-files" in node.log()
    _, metrics = node.http("/metrics")
    assert "pneumo_unrecorded_files 2" in metrics, metrics
    wait_until(lambda: "reports made by this node under instances/" in node.log(), timeout=10)
    node.stop()
    db = node.database_at_rest()

    # A dry run names them and records nothing.
    r = recover(node, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    found = [l for l in r.stdout.splitlines() if l.startswith("FOUND")]
    assert sorted(l.split(": ")[1].split()[0] for l in found) == sorted(ds.SOPInstanceUID for ds in sources[1:])
    callers = {ds.SOPInstanceUID: caller for ds, caller in zip(sources[1:], ("STORESCU", node.ae_title))}
    assert all(f"{uid} from {callers[uid]}" in l for l in found for uid in callers if uid in l), found
    # Their reports are left: made again, with the same UIDs, by the analysis.
    assert len([l for l in r.stdout.splitlines() if l.startswith("LEFT")]) == 2
    assert node.count("SELECT COUNT(*) FROM instances") == 2  # the first image and its report

    # Recorded, then analysed and forwarded by the next start.
    for f in received.iterdir():
        f.unlink()
    r = recover(node)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len([l for l in r.stdout.splitlines() if l.startswith("RECORDED")]) == 2
    # what was recorded is in the database file itself: no write-ahead log
    # left with anything in it, and a dry run takes the directory again
    db = node.database_at_rest()
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert recover(node, "--dry-run").returncode == 0
    node.start()
    # The reports recover-files left are no alarm: it warned, and told the
    # operator to run recover-files again, which did nothing.
    wait_until(lambda: node.log().count("reports made by this node under instances/") == 2, timeout=30,
               what="this start's look at instances/")
    assert "pneumo_unrecorded_files 0" in node.http("/metrics")[1]
    assert node.log().count("files under instances/ that the database does not name") == 1
    node.wait_for_analyses()
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 3, timeout=60,
               what="the recovered images analysed and their reports delivered")
    got = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in received.iterdir()}
    for ds in sources[1:]:
        assert ds.SOPInstanceUID in got  # the original, forwarded
        (job,) = node.http(f"/api/instances/{ds.SOPInstanceUID}")[1]["copies"]
        assert job["calling_ae"] == callers[ds.SOPInstanceUID]  # routed by its caller, as when it arrived
    assert len(got) == 4  # and the two reports
    # While the node serves, the data directory is its own.
    r = recover(node)
    assert r.returncode != 0 and "in use by another pneumo-node process" in r.stderr, r.stderr
    node.stop()
    assert "stopped: the database is closed" in node.log()  # an operator sees the stop complete
    r = recover(node)
    assert r.returncode == 0 and "0 files the database did not name" in r.stdout, r.stdout

    # A file that is not DICOM is named and left where it is.
    junk = node.data_dir / "instances" / "notes.txt"
    junk.write_text("not an instance")
    r = recover(node)
    assert r.returncode != 0
    assert "FAILED   instances/notes.txt: not a DICOM Part-10 file" in r.stdout, r.stdout
    assert junk.exists()


def test_a_node_started_without_its_database_but_with_files_is_not_ready(node_factory, tmp_path):
    """The database deleted (or a wrong `database.url`) and the node started
    again: it made an empty database and said ready, with one WARN in the
    log; the instances of its files, and their jobs and deliveries, were
    silently unknown. /readyz now says why it is not ready until
    `recover-files` has recorded them, across restarts (it forgot once an
    instance had been received meanwhile)."""
    node = node_factory().start()
    copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / "0.dcm")
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "0.dcm")
    node.wait_for_analyses()
    assert node.http("/readyz")[0] == 200
    node.stop()
    gc.collect()
    db = node.data_dir / "pneumo-node.sqlite"
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)

    node.start()
    code, body = node.http("/readyz")
    assert code == 503, body
    assert any("the database was deleted or replaced" in reason and "recover-files" in reason
               for reason in body["reasons"]), body
    # Still receives; one instance received and a restart do not end it
    # (the database is no longer empty, the files before it still unknown).
    copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / "1.dcm")
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "1.dcm")
    node.stop()
    node.start()
    code, body = node.http("/readyz")
    assert code == 503 and "recover-files" in " ".join(body["reasons"]), body
    node.stop()
    r = recover(node)
    assert r.returncode == 0, r.stdout + r.stderr
    node.start()
    assert node.http("/readyz")[0] == 200
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('reported', 'delivered')") == 2


def test_a_dry_run_writes_nothing_and_wants_a_database(node_factory, tmp_path):
    """`recover-files --dry-run` opened the database as `serve` does: it
    migrated a restored backup, and on a data directory whose database was
    not yet back it made an empty one whose `-wal`, left behind, SQLite
    replayed over the backup copied in next (0 instances, integrity ok)."""
    node = node_factory().start()
    copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / "0.dcm", new_study=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "0.dcm")
    node.wait_for_analyses()
    node.stop()
    db = node.database_at_rest()
    beside = [db.with_name(db.name + extra) for extra in ("-wal", "-shm")]
    before = db.read_bytes()

    r = recover(node, "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    assert db.read_bytes() == before
    assert not any(f.exists() for f in beside), [f.name for f in beside if f.exists()]

    # A write-ahead log beside it (the node killed): its commits are
    # invisible to a read-only look, which refuses rather than mislead.
    wal = beside[0]
    wal.write_bytes(b"\0" * 32)
    r = recover(node, "--dry-run")
    assert r.returncode != 0 and "write-ahead log" in r.stderr, r.stdout + r.stderr
    assert db.read_bytes() == before
    wal.unlink()

    # The real run closes the database: nothing left beside it to be
    # replayed over a database copied in later.
    r = recover(node)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(f.exists() for f in beside), [f.name for f in beside if f.exists()]

    # The database not yet put back: an error, and nothing made in its
    # place, by the dry run or the real one.
    db.rename(tmp_path / "elsewhere.sqlite")
    for args in (["--dry-run"], []):
        r = recover(node, *args)
        assert r.returncode != 0, args
        assert "no database at" in r.stderr and "put the database" in r.stderr, r.stderr
        assert not db.exists() and not any(f.exists() for f in beside), args


def test_recover_files_as_root_on_the_service_s_data_is_refused(node_factory, tmp_path):
    """Run as root on a data directory the service's account owns, it wrote
    the files it recorded as root: the service could not read them, and the
    instances acknowledged after the backup were never analysed."""
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root, as the administrator who would run it so")
    node = node_factory().start()
    node.stop()
    os.chown(node.data_dir, 65534, 65534)  # nobody's, as a service account's would be
    try:
        r = recover(node)
        assert r.returncode != 0, r.stdout + r.stderr
        assert "run it as the node's account" in r.stderr, r.stderr
        assert "RECORDED" not in r.stdout
    finally:
        os.chown(node.data_dir, 0, 0)
    assert recover(node).returncode == 0  # root's own directory: as before


def test_a_data_directory_that_never_stored_an_instance_has_nothing_to_recover(node_factory, tmp_path):
    """Without `instances/` (no instance ever stored), the dry run failed
    with "cannot write the instance file", a write error of a read-only
    look; an unreadable directory below it is named as unreadable."""
    import os
    import shutil

    node = node_factory().start()
    node.stop()
    shutil.rmtree(node.data_dir / "instances", ignore_errors=True)
    for args in (["--dry-run"], []):
        r = recover(node, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "0 files the database did not name" in r.stdout, r.stdout
    if os.geteuid() == 0:
        return  # root reads any directory: the unreadable case cannot be made
    locked = node.data_dir / "instances" / "1.2.3"
    locked.mkdir(parents=True)
    locked.chmod(0)
    try:
        r = recover(node, "--dry-run")
        assert r.returncode != 0 and f"cannot read {locked}" in r.stderr, r.stdout + r.stderr
        assert "cannot write" not in r.stderr, r.stderr
    finally:
        locked.chmod(0o755)


def test_a_file_recorded_after_the_start_counted_it_is_no_longer_counted(node_factory, tmp_path):
    """A kill -9 between a file's rename and its row's commit leaves a file
    the start counts as unrecorded (warning, `pneumo_unrecorded_files 1`);
    the row written moments later (the job run again, or the sender's
    retry here) named it, and the count and the advice to run
    recover-files stood until the next restart."""
    node = node_factory().start()
    first, second = (copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / f"{n}.dcm", new_study=True)
                     for n in range(2))
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "0.dcm")
    node.wait_for_analyses()
    node.stop()
    # `second`'s file in place, its row never committed (what the kill left)
    left = node.stored_path(second)
    left.parent.mkdir(parents=True)
    left.write_bytes((tmp_path / "1.dcm").read_bytes())
    node.start()
    wait_until(lambda: "files under instances/ that the database does not name" in node.log(), timeout=60)
    assert "pneumo_unrecorded_files 1" in node.http("/metrics")[1]
    # The sender, never acknowledged, sends it again: stored, and its row
    # names the file.
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "1.dcm")
    wait_until(lambda: "pneumo_unrecorded_files 0" in node.http("/metrics")[1], timeout=30,
               what="the count of unrecorded files back to 0")
    assert "now named by it, or gone" in node.log()


def test_another_nodes_report_unknown_to_the_database_is_counted(node_factory, tmp_path):
    """A report a pneumo-node made, received from a PACS and lost with a
    database restore, was taken for one this node makes again (the
    product's name on it) and left out of the count and the warning,
    though recover-files records it."""
    from pydicom.uid import generate_uid

    node = node_factory().start()
    copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / "0.dcm", new_study=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "0.dcm")
    node.wait_for_analyses()
    node.stop()
    with node.db() as c:
        (sr_path,) = c.execute("SELECT s.path FROM jobs j JOIN instances s ON s.id = j.sr_instance_id").fetchone()
    made = node.data_dir / sr_path
    for source_ae in ("OTHERPACS", node.ae_title):
        ds = pydicom.dcmread(made)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.SourceApplicationEntityTitle = source_ae
        ds.save_as(made.with_name(f"{ds.SOPInstanceUID}.dcm"), enforce_file_format=True)
    node.start()
    wait_until(lambda: "files under instances/ that the database does not name" in node.log(), timeout=60)
    assert "files=1" in node.log().split("files under instances/ that the database does not name")[1][:400]
    assert "pneumo_unrecorded_files 1" in node.http("/metrics")[1]
    assert "reports made by this node under instances/" in node.log()  # its own, apart
