"""Health, readiness, metrics and the status API; the disk guard."""

import subprocess
import time

import pydicom
import requests
import pytest

from nodetest import copy_with_new_uids, data_store, node_binary, node_factory, run_dcmtk  # noqa: F401 (fixture)
from test_pynetdicom_peers import sender
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


def test_health_metrics_and_api(node, rg1_copies):
    code, body = node.http("/healthz")
    assert code == 200 and body.strip() == "ok"
    files = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, files[0])  # a duplicate
    node.wait_for_analyses()  # job states stand still for the pages below

    code, text = node.http("/metrics")
    assert code == 200
    assert metric(text, "pneumo_associations_total") == 2
    assert metric(text, "pneumo_instances_received_total") == 3  # the duplicate is a success too
    assert metric(text, "pneumo_instances_refused_total") == 0
    jobs_total = sum(
        float(l.split()[1]) for l in text.splitlines() if l.startswith("pneumo_jobs{")
    )
    assert jobs_total == 2 == node.count("SELECT COUNT(*) FROM jobs")

    code, body = node.http("/api/jobs")
    assert code == 200 and len(body["jobs"]) == 2
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    assert uid in {j["sop_instance_uid"] for j in body["jobs"]}
    code, body = node.http("/api/jobs?state=nonsense")
    assert code == 400 and "unknown state" in body["error"]
    for bad in ("limit=-1", "limit=0", "limit=10001", "limit=ten", "status=failed"):
        code, body = node.http(f"/api/jobs?{bad}")
        assert code == 400 and body["error"], bad
    code, body = node.http("/api/jobs?limit=1")
    assert code == 200 and len(body["jobs"]) == 1
    # Pages, newest first: the next one starts below the last job listed,
    # and a short page is the last.
    first = body["jobs"][0]
    assert body["next_before_id"] == first["job_id"] and "result" in first
    code, body = node.http(f"/api/jobs?limit=1&before_id={first['job_id']}&result=false")
    assert code == 200 and [j["job_id"] for j in body["jobs"]] == [first["job_id"] - 1]
    assert "result" not in body["jobs"][0]
    code, body = node.http(f"/api/jobs?limit=5&before_id={first['job_id']}")
    assert len(body["jobs"]) == 1 and body["next_before_id"] is None
    # A last page that is exactly full is the last too (it pointed at an
    # empty page).
    code, body = node.http("/api/jobs?limit=2")
    assert len(body["jobs"]) == 2 and body["next_before_id"] is None
    code, body = node.http("/api/deliveries?limit=1")
    assert body == {"deliveries": [], "next_before_id": None}
    code, body = node.http(f"/api/jobs?state={first['state']}&before_id={first['job_id'] + 1}")
    assert first["job_id"] in [j["job_id"] for j in body["jobs"]]

    code, body = node.http(f"/api/instances/{uid}")
    assert code == 200
    (copy,) = body["copies"]
    assert copy["sop_instance_uid"] == uid and copy["job"]["job_id"] >= 1
    assert copy["deliveries"] == []
    code, body = node.http("/api/instances/1.2.3.4.5.6.7.8.9")
    assert code == 404
    code, body = node.http(f"/api/instances/{uid}?sop_uid=1.2.3")  # no parameters: refused, not ignored
    assert code == 400 and "sop_uid" in body["error"], body

    code, body = node.http("/readyz")
    assert body["database"]["ok"] is True
    assert body["storage"]["ok"] is True and body["storage"]["writable"] is True


def test_bytes_metric_counts_data_set_bytes(node, rg1_copies):
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    _, text = node.http("/metrics")
    with node.db() as c:
        (size,) = c.execute("SELECT dataset_size FROM instances").fetchone()
    assert metric(text, "pneumo_bytes_received_total") == size > 7_000_000


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs: free space the test can take away and give back."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_guard_refuses_below_the_floor_and_recovers(node_factory, small_disk, rg1_copies):
    node = node_factory(node__min_free_mb=40)
    node.data_dir = small_disk / "var"
    node.start()
    a, b = rg1_copies("UNCI", 2)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 32_000_000)  # leaves < 40 MB free
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(a)
    assoc.release()
    assert status.Status == 0xA700
    assert "free" in status.ErrorComment
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 0") == 0
    code, body = node.http("/readyz")
    assert code == 503 and body["storage"]["ok"] is False
    assert any("below the floor" in reason for reason in body["reasons"])
    _, text = node.http("/metrics")
    assert metric(text, "pneumo_instances_refused_total") == 1

    filler.unlink()  # space returns: the node recovers by itself
    time.sleep(0.2)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, b)
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 0") == 1
    _, body = node.http("/readyz")
    assert body["storage"]["ok"] is True


