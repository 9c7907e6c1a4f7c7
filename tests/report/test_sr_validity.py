"""Validity of the SRs (and companion images) that pneumo-report writes.

Each SR the example program `write_sr` writes must
  * give no line starting with "Error" in dicom3tools' `dciodvfy`,
  * be parsed by DCMTK's `dsrdump` (exit status 0),
  * read back with `highdicom.sr.srread` with the finding, the present/absent
    evaluation and the certainty that were written.
Each companion Secondary Capture image must pass `dciodvfy` the same way.

How the SR files are made: the test builds the example with
`cargo build --release --example write_sr -p pneumo-report` (a no-op when it
is up to date) and runs `target/release/examples/write_sr SOURCE OUTDIR ...`.
Set PNEUMO_WRITE_SR_BIN to the path of an already built `write_sr` to skip
the build.

Sources: RG1 (CR, MONOCHROME1, ISO_IR 100) from the pydicom-data package, and
a small synthetic DX image with a UTF-8 (ISO_IR 192) patient name made here.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

import data_store
import highdicom as hd

ROOT = Path(__file__).resolve().parents[2]
DCIODVFY = "/usr/bin/dciodvfy"
DSRDUMP = "/usr/bin/dsrdump"

PNEUMOCONIOSIS = Code("40122008", "SCT", "Pneumoconiosis")
FINDING_SITE_LUNG = Code("39607008", "SCT", "Lung")
CERTAINTY = Code("111012", "DCM", "Certainty of Finding")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
DEMO_MARK = "DEMO MODEL - NOT FOR DIAGNOSIS"
UTF8_NAME = "Müller^Jürgen=山田^太郎"
LATIN1_NAME = "Dupré^Zoë"


@pytest.fixture(scope="session")
def write_sr() -> Path:
    given = os.environ.get("PNEUMO_WRITE_SR_BIN")
    if given:
        return Path(given)
    subprocess.run(
        ["cargo", "build", "--release", "--example", "write_sr", "-p", "pneumo-report"],
        cwd=ROOT,
        check=True,
    )
    return ROOT / "target" / "release" / "examples" / "write_sr"


def rg1_path() -> Path:
    return Path(data_store.__file__).parent / "data" / "RG1_UNCI.dcm"


def synthetic_source(directory: Path, charset: str, name: str) -> Path:
    """A small DX image with the given character set and patient name."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "DX"
    ds.PatientName = name
    ds.PatientID = "SYN-1"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "M"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = "Dupré^Élodie"
    ds.StudyID = "1"
    ds.StudyDescription = "Thorax p.a."
    ds.SeriesNumber = 1
    ds.InstanceNumber = 2
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 96
    ds.Columns = 80
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:96, 0:80]
    ds.PixelData = ((yy * 40 + xx * 3) % 4096).astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = directory / "source.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def utf8_source(tmp_path_factory) -> Path:
    """Patient name in UTF-8 (ISO_IR 192), with CJK ideographic group."""
    return synthetic_source(tmp_path_factory.mktemp("utf8"), "ISO_IR 192", UTF8_NAME)


@pytest.fixture(scope="session")
def latin1_source(tmp_path_factory) -> Path:
    """Patient name in ISO 8859-1 (ISO_IR 100)."""
    return synthetic_source(tmp_path_factory.mktemp("latin1"), "ISO_IR 100", LATIN1_NAME)


@pytest.fixture
def source_path(request, utf8_source, latin1_source) -> Path:
    return {"rg1": rg1_path(), "utf8": utf8_source, "latin1": latin1_source}[request.param]


