"""Helpers and fixtures of the end-to-end tests: the node binary started on free
ports with its own data directory, DCMTK tools, and test radiographs."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
DCMTK = Path("/usr/bin")


def node_binary() -> Path:
    path = Path(os.environ.get("PNEUMO_NODE_BIN", ROOT / "target/release/pneumo-node"))
    if not path.exists():
        pytest.exit(f"{path} not built: run `cargo build --release` (make test does)", 2)
    return path


def data_store() -> Path:
    """Files of the pydicom-data package (RG1 is a real CR chest radiograph)."""
    import data_store  # installed by pydicom-data

    return Path(next(iter(data_store.__path__))) / "data"


_PORTS_GIVEN: set = set()


def free_port() -> int:
    """A port free now and not handed out before in this run: the kernel
    may offer a just-closed port again, and a node's DICOM and HTTP ports
    (or Orthanc's) are chosen before either is bound."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


class Node:
    """A pneumo-node process with its own port and data directory."""

    def __init__(self, workdir: Path, **settings):
        self.workdir = workdir
        self.data_dir = workdir / "var"
        self.port = free_port()
        self.http_port = free_port()
        self.ae_title = "PNEUMO"
        self.settings = settings
        self.proc = None
        self.log_path = workdir / "node.log"

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "PNEUMO__NODE__DATA_DIR": str(self.data_dir),
                "PNEUMO__DICOM__PORT": str(self.port),
                "PNEUMO__HTTP__PORT": str(self.http_port),
                "PNEUMO__DICOM__AE_TITLE": self.ae_title,
                "PNEUMO__LOG__LEVEL": "info",
            }
        )
        for key, value in self.settings.items():
            env[f"PNEUMO__{key.upper()}"] = str(value)
        return env

    def start(self, config_file: Path = None) -> "Node":
        """Starts the node; a restart without `config_file` reuses the last one."""
        self.config_file = config_file or getattr(self, "config_file", None)
        args = [str(node_binary())]
        if self.config_file:
            args += ["--config", str(self.config_file)]
        args.append("serve")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, env=self.env(), stdout=log, stderr=log, cwd=self.workdir)
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "pneumo-node.sqlite")

    def database_at_rest(self) -> Path:
        """The stopped node's database file, alone: this process's own
        connections closed first (SQLite shares one lock and shared-memory
        state per file in a process, and a stale one would see a file put
        in its place as damaged), its -wal and -shm removed."""
        import gc

        gc.collect()
        db = self.data_dir / "pneumo-node.sqlite"
        for extra in ("-wal", "-shm"):
            db.with_name(db.name + extra).unlink(missing_ok=True)
        return db

    def count(self, sql: str, *params) -> int:
        with self.db() as c:
            return c.execute(sql, params).fetchone()[0]

    def instance_rows(self, sop_uid: str) -> int:
        return self.count("SELECT COUNT(*) FROM instances WHERE sop_instance_uid = ?", sop_uid)

    def stored_path(self, ds: pydicom.Dataset) -> Path:
        return self.data_dir / "instances" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"

    def wait_for_analyses(self, timeout: float = 120) -> None:
        """Until no job is waiting or analysing (reports are spooled too, so
        the spool is only empty once they are stored)."""
        deadline = time.monotonic() + timeout
        while self.count("SELECT COUNT(*) FROM jobs WHERE state IN ('received', 'queued', 'analysing')"):
            assert time.monotonic() < deadline, "analyses still running"
            time.sleep(0.2)

    def spool_files(self) -> list:
        spool = self.data_dir / "spool"
        return list(spool.iterdir()) if spool.exists() else []

    def instance_files(self) -> list:
        return sorted((self.data_dir / "instances").rglob("*")) if (self.data_dir / "instances").exists() else []

    def http(self, path: str):
        """GET on the node's HTTP port: (status code, parsed JSON or text)."""
        import requests

        r = requests.get(f"http://127.0.0.1:{self.http_port}{path}", timeout=10)
        is_json = r.headers.get("content-type", "").startswith("application/json")
        return r.status_code, (r.json() if is_json else r.text)

    def echo_ok(self) -> bool:
        r = subprocess.run(
            [DCMTK / "echoscu", "-aec", self.ae_title, "127.0.0.1", str(self.port)],
            capture_output=True,
            timeout=30,
        )
        return r.returncode == 0


@pytest.fixture
def node_factory(tmp_path):
    nodes = []

    def make(**settings) -> Node:
        node = Node(tmp_path / f"node{len(nodes)}", **settings)
        node.workdir.mkdir(parents=True)
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture
def node(node_factory):
    return node_factory().start()


def demo_model_with(out: Path, **contract) -> Path:
    """A copy of the demo model at `out` with some contract values changed:
    `demo_model_with(p, crop_mode="lung-box")` sets `pneumo.crop_mode`."""
    import onnx

    model = onnx.load(str(ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"))
    props = {p.key: p for p in model.metadata_props}
    for key, value in contract.items():
        props[f"pneumo.{key}"].value = str(value)
    onnx.save(model, str(out))
    return out


def copy_with_new_uids(src: Path, dst: Path, new_study: bool = False) -> pydicom.Dataset:
    """A copy of `src` with a fresh SOP Instance UID (and study and series
    when asked), in the same transfer syntax; pixel data untouched."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if new_study:
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
    ds.save_as(dst, enforce_file_format=True)
    return ds


@pytest.fixture(scope="session")
def rg1_copies(tmp_path_factory):
    """copies(kind, n): n copies of RG1 (kind 'UNCI' or 'J2KR') with fresh UIDs."""
    base = tmp_path_factory.mktemp("rg1")
    made = {}

    def copies(kind: str, n: int) -> list:
        have = made.setdefault(kind, [])
        while len(have) < n:
            dst = base / f"{kind}_{len(have):03d}.dcm"
            copy_with_new_uids(data_store() / f"RG1_{kind}.dcm", dst)
            have.append(dst)
        return have[:n]

    return copies


def procedure_reported(sr: pydicom.Dataset):
    """The Concept Code of an SR's (121058, DCM, "Procedure reported"), or None."""
    stack = list(sr.ContentSequence)
    while stack:
        it = stack.pop()
        name = it.get("ConceptNameCodeSequence")
        if name and name[0].CodeValue == "121058":
            return it.ConceptCodeSequence[0]
        stack.extend(it.get("ContentSequence", []))
    return None


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its File Meta Information."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM", path
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


def same_dataset(a: Path, b: Path) -> bool:
    """Element-by-element equality of two files' data sets (pixel data
    included). DCMTK's storescu re-encodes sequence lengths on the wire, so
    what it sends equals its file in content, not byte for byte."""
    return pydicom.dcmread(a) == pydicom.dcmread(b)


def run_dcmtk(tool: str, *args, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([str(DCMTK / tool), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{tool} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def which_or_skip(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is not installed (make deps installs it)")
    return path
