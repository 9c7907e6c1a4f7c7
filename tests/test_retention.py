"""Retention (`retention.keep_days`): the running node removes the files of
instances whose work is done and that nothing has happened to for that long;
the rows stay, and a copy sent again brings the file back."""

import time

import pydicom
import requests

from nodetest import node_factory, rg1_copies, run_dcmtk  # noqa: F401 (fixtures)
from test_outbox import results_to
from test_routing_orthanc import wait_until
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)

DAY_MS = 86_400_000


def test_files_of_finished_instances_go_after_keep_days_and_come_back_when_sent_again(
        node_factory, rg1_copies, storescp, tmp_path):
    port, _ = storescp
    config = results_to(tmp_path / "node.toml", port)
    config.write_text(config.read_text() + "[retention]\nkeep_days = 3\ninterval_s = 1\n")
    node = node_factory().start(config_file=config)
    done, fresh = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, done, fresh)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 2, timeout=60)
    uid = pydicom.dcmread(done, stop_before_pixels=True).SOPInstanceUID
    with node.db() as c:
        sr_path, sr_uid = c.execute(
            "SELECT s.path, s.sop_instance_uid FROM jobs j JOIN instances i ON i.id = j.instance_id "
            "JOIN instances s ON s.id = j.sr_instance_id WHERE i.sop_instance_uid = ?", (uid,)).fetchone()
    source_path = node.stored_path(pydicom.dcmread(done, stop_before_pixels=True))
    assert source_path.exists() and (node.data_dir / sr_path).exists()

    # Four days pass for `done`, its report and their deliveries.
    with node.db() as c:
        c.execute("UPDATE instances SET received_at_ms = received_at_ms - ? "
                  "WHERE id IN (SELECT instance_id FROM jobs j JOIN instances i ON i.id = j.instance_id "
                  "WHERE i.sop_instance_uid = ?) OR id IN (SELECT sr_instance_id FROM jobs j "
                  "JOIN instances i ON i.id = j.instance_id WHERE i.sop_instance_uid = ?)",
                  (4 * DAY_MS, uid, uid))
        c.execute("UPDATE jobs SET updated_at_ms = updated_at_ms - ?", (4 * DAY_MS,))
        c.execute("UPDATE outbox SET updated_at_ms = updated_at_ms - ?", (4 * DAY_MS,))
    wait_until(lambda: not source_path.exists(), timeout=90, what="the first pass")
    # (the same pass removes the report's file, an instant later)
    wait_until(lambda: not (node.data_dir / sr_path).exists(), timeout=10, what="the report's file")
    fresh_path = node.stored_path(pydicom.dcmread(fresh, stop_before_pixels=True))
    assert fresh_path.exists(), "received four days later than the other: kept"
    assert not source_path.parent.exists() or fresh_path.parent == source_path.parent

    (copy,) = requests.get(f"http://127.0.0.1:{node.http_port}/api/instances/{uid}", timeout=10).json()["copies"]
    assert copy["purged_at_ms"] is not None and copy["job"]["state"] == "delivered"
    metrics = requests.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    assert "pneumo_retention_files_removed_total 2" in metrics, metrics
    # A resend to a PACS that lost them: the removed files cannot go, and
    # their sent rows were parked (an alert) with nothing to send.
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/deliveries/resend"
                      f"?destination=pacs&sop_instance_uid={sr_uid}", timeout=10)
    assert r.json() == {"resent": 0, "not_resent_files_removed": 1}, r.text
    states = {d["state"] for d in requests.get(f"http://127.0.0.1:{node.http_port}/api/deliveries"
                                               "?destination=pacs", timeout=10).json()["deliveries"]}
    assert states == {"sent"}, states
    # Re-analysis (a new model, say) leaves it alone: nothing to analyse,
    # and it turned `failed`, an alert, for a file removed on purpose.
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry?state=delivered", timeout=10)
    assert r.json() == {"requeued": 1}, r.text  # `fresh` only
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 2, timeout=60)

    # Sent again: acknowledged, the file back, nothing analysed again.
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, done)
    assert source_path.exists()
    (copy,) = requests.get(f"http://127.0.0.1:{node.http_port}/api/instances/{uid}", timeout=10).json()["copies"]
    assert copy["purged_at_ms"] is None and copy["restored_at_ms"] is not None
    assert node.count("SELECT COUNT(*) FROM jobs") == 2
    # Kept keep_days from its restoring: passes (one a second) leave it for
    # the resend it was restored for (the next one removed it again).
    time.sleep(4)
    assert source_path.exists(), "removed again by the next pass"
    # said as retention's doing, not as damage to look for
    assert "removed by retention, is kept again from the copy just received" in node.log()
    assert "missing or damaged" not in node.log(), node.log()[-3000:]

    # A results destination added since (a new PACS, a renamed one): the
    # image sent again is owed to it, but its report, removed, cannot be:
    # the report was parked for good with "send the instance again to
    # restore it" and the job stayed `reported`.
    node.stop()
    config.write_text(config.read_text().replace(
        "[retention]", '[[destinations]]\nname = "pacs2"\nae_title = "STORESCP"\n'
        f'host = "127.0.0.1"\nport = {port}\nresults = true\n\n[retention]'))
    node.start(config_file=config)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, done)
    assert source_path.exists()
    wait_until(lambda: "a report retention removed cannot be sent" in node.log(), timeout=10)
    with node.db() as c:
        owed = c.execute("SELECT COUNT(*) FROM outbox o JOIN instances i ON i.id = o.instance_id "
                         "WHERE o.destination = 'pacs2' AND i.generated = 1").fetchone()[0]
        state = c.execute("SELECT j.state FROM jobs j JOIN instances i ON i.id = j.instance_id "
                          "WHERE i.sop_instance_uid = ?", (uid,)).fetchone()[0]
    assert owed == 0 and state == "delivered", (owed, state)