def test_instances_directory_unusable_is_a_refusal_naming_it_and_not_ready(node, rg1_copies):
    """Where the node writes received instances cannot take them (here a
    file stands where the directory was; a permission or mount mistake is
    the same to the node): A700, the path in the log, /readyz says which directory,
    nothing acknowledged; fixed, the node stores again."""
    a, b = rg1_copies("UNCI", 2)
    instances = node.data_dir / "instances"
    instances.rename(node.data_dir / "instances.moved")
    instances.write_text("not a directory")
    assoc = sender().associate("127.0.0.1", node.port, ae_title=node.ae_title)
    status = assoc.send_c_store(a)
    assoc.release()
    assert status.Status == 0xA700 and "cannot write the instance file" in status.ErrorComment
    assert str(instances) in node.log()  # the comment is 64 characters at most: the path is logged
    code, body = node.http("/readyz")
    assert code == 503 and body["storage"]["writable"] is False
    assert any(str(instances) in r and "not writable" in r for r in body["reasons"]), body["reasons"]
    assert node.count("SELECT COUNT(*) FROM instances") == 0

    instances.unlink()
    (node.data_dir / "instances.moved").rename(instances)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, b)
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 0") == 1
    assert node.http("/readyz")[0] == 200


def test_jobs_and_deliveries_of_one_study_or_instance(node_factory, storescp, tmp_path):
    """"No AI result for this patient": from the study's accession number
    or its UID, the jobs and deliveries of that study alone, or of one of
    its images, without paging through everything else."""
    from test_routing_orthanc import wait_until

    port, _ = storescp
    config = tmp_path / "node.toml"
    config.write_text('[[destinations]]\nname = "pacs"\nae_title = "STORESCP"\n'
                      f'host = "127.0.0.1"\nport = {port}\nresults = true\n')
    node = node_factory().start(config_file=config)
    studies = {}
    for n in range(3):
        ds = copy_with_new_uids(data_store() / "RG1_UNCI.dcm", tmp_path / f"{n}.dcm", new_study=True)
        ds.AccessionNumber = f"ACC{n} "  # as padded in the file
        ds.save_as(tmp_path / f"{n}.dcm", enforce_file_format=True)
        studies[ds.StudyInstanceUID] = ds.SOPInstanceUID
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / f"{n}.dcm")
    node.wait_for_analyses()
    wait_until(lambda: len(node.http("/api/deliveries?state=sent")[1]["deliveries"]) == 3, timeout=60)

    study, sop = list(studies.items())[1]
    code, body = node.http(f"/api/jobs?study_instance_uid={study}")
    assert code == 200 and [(j["study_instance_uid"], j["sop_instance_uid"]) for j in body["jobs"]] == [(study, sop)]
    # By the accession number a worklist shows: the same study's job and
    # its report's delivery (reports carry their image's number).
    code, body = node.http("/api/jobs?accession_number=ACC1")
    assert code == 200 and [j["sop_instance_uid"] for j in body["jobs"]] == [sop]
    code, body = node.http("/api/deliveries?accession_number=ACC1")
    assert [(d["kind"], d["study_instance_uid"]) for d in body["deliveries"]] == [("report", study)]
    assert node.http("/api/jobs?accession_number=ACC9")[1]["jobs"] == []
    code, body = node.http(f"/api/jobs?sop_instance_uid={sop}%20&state=delivered")
    assert [j["sop_instance_uid"] for j in body["jobs"]] == [sop]
    code, body = node.http(f"/api/jobs?sop_instance_uid={sop}&state=failed")
    assert body == {"jobs": [], "next_before_id": None}
    # Several states, comma-separated, as the retry takes them.
    code, body = node.http(f"/api/jobs?sop_instance_uid={sop}&state=failed,delivered")
    assert code == 200 and [j["sop_instance_uid"] for j in body["jobs"]] == [sop]
    code, body = node.http("/api/deliveries?state=parked,sent")
    assert code == 200 and len(body["deliveries"]) == 3
    code, body = node.http("/api/jobs?state=failed,nonsense")
    assert code == 400 and "unknown state `nonsense`" in body["error"]
    # A misspelt parameter is named with the listing's own (each listed
    # the other's too, which it then refused).
    code, body = node.http("/api/jobs?stat=failed")
    assert code == 400 and "unknown parameter `stat`" in body["error"], body
    assert "result" in body["error"] and "destination" not in body["error"], body
    code, body = node.http("/api/deliveries?bogus=1")
    assert code == 400 and "unknown parameter `bogus`" in body["error"], body
    assert "destination" in body["error"] and "result" not in body["error"], body
    # Deliveries of a study: its report, newest first, with the state of each.
    code, body = node.http(f"/api/deliveries?study_instance_uid={study}&destination=pacs")
    assert code == 200 and [(d["kind"], d["study_instance_uid"], d["state"]) for d in body["deliveries"]] \
        == [("report", study, "sent")]
    # A name no destination has and no row owes: said (it read "nothing owed")
    for name in ("elsewhere", "PACS", "pacs,elsewhere", ""):
        code, body = node.http(f"/api/deliveries?study_instance_uid={study}&destination={name}")
        assert code == 400 and body["destinations"] == ["pacs"], (name, code, body)
    # Errors are JSON everywhere (a 404 and a 405 were empty, without a type)
    assert node.http("/api/nowhere") == (404, {"error": "no such path"})
    r = requests.delete(f"http://127.0.0.1:{node.http_port}/api/jobs", timeout=10)
    assert r.status_code == 405 and "error" in r.json()
    code, body = node.http("/api/deliveries?limit=2&state=sent")
    assert len(body["deliveries"]) == 2 and body["next_before_id"] is not None
    code, body = node.http(f"/api/deliveries?state=sent&before_id={body['next_before_id']}")
    assert len(body["deliveries"]) == 1
    for bad in ("study_instance_uid=", "sop_instance_uid=%20", "accession_number=", "study=1.2.3",
                "sop_instance_uid=abc", "sop_instance_uid=1..2", f"study_instance_uid={'1.2' * 40}"):
        for listing in ("jobs", "deliveries"):
            code, body = node.http(f"/api/{listing}?{bad}")
            assert code == 400 and body["error"], (listing, bad)
    # An action given what is no UID is refused, not answered "0 done".
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry?sop_instance_uid=abc", timeout=10)
    assert r.status_code == 400 and "is not a UID" in r.json()["error"], r.text
    # A value that does not parse is named with what the parameter takes
    # (serde's "Failed to deserialize query string" before).
    code, body = node.http("/api/jobs?limit=abc")
    assert code == 400 and body["error"].startswith("parameter `limit` takes a whole number"), body
    code, body = node.http("/api/deliveries?before_id=99999999999999999999")
    assert code == 400 and body["error"].startswith("parameter `before_id` takes a whole number"), body
    code, body = node.http("/api/jobs?result=maybe")
    assert code == 400 and body["error"].startswith("parameter `result` takes true or false"), body
    code, body = node.http("/api/jobs?limit=1&limit=2")
    assert code == 400 and body["error"] == "parameter `limit` is given twice", body
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/deliveries/cancel", timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "parameter `destination` is required", r.text
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry?older_than=1", timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "unknown parameter `older_than`: this action takes `state` or `sop_instance_uid`"
    # Each listing's own parameter, given to the other: refused, not ignored.
    assert node.http("/api/jobs?destination=pacs")[0] == 400
    assert node.http("/api/deliveries?result=false")[0] == 400
    # Row ids start at 1: "before -1" was an empty page, and a path that is
    # no UID read as an instance never received.
    for listing in ("jobs", "deliveries"):
        code, body = node.http(f"/api/{listing}?before_id=-1")
        assert code == 400 and "before_id must be at least 1" in body["error"], body
    code, body = node.http("/api/instances/abc")
    assert code == 400 and "is not a UID" in body["error"], body
    assert node.http("/api/instances/1.2.3.4")[0] == 404

    # A browser's cross-site request (a web page on the node's host, a form
    # POST) is refused; curl and scripts send no Origin.
    url = f"http://127.0.0.1:{node.http_port}/api/jobs/retry?state=failed"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        r = requests.post(url, headers=headers, timeout=10)
        assert r.status_code == 403 and "another site" in r.json()["error"], (headers, r.text)
    same = requests.post(url, headers={"Origin": f"http://127.0.0.1:{node.http_port}"}, timeout=10)
    assert same.status_code == 200, same.text
    same = requests.post(url, headers={"Origin": f"http://localhost:{node.http_port}",
                                       "Host": f"LOCALHOST:{node.http_port}"}, timeout=10)
    assert same.status_code == 200, same.text  # host names compare without case

    # Every state of a configured destination is in /metrics, 0 when empty:
    # series that vanished left alert rules to `absent()`.
    metrics = requests.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    assert 'pneumo_outbox{destination="pacs",state="parked"} 0' in metrics, metrics
    assert 'pneumo_outbox{destination="pacs",state="sent"} 3' in metrics, metrics
    assert 'pneumo_outbox_oldest_seconds{destination="pacs",state="pending"} 0' in metrics, metrics


