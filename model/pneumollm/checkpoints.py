"""Loaders for the three checkpoints that make a trained PneumoLLM.

1. OpenAI CLIP ViT-L/14: the TorchScript archive `ViT-L-14.pt` as OpenAI
   distributes it, or a plain state dict of the same keys saved with
   `torch.save`.  Keys used: `visual.conv1.weight`, `visual.class_embedding`,
   `visual.positional_embedding`, `visual.ln_pre.*` and, per block N,
   `visual.transformer.resblocks.N.{ln_1,attn.in_proj_weight,attn.in_proj_bias,
   attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}.*`.  `visual.ln_post`, `visual.proj`
   and the text tower are not used and are ignored.
2. LLaMA-7B as Meta distributes it: a directory with `params.json` and
   `consolidated.00.pth`.  Keys used: `layers.N.attention.{wq,wk,wv,wo}.weight`,
   `layers.N.feed_forward.{w1,w2,w3}.weight`, `layers.N.attention_norm.weight`,
   `layers.N.ffn_norm.weight`, `norm.weight`.  `tok_embeddings`, `output` and
   `rope.freqs` are not used and are ignored.
3. The PneumoLLM trained checkpoint (the reference training script's
   `trainable_bestvalpt.pth`): a dict whose `model` entry holds the trainable
   tensors under the reference model's names:
   `backbone.visual.transformer.resblocks.N.adapter_attn.conv_{A,D}.{weight,bias}`,
   `layers.N.adapter_attn.conv_{A,D}.{weight,bias}` (Conv1d, kernel 1; conv_D
   has 2 groups), `adapter_proj.conv_{A,B}.{weight,bias}`,
   `prompt_meta_net.linear{1,2}.{weight,bias}`, `adapter_output_cls.weight`.
   Every key of that checkpoint must be one of these: an adapter the model
   does not have (e.g. `adapter_mlp` of another adapter type) is refused.

Every loader refuses a missing key, a misshapen tensor, a configuration
mismatch or an unexpected block with a `CheckpointError` naming the key.
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path
from typing import Callable

import torch

from .config import PneumoLLMConfig
from .model import PneumoLLM


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names the key."""


def _torch_load(path: Path, what: str):
    """torch.load with weights_only (no arbitrary code); mmap when possible."""
    safe = [argparse.Namespace]
    try:
        with torch.serialization.safe_globals(safe):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{what}: file not found: {path}") from None
    except Exception as err:  # unpickling refused, corrupt file ...
        raise CheckpointError(f"{what}: cannot read {path}: {err}") from err


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names) and any(
        "/code/" in n or n.startswith("code/") for n in names)


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """OpenAI CLIP weights: TorchScript archive (ViT-L-14.pt) or plain state dict."""
    path = Path(path)
    what = "CLIP checkpoint"
    if not path.is_file():
        raise CheckpointError(f"{what}: file not found: {path}")
    if _is_torchscript_archive(path):
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as err:
            raise CheckpointError(f"{what}: cannot read TorchScript archive {path}: {err}") from err
    sd = _torch_load(path, what)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{what}: {path} holds no state dict")
    return sd


