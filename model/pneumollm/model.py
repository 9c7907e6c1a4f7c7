"""PneumoLLM in PyTorch, written for ONNX export.

Re-implemented from the architecture description (see docs/model-export.md):

    image [B,3,224,224]
      -> CLIP ViT (per-block adapter on the attention input)
      -> CLS token after every 4th block            S    [B, 6, Wv]
      -> contextual multi-token engine (meta-net)   diag [B, K, Wv]
      -> concat                                      [B, 6+K, Wv]
      -> projector (Linear, SiLU, Linear)            [B, 6+K, D]
      -> LLaMA blocks with adapters, RoPE, information-emitter mask
      -> RMSNorm -> mean over tokens -> Linear(D, 2, no bias)
      -> logits [B, 2]   (index 0 = pneumoconiosis, 1 = normal)

Everything is written with plain tensor operations that the TorchScript ONNX
exporter maps one to one (RoPE with real cos/sin tables, RMSNorm as
x / sqrt(mean(x^2) + eps), attention as MatMul/Softmax), and the attention
form is chosen in one place (`multi_head_attention`): explicit MatMul/Softmax,
torch's SDPA, or ONNX Runtime's fused MultiHeadAttention operator.

Two export options make the graph cheaper for ONNX Runtime without changing
the maths (docs/model-export.md):
- `set_fused(True)`: residual adds, biases and norms become ONNX Runtime's
  fused operators (SkipLayerNormalization, SkipSimplifiedLayerNormalization,
  QuickGelu, RotaryEmbedding; the ViT's projection bias goes into
  MultiHeadAttention), each computing as the reference does (fp32 inside);
- `fold_adapters()`: each adapter, a linear map, is multiplied into the
  projections that read it (RepAdapter's re-parameterisation).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import PneumoLLMConfig

ATTENTION_IMPLS = ("explicit", "sdpa", "ort-mha")


def _as_f32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast only when needed, so the fp32 graph carries no identity Cast nodes."""
    return x if x.dtype == dtype else x.to(dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, impl: str) -> torch.Tensor:
    """Scaled dot-product attention over [B, H, L, hd] tensors.

    `explicit`: MatMul -> (+bias) -> Softmax (in fp32) -> MatMul, the form the
    reference code uses.  `sdpa`: torch's fused kernel (the same maths; the
    ONNX exporter at opset 17 decomposes it).
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    probs = _to(torch.softmax(_as_f32(scores), dim=-1), q.dtype)
    return torch.matmul(probs, v)


# Finite stand-in for -inf in the fused operator's additive bias (exp underflows
# to exactly 0 in fp32 for any realistic score; -inf can give NaN in some kernels).
MHA_MASK_VALUE = -1e4


def _none(g):
    """An omitted optional input of an ONNX node."""
    node = g.op("prim::Constant")
    node.setType(torch._C.OptionalType.ofTensor())
    return node


class _OrtMultiHeadAttention(torch.autograd.Function):
    """In PyTorch: the explicit maths.  In ONNX: one com.microsoft
    MultiHeadAttention node (ONNX Runtime's contrib operator, fused on CUDA).

    `proj_bias` [3D], when given, is the q/k/v projection's bias, added inside
    the operator (on CUDA, in the kernel that lays out q, k and v)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, heads: int, proj_bias=None):  # noqa: ARG004
        b, n, d = q.shape
        if proj_bias is not None:
            q, k, v = q + proj_bias[:d], k + proj_bias[d:2 * d], v + proj_bias[2 * d:]
        split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
        o = attend(split(q), split(k), split(v), bias, "explicit")
        return o.transpose(1, 2).reshape(b, n, d)

    @staticmethod
    def symbolic(g, q, k, v, bias, heads: int, proj_bias=None):
        # query, key, value, bias, key_padding_mask
        inputs = [q, k, v, _none(g) if proj_bias is None else proj_bias, _none(g)]
        if bias is not None:
            inputs.append(bias)  # attention_bias [1, 1, S, T]
        out = g.op("com.microsoft::MultiHeadAttention", *inputs, num_heads_i=heads)
        out.setType(q.type())
        return out


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         bias: torch.Tensor | None, impl: str, tokens: int,
                         proj_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over [B, L, D] tensors (D = heads * head_dim) -> [B, L, D].

    The one place where the attention form is chosen (`impl`):
    `explicit` and `sdpa` as in `attend`; `ort-mha` exports ONNX Runtime's
    fused MultiHeadAttention contrib operator (domain com.microsoft), with the
    mask as its additive attention_bias.

    `tokens` (L, fixed by the configuration) and -1 for the batch give every
    reshape a constant shape: the exported graph has no Shape/Gather
    subgraph for ONNX Runtime to place on the CPU.

    `proj_bias` [3D] (`ort-mha` only): a q/k/v projection bias not yet
    added, which the fused operator adds.
    """
    if impl == "ort-mha":
        if bias is not None:
            bias = torch.clamp(bias, min=MHA_MASK_VALUE).reshape(1, 1, tokens, tokens)
        return _OrtMultiHeadAttention.apply(q, k, v, bias, heads, proj_bias)
    if proj_bias is not None:
        raise ValueError("proj_bias is for the fused attention operator (ort-mha)")
    d = int(q.shape[-1])  # a width: static, constant in the trace
    hd = d // heads
    split = lambda t: t.reshape(-1, tokens, heads, hd).transpose(1, 2)  # noqa: E731
    o = attend(split(q), split(k), split(v), bias, impl)
    return o.transpose(1, 2).reshape(-1, tokens, d)


class Adapter(nn.Module):
    """RepAdapter "router" at inference: y = x + D(A x).

    A: C -> h (dense, with bias); D: h -> C with `groups` groups, i.e. a
    block-diagonal weight (output block g reads only hidden units of group g).
    Both are Linear layers here; D's off-block entries are zero.  Dropout of
    the reference is the identity at inference.
    """

    def __init__(self, dim: int, hidden: int, groups: int):
        super().__init__()
        self.dim, self.hidden, self.groups = dim, hidden, groups
        self.A = nn.Linear(dim, hidden)
        self.D = nn.Linear(hidden, dim)
        self.folded = False  # set by PneumoLLM.fold_adapters: the identity, its map lives in the next projection

    def block_mask(self) -> torch.Tensor:
        """[dim, hidden] 0/1 mask of D's allowed (block-diagonal) entries."""
        out_per, in_per = self.dim // self.groups, self.hidden // self.groups
        mask = torch.zeros(self.dim, self.hidden)
        for g in range(self.groups):
            mask[g * out_per:(g + 1) * out_per, g * in_per:(g + 1) * in_per] = 1
        return mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.folded else x + self.D(self.A(x))

    @torch.no_grad()
    def fold_into(self, owner: nn.Module, weight: str, bias: str) -> Callable[[], None]:
        """Multiplies this adapter into the projection `owner.weight` (+ `owner.bias`)
        that reads its output: y = x + D(Ax + a) + d is linear, so
        W(y) + b = W'x + b' with W' = W + (W D) A and b' = b + W (D a + d).
        Computed in fp64 from the stored weights, then rounded once to their
        dtype.  Returns a function that puts the original tensors back."""
        w = getattr(owner, weight)
        b = getattr(owner, bias)
        saved_w, saved_b = w.detach().clone(), None if b is None else b.detach().clone()
        w64 = w.double()
        a_w, a_b = self.A.weight.double(), self.A.bias.double()
        d_w, d_b = self.D.weight.double(), self.D.bias.double()
        shift = w64 @ (d_w @ a_b + d_b)
        w.copy_((w64 + (w64 @ d_w) @ a_w).to(w.dtype))
        if b is None:
            setattr(owner, bias, nn.Parameter(shift.to(w.dtype), requires_grad=False))
        else:
            b.copy_((b.double() + shift).to(b.dtype))

        @torch.no_grad()
        def undo() -> None:
            getattr(owner, weight).copy_(saved_w)
            if saved_b is None:
                setattr(owner, bias, None)
            else:
                getattr(owner, bias).copy_(saved_b)
        return undo


