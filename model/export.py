#!/usr/bin/env python3
"""Export PneumoLLM to ONNX, with the model contract in metadata_props.

Trained model (the three real checkpoints; see docs/model-export.md):

    python model/export.py --config full \
        --clip ViT-L-14.pt --llama LLaMA-7B/ --pneumollm trainable_bestvalpt.pth \
        --precision fp16 --device cuda --crop-mode lung-box --out pneumollm-fp16.onnx

Random weights (any configuration; `weights kind` random-demo):

    python model/export.py --config tiny --random-seed 0 --out tiny.onnx

fp32 is for ONNX Runtime's CPU provider, fp16 for its CUDA provider.  The graph
has one input `image` [batch,3,224,224] (float32, or float16 in the fp16
export) and one output `logits` [batch,2] (float32 in both), opset 17 by
default, a dynamic batch axis; files whose weights exceed 2 GB keep them in one
external-data file `<name>.onnx.data` beside the model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import onnx
import torch

from pneumollm import ATTENTION_IMPLS, PneumoLLM, build_model, get_config, random_init
from pneumollm.checkpoints import load_pretrained
from pneumollm.contract import (
    CROP_MODES,
    INPUT_NAME,
    OUTPUT_NAME,
    PRECISIONS,
    contract_metadata,
    weights_sha256,
)

# Above this many bytes of initializers the weights go to an external-data file
# (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2
DEFAULT_OPSET = 17
DEFAULT_OPSET_MIN = 17  # LayerNormalization is an ONNX operator from opset 17


def _initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        if init.HasField("raw_data"):
            total += len(init.raw_data)
        else:
            total += int(np.prod(init.dims, dtype=np.int64)) * 4
    return total


def example_input(model: PneumoLLM, batch: int, device, dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    size = model.cfg.image_size
    return torch.randn(batch, 3, size, size, generator=gen).to(device=device, dtype=dtype)


def _drop_unused_norm_statistics(graph: onnx.GraphProto) -> None:
    """The fused norms' mean and inv_std_var outputs are never read: leave
    them unnamed (omitted), so ONNX Runtime does not have to produce them."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in graph.node:
        if node.domain == "com.microsoft" and node.op_type.startswith("Skip"):
            for i in (1, 2):
                if i < len(node.output) and node.output[i] not in read:
                    node.output[i] = ""


def _declare_output_shape(graph: onnx.GraphProto, classes: int) -> None:
    """logits [batch, classes] in the file, as the contract says: past a
    contrib operator the exporter's shape inference leaves the class axis
    symbolic."""
    (out,) = graph.output
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 2:
        dims[1].dim_value = classes


def _trace(model: PneumoLLM, x: torch.Tensor, path: Path, opset: int, ort_ops: bool) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
            custom_opsets={"com.microsoft": 1} if ort_ops else None,
        )


def export_onnx(model: PneumoLLM, out: str | Path, *, metadata: dict[str, str], precision: str = "fp32",
                device: str = "cpu", opset: int = DEFAULT_OPSET, example_batch: int = 2,
                full_check: bool | None = None, fused: bool = False, fold_adapters: bool = False) -> Path:
    """Trace `model` (already holding its weights) and write `out`.

    The model is put in `precision` on `device` first.  `fused` traces the
    fused form (`PneumoLLM.set_fused`); `fold_adapters` folds the adapters
    into the projections for the trace (`PneumoLLM.fold_adapters`).  Either
    way the model is left as it was.  Returns the path.
    """
    if opset < DEFAULT_OPSET_MIN:
        raise ValueError(f"opset must be {DEFAULT_OPSET_MIN} or newer")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.eval().set_precision(precision).to(device)
    model.reset_buffers(device)
    dtype = torch.float16 if precision == "fp16" else torch.float32
    x = example_input(model, example_batch, device, dtype)
    was_fused = model.fused
    with tempfile.TemporaryDirectory(prefix="pneumollm-export-") as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        undo_fold = model.fold_adapters() if fold_adapters else None
        model.set_fused(fused)
        try:
            _trace(model, x, tmp_file, opset, fused or model.attention == "ort-mha")
        finally:
            model.set_fused(was_fused)
            if undo_fold is not None:
                undo_fold()
        proto = onnx.load(str(tmp_file), load_external_data=True)
    _drop_unused_norm_statistics(proto.graph)
    _declare_output_shape(proto.graph, model.cfg.num_classes)
    proto.producer_name = "pneumo-node model/export.py"
    proto.producer_version = "1"
    proto.domain = "pneumo"
    proto.doc_string = (
        f"PneumoLLM ({metadata['pneumo.model_config']}, {metadata['pneumo.weights_kind']} weights, "
        f"{precision}). Output: logits [batch,2], index 0 = pneumoconiosis, 1 = normal; apply softmax.")
    onnx.helper.set_model_props(proto, metadata)

    data_file = out.with_name(out.name + ".data")
    if data_file.exists():
        data_file.unlink()
    if _initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(proto, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_file.name, size_threshold=1024)
    else:
        onnx.save_model(proto, str(out))
    if full_check is None:
        full_check = not data_file.exists()
    onnx.checker.check_model(str(out), full_check=full_check)
    return out