def test_the_build_is_named_and_what_a_start_did_to_the_database_is_logged(node_factory):
    """After an upgrade or a rollback an administrator could not tell
    which build served (every build said 0.1.0) nor what its start did
    to the database."""
    import hashlib
    import re
    import sqlite3

    from nodetest import ROOT, node_binary

    out = subprocess.run([str(node_binary()), "--version"], capture_output=True, text=True, timeout=30).stdout
    # (`-modified`: built from a tree with changes not committed)
    m = re.fullmatch(r"pneumo-node (\d+\.\d+\.\d+) \(commit ([0-9a-f]{12}|unknown)(-modified)?\)\n", out)
    assert m, out
    version, commit, modified = m.groups()
    named = commit + (modified or "")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0 and commit != "unknown":
        # built from this checkout (maybe an earlier commit of it)
        assert subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", commit]).returncode == 0

    node = node_factory().start()
    assert "database created" in node.log()
    status, ready = node.http("/readyz")
    assert ready["build"] == {"version": version, "commit": named}
    metrics = requests.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    assert f'pneumo_build_info{{version="{version}",commit="{named}"}} 1' in metrics
    from test_routing_orthanc import wait_until
    wait_until(lambda: "pneumo-node listening" in node.log(), timeout=10)
    assert f"commit={named}" in node.log()
    node.stop()

    # A newer build's migration: this build still serves, and says so.
    c = sqlite3.connect(node.data_dir / "pneumo-node.sqlite")
    c.execute("INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum,"
              " execution_time) VALUES (9999, 'from a newer build', CURRENT_TIMESTAMP, 1, x'00', 0)")
    c.commit()
    c.close()
    node.start()
    assert "the database was migrated by a newer build" in node.log()
    assert "database migrated" not in node.log()
    assert node.echo_ok()
    node.stop()

    # A development build's migration 15 differed from the released one: a
    # start failed with sqlx's words and exit 1, restarted every 5 s.
    c = sqlite3.connect(node.data_dir / "pneumo-node.sqlite")
    c.execute("UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 15")
    c.commit()
    c.close()  # the log folded in: a dry run reads the database file alone
    with pytest.raises(RuntimeError, match="exited with 78"):
        node.start()
    assert "the database was migrated by a build whose migration 15 differs from this build's" in node.log()
    r = subprocess.run([str(node_binary()), "recover-files"], env=node.env(), capture_output=True,
                       text=True, timeout=60, cwd=node.workdir)
    assert r.returncode == 78 and "migration 15 differs" in r.stderr, (r.returncode, r.stderr)
    # check-config passed it and a dry run listed 0 files to record.
    for command in (["check-config"], ["recover-files", "--dry-run"]):
        r = subprocess.run([str(node_binary()), *command], env=node.env(), capture_output=True,
                           text=True, timeout=60, cwd=node.workdir)
        assert r.returncode == 78 and "migration 15 differs" in r.stderr, (command, r.returncode, r.stderr)
    # A migration recorded as failed: serve exited 1 (restarted every 5 s)
    # with sqlx's "partially applied", and check-config passed it.
    c = sqlite3.connect(node.data_dir / "pneumo-node.sqlite")
    released_15 = (ROOT / "crates" / "store" / "migrations" / "0015_not_analysed_notice.sql").read_bytes()
    c.execute("UPDATE _sqlx_migrations SET checksum = ? WHERE version = 15", (hashlib.sha384(released_15).digest(),))
    c.execute("UPDATE _sqlx_migrations SET success = 0 WHERE version = 22")
    c.commit()
    c.close()
    for command in (["serve"], ["check-config"], ["recover-files", "--dry-run"]):
        r = subprocess.run([str(node_binary()), *command], env=node.env(), capture_output=True,
                           text=True, timeout=60, cwd=node.workdir)
        assert r.returncode == 78 and "records migration 22 as failed" in r.stderr, (command, r.returncode,
                                                                                      r.stderr[-500:])