# ----------------------------------------------------------------------------
# Vision encoder: CLIP ViT (names follow OpenAI's state dict)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm computed in fp32 (as CLIP's), cast back to the input dtype."""
    shape = (int(weight.shape[0]),)
    if x.dtype == torch.float32:
        return F.layer_norm(x, shape, weight, bias, eps)
    return F.layer_norm(x.float(), shape, weight.float(), bias.float(), eps).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 as LLaMA does.

    Written with Div/Sqrt (not rsqrt) so ONNX Runtime's
    SimplifiedLayerNormalization fusion recognises the pattern.
    """
    xf = _as_f32(x)
    y = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return _to(y, x.dtype) * weight


QUICK_GELU_ALPHA = 1.702


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(QUICK_GELU_ALPHA * x)


# The fused export (`PneumoLLM.set_fused`): in PyTorch each function below is
# the reference maths; traced, it is one ONNX Runtime operator.


class _FusedLayerNorm(torch.autograd.Function):
    """One LayerNormalization on the input's own dtype: its stash_type (fp32)
    keeps the statistics in fp32, so the fp16 graph needs no Cast around it."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):  # noqa: ARG004
        return layer_norm(x, weight, bias, eps)

    @staticmethod
    def symbolic(g, x, weight, bias, eps: float):
        return g.op("LayerNormalization", x, weight, bias, axis_i=-1, epsilon_f=eps, stash_type_i=1)