def ort_logits(path: str | Path, image: np.ndarray, providers: list[str] | None = None) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: image})[0]


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["full", "tiny"], default="full")
    p.add_argument("--out", required=True, help="output .onnx path")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="fp32 for the CPU provider, fp16 for the CUDA provider")
    p.add_argument("--device", default="cpu", help="torch device used for tracing (cuda for fp16 of the full model)")
    w = p.add_argument_group("weights: either the three checkpoints, or --random-seed")
    w.add_argument("--clip", help="OpenAI CLIP ViT-L/14 weights (ViT-L-14.pt)")
    w.add_argument("--llama", help="LLaMA-7B directory holding params.json and consolidated.00.pth")
    w.add_argument("--pneumollm", help="PneumoLLM trained checkpoint (trainable_bestvalpt.pth)")
    w.add_argument("--random-seed", type=int, help="seeded random weights (weights kind random-demo)")
    p.add_argument("--model-name", help="pneumo.model_name (default pneumollm, or pneumollm-tiny)")
    p.add_argument("--model-version", default="1.0.0", help="pneumo.model_version")
    p.add_argument("--crop-mode", choices=CROP_MODES,
                   help="pneumo.crop_mode (default: lung-box for trained weights, none for random)")
    p.add_argument("--decision-threshold", type=float, default=0.5, help="on P(pneumoconiosis)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--attention", choices=ATTENTION_IMPLS, default="explicit",
                   help="attention form in the traced graph (see docs/model-export.md)")
    p.add_argument("--fuse", action="store_true",
                   help="ONNX Runtime's fused operators for the residual adds, norms, QuickGELU and RoPE "
                        "(the graph then runs under ONNX Runtime only; docs/model-export.md)")
    p.add_argument("--fold-adapters", action="store_true",
                   help="fold each adapter into the projections that read it (RepAdapter's re-parameterisation)")
    p.add_argument("--verify", action="store_true",
                   help="run the ONNX file under ONNX Runtime and compare with PyTorch")
    args = p.parse_args(argv)
    real = [args.clip, args.llama, args.pneumollm]
    if args.random_seed is None and not all(real):
        p.error("give --clip, --llama and --pneumollm, or --random-seed")
    if args.random_seed is not None and any(real):
        p.error("--random-seed excludes the checkpoint options")
    # Checked here, before minutes of loading, and said as usage errors.
    if args.opset < DEFAULT_OPSET_MIN:
        p.error(f"--opset must be {DEFAULT_OPSET_MIN} or newer")
    if not 0.0 <= args.decision_threshold <= 1.0:  # NaN fails too
        p.error("--decision-threshold must be a probability between 0 and 1")
    if not args.model_version.strip():
        p.error("--model-version must not be empty: the reports name the model's version")
    if args.model_name is not None and not args.model_name.strip():
        p.error("--model-name must not be empty")
    return args


def main(argv=None) -> int:
    args = _parse(argv)
    cfg = get_config(args.config)
    if args.random_seed is not None:
        model = random_init(build_model(cfg, attention=args.attention), args.random_seed)
        model.set_precision(args.precision)
        kind, crop = "random-demo", args.crop_mode or "none"
    else:
        # allocate in the export precision first (13.5 GB, not 27 GB, for fp16 `full`),
        # then fill: the loaders cast each tensor to its parameter's dtype
        model = build_model(cfg, attention=args.attention, empty=True).set_precision(args.precision)
        load_pretrained(model, args.clip, args.llama, args.pneumollm)
        kind, crop = "trained", args.crop_mode or "lung-box"
    name = args.model_name or ("pneumollm" if cfg.name == "full" else f"pneumollm-{cfg.name}")
    sha = weights_sha256(model.state_dict())
    meta = contract_metadata(cfg, model_name=name, model_version=args.model_version, weights_kind=kind,
                             precision=args.precision, crop_mode=crop, weights_sha=sha,
                             decision_threshold=args.decision_threshold)
    out = export_onnx(model, args.out, metadata=meta, precision=args.precision, device=args.device,
                      opset=args.opset, fused=args.fuse, fold_adapters=args.fold_adapters)
    form = ", ".join(f for f, on in (("fused", args.fuse), ("adapters folded", args.fold_adapters)) if on)
    print(f"wrote {out} ({args.precision}, opset {args.opset}, attention {args.attention}"
          f"{', ' + form if form else ''}, weights {kind}, sha256 {sha})")
    if args.verify:
        dtype = torch.float16 if args.precision == "fp16" else torch.float32
        x = example_input(model, 2, args.device, dtype, seed=1)
        with torch.no_grad():
            ref = model(x).float().cpu().numpy()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device.startswith("cuda") else None
        got = ort_logits(out, x.cpu().numpy(), providers)
        # the PyTorch side is the reference form: export left the model unfused and unfolded
        print(f"verify: max |onnxruntime - torch| = {np.abs(got - ref).max():.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
