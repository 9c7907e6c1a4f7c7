"""The node end to end: radiographs in, SRs and routed originals in the PACS
(Orthanc), with the same results as `pneumo-node infer`; other modalities
not analysed; a kill -9 mid-analysis changes nothing in the end."""

import io
import json
import math
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from nodetest import copy_with_new_uids, data_store, node_binary, run_dcmtk
from orthanc import Orthanc
from test_routing_orthanc import wait_until

CERTAINTY = ("111012", "DCM")


def node_config(path, orthanc, **pipeline):
    text = f"""
[dicom]
accept = "all-storage"

[[destinations]]
name = "pacs"
ae_title = "{orthanc.ae_title}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
results = true

[[routing.forward]]
destinations = ["pacs"]

[outbox]
retry_base_s = 1
retry_cap_s = 2
"""
    if pipeline:
        text += "\n[pipeline]\n" + "".join(f"{k} = {v}\n" for k, v in pipeline.items())
    path.write_text(text)
    return path


def radiographs(tmp_path, n_unci, n_j2k):
    """Copies of RG1, each in its own study."""
    out = []
    for kind, n in (("UNCI", n_unci), ("J2KR", n_j2k)):
        for i in range(n):
            dst = tmp_path / f"rg1-{kind}-{i:02d}.dcm"
            copy_with_new_uids(data_store() / f"RG1_{kind}.dcm", dst, new_study=True)
            out.append(dst)
    return out


def send_all(node, files):
    unci = [f for f in files if "J2KR" not in f.name]
    j2k = [f for f in files if "J2KR" in f.name]
    if unci:
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *unci)
    if j2k:
        run_dcmtk("storescu", "-xv", "-aec", node.ae_title, "127.0.0.1", node.port, *j2k)


def infer(path) -> float:
    r = subprocess.run([str(node_binary()), "infer", str(path), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["prediction"]["probabilities"][0]


def certainty(sr: pydicom.Dataset) -> float:
    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if item.ValueType == "NUM" and name and (name.CodeValue, name.CodingSchemeDesignator) == CERTAINTY:
                return float(item.MeasuredValueSequence[0].NumericValue)
            if "ContentSequence" in item:
                found = walk(item.ContentSequence)
                if found is not None:
                    return found
        return None

    return walk(sr.ContentSequence)


def referenced_sop(sr: pydicom.Dataset) -> str:
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    (series,) = study.ReferencedSeriesSequence
    (ref,) = series.ReferencedSOPSequence
    return ref.ReferencedSOPInstanceUID


def srs_in(orthanc):
    out = {}
    for oid in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{oid}/tags?simplify")
        if tags.get("Modality") != "SR":
            continue
        raw = requests.get(f"http://127.0.0.1:{orthanc.http_port}/instances/{oid}/file", timeout=10).content
        sr = pydicom.dcmread(io.BytesIO(raw))
        out[referenced_sop(sr)] = sr
    return out


@pytest.fixture
def orthanc(tmp_path):
    o = Orthanc(tmp_path / "orthanc").start()
    yield o
    o.stop()


def test_twenty_radiographs_and_two_others(node_factory, orthanc, tmp_path):
    files = radiographs(tmp_path, 14, 6)
    others = [
        copy_with_new_uids(Path(get_testdata_file("MR_small.dcm")), tmp_path / "mr.dcm"),
        copy_with_new_uids(Path(get_testdata_file("CT_small.dcm")), tmp_path / "ct.dcm"),
    ]
    node = node_factory().start(config_file=node_config(tmp_path / "node.toml", orthanc))
    send_all(node, files)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "mr.dcm", tmp_path / "ct.dcm")

    orthanc.wait_for_count(22 + 20, timeout=240)
    time.sleep(1)
    assert len(orthanc.get("/instances")) == 42
    srs = srs_in(orthanc)
    assert len(srs) == 20
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        sr = srs[ds.SOPInstanceUID]
        assert sr.StudyInstanceUID == ds.StudyInstanceUID
        assert sr.PatientID == ds.PatientID
        assert "DEMO MODEL - NOT FOR DIAGNOSIS" in sr.SeriesDescription
        assert certainty(sr) == pytest.approx(infer(f) * 100, abs=1e-3)
    for o in others:
        assert o.SOPInstanceUID not in srs
        with node.db() as c:
            (state, reason) = c.execute(
                "SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE i.sop_instance_uid = ?",
                (o.SOPInstanceUID,),
            ).fetchone()
        assert state == "skipped" and "is not analysed" in reason
    # Every original arrived too, unchanged in UID.
    uids = orthanc.sop_uids()
    for f in files:
        assert pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID in uids

    # The counts the node reports match what happened.
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 20)
    _, text = node.http("/metrics")
    metrics = {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l and not l.startswith("#")}
    assert metrics["pneumo_instances_received_total"] == 22
    assert metrics['pneumo_jobs{state="delivered"}'] == 20
    assert metrics['pneumo_jobs{state="skipped"}'] == 2
    assert metrics['pneumo_jobs{state="failed"}'] == 0
    assert metrics["pneumo_outbox_depth"] == 0
    assert metrics['pneumo_outbox{destination="pacs",state="sent"}'] == 42
    assert metrics["pneumo_inference_images_total"] == 20  # the warm-up run is not counted
    assert metrics["pneumo_inference_seconds_count"] == 20
    _, body = node.http("/api/jobs?state=delivered")
    assert len(body["jobs"]) == 20
    assert all(j["result"]["prediction"]["warning"] == "DEMO MODEL - NOT FOR DIAGNOSIS" for j in body["jobs"])
    reported = [l for l in node.log().splitlines() if "pipeline: reported " in l]
    assert len(reported) == 20 and all('demo="DEMO MODEL - NOT FOR DIAGNOSIS"' in l for l in reported), reported[:2]
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID
    _, body = node.http(f"/api/instances/{uid}")
    (copy,) = body["copies"]
    assert copy["job"]["state"] == "delivered"
    assert copy["job"]["sr_sop_instance_uid"] == srs[uid].SOPInstanceUID
    assert sorted((d["kind"], d["sop_instance_uid"], d["state"]) for d in copy["deliveries"]) == [
        ("original", uid, "sent"), ("report", srs[uid].SOPInstanceUID, "sent")]