# Migration 15 as builds 1c202ad to a99d25a applied it (the notice image's
# column, which the released migrations add in 16).
DEVELOPMENT_MIGRATION_15 = """\
-- The notice a failed job made (an SR saying its image was not analysed,
-- and why), and the same notice as an image (with report.companion_sc),
-- owed to the results destinations like a report. NULL: none (notices
-- turned off, the job failed before this migration, or the notice could
-- not be made).
ALTER TABLE jobs ADD COLUMN notice_instance_id INTEGER REFERENCES instances (id);
ALTER TABLE jobs ADD COLUMN notice_sc_instance_id INTEGER REFERENCES instances (id);
"""


def test_a_database_a_development_build_migrated_is_taken_over(node_factory, tmp_path):
    """A site that ran one of the builds whose migration 15 differed could
    not upgrade: every later build refused its database (exit 78, or exit 1
    and a restart every 5 s), and the ways left lost its history or sent
    everything again."""
    import hashlib
    import sqlite3
    from contextlib import closing

    from nodetest import ROOT

    node = node_factory()
    node.data_dir.mkdir(parents=True, exist_ok=True)
    checksum = hashlib.sha384(DEVELOPMENT_MIGRATION_15.encode()).hexdigest()
    assert checksum.startswith("2055f0aa36a46e2f"), checksum
    migrations = [(int(f.name[:4]), f.name[5:-4].replace("_", " "), f.read_text())
                  for f in sorted((ROOT / "crates" / "store" / "migrations").glob("00*.sql"))][:14]
    migrations.append((15, "not analysed notice", DEVELOPMENT_MIGRATION_15))
    with closing(sqlite3.connect(node.data_dir / "pneumo-node.sqlite")) as c:
        c.execute("CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,"
                  " installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,"
                  " checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)")
        for version, description, sql in migrations:
            c.executescript(sql)
            c.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)"
                      " VALUES (?, ?, 1, ?, 0)", (version, description, hashlib.sha384(sql.encode()).digest()))
        c.commit()
    r = subprocess.run([str(node_binary()), "check-config"], env=node.env(), capture_output=True,
                       text=True, timeout=60, cwd=node.workdir)
    assert r.returncode == 0, r.stderr
    node.start()
    assert "the database was migrated by a development build" in node.log()
    assert "database migrated" in node.log() and "from=15" in node.log(), node.log()
    assert node.echo_ok()
    node.stop()
    node.start()  # once taken over, an ordinary database
    assert node.log().count("migrated by a development build") == 1, node.log()


