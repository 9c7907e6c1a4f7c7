"""An operator's second chance, over HTTP: jobs that failed (or were
skipped) because of the node's configuration run again once it is fixed,
and deliveries a destination refused for good are sent again once the
destination is fixed. Nothing is lost in between."""

from __future__ import annotations

import requests
from nodetest import ROOT, demo_model_with, node_factory, rg1_copies, run_dcmtk  # noqa: F401 (fixtures)
from test_pynetdicom_peers import PynetdicomReceiver
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)
from test_routing_orthanc import node_config, wait_until

MODELS = ROOT / "fixtures" / "models"


def post(node, path: str, **body):
    r = requests.post(f"http://127.0.0.1:{node.http_port}{path}", timeout=10, **body)
    return r.status_code, r.json()


def jobs(node) -> list:
    with node.db() as c:
        return c.execute("SELECT state, reason, attempts FROM jobs ORDER BY id").fetchall()


def test_failed_jobs_run_again_after_the_configuration_is_fixed(node_factory, rg1_copies, tmp_path):
    # A model whose contract asks for a lung-box crop, and no lung
    # segmentation model configured: every analysis fails, with that reason.
    model = demo_model_with(tmp_path / "lung-box.onnx", crop_mode="lung-box")
    node = node_factory(inference__model=str(model)).start()
    files = rg1_copies("UNCI", 2)
    for f in files:
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: [j[0] for j in jobs(node)] == ["failed", "failed"], timeout=60)
    assert "lung" in jobs(node)[0][1]
    # The node's configuration, not the images: no not-analysed notice for each.
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1") == 0
    code, ready = node.http("/readyz")  # stores, but cannot analyse: not ready, and why
    assert code == 503 and any("lung_segmentation_model" in r for r in ready["reasons"]), ready
    assert ready["model"]["lung_segmentation"] is None

    # Fixed: the segmentation model is configured; the node restarts.
    node.stop()
    node.settings["inference__lung_segmentation_model"] = str(MODELS / "lung-seg-synthetic.onnx")
    node.start()
    code, ready = node.http("/readyz")
    assert code == 200
    seg = ready["model"]["lung_segmentation"]  # which one, and that it is used
    assert seg["path"].endswith("lung-seg-synthetic.onnx") and seg["used"] is True, seg
    assert seg["execution_provider"] == "cpu" and seg["input_size"] > 0, seg
    assert [j[0] for j in jobs(node)] == ["failed", "failed"]  # nothing reruns by itself
    assert post(node, "/api/jobs/retry?state=analysing")[0] == 400
    # What a client might send to retry one job: refused, nothing requeued
    # (ignoring it would retry every failed job).
    status, body = post(node, "/api/jobs/retry", json={"job_ids": [1]})
    assert status == 400 and "query string" in body["error"]
    status, body = post(node, "/api/jobs/retry?sop_uid=1.2.3")  # misspelt filter
    assert status == 400 and "sop_uid" in body["error"]
    assert [j[0] for j in jobs(node)] == ["failed", "failed"]
    status, body = post(node, "/api/jobs/retry")
    assert status == 200 and body == {"requeued": 2}
    wait_until(lambda: [j[0] for j in jobs(node)] == ["reported", "reported"], timeout=60)
    assert all(reason is None for _, reason, _ in jobs(node))
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1") == 2


def test_skipped_jobs_of_one_instance_run_again_after_the_rules_change(node_factory, rg1_copies, tmp_path):
    dx_only = tmp_path / "dx-only.toml"
    dx_only.write_text('[routing]\nanalyse_modalities = ["DX"]\n')
    node = node_factory().start(config_file=dx_only)
    a, b = rg1_copies("UNCI", 2)  # CR: not analysed under this rule
    for f in (a, b):
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: [j[0] for j in jobs(node)] == ["skipped", "skipped"])
    node.stop()
    defaults = tmp_path / "defaults.toml"
    defaults.write_text("")
    node.start(config_file=defaults)
    import pydicom

    uid = pydicom.dcmread(a, stop_before_pixels=True).SOPInstanceUID
    status, body = post(node, f"/api/jobs/retry?state=skipped&sop_instance_uid={uid}")
    assert status == 200 and body == {"requeued": 1}
    wait_until(lambda: [j[0] for j in jobs(node)] == ["reported", "skipped"], timeout=60)


