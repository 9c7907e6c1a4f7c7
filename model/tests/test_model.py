"""The architecture, component by component, on `tiny` (and `full`'s shapes on the meta device)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_image
from pneumollm import FULL, TINY, Adapter, PneumoLLM, apply_rope, build_model, emitter_mask, random_init, rope_tables
from pneumollm.contract import weights_sha256


def test_full_configuration_matches_the_paper():
    assert (FULL.vit_width, FULL.vit_layers, FULL.vit_heads, FULL.patch_size) == (1024, 24, 16, 14)
    assert FULL.vit_tokens == 257 and FULL.source_tokens == 6 and FULL.seq_len == 10
    assert (FULL.llm_dim, FULL.llm_layers, FULL.llm_heads, FULL.llm_ffn_hidden) == (4096, 32, 32, 11008)
    assert (FULL.adapter_dim, FULL.adapter_groups, FULL.meta_hidden, FULL.diag_tokens, FULL.proj_hidden) == (
        8, 2, 12, 4, 128)
    with torch.device("meta"):
        model = PneumoLLM(FULL)
    total = sum(p.numel() for p in model.parameters())
    assert 6.7e9 < total < 6.9e9
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if "adapter" in n or "prompt" in n)
    assert 2.0e6 < trainable < 3.5e6  # the paper's ~2.7 M trainable parameters (D stored dense here)


def test_tiny_keeps_every_component_and_is_small():
    assert TINY.vit_layers == 24 and TINY.source_tokens == 6 and TINY.diag_tokens == 4
    model = build_model(TINY)
    names = [n for n, _ in model.named_parameters()]
    for i in range(TINY.vit_layers):
        assert f"visual.transformer.resblocks.{i}.adapter_attn.D.weight" in names
    for i in range(TINY.llm_layers):
        assert f"layers.{i}.adapter_attn.A.weight" in names
    for name in ["prompt_meta_net.linear1.weight", "adapter_proj.conv_B.weight", "norm.weight",
                 "adapter_output_cls.weight"]:
        assert name in names
    assert sum(p.numel() for p in model.parameters()) * 4 < 5e6


def test_source_tokens_are_cls_after_every_4th_block(tiny_model):
    x = make_image(2)
    v = tiny_model.visual
    with torch.no_grad():
        h = v.conv1(x).flatten(2).transpose(1, 2)
        h = torch.cat([v.class_embedding.expand(2, 1, -1), h], 1) + v.positional_embedding
        h = v.ln_pre(h)
        cls = []
        for i, block in enumerate(v.transformer.resblocks):
            h = block(h)
            cls.append(h[:, 0])
        got = tiny_model.source_tokens(x)
    assert got.shape == (2, 6, TINY.vit_width)
    assert torch.equal(got, torch.stack([cls[i] for i in (3, 7, 11, 15, 19, 23)], 1))


def test_engine_makes_convex_mixes_of_the_sources(tiny_model):
    with torch.no_grad():
        s = tiny_model.source_tokens(make_image(2))
        seq = tiny_model.engine(s)
        assert seq.shape == (2, 10, TINY.vit_width)
        assert torch.equal(seq[:, :6], s)
        w = torch.softmax(tiny_model.prompt_meta_net(s).transpose(1, 2), -1)  # [B, K, 6]
        assert torch.allclose(w.sum(-1), torch.ones(2, 4))
        assert torch.allclose(seq[:, 6:], w @ s, atol=1e-6)


def test_rope_equals_llama_complex_form():
    hd, n = 16, 10
    cos, sin = rope_tables(hd, n, 10000.0)
    x = torch.randn(3, n, 4, hd)
    # LLaMA: view adjacent pairs as complex numbers, multiply by e^{i t f}
    freqs = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    angles = torch.outer(torch.arange(n).float(), freqs)
    cis = torch.polar(torch.ones_like(angles), angles)
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(3, n, 4, hd // 2, 2)) * cis[None, :, None]).flatten(3)
    assert torch.allclose(apply_rope(x, cos, sin), ref, atol=1e-5)


def test_emitter_mask():
    m = emitter_mask(6, 4)
    assert m.shape == (10, 10)
    assert (m[:, :6] == 0).all() and torch.isinf(m[:, 6:]).all() and (m[:, 6:] < 0).all()


def test_emitter_blocks_flow_out_of_diagnosis_tokens(tiny_model):
    """In an LLM layer, a diagnosis token's input reaches no other position."""
    layer = tiny_model.layers[0]
    args = (tiny_model.rope_cos, tiny_model.rope_sin, tiny_model.emitter_mask)
    h = torch.randn(1, 10, TINY.llm_dim)
    h2 = h.clone()
    h2[0, 8] += torch.randn(TINY.llm_dim)
    h3 = h.clone()
    h3[0, 2] += torch.randn(TINY.llm_dim)
    with torch.no_grad():
        a, b, c = layer(h, *args), layer(h2, *args), layer(h3, *args)
    changed = (a - b).abs().amax(-1)[0]
    assert changed[8] > 0 and torch.all(changed[torch.arange(10) != 8] == 0)
    assert ((a - c).abs().amax(-1)[0] > 0).all()  # a source token reaches every position


