"""Peak memory of a node sent K Deflated data sets at once, each a few
hundred kilobytes on the wire that inflate to MB mebibytes (zeros in a
private OB): docs/BENCHMARKS.md. Usage:

    .venv/bin/python tests/bench/deflate_memory.py K MB BINARY [BINARY ...]

Each binary serves its own fresh data directory on the demo model; the
figure is its VmHWM (peak resident set) from /proc after the K stores."""

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

ROOT = Path(__file__).resolve().parents[2]
CR = "1.2.840.10008.5.1.4.1.1.1"


def deflated(path: Path, mb: int) -> None:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "CR", "BENCH^DEFLATE", "BENCH"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64 * 64, dtype=np.uint16).tobytes()
    ds.add_new(0x00090010, "LO", "BENCH")
    ds.add_new(0x00091000, "OB", bytes(mb << 20))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CR, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def store(port: int, path: Path, out: list) -> None:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(CR, DeflatedExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
    status = assoc.send_c_store(pydicom.dcmread(path)) if assoc.is_established else None
    out.append(getattr(status, "Status", None))
    assoc.release()


def peak_mib(binary: str, files: list) -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        port, http = 14990, 14991
        env = {**os.environ, "PNEUMO__NODE__DATA_DIR": f"{tmp}/var", "PNEUMO__DICOM__PORT": str(port),
               "PNEUMO__HTTP__PORT": str(http), "PNEUMO__ROUTING__ANALYSE_MODALITIES": "DX"}
        node = subprocess.Popen([binary, "serve"], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            time.sleep(4)
            statuses = []
            threads = [threading.Thread(target=store, args=(port, f, statuses)) for f in files]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            hwm = next(int(l.split()[1]) for l in Path(f"/proc/{node.pid}/status").read_text().splitlines()
                       if l.startswith("VmHWM:"))
            return hwm >> 10, statuses
        finally:
            node.terminate()
            node.wait(30)


def main() -> None:
    k, mb, binaries = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"{n}.dcm" for n in range(k)]
        for f in files:
            deflated(f, mb)
        print(f"{k} data sets at once, {files[0].stat().st_size} bytes each, inflating to {mb} MiB")
        for binary in binaries:
            peak, statuses = peak_mib(binary, files)
            print(f"{binary}: peak RSS {peak} MiB, statuses {statuses}")


if __name__ == "__main__":
    main()