def test_parked_deliveries_are_sent_after_the_destination_is_fixed(node_factory, rg1_copies, tmp_path):
    receiver = PynetdicomReceiver(status=0xA900)  # refuses: "data set does not match SOP class"
    try:
        config = node_config(
            tmp_path / "node.toml",
            [{"name": "pacs", "ae_title": "PYSCP", "port": receiver.port}],
            [{"destinations": ["pacs"]}],
            retry_base_s=1,
        )
        node = node_factory().start(config_file=config)
        (f,) = rg1_copies("UNCI", 1)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'parked'") == 1)
        # The log says what to do next (it said "refused for good; parked").
        parked = next(l for l in node.log().splitlines() if "refused for good; parked" in l)
        assert "POST /api/deliveries/retry" in parked and "A900H" in parked, parked

        receiver.status = 0x0000  # the PACS administrator fixed it
        status, body = post(node, "/api/deliveries/retry?destination=elsewhere")  # no such destination
        assert status == 400 and body["destinations"] == ["pacs"]
        assert post(node, "/api/deliveries/retry?dest=pacs")[0] == 400
        assert post(node, "/api/deliveries/retry", data="destination=pacs")[0] == 400
        status, body = post(node, "/api/deliveries/retry?destination=pacs")
        assert status == 200 and body == {"requeued": 1}
        wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=30)
        with node.db() as c:
            (last,) = c.execute("SELECT last_status FROM outbox").fetchone()
        assert last.startswith("0000")
        assert len(receiver.received) == 1
    finally:
        receiver.close()


def test_an_operator_reanalyses_with_a_new_model_and_resends_what_a_pacs_lost(
        node_factory, rg1_copies, storescp, tmp_path):
    """After installing a model, the images analysed by the old one are
    analysed again on request (`retry?state=delivered`), and their new
    reports delivered; a PACS that lost a study's results gets them again
    (`deliveries/resend`). Neither was possible: done jobs could not be
    retried and sent deliveries not sent again."""
    import pydicom

    port, out = storescp
    config = tmp_path / "node.toml"
    config.write_text('[[destinations]]\nname = "pacs"\nae_title = "STORESCP"\n'
                      f'host = "127.0.0.1"\nport = {port}\nresults = true\n')
    node = node_factory().start(config_file=config)
    (f,) = rg1_copies("UNCI", 1)
    study = pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: [j[0] for j in jobs(node)] == ["delivered"], timeout=60)
    first_sr = {p.name for p in out.iterdir()}
    assert len(first_sr) == 1

    # The same model again: the same report, nothing sent twice.
    assert post(node, "/api/jobs/retry?state=delivered") == (200, {"requeued": 1})
    wait_until(lambda: [j[0] for j in jobs(node)] == ["delivered"], timeout=60)
    assert {p.name for p in out.iterdir()} == first_sr

    # A new model: a new report, delivered beside the first.
    node.stop()
    node.settings["inference__model"] = str(demo_model_with(tmp_path / "v2.onnx", model_version="2.0.0"))
    node.start()
    assert post(node, "/api/jobs/retry?state=delivered") == (200, {"requeued": 1})
    wait_until(lambda: len(list(out.iterdir())) == 2 and [j[0] for j in jobs(node)] == ["delivered"],
               timeout=60, what="the new model's report delivered")
    second = pydicom.dcmread(next(p for p in out.iterdir() if p.name not in first_sr))
    assert second.SeriesDescription.endswith("pneumollm-tiny 2.0.0")
    # The image's listing still names the first report and its delivery
    # (the job now links the second: the first was found only by its UID).
    uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
    (copy,) = requests.get(f"http://127.0.0.1:{node.http_port}/api/instances/{uid}", timeout=10).json()["copies"]
    reports = {d["sop_instance_uid"] for d in copy["deliveries"] if d["kind"] == "report" and d["state"] == "sent"}
    assert reports == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.iterdir()}, copy

    # The PACS loses the study's results: sent again on request.
    for p in out.iterdir():
        p.unlink()
    assert post(node, "/api/deliveries/resend?destination=pacs")[0] == 400  # what, then?
    assert post(node, "/api/deliveries/resend?destination=pacs&study_instance_uid=")[0] == 400
    assert post(node, "/api/deliveries/move?from=&to=pacs")[0] == 400
    assert post(node, "/api/deliveries/cancel?destination=")[0] == 400
    assert post(node, "/api/jobs/retry?state=delivered&sop_instance_uid=")[0] == 400
    assert post(node, f"/api/deliveries/resend?destination=nowhere&study_instance_uid={study}")[0] == 400
    # A typo, another case, a comma list: cancel and move said 200, "0 done".
    for bad in ("nowhere", "PACS", "pacs,ws"):
        status, body = post(node, f"/api/deliveries/cancel?destination={bad}")
        assert status == 400 and body["destinations"] == ["pacs"], (bad, status, body)
        status, body = post(node, f"/api/deliveries/move?from={bad}&to=pacs")
        assert status == 400 and f"`{bad}`" in body["error"], (bad, status, body)
    # A UID pasted with a space after it (%20) is the UID.
    assert post(node, f"/api/deliveries/resend?destination=pacs&study_instance_uid={study}%20") == (200, {"resent": 2})
    wait_until(lambda: len(list(out.iterdir())) == 2, timeout=60, what="both reports sent again")
    assert "sent deliveries to be sent again" in node.log()