def final_state(node, orthanc):
    srs = srs_in(orthanc)
    with node.db() as c:
        jobs = c.execute(
            "SELECT i.sop_instance_uid, j.state, j.result_json FROM jobs j JOIN instances i ON i.id = j.instance_id"
        ).fetchall()
    return {
        uid: (state, json.loads(result)["prediction"]["probabilities"], srs[uid].SOPInstanceUID)
        for uid, state, result in jobs
    }


def test_one_uid_received_twice_with_other_content_is_kept_and_analysed_twice(node, rg1_copies, tmp_path):
    """Radiographs re-sent under their SOP Instance UIDs with other content
    (a corrected comment, in another encoding), in one association: every
    data set is kept and analysed, no job fails on its report, and each pair
    shares one report (the same patient and study: a corrected patient gets
    its own, below). The same data set in another encoding alone is a
    duplicate (test_ingest_dcmtk.py)."""
    from pynetdicom import AE  # sends each file in its own syntax (storescu would convert)

    files = []
    for i, explicit in enumerate(rg1_copies("UNCI", 4)):
        ds = pydicom.dcmread(explicit)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        ds.ImageComments = "corrected"
        implicit = tmp_path / f"implicit-{i}.dcm"
        ds.save_as(implicit, enforce_file_format=True)
        files += [explicit, implicit]
    ae = AE(ae_title="RESEND")
    for ts in (pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian):
        ae.add_requested_context(ds.SOPClassUID, [ts])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assert [assoc.send_c_store(f).Status for f in files] == [0] * 8
    assoc.release()
    node.wait_for_analyses()
    with node.db() as c:
        jobs = c.execute("SELECT state, reason FROM jobs").fetchall()
        syntaxes = c.execute("SELECT sop_instance_uid, transfer_syntax_uid FROM instances WHERE generated = 0")
        by_uid = {}
        for uid, ts in syntaxes.fetchall():
            by_uid.setdefault(uid, set()).add(ts)
        reports = c.execute("SELECT sop_instance_uid, COUNT(*) FROM instances WHERE generated = 1 "
                            "AND modality = 'SR' GROUP BY sop_instance_uid").fetchall()
    assert jobs == [("reported", None)] * 8, jobs
    assert list(by_uid.values()) == [{"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}] * 4
    # one report per UID, shared by both jobs: not two versions under one UID
    assert len(reports) == 4 and all(n == 1 for _, n in reports), reports
    assert node.alive() and node.spool_files() == []


def assert_replaces(node, new, old, why):
    """`new` names `old` in its Predecessor Documents Sequence and in a
    comment, and passes dciodvfy with it."""
    (study,) = new.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (sop,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPClassUID,
            sop.ReferencedSOPInstanceUID) == (old.StudyInstanceUID, old.SeriesInstanceUID,
                                              old.SOPClassUID, old.SOPInstanceUID)
    def texts(item):
        for child in item.get("ContentSequence", []):
            if child.ValueType == "TEXT":
                yield child.TextValue
            yield from texts(child)

    texts = list(texts(new))
    assert any(t.startswith("This report replaces the report made by the same model for an earlier copy")
               and t.endswith(why) for t in texts), texts
    assert not any(old.SOPInstanceUID in t for t in texts), "no UID in the words a radiologist reads"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replacing.dcm"
        new.save_as(path)
        out = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, errors="replace")
    assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []


def send_and_read_reports(node, path, reported: int) -> list:
    """Sends `path`, waits for `reported` jobs reported, and reads every SR
    the node made, oldest first."""
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == reported, timeout=60)
    with node.db() as c:
        paths = [p for (p,) in c.execute("SELECT path FROM instances WHERE generated = 1 AND modality = 'SR' ORDER BY id")]
    return [pydicom.dcmread(node.data_dir / p) for p in paths]


