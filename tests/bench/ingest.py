"""Ingest benchmark (docs/BENCHMARKS.md): 200 copies of RG1_UNCI sent by
DCMTK storescu (TCP_NODELAY=1) over 1 and 4 associations, to pneumo-node
(fsync on) and to DCMTK storescp (no fsync), beside the disk's own ceiling
(the same bytes written as 200 files, each fsync'd). All in one run.

    .venv/bin/python tests/bench/ingest.py [--n 200] [--repeat 3] [--workdir var/bench]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nodetest import DCMTK, copy_with_new_uids, data_store, free_port, node_binary, wait_for_port  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
NODE_IDLE_RSS = float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / CLK


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send(port: int, ae: str, files, parallel: int) -> float:
    env = dict(os.environ, TCP_NODELAY="1")
    chunks = [files[i::parallel] for i in range(parallel)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([str(DCMTK / "storescu"), "-aec", ae, "127.0.0.1", str(port), *map(str, c)], env=env)
        for c in chunks
    ]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"storescu failed ({p.returncode})")
    return time.perf_counter() - start


def disk_ceiling(files, out: Path, writers: int = 1) -> float:
    """Writes the files' bytes as new files, each fsync'd, from `writers` threads."""
    import threading

    out.mkdir(parents=True, exist_ok=True)
    payloads = [f.read_bytes() for f in files]

    def write(indices):
        for i in indices:
            fd = os.open(out / f"{i}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, payloads[i])
            os.fsync(fd)
            os.close(fd)

    threads = [threading.Thread(target=write, args=(range(w, len(payloads), writers),)) for w in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dir_fd = os.open(out, os.O_RDONLY)
    os.fsync(dir_fd)
    os.close(dir_fd)
    return time.perf_counter() - start


def run_storescp(files, work: Path, parallel: int):
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    args = [str(DCMTK / "storescp"), "-aet", "STORESCP", "-od", str(out), str(port)]
    if parallel > 1:
        args.insert(1, "--fork")
    proc = subprocess.Popen(args, env=dict(os.environ, TCP_NODELAY="1"), stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    cpu0 = cpu_seconds(proc.pid)
    secs = send(port, "STORESCP", files, parallel)
    time.sleep(0.5)  # let forked children finish and be reaped
    cpu = cpu_seconds(proc.pid) - cpu0
    rss = peak_rss_mb(proc.pid)
    proc.terminate()
    proc.wait()
    return secs, cpu, rss


def run_node(files, work: Path, parallel: int):
    data = work / "node"
    shutil.rmtree(data, ignore_errors=True)
    port = free_port()
    env = dict(os.environ, PNEUMO__NODE__DATA_DIR=str(data), PNEUMO__DICOM__PORT=str(port), PNEUMO__LOG__LEVEL="warn")
    proc = subprocess.Popen([str(node_binary()), "serve"], env=env)
    wait_for_port(port, proc)
    global NODE_IDLE_RSS
    NODE_IDLE_RSS = peak_rss_mb(proc.pid)
    cpu0 = cpu_seconds(proc.pid)
    secs = send(port, "PNEUMO", files, parallel)
    cpu = cpu_seconds(proc.pid) - cpu0
    rss = peak_rss_mb(proc.pid)
    proc.terminate()
    proc.wait()
    return secs, cpu, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("var/bench"))
    a = ap.parse_args()
    src = a.workdir / "rg1"
    src.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.dcm"))[: a.n]
    for i in range(len(files), a.n):
        copy_with_new_uids(data_store() / "RG1_UNCI.dcm", src / f"{i:04d}.dcm")
    files = sorted(src.glob("*.dcm"))[: a.n]
    mb = sum(f.stat().st_size for f in files) / 1e6

    rows = {}
    for _ in range(a.repeat):
        for writers in (1, 4):
            name = f"disk: the same bytes as files, each fsync'd, {writers} writer{'s' if writers > 1 else ''}"
            rows.setdefault(name, []).append((disk_ceiling(files, a.workdir / "disk", writers), 0, 0))
            shutil.rmtree(a.workdir / "disk")
        for parallel in (1, 4):
            rows.setdefault(f"DCMTK storescp{' --fork' if parallel > 1 else ''}, {parallel} assoc", []).append(
                run_storescp(files, a.workdir, parallel)
            )
            rows.setdefault(f"pneumo-node (fsync), {parallel} assoc", []).append(run_node(files, a.workdir, parallel))

    print(f"{a.n} x RG1_UNCI ({mb / a.n:.1f} MB each), median of {a.repeat} runs")
    print(f"| receiver | images/s | MB/s | receiver CPU s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    med = {}
    for name, runs in rows.items():
        secs = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        med[name] = a.n / secs
        cpu_s = f"{cpu:.2f}" if cpu else "-"
        rss_s = f"{rss:.0f}" if rss else "-"
        print(f"| {name} | {a.n / secs:.1f} | {mb / secs:.0f} | {cpu_s} | {rss_s} |")
    disk = med["disk: the same bytes as files, each fsync'd, 1 writer"]
    disk4 = med["disk: the same bytes as files, each fsync'd, 4 writers"]
    print()
    print(f"node idle RSS: {NODE_IDLE_RSS:.0f} MB")
    print(f"node 1 assoc / disk ceiling (1 writer): {med['pneumo-node (fsync), 1 assoc'] / disk:.2f}")
    print(f"node 4 assoc / disk ceiling (4 writers): {med['pneumo-node (fsync), 4 assoc'] / disk4:.2f}")
    print(f"node 1 assoc / storescp 1 assoc: {med['pneumo-node (fsync), 1 assoc'] / med['DCMTK storescp, 1 assoc']:.2f}")
    print(f"node 4 assoc / storescp --fork 4 assoc: {med['pneumo-node (fsync), 4 assoc'] / med['DCMTK storescp --fork, 4 assoc']:.2f}")


if __name__ == "__main__":
    main()