def test_jobs_whose_reports_are_all_cancelled_are_delivered(node_factory, rg1_copies, tmp_path):
    """Cancelling every report still owed left the jobs `reported` for good
    (their rows gone, nothing was left to settle them by), against the
    documented `delivered`."""
    from nodetest import free_port

    config = tmp_path / "node.toml"
    config.write_text('[[destinations]]\nname = "pacs"\nae_title = "GONE"\n'
                      f'host = "127.0.0.1"\nport = {free_port()}\nresults = true\n')
    node = node_factory().start(config_file=config)
    files = rg1_copies("UNCI", 2)
    for f in files:
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    node.wait_for_analyses()
    assert [j[0] for j in jobs(node)] == ["reported", "reported"]  # owed to a PACS that is down
    import pydicom

    sop = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    (report,) = [r["sr_sop_instance_uid"] for r in node.http("/api/jobs")[1]["jobs"] if r["sop_instance_uid"] == sop]
    assert post(node, f"/api/deliveries/cancel?destination=pacs&sop_instance_uid={report}") == (200, {"cancelled": 1})
    states = {r["sop_instance_uid"]: r["state"] for r in node.http("/api/jobs")[1]["jobs"]}
    assert states[sop] == "delivered" and list(states.values()).count("reported") == 1
    assert post(node, "/api/deliveries/cancel?destination=pacs") == (200, {"cancelled": 1})
    assert [j[0] for j in jobs(node)] == ["delivered", "delivered"]


def test_a_resent_delivery_is_as_old_as_its_resend(node_factory, rg1_copies, tmp_path):
    """The age of the oldest waiting delivery (/metrics) counted from the
    row's making: a resend of a study sent a month ago read a month old at
    once, and set off the alert on a destination that was fine."""
    import pydicom

    receiver = PynetdicomReceiver()
    config = node_config(tmp_path / "node.toml", [{"name": "pacs", "ae_title": "PYSCP", "port": receiver.port}],
                         [{"destinations": ["pacs"]}], retry_base_s=60, retry_cap_s=600)
    node = node_factory().start(config_file=config)
    (f,) = rg1_copies("UNCI", 1)
    study = pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'sent'") == 1, timeout=30)
    receiver.close()  # the PACS is down when the operator resends
    with node.db() as c:  # sent a month ago
        c.execute("UPDATE outbox SET created_at_ms = created_at_ms - 30 * 86400000")
    assert post(node, f"/api/deliveries/resend?destination=pacs&study_instance_uid={study}") == (200, {"resent": 1})
    wait_until(lambda: node.count("SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND attempts > 0") == 1,
               timeout=30, what="the resend tried")
    _, text = node.http("/metrics")
    (age,) = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith('pneumo_outbox_oldest_seconds{destination="pacs",state="pending"}')]
    assert age < 120, age
