"""An image the node could not analyse gets a notice in the PACS: an SR in
the image's study saying it was not analysed, and why, sent where its
report would have gone. Without it a reader saw no result and could not
tell "not analysed" from "not yet" (the reason was in the API only)."""

import subprocess

import pydicom
import requests

from nodetest import node_factory, run_dcmtk  # noqa: F401 (fixture)
from test_bad_images import bad_radiographs
from test_operator_retry import post
from test_routing_orthanc import wait_until
from test_scu_dcmtk import storescp  # noqa: F401 (fixture)

NOT_EVALUATED = ("373121007", "SCT", "Not Evaluated")


def results_to(tmp_path, port):
    config = tmp_path / "node.toml"
    config.write_text('[[destinations]]\nname = "pacs"\nae_title = "STORESCP"\n'
                      f'host = "127.0.0.1"\nport = {port}\nresults = true\n')
    return config


def two_sites(tmp_path, port):
    """Results routed by caller: NORTH's to `north`, SOUTH's to `south`
    (both the storescp on `port`, under two AE titles)."""
    config = tmp_path / "node.toml"
    config.write_text(
        '[[destinations]]\nname = "north"\nae_title = "STORESCP"\n'
        f'host = "127.0.0.1"\nport = {port}\n'
        '[[destinations]]\nname = "south"\nae_title = "SOUTH"\n'
        f'host = "127.0.0.1"\nport = {port}\n'
        '[[routing.results]]\ndestinations = ["north"]\ncalling_ae_titles = ["NORTH"]\n'
        '[[routing.results]]\ndestinations = ["south"]\ncalling_ae_titles = ["SOUTH"]\n')
    return config


def received(out):
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}


def job_of(node, uid):
    status, body = node.http(f"/api/jobs?sop_instance_uid={uid}")
    assert status == 200
    (job,) = body["jobs"]
    return job


