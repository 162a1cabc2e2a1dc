"""The ComfyUI node pack without a ComfyUI: import, the node's contract, model files, locales, packaging.

What needs ComfyUI itself (memory management, progress, interrupt, the
server) is in test_e2e_comfyui.py.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import subprocess
import sys

import pytest

from tests import fake_comfy
from tests.fake_hub import fake_hub, modelscope_files, refused_endpoint
from tests.pack import REPO, load_pack
from tests.workflow_check import spec_from_node_class

pack = load_pack()
models = sys.modules[f"{pack.__name__}.nodes.models"]
colorize_module = sys.modules[f"{pack.__name__}.nodes.colorize"]
engine = sys.modules[f"{pack.__name__}.ddcolor"]

NODE = "DDColor-ddcolorize"
VIDEO_NODE = "DDColor-colorize-video"
FINETUNE = "DDColor-finetune"
NODES = {NODE: "DDColor Colorize", VIDEO_NODE: "DDColor Colorize Video", FINETUNE: "DDColor Fine-tune"}
PUBLISHED_NAMES = ["ddcolor_modelscope", "ddcolor_artistic", "ddcolor_paper", "ddcolor_paper_tiny"]


# ----------------------------------------------------------------------------- import


IMPORT_PROBE = r"""
import json, socket, subprocess, sys, time
import torch  # ComfyUI has imported torch before it loads any pack

def refuse(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"importing the pack must not {what}")
    return fail

