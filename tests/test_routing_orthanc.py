"""Routing originals to a PACS (Orthanc) through the outbox: rules, retries,
refusals and restarts."""

import time

import pydicom
import pytest
import requests

from nodetest import copy_with_new_uids, data_store, free_port, run_dcmtk
from orthanc import Orthanc
from test_pynetdicom_peers import PynetdicomReceiver


def node_config(path, destinations, forward_rules, **outbox):
    lines = []
    for d in destinations:
        lines += [
            "[[destinations]]",
            f'name = "{d["name"]}"',
            f'ae_title = "{d["ae_title"]}"',
            'host = "127.0.0.1"',
            f'port = {d["port"]}',
        ]
    for rule in forward_rules:
        lines.append("[[routing.forward]]")
        for k, v in rule.items():
            lines.append(f"{k} = {v!r}".replace("'", '"'))
    lines.append("[outbox]")
    for k, v in outbox.items():
        lines.append(f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_until(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(what)


@pytest.fixture
def orthanc(tmp_path):
    o = Orthanc(tmp_path / "orthanc").start()
    yield o
    o.stop()


def test_forward_rule_by_modality_and_analysis_routing(node_factory, orthanc, rg1_copies, tmp_path):
    config = node_config(
        tmp_path / "node.toml",
        [{"name": "pacs", "ae_title": orthanc.ae_title, "port": orthanc.dicom_port}],
        [{"destinations": ["pacs"], "modalities": ["CR"]}],
    )
    node = node_factory(dicom__accept="all-storage").start(config_file=config)
    radiographs = rg1_copies("UNCI", 3)
    mr = copy_with_new_uids(data_store() / "MR2_UNCI.dcm", tmp_path / "mr.dcm")
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *radiographs, tmp_path / "mr.dcm")
    stored = orthanc.wait_for_count(3)
    time.sleep(1)  # nothing else may arrive
    assert len(orthanc.get("/instances")) == 3
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in radiographs}
    assert {t["SOPInstanceUID"] for t in stored} == sent
    study = pydicom.dcmread(radiographs[0], stop_before_pixels=True).StudyInstanceUID
    assert {t["StudyInstanceUID"] for t in stored} == {study}
    assert node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND last_status = '0000H'") == 3
    # Analysis routing: the radiographs are analysed, the MR is skipped with its reason.
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('reported', 'skipped')") == 4)
    with node.db() as c:
        (reason,) = c.execute(
            "SELECT reason FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE i.sop_instance_uid = ?",
            (mr.SOPInstanceUID,),
        ).fetchone()
    assert reason == "modality MR is not analysed"
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 3
    # A modality never analysed is not worth a log line per instance.
    assert "not analysed" not in node.log()


def test_forward_rule_by_calling_ae(node_factory, orthanc, rg1_copies, tmp_path):
    config = node_config(
        tmp_path / "node.toml",
        [{"name": "pacs", "ae_title": orthanc.ae_title, "port": orthanc.dicom_port}],
        [{"destinations": ["pacs"], "calling_ae_titles": ["ROOM7"]}],
    )
    node = node_factory().start(config_file=config)
    a, b = rg1_copies("UNCI", 2)
    run_dcmtk("storescu", "-aet", "ROOM7", "-aec", node.ae_title, "127.0.0.1", node.port, a)
    run_dcmtk("storescu", "-aet", "ROOM8", "-aec", node.ae_title, "127.0.0.1", node.port, b)
    (only,) = orthanc.wait_for_count(1)
    time.sleep(1)
    assert len(orthanc.get("/instances")) == 1
    assert only["SOPInstanceUID"] == pydicom.dcmread(a, stop_before_pixels=True).SOPInstanceUID


