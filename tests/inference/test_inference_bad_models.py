"""Bad models and bad ONNX Runtime libraries through the CLI: each a clear
error and exit status 1, never a panic or a hang."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nodetest import ROOT, free_port, node_binary

BAD = ROOT / "fixtures" / "models" / "bad"
IMAGE = ROOT / "fixtures" / "imaging" / "rg1s_mono2.dcm"


def node(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e["PNEUMO__LOG__LEVEL"] = "warn"
    e.update(env or {})
    return subprocess.run(
        [str(node_binary()), *map(str, args)], capture_output=True, text=True, env=e, cwd=ROOT, timeout=60
    )


def refused(r: subprocess.CompletedProcess, *needles: str) -> None:
    # check-config (and serve) exit 78 on a configuration error, the tools 1
    expected = 78 if r.args[1:2] == ["check-config"] else 1
    assert r.returncode == expected, (r.returncode, r.stdout, r.stderr)
    assert "panicked" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


@pytest.mark.parametrize(
    "model, needles",
    [
        ("missing.onnx", ["missing.onnx", "does not exist"]),
        ("not-onnx.onnx", ["cannot load model", "not-onnx.onnx"]),
        ("no-contract.onnx", ["no contract", "`pneumo.contract_version` is missing"]),
        ("wrong-rank.onnx", ["input `image` has rank 3", "rank 4"]),
    ],
)
@pytest.mark.parametrize("command", ["infer", "info"])
def test_bad_model_is_refused(model, needles, command):
    args = ["infer", IMAGE, "--model", BAD / model] if command == "infer" else ["model", "info", BAD / model]
    refused(node(*args), *needles)


def test_a_directory_or_a_missing_model_is_named_by_check_config_too(tmp_path):
    refused(node("model", "info", tmp_path), str(tmp_path), "is a directory, not a model file")
    refused(node("model", "info", "models/nowhere.onnx"), "nowhere.onnx", "a relative path is looked up")
    # check-config finds what `serve` would fail on at its next start
    refused(node("check-config", env={"PNEUMO__INFERENCE__MODEL": str(tmp_path / "gone.onnx")}),
            "inference.model", "does not exist")
    refused(node("check-config", env={"PNEUMO__INFERENCE__LUNG_SEGMENTATION_MODEL": str(tmp_path)}),
            "inference.lung_segmentation_model", "is a directory")
    assert node("check-config").returncode == 0
    # A segmentation model is read as a model too: a file that is none (here
    # the classifier) passed, and `serve` failed at every start.
    models = ROOT / "fixtures" / "models"
    refused(node("check-config", env={"PNEUMO__INFERENCE__LUNG_SEGMENTATION_MODEL": str(models / "pneumollm-tiny.onnx")}),
            "inference.lung_segmentation_model", "`pneumo.seg.contract_version` is missing")
    seg = {"PNEUMO__INFERENCE__LUNG_SEGMENTATION_MODEL": str(models / "lung-seg-synthetic.onnx")}
    assert node("check-config", env=seg).returncode == 0


@pytest.mark.parametrize("command", ["infer", "info"])
def test_an_input_without_a_declared_shape_and_an_empty_label_are_refused_by_model_info_too(tmp_path, command):
    """`model info` said OK to a model whose input declares no shape, which
    `infer` and `serve` then refused ("rank 0"); and an empty label was
    taken, and shown empty in `infer` and the API."""
    import onnx

    from nodetest import demo_model_with

    shapeless = onnx.load(str(ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"))
    shapeless.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(shapeless, str(tmp_path / "shapeless.onnx"))
    unnamed = demo_model_with(tmp_path / "unnamed-label.onnx", labels='["pneumoconiosis", " "]')

    def run(model):
        return node(*(["infer", IMAGE, "--model", model] if command == "infer" else ["model", "info", model]))

    refused(run(tmp_path / "shapeless.onnx"), "input `image` declares no shape", "export the input with its shape")
    refused(run(unnamed), "pneumo.labels", "a label is empty")


def test_nan_output_is_an_error_not_a_panic(tmp_path):
    # the model outputs sqrt(-channel means): NaN for RG1, whose normalised means are positive
    refused(node("infer", IMAGE, "--model", BAD / "nan-output.onnx"), "not finite")


def fake_ort(dir: Path, version: str) -> Path:
    cc = shutil.which("cc")
    if not cc:
        pytest.fail("a C compiler (cc) is needed to build a fake ONNX Runtime")
    src = dir / "fake.c"
    src.write_text(
        "#include <stddef.h>\n"
        "typedef struct { const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); } OrtApiBase;\n"
        "static const void *get_api(unsigned v) { (void)v; return NULL; }\n"
        f'static const char *version(void) {{ return "{version}"; }}\n'
        "static const OrtApiBase base = { get_api, version };\n"
        "const OrtApiBase *OrtGetApiBase(void) { return &base; }\n"
    )
    out = dir / f"libonnxruntime.so.{version}"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


@pytest.mark.parametrize("how", ["config", "ORT_DYLIB_PATH"])
def test_bad_libraries_are_refused_at_start(tmp_path, how):
    key = "PNEUMO__INFERENCE__ORT_LIBRARY" if how == "config" else "ORT_DYLIB_PATH"
    missing = tmp_path / "libonnxruntime.so.1.31.1"
    refused(node("infer", IMAGE, env={key: str(missing)}), str(missing), "does not exist")

    text = tmp_path / "libtext.so"
    text.write_text("hello\n")
    refused(node("model", "info", env={key: str(text)}), "not an ONNX Runtime library", "not an ELF")

    old = fake_ort(tmp_path, "1.16.3")
    refused(node("infer", IMAGE, env={key: str(old)}), "ONNX Runtime 1.16.3", "too old", "1.24.0 or newer")

    # One that the dynamic loader refuses: the reason is dlerror's, not
    # only "dlopen failed" (a library built against other dependencies).
    src = tmp_path / "unresolved.c"
    src.write_text("void missing_dependency(void);\nvoid f(void) { missing_dependency(); }\n")
    unresolved = tmp_path / "libunresolved.so"
    subprocess.run([shutil.which("cc"), "-shared", "-fPIC", "-Wl,-z,now", "-o", str(unresolved), str(src)], check=True)
    refused(node("model", "info", env={key: str(unresolved)}), "cannot load it", "undefined symbol: missing_dependency")


def test_bad_settings_name_their_key():
    r = node("check-config", env={"PNEUMO__INFERENCE__MAX_BATCH": "0"})
    refused(r, "inference.max_batch")
    r = node("check-config", env={"PNEUMO__INFERENCE__EXECUTION_PROVIDER": "gpu"})
    refused(r, "inference.execution_provider")


def test_bad_model_fixtures_are_reproducible():
    spec = importlib.util.spec_from_file_location("make_bad_models", BAD / "make_bad_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, data in mod.build().items():
        assert (BAD / name).read_bytes() == data, f"{name}: run fixtures/models/bad/make_bad_models.py"


def demo_with_metadata(out: Path, extra: list[tuple[str, str]]) -> Path:
    """The demo model with `extra` metadata entries appended (a key may come twice)."""
    import onnx

    model = onnx.load(str(ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"))
    for key, value in extra:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize("command", ["infer", "info"])
def test_a_contract_key_given_twice_is_refused(tmp_path, command):
    """ONNX Runtime and the file reader need not keep the same one of two
    values: the threshold (or whether the weights are a demo) would depend
    on which read it."""
    model = demo_with_metadata(tmp_path / "twice.onnx", [("pneumo.decision_threshold", "0.9")])
    args = ["infer", IMAGE, "--model", model] if command == "infer" else ["model", "info", model]
    refused(node(*args), "`pneumo.decision_threshold` is given more than once")


@pytest.mark.parametrize("command", ["infer", "info"])
def test_the_demo_weights_relabelled_trained_are_refused(tmp_path, command):
    from nodetest import demo_model_with

    model = demo_model_with(tmp_path / "relabelled.onnx", weights_kind="trained")
    args = ["infer", IMAGE, "--model", model] if command == "infer" else ["model", "info", model]
    refused(node(*args), "pneumo.weights_kind", "bundled demo model's random weights")


def test_a_model_with_external_weights_loads_through_a_link(tmp_path):
    """`current.onnx -> v2/model.onnx`, the weights in v2/: ONNX Runtime
    refuses external data outside the directory of the path it is given,
    so the node gives it the file the link points to."""
    import onnx

    model = onnx.load(str(ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"))
    (tmp_path / "v2").mkdir()
    onnx.save_model(model, str(tmp_path / "v2" / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "v2" / "model.onnx.data").stat().st_size > 0
    (tmp_path / "current.onnx").symlink_to(Path("v2") / "model.onnx")
    direct = node("infer", IMAGE, "--json", "--model", tmp_path / "v2" / "model.onnx")
    linked = node("infer", IMAGE, "--json", "--model", tmp_path / "current.onnx")
    assert direct.returncode == 0, direct.stderr
    assert linked.returncode == 0, linked.stderr
    assert json.loads(linked.stdout)["prediction"]["logits"] == json.loads(direct.stdout)["prediction"]["logits"]


@pytest.mark.parametrize("name,op", [("softmax-output", "Softmax"), ("sigmoid-output", "Sigmoid"),
                                     ("softmax-percent-output", "Softmax"),
                                     ("sigmoid-concat-output", "Sigmoid")])
def test_a_graph_whose_output_is_already_scored_is_refused(name, op):
    """The contract says logits, the graph ends in a Softmax (or a Sigmoid,
    behind an Identity; a Softmax × 100; per-class Sigmoids joined by a
    Concat): the node's softmax came second and squeezed the probabilities
    (softmax(sigmoid) took 0.957 to 0.518; a percentage read 1.0).
    Refused by `model info`, `infer` and `check-config`, naming the
    operator."""
    said = f"output `logits` is computed by a {op} node (or holds its values"
    for r in (node("model", "info", BAD / f"{name}.onnx"),
              node("infer", IMAGE, "--model", BAD / f"{name}.onnx"),
              node("check-config", env={"PNEUMO__INFERENCE__MODEL": str(BAD / f"{name}.onnx")})):
        refused(r, said)


def test_a_graph_that_normalises_its_own_output_is_refused_when_run():
    """The contract says logits, the graph outputs probabilities by a
    softmax written out (no operator to refuse it by): the node's softmax
    would come second and squeeze them (a threshold of 0.8 never reached
    with two labels). Found when the model is loaded (an image of zeros and
    one of ones give rows that sum to 1): `infer` and `serve` refuse it;
    `model info`, which runs nothing, does not see it."""
    said = "output `logits` sums to 1 with every value in [0, 1] for unlike images"
    refused(node("infer", IMAGE, "--model", BAD / "exp-normalised-output.onnx"), said)
    assert node("model", "info", BAD / "exp-normalised-output.onnx").returncode == 0
    plain = node("infer", IMAGE)
    assert plain.returncode == 0 and "sums to 1" not in plain.stderr, plain.stderr


@pytest.mark.parametrize("name", ["batch-mixing", "rows-reversed"])
def test_a_graph_whose_rows_depend_on_their_batch_is_refused_when_batches_are_served(name, tmp_path):
    """A batch normalisation exported in training mode (a mean across the
    batch) or rows put in another order: each image alone was right, so
    `infer` looked fine, while a batch of several patients gave each a
    result moved by the others' images, or another's outright. Refused
    when loaded with batches (exit 78 for `serve`); served one at a time
    with inference.max_batch = 1."""
    model = BAD / f"{name}.onnx"
    said = "output `logits` for an image depends on the other images of its batch"
    refused(node("infer", IMAGE, "--model", model), said, "evaluation mode")
    one_by_one = node("infer", IMAGE, "--model", model, env={"PNEUMO__INFERENCE__MAX_BATCH": "1"})
    assert one_by_one.returncode == 0, one_by_one.stderr
    served = node("serve", env={"PNEUMO__INFERENCE__MODEL": str(model), "PNEUMO__NODE__DATA_DIR": str(tmp_path),
                                "PNEUMO__DICOM__PORT": str(free_port()), "PNEUMO__HTTP__ENABLED": "false"})
    assert served.returncode == 78 and said in served.stderr, (served.returncode, served.stderr)


def test_a_graph_whose_output_is_never_finite_is_refused_when_run():
    """Minus infinity for every image: the node started ready and failed
    every analysis with a NOT ANALYSED notice each."""
    refused(node("infer", IMAGE, "--model", BAD / "inf-output.onnx"),
            "is finite for none of the probe images")
    # finite for some images: left to fail those alone
    assert "for none of the probe images" not in node("infer", IMAGE, "--model", BAD / "nan-output.onnx").stderr


def external_copy(tmp_path: Path) -> Path:
    """The demo model saved with its weights in `m.onnx.data` beside it."""
    import onnx

    model = onnx.load(str(ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    return tmp_path / "m.onnx"


def test_external_weights_left_behind_or_cut_short_are_named_before_a_start(tmp_path):
    """The likeliest deployment mistake: the .onnx copied without its
    .onnx.data, or the .data cut short by a copy. `check-config` and
    `model info` passed such a model and `serve` failed at start with
    ONNX Runtime's message; now each names the file."""
    model = external_copy(tmp_path)
    data = tmp_path / "m.onnx.data"
    env = {"PNEUMO__INFERENCE__MODEL": str(model)}
    assert node("check-config", env=env).returncode == 0
    whole = data.read_bytes()
    data.write_bytes(whole[: len(whole) // 2])
    cut = f"its weights file {data} is {len(whole) // 2} bytes"
    for r in (node("check-config", env=env), node("infer", IMAGE, "--model", model)):
        refused(r, cut, "a copy cut short?")
    # `model info` shows the contract of the .onnx alone, and says it
    info = node("model", "info", model, "--json")
    assert info.returncode == 0 and cut in info.stderr, info.stderr
    assert cut in json.loads(info.stdout)["weights_problem"]
    data.unlink()
    gone = f"are in {data}, beside the model, which cannot be read"
    for r in (node("check-config", env=env), node("infer", IMAGE, "--model", model)):
        refused(r, gone)
    assert gone in node("model", "info", model).stderr


def test_a_cache_of_links_to_content_named_files_loads(tmp_path):
    """The layout of a model cache that keeps files under their hashes:
    `snapshot/m.onnx -> ../blobs/<hash>`, `snapshot/m.onnx.data ->
    ../blobs/<other hash>`. ONNX Runtime loads it by the link; the node,
    giving it the real file, found no weights beside `blobs/<hash>`."""
    model = external_copy(tmp_path)
    (tmp_path / "blobs").mkdir()
    (tmp_path / "snapshot").mkdir()
    model.rename(tmp_path / "blobs" / "3f2a")
    (tmp_path / "m.onnx.data").rename(tmp_path / "blobs" / "9c1e")
    (tmp_path / "snapshot" / "m.onnx").symlink_to(Path("..") / "blobs" / "3f2a")
    (tmp_path / "snapshot" / "m.onnx.data").symlink_to(Path("..") / "blobs" / "9c1e")
    linked = tmp_path / "snapshot" / "m.onnx"
    r = node("infer", IMAGE, "--json", "--model", linked)
    assert r.returncode == 0, r.stderr
    plain = node("infer", IMAGE, "--json")
    assert json.loads(r.stdout)["prediction"]["logits"] == json.loads(plain.stdout)["prediction"]["logits"]
    info = node("model", "info", linked, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["weights_problem"] is None, info.stderr
    assert node("check-config", env={"PNEUMO__INFERENCE__MODEL": str(linked)}).returncode == 0


def test_external_weights_named_through_a_folder_and_back_are_taken(tmp_path):
    """`sub/../m.onnx.data` lies in the model's directory, and ONNX Runtime
    takes it: it was refused as outside, for its `..`."""
    import onnx

    (tmp_path / "in" / "sub").mkdir(parents=True)
    model = external_copy(tmp_path / "in")
    m = onnx.load(str(model), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "sub/../" + entry.value
    onnx.save(m, str(model))
    assert node("check-config", env={"PNEUMO__INFERENCE__MODEL": str(model)}).returncode == 0
    r = node("infer", IMAGE, "--json", "--model", model)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("key,value,said", [
    ("location", "../m.onnx.data", "outside the model's directory"),
    # In the model's own directory, named absolutely: it was said to be
    # "outside the model's directory".
    ("location", "ABSOLUTE", "which ONNX Runtime refuses (\"Absolute path not allowed"),
    ("offset", "-1", "its `offset` `-1` is no byte count"),
])
def test_external_weights_ort_would_refuse_are_named_before_a_start(tmp_path, key, value, said):
    """Weights outside the model's directory, or at an offset that is no
    byte count, passed `check-config` and failed at start with ONNX
    Runtime's message."""
    import onnx

    (tmp_path / "in").mkdir()
    model = external_copy(tmp_path / "in")
    m = onnx.load(str(model), load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == key:
                entry.value = str(model.parent / entry.value) if value == "ABSOLUTE" else value
        if key == "offset" and not any(e.key == "offset" for e in t.external_data):
            entry = t.external_data.add()
            entry.key, entry.value = "offset", value
    onnx.save(m, str(model))
    env = {"PNEUMO__INFERENCE__MODEL": str(model)}
    for r in (node("check-config", env=env), node("infer", IMAGE, "--model", model)):
        refused(r, said)
