"""Which radiographs are analysed: DX images that name their anatomy and
view only in codes (Anatomic Region Sequence is Type 1 in the DX IOD, Body
Part Examined Type 3; View Code Sequence and View Position Type 3). A hand
or a lateral chest said so only in codes was analysed as a chest PA."""

from __future__ import annotations

import subprocess

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


def secondary_capture(path, conversion_type: str) -> str:
    """A chest Secondary Capture with Modality CR of `conversion_type`."""
    uid = dx(path, None, None, Modality="CR", BodyPartExamined="CHEST", ViewPosition="PA",
             ConversionType=conversion_type, ImageType=["DERIVED", "SECONDARY"])
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.save_as(path, enforce_file_format=True)
    return uid


def job_of(node, uid):
    """(state, reason) of the job of the instance `uid`."""
    with node.db() as c:
        return c.execute(
            "SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " WHERE i.sop_instance_uid = ?", (uid,)).fetchone()


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

    for name, (uid, state, reason) in cases.items():
        wait_until(lambda: (job_of(node, uid) or ("",))[0] in ("skipped", "reported", "failed"), timeout=60)
        assert job_of(node, uid) == (state, reason), name


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

    for name, (uid, state, reason) in cases.items():
        wait_until(lambda: (job_of(node, uid) or ("",))[0] in ("skipped", "reported", "failed"), timeout=60)
        got = job_of(node, uid)
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
        wait_until(lambda: (job_of(node, uid) or ("",))[0] == "reported", timeout=60, what=name)


def test_words_orientation_and_intent_route_images_that_name_no_body_part_or_view(node_factory, tmp_path):
    """A stitched long-leg image with no body part got a chest result (its
    companion image labelled CHEST); a lateral with an empty View Position
    was analysed though Patient Orientation, or only its Series Description
    and Protocol Name, said lateral; a DX For
    Presentation image whose Presentation Intent Type said FOR PROCESSING
    was analysed; Body Part `CHEST PA` was skipped."""
    node = node_factory(report__companion_sc="true").start()
    cases = {
        "stitched_leg": (dx(tmp_path / "a.dcm", None, None, SeriesDescription="Long Leg Stitched",
                            ImageType=["DERIVED", "PRIMARY", "STITCHED"]),
                         "skipped", "a stitched image (Image Type DERIVED\\PRIMARY\\STITCHED) is not "
                                    "analysed: a chest radiograph is one exposure"),
        # the reason names the word, not the description, which may hold
        # the patient's name (it went to the log at INFO and to the API)
        "knee_in_words": (dx(tmp_path / "b.dcm", None, None, StudyDescription="Mustermann Erika RX Knie rechts"),
                          "skipped", 'body part LEG (Study Description word "KNIE") is not analysed'),
        "lateral_by_orientation": (dx(tmp_path / "c.dcm", None, None, SeriesDescription="Thorax lat",
                                      PatientOrientation=["P", "F"], ViewPosition=""),
                                   "skipped", "view position LATERAL (Patient Orientation P\\F) is not analysed"),
        "intent_for_processing": (dx(tmp_path / "d.dcm", None, None, PresentationIntentType="FOR PROCESSING"),
                                  "skipped", "Presentation Intent Type FOR PROCESSING (raw detector data, "
                                             "not meant for display) is not analysed"),
        # Another vendor's annotated overlay, a Secondary Capture with
        # Modality CR: it got a chest result. A digitised film is analysed.
        "workstation_capture": (secondary_capture(tmp_path / "g.dcm", "WSD"), "skipped",
                                "a Secondary Capture of Conversion Type WSD (a workstation's capture, a "
                                "drawing, a synthetic image or a scanned document: annotated or derived, "
                                "not a radiograph) is not analysed"),
        "digitised_film": (secondary_capture(tmp_path / "h.dcm", "DF"), "reported", None),
        "chest_pa_words": (dx(tmp_path / "e.dcm", None, None, BodyPartExamined="CHEST PA",
                              PatientOrientation=["L", "F"]), "reported", None),
        # A lateral said only in words (no orientation, View Position
        # empty) got a report as a frontal chest; words naming two views,
        # or beside a frontal orientation, leave it analysed.
        "lateral_in_words": (dx(tmp_path / "i.dcm", None, None, SeriesDescription="Thorax lat.",
                                ProtocolName="CHEST LAT", ViewPosition="", PatientOrientation=""),
                             "skipped", 'view position LATERAL (Series Description word "LAT") is '
                                        "not analysed"),
        "two_views_in_words": (dx(tmp_path / "j.dcm", None, None, SeriesDescription="Thorax PA + LAT",
                                  ViewPosition="", PatientOrientation=""), "reported", None),
        # "p.a." in two words: the frontal was skipped as a lateral
        "frontal_in_two_words": (dx(tmp_path / "l.dcm", None, None, SeriesDescription="Thorax p.a. + seitl.",
                                    StudyDescription="Rö Thorax p.a. + seitl.", ViewPosition="",
                                    PatientOrientation=""), "reported", None),
        # the series names one view, the protocol both: the series decides
        "series_lateral_protocol_both": (
            dx(tmp_path / "m.dcm", None, None, SeriesDescription="CHEST LATERAL", ProtocolName="CHEST PA/LAT",
               ViewPosition="", PatientOrientation=""),
            "skipped", 'view position LATERAL (Series Description word "LATERAL") is not analysed'),
        "lateral_words_frontal_orientation": (
            dx(tmp_path / "k.dcm", None, None, SeriesDescription="Thorax lateral",
               PatientOrientation=["L", "F"]), "reported", None),
        # nothing said: analysed as before, and the companion image does
        # not name a body part the source did not
        "view_code_only_no_numbers": (
            dx(tmp_path / "f.dcm", None, ("399348003", "SCT", "antero-posterior"),
               AcquisitionTime="081403", InstanceNumber=None),
            "reported", None),
    }
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port,
              *sorted(tmp_path.glob("*.dcm")))

    for name, (uid, state, reason) in cases.items():
        wait_until(lambda: (job_of(node, uid) or ("",))[0] in ("skipped", "reported", "failed"), timeout=60)
        assert job_of(node, uid) == (state, reason), name
    assert "Mustermann" not in node.log()

    uid = cases["view_code_only_no_numbers"][0]
    with node.db() as c:
        made = dict(c.execute(
            "SELECT m.modality, m.path FROM jobs j JOIN instances i ON i.id = j.instance_id"
            " JOIN instances m ON m.id IN (j.sr_instance_id, j.sc_instance_id)"
            " WHERE i.sop_instance_uid = ?", (uid,)).fetchall())
    sr = pydicom.dcmread(node.data_dir / made["SR"])
    comments = [str(item.TextValue) for item in _walk(sr) if "TextValue" in item]
    assert any("Image analysed: antero-posterior, series" in t and "acquired 08:14:03" in t
               for t in comments), comments
    sc = pydicom.dcmread(node.data_dir / made["OT"])
    assert "BodyPartExamined" not in sc, sc.BodyPartExamined
    # Six analysed images of one study: a report series each (OHIF shows
    # one SR per series; with one series per study it showed one report).
    with node.db() as c:
        series = c.execute("SELECT DISTINCT study_instance_uid, series_instance_uid FROM instances"
                           " WHERE generated = 1 AND modality = 'SR'").fetchall()
    assert len(series) == 6 and len({study for study, _ in series}) == 1, series
    # The study's companion images share a series: one date and time for it
    # (each was dated when made, and dcentvfy found the series inconsistent).
    with node.db() as c:
        companions = [node.data_dir / p for (p,) in c.execute(
            "SELECT path FROM instances WHERE generated = 1 AND modality = 'OT'")]
    assert len(companions) == 6
    out = subprocess.run(["/usr/bin/dcentvfy", *map(str, companions)], capture_output=True, text=True,
                         errors="replace")
    said = out.stdout + out.stderr
    assert "<SeriesDate>" not in said and "<SeriesTime>" not in said, said