socket.socket.connect = refuse("open a network connection")
subprocess.Popen.__init__ = refuse("run a program (pip)")
torch.nn.Module.__init__ = refuse("build a model")
sys.path.insert(0, sys.argv[1])
start = time.perf_counter()
from tests.pack import load_pack
pack = load_pack()
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "nodes": pack.NODE_CLASS_MAPPINGS and list(pack.NODE_CLASS_MAPPINGS),
    "display": pack.NODE_DISPLAY_NAME_MAPPINGS,
    "modules": sorted(m for m in sys.modules if m in ("nodes", "folder_paths", "comfy", "huggingface_hub")),
    "heavy": sorted({m.split(".")[0] for m in sys.modules} & {"cv2", "av", "ray", "spandrel", "torchvision", "PIL", "safetensors"}),
}))
"""


def test_pack_import_is_fast_and_has_no_side_effects(tmp_path):
    # A fresh interpreter, started outside the repository so that our nodes/
    # folder cannot be found as a top-level module by accident.
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, str(REPO)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.splitlines()[-1])
    assert facts["nodes"] == list(NODES)
    assert facts["display"] == NODES
    # Not ComfyUI's top-level `nodes`, no ComfyUI module, and no downloader until a download happens.
    assert facts["modules"] == []
    # What makes an import slow is importing heavy libraries (video, clusters,
    # image codecs) or building models (refused above); none may happen.
    assert facts["heavy"] == []
    # A bound only for a pathological import: measured 0.13-0.19 s with load
    # average 20 on 2 cores (AMD EPYC Zen 3); a busy CI machine must not fail it.
    assert facts["seconds"] < 10.0, f"import took {facts['seconds']:.2f} s"


def test_mappings_point_at_the_node_class():
    cls = pack.NODE_CLASS_MAPPINGS[NODE]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[NODE] == "DDColor Colorize"
    assert callable(getattr(cls(), cls.FUNCTION))
    assert "comfy_entrypoint" not in vars(pack)


def test_a_comfyui_without_the_versioned_api_gets_only_the_classic_mappings(monkeypatch, tmp_path):
    # The stand-in has comfy_api (its VIDEO classes) but no comfy_api.latest, as a ComfyUI before the versioned API.
    fake_comfy.install(monkeypatch, tmp_path / "models" / "ddcolor")
    name = "ddcolor_pack_on_an_older_comfyui"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    older = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, older)
    try:
        spec.loader.exec_module(older)
    finally:
        for module in [m for m in sys.modules if m.startswith(name + ".")]:
            del sys.modules[module]
    assert "comfy_entrypoint" not in vars(older)
    assert older.NODE_DISPLAY_NAME_MAPPINGS == NODES
    # The same declarations as the pack imported without any ComfyUI.
    for node_id, cls in older.NODE_CLASS_MAPPINGS.items():
        assert cls.INPUT_TYPES() == pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()


def test_register_models_folder_is_a_no_op_without_comfyui():
    assert models.register_models_folder() is None


# ----------------------------------------------------------------------------- the node's contract


@pytest.fixture
def node_class():
    return pack.NODE_CLASS_MAPPINGS[NODE]


def test_node_identity(node_class):
    assert node_class.CATEGORY == "image/color"
    assert node_class.RETURN_TYPES == ("IMAGE",)
    assert node_class.RETURN_NAMES == ("image",)
    assert len(node_class.OUTPUT_TOOLTIPS) == 1 and node_class.OUTPUT_TOOLTIPS[0]
    assert "DDColor" in node_class.DESCRIPTION and len(node_class.DESCRIPTION) > 80


def test_input_types_order_and_defaults(node_class):
    types = node_class.INPUT_TYPES()
    assert list(types) == ["required", "optional"]
    assert list(types["required"]) == ["image", "precision", "size"]
    assert list(types["optional"]) == ["model", "temporal"]
    assert types["required"]["image"][0] == "IMAGE"

    precision, options = types["required"]["precision"]
    assert precision == ["fp16", "fp32", "bf16", "auto"] and options["default"] == "fp16"

    kind, options = types["required"]["size"]
    assert kind == "INT"
    assert {k: options[k] for k in ("default", "min", "max", "step")} == {"default": 512, "min": 256, "max": 2048, "step": 32}
    assert "control_after_generate" not in options  # it would add a hidden widget value

    choices, options = types["optional"]["model"]
    assert choices == PUBLISHED_NAMES  # no ComfyUI here: no model folder to list
    assert options["default"] == "ddcolor_modelscope"

    kind, options = types["optional"]["temporal"]
    assert kind == "FLOAT"
    assert {k: options[k] for k in ("default", "min", "max")} == {"default": 0.0, "min": 0.0, "max": 1.0}
    assert 0 < options["step"] <= 0.05


def test_widget_values_are_precision_size_model_temporal(node_class):
    spec = spec_from_node_class(NODE, node_class)
    assert [name for name, _ in spec.widgets()] == ["precision", "size", "model", "temporal"]


def test_temporal_tooltip_says_when_to_use_it(node_class):
    tooltip = node_class.INPUT_TYPES()["optional"]["temporal"][1]["tooltip"]
    assert "one clip" in tooltip and "unrelated photos" in tooltip
    assert f"{colorize_module.RECOMMENDED_STRENGTH:g}" in tooltip


def test_every_input_has_a_tooltip(node_class):
    types = node_class.INPUT_TYPES()
    for section in types.values():
        for name, declaration in section.items():
            assert len(declaration[1].get("tooltip", "")) > 20, f"{name} has no useful tooltip"


def test_size_tooltip_gives_the_preset_ranges(node_class):
    tooltip = node_class.INPUT_TYPES()["required"]["size"][1]["tooltip"]
    assert "460-680" in tooltip and "960-1280" in tooltip and "32" in tooltip


def test_model_and_temporal_are_optional_in_the_signature(node_class):
    # Prompts saved before these widgets existed send only precision and size (and model).
    signature = inspect.signature(getattr(node_class, node_class.FUNCTION))
    assert list(signature.parameters) == ["image", "precision", "size", "model", "temporal"]
    assert signature.parameters["model"].default == "ddcolor_modelscope"
    assert signature.parameters["temporal"].default == 0.0


# ----------------------------------------------------------------------------- model files


def test_model_choices_list_published_then_files():
    files = ["zz_custom.safetensors", "old/ddcolor_v1.pth", "notes.txt", "ddcolor_modelscope.pth",
             ".cache/huggingface/download/ddcolor_paper.pth.incomplete", ".cache/x.pth", "sub/.hidden.pth"]
    assert models.model_choices(files) == [*PUBLISHED_NAMES, "old/ddcolor_v1.pth", "zz_custom.safetensors"]


def test_published_checkpoint_is_found_in_any_model_folder(tmp_path):
    first, second = tmp_path / "models" / "ddcolor", tmp_path / "extra"
    first.mkdir(parents=True)
    second.mkdir()
    (second / "ddcolor_artistic.pth").write_bytes(b"x")
    assert models.locate_checkpoint("ddcolor_artistic", [first, second]) == second / "ddcolor_artistic.pth"


def test_custom_checkpoint_is_found_by_relative_name(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mine.safetensors").write_bytes(b"x")
    assert models.locate_checkpoint("sub/mine.safetensors", [tmp_path]) == tmp_path / "sub" / "mine.safetensors"


def test_missing_custom_checkpoint_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        models.locate_checkpoint("gone.pth", [tmp_path])
    message = str(error.value)
    assert "gone.pth" in message and str(tmp_path) in message and "ddcolor_modelscope" in message


@pytest.mark.parametrize("name", ["../secret.pth", "/etc/passwd"])
def test_names_outside_the_folder_are_refused(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="inside the ddcolor model folder"):
        models.locate_checkpoint(name, [tmp_path])


def test_offline_missing_published_checkpoint_names_file_url_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(engine.DownloadError) as error:
        models.locate_checkpoint("ddcolor_paper_tiny", [tmp_path])
    message = str(error.value)
    assert "ddcolor_paper_tiny.pth" in message
    assert "https://huggingface.co/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth" in message
    assert str(tmp_path) in message


@pytest.fixture
def hub(monkeypatch):
    with fake_hub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def test_missing_published_checkpoint_is_downloaded_into_the_first_folder(tmp_path, hub):
    payload = bytes(range(256)) * 4096  # 1 MiB
    hub.files["/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth"] = payload
    first, second = tmp_path / "models" / "ddcolor", tmp_path / "extra"
    reports = []
    path = models.locate_checkpoint("ddcolor_paper_tiny", [first, second], lambda done, total: reports.append((done, total)))
    assert path == first / "ddcolor_paper_tiny.pth"
    assert path.read_bytes() == payload
    assert reports and reports[-1] == (len(payload), len(payload))
    # Present now: no second download.
    count = len(hub.requests)
    assert models.locate_checkpoint("ddcolor_paper_tiny", [first, second]) == path
    assert len(hub.requests) == count


def test_download_falls_back_to_modelscope_with_progress_on_the_node(tmp_path, monkeypatch):
    payload = bytes(range(256)) * 4096  # 1 MiB
    with fake_hub(modelscope_files("damo/cv_ddcolor_image-colorization", "pytorch_model.pt", payload)) as ms:
        monkeypatch.setenv("HF_ENDPOINT", refused_endpoint())  # Hugging Face unreachable, as behind a firewall
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("DDCOLOR_SOURCE", raising=False)
        reports = []
        path = models.locate_checkpoint("ddcolor_modelscope", [tmp_path], lambda done, total: reports.append((done, total)))
    assert path == tmp_path / "ddcolor_modelscope.pth" and path.read_bytes() == payload
    assert reports[-1] == (len(payload), len(payload))
    assert models.model_choices(["ddcolor_modelscope.pth"]).count("ddcolor_modelscope") == 1


def test_failed_download_names_file_url_and_folder(tmp_path, hub):
    # The hub answers 404 (a renamed file, a mirror without it): the error says how to get it by hand.
    with pytest.raises(engine.DownloadError) as error:
        models.locate_checkpoint("ddcolor_artistic", [tmp_path])
    message = str(error.value)
    assert "ddcolor_artistic.pth" in message
    assert f"{hub.endpoint}/piddnad/DDColor-models/resolve/main/ddcolor_artistic.pth" in message
    assert str(tmp_path) in message
    assert not (tmp_path / "ddcolor_artistic.pth").exists()


# ----------------------------------------------------------------------------- the model cache


def test_cache_reuses_the_model_for_the_same_key():
    cache, built = models.ModelCache(), []
    first = cache.get(("a", "fp16"), lambda: built.append(1) or object())
    assert cache.get(("a", "fp16"), lambda: built.append(2) or object()) is first
    assert built == [1]


def test_cache_replaces_the_model_when_the_key_changes():
    cache, held_while_building = models.ModelCache(), []

    def build(name):
        held_while_building.append(cache._value)
        return name

    cache.get(("a", "fp16"), lambda: build("a"))
    assert cache.get(("a", "fp32"), lambda: build("a32")) == "a32"
    assert cache.get(("b", "fp32"), lambda: build("b")) == "b"
    # The old model was dropped before the new one was built: never two in memory.
    assert held_while_building == [None, None, None]


def test_cache_is_empty_after_a_failed_build():
    cache = models.ModelCache()
    cache.get("a", lambda: "model a")
    with pytest.raises(RuntimeError):
        cache.get("b", lambda: (_ for _ in ()).throw(RuntimeError("bad file")))
    assert cache.get("b", lambda: "model b") == "model b"


def test_cache_key_changes_when_the_file_is_replaced(tmp_path):
    path = tmp_path / "m.pth"
    path.write_bytes(b"one")
    key = models.cache_key(path, "fp16", "cuda:0")
    assert models.cache_key(path, "fp16", "cuda:0") == key
    assert models.cache_key(path, "fp32", "cuda:0") != key
    path.write_bytes(b"two, longer")
    assert models.cache_key(path, "fp16", "cuda:0") != key


# ----------------------------------------------------------------------------- locales


def load_locale(lang: str, name: str = "nodeDefs.json") -> dict:
    return json.loads((REPO / "locales" / lang / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("node", NODES)
def test_locale_covers_the_node(lang, node):
    entry, node_class = load_locale(lang)[node], pack.NODE_CLASS_MAPPINGS[node]
    assert entry["display_name"] and entry["description"]
    declared = {name for section in node_class.INPUT_TYPES().values() for name in section}
    assert set(entry["inputs"]) == declared
    for name, texts in entry["inputs"].items():
        assert texts["name"] and texts["tooltip"], f"{lang}: {name}"
    assert set(entry["outputs"]) == {str(i) for i in range(len(node_class.RETURN_TYPES))}
    assert all(output["tooltip"] for output in entry["outputs"].values())


@pytest.mark.parametrize("node", NODES)
def test_english_locale_matches_the_node(node):
    entry, node_class = load_locale("en")[node], pack.NODE_CLASS_MAPPINGS[node]
    assert entry["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[node]
    assert entry["description"] == node_class.DESCRIPTION
    for section in node_class.INPUT_TYPES().values():
        for name, declaration in section.items():
            assert entry["inputs"][name] == {"name": name, "tooltip": declaration[1]["tooltip"]}
    for index, (name, tooltip) in enumerate(zip(node_class.RETURN_NAMES, node_class.OUTPUT_TOOLTIPS)):
        assert entry["outputs"][str(index)] == {"name": name, "tooltip": tooltip}


@pytest.mark.parametrize("name", NODES)
def test_chinese_locale_is_translated(name):
    en, zh = load_locale("en")[name], load_locale("zh")[name]
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for key in ("display_name", "description"):
        assert cjk.search(zh[key]) and zh[key] != en[key]
    for input_name in en["inputs"]:
        assert cjk.search(zh["inputs"][input_name]["tooltip"])
    # Numbers users act on survive translation.
    for input_name in ("size", "temporal"):
        if input_name in en["inputs"]:
            numbers = re.findall(r"\d+(?:\.\d+)?", en["inputs"][input_name]["tooltip"])
            assert numbers and all(n in zh["inputs"][input_name]["tooltip"] for n in numbers), input_name
    if "temporal" in en["inputs"]:
        assert f"{colorize_module.RECOMMENDED_STRENGTH:g}" in zh["inputs"]["temporal"]["tooltip"]
        assert cjk.search(zh["inputs"]["temporal"]["name"])
    assert load_locale("zh", "main.json")["nodeCategories"]["color"]


# ----------------------------------------------------------------------------- packaging


def test_requirements_match_the_runtime_dependencies_without_torch():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert not [r for r in listed if re.match(r"torch\b", r)], "ComfyUI brings its own torch"
    assert sorted(listed) == sorted(d for d in project["dependencies"] if not re.match(r"torch\b", d))


def test_weights_readme_lists_every_published_checkpoint():
    text = (REPO / "weights" / "README.md").read_text()
    for entry in engine.PUBLISHED.values():
        assert f"`{entry.name}`" in text and f"https://huggingface.co/{entry.repo_id}/resolve/main/{entry.filename}" in text
        if entry.modelscope:
            assert "https://www.modelscope.cn/api/v1/models/{}/repo?Revision=master&FilePath={}".format(*entry.modelscope) in text
        assert entry.variant in text


def test_pack_does_not_install_nodes_as_a_top_level_package():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11+")

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "nodes" not in setuptools.get("packages", [])