class _FusedSkipNorm(torch.autograd.Function):
    """total = skip + (x + bias); normed = LayerNorm (or RMSNorm) of total.
    Returns (normed, total).  ONNX: one com.microsoft SkipLayerNormalization
    (SkipSimplifiedLayerNormalization) node, outputs 0 and 3: the bias add,
    the residual add and the norm in one kernel, statistics in fp32."""

    @staticmethod
    def forward(ctx, x, skip, weight, norm_bias, bias, eps: float, rms: bool):  # noqa: ARG004
        total = skip + (x if bias is None else x + bias)
        normed = rms_norm(total, weight, eps) if rms else layer_norm(total, weight, norm_bias, eps)
        return normed, total

    @staticmethod
    def symbolic(g, x, skip, weight, norm_bias, bias, eps: float, rms: bool):
        if rms:
            op, inputs = "com.microsoft::SkipSimplifiedLayerNormalization", [x, skip, weight]
        else:
            op, inputs = "com.microsoft::SkipLayerNormalization", [x, skip, weight, norm_bias]
        if bias is not None:
            inputs.append(bias)
        normed, _mean, _inv_std, total = g.op(op, *inputs, epsilon_f=eps, outputs=4)
        normed.setType(x.type())
        total.setType(x.type())
        return normed, total


class _FusedQuickGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ARG004
        return quick_gelu(x)

    @staticmethod
    def symbolic(g, x):
        y = g.op("com.microsoft::QuickGelu", x, alpha_f=QUICK_GELU_ALPHA)
        y.setType(x.type())
        return y