def _walk(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_a_report_or_companion_image_sent_back_is_neither_analysed_nor_forwarded(node_factory, tmp_path):
    """A PACS that routes everything back to the node (and coerces what it
    stores: another issuer, a new UID) made the node analyse its own
    companion image as a chest radiograph, report on it, send that back,
    and so on without end; its report came back and was forwarded to a
    teaching archive as an original."""
    from nodetest import free_port

    config = tmp_path / "loop.toml"
    config.write_text(f"""
[dicom]
accept = "all-storage"
[report]
companion_sc = true
[routing]
analyse_modalities = ["CR", "DX", "OT"]
[[routing.forward]]
destinations = ["teaching"]
[[destinations]]
name = "teaching"
ae_title = "TEACH"
host = "127.0.0.1"
port = {free_port()}
""")
    node = node_factory().start(config_file=config)
    original = dx(tmp_path / "original.dcm", None, None)
    run_dcmtk("storescu", "-aec", node.ae_title, "127.0.0.1", node.port, tmp_path / "original.dcm")
    wait_until(lambda: node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1, timeout=60)
    with node.db() as c:
        made = c.execute("SELECT path FROM instances WHERE generated = 1 ORDER BY id").fetchall()
    assert len(made) == 2  # the report and its companion image
    back = []
    for i, (path,) in enumerate(made):
        ds = pydicom.dcmread(node.data_dir / path)
        ds.IssuerOfPatientID = "PACS"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / f"back{i}.dcm", enforce_file_format=True)
        back.append(ds.SOPInstanceUID)
    run_dcmtk("storescu", "-R", "-aet", "PACS", "-aec", node.ae_title, "127.0.0.1", node.port,
              tmp_path / "back0.dcm", tmp_path / "back1.dcm")

    for uid in back:
        wait_until(lambda: (job_of(node, uid) or ("",))[0] == "skipped", timeout=60)
        assert "made by pneumo-node" in job_of(node, uid)[1], job_of(node, uid)
    with node.db() as c:
        forwarded = [u for (u,) in c.execute(
            "SELECT i.sop_instance_uid FROM outbox o JOIN instances i ON i.id = o.instance_id"
            " WHERE o.destination = 'teaching'")]
    assert forwarded == [original], forwarded
    assert node.count("SELECT COUNT(*) FROM jobs WHERE state = 'reported'") == 1
