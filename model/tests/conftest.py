"""Shared fixtures: a seeded tiny model, and writers of tiny checkpoint files in
the real formats (key names written out here independently of the loaders'
tables, from the formats' own naming)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pneumollm import TINY, build_model, random_init

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model():
    return random_init(build_model(TINY), 1234)


def make_image(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, TINY.image_size, TINY.image_size, generator=gen)


def clip_state_dict(model, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """OpenAI CLIP state dict (ViT part + a stub text tower, ln_post and proj)."""
    sd = model.state_dict()
    w = TINY.vit_width
    out = {
        "visual.class_embedding": sd["visual.class_embedding"],
        "visual.positional_embedding": sd["visual.positional_embedding"],
        "visual.proj": torch.randn(w, 16),
        "visual.conv1.weight": sd["visual.conv1.weight"],
        "visual.ln_pre.weight": sd["visual.ln_pre.weight"],
        "visual.ln_pre.bias": sd["visual.ln_pre.bias"],
        "visual.ln_post.weight": torch.ones(w),
        "visual.ln_post.bias": torch.zeros(w),
        # text tower, not used
        "positional_embedding": torch.randn(77, 16),
        "text_projection": torch.randn(16, 16),
        "logit_scale": torch.tensor(4.6),
        "token_embedding.weight": torch.randn(100, 16),
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
        "ln_final.weight": torch.ones(16),
    }
    for i in range(TINY.vit_layers):
        p = f"visual.transformer.resblocks.{i}."
        for name in ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                     "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                     "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias"]:
            out[p + name] = sd[p + name]
    return {k: (v.to(dtype) if v.is_floating_point() else v).clone() for k, v in out.items()}


def llama_state_dict(model, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Meta's consolidated.00.pth naming (+ the unused embedding/output/rope keys)."""
    sd = model.state_dict()
    d = TINY.llm_dim
    out = {"tok_embeddings.weight": torch.randn(50, d), "norm.weight": sd["norm.weight"],
           "output.weight": torch.randn(50, d), "rope.freqs": torch.randn(TINY.llm_head_dim // 2)}
    for i in range(TINY.llm_layers):
        p = f"layers.{i}."
        for name in ["attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
                     "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
                     "attention_norm.weight", "ffn_norm.weight"]:
            out[p + name] = sd[p + name]
    return {k: v.to(dtype).clone() for k, v in out.items()}


def llama_params() -> dict:
    return {"dim": TINY.llm_dim, "multiple_of": TINY.llm_multiple_of, "n_heads": TINY.llm_heads,
            "n_layers": TINY.llm_layers, "norm_eps": TINY.llm_norm_eps, "vocab_size": -1}


def _grouped(dense: torch.Tensor, groups: int) -> torch.Tensor:
    """Dense block-diagonal [C, h] -> Conv1d grouped weight [C, h/groups, 1]."""
    c, h = dense.shape
    per_out, per_in = c // groups, h // groups
    blocks = [dense[g * per_out:(g + 1) * per_out, g * per_in:(g + 1) * per_in] for g in range(groups)]
    return torch.cat(blocks, dim=0)[..., None].clone()


def pneumollm_state_dict(model) -> dict[str, torch.Tensor]:
    """The reference training script's trainable tensors, under its names
    (Conv1d adapters: conv_A [8, C, 1], conv_D [C, 4, 1] with groups=2)."""
    sd = model.state_dict()
    out = {}

    def adapter(ours: str, theirs: str) -> None:
        out[theirs + "conv_A.weight"] = sd[ours + "A.weight"][..., None].clone()
        out[theirs + "conv_A.bias"] = sd[ours + "A.bias"].clone()
        out[theirs + "conv_D.weight"] = _grouped(sd[ours + "D.weight"], TINY.adapter_groups)
        out[theirs + "conv_D.bias"] = sd[ours + "D.bias"].clone()

    for i in range(TINY.vit_layers):
        adapter(f"visual.transformer.resblocks.{i}.adapter_attn.",
                f"backbone.visual.transformer.resblocks.{i}.adapter_attn.")
    for i in range(TINY.llm_layers):
        adapter(f"layers.{i}.adapter_attn.", f"layers.{i}.adapter_attn.")
    for name in ["adapter_proj.conv_A.weight", "adapter_proj.conv_A.bias", "adapter_proj.conv_B.weight",
                 "adapter_proj.conv_B.bias", "prompt_meta_net.linear1.weight", "prompt_meta_net.linear1.bias",
                 "prompt_meta_net.linear2.weight", "prompt_meta_net.linear2.bias", "adapter_output_cls.weight"]:
        out[name] = sd[name].clone()
    return out


def save_pneumollm_checkpoint(path: Path, tensors: dict) -> Path:
    """As the reference's misc.save_model: model, optimizer, epoch, lr_scheduler, args."""
    torch.save({"model": tensors, "optimizer": {"state": {}, "param_groups": []}, "epoch": 7,
                "lr_scheduler": {"last_epoch": 7}, "args": argparse.Namespace(RPO_K=4, multiscale=4)}, path)
    return path


def save_llama_dir(path: Path, tensors: dict, params: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "params.json").write_text(json.dumps(params or llama_params()))
    torch.save(tensors, path / "consolidated.00.pth")
    return path


def save_clip_torchscript(path: Path, tensors: dict) -> Path:
    """A TorchScript archive holding `tensors` under their dotted names, as
    OpenAI's ViT-L-14.pt does."""

    class Holder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Holder()
    for key, value in tensors.items():
        *parts, leaf = key.split(".")
        mod = root
        for part in parts:
            if not hasattr(mod, part):
                mod.add_module(part, Holder())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))
    return path


@pytest.fixture()
def checkpoint_files(tmp_path, tiny_model):
    clip = tmp_path / "clip.pt"
    torch.save(clip_state_dict(tiny_model), clip)
    llama = save_llama_dir(tmp_path / "llama", llama_state_dict(tiny_model))
    pneumo = save_pneumollm_checkpoint(tmp_path / "trainable_bestvalpt.pth", pneumollm_state_dict(tiny_model))
    return clip, llama, pneumo
