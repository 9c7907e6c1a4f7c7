"""Named configurations of PneumoLLM.

`full` is the published architecture: OpenAI CLIP ViT-L/14 (24 blocks, width
1024, 16 heads) + LLaMA-7B (32 layers, dim 4096, 32 heads).  `tiny` keeps every
component and the ViT depth (24 blocks, so the CLS token taken after every 4th
block still gives six source tokens) but with small widths and two LLM layers,
so that the whole model fits in a few hundred kilobytes.  `probe` is `full`
with two LLaMA layers instead of 32 (1.4 GB in fp16): not a model, a graph of
full-size blocks that exports in seconds, for comparing graph forms on a GPU
(model/gpu_check.py --compare-forms).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PneumoLLMConfig:
    name: str
    # vision encoder (CLIP ViT)
    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 1024
    vit_layers: int = 24
    vit_heads: int = 16
    vit_ln_eps: float = 1e-5
    cls_every: int = 4  # CLS token taken after every `cls_every`-th block
    # adapters (RepAdapter router): C -> adapter_dim -> C, D grouped
    adapter_dim: int = 8
    adapter_groups: int = 2
    # contextual multi-token engine
    meta_hidden: int = 12
    diag_tokens: int = 4  # K
    # projector
    proj_hidden: int = 128
    # LLM (LLaMA)
    llm_dim: int = 4096
    llm_layers: int = 32
    llm_heads: int = 32
    llm_multiple_of: int = 256
    llm_ffn_dim_multiplier: float | None = None
    llm_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # head
    num_classes: int = 2

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.vit_width % self.vit_heads:
            raise ValueError("vit_width must be a multiple of vit_heads")
        if self.llm_dim % self.llm_heads or (self.llm_dim // self.llm_heads) % 2:
            raise ValueError("llm head dim must be an even integer")
        if self.vit_layers % self.cls_every:
            raise ValueError("vit_layers must be a multiple of cls_every")
        if self.adapter_dim % self.adapter_groups:
            raise ValueError("adapter_dim must be a multiple of adapter_groups")
        for width in (self.vit_width, self.llm_dim):
            if width % self.adapter_groups:
                raise ValueError("adapter widths must be multiples of adapter_groups")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def vit_tokens(self) -> int:
        return self.grid * self.grid + 1

    @property
    def source_tokens(self) -> int:
        return self.vit_layers // self.cls_every

    @property
    def seq_len(self) -> int:
        return self.source_tokens + self.diag_tokens

    @property
    def llm_head_dim(self) -> int:
        return self.llm_dim // self.llm_heads

    @property
    def llm_ffn_hidden(self) -> int:
        """SwiGLU hidden width exactly as LLaMA computes it (11008 for 7B)."""
        hidden = int(2 * (4 * self.llm_dim) / 3)
        if self.llm_ffn_dim_multiplier is not None:
            hidden = int(self.llm_ffn_dim_multiplier * hidden)
        m = self.llm_multiple_of
        return m * ((hidden + m - 1) // m)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FULL = PneumoLLMConfig(name="full")

TINY = PneumoLLMConfig(
    name="tiny",
    vit_width=32,
    vit_layers=24,
    vit_heads=2,
    proj_hidden=16,
    llm_dim=64,
    llm_layers=2,
    llm_heads=4,
    llm_multiple_of=32,
)

PROBE = dataclasses.replace(FULL, name="probe", llm_layers=2)

CONFIGS: dict[str, PneumoLLMConfig] = {"full": FULL, "tiny": TINY, "probe": PROBE}


def get_config(name: str) -> PneumoLLMConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown configuration {name!r}; known: {sorted(CONFIGS)}") from None
