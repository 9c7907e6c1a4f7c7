"""Fixtures of the imaging parity tests.

The small files under fixtures/imaging/ are committed; the full-size RG1 set
is generated here with DCMTK and pydicom into var/test-fixtures/imaging/
(gitignored), once: files already present are kept.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reference"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SMALL_DIR = ROOT / "fixtures" / "imaging"
BIG_DIR = ROOT / "var" / "test-fixtures" / "imaging"


@pytest.fixture(scope="session")
def node_bin() -> str:
    path = os.environ.get("PNEUMO_NODE_BIN") or str(ROOT / "target" / "release" / "pneumo-node")
    if not Path(path).is_file():
        pytest.fail(f"pneumo-node binary not found at {path}: build it (cargo build --release) or set PNEUMO_NODE_BIN")
    return path


@pytest.fixture(scope="session")
def big_fixtures() -> dict[str, Path]:
    import imaging_fixtures  # tests/imaging/imaging_fixtures.py

    made = imaging_fixtures.make_big(BIG_DIR)
    out = {p.stem: p for p in made}
    from pydicom.data import get_testdata_file

    for name in ("RG1_UNCI", "RG1_J2KR", "RG1_J2KI"):
        out[name] = Path(get_testdata_file(f"{name}.dcm"))
    return out