def run_writer(write_sr: Path, source: Path, out: Path, *flags: str) -> dict[str, Path]:
    proc = subprocess.run(
        [str(write_sr), str(source), str(out), *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    files = {}
    for line in proc.stdout.splitlines():
        kind, _, path = line.partition(" ")
        files[kind] = Path(path)
    assert "SR" in files, proc.stdout
    return files


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


CASES = [
    # (probability, weights, sop class, expected verdict)
    (0.87, "trained", "3d", PRESENT),
    (0.12, "random-demo", "comprehensive", ABSENT),
    (0.5, "trained", "comprehensive", PRESENT),  # p == threshold is present
    (0.4999, "random-demo", "3d", ABSENT),
]

SOP_CLASSES = {
    "3d": "1.2.840.10008.5.1.4.1.1.88.34",
    "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
}


@pytest.mark.parametrize("source_path", ["rg1", "utf8", "latin1"], indirect=True)
@pytest.mark.parametrize("probability,weights,sop_class,verdict", CASES)
def test_sr_is_valid_and_reads_back(
    write_sr, source_path, tmp_path, probability, weights, sop_class, verdict
):
    source = source_path
    src = pydicom.dcmread(source, stop_before_pixels=True)
    files = run_writer(
        write_sr,
        source,
        tmp_path,
        "--probability",
        str(probability),
        "--weights",
        weights,
        "--sop-class",
        sop_class,
    )
    sr_path = files["SR"]

    # dicom3tools
    assert dciodvfy_errors(sr_path) == []

    # DCMTK
    dump = subprocess.run(
        [DSRDUMP, str(sr_path)], capture_output=True, text=True, errors="replace", check=False
    )
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout

    # highdicom
    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == SOP_CLASSES[sop_class]
    assert sr.file_meta.FileMetaInformationVersion == b"\x00\x01"
    assert sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.Modality == "SR"
    assert str(sr.PatientName) == str(src.PatientName)
    assert sr.PatientID == src.PatientID
    assert sr.SpecificCharacterSet == src.SpecificCharacterSet
    if source.name == "source.dcm":
        assert str(sr.PatientName) in (UTF8_NAME, LATIN1_NAME)
        assert str(sr.ReferringPhysicianName) == "Dupré^Élodie"

    groups = sr.content.get_image_measurement_groups(finding_type=PNEUMOCONIOSIS)
    assert len(groups) == 1
    group = groups[0]
    assert group.finding_type == PNEUMOCONIOSIS
    assert [s.value for s in group.finding_sites] == [FINDING_SITE_LUNG]
    assert group.tracking_identifier and group.tracking_uid

    evaluations = group.get_qualitative_evaluations(name=PNEUMOCONIOSIS)
    assert len(evaluations) == 1
    assert evaluations[0].value == verdict

    certainty = group.get_measurements(name=CERTAINTY)
    assert len(certainty) == 1
    assert certainty[0].value == pytest.approx(probability * 100, abs=1e-4)
    assert certainty[0].unit == Code("%", "UCUM", "Percent")

    sources = group.source_images
    assert [s.referenced_sop_instance_uid for s in sources] == [src.SOPInstanceUID]
    assert analysed_region(group, src.SOPInstanceUID) == [
        0, 0, src.Columns, 0, src.Columns, src.Rows, 0, src.Rows, 0, 0]

    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence[0].StudyInstanceUID == src.StudyInstanceUID
    series = evidence[0].ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    equipment = sr.ContributingEquipmentSequence[0]
    assert equipment.ManufacturerModelName == "PneumoLLM"

    texts = [
        item.TextValue
        for item in group[0].ContentSequence
        if item.ValueType == "TEXT"
    ]
    if weights == "random-demo":
        assert sr.SeriesDescription.startswith(DEMO_MARK)
        assert any(t.startswith(DEMO_MARK) for t in texts)
    else:
        assert "DEMO" not in sr.SeriesDescription
        assert not any(DEMO_MARK in t for t in texts)


def analysed_region(group, source_uid: str) -> list:
    """The certainty NUM's region, as OHIF reads it to place the result on
    the image: one INFERRED FROM SCOORD (closed POLYLINE) under the NUM, one
    SELECTED FROM IMAGE under that, referencing the source. Without it OHIF
    3.x failed to load the SR (it takes coords[0] of every measurement)."""
    (num,) = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
    (region,) = num.ContentSequence
    assert region.RelationshipType == "INFERRED FROM"
    assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
    (image,) = region.ContentSequence
    assert image.RelationshipType == "SELECTED FROM" and image.ValueType == "IMAGE"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_uid
    return [int(v) for v in region.GraphicData]


def test_a_cropping_model_names_its_crop_as_the_region(write_sr, utf8_source, tmp_path):
    src = pydicom.dcmread(utf8_source, stop_before_pixels=True)
    files = run_writer(write_sr, utf8_source, tmp_path, "--region", "3,5,40,50")
    assert dciodvfy_errors(files["SR"]) == []
    sr = hd.sr.srread(files["SR"])
    (group,) = sr.content.get_image_measurement_groups(finding_type=PNEUMOCONIOSIS)
    assert analysed_region(group, src.SOPInstanceUID) == [3, 5, 40, 5, 40, 50, 3, 50, 3, 5]


def test_same_source_and_model_give_the_same_sr(write_sr, utf8_source, tmp_path):
    first = run_writer(write_sr, utf8_source, tmp_path / "a")["SR"]
    again = run_writer(write_sr, utf8_source, tmp_path / "b")["SR"]
    other_model = run_writer(
        write_sr, utf8_source, tmp_path / "c", "--contract-sha256", "ab" * 32
    )["SR"]
    other_node = run_writer(write_sr, utf8_source, tmp_path / "d", "--ae-title", "PNEUMO2")["SR"]
    a, b, c, d = (pydicom.dcmread(p) for p in (first, again, other_model, other_node))
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a.SOPInstanceUID.startswith("2.25.")
    assert c.SOPInstanceUID != a.SOPInstanceUID
    assert d.SOPInstanceUID != a.SOPInstanceUID
    # one series per node, image and model
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert len({a.SeriesInstanceUID, c.SeriesInstanceUID, d.SeriesInstanceUID}) == 3


def test_patient_study_attributes_of_a_screening_are_copied_where_the_iod_has_them(
    write_sr, utf8_source, tmp_path
):
    """Type 3 attributes a screening programme's source may carry (smoking
    status, admitting diagnosis codes, ...) reach the SR and
    the companion image, in their modules: no validator error, and nothing
    the IOD does not define."""
    ds = pydicom.dcmread(utf8_source)
    diagnosis = Dataset()
    diagnosis.CodeValue = "J60"
    diagnosis.CodingSchemeDesignator = "I10"
    diagnosis.CodeMeaning = "Coalworker's pneumoconiosis"
    ds.AdmittingDiagnosesCodeSequence = [diagnosis]
    ds.Occupation = "Coal miner"
    ds.SmokingStatus = "YES"
    ds.MedicalAlerts = "none"
    ds.Allergies = "none"
    ds.PregnancyStatus = 4
    ds.PatientSexNeutered = "UNALTERED"
    source = tmp_path / "screening.dcm"
    ds.save_as(source, enforce_file_format=True)
    files = run_writer(write_sr, source, tmp_path / "out", "--companion")
    for kind in ("SR", "SC"):
        out = pydicom.dcmread(files[kind])
        for keyword in ("Occupation", "SmokingStatus", "MedicalAlerts", "Allergies",
                        "PregnancyStatus", "PatientSexNeutered"):
            assert out[keyword].value == ds[keyword].value, (kind, keyword)
        assert out.AdmittingDiagnosesCodeSequence[0].CodeValue == "J60"
        proc = subprocess.run([DCIODVFY, str(files[kind])], capture_output=True, text=True, errors="replace")
        lines = (proc.stdout + proc.stderr).splitlines()
        assert [l for l in lines if l.startswith("Error")] == [], kind
        assert [l for l in lines if "not present in standard DICOM IOD" in l] == [], kind


def test_uid_root(write_sr, utf8_source, tmp_path):
    root = "1.2.826.0.1.3680043.10.543"
    sr = pydicom.dcmread(run_writer(write_sr, utf8_source, tmp_path, "--uid-root", root)["SR"])
    assert sr.SOPInstanceUID.startswith(root + ".")
    assert len(sr.SOPInstanceUID) <= 64
    assert dciodvfy_errors(Path(run_writer(write_sr, utf8_source, tmp_path / "x")["SR"])) == []


@pytest.mark.parametrize("source_path", ["rg1", "utf8", "latin1"], indirect=True)
@pytest.mark.parametrize("weights", ["trained", "random-demo"])
def test_companion_secondary_capture(write_sr, source_path, tmp_path, weights):
    source = source_path
    src = pydicom.dcmread(source, stop_before_pixels=True)
    files = run_writer(write_sr, source, tmp_path, "--companion", "--weights", weights)
    assert "SC" in files
    sc_path = files["SC"]
    assert dciodvfy_errors(sc_path) == []
    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert str(sc.PatientName) == str(src.PatientName)
    pixels = sc.pixel_array
    assert pixels.shape == (sc.Rows, sc.Columns)
    assert max(sc.Rows, sc.Columns) <= 1024 + 400  # image plus the text banner
    assert pixels.max() == 255  # the white text
    if weights == "random-demo":
        assert sc.SeriesDescription.startswith(DEMO_MARK)
        assert sc.ImageComments.startswith(DEMO_MARK)  # what viewers overlay
    else:
        assert DEMO_MARK not in sc.ImageComments
    assert "probability" in sc.ImageComments
    sr = pydicom.dcmread(files["SR"])
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID
