"""PneumoLLM (pneumoconiosis classifier) in PyTorch, for ONNX export."""

from .config import CONFIGS, FULL, TINY, PneumoLLMConfig, get_config
from .model import (
    ATTENTION_IMPLS,
    Adapter,
    PneumoLLM,
    apply_rope,
    build_model,
    emitter_mask,
    random_init,
    rope_tables,
)

LABELS = ("pneumoconiosis", "normal")

__all__ = [
    "ATTENTION_IMPLS", "Adapter", "CONFIGS", "FULL", "LABELS", "PneumoLLM", "PneumoLLMConfig", "TINY",
    "apply_rope", "build_model", "emitter_mask", "get_config", "random_init", "rope_tables",
]