def test_a_failed_image_gets_a_notice_in_the_pacs_and_a_good_one_its_report(
        node_factory, storescp, rg1_copies, tmp_path):
    import highdicom as hd

    port, out = storescp
    node = node_factory().start(config_file=results_to(tmp_path, port))
    path, propose, reason = bad_radiographs(tmp_path)["shutter_shows_a_speck"]
    bad = pydicom.dcmread(path, stop_before_pixels=True)
    (good_file,) = rg1_copies("UNCI", 1)
    good = pydicom.dcmread(good_file, stop_before_pixels=True)
    run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, good_file)

    wait_until(lambda: job_of(node, bad.SOPInstanceUID)["notice_sop_instance_uid"] is not None
               and job_of(node, good.SOPInstanceUID)["state"] == "delivered", timeout=60)
    failed = job_of(node, bad.SOPInstanceUID)
    assert failed["state"] == "failed" and failed["reason"].startswith(reason)
    notice_uid = failed["notice_sop_instance_uid"]
    wait_until(lambda: notice_uid in received(out), timeout=30, what="the notice at the PACS")
    got = received(out)
    assert set(got) == {notice_uid, job_of(node, good.SOPInstanceUID)["sr_sop_instance_uid"]}
    assert job_of(node, good.SOPInstanceUID)["notice_sop_instance_uid"] is None

    notice_path = got[notice_uid]
    notice = pydicom.dcmread(notice_path)
    assert notice.Modality == "SR"
    assert notice.StudyInstanceUID == bad.StudyInstanceUID
    assert notice.PatientID == bad.PatientID
    assert "NOT ANALYSED" in notice.SeriesDescription
    (study,) = notice.CurrentRequestedProcedureEvidenceSequence
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == bad.SOPInstanceUID
    # Validators: no error; DCMTK shows the tree; highdicom reads "not evaluated" and the reason.
    v = subprocess.run(["/usr/bin/dciodvfy", str(notice_path)], capture_output=True, text=True, errors="replace")
    errors = [line for line in (v.stdout + v.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors
    dump = subprocess.run(["/usr/bin/dsrdump", str(notice_path)], capture_output=True, text=True, errors="replace")
    assert dump.returncode == 0 and "Not Evaluated" in dump.stdout, dump.stdout
    # TID 1500 with its own Qualitative Evaluations (row 12) and no
    # measurement group: highdicom finds none, so no measurement to misread.
    sr = hd.sr.srread(notice_path)
    assert sr.content.get_image_measurement_groups() == []
    (evaluations,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    coded = [(i.ConceptNameCodeSequence[0].CodeValue,
              tuple(getattr(i.ConceptCodeSequence[0], k) for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")))
             for i in evaluations.ContentSequence if i.ValueType == "CODE"]
    assert coded == [("40122008", NOT_EVALUATED)]
    comments = [i.TextValue for i in evaluations.ContentSequence
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert any(c.startswith("NOT ANALYSED.") and reason in c for c in comments), comments
    assert any("DEMO MODEL - NOT FOR DIAGNOSIS" in c for c in comments)

    # The deliveries say what went: a notice.
    status, body = node.http(f"/api/instances/{bad.SOPInstanceUID}")
    assert status == 200
    assert {d["kind"] for c in body["copies"] for d in c["deliveries"]} == {"notice"}, body
    status, body = node.http("/api/deliveries?destination=pacs")
    assert {(d["kind"], d["sop_instance_uid"]) for d in body["deliveries"]} >= {("notice", notice_uid)}

    # An operator's retry that fails alike makes the same notice: nothing new at the PACS.
    before = set(received(out))
    assert post(node, f"/api/jobs/retry?state=failed&sop_instance_uid={bad.SOPInstanceUID}") == (200, {"requeued": 1})
    wait_until(lambda: job_of(node, bad.SOPInstanceUID)["state"] == "failed"
               and job_of(node, bad.SOPInstanceUID)["attempts"] >= 1
               and job_of(node, bad.SOPInstanceUID)["notice_sop_instance_uid"] == notice_uid, timeout=60)
    with node.db() as c:
        (rows,) = c.execute("SELECT COUNT(*) FROM outbox o JOIN instances i ON i.id = o.instance_id"
                            " WHERE i.sop_instance_uid = ?", (notice_uid,)).fetchone()
    assert rows == 1
    assert set(received(out)) == before
    assert "not-analysed notice made" in node.log()
    assert node.alive()


def test_notices_can_be_turned_off(node_factory, storescp, tmp_path):
    port, out = storescp
    node = node_factory(report__not_analysed_notice="false").start(config_file=results_to(tmp_path, port))
    path, propose, reason = bad_radiographs(tmp_path)["shutter_shows_nothing"]
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: job_of(node, uid)["state"] == "failed", timeout=60)
    assert job_of(node, uid)["notice_sop_instance_uid"] is None
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1") == 0
    assert node.count("SELECT COUNT(*) FROM outbox") == 0
    assert list(out.iterdir()) == []


def test_a_notice_reaches_orthanc_in_the_image_s_study(node_factory, tmp_path):
    """A real PACS stores the notice in the study of the image it is about."""
    from orthanc import Orthanc

    orthanc = Orthanc(tmp_path / "orthanc").start()
    try:
        config = tmp_path / "node.toml"
        config.write_text(f'[[destinations]]\nname = "pacs"\nae_title = "{orthanc.ae_title}"\n'
                          f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\nresults = true\n'
                          '[[routing.forward]]\ndestinations = ["pacs"]\n')
        node = node_factory().start(config_file=config)
        path, propose, _ = bad_radiographs(tmp_path)["bits_allocated_32"]
        bad = pydicom.dcmread(path, stop_before_pixels=True)
        run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)

        def study_modalities():
            found = orthanc.post("/tools/find", {"Level": "Series", "Expand": True,
                                                 "Query": {"StudyInstanceUID": bad.StudyInstanceUID}})
            return sorted(s["MainDicomTags"].get("Modality", "") for s in found)

        wait_until(lambda: study_modalities() == sorted([bad.Modality, "SR"]), timeout=60,
                   what="the image and its notice in one study at Orthanc")
        (sr_series,) = [s for s in orthanc.post("/tools/find", {
            "Level": "Series", "Expand": True,
            "Query": {"StudyInstanceUID": bad.StudyInstanceUID, "Modality": "SR"}})]
        assert "NOT ANALYSED" in sr_series["MainDicomTags"]["SeriesDescription"]
        (oid,) = sr_series["Instances"]
        raw = requests.get(f"http://127.0.0.1:{orthanc.http_port}/instances/{oid}/file", timeout=10).content
        assert b"Not Evaluated" in raw
    finally:
        orthanc.stop()


def test_with_companion_images_the_notice_is_an_image_too(node_factory, storescp, tmp_path):
    """A site whose viewers show no SR (report.companion_sc = true) sees
    the notice as an image: the words on black, in a series of its own."""
    port, out = storescp
    node = node_factory(report__companion_sc="true").start(config_file=results_to(tmp_path, port))
    path, propose, reason = bad_radiographs(tmp_path)["bits_allocated_32"]
    bad = pydicom.dcmread(path, stop_before_pixels=True)
    run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: len(list(out.iterdir())) == 2, timeout=60, what="the notice and its image")
    got = {pydicom.dcmread(p, stop_before_pixels=True).Modality: p for p in out.iterdir()}
    assert set(got) == {"SR", "OT"}, got
    image = pydicom.dcmread(got["OT"])
    assert image.StudyInstanceUID == bad.StudyInstanceUID
    assert "NOT ANALYSED" in image.SeriesDescription and image.SeriesNumber == 9904
    assert image.ImageComments.startswith("DEMO MODEL - NOT FOR DIAGNOSIS. NOT ANALYSED.")
    assert reason in image.ImageComments
    assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == bad.SOPInstanceUID
    assert set(image.pixel_array.ravel().tolist()) == {0, 255}  # words on black, no pixel of the source
    v = subprocess.run(["/usr/bin/dciodvfy", str(got["OT"])], capture_output=True, text=True, errors="replace")
    errors = [line for line in (v.stdout + v.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors
    status, body = node.http(f"/api/instances/{bad.SOPInstanceUID}")
    assert sorted(d["kind"] for c in body["copies"] for d in c["deliveries"]) == ["notice", "notice"]


def test_the_image_fixed_and_sent_again_gets_a_report_that_replaces_the_notice(
        node_factory, storescp, tmp_path):
    """A reader saw "not analysed" and, later, a result for the same image,
    with nothing linking them: the report now names the notice it
    replaces, as a report that replaces another does."""
    from test_bad_images import FIXTURES

    port, out = storescp
    node = node_factory().start(config_file=results_to(tmp_path, port))
    path, propose, _ = bad_radiographs(tmp_path)["bits_allocated_32"]
    bad = pydicom.dcmread(path, stop_before_pixels=True)
    run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: job_of(node, bad.SOPInstanceUID)["notice_sop_instance_uid"] is not None, timeout=60)
    notice_uid = job_of(node, bad.SOPInstanceUID)["notice_sop_instance_uid"]

    fixed = pydicom.dcmread(FIXTURES / "rg1s_mono2.dcm")  # what it was made from
    fixed.SOPInstanceUID = fixed.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    fixed.save_as(tmp_path / "fixed.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "fixed.dcm")

    def report():
        status, body = node.http(f"/api/instances/{bad.SOPInstanceUID}")
        uids = [c["job"]["sr_sop_instance_uid"] for c in body["copies"] if c.get("job")]
        return next((u for u in uids if u), None)

    wait_until(lambda: report() is not None and report() in received(out), timeout=60,
               what="the fixed copy's report at the PACS")
    sr = pydicom.dcmread(received(out)[report()])
    (predecessor,) = sr.PredecessorDocumentsSequence
    (series,) = predecessor.ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == notice_uid

    def texts(items):
        for i in items:
            if i.ValueType == "TEXT":
                yield i.TextValue
            yield from texts(getattr(i, "ContentSequence", []))

    assert any(t.startswith("This report replaces the earlier notice, made by the same model")
               for t in texts(sr.ContentSequence))


def test_a_corrected_patient_s_fixed_copy_replaces_that_patient_s_notice(node_factory, storescp, tmp_path):
    """A good copy of one patient, then under its UID a damaged copy naming
    another (a notice in that patient's record), then that patient's fixed
    copy: its report named the first patient's report as the one it
    replaced, in another record, and its own notice was named nowhere."""
    import numpy as np

    from test_bad_images import FIXTURES

    port, out = storescp
    node = node_factory().start(config_file=results_to(tmp_path, port))
    first = pydicom.dcmread(FIXTURES / "rg1s_mono2.dcm")
    first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    first.save_as(tmp_path / "first.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "first.dcm")
    wait_until(lambda: job_of(node, first.SOPInstanceUID)["state"] == "delivered", timeout=60)
    first_report = job_of(node, first.SOPInstanceUID)["sr_sop_instance_uid"]

    corrected = pydicom.dcmread(tmp_path / "first.dcm")
    corrected.PatientID, corrected.PatientName = "CORRECTED-ID", "Corrected^Patient"
    damaged = pydicom.dcmread(tmp_path / "first.dcm")
    damaged.PatientID, damaged.PatientName = corrected.PatientID, corrected.PatientName
    damaged.BitsAllocated, damaged.BitsStored, damaged.HighBit = 32, 32, 31
    damaged.PixelData = np.zeros(damaged.Rows * damaged.Columns, np.uint32).tobytes()
    damaged.save_as(tmp_path / "damaged.dcm", enforce_file_format=True)
    corrected.save_as(tmp_path / "corrected.dcm", enforce_file_format=True)

    def copies():
        return [c["job"] for c in node.http(f"/api/instances/{first.SOPInstanceUID}")[1]["copies"]]

    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "damaged.dcm")
    wait_until(lambda: any(j["notice_sop_instance_uid"] for j in copies()), timeout=60,
               what="the corrected patient's notice")
    (notice_uid,) = [j["notice_sop_instance_uid"] for j in copies() if j["notice_sop_instance_uid"]]
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "corrected.dcm")
    wait_until(lambda: len([j for j in copies() if j["sr_sop_instance_uid"]]) == 2, timeout=60,
               what="the corrected copy's report")
    (report_uid,) = [j["sr_sop_instance_uid"] for j in copies()
                     if j["sr_sop_instance_uid"] not in (None, first_report)]
    wait_until(lambda: report_uid in received(out), timeout=60, what="the report at the PACS")
    sr = pydicom.dcmread(received(out)[report_uid])
    assert sr.PatientID == "CORRECTED-ID"
    (predecessor,) = sr.PredecessorDocumentsSequence
    (series,) = predecessor.ReferencedSeriesSequence
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == notice_uid


def test_a_report_made_after_another_site_s_notice_goes_to_that_site_too(node_factory, storescp, tmp_path):
    """A damaged copy from one site got its notice there; a good copy of
    the same image from another site was reported there alone, and the
    first site's PACS kept "not analysed" with no result."""
    import numpy as np

    from test_bad_images import FIXTURES

    port, _ = storescp
    node = node_factory().start(config_file=two_sites(tmp_path, port))
    good = pydicom.dcmread(FIXTURES / "rg1s_mono2.dcm")
    good.SOPInstanceUID = good.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    good.save_as(tmp_path / "good.dcm", enforce_file_format=True)
    damaged = pydicom.dcmread(tmp_path / "good.dcm")
    damaged.BitsAllocated, damaged.BitsStored, damaged.HighBit = 32, 32, 31
    damaged.PixelData = np.zeros(damaged.Rows * damaged.Columns, np.uint32).tobytes()
    damaged.save_as(tmp_path / "damaged.dcm", enforce_file_format=True)

    def sent_to(destination):
        status, body = node.http(f"/api/deliveries?destination={destination}")
        return {(d["kind"], d["sop_instance_uid"]) for d in body["deliveries"] if d["state"] == "sent"}

    def jobs():
        return [c["job"] for c in node.http(f"/api/instances/{good.SOPInstanceUID}")[1]["copies"]]

    run_dcmtk("storescu", "-aet", "NORTH", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "damaged.dcm")
    wait_until(lambda: any(j["notice_sop_instance_uid"] for j in jobs()), timeout=60, what="the notice")
    run_dcmtk("storescu", "-aet", "SOUTH", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "good.dcm")
    wait_until(lambda: any(j["sr_sop_instance_uid"] for j in jobs()), timeout=60, what="the report")
    (report,) = [j["sr_sop_instance_uid"] for j in jobs() if j["sr_sop_instance_uid"]]
    wait_until(lambda: ("report", report) in sent_to("south"), timeout=60, what="the report to SOUTH")
    wait_until(lambda: ("report", report) in sent_to("north"), timeout=60, what="the report to NORTH")


def test_no_notice_for_the_node_s_damaged_copy_nor_beside_a_report(node_factory, storescp, rg1_copies, tmp_path):
    """The node's own copy damaged (a disk fault): the PACS's copy is not at
    fault, and a notice carried the node's file path and an instruction
    for its operator into the patient's record, beside the report already
    there. A job that made a report and fails when analysed again (another
    model) leaves that report alone too."""
    from nodetest import ROOT

    port, out = storescp
    config = results_to(tmp_path, port)
    node = node_factory().start(config_file=config)
    (f,) = rg1_copies("UNCI", 1)
    uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: job_of(node, uid)["state"] == "delivered", timeout=60)
    stored = node.stored_path(pydicom.dcmread(f, stop_before_pixels=True))
    good = stored.read_bytes()
    stored.write_bytes(good[:5000])
    assert post(node, f"/api/jobs/retry?state=delivered&sop_instance_uid={uid}") == (200, {"requeued": 1})
    wait_until(lambda: job_of(node, uid)["state"] == "failed", timeout=60)
    assert "damaged" in job_of(node, uid)["reason"]
    assert job_of(node, uid)["notice_sop_instance_uid"] is None
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1") == 1  # the report alone

    # Repaired, then analysed by a model that fails on every image.
    stored.write_bytes(good)
    node.stop()
    node.settings["inference__model"] = str(ROOT / "fixtures" / "models" / "bad" / "nan-output.onnx")
    node.start()
    assert post(node, f"/api/jobs/retry?state=failed&sop_instance_uid={uid}") == (200, {"requeued": 1})
    wait_until(lambda: job_of(node, uid)["state"] == "failed", timeout=60)
    assert "not finite" in job_of(node, uid)["reason"]
    assert job_of(node, uid)["notice_sop_instance_uid"] is None
    assert "no not-analysed notice: a report of this image" in node.log()
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1") == 1
    assert len(list(out.iterdir())) == 1


def test_a_second_sender_is_owed_the_notice_and_a_copy_with_a_report_gets_none(
        node_factory, storescp, rg1_copies, tmp_path):
    """Routed by calling AE title, the second sender of a failed image got
    nothing (a report is owed to a later caller; the notice was not). And a
    damaged copy of an image already reported, sent under its UID, made a
    notice beside that report."""
    import numpy as np

    port, out = storescp
    node = node_factory().start(config_file=two_sites(tmp_path, port))
    path, propose, _ = bad_radiographs(tmp_path)["bits_allocated_32"]
    bad = pydicom.dcmread(path, stop_before_pixels=True)
    run_dcmtk("storescu", propose, "-aet", "NORTH", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: job_of(node, bad.SOPInstanceUID)["notice_sop_instance_uid"] is not None, timeout=60)
    notice_uid = job_of(node, bad.SOPInstanceUID)["notice_sop_instance_uid"]
    run_dcmtk("storescu", propose, "-aet", "SOUTH", "-aec", node.ae_title, "127.0.0.1", node.port, path)

    def sent_to(destination):
        status, body = node.http(f"/api/deliveries?destination={destination}")
        return {(d["kind"], d["sop_instance_uid"]) for d in body["deliveries"] if d["state"] == "sent"}

    wait_until(lambda: ("notice", notice_uid) in sent_to("south"), timeout=60, what="the notice to SOUTH")
    assert ("notice", notice_uid) in sent_to("north")

    # An image reported, then a damaged copy of it under its UID: no notice.
    (good_file,) = rg1_copies("UNCI", 1)
    good = pydicom.dcmread(good_file)
    run_dcmtk("storescu", "-aet", "NORTH", "-aec", node.ae_title, "127.0.0.1", node.port, good_file)
    wait_until(lambda: job_of(node, good.SOPInstanceUID)["state"] == "delivered", timeout=60)
    good.BitsAllocated, good.BitsStored, good.HighBit = 32, 32, 31
    good.PixelData = np.zeros(good.Rows * good.Columns, np.uint32).tobytes()
    good.save_as(tmp_path / "damaged_copy.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aet", "NORTH", "-aec", node.ae_title, "127.0.0.1", node.port,
              tmp_path / "damaged_copy.dcm")
    wait_until(lambda: "no not-analysed notice: a report of this image" in node.log(), timeout=60)
    status, body = node.http(f"/api/instances/{good.SOPInstanceUID}")
    jobs = [c["job"] for c in body["copies"]]
    assert sorted(j["state"] for j in jobs) == ["delivered", "failed"]
    assert all(j["notice_sop_instance_uid"] is None for j in jobs)

    # Another damaged copy, of the same patient, from the second site: the
    # report that stands was in NORTH's PACS only, and SOUTH's got neither
    # it nor a notice. It is owed the report.
    good_report = [c["job"]["sr_sop_instance_uid"] for c in body["copies"] if c["job"]["sr_sop_instance_uid"]]
    good.SeriesDescription = "damaged at the second site"
    good.save_as(tmp_path / "damaged_south.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aet", "SOUTH", "-aec", node.ae_title, "127.0.0.1", node.port,
              tmp_path / "damaged_south.dcm")
    wait_until(lambda: ("report", good_report[0]) in sent_to("south"), timeout=60,
               what="the standing report to SOUTH")
    status, body = node.http(f"/api/instances/{good.SOPInstanceUID}")
    assert all(c["job"]["notice_sop_instance_uid"] is None for c in body["copies"])

    # The damaged copy naming another patient (corrected at the modality):
    # the report is in the first patient's record, and this patient's had
    # nothing saying the image was not analysed. It gets its notice.
    good.PatientID, good.PatientName = "OTHER-PATIENT", "Other^Patient"
    good.save_as(tmp_path / "other_patient.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aet", "NORTH", "-aec", node.ae_title, "127.0.0.1", node.port,
              tmp_path / "other_patient.dcm")

    def notices():
        status, body = node.http(f"/api/instances/{good.SOPInstanceUID}")
        return [c["job"]["notice_sop_instance_uid"] for c in body["copies"]
                if c["job"]["notice_sop_instance_uid"]]

    wait_until(lambda: notices(), timeout=60, what="a notice for the other patient's copy")
    (notice_uid,) = notices()
    wait_until(lambda: notice_uid in received(out), timeout=60, what="the notice delivered")
    notice = pydicom.dcmread(received(out)[notice_uid])
    assert (notice.PatientID, str(notice.PatientName)) == ("OTHER-PATIENT", "Other^Patient")


def test_a_pacs_without_3d_sr_gets_a_report_naming_the_notice_it_holds(node_factory, tmp_path):
    """Sent as Comprehensive SR copies, the notice and the report replacing
    it went under UIDs of their own, but the report's copy named the
    notice's 3D UID, which that PACS never received."""
    from test_bad_images import FIXTURES
    from test_pynetdicom_peers import PynetdicomReceiver

    comprehensive_sr = "1.2.840.10008.5.1.4.1.1.88.33"
    pacs = PynetdicomReceiver(ae_title="OLDPACS", sop_classes=(comprehensive_sr,))
    try:
        config = tmp_path / "node.toml"
        config.write_text('[[destinations]]\nname = "pacs"\nae_title = "OLDPACS"\n'
                          f'host = "127.0.0.1"\nport = {pacs.port}\nresults = true\n')
        node = node_factory().start(config_file=config)
        path, propose, _ = bad_radiographs(tmp_path)["bits_allocated_32"]
        bad = pydicom.dcmread(path, stop_before_pixels=True)
        run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)
        wait_until(lambda: len(pacs.received) == 1, timeout=60, what="the notice, as Comprehensive SR")
        (notice_copy,) = pacs.received

        fixed = pydicom.dcmread(FIXTURES / "rg1s_mono2.dcm")
        fixed.SOPInstanceUID = fixed.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
        fixed.save_as(tmp_path / "fixed.dcm", enforce_file_format=True)
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "fixed.dcm")
        wait_until(lambda: len(pacs.received) == 2, timeout=60, what="the report, as Comprehensive SR")
        report_copy = next(u for u in pacs.received if u != notice_copy)
        report = pacs.dataset(report_copy)
        (study,) = report.PredecessorDocumentsSequence
        (ref,) = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (comprehensive_sr, notice_copy)
        assert report.SOPClassUID == comprehensive_sr and report.SOPInstanceUID == report_copy
        # The node's own file names its own notice, as it was made.
        status, body = node.http(f"/api/instances/{bad.SOPInstanceUID}")
        stored_notice = next(c["job"]["notice_sop_instance_uid"] for c in body["copies"]
                             if c["job"]["notice_sop_instance_uid"])
        assert stored_notice != notice_copy
    finally:
        pacs.close()