class _FusedRotaryEmbedding(torch.autograd.Function):
    """`apply_rope` on [B, L, H * hd].  ONNX: one com.microsoft RotaryEmbedding
    node (interleaved pairs as LLaMA's, positions 0..L-1, the same cos/sin
    tables); fed fp32, as the reference computes it."""

    @staticmethod
    def forward(ctx, x, cos, sin, heads: int):  # noqa: ARG004
        n, d = (int(v) for v in x.shape[1:])
        return apply_rope(x.reshape(-1, n, heads, d // heads), cos, sin).reshape(-1, n, d)

    @staticmethod
    def symbolic(g, x, cos, sin, heads: int):  # noqa: ARG004
        start = g.op("Constant", value_t=torch.zeros(1, dtype=torch.int64))  # position of token 0
        y = g.op("com.microsoft::RotaryEmbedding", x, start, cos, sin, interleaved_i=1)
        y.setType(x.type())
        return y


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        return _FusedLayerNorm.apply(x, self.weight, self.bias, self.eps)

    def fused_after_add(self, x: torch.Tensor, skip: torch.Tensor, bias: torch.Tensor | None):
        """(LayerNorm(skip + x + bias), skip + x + bias) as one fused operator."""
        return _FusedSkipNorm.apply(x, skip, self.weight, self.bias, bias, self.eps, False)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quick_gelu(x)


class VisionAttention(nn.Module):
    """nn.MultiheadAttention's parameters (packed in_proj), batch-first maths."""

    def __init__(self, width: int, heads: int, impl: str, tokens: int):
        super().__init__()
        self.width, self.heads, self.impl, self.tokens = width, heads, impl, tokens
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.split(self.width, dim=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.heads, None, self.impl, self.tokens))

    def fused_without_out_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The attention before out_proj's bias (the next fused norm adds it);
        with `ort-mha` the q/k/v bias goes into the attention operator."""
        in_operator = self.impl == "ort-mha"
        qkv = F.linear(x, self.in_proj_weight, None if in_operator else self.in_proj_bias)
        q, k, v = qkv.split(self.width, dim=-1)
        o = multi_head_attention(q, k, v, self.heads, None, self.impl, self.tokens,
                                 proj_bias=self.in_proj_bias if in_operator else None)
        return F.linear(o, self.out_proj.weight)


class ResidualAttentionBlock(nn.Module):
    """x + attn(adapter(ln_1(x))); x + mlp(ln_2(x))."""

    def __init__(self, cfg: PneumoLLMConfig, impl: str):
        super().__init__()
        w = cfg.vit_width
        self.ln_1 = LayerNorm(w, eps=cfg.vit_ln_eps)
        self.attn = VisionAttention(w, cfg.vit_heads, impl, cfg.vit_tokens)
        self.ln_2 = LayerNorm(w, eps=cfg.vit_ln_eps)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(w, 4 * w)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * w, w)),
        ]))
        self.adapter_attn = Adapter(w, cfg.adapter_dim, cfg.adapter_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.adapter_attn(self.ln_1(x)))
        x = x + self.mlp(self.ln_2(x))
        return x

    def fused(self, x: torch.Tensor, h: torch.Tensor, next_ln: LayerNorm | None):
        """The same block with its adds fused into the norms: `h` is ln_1(x),
        already computed; returns (x out, next_ln(x out) or None)."""
        a = self.attn.fused_without_out_bias(self.adapter_attn(h))
        h, x = self.ln_2.fused_after_add(a, x, self.attn.out_proj.bias)
        m = F.linear(_FusedQuickGelu.apply(self.mlp.c_fc(h)), self.mlp.c_proj.weight)
        if next_ln is None:
            return x + (m + self.mlp.c_proj.bias), None
        h, x = next_ln.fused_after_add(m, x, self.mlp.c_proj.bias)
        return x, h


class VisionTransformerBlocks(nn.Module):
    def __init__(self, cfg: PneumoLLMConfig, impl: str):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(cfg, impl) for _ in range(cfg.vit_layers)])


class VisionTransformer(nn.Module):
    """CLIP ViT without ln_post/proj; returns the CLS token after every
    `cls_every`-th block: [B, vit_layers // cls_every, width]."""

    def __init__(self, cfg: PneumoLLMConfig, impl: str):
        super().__init__()
        w = cfg.vit_width
        self.cls_every = cfg.cls_every
        self.width, self.patches = w, cfg.vit_tokens - 1
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(cfg.vit_tokens, w))
        self.ln_pre = LayerNorm(w, eps=cfg.vit_ln_eps)
        self.transformer = VisionTransformerBlocks(cfg, impl)
        self.fused = False

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(_to(image, self.conv1.weight.dtype))  # [B, w, g, g]
        x = x.reshape(-1, self.width, self.patches).transpose(1, 2)  # [B, g*g, w]
        # One class token per image without reading the batch size (that
        # would put a Shape node in the graph): 0 × a finite patch token +
        # the embedding is exactly the embedding.
        cls = x[:, :1] * 0 + _to(self.class_embedding, x.dtype)
        x = torch.cat([cls, x], dim=1) + _to(self.positional_embedding, x.dtype)
        blocks = self.transformer.resblocks
        sources = []
        if self.fused:
            x = self.ln_pre.fused(x)
            h = blocks[0].ln_1.fused(x)
            for i, block in enumerate(blocks):
                x, h = block.fused(x, h, blocks[i + 1].ln_1 if i + 1 < len(blocks) else None)
                if (i + 1) % self.cls_every == 0:
                    sources.append(x[:, :1])
            return torch.cat(sources, dim=1)
        x = self.ln_pre(x)
        for i, block in enumerate(blocks):
            x = block(x)
            if (i + 1) % self.cls_every == 0:
                sources.append(x[:, :1])
        return torch.cat(sources, dim=1)


# ----------------------------------------------------------------------------
# LLM: LLaMA blocks (names follow Meta's consolidated checkpoints)


class RMSNorm(nn.Module):
    """`rms_norm` with a learned weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def fused_after_add(self, x: torch.Tensor, skip: torch.Tensor):
        """(RMSNorm(skip + x), skip + x) as one fused operator."""
        return _FusedSkipNorm.apply(x, skip, self.weight, None, None, self.eps, True)


def rope_tables(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [seq_len, head_dim // 2] in fp64 -> fp32, LLaMA's frequencies."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64)[: head_dim // 2] / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), freqs)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x [B, L, H, hd] by position angles.

    The same as LLaMA's complex multiplication (view_as_complex over pairs),
    with real cos/sin so it exports to plain ONNX ops.  Computed in fp32.
    """
    n, h, hd = (int(v) for v in x.shape[1:])  # static sizes: constants in the trace
    xf = _as_f32(x).reshape(-1, n, h, hd // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos.reshape(1, n, 1, hd // 2)
    s = sin.reshape(1, n, 1, hd // 2)
    out = torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1)
    return _to(out.reshape(-1, n, h, hd), x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: PneumoLLMConfig, impl: str):
        super().__init__()
        d = cfg.llm_dim
        self.heads, self.head_dim, self.impl = cfg.llm_heads, cfg.llm_head_dim, impl
        self.tokens = cfg.seq_len
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                fused: bool = False) -> torch.Tensor:
        n, h, hd = self.tokens, self.heads, self.head_dim
        if fused:
            q = _to(_FusedRotaryEmbedding.apply(_as_f32(self.wq(x)), cos, sin, h), x.dtype)
            k = _to(_FusedRotaryEmbedding.apply(_as_f32(self.wk(x)), cos, sin, h), x.dtype)
        else:
            q = apply_rope(self.wq(x).reshape(-1, n, h, hd), cos, sin).reshape(-1, n, h * hd)
            k = apply_rope(self.wk(x).reshape(-1, n, h, hd), cos, sin).reshape(-1, n, h * hd)
        o = multi_head_attention(q, k, self.wv(x), h, _to(mask, q.dtype), self.impl, n)
        return self.wo(o)


class FeedForward(nn.Module):
    def __init__(self, cfg: PneumoLLMConfig):
        super().__init__()
        d, hidden = cfg.llm_dim, cfg.llm_ffn_hidden
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """h = x + Attn(Adapter(RMSNorm(x))); out = h + FFN(RMSNorm(h))."""

    def __init__(self, cfg: PneumoLLMConfig, impl: str):
        super().__init__()
        self.attention = LlamaAttention(cfg, impl)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.llm_dim, cfg.llm_norm_eps)
        self.ffn_norm = RMSNorm(cfg.llm_dim, cfg.llm_norm_eps)
        self.adapter_attn = Adapter(cfg.llm_dim, cfg.adapter_dim, cfg.adapter_groups)

    def forward(self, x, cos, sin, mask):
        h = x + self.attention(self.adapter_attn(self.attention_norm(x)), cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))

    def fused(self, x, normed, cos, sin, mask, next_norm: RMSNorm):
        """The same block with its adds fused into the norms: `normed` is
        attention_norm(x), already computed; returns (out, next_norm(out))."""
        a = self.attention(self.adapter_attn(normed), cos, sin, mask, fused=True)
        normed, h = self.ffn_norm.fused_after_add(a, x)
        normed, out = next_norm.fused_after_add(self.feed_forward(normed), h)
        return out, normed


