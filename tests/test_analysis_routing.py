"""Which radiographs are analysed: DX images that name their anatomy and
view only in codes (Anatomic Region Sequence is Type 1 in the DX IOD, Body
Part Examined Type 3; View Code Sequence and View Position Type 3). A hand
or a lateral chest said so only in codes was analysed as a chest PA."""

from __future__ import annotations

import pydicom
from nodetest import ROOT, node, node_factory, run_dcmtk  # noqa: F401 (fixtures)
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from test_routing_orthanc import wait_until

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def dx(path, anatomy=None, view=None, **text) -> str:
    ds = pydicom.dcmread(ROOT / "fixtures" / "imaging" / "rg1s_mono2.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    for keyword in ("BodyPartExamined", "ViewPosition"):
        if keyword in ds:
            delattr(ds, keyword)
    for keyword, value in text.items():
        setattr(ds, keyword, value)
    if anatomy:
        ds.AnatomicRegionSequence = [code(*anatomy)]
    if view:
        ds.ViewCodeSequence = [code(*view)]
    ds.save_as(path, enforce_file_format=True)
    return ds.SOPInstanceUID


def test_coded_anatomy_and_view_decide_when_the_text_attributes_are_absent(node, tmp_path):
    hand = ("85562004", "SCT", "Hand")
    chest = ("51185008", "SCT", "Chest")
    pa = ("272479007", "SCT", "postero-anterior")
    left_lateral = ("399173006", "SCT", "left lateral")
    cases = {
        "hand_pa": (dx(tmp_path / "a.dcm", hand, pa),
                    "skipped", "body part Hand (SCT 85562004) is not analysed"),
        "chest_lateral": (dx(tmp_path / "b.dcm", chest, left_lateral),
                          "skipped", "view position LL is not analysed"),
        "text_chest_empty_view_lateral_srt": (
            dx(tmp_path / "c.dcm", None, ("R-10236", "SRT", "left lateral"),
               BodyPartExamined="CHEST", ViewPosition=""),
            "skipped", "view position LL is not analysed"),
        "coded_chest_pa": (dx(tmp_path / "d.dcm", chest, pa), "reported", None),
        # The text attributes, where present, are what the modality said.
        "text_chest_pa_coded_hand": (dx(tmp_path / "e.dcm", hand, left_lateral,
                                        BodyPartExamined="CHEST", ViewPosition="PA"),
                                     "reported", None),
    }
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port,
              *sorted(tmp_path.glob("*.dcm")))

    def job(uid):
        with node.db() as c:
            return c.execute(
                "SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id"
                " WHERE i.sop_instance_uid = ?", (uid,)).fetchone()

    for name, (uid, state, reason) in cases.items():
        wait_until(lambda: (job(uid) or ("",))[0] in ("skipped", "reported", "failed"), timeout=60)
        assert job(uid) == (state, reason), name


def test_children_s_radiographs_are_stored_and_forwarded_but_not_analysed(node_factory, tmp_path):
    """A general hospital's CR room sends children's chests too: each got a
    pneumoconiosis result from a model of adult workers. Under
    routing.analyse_min_age_years (16) they are skipped with the reason, by
    Patient's Age or else Birth Date against Study Date (or, Study Date
    being Type 2, the image's own dates); no age, analysed. A bare number
    of years and a birth year alone (both against the VR, both written by
    real systems) count too; the day before the 16th birthday is under 16."""
    no_dates = dict(StudyDate="", SeriesDate="", AcquisitionDate="", ContentDate="")
    cases = {
        "age_7": (dx(tmp_path / "a.dcm", PatientAge="007Y"), "skipped",
                  "patient age 7 years is under routing.analyse_min_age_years (16): "
                  "the model reads adults' radiographs"),
        "bare_12": (dx(tmp_path / "f.dcm", PatientAge="12"), "skipped", None),
        "content_date": (dx(tmp_path / "g.dcm", PatientBirthDate="20160601",
                            **{**no_dates, "ContentDate": "20261120"}), "skipped", None),
        "birth_year": (dx(tmp_path / "h.dcm", PatientAge="", PatientBirthDate="2016",
                          StudyDate="20261120"), "skipped", None),
        "eve_of_16": (dx(tmp_path / "i.dcm", PatientAge="", PatientBirthDate="20101121",
                         StudyDate="20261120"), "skipped",
                      "patient age 15 years is under routing.analyse_min_age_years (16): "
                      "the model reads adults' radiographs"),
        "16th_birthday": (dx(tmp_path / "j.dcm", PatientAge="", PatientBirthDate="20101120",
                             StudyDate="20261120"), "reported", None),
        "no_date": (dx(tmp_path / "k.dcm", PatientAge="", PatientBirthDate="20160601", **no_dates),
                    "reported", None),
        "iso_study_date": (dx(tmp_path / "l.dcm", PatientAge="", PatientBirthDate="20100101",
                              **{**no_dates, "StudyDate": "2020-01-01"}), "skipped", None),
        "months_18": (dx(tmp_path / "b.dcm", PatientAge="018M"), "skipped", None),
        "born_2020": (dx(tmp_path / "c.dcm", PatientBirthDate="20200101", StudyDate="20240701"),
                      "skipped", None),
        "age_45": (dx(tmp_path / "d.dcm", PatientAge="045Y"), "reported", None),
        "no_age": (dx(tmp_path / "e.dcm", PatientBirthDate=""), "reported", None),
    }
    node = node_factory().start()
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(tmp_path.glob("*.dcm")))

    def job(uid):
        with node.db() as c:
            return c.execute("SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id"
                             " WHERE i.sop_instance_uid = ?", (uid,)).fetchone()

    for name, (uid, state, reason) in cases.items():
        wait_until(lambda: (job(uid) or ("",))[0] in ("skipped", "reported", "failed"), timeout=60)
        got = job(uid)
        assert got[0] == state, (name, got)
        if state == "skipped":
            assert "is under routing.analyse_min_age_years (16)" in got[1], (name, got)
        if reason:
            assert got[1] == reason, (name, got)
    # 0 analyses any age (a retry routes the skipped ones again).
    node.stop()
    node.settings["routing__analyse_min_age_years"] = 0
    node.start()
    import requests
    r = requests.post(f"http://127.0.0.1:{node.http_port}/api/jobs/retry", params={"state": "skipped"})
    assert r.json()["requeued"] == 8, r.text
    for name, (uid, _, _) in cases.items():
        wait_until(lambda: (job(uid) or ("",))[0] == "reported", timeout=60, what=name)