def test_adapters_are_block_diagonal_and_change_the_output(tiny_model):
    adapters = [m for m in tiny_model.modules() if isinstance(m, Adapter)]
    assert len(adapters) == TINY.vit_layers + TINY.llm_layers
    for a in adapters:
        assert not (a.D.weight * (1 - a.block_mask())).any()
        assert a.D.weight.abs().sum() > 0
    x = make_image(1)
    zeroed = build_model(TINY)
    zeroed.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        for a in [m for m in zeroed.modules() if isinstance(m, Adapter)]:
            a.D.weight.zero_()
            a.D.bias.zero_()
            y = torch.randn(2, a.dim)
            assert torch.equal(a(y), y)  # zero D: identity, as at the start of training
        assert not torch.allclose(zeroed(x), tiny_model(x))


@pytest.mark.parametrize("attention", ["sdpa", "ort-mha"])
def test_attention_forms_agree(tiny_model, attention):
    other = build_model(TINY, attention=attention)
    other.load_state_dict(tiny_model.state_dict())
    x = make_image(2)
    with torch.no_grad():
        assert (other(x) - tiny_model(x)).abs().max() <= 1e-5


def test_fp16_precision_keeps_engine_and_head_in_fp32(tiny_model):
    half = build_model(TINY)
    half.load_state_dict(tiny_model.state_dict())
    half.set_precision("fp16")
    assert half.layers[0].attention.wq.weight.dtype == torch.float16
    assert half.visual.conv1.weight.dtype == torch.float16
    assert half.prompt_meta_net.linear1.weight.dtype == torch.float32
    assert half.adapter_output_cls.weight.dtype == torch.float32
    assert half.rope_cos.dtype == torch.float32
    # the fp32 parts keep their exact values (no round trip through fp16)
    assert torch.equal(half.prompt_meta_net.linear1.weight, tiny_model.prompt_meta_net.linear1.weight)
    assert torch.equal(half.adapter_output_cls.weight, tiny_model.adapter_output_cls.weight)
    x = make_image(2)
    with torch.no_grad():
        out = half(x.half())
        assert out.dtype == torch.float32
        assert (out - tiny_model(x)).abs().max() < 5e-2


def test_random_init_is_deterministic_and_hash_is_stable():
    a = random_init(build_model(TINY), 7)
    b = random_init(build_model(TINY), 7)
    c = random_init(build_model(TINY), 8)
    sa = a.state_dict()
    assert weights_sha256(sa) == weights_sha256(b.state_dict()) != weights_sha256(c.state_dict())
    # independent of the dict's order; sensitive to one value, to names and to dtype
    assert weights_sha256(dict(reversed(list(sa.items())))) == weights_sha256(sa)
    changed = dict(sa)
    changed["norm.weight"] = sa["norm.weight"].clone()
    changed["norm.weight"][0] += 1e-3
    assert weights_sha256(changed) != weights_sha256(sa)
    assert weights_sha256({k: v.half() for k, v in sa.items()}) != weights_sha256(sa)


def test_set_attention_switches_every_block(tiny_model):
    other = build_model(TINY, attention="ort-mha")
    other.load_state_dict(tiny_model.state_dict())
    other.set_attention("sdpa")
    impls = {m.impl for m in other.modules() if hasattr(m, "impl")}
    assert impls == {"sdpa"} and other.attention == "sdpa"
    x = make_image(2)
    with torch.no_grad():
        assert (other(x) - tiny_model(x)).abs().max() <= 1e-5
    with pytest.raises(ValueError):
        other.set_attention("flash")


def _clone(model, attention="explicit"):
    other = build_model(TINY, attention=attention)
    other.load_state_dict(model.state_dict())
    return other


@pytest.mark.parametrize("attention", ["explicit", "ort-mha"])
def test_fused_form_is_the_same_maths(tiny_model, attention):
    fused = _clone(tiny_model, attention).set_fused(True)
    x = make_image(2, seed=5)
    with torch.no_grad():
        assert (fused(x) - tiny_model(x)).abs().max() <= 1e-5
        half, half_fused = _clone(tiny_model).set_precision("fp16"), fused.set_precision("fp16")
        assert (half_fused(x.half()) - half(x.half())).abs().max() < 5e-3


def test_folded_adapters_give_the_same_output_and_undo_restores_every_weight(tiny_model):
    model = _clone(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = make_image(2, seed=6)
    with torch.no_grad():
        ref = model(x)
        undo = model.fold_adapters()
        adapters = [m for m in model.modules() if isinstance(m, Adapter)]
        assert all(a.folded for a in adapters)
        y = torch.randn(3, TINY.vit_width)
        assert torch.equal(adapters[0](y), y)  # a folded adapter passes its input through
        assert model.layers[0].attention.wq.bias is not None  # LLaMA's projections gained the shift
        assert (model(x) - ref).abs().max() <= 1e-5
        with pytest.raises(RuntimeError, match="already folded"):
            model.fold_adapters()
        undo()
    assert not any(a.folded for a in adapters)
    assert model.layers[0].attention.wq.bias is None
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_folding_is_the_adapter_map_multiplied_in():
    """W(x + D(Ax + a) + d) + b, for a random projection and adapter, one vector at a time."""
    torch.manual_seed(0)
    adapter = Adapter(16, 8, 2)
    proj = torch.nn.Linear(16, 12)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
        adapter.D.weight.mul_(adapter.block_mask())
        x = torch.randn(5, 16)
        ref = proj(adapter(x))
        undo = adapter.fold_into(proj, "weight", "bias")
        assert (proj(x) - ref).abs().max() <= 1e-5
        undo()
        assert (proj(adapter(x)) - ref).abs().max() == 0
