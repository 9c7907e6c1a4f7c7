#!/usr/bin/env python3
"""The GPU checks of the model and inference issues, in one run.

On a GPU machine (see scripts/gpu/README.md), with its PyTorch and ONNX
Runtime with the CUDA provider on PYTHONPATH:

    python model/gpu_check.py --work /tmp/gpucheck --out OUT/gpu_check.json

1. Picks the attention form: the tiny model exported with `--attention
   ort-mha` must build under the CUDA provider with no CPU fallback and
   match PyTorch; else the full model is exported with `explicit`.
2. Exports `full` with seeded random weights in fp16 on the GPU, in the
   fused form with the adapters folded (`--form fused`, as
   docs/model-export.md recommends for CUDA; `--form plain` for the
   unfused graph).
3. Builds an ONNX Runtime CUDA session refusing any CPU node
   (`session.disable_cpu_ep_fallback`), and records ONNX Runtime's
   warnings (the "Memcpy nodes are added" one in particular).  A fused
   graph refused outright is exported again plain; a refused `ort-mha`
   graph, with explicit attention.
4. Compares ONNX Runtime CUDA with PyTorch fp16 on the same input
   (relative error = max |ort - torch| / max |torch| on the logits); the
   PyTorch side is the reference form (unfused, adapters not folded).
5. Times PyTorch eager (with its fused attention kernel, `--torch-attention
   sdpa`) and ONNX Runtime CUDA (host tensors in and out, as the node runs
   it, and with I/O bound on the GPU, as PyTorch has it) at each batch
   size, alternating rounds, same inputs.

`--stage export` stops after step 2 and `--stage measure` does steps 3–5 on
the graph a previous export left in `--work` (the torch model is rebuilt
from the same seed): two calls when one is too short for both.
`--compare-forms` (with `--config probe`: full-size blocks, two LLaMA
layers) instead exports the plain and the fused graph and times both
against PyTorch eager in the same run.
`--wait-for FILE --ort-python DIR` let the export start before ONNX
Runtime's CUDA build has arrived (scripts/gpu/relay.sh): ONNX Runtime is
imported from DIR once FILE exists. `--table OUT` prints the summary of OUT/gpu_check.json and the Rust
benchmark's OUT/rust.jsonl. `--config tiny --device cpu` runs every step on
the CPU provider (a dry run of the script itself, no GPU needed).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from export import example_input, export_onnx
import onnx

from pneumollm import CONFIGS, build_model, get_config, random_init
from pneumollm.contract import INPUT_NAME, OUTPUT_NAME, contract_metadata, weights_sha256

REL_TOL_FP16 = 1e-2


@contextlib.contextmanager
def stderr_to(path: Path):
    """Sends fd 2 (where ONNX Runtime's C++ logger writes) to `path`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def ort_session(path: Path, device: str, strict: bool, log: Path):
    """(session or None, error text): CUDA with CPU fallback refused when
    `strict`; ONNX Runtime's warnings go to `log`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 2  # warnings: where "Memcpy nodes are added" is logged
    if strict and device == "cuda":
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    providers = [("CUDAExecutionProvider", {"device_id": 0})] if device == "cuda" else ["CPUExecutionProvider"]
    try:
        with stderr_to(log):
            return ort.InferenceSession(str(path), opts, providers=providers), ""
    except Exception as e:  # noqa: BLE001 - the reason is the result
        return None, f"{type(e).__name__}: {e}"


def build(config: str, attention: str, device: str, precision: str, seed: int = 0):
    cfg = get_config(config)
    model = build_model(cfg, attention=attention, device=device, empty=True).set_precision(precision)
    random_init(model, seed)
    model.reset_buffers(device)
    return cfg, model.eval()


FORMS = ("fused", "plain")  # fused: fused operators and folded adapters (export.py --fuse --fold-adapters)


def export(cfg, model, out: Path, precision: str, device: str, form: str = "plain") -> Path:
    # Hashing 13.5 GB costs GPU-machine time; this file is a throwaway
    # benchmark graph, so `full` gets a stand-in hash (said in its name).
    sha = weights_sha256(model.state_dict()) if cfg.name != "full" else hashlib.sha256(
        b"gpu-check stand-in: weights not hashed").hexdigest()
    meta = contract_metadata(cfg, model_name=f"pneumollm-{cfg.name}-gpu-check", model_version="0",
                             weights_kind="random-demo", precision=precision, crop_mode="none",
                             weights_sha=sha)
    fused = form == "fused"
    return export_onnx(model, out, metadata=meta, precision=precision, device=device, fused=fused,
                       fold_adapters=fused)


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def images_per_s(run, batch: int, seconds: float, device: str) -> float:
    run()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        n += 1
    sync(device)
    return n * batch / (time.perf_counter() - t0)


def try_attention(work: Path, device: str, precision: str, log: Path) -> dict:
    """Does the tiny model with the fused attention run on the provider?"""
    cfg, model = build("tiny", "ort-mha", device, precision)
    path = export(cfg, model, work / "tiny-ort-mha.onnx", precision, device)
    sess, err = ort_session(path, device, strict=True, log=log)
    if sess is None:
        return {"attention": "explicit", "ort_mha_error": err}
    x = example_input(model, 2, device, model.visual.conv1.weight.dtype, seed=1)
    with torch.inference_mode():
        ref = model(x).float().cpu().numpy()
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
    rel = rel_error(got, ref)
    ok = rel <= (REL_TOL_FP16 if precision == "fp16" else 1e-4)
    return {"attention": "ort-mha" if ok else "explicit", "tiny_ort_mha_rel_error": rel}


def torch_runner(model, xb):
    """One PyTorch eager call on the GPU-resident batch `xb`."""
    def run():
        with torch.inference_mode():
            return model(xb)
    return run


def ort_gpu_runner(ort, sess, xn: np.ndarray):
    """One ONNX Runtime call with input and output bound on the GPU."""
    binding = sess.io_binding()
    binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(xn, "cuda", 0))
    binding.bind_output(OUTPUT_NAME, "cuda", 0)
    return lambda: sess.run_with_iobinding(binding)


def import_onnxruntime(args):
    """ONNX Runtime, imported only when first needed: with `--wait-for`, the
    export runs while ONNX Runtime's CUDA build is still being delivered to
    the machine (scripts/gpu/relay.sh), and `--ort-python` puts that build
    ahead of whatever onnxruntime the machine's Python has."""
    if args.wait_for:
        marker, t0 = Path(args.wait_for), time.perf_counter()
        while not marker.exists():
            if time.perf_counter() - t0 > args.wait_seconds:
                raise SystemExit(f"{marker} did not appear within {args.wait_seconds} s")
            time.sleep(1)
        print(f"{marker} there after waiting {time.perf_counter() - t0:.0f} s", flush=True)
    if args.ort_python:
        if "onnxruntime" in sys.modules:
            raise SystemExit("onnxruntime was imported before --ort-python could take effect")
        sys.path.insert(0, args.ort_python)
    import onnxruntime as ort

    return ort


def open_session(path: Path, device: str, log: Path, res: dict):
    """The CUDA session with CPU fallback refused; if that cannot be built,
    the error is recorded and the session is built with fallback allowed.
    None when neither builds."""
    t = time.perf_counter()
    sess, err = ort_session(path, device, strict=True, log=log)
    res["no_cpu_fallback"] = sess is not None
    if sess is None:
        res["strict_session_error"] = err[:2000]
        sess, err = ort_session(path, device, strict=False, log=log)
        if sess is None:
            res["session_error"] = err[:2000]
            return None
    res["session_seconds"] = round(time.perf_counter() - t, 1)
    res["session_providers"] = sess.get_providers()
    return sess


KERNEL_CLASSES = (  # first match wins; names as CUDA reports them
    ("attention", ("flash", "fmha", "attention", "attn", "softmax")),
    ("matmul", ("gemm", "gemv", "cutlass", "xmma", "cublas", "matmul")),
    ("norm", ("layernorm", "layer_norm", "rmsnorm", "rms_norm", "skiplayernorm")),
    ("copy", ("memcpy", "memset", "copy")),
)


def summarise_kernels(kernels: list[tuple[str, float]], runs: int, top: int = 15) -> dict:
    """GPU kernel time per run (ms) by kernel class and the `top` kernels,
    from (kernel name, total microseconds) pairs."""
    classes: dict[str, float] = {}
    for name, us in kernels:
        low = name.lower()
        cls = next((c for c, keys in KERNEL_CLASSES if any(k in low for k in keys)), "elementwise/other")
        classes[cls] = classes.get(cls, 0.0) + us / 1e3 / runs
    ranked = sorted(kernels, key=lambda k: -k[1])[:top]
    return {
        "gpu_ms_per_run": round(sum(us for _, us in kernels) / 1e3 / runs, 3),
        "by_class_ms_per_run": {k: round(v, 3) for k, v in sorted(classes.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms_per_run": [[name[:120], round(us / 1e3 / runs, 3)] for name, us in ranked],
    }


def profile_gpu(run, runs: int) -> dict:
    """Where the GPU time of `run` goes: CUDA kernels of the whole process
    (PyTorch's and ONNX Runtime's alike, through CUPTI), `runs` calls."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t) * 1e3 / runs
    kernels = []
    for e in prof.key_averages():
        us = getattr(e, "self_device_time_total", None)
        if us is None:
            us = getattr(e, "self_cuda_time_total", 0.0)
        if us:
            kernels.append((e.key, float(us)))
    return summarise_kernels(kernels, runs) | {"wall_ms_per_run": round(wall_ms, 3)}


def run_facts(args) -> dict:
    """What a result file says of the run it came from."""
    return {
        "config": args.config, "precision": args.precision, "device": args.device,
        "torch": torch.__version__, "python": platform.python_version(),
        "card": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu",
    }


def saver(res: dict, out: str | None):
    """save(step): notes the step, prints it and writes `res` to `out`, so
    that a run cut short still reports what it had."""
    def save(step: str) -> None:
        res["last_step"] = step
        print(f"[{time.strftime('%H:%M:%S')}] {step}", flush=True)
        if out:
            Path(out).write_text(json.dumps(res, indent=1))
    return save


def ort_host_runner(sess, xn: np.ndarray):
    """One ONNX Runtime call with host tensors in and out, as the node runs it."""
    return lambda: sess.run([OUTPUT_NAME], {INPUT_NAME: xn})


def alternate(runs: dict, batch: int, args) -> dict:
    """Images/s of each runner, the runners alternating round by round:
    the median of each, and every round's figure."""
    rounds: dict = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, run in runs.items():
            rounds[k].append(images_per_s(run, batch, args.seconds, args.device))
    return {k: float(np.median(v)) for k, v in rounds.items()} | {"rounds": rounds}


def check(args) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "onnxruntime.log"
    log.write_text("")
    device, precision = args.device, args.precision
    res = run_facts(args)
    save = saver(res, args.out)
    save("start")
    path = work / f"pneumollm-{args.config}-{precision}.onnx"
    exported = work / "export.json"  # what the export stage leaves for the measure stage
    if args.stage in ("export", "all"):
        t = time.perf_counter()
        if args.attention == "pick":  # the pick runs ONNX Runtime before the export
            import_onnxruntime(args)
            res.update(try_attention(work, device, precision, log))
        else:
            res["attention"] = args.attention
        print(f"attention: {res['attention']} ({time.perf_counter() - t:.0f} s)", flush=True)
        t = time.perf_counter()
        cfg, model = build(args.config, res["attention"], device, precision)
        res["build_seconds"] = round(time.perf_counter() - t, 1)
        res["form"] = args.form
        t = time.perf_counter()
        export(cfg, model, path, precision, device, res["form"])
        res["export_seconds"] = round(time.perf_counter() - t, 1)
        res["onnx"] = str(path)
        res["onnx_bytes"] = sum(p.stat().st_size for p in work.glob(path.name + "*"))
        exported.write_text(json.dumps(res))
        save(f"exported {path} in {res['export_seconds']} s")
        if args.stage == "export":
            return res
    else:
        if not exported.exists():
            raise SystemExit(f"no {exported}: run --stage export first (same --work)")
        res = json.loads(exported.read_text()) | res
        t = time.perf_counter()
        cfg, model = build(args.config, res["attention"], device, precision)  # same seed: same weights
        res["rebuild_seconds"] = round(time.perf_counter() - t, 1)

    ort = import_onnxruntime(args)
    res.update(onnxruntime=ort.__version__, ort_providers=ort.get_available_providers())
    save("onnxruntime imported")
    sess = open_session(path, device, log, res)
    if sess is None and res.get("form") == "fused":
        # a fused operator is refused outright: the plain graph, same attention
        res["fused_error"] = res.pop("session_error")
        save("fused graph refused; exporting the plain form")
        res["form"] = "plain"
        export(cfg, model, path, precision, device, res["form"])
        sess = open_session(path, device, log, res)
    if sess is None and res["attention"] == "ort-mha":
        # the fused operator is refused outright: fall back to the plain form
        res["ort_mha_error"] = res.pop("session_error")
        save("ort-mha graph refused; exporting the explicit form")
        model.set_attention("explicit")
        res["attention"] = "explicit"
        export(cfg, model, path, precision, device)
        sess = open_session(path, device, log, res)
    if sess is None:
        save("no ONNX Runtime session")
        raise SystemExit(f"no ONNX Runtime session: {res.get('session_error')}")
    text = log.read_text(errors="replace")
    res["memcpy_warning"] = "Memcpy nodes are added" in text
    res["ort_warnings"] = [line for line in text.splitlines() if "W:onnxruntime" in line][:20]
    save(f"session built in {res['session_seconds']} s on {res['session_providers']}")

    dtype = model.visual.conv1.weight.dtype
    x = example_input(model, 2, device, dtype, seed=1)
    with torch.inference_mode():
        ref = model(x).float().cpu().numpy()
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
    res["rel_error"] = rel_error(got, ref)
    res["max_abs_error"] = float(np.abs(got - ref).max())
    res["logits_torch"], res["logits_ort"] = ref.tolist(), got.tolist()
    save(f"ORT vs torch ({res['attention']} maths): relative error {res['rel_error']:.3g}")

    # PyTorch eager at its best: the fused scaled-dot-product kernel
    model.set_attention(args.torch_attention)
    res["torch_attention"] = args.torch_attention
    timings: dict = {}
    res["images_per_s"] = timings
    for b in args.batches:
        xb = example_input(model, b, device, dtype, seed=2)
        xn = xb.cpu().numpy()
        runs = {"torch": torch_runner(model, xb), "ort_python": ort_host_runner(sess, xn)}
        if device == "cuda":  # input and output left on the GPU, as torch has them
            runs["ort_python_iobinding"] = ort_gpu_runner(ort, sess, xn)
        timings[str(b)] = alternate(runs, b, args)
        save(f"batch {b}: {json.dumps(timings[str(b)])}")
    if args.profile and device == "cuda":
        # at the largest batch: ONNX Runtime with GPU-bound I/O, then PyTorch
        b = max(args.batches)
        xb = example_input(model, b, device, dtype, seed=2)
        res["profile"] = {"batch": b}
        for side in ("ort_python_iobinding", "torch"):
            try:
                run = torch_runner(model, xb) if side == "torch" else ort_gpu_runner(ort, sess, xb.cpu().numpy())
                res["profile"][side] = profile_gpu(run, args.profile)
            except Exception as e:  # noqa: BLE001 - a profile is extra; the figures above stand
                res["profile"][side] = {"error": f"{type(e).__name__}: {e}"[:500]}
            save(f"profiled {side} at batch {b}: {json.dumps(res['profile'][side])[:1500]}")
    save("done")
    return res


def compare_forms(args) -> dict:
    """The plain and the fused graph (`FORMS`) of one configuration, side by
    side in one run on one card: parity with the reference PyTorch model,
    graph nodes, and images/s of each against PyTorch eager.  Meant for
    `--config probe` (full-size blocks, exports in seconds)."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "onnxruntime-forms.log"
    log.write_text("")
    device, precision = args.device, args.precision
    res = run_facts(args) | {"attention": "ort-mha", "forms": {}}
    save = saver(res, args.out)

    cfg, model = build(args.config, "ort-mha", device, precision)
    dtype = model.visual.conv1.weight.dtype
    x = example_input(model, 2, device, dtype, seed=1)
    with torch.inference_mode():
        ref = model(x).float().cpu().numpy()
    paths = {}
    for form in FORMS:
        t = time.perf_counter()
        paths[form] = export(cfg, model, work / f"pneumollm-{cfg.name}-{precision}-{form}.onnx", precision, device,
                             form)
        graph = onnx.load(str(paths[form]), load_external_data=False).graph
        res["forms"][form] = {"export_seconds": round(time.perf_counter() - t, 1),
                              "nodes": sum(1 for n in graph.node if n.op_type != "Constant")}
        save(f"exported {form}: {res['forms'][form]}")
    ort = import_onnxruntime(args)
    res["onnxruntime"] = ort.__version__
    sessions = {}
    for form, path in paths.items():
        r = res["forms"][form]
        sess = open_session(path, device, log, r)
        if sess is not None:
            sessions[form] = sess
            r["rel_error"] = rel_error(sess.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0], ref)
        save(f"session {form}: {json.dumps(r)[:600]}")
    model.set_attention(args.torch_attention)
    res["torch_attention"] = args.torch_attention
    res["images_per_s"] = {}
    for b in args.batches:
        xb = example_input(model, b, device, dtype, seed=2)
        xn = xb.cpu().numpy()
        runs = {"torch": torch_runner(model, xb)}
        for form, sess in sessions.items():
            runs[form] = ort_gpu_runner(ort, sess, xn) if device == "cuda" else ort_host_runner(sess, xn)
        res["images_per_s"][str(b)] = alternate(runs, b, args)
        save(f"batch {b}: {json.dumps(res['images_per_s'][str(b)])}")
    save("done")
    return res


def forms_table(res: dict) -> str:
    io = "GPU-bound I/O" if res["device"] == "cuda" else "host I/O"
    lines = [f"forms compared: {res['config']} {res['precision']}, attention {res['attention']}, "
             f"card {res['card']}, torch {res['torch']}, onnxruntime {res.get('onnxruntime')}; "
             f"ONNX Runtime with {io}; last step: {res.get('last_step')}"]
    for form, r in res["forms"].items():
        lines.append(f"- {form}: {r.get('nodes')} nodes, export {r.get('export_seconds')} s, "
                     f"no CPU fallback {r.get('no_cpu_fallback')}, relative error {r.get('rel_error', float('nan')):.3g}"
                     + (f", session error {r['session_error'][:300]}" if "session_error" in r else ""))
    lines += ["", "| batch | PyTorch eager img/s | " + " | ".join(f"ORT {f} | / torch" for f in FORMS)
              + " | fused / plain |", "| ---: | ---: |" + " ---: | ---: |" * len(FORMS) + " ---: |"]
    for b, t in res.get("images_per_s", {}).items():
        cells = [f"{t[f]:.1f} | {t[f] / t['torch']:.2f}" if f in t else "- | -" for f in FORMS]
        ratio = f"{t['fused'] / t['plain']:.2f}" if "fused" in t and "plain" in t else "-"
        lines.append(f"| {b} | {t['torch']:.1f} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def table(out: Path) -> str:
    res = json.loads((out / "gpu_check.json").read_text())
    rust: dict = {}
    rust_batcher = None
    provider = "not run"
    rust_file = out / "rust.jsonl"
    if rust_file.exists():
        for line in rust_file.read_text().splitlines():
            if line.startswith("{"):
                d = json.loads(line)
                if "execution_provider" in d:
                    provider = d["execution_provider"]
                elif d.get("mode") == "session":
                    rust[str(d["batch"])] = d["images_per_s"]
                elif d.get("mode") == "batcher":
                    rust_batcher = d
    ep = "CUDA" if res["device"] == "cuda" else "CPU"
    lines = [
        f"card: {res['card']}; torch {res['torch']}; onnxruntime {res.get('onnxruntime')}; "
        f"{res['config']} {res['precision']}; exported attention {res.get('attention')}, "
        f"form {res.get('form', 'plain')}; "
        f"PyTorch timed with {res.get('torch_attention', 'the exported form')} attention",
        f"export {res.get('export_seconds')} s, {res.get('onnx_bytes', 0) / 1e9:.2f} GB; "
        f"session {res.get('session_seconds')} s on {res.get('session_providers')}",
        f"ORT {ep} vs torch: relative error {res.get('rel_error', float('nan')):.3g} (limit {REL_TOL_FP16})",
        f"no CPU fallback: {res.get('no_cpu_fallback')}; Memcpy warning: {res.get('memcpy_warning')}; "
        f"Rust execution provider: {provider}",
        f"last step: {res.get('last_step')}",
        "",
        f"| batch | PyTorch eager img/s | ORT {ep} Python, host I/O | ratio to torch "
        f"| ORT {ep} Python, GPU I/O | ratio | Rust (pneumo-inference) | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def cell(v, base):
        return f"{v:.1f} | {v / base:.2f}" if v else "- | -"

    for b, t in res.get("images_per_s", {}).items():
        lines.append(f"| {b} | {t['torch']:.1f} | {cell(t.get('ort_python'), t['torch'])} | "
                     f"{cell(t.get('ort_python_iobinding'), t['torch'])} | {cell(rust.get(b), t['torch'])} |")
    for side, p in (res.get("profile") or {}).items():
        if isinstance(p, dict) and "by_class_ms_per_run" in p:
            classes = ", ".join(f"{k} {v:.1f}" for k, v in p["by_class_ms_per_run"].items())
            lines.append(f"\nprofile, {side} at batch {res['profile']['batch']}: {p['wall_ms_per_run']:.1f} ms "
                         f"per run, GPU kernels {p['gpu_ms_per_run']:.1f} ms ({classes})")
    if rust_batcher:
        lines.append(f"\nRust through the node's batcher (max batch {rust_batcher['batch']}): "
                     f"{rust_batcher['images_per_s']:.1f} img/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "gpucheck"))
    p.add_argument("--out", help="write the results here (JSON)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--precision", choices=["fp16", "fp32"], default=None, help="default fp16 on cuda, fp32 on cpu")
    p.add_argument("--attention", choices=["pick", "ort-mha", "explicit", "sdpa"], default="pick")
    p.add_argument("--form", choices=FORMS, default="fused",
                   help="fused: ONNX Runtime's fused operators, adapters folded; plain: neither")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    p.add_argument("--stage", choices=["all", "export", "measure"], default="all",
                   help="export only, or measure a graph a previous --stage export left in --work "
                        "(two calls when one is too short for both)")
    p.add_argument("--torch-attention", choices=["sdpa", "explicit"], default="sdpa",
                   help="attention form PyTorch eager is timed with (sdpa: its fused kernel)")
    p.add_argument("--ort-python", metavar="DIR", help="import onnxruntime from DIR (its CUDA build)")
    p.add_argument("--wait-for", metavar="FILE",
                   help="after the export, wait for FILE before importing onnxruntime "
                        "(ONNX Runtime still being delivered while the export runs)")
    p.add_argument("--wait-seconds", type=float, default=900.0)
    p.add_argument("--profile", type=int, default=0, metavar="RUNS",
                   help="on CUDA, after the timings: profile RUNS calls at the largest batch "
                        "(GPU kernel time by class and the top kernels, ONNX Runtime and PyTorch)")
    p.add_argument("--compare-forms", action="store_true",
                   help="instead of the checks: export the plain and the fused graph of --config (probe: "
                        "full-size blocks, two LLaMA layers) and time both against PyTorch eager, same run")
    p.add_argument("--table", metavar="OUT", help="print the summary of a finished run in OUT and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.table)))
        return 0
    args.precision = args.precision or ("fp16" if args.device == "cuda" else "fp32")
    if args.compare_forms:
        res = compare_forms(args)
        print(forms_table(res))
        return 0
    res = check(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