class Projector(nn.Module):
    """Linear(Wv -> proj_hidden) -> SiLU -> Linear(proj_hidden -> D)."""

    def __init__(self, cfg: PneumoLLMConfig):
        super().__init__()
        self.conv_A = nn.Linear(cfg.vit_width, cfg.proj_hidden)
        self.conv_B = nn.Linear(cfg.proj_hidden, cfg.llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_B(F.silu(self.conv_A(x)))


def emitter_mask(source_tokens: int, diag_tokens: int) -> torch.Tensor:
    """Information emitter: additive [L, L] mask, 0 except -inf in the last K
    columns, so every query (source or diagnosis) attends to source keys only."""
    n = source_tokens + diag_tokens
    mask = torch.zeros(n, n)
    mask[:, source_tokens:] = float("-inf")
    return mask


class PneumoLLM(nn.Module):
    """image [B, 3, H, W] (normalised) -> logits [B, num_classes]."""

    def __init__(self, cfg: PneumoLLMConfig, attention: str = "explicit"):
        super().__init__()
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}")
        self.cfg = cfg
        self.attention = attention
        self.visual = VisionTransformer(cfg, attention)
        self.prompt_meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(cfg.vit_width, cfg.meta_hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(cfg.meta_hidden, cfg.diag_tokens)),
        ]))
        self.adapter_proj = Projector(cfg)
        self.layers = nn.ModuleList([TransformerBlock(cfg, attention) for _ in range(cfg.llm_layers)])
        self.norm = RMSNorm(cfg.llm_dim, cfg.llm_norm_eps)
        self.adapter_output_cls = nn.Linear(cfg.llm_dim, cfg.num_classes, bias=False)
        self.fused = False
        self.reset_buffers()

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)build the constant tables (RoPE cos/sin, emitter mask) in fp32.

        They are non-persistent: not part of the state dict nor of the weights
        hash.  Call again after `.half()` / `.to_empty()`.
        """
        cos, sin = rope_tables(self.cfg.llm_head_dim, self.cfg.seq_len, self.cfg.rope_theta)
        mask = emitter_mask(self.cfg.source_tokens, self.cfg.diag_tokens)
        if device is None:
            device = self.adapter_output_cls.weight.device
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)
        self.register_buffer("emitter_mask", mask.to(device), persistent=False)

    def set_attention(self, attention: str) -> "PneumoLLM":
        """Switches the attention form of every block (same weights, same
        maths): e.g. `sdpa` to time PyTorch's fused kernel on a model built
        for an `ort-mha` export."""
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}")
        self.attention = attention
        for m in self.modules():
            if isinstance(m, (VisionAttention, LlamaAttention)):
                m.impl = attention
        return self

    def set_fused(self, fused: bool) -> "PneumoLLM":
        """The fused graph form (ONNX Runtime's SkipLayerNormalization,
        SkipSimplifiedLayerNormalization, QuickGelu, RotaryEmbedding; with
        `ort-mha`, the ViT's projection bias inside MultiHeadAttention).  The
        same maths in PyTorch; the export then needs ONNX Runtime."""
        self.fused = self.visual.fused = fused
        return self

    def fold_adapters(self) -> Callable[[], None]:
        """Folds every adapter into the projections that read it (the ViT's
        packed q/k/v, LLaMA's wq, wk, wv, which gain a bias); see
        `Adapter.fold_into`.  Exact in real arithmetic; in fp16 the folded
        weights round once where the reference rounds the adapter's output.
        Returns a function that restores the original weights."""
        if any(m.folded for m in self.modules() if isinstance(m, Adapter)):
            raise RuntimeError("adapters are already folded")
        undos = []
        for block in self.visual.transformer.resblocks:
            undos.append(block.adapter_attn.fold_into(block.attn, "in_proj_weight", "in_proj_bias"))
            block.adapter_attn.folded = True
        for layer in self.layers:
            for proj in (layer.attention.wq, layer.attention.wk, layer.attention.wv):
                undos.append(layer.adapter_attn.fold_into(proj, "weight", "bias"))
            layer.adapter_attn.folded = True

        def undo() -> None:
            for restore in reversed(undos):
                restore()
            for module in self.modules():
                if isinstance(module, Adapter):
                    module.folded = False
        return undo

    def set_precision(self, precision: str) -> "PneumoLLM":
        """fp32: everything fp32.  fp16: as the reference runs on the GPU:
        ViT, projector and LLaMA in fp16 (norms, RoPE and softmax computed in
        fp32), contextual engine (meta-net) and head in fp32."""
        if precision == "fp32":
            self.float()
        elif precision == "fp16":
            keep_fp32 = ("prompt_meta_net", "adapter_output_cls")
            for name, child in self.named_children():
                (child.float if name in keep_fp32 else child.half)()
        else:
            raise ValueError("precision must be fp32 or fp16")
        self.reset_buffers()
        return self

    def source_tokens(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def engine(self, sources: torch.Tensor) -> torch.Tensor:
        """Contextual multi-token engine: [B, S, Wv] -> [B, S + K, Wv] (fp32)."""
        s = _as_f32(sources)
        weights = self.prompt_meta_net(s).transpose(1, 2)  # [B, K, S]
        diag = torch.matmul(torch.softmax(weights, dim=-1), s)  # [B, K, Wv]
        return torch.cat([s, diag], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        seq = self.engine(self.source_tokens(image))
        h = self.adapter_proj(_to(seq, self.adapter_proj.conv_A.weight.dtype))
        if self.fused:
            normed = self.layers[0].attention_norm(h)
            for i, layer in enumerate(self.layers):
                next_norm = self.layers[i + 1].attention_norm if i + 1 < len(self.layers) else self.norm
                h, normed = layer.fused(h, normed, self.rope_cos, self.rope_sin, self.emitter_mask, next_norm)
            h = normed
        else:
            for layer in self.layers:
                h = layer(h, self.rope_cos, self.rope_sin, self.emitter_mask)
            h = self.norm(h)
        feature = h.mean(dim=1)
        return self.adapter_output_cls(_as_f32(feature))


def build_model(cfg: PneumoLLMConfig, attention: str = "explicit", device: str | torch.device = "cpu",
                empty: bool = False) -> PneumoLLM:
    """A model with uninitialised weights (call `random_init` or the loaders).

    `empty=True` allocates through the meta device first (no initialisation
    cost: for the 6.8 B-parameter `full` model).
    """
    if empty:
        with torch.device("meta"):
            model = PneumoLLM(cfg, attention)
        model.to_empty(device=device)
        model.reset_buffers(device)
        return model.eval()
    return PneumoLLM(cfg, attention).to(device).eval()


@torch.no_grad()
def random_init(model: PneumoLLM, seed: int) -> PneumoLLM:
    """Seeded random weights, deterministic for a given torch version.

    Parameters are filled in sorted-name order from one CPU generator.  The
    adapters' D weights are random too (block-diagonal), not zero as in
    training's initialisation, so the demo model's adapters change its output.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = dict(model.named_parameters())
    for name in sorted(params):
        p = params[name]
        if name.endswith("class_embedding") or name.endswith("positional_embedding"):
            value = torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5
        elif p.ndim == 1 and (".ln_" in name or "norm" in name) and name.endswith("weight"):
            value = 1.0 + 0.1 * torch.randn(p.shape, generator=gen)
        elif p.ndim == 1:  # biases
            value = 0.02 * torch.randn(p.shape, generator=gen)
        else:
            fan_in = p[0].numel()
            value = torch.randn(p.shape, generator=gen) / math.sqrt(fan_in)
        p.copy_(value.to(p.dtype))
    for module in model.modules():
        if isinstance(module, Adapter):
            keep = module.block_mask().bool().to(module.D.weight.device)
            # where(), not a multiplication: off-block entries must be +0.0, not -0.0
            module.D.weight.copy_(torch.where(keep, module.D.weight, torch.zeros_like(module.D.weight)))
    return model