def test_requests_that_never_finish_are_ended_and_a_huge_body_refused_at_once(node):
    """A POST announcing 5 bytes of body and sending none held its
    connection until the node stopped (12 minutes seen); so did a request
    whose headers never ended; a body announced at 10 GB was answered only
    after the body's whole timeout."""
    import socket

    def connect():
        return socket.create_connection(("127.0.0.1", node.http_port), timeout=30)

    half_headers, no_body, huge = connect(), connect(), connect()
    started = time.monotonic()
    half_headers.sendall(b"GET /healthz HTTP/1.1\r\nHost: no")
    no_body.sendall(b"POST /api/jobs/retry HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\n")
    huge.sendall(b"POST /api/jobs/retry HTTP/1.1\r\nHost: node\r\nContent-Length: 10000000000\r\n\r\n")

    answer = huge.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert time.monotonic() - started < 5
    huge.close()

    answer = no_body.recv(4096)
    no_body.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 25

    # The connection is closed (hyper may say 408 first).
    answer = half_headers.recv(4096)
    while answer and not answer.startswith(b"HTTP/1.1 408"):
        answer = half_headers.recv(4096)
    half_headers.close()
    assert time.monotonic() - started < 25
    assert node.http("/healthz")[0] == 200


def test_idle_http_connections_hold_a_bounded_number_of_descriptors(node):
    """1,100 idle HTTP connections at a limit of 1,024 descriptors made the
    DICOM listener's accepts fail for seconds: each held a descriptor of
    the process. Past a cap they wait in the kernel's backlog."""
    import os
    import socket

    def descriptors():
        return len(os.listdir(f"/proc/{node.proc.pid}/fd"))

    before = descriptors()
    # (fewer than the cap and the listen backlog together)
    idle = [socket.create_connection(("127.0.0.1", node.http_port), timeout=10) for _ in range(200)]
    try:
        time.sleep(1)
        held = descriptors() - before
        assert held <= 130, f"{held} descriptors for 200 idle connections"
        assert node.echo_ok()
    finally:
        for s in idle:
            s.close()
    # once they are gone (or timed out), HTTP serves again
    deadline = time.monotonic() + 30
    while True:
        try:
            if node.http("/healthz")[0] == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "HTTP did not serve again"
        time.sleep(0.5)