def test_destination_down_then_up_across_a_restart(node_factory, rg1_copies, tmp_path):
    pacs_port = free_port()
    config = node_config(
        tmp_path / "node.toml",
        [{"name": "pacs", "ae_title": "ORTHANC", "port": pacs_port}],
        [{"destinations": ["pacs"]}],
        retry_base_s=1,
        retry_cap_s=2,
    )
    node = node_factory().start(config_file=config)
    files = rg1_copies("UNCI", 3) + rg1_copies("J2KR", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files[:3])
    run_dcmtk("storescu", "-xv", "-aec", node.ae_title, "127.0.0.1", node.port, files[3])
    wait_until(
        lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts >= 1") == 4,
        what="failed attempts recorded",
    )
    assert "cannot connect" in " ".join(
        r[0] for r in node.db().execute("SELECT last_status FROM outbox").fetchall()
    )
    node.kill9()
    node.start()
    orthanc = Orthanc(tmp_path / "late-orthanc", dicom_port=pacs_port).start()
    try:
        stored = orthanc.wait_for_count(4, timeout=60)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 4)
        time.sleep(1.5)  # no second copy under any UID
        assert len(orthanc.get("/instances")) == 4
        sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        assert {t["SOPInstanceUID"] for t in stored} == sent
    finally:
        orthanc.stop()


def test_permanent_refusal_is_parked_with_its_reason(node_factory, rg1_copies, tmp_path):
    receiver = PynetdicomReceiver(status=0xA900)
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "picky", "ae_title": "PYSCP", "port": receiver.port}],
            [{"destinations": ["picky"]}],
            retry_base_s=1,
        )
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'parked'") == 1)
        with node.db() as c:
            (status, attempts) = c.execute("SELECT last_status, attempts FROM outbox").fetchone()
        assert status.startswith("A900H")
        assert attempts == 1
        time.sleep(2.5)
        assert len(receiver.received) == 1  # never retried
    finally:
        receiver.close()


def test_transient_refusal_is_retried(node_factory, rg1_copies, tmp_path):
    receiver = PynetdicomReceiver(status=0xA700)
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "full", "ae_title": "PYSCP", "port": receiver.port}],
            [{"destinations": ["full"]}],
            retry_base_s=1,
            retry_cap_s=1,
        )
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: node.count("SELECT attempts FROM outbox") >= 2, what="a retry")
        receiver.status = 0x0000
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1)
    finally:
        receiver.close()


def test_a_pacs_pushes_radiographs_and_gets_the_reports_back(node_factory, rg1_copies, tmp_path):
    """Orthanc as the sending PACS ("send to the AI node"): its own C-STORE
    SCU pushes a JPEG 2000 and an uncompressed radiograph, proposing
    contexts its way; the node analyses both and sends each SR back."""
    node = node_factory()
    pacs = Orthanc(tmp_path / "orthanc", modalities={"pneumo": [node.ae_title, "127.0.0.1", node.port]})
    config = tmp_path / "node.toml"
    config.write_text(f'[[destinations]]\nname = "pacs"\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\n'
                      f"port = {pacs.dicom_port}\nresults = true\n")
    node.start(config_file=config)
    pacs.start()
    try:
        files = rg1_copies("J2KR", 1) + rg1_copies("UNCI", 1)
        ids = [pacs.post("/instances", f.read_bytes())["ID"] for f in files]
        pacs.post("/modalities/pneumo/store", {"Resources": ids, "Synchronous": True})
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 2, timeout=90,
                   what="both reports delivered")
        with node.db() as c:
            syntaxes = {ts for (ts,) in c.execute("SELECT transfer_syntax_uid FROM instances WHERE generated = 0")}
        assert "1.2.840.10008.1.2.4.90" in syntaxes  # the JPEG 2000 file arrived as such and was analysed
        stored = pacs.wait_for_count(4)
        reports = [t for t in stored if t["Modality"] == "SR"]
        sources = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}
        assert len(reports) == 2 and {t["StudyInstanceUID"] for t in reports} == sources
    finally:
        pacs.stop()