def read_llama(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """LLaMA directory (params.json + consolidated.00.pth) -> (params, state dict)."""
    path = Path(path)
    what = "LLaMA checkpoint"
    if path.is_file():  # the .pth itself was given
        path = path.parent
    params_file = path / "params.json"
    if not params_file.is_file():
        raise CheckpointError(f"{what}: params.json not found in {path}")
    try:
        params = json.loads(params_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{what}: {params_file} is not JSON: {err}") from err
    shards = sorted(path.glob("consolidated.*.pth"))
    if [s.name for s in shards] != ["consolidated.00.pth"]:
        raise CheckpointError(
            f"{what}: expected exactly one shard consolidated.00.pth in {path} (the 7B model), "
            f"found {[s.name for s in shards]}")
    sd = _torch_load(shards[0], what)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{what}: {shards[0]} holds no state dict")
    return params, sd


def read_pneumollm(path: str | Path) -> dict[str, torch.Tensor]:
    """The reference training script's checkpoint: {'model': {...}, ...} or the bare dict."""
    path = Path(path)
    ck = _torch_load(path, "PneumoLLM checkpoint")
    if isinstance(ck, dict) and isinstance(ck.get("model"), dict):
        ck = ck["model"]
    if not isinstance(ck, dict):
        raise CheckpointError(f"PneumoLLM checkpoint: {path} holds no state dict")
    return ck


# ----------------------------------------------------------------------------
# key tables: checkpoint key -> (our key, expected checkpoint shape, converter)

Convert = Callable[[torch.Tensor], torch.Tensor]
Entry = tuple[str, tuple[int, ...], Convert | None]


def clip_key_table(cfg: PneumoLLMConfig) -> dict[str, Entry]:
    w, p = cfg.vit_width, cfg.patch_size
    t: dict[str, Entry] = {
        "visual.conv1.weight": ("visual.conv1.weight", (w, 3, p, p), None),
        "visual.class_embedding": ("visual.class_embedding", (w,), None),
        "visual.positional_embedding": ("visual.positional_embedding", (cfg.vit_tokens, w), None),
        "visual.ln_pre.weight": ("visual.ln_pre.weight", (w,), None),
        "visual.ln_pre.bias": ("visual.ln_pre.bias", (w,), None),
    }
    for i in range(cfg.vit_layers):
        b = f"visual.transformer.resblocks.{i}."
        for name, shape in [
            ("ln_1.weight", (w,)), ("ln_1.bias", (w,)),
            ("attn.in_proj_weight", (3 * w, w)), ("attn.in_proj_bias", (3 * w,)),
            ("attn.out_proj.weight", (w, w)), ("attn.out_proj.bias", (w,)),
            ("ln_2.weight", (w,)), ("ln_2.bias", (w,)),
            ("mlp.c_fc.weight", (4 * w, w)), ("mlp.c_fc.bias", (4 * w,)),
            ("mlp.c_proj.weight", (w, 4 * w)), ("mlp.c_proj.bias", (w,)),
        ]:
            t[b + name] = (b + name, shape, None)
    return t


def llama_key_table(cfg: PneumoLLMConfig) -> dict[str, Entry]:
    d, f = cfg.llm_dim, cfg.llm_ffn_hidden
    t: dict[str, Entry] = {"norm.weight": ("norm.weight", (d,), None)}
    for i in range(cfg.llm_layers):
        b = f"layers.{i}."
        for name, shape in [
            ("attention.wq.weight", (d, d)), ("attention.wk.weight", (d, d)),
            ("attention.wv.weight", (d, d)), ("attention.wo.weight", (d, d)),
            ("feed_forward.w1.weight", (f, d)), ("feed_forward.w2.weight", (d, f)),
            ("feed_forward.w3.weight", (f, d)),
            ("attention_norm.weight", (d,)), ("ffn_norm.weight", (d,)),
        ]:
            t[b + name] = (b + name, shape, None)
    return t


def _conv1x1_to_linear(x: torch.Tensor) -> torch.Tensor:
    return x[..., 0]


def _grouped_conv_to_block_diagonal(groups: int) -> Convert:
    """Conv1d(h -> C, kernel 1, groups g) weight [C, h/g, 1] -> dense [C, h]."""

    def convert(x: torch.Tensor) -> torch.Tensor:
        c, per = x.shape[0], x.shape[1]
        out_per = c // groups
        dense = torch.zeros(c, per * groups, dtype=x.dtype)
        for g in range(groups):
            dense[g * out_per:(g + 1) * out_per, g * per:(g + 1) * per] = x[g * out_per:(g + 1) * out_per, :, 0]
        return dense

    return convert


def pneumollm_key_table(cfg: PneumoLLMConfig) -> dict[str, Entry]:
    h, g = cfg.adapter_dim, cfg.adapter_groups
    t: dict[str, Entry] = {}

    def adapter(ck_prefix: str, our_prefix: str, dim: int) -> None:
        t[ck_prefix + "conv_A.weight"] = (our_prefix + "A.weight", (h, dim, 1), _conv1x1_to_linear)
        t[ck_prefix + "conv_A.bias"] = (our_prefix + "A.bias", (h,), None)
        t[ck_prefix + "conv_D.weight"] = (our_prefix + "D.weight", (dim, h // g, 1), _grouped_conv_to_block_diagonal(g))
        t[ck_prefix + "conv_D.bias"] = (our_prefix + "D.bias", (dim,), None)

    for i in range(cfg.vit_layers):
        adapter(f"backbone.visual.transformer.resblocks.{i}.adapter_attn.",
                f"visual.transformer.resblocks.{i}.adapter_attn.", cfg.vit_width)
    for i in range(cfg.llm_layers):
        adapter(f"layers.{i}.adapter_attn.", f"layers.{i}.adapter_attn.", cfg.llm_dim)
    w, ph, d = cfg.vit_width, cfg.proj_hidden, cfg.llm_dim
    for ck, shape in [
        ("adapter_proj.conv_A.weight", (ph, w)), ("adapter_proj.conv_A.bias", (ph,)),
        ("adapter_proj.conv_B.weight", (d, ph)), ("adapter_proj.conv_B.bias", (d,)),
        ("prompt_meta_net.linear1.weight", (cfg.meta_hidden, w)), ("prompt_meta_net.linear1.bias", (cfg.meta_hidden,)),
        ("prompt_meta_net.linear2.weight", (cfg.diag_tokens, cfg.meta_hidden)),
        ("prompt_meta_net.linear2.bias", (cfg.diag_tokens,)),
        ("adapter_output_cls.weight", (cfg.num_classes, d)),
    ]:
        t[ck] = (ck, shape, None)
    return t


def _resolve(sd: dict, table: dict[str, Entry], what: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for ck_key, (our_key, shape, convert) in table.items():
        if ck_key not in sd:
            raise CheckpointError(f"{what}: missing key '{ck_key}'")
        value = sd[ck_key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: key '{ck_key}' is not a tensor")
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"{what}: key '{ck_key}' has shape {tuple(value.shape)}, expected {tuple(shape)}")
        if not value.is_floating_point():
            raise CheckpointError(f"{what}: key '{ck_key}' has dtype {value.dtype}, expected a float type")
        out[our_key] = convert(value) if convert else value
    return out


def _refuse_extra_blocks(sd: dict, pattern: str, count: int, what: str, field: str) -> None:
    rx = re.compile(pattern)
    for key in sorted(sd):
        m = rx.match(key)
        if m and int(m.group(1)) >= count:
            raise CheckpointError(
                f"{what}: unexpected key '{key}': the checkpoint has more {field} than the "
                f"configuration ({count})")


def clip_tensors(cfg: PneumoLLMConfig, sd: dict) -> dict[str, torch.Tensor]:
    what = "CLIP checkpoint"
    _refuse_extra_blocks(sd, r"^visual\.transformer\.resblocks\.(\d+)\.", cfg.vit_layers, what, "vision blocks")
    return _resolve(sd, clip_key_table(cfg), what)


LLAMA_PARAMS = {"dim": "llm_dim", "n_layers": "llm_layers", "n_heads": "llm_heads",
                "multiple_of": "llm_multiple_of", "norm_eps": "llm_norm_eps"}


def llama_tensors(cfg: PneumoLLMConfig, params: dict, sd: dict) -> dict[str, torch.Tensor]:
    what = "LLaMA checkpoint"
    for key, field in LLAMA_PARAMS.items():
        if key not in params:
            raise CheckpointError(f"{what}: params.json: missing key '{key}'")
        if params[key] != getattr(cfg, field):
            raise CheckpointError(
                f"{what}: params.json: key '{key}' is {params[key]!r}, the configuration "
                f"{cfg.name!r} has {getattr(cfg, field)!r}")
    if params.get("ffn_dim_multiplier") != cfg.llm_ffn_dim_multiplier:
        raise CheckpointError(
            f"{what}: params.json: key 'ffn_dim_multiplier' is {params.get('ffn_dim_multiplier')!r}, "
            f"the configuration {cfg.name!r} has {cfg.llm_ffn_dim_multiplier!r}")
    if params.get("n_kv_heads") not in (None, cfg.llm_heads):
        raise CheckpointError(f"{what}: params.json: key 'n_kv_heads' (grouped-query attention) is not supported")
    _refuse_extra_blocks(sd, r"^layers\.(\d+)\.", cfg.llm_layers, what, "layers")
    return _resolve(sd, llama_key_table(cfg), what)


def pneumollm_tensors(cfg: PneumoLLMConfig, sd: dict) -> dict[str, torch.Tensor]:
    what = "PneumoLLM checkpoint"
    table = pneumollm_key_table(cfg)
    for key in sorted(sd):
        if key not in table:
            raise CheckpointError(f"{what}: unexpected key '{key}' (not part of this architecture)")
    return _resolve(sd, table, what)


@torch.no_grad()
def assign(model: PneumoLLM, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors (our key names) into the model, casting to each parameter's dtype."""
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        if key not in params:
            raise CheckpointError(f"internal: no parameter '{key}' in the model")
        target = params[key]
        if tuple(target.shape) != tuple(value.shape):
            raise CheckpointError(f"internal: '{key}' shape {tuple(value.shape)} != {tuple(target.shape)}")
        target.copy_(value.to(device=target.device, dtype=target.dtype))


def load_clip(model: PneumoLLM, path: str | Path) -> set[str]:
    tensors = clip_tensors(model.cfg, read_clip_state_dict(path))
    assign(model, tensors)
    return set(tensors)


def load_llama(model: PneumoLLM, path: str | Path) -> set[str]:
    params, sd = read_llama(path)
    tensors = llama_tensors(model.cfg, params, sd)
    assign(model, tensors)
    return set(tensors)


def load_pneumollm(model: PneumoLLM, path: str | Path) -> set[str]:
    tensors = pneumollm_tensors(model.cfg, read_pneumollm(path))
    assign(model, tensors)
    return set(tensors)


def load_pretrained(model: PneumoLLM, clip: str | Path, llama: str | Path, pneumollm: str | Path) -> PneumoLLM:
    """Fill every parameter of `model` from the three checkpoints; each parameter
    must come from exactly one of them."""
    loaded = load_clip(model, clip)
    loaded |= load_llama(model, llama)
    loaded |= load_pneumollm(model, pneumollm)
    names = {n for n, _ in model.named_parameters()}
    missing = sorted(names - loaded)
    if missing:
        raise CheckpointError(f"internal: parameter '{missing[0]}' is in no checkpoint table")
    return model
