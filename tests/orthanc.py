"""Orthanc as the PACS: started on free ports with a temporary configuration."""

import json
import subprocess
import time
from pathlib import Path

import requests

from nodetest import free_port, wait_for_port

ORTHANC = "/usr/sbin/Orthanc"


class Orthanc:
    def __init__(self, workdir: Path, dicom_port: int = None, modalities: dict = None):
        """`modalities`: Orthanc's DicomModalities, name -> [AE title, host, port]."""
        self.workdir = workdir
        self.modalities = modalities or {}
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.ae_title = "ORTHANC"
        self.proc = None

    def start(self) -> "Orthanc":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pneumo-node-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "Plugins": [],
            "SaveJobs": False,
            "DicomModalities": self.modalities,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=log)
        wait_for_port(self.http_port, self.proc, timeout=60)
        wait_for_port(self.dicom_port, self.proc, timeout=60)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str):
        r = requests.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=10)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body):
        """POST raw bytes, or JSON for anything else; the parsed answer."""
        url = f"http://127.0.0.1:{self.http_port}{path}"
        if isinstance(body, bytes):
            r = requests.post(url, data=body, timeout=60)
        else:
            r = requests.post(url, json=body, timeout=120)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list:
        """Main DICOM tags of every stored instance."""
        return [self.get(f"/instances/{i}/tags?simplify") for i in self.get("/instances")]

    def sop_uids(self) -> set:
        return {t["SOPInstanceUID"] for t in self.instances()}

    def wait_for_count(self, n: int, timeout: float = 60) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.get("/instances")) >= n:
                return self.instances()
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc holds {len(self.get('/instances'))} instances, expected {n}")