def site_results_config(path, pacs: dict, more_rules=()):
    """Each receiver of `pacs` (name → PynetdicomReceiver, AE title the name
    in capitals) a destination; results of SITE_A's images to pacs_a, of
    SITE_B's to pacs_b, and a results rule per line of `more_rules`."""
    lines = []
    for name, r in pacs.items():
        lines += ["[[destinations]]", f'name = "{name}"', f'ae_title = "{name.upper()}"',
                  'host = "127.0.0.1"', f"port = {r.port}"]
    lines += ["[[routing.results]]", 'destinations = ["pacs_a"]', 'calling_ae_titles = ["SITE_A"]',
              "[[routing.results]]", 'destinations = ["pacs_b"]', 'calling_ae_titles = ["SITE_B"]']
    for rule in more_rules:
        lines += ["[[routing.results]]", rule]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_results_go_back_to_the_site_that_sent_the_image(node_factory, rg1_copies, tmp_path):
    """Two sites' PACSs send to one node: each gets the results of its own
    images only (a global results destination sent every site's patients to
    every PACS); a rule without callers (an audit archive) gets them all."""
    classes = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7")
    pacs = {name: PynetdicomReceiver(ae_title=name.upper(), sop_classes=classes)
            for name in ("pacs_a", "pacs_b", "audit")}
    try:
        config = site_results_config(tmp_path / "node.toml", pacs, ['destinations = ["audit"]'])
        node = node_factory().start(config_file=config)
        *from_a, from_b = rg1_copies("UNCI", 3)
        run_dcmtk("storescu", "-aet", "SITE_A", "-aec", node.ae_title, "127.0.0.1", node.port, *from_a)
        run_dcmtk("storescu", "-aet", "SITE_B", "-aec", node.ae_title, "127.0.0.1", node.port, from_b)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 3, 60)

        def reports_of(path):
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            with node.db() as c:
                return set(c.execute(
                    "SELECT r.sop_instance_uid FROM jobs j JOIN instances s ON s.id = j.instance_id "
                    "JOIN instances r ON r.id IN (j.sr_instance_id, j.sc_instance_id) "
                    "WHERE s.sop_instance_uid = ?", (uid,)).fetchall())

        a = set().union(*(reports_of(f) for f in from_a))
        b = reports_of(from_b)
        assert len(a) == 2 and len(b) == 1  # an SR each
        assert {(u,) for u in pacs["pacs_a"].received} == a
        assert {(u,) for u in pacs["pacs_b"].received} == b
        assert {(u,) for u in pacs["audit"].received} == a | b

        # Site B sends site A's first image too: B now has it, and its result.
        run_dcmtk("storescu", "-aet", "SITE_B", "-aec", node.ae_title, "127.0.0.1", node.port, from_a[0])
        wait_until(lambda: len(pacs["pacs_b"].received) == 2)
        assert {(u,) for u in pacs["pacs_b"].received} == b | reports_of(from_a[0])
        assert len(pacs["pacs_a"].received) == 2
    finally:
        for r in pacs.values():
            r.close()


def test_an_image_two_sites_send_at_once_brings_its_results_to_both(node_factory, rg1_copies, tmp_path):
    """Both sites' PACSs hold the study and send it at the same moment: a
    copy arriving while the first was analysed found no report to owe, and
    the report went only to the first caller's site (4 of 30 reached the
    other). A re-analysis with a new model went to the first caller's site
    only, likewise."""
    import subprocess
    from nodetest import DCMTK, demo_model_with

    classes = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.88.34")
    pacs = {name: PynetdicomReceiver(ae_title=name.upper(), sop_classes=classes) for name in ("pacs_a", "pacs_b")}
    try:
        config = site_results_config(tmp_path / "node.toml", pacs)
        node = node_factory().start(config_file=config)
        files = rg1_copies("UNCI", 12)
        senders = [subprocess.Popen([str(DCMTK / "storescu"), "-aet", caller, "-aec", node.ae_title,
                                     "127.0.0.1", str(node.port), *files], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for caller in ("SITE_A", "SITE_B")]
        assert [s.wait(timeout=120) for s in senders] == [0, 0]
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 12, 90)
        wait_until(lambda: min(len(r.received) for r in pacs.values()) >= 12, 30)
        with node.db() as c:
            reports = {u for (u,) in c.execute(
                "SELECT r.sop_instance_uid FROM jobs j JOIN instances r ON r.id = j.sr_instance_id")}
        assert len(reports) == 12
        for name, r in pacs.items():
            assert set(r.received) == reports, name

        # A new model: its reports reach both sites too.
        node.stop()
        node.settings["inference__model"] = str(demo_model_with(tmp_path / "v2.onnx", model_version="2.0.0"))
        node.start()
        api = f"http://127.0.0.1:{node.http_port}/api/jobs/retry?state=delivered"
        assert requests.post(api, timeout=10).json() == {"requeued": 12}
        wait_until(lambda: min(len(r.received) for r in pacs.values()) == 24, 90)
    finally:
        for r in pacs.values():
            r.close()
