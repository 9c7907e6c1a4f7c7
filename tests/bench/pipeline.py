"""Pipeline benchmark (docs/BENCHMARKS.md), tiny demo model on the CPU.

1. Latency: 100 radiographs (RG1_UNCI copies) sent one per 100 ms over one
   association; for each, the time from its C-STORE-RSP to its SR stored in
   Orthanc: the SR's outbox row turning `sent` (after Orthanc's C-STORE-RSP)
   minus the instance's commit, which precedes the RSP by well under a ms.
2. Throughput: 200 radiographs sent at once by one storescu; images/s from
   the first commit to the last SR stored in Orthanc, the per-phase times
   the node records for each job, and beside it in the same run the model
   alone through the batcher (crates/inference/examples/inference_bench.rs).

    cargo build --release --workspace --examples
    .venv/bin/python tests/bench/pipeline.py [--workdir var/bench]
"""

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nodetest import ROOT, DCMTK, copy_with_new_uids, data_store, free_port, node_binary, wait_for_port  # noqa: E402
from orthanc import Orthanc  # noqa: E402


def start_node(work: Path, pacs: Orthanc):
    data = work / "node"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    cfg = data / "node.toml"
    cfg.write_text(
        f'[[destinations]]\nname = "pacs"\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\n'
        f"port = {pacs.dicom_port}\nresults = true\n"
    )
    port = free_port()
    env = dict(
        os.environ,
        PNEUMO__NODE__DATA_DIR=str(data / "var"),
        PNEUMO__DICOM__PORT=str(port),
        PNEUMO__HTTP__PORT=str(free_port()),
        PNEUMO__LOG__LEVEL="warn",
    )
    proc = subprocess.Popen([str(node_binary()), "--config", str(cfg), "serve"], env=env, cwd=ROOT)
    wait_for_port(port, proc, timeout=60)
    return proc, port, data / "var" / "pneumo-node.sqlite"


def wait_delivered(db: Path, n: int, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as c:
            if c.execute("SELECT COUNT(*) FROM jobs WHERE state = 'delivered'").fetchone()[0] >= n:
                return
        time.sleep(0.2)
    raise TimeoutError("SRs not delivered")


def rows(db: Path):
    with sqlite3.connect(db) as c:
        return c.execute(
            """SELECT i.received_at_ms, o.updated_at_ms, j.result_json, j.updated_at_ms
               FROM jobs j JOIN instances i ON i.id = j.instance_id
               JOIN outbox o ON o.instance_id = j.sr_instance_id AND o.state = 'sent'"""
        ).fetchall()


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, default=Path("var/bench"))
    a = ap.parse_args()
    src = a.workdir / "pipeline-rg1"
    src.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.dcm"))
    for i in range(len(files), 300):
        copy_with_new_uids(data_store() / "RG1_UNCI.dcm", src / f"{i:04d}.dcm", new_study=True)
    files = sorted(src.glob("*.dcm"))

    # The model alone through the batcher, same machine, same run.
    model = ROOT / "fixtures/models/pneumollm-tiny.onnx"
    out = subprocess.run(
        [str(ROOT / "target/release/examples/inference_bench"), str(model), "0", "5", "batcher", "8"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    batcher = [json.loads(l) for l in out.splitlines() if l.startswith("{")][-1]
    print("model alone (batcher, max_batch 8):", json.dumps(batcher))

    procs = []
    pacs = Orthanc(a.workdir / "orthanc-bench")
    shutil.rmtree(pacs.workdir, ignore_errors=True)
    pacs.start()
    try:
        # 1. latency, one image per 100 ms
        from pynetdicom import AE
        from pynetdicom.sop_class import ComputedRadiographyImageStorage

        proc, port, db = start_node(a.workdir, pacs)
        procs.append(proc)
        ae = AE(ae_title="BENCH")
        ae.add_requested_context(ComputedRadiographyImageStorage, ["1.2.840.10008.1.2"])
        assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMO")
        import pydicom

        datasets = [pydicom.dcmread(f) for f in files[:100]]
        for ds in datasets:
            t = time.monotonic()
            assert assoc.send_c_store(ds).Status == 0
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
        assoc.release()
        wait_delivered(db, 100)
        lat = [sent - received for received, sent, _, _ in rows(db)]
        print(f"latency C-STORE-RSP -> SR in Orthanc, 100 images at 10/s: p50 {pct(lat, 50):.0f} ms, "
              f"p99 {pct(lat, 99):.0f} ms, max {max(lat):.0f} ms")
        proc.terminate()
        proc.wait()

        # 2. throughput, 200 at once
        proc, port, db = start_node(a.workdir, pacs)
        procs.append(proc)
        env = dict(os.environ, TCP_NODELAY="1")
        subprocess.run([str(DCMTK / "storescu"), "-aec", "PNEUMO", "127.0.0.1", str(port), *map(str, files[100:300])],
                       check=True, env=env)
        wait_delivered(db, 200)
        r = rows(db)
        first = min(x[0] for x in r)
        last = max(x[1] for x in r)
        wall = (last - first) / 1000
        phases = {k: [json.loads(x[2])["timings_ms"][k] for x in r] for k in ("imaging", "inference", "report")}
        proc.terminate()
        proc.wait()
        received = sorted(x[0] for x in r)
        reported = sorted(x[3] for x in r)  # delivered; the SR was sent then
        arrival = 180 / ((received[189] - received[9]) / 1000)
        completion = 180 / ((reported[189] - reported[9]) / 1000)
        print(f"arrival rate {arrival:.1f} images/s, completion rate {completion:.1f} images/s (10th to 190th)")
        print(f"throughput, 200 at once: {200 / wall:.1f} images/s ({wall:.1f} s from first commit to last SR in Orthanc)")
        for k, v in phases.items():
            print(f"  per job {k}: mean {statistics.mean(v):.1f} ms, p50 {pct(v, 50):.1f} ms")
        model_ips = batcher["images_per_s"] if "images_per_s" in batcher else batcher.get("ips")
        if model_ips:
            print(f"pipeline / model alone: {200 / wall / model_ips:.2f} of the batcher's {model_ips:.1f} images/s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        pacs.stop()


if __name__ == "__main__":
    main()
