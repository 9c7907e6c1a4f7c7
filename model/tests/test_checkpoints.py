"""Checkpoint loaders: tiny files in the real formats, loaded into `tiny`."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import (
    clip_state_dict,
    llama_params,
    llama_state_dict,
    make_image,
    pneumollm_state_dict,
    save_clip_torchscript,
    save_llama_dir,
    save_pneumollm_checkpoint,
)
from pneumollm import TINY, build_model
from pneumollm.checkpoints import (
    CheckpointError,
    load_clip,
    load_llama,
    load_pneumollm,
    load_pretrained,
)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_load_all_three_reproduces_the_model(tiny_model, checkpoint_files):
    clip, llama, pneumo = checkpoint_files
    model = build_model(TINY, empty=True)
    load_pretrained(model, clip, llama, pneumo)
    _same_weights(model, tiny_model)
    x = make_image(2)
    with torch.no_grad():
        assert torch.equal(model(x), tiny_model(x))


def test_each_loader_fills_only_its_part(tiny_model, checkpoint_files):
    clip, llama, pneumo = checkpoint_files
    model = build_model(TINY)
    names = {n for n, _ in model.named_parameters()}
    a, b, c = load_clip(model, clip), load_llama(model, llama), load_pneumollm(model, pneumo)
    assert not (a & b) and not (a & c) and not (b & c)
    assert a | b | c == names
    assert all(k.startswith("visual.") and "adapter" not in k for k in a)
    assert all((k.startswith("layers.") and "adapter" not in k) or k == "norm.weight" for k in b)


def test_clip_torchscript_archive(tmp_path, tiny_model):
    path = save_clip_torchscript(tmp_path / "ViT-L-14.pt", clip_state_dict(tiny_model))
    model = build_model(TINY)
    load_clip(model, path)
    sd = model.state_dict()
    for k, v in tiny_model.state_dict().items():
        if k.startswith("visual.") and "adapter" not in k:
            assert torch.equal(sd[k], v), k


def test_fp16_checkpoints_are_cast(tmp_path, tiny_model):
    """OpenAI and Meta ship fp16 weights: they load into an fp32 model."""
    clip = tmp_path / "clip16.pt"
    torch.save(clip_state_dict(tiny_model, torch.float16), clip)
    llama = save_llama_dir(tmp_path / "llama16", llama_state_dict(tiny_model, torch.float16))
    model = build_model(TINY)
    load_clip(model, clip)
    load_llama(model, llama)
    w = model.state_dict()["layers.1.attention.wq.weight"]
    assert w.dtype == torch.float32
    assert torch.equal(w, tiny_model.state_dict()["layers.1.attention.wq.weight"].half().float())


def test_reference_adapter_layout(tmp_path, tiny_model):
    """conv_D (groups=2) becomes a block-diagonal Linear; conv_A drops its kernel axis."""
    tensors = pneumollm_state_dict(tiny_model)
    d = tensors["layers.0.adapter_attn.conv_D.weight"]
    assert d.shape == (TINY.llm_dim, TINY.adapter_dim // 2, 1)
    model = build_model(TINY)
    load_pneumollm(model, save_pneumollm_checkpoint(tmp_path / "p.pth", tensors))
    dense = model.layers[0].adapter_attn.D.weight
    half = TINY.llm_dim // 2
    assert torch.equal(dense[:half, :4], d[:half, :, 0])
    assert torch.equal(dense[half:, 4:], d[half:, :, 0])
    assert not dense[:half, 4:].any() and not dense[half:, :4].any()
    # a conv1d with groups=2 on one token == our Linear
    conv = torch.nn.Conv1d(TINY.adapter_dim, TINY.llm_dim, 1, groups=2)
    conv.weight.data.copy_(d)
    conv.bias.data.copy_(tensors["layers.0.adapter_attn.conv_D.bias"])
    h = torch.randn(3, TINY.adapter_dim)
    with torch.no_grad():
        ref = conv(h[:, :, None])[..., 0]
        assert torch.allclose(model.layers[0].adapter_attn.D(h), ref, atol=1e-6)


@pytest.mark.parametrize("kind, key", [
    ("clip", "visual.transformer.resblocks.7.attn.in_proj_bias"),
    ("clip", "visual.positional_embedding"),
    ("llama", "layers.1.feed_forward.w2.weight"),
    ("llama", "norm.weight"),
    ("pneumollm", "backbone.visual.transformer.resblocks.23.adapter_attn.conv_D.weight"),
    ("pneumollm", "layers.0.adapter_attn.conv_A.bias"),
    ("pneumollm", "prompt_meta_net.linear2.weight"),
    ("pneumollm", "adapter_output_cls.weight"),
])
def test_missing_key_is_refused_by_name(tmp_path, tiny_model, kind, key):
    model = build_model(TINY)
    if kind == "clip":
        sd = clip_state_dict(tiny_model)
        del sd[key]
        torch.save(sd, tmp_path / "c.pt")
        call = lambda: load_clip(model, tmp_path / "c.pt")  # noqa: E731
    elif kind == "llama":
        sd = llama_state_dict(tiny_model)
        del sd[key]
        call = lambda: load_llama(model, save_llama_dir(tmp_path / "l", sd))  # noqa: E731
    else:
        sd = pneumollm_state_dict(tiny_model)
        del sd[key]
        call = lambda: load_pneumollm(model, save_pneumollm_checkpoint(tmp_path / "p.pth", sd))  # noqa: E731
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        call()


@pytest.mark.parametrize("kind, key", [
    ("clip", "visual.transformer.resblocks.3.mlp.c_fc.weight"),
    ("llama", "layers.0.attention.wk.weight"),
    ("pneumollm", "adapter_proj.conv_B.weight"),
    ("pneumollm", "layers.1.adapter_attn.conv_D.weight"),
])
def test_misshapen_key_is_refused_by_name(tmp_path, tiny_model, kind, key):
    model = build_model(TINY)
    if kind == "clip":
        sd = clip_state_dict(tiny_model)
        sd[key] = sd[key][:-1]
        torch.save(sd, tmp_path / "c.pt")
        call = lambda: load_clip(model, tmp_path / "c.pt")  # noqa: E731
    elif kind == "llama":
        sd = llama_state_dict(tiny_model)
        sd[key] = sd[key].t().contiguous()[:, :-1]
        call = lambda: load_llama(model, save_llama_dir(tmp_path / "l", sd))  # noqa: E731
    else:
        sd = pneumollm_state_dict(tiny_model)
        sd[key] = sd[key][..., 0] if sd[key].ndim == 3 else sd[key][:, :-1]
        call = lambda: load_pneumollm(model, save_pneumollm_checkpoint(tmp_path / "p.pth", sd))  # noqa: E731
    with pytest.raises(CheckpointError, match=f"key '{key}' has shape .* expected"):
        call()


def test_params_json_mismatch_is_refused(tmp_path, tiny_model):
    params = llama_params() | {"dim": 4096}
    path = save_llama_dir(tmp_path / "l", llama_state_dict(tiny_model), params)
    with pytest.raises(CheckpointError, match="key 'dim' is 4096"):
        load_llama(build_model(TINY), path)
    params = llama_params()
    del params["n_heads"]
    path = save_llama_dir(tmp_path / "l2", llama_state_dict(tiny_model), params)
    with pytest.raises(CheckpointError, match="missing key 'n_heads'"):
        load_llama(build_model(TINY), path)


def test_extra_blocks_are_refused(tmp_path, tiny_model):
    sd = clip_state_dict(tiny_model)
    sd["visual.transformer.resblocks.24.ln_1.weight"] = torch.ones(TINY.vit_width)
    torch.save(sd, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"unexpected key 'visual\.transformer\.resblocks\.24\.ln_1\.weight'"):
        load_clip(build_model(TINY), tmp_path / "c.pt")
    sd = llama_state_dict(tiny_model)
    sd["layers.2.ffn_norm.weight"] = torch.ones(TINY.llm_dim)
    with pytest.raises(CheckpointError, match=r"unexpected key 'layers\.2\.ffn_norm\.weight'"):
        load_llama(build_model(TINY), save_llama_dir(tmp_path / "l", sd))


def test_unknown_trained_key_is_refused(tmp_path, tiny_model):
    """e.g. the reference's 'block' adapter type adds adapter_mlp, which this architecture lacks."""
    sd = pneumollm_state_dict(tiny_model)
    sd["layers.0.adapter_mlp.conv_A.weight"] = torch.zeros(8, TINY.llm_dim, 1)
    with pytest.raises(CheckpointError, match=r"unexpected key 'layers\.0\.adapter_mlp\.conv_A\.weight'"):
        load_pneumollm(build_model(TINY), save_pneumollm_checkpoint(tmp_path / "p.pth", sd))