def test_a_copy_with_corrected_demographics_gets_its_own_report(node, rg1_copies, tmp_path):
    """The modality re-sends an image with the patient corrected (same SOP
    Instance UID): its analysis linked to the first report, which named the
    old patient, so the corrected patient had no result in the PACS."""
    (first,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    corrected = pydicom.dcmread(first)
    corrected.PatientID, corrected.PatientName = "PAT-CORRECTED", "Corrected^Name"
    path = tmp_path / "corrected.dcm"
    corrected.save_as(path, enforce_file_format=True)
    old, new = send_and_read_reports(node, path, reported=2)
    assert (old.PatientID, new.PatientID) == (pydicom.dcmread(first).PatientID, "PAT-CORRECTED")
    assert str(new.PatientName) == "Corrected^Name" and old.SOPInstanceUID != new.SOPInstanceUID
    # both reference the one source instance
    for sr in (old, new):
        (ref,) = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert ref.ReferencedSOPInstanceUID == corrected.SOPInstanceUID
    # Each stands in its own patient's record: the new one named the old
    # one, another patient's, as the one it replaced.
    assert "PredecessorDocumentsSequence" not in new and "PredecessorDocumentsSequence" not in old
    assert old.SeriesInstanceUID != new.SeriesInstanceUID
    # A copy of the corrected copy (another series description, the name's
    # trailing delimiters written out) shares the corrected one's report:
    # each later version was compared with the first only, and got a third.
    corrected.SeriesDescription = "re-sent"
    corrected.PatientName = "Corrected^Name^^^"
    again = tmp_path / "again.dcm"
    corrected.save_as(again, enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, again)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 3, timeout=60)
    with node.db() as c:
        srs = c.execute("SELECT COUNT(*) FROM instances WHERE generated = 1 AND modality = 'SR'").fetchone()[0]
        linked = {s for (s,) in c.execute("SELECT sr_instance_id FROM jobs ORDER BY id")}
    assert srs == 2 and len(linked) == 2
    # A series names one patient: the corrected patient's report has a
    # series of its own (it shared the first's, two patients in one series).
    assert new.SeriesInstanceUID != old.SeriesInstanceUID

    # Moved to another patient's study at the modality: its report is in
    # that study, in a series of its own (it went into the first patient's
    # report series, one series across two studies).
    corrected.PatientID, corrected.PatientName = "PAT-MOVED", "Moved^To"
    corrected.StudyInstanceUID = pydicom.uid.generate_uid()
    moved = tmp_path / "moved.dcm"
    corrected.save_as(moved, enforce_file_format=True)
    _, _, third = send_and_read_reports(node, moved, reported=4)
    assert third.StudyInstanceUID == corrected.StudyInstanceUID and third.PatientID == "PAT-MOVED"
    assert third.SeriesInstanceUID not in (old.SeriesInstanceUID, new.SeriesInstanceUID)
    out = subprocess.run(["/usr/bin/dcentvfy", *(str(sr.filename) for sr in (old, new, third))],
                         capture_output=True, text=True, errors="replace")
    # (The modality's corrected copy names another patient in the same
    # study: the study's complaint is the source's own.)
    assert "same SeriesInstanceUID" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_a_copy_with_other_pixels_under_the_same_uid_gets_its_own_report(node, rg1_copies, tmp_path):
    """A sender re-uses the SOP Instance UID for other pixels (same patient
    and study): the copy was analysed but linked to the first copy's
    report, so the PACS showed the new pixels with the old result."""
    import numpy as np

    (first,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    other = pydicom.dcmread(first)
    pixels = other.pixel_array
    other.PixelData = np.ascontiguousarray(pixels[::-1, ::-1]).tobytes()  # another image, same UIDs
    path = tmp_path / "other_pixels.dcm"
    other.save_as(path, enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 2, timeout=60)
    with node.db() as c:
        rows = c.execute("SELECT j.result_json, s.path FROM jobs j JOIN instances s ON s.id = j.sr_instance_id"
                         " ORDER BY j.id").fetchall()
    (r1, sr1), (r2, sr2) = rows
    assert sr1 != sr2, "the second copy linked to the first copy's report"
    for record, sr_path in rows:
        p = json.loads(record)["prediction"]["p_positive"]
        assert certainty(pydicom.dcmread(node.data_dir / sr_path)) == pytest.approx(p * 100, abs=1e-4)
    assert "gave another result than the report made for an earlier copy" in node.log()
    assert_replaces(node, pydicom.dcmread(node.data_dir / sr2), pydicom.dcmread(node.data_dir / sr1),
                    "this copy's analysis gave another result (where a viewer still shows the earlier "
                    "copy's pixels, the earlier report is the one that applies to them).")
    assert json.loads(r2)["replaces_sr_sop_instance_uid"] == pydicom.dcmread(node.data_dir / sr1).SOPInstanceUID
    # A copy with the first's pixels and a header a router changed shares
    # the first's report (its result is the same).
    same = pydicom.dcmread(first)
    same.SeriesDescription = "routed"
    same.save_as(tmp_path / "routed.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "routed.dcm")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 3, timeout=60)
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1 AND modality = 'SR'") == 2
    # And a copy of the other pixels with a header changed shares their
    # report: compared with the first copy's report only, it got a third
    # "with another result".
    other.ImageComments = "routed"
    other.save_as(tmp_path / "other_routed.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "other_routed.dcm")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 4, timeout=60)
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1 AND modality = 'SR'") == 2
    with node.db() as c:
        (linked,) = c.execute("SELECT s.path FROM jobs j JOIN instances s ON s.id = j.sr_instance_id"
                              " ORDER BY j.id DESC LIMIT 1").fetchone()
    assert linked == sr2


def test_a_header_only_resend_of_other_pixels_shares_their_companion_image(node_factory, rg1_copies, tmp_path):
    """A header-only re-send of a copy with other pixels shared that copy's
    report, but was given the first copy's companion image: the first
    copy's pixels and result went to this copy's PACS (another site's)."""
    import numpy as np

    node = node_factory(report__companion_sc="true").start()
    (first,) = rg1_copies("UNCI", 1)
    other = pydicom.dcmread(first)
    other.PixelData = np.ascontiguousarray(other.pixel_array[::-1, ::-1]).tobytes()
    other.save_as(tmp_path / "other_pixels.dcm", enforce_file_format=True)
    other.IssuerOfPatientID = "HOSP"  # header only
    other.save_as(tmp_path / "other_resent.dcm", enforce_file_format=True)
    for n, path in enumerate([first, tmp_path / "other_pixels.dcm", tmp_path / "other_resent.dcm"], 1):
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == n, timeout=60)
    with node.db() as c:
        made = c.execute("SELECT sr_instance_id, sc_instance_id FROM jobs ORDER BY id").fetchall()
    (sr1, sc1), (sr2, sc2), (sr3, sc3) = made
    assert sr1 != sr2 and sc1 != sc2 and None not in (sc1, sc2)
    assert (sr3, sc3) == (sr2, sc2), made


def move_the_only_result(node, dp: float) -> dict:
    """Moves the probability of the one job's recorded result by `dp`, as a
    re-run in another batch moves its last digits; the record as it was."""
    db = sqlite3.connect(node.data_dir / "pneumo-node.sqlite")
    try:
        (job_id, record), = db.execute("SELECT id, result_json FROM jobs").fetchall()
        record = json.loads(record)
        moved = json.loads(json.dumps(record))
        moved["prediction"]["p_positive"] += dp
        db.execute("UPDATE jobs SET result_json = ? WHERE id = ?", (json.dumps(moved), job_id))
        db.commit()
    finally:
        db.close()
    return record


def test_a_copy_is_compared_with_what_the_report_states_not_with_a_later_run(node, rg1_copies, tmp_path):
    """An operator's retry re-analysed the first copy (in another batch:
    its last digits moved) and overwrote its job's result; a later copy
    with other pixels but the report's result was compared with that run,
    and got a second report stating the same number as the first, "with
    another result". (The re-run is written into the job's result here.)"""
    (first,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    record = move_the_only_result(node, 3e-6)
    one_pixel = pydicom.dcmread(first)
    pixels = one_pixel.pixel_array.copy()
    pixels[0, 0] += 1  # another model input, the same result to the millionth
    one_pixel.PixelData = pixels.tobytes()
    one_pixel.save_as(tmp_path / "one_pixel.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "one_pixel.dcm")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 2, timeout=60)
    with node.db() as c:
        results = [json.loads(r) for (r,) in c.execute("SELECT result_json FROM jobs ORDER BY id")]
    assert results[0]["model_input_sha256"] != results[1]["model_input_sha256"]
    assert round(results[1]["prediction"]["p_positive"] * 1e6) == round(
        (results[0]["prediction"]["p_positive"] - 3e-6) * 1e6), "the one-pixel change moved the result"
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1 AND modality = 'SR'") == 1
    assert "gave another result" not in node.log()


def test_a_copy_with_the_same_pixels_shares_the_report_whatever_its_last_digits(node, rg1_copies, tmp_path):
    """ONNX Runtime's sums differ with the batch an image runs in (about
    1e-8 in p): a copy re-sent with a changed header, batched otherwise,
    differed from the first's result in the millionth now and then, and
    got a second report "with another result". The same model input is
    the same result. (The first result is edited here by a millionth, as
    another batch's run gives it.)"""
    (first,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first)
    node.wait_for_analyses()
    record = move_the_only_result(node, 2e-6)
    routed = pydicom.dcmread(first)
    routed.ImageComments = "routed"
    routed.save_as(tmp_path / "routed.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "routed.dcm")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 2, timeout=60)
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1 AND modality = 'SR'") == 1
    assert "gave another result" not in node.log()
    assert len(record["model_input_sha256"]) == 64, record
    # The API says what the shared report states when this run's numbers
    # differ (another batch's digits): the PACS shows the report's.
    db = sqlite3.connect(node.data_dir / "pneumo-node.sqlite")
    try:
        (stated,) = db.execute("SELECT p_positive FROM report_results").fetchone()
        db.execute("UPDATE report_results SET p_positive = ?", (stated + 1e-9,))
        db.commit()
    finally:
        db.close()
    routed.ImageComments = "routed again"
    routed.save_as(tmp_path / "routed2.dcm", enforce_file_format=True)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "routed2.dcm")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 3, timeout=60)
    code, body = node.http("/api/jobs?limit=1")
    (latest,) = body["jobs"]
    assert latest["result"]["report_states"]["p_positive"] == pytest.approx(stated + 1e-9, abs=1e-15), \
        latest["result"]
    assert node.count("SELECT COUNT(*) FROM instances WHERE generated = 1 AND modality = 'SR'") == 1


def test_kill_9_while_analysing_ends_as_a_run_without_it(node_factory, tmp_path):
    files = radiographs(tmp_path, 0, 8)  # JPEG 2000: slow enough to kill mid-analysis

    # The run without a kill.
    calm_pacs = Orthanc(tmp_path / "calm-orthanc").start()
    try:
        calm = node_factory().start(config_file=node_config(tmp_path / "calm.toml", calm_pacs, concurrency=1))
        send_all(calm, files)
        calm_pacs.wait_for_count(16, timeout=240)
        wait_until(lambda: calm.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 8, timeout=60)
        expected = final_state(calm, calm_pacs)
    finally:
        calm_pacs.stop()

    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        node = node_factory().start(config_file=node_config(tmp_path / "node.toml", pacs, concurrency=1))
        send_all(node, files)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('reported', 'delivered')") >= 2,
                   timeout=120)
        assert node.count("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'analysing')") > 0
        node.kill9()
        node.start()
        pacs.wait_for_count(16, timeout=240)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'") == 8, timeout=60)
        time.sleep(1.5)
        assert len(pacs.get("/instances")) == 16  # no second SR, no second original
        assert final_state(node, pacs) == expected
    finally:
        pacs.stop()


def test_undecodable_syntax_is_stored_but_not_analysed(node, tmp_path):
    from nodetest import ROOT

    fixtures = ROOT / "fixtures" / "imaging"
    refused = tmp_path / "jpeg2000_part2.dcm"  # a syntax off the analysable list
    part2 = pydicom.dcmread(fixtures / "rg1s_j2k_lossless.dcm")
    part2.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"
    part2.save_as(refused)
    # storescu's flag that proposes each file's own syntax.
    decodable = {fixtures / "rg1s_jpegls_lossless.dcm": "-xt", fixtures / "rg1s_jpeg_extended_12bit.dcm": "-xx"}
    # DCMTK 3.6.7's storescu cannot propose Part 2 syntaxes: pynetdicom sends it.
    from pynetdicom import AE

    ae = AE(ae_title="PART2SCU")
    ae.add_requested_context(part2.SOPClassUID, [part2.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    assert assoc.send_c_store(refused).Status == 0x0000
    assoc.release()
    for path, propose in decodable.items():
        run_dcmtk("storescu", propose, "-aec", node.ae_title, "127.0.0.1", node.port, path)

    def state_of(path):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        with node.db() as c:
            return c.execute(
                "SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE i.sop_instance_uid = ?",
                (uid,),
            ).fetchone()

    wait_until(lambda: state_of(refused) is not None and state_of(refused)[0] == "skipped")
    assert "1.2.840.10008.1.2.4.92 cannot be decoded for analysis" in state_of(refused)[1]
    for path in decodable:
        wait_until(lambda: state_of(path)[0] == "reported", timeout=60)


PRESENT = ("52101004", "SCT", "Present")
ABSENT = ("272519000", "SCT", "Absent")


def sr_finding(sr_path):
    """(qualitative evaluation as (value, scheme, meaning), Certainty of
    Finding) of the pneumoconiosis measurement group of an SR, read by
    highdicom."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    finding = Code("40122008", "SCT", "Pneumoconiosis")
    (group,) = hd.sr.srread(sr_path).content.get_image_measurement_groups(finding_type=finding)
    (evaluation,) = group.get_qualitative_evaluations(name=finding)
    (certainty,) = group.get_measurements(name=Code("111012", "DCM", "Certainty of Finding"))
    code = evaluation.value
    return (code.value, code.scheme_designator, code.meaning), certainty.value


def one_report(node, rg1_copies):
    """Sends one radiograph and waits for its report: (SR path, result)."""
    (f,) = rg1_copies("UNCI", 1)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    with node.db() as c:
        (sr_rel,) = c.execute("SELECT path FROM instances WHERE generated = 1").fetchone()
        (result,) = c.execute("SELECT result_json FROM jobs").fetchone()
    return node.data_dir / sr_rel, json.loads(result)


@pytest.mark.parametrize("body_part", [None, "THORAX"])
def test_the_node_s_own_sr_and_companion_pass_the_validators(node_factory, rg1_copies, body_part):
    """The SR and the companion image the running node makes (not the
    builder alone): dciodvfy, dsrdump and highdicom. THORAX (analysed by
    default) is a paired part for the companion's series: it needs an
    (empty) Laterality."""
    import highdicom as hd

    node = node_factory(report__companion_sc="true").start()
    (f,) = rg1_copies("UNCI", 1)
    if body_part:
        ds = pydicom.dcmread(f)
        ds.BodyPartExamined = body_part
        ds.save_as(f)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    with node.db() as c:
        generated = dict(c.execute("SELECT modality, path FROM instances WHERE generated = 1").fetchall())
        (result,) = c.execute("SELECT result_json FROM jobs").fetchone()
    assert len(generated) == 2 and "SR" in generated, generated  # the SR and the companion image
    p = json.loads(result)["prediction"]["probabilities"][0]
    src = pydicom.dcmread(f, stop_before_pixels=True)
    for modality, rel in generated.items():
        path = node.data_dir / rel
        out = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, errors="replace")
        errors = [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")]
        assert errors == [], (modality, errors)
        assert pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == src.StudyInstanceUID
    sr_path = node.data_dir / generated["SR"]
    dump = subprocess.run(["/usr/bin/dsrdump", str(sr_path)], capture_output=True, text=True, errors="replace")
    assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout
    evaluation, certainty = sr_finding(sr_path)
    assert evaluation == (PRESENT if p >= 0.5 else ABSENT)
    assert certainty == pytest.approx(p * 100, abs=1e-3)
    sr = hd.sr.srread(sr_path)
    assert "DEMO MODEL - NOT FOR DIAGNOSIS" in sr.SeriesDescription
    # The region the certainty comes from: the whole image (no crop), on the source.
    (group,) = sr.content.get_image_measurement_groups()
    (num,) = [i for i in group[0].ContentSequence if i.ValueType == "NUM"]
    (region,) = num.ContentSequence
    assert [int(v) for v in region.GraphicData] == [
        0, 0, src.Columns, 0, src.Columns, src.Rows, 0, src.Rows, 0, 0]
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    sc = pydicom.dcmread(node.data_dir / generated["OT"], stop_before_pixels=True)
    # Dated in the series list as its study, as the SR (each instance of a
    # series the node adds to over time was dated when made).
    srd = pydicom.dcmread(sr_path, stop_before_pixels=True)
    assert (sc.SeriesDate, sc.SeriesTime) == (src.StudyDate, src.StudyTime) == (srd.SeriesDate, srd.SeriesTime)


def test_a_source_re_sent_with_other_bytes_keeps_one_sr_and_one_companion(node_factory, rg1_copies, tmp_path):
    """A PACS re-sends a radiograph under its UID with a coerced header
    (Issuer of Patient ID added): both copies are kept and analysed, and
    they share one report and one companion image. Neither is built again
    under its UID with other content (the companion image was, each time,
    with its own creation time: one UID, several objects)."""
    node = node_factory(report__companion_sc="true").start()
    (f,) = rg1_copies("UNCI", 1)
    coerced = pydicom.dcmread(f)
    coerced.IssuerOfPatientID = "HOSP_A"
    coerced_path = tmp_path / "coerced.dcm"
    coerced.save_as(coerced_path, enforce_file_format=True)
    for path in (f, coerced_path):
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
        wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state NOT IN ('reported', 'failed')") == 0, timeout=60)
    with node.db() as c:
        jobs = c.execute("SELECT state, sr_instance_id FROM jobs ORDER BY id").fetchall()
        generated = c.execute("SELECT modality, sop_instance_uid FROM instances WHERE generated = 1").fetchall()
    assert [state for state, _ in jobs] == ["reported", "reported"]
    assert jobs[0][1] == jobs[1][1]  # one report for both copies
    assert sorted(m for m, _ in generated) == ["OT", "SR"], generated  # one SR, one companion image
    assert len({uid for _, uid in generated}) == 2


def test_an_absent_finding_reaches_the_sr(node_factory, rg1_copies, tmp_path):
    """The demo model scores RG1 above 0.5; with the contract's threshold
    raised above that score the decision is `absent`, and the SR says so."""
    from nodetest import demo_model_with

    strict = demo_model_with(tmp_path / "tiny-threshold-0.99.onnx", decision_threshold=0.99)

    node = node_factory(inference__model=str(strict)).start()
    sr_path, result = one_report(node, rg1_copies)
    p = result["prediction"]["probabilities"][0]
    assert 0.5 < p < 0.99 and result["decision"] == "absent"
    evaluation, certainty = sr_finding(sr_path)
    assert evaluation == ABSENT
    assert certainty == pytest.approx(p * 100, abs=1e-3)


def test_the_same_weights_recalibrated_make_another_sr_in_another_series(node_factory, rg1_copies, tmp_path):
    """The demo weights re-exported with another threshold and version give
    the same image another result: its SR must not carry the first model's
    SOP Instance UID, nor land in its series (both derived from the weights
    hash and the study alone, a PACS kept one of two different reports)."""
    from nodetest import demo_model_with

    recalibrated = demo_model_with(tmp_path / "tiny-recalibrated.onnx", decision_threshold=0.99,
                                   model_version="0.0.1-recalibrated")
    made = []
    for settings in ({}, {"inference__model": str(recalibrated)}):
        node = node_factory(**settings).start()
        sr_path, result = one_report(node, rg1_copies)  # the same file both times
        sr = pydicom.dcmread(sr_path)
        made.append((sr.SOPInstanceUID, sr.SeriesInstanceUID, sr.SeriesDescription, result["decision"]))
        node.stop()
    (uid_a, series_a, title_a, decision_a), (uid_b, series_b, title_b, decision_b) = made
    assert (decision_a, decision_b) == ("present", "absent")
    assert uid_a != uid_b
    assert series_a != series_b, (title_a, title_b)
    # and a viewer's series list tells the two apart (Series Description
    # holds 64 characters: the name is cut to keep the version whole)
    assert title_a.endswith("pneumollm-tiny 1.0.0") and title_b.endswith("pneumollm... 0.0.1-recalibrated"), (
        title_a, title_b)


def test_a_model_that_runs_one_image_at_a_time_reports_every_image(node_factory, rg1_copies):
    """A graph that declares a dynamic batch but fixes it to one inside
    (fixtures/models/bad/batch-one.onnx) passes every check at load; its
    batches failed, and with them every job of a busy node."""
    from nodetest import ROOT

    node = node_factory(inference__model=str(ROOT / "fixtures/models/bad/batch-one.onnx"),
                        inference__max_batch="8", inference__max_wait_ms="300").start()
    files = rg1_copies("UNCI", 4)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
    node.wait_for_analyses()
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 4, node.log()[-3000:]
    assert "images run one at a time" in node.log()


def test_the_sr_reports_the_pneumoconiosis_column_of_a_model_with_other_label_order(node_factory, rg1_copies, tmp_path):
    """A contract may list its labels in another order: P(pneumoconiosis)
    is then column 1, and that is what the SR and the API report (column 0,
    P(normal), used to be reported as the certainty of pneumoconiosis)."""
    from nodetest import demo_model_with

    swapped = demo_model_with(tmp_path / "tiny-normal-first.onnx", labels='["normal","pneumoconiosis"]')
    node = node_factory(inference__model=str(swapped)).start()
    sr_path, result = one_report(node, rg1_copies)
    normal, pneumoconiosis = result["prediction"]["probabilities"]
    assert result["prediction"]["p_positive"] == pneumoconiosis
    assert pneumoconiosis < 0.5 < normal  # the demo model's column 0 scores RG1 high
    assert result["decision"] == "absent" and result["prediction"]["positive"] is False
    evaluation, certainty = sr_finding(sr_path)
    assert evaluation == ABSENT
    assert certainty == pytest.approx(pneumoconiosis * 100, abs=1e-3)


def test_dx_for_processing_is_stored_but_not_analysed(node, tmp_path):
    """A DX modality sends both the raw image (For Processing) and the one
    for display (For Presentation); only the latter is analysed."""
    from nodetest import ROOT

    made = {}
    for name, sop_class in (("processing", "1.2.840.10008.5.1.4.1.1.1.1.1"),
                            ("presentation", "1.2.840.10008.5.1.4.1.1.1.1")):
        ds = pydicom.dcmread(ROOT / "fixtures" / "imaging" / "rg1s_mono2.dcm")
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.Modality = "DX"
        ds.PresentationIntentType = f"FOR {name.upper()}"
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        made[name] = ds.SOPInstanceUID
        run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / f"{name}.dcm")

    def job(uid):
        with node.db() as c:
            return c.execute("SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id"
                             " WHERE i.sop_instance_uid = ?", (uid,)).fetchone()

    wait_until(lambda: (job(made["presentation"]) or ("",))[0] == "reported", timeout=60)
    state, reason = job(made["processing"])
    assert state == "skipped" and "For Processing" in reason
    assert node.instance_rows(made["processing"]) == 1
    # Said in the log too (it was in /api/jobs only): no report will come.
    (line,) = [l for l in node.log().splitlines() if "not analysed" in l]
    assert made["processing"] in line and "For Processing" in line, line


def test_report_times_are_in_the_node_s_local_time_when_the_source_has_no_offset(
        node_factory, rg1_copies, monkeypatch):
    """A source without Timezone Offset From UTC has local times; the report
    wrote UTC, so east of Greenwich it read as made before the study."""
    import datetime as dt

    monkeypatch.setenv("TZ", "XYZ-3")  # POSIX: three hours east of UTC, no tzdata needed
    node = node_factory().start()
    (f,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(f)
    del ds.TimezoneOffsetFromUTC  # RG1 carries -0400
    source = node.workdir / "no-offset.dcm"
    ds.save_as(source)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, source)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    with node.db() as c:
        (sr_rel,) = c.execute("SELECT path FROM instances WHERE generated = 1").fetchone()
    sr = pydicom.dcmread(node.data_dir / sr_rel, stop_before_pixels=True)
    assert "TimezoneOffsetFromUTC" not in sr
    written = dt.datetime.strptime(sr.ContentDate + sr.ContentTime.split(".")[0], "%Y%m%d%H%M%S")
    local_now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(hours=3)
    assert abs(written - local_now) < dt.timedelta(minutes=5), (written, local_now)


def test_a_backlog_drains_without_waiting_for_new_arrivals(node_factory, tmp_path):
    """A finished analysis did not wake the pipeline: with nothing arriving,
    it claimed `concurrency` jobs per one-second poll (a backlog of 10,000
    after an outage took 40 minutes at concurrency 4, whatever the hardware).
    Thirty small radiographs at concurrency 1 took thirty seconds; their
    analysis takes about one."""
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    node = node_factory(pipeline__concurrency=1).start()
    files = []
    for i in range(30):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.Modality, ds.BodyPartExamined, ds.PatientID = "CR", "CHEST", f"P{i}"
        ds.Rows = ds.Columns = 128
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = (np.arange(128 * 128, dtype=np.uint16) * (i + 1) % 4096).tobytes()
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files)
    node.wait_for_analyses(timeout=60)
    node.stop()
    # The backlog an outage leaves: thirty queued jobs, nothing arriving.
    with node.db() as c:
        c.execute("UPDATE jobs SET state = 'queued', attempts = 0, sr_instance_id = NULL")
    node.start()  # returns once listening: the model is loaded
    started = time.monotonic()
    node.wait_for_analyses(timeout=90)
    assert time.monotonic() - started < 15, "the backlog drained at one job per poll"
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 30


def test_a_study_s_companion_images_are_numbered_apart(node_factory, rg1_copies):
    """A study's companion images share one series: image 1 of series 1 and
    image 1 of series 2 both got Instance Number 1 there, and a viewer
    ordered them at random."""
    node = node_factory(report__companion_sc="true").start()
    first, second = rg1_copies("UNCI", 2)
    study = pydicom.dcmread(first).StudyInstanceUID
    for path, series_number in ((first, 1), (second, 2)):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study
        ds.SeriesNumber, ds.InstanceNumber = series_number, 1
        ds.save_as(path)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, first, second)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 2, timeout=60)
    with node.db() as c:
        paths = [p for (p,) in c.execute("SELECT path FROM instances WHERE generated = 1 AND modality = 'OT'")]
    companions = [pydicom.dcmread(node.data_dir / p, stop_before_pixels=True) for p in paths]
    assert len({c.SeriesInstanceUID for c in companions}) == 1, companions
    assert sorted(int(c.InstanceNumber) for c in companions) == [10001, 20001]


def test_the_companion_image_of_a_radiograph_with_oblong_pixels_has_square_ones(node_factory, rg1_copies):
    """A radiograph whose pixels are twice as high as wide (Pixel Spacing
    0.2\\0.1): its companion image kept the source's grid and carried no
    Pixel Aspect Ratio, so viewers drew it squashed to half its height."""
    node = node_factory(report__companion_sc="true").start()
    (path,) = rg1_copies("UNCI", 1)
    ds = pydicom.dcmread(path)
    ds.PixelSpacing = ds.ImagerPixelSpacing = [0.2, 0.1]
    ds.save_as(path)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, path)
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    with node.db() as c:
        (companion,) = [p for (p,) in c.execute("SELECT path FROM instances WHERE generated = 1 AND modality = 'OT'")]
    sc = pydicom.dcmread(node.data_dir / companion, stop_before_pixels=True)
    assert "PixelAspectRatio" not in sc
    # 1955 rows of 0.2 mm by 1841 columns of 0.1 mm, 1024 at most on the
    # longer side (the banner adds rows above it): 1024 rows, and 1841 / 2
    # columns scaled alike (965 on the source's grid)
    assert (int(ds.Rows), int(ds.Columns)) == (1955, 1841)
    assert int(sc.Columns) == math.ceil(1841 / 2 * 1024 / 1955) == 483, (sc.Rows, sc.Columns)
    assert int(sc.Rows) > 1024