def test_missing_files_are_reported(tmp_path):
    model = build_model(TINY)
    with pytest.raises(CheckpointError, match="not found"):
        load_clip(model, tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="params.json not found"):
        load_llama(model, tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(llama_params()))
    with pytest.raises(CheckpointError, match="consolidated.00.pth"):
        load_llama(model, tmp_path)


def test_export_cli_with_checkpoints(tmp_path, tiny_model, checkpoint_files):
    import export

    clip, llama, pneumo = checkpoint_files
    out = tmp_path / "trained.onnx"
    assert export.main(["--config", "tiny", "--clip", str(clip), "--llama", str(llama), "--pneumollm",
                        str(pneumo), "--out", str(out), "--model-version", "2.0.0"]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["pneumo.weights_kind"] == "trained"
    assert meta["pneumo.crop_mode"] == "lung-box"
    assert meta["pneumo.model_version"] == "2.0.0"
    from pneumollm.contract import weights_sha256
    assert meta["pneumo.weights_sha256"] == weights_sha256(tiny_model.state_dict())
    x = make_image(2, seed=5)
    with torch.no_grad():
        ref = tiny_model(x).numpy()
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-5


def test_export_cli_with_checkpoints_fp16(tmp_path, tiny_model, checkpoint_files):
    import export

    clip, llama, pneumo = checkpoint_files
    out = tmp_path / "trained16.onnx"
    assert export.main(["--config", "tiny", "--clip", str(clip), "--llama", str(llama), "--pneumollm",
                        str(pneumo), "--precision", "fp16", "--out", str(out)]) == 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert (meta["pneumo.precision"], meta["pneumo.input_dtype"]) == ("fp16", "float16")
    half = build_model(TINY)
    half.load_state_dict(tiny_model.state_dict())
    from pneumollm.contract import weights_sha256
    assert meta["pneumo.weights_sha256"] == weights_sha256(half.set_precision("fp16").state_dict())
    x = make_image(2, seed=9)
    with torch.no_grad():
        ref = tiny_model(x).numpy()
    got = sess.run(["logits"], {"image": x.half().numpy()})[0]
    assert np.abs(got - ref).max() < 5e-2
