"""End to end against a real ComfyUI: the server, the node, the presets, the frontend.

Skipped unless COMFYUI_PATH points at a ComfyUI checkout (see
tests/comfyui_server.py for COMFYUI_PYTHON). The browser tests also need
Debian's /usr/bin/chromium and the `playwright` package (its driver only,
never a downloaded browser) and skip without them. Set DDCOLOR_SCREENSHOT_DIR
to keep the canvas screenshots (e.g. docs/).

One server runs for the whole module, with calibrated synthetic checkpoints
(real weights cannot be downloaded here; fixtures of tests/conftest.py): the "tiny" layout linked as
models/ddcolor/ddcolor_modelscope.pth, a "small" one as custom/my_ddcolor.pth.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfyui_server import (
    PACK_FOLDER_NAME,
    ComfyUIUnavailable,
    PromptRejected,
    comfyui_paths,
    comfyui_server,
)
from ddcolor.precision import resolve_precision
from tests.fake_hub import fake_hub
from tests.pack import load_pack
from tests.workflow_check import CORE_NODES_FILE, core_specs, spec_from_node_class, spec_from_object_info

pytestmark = pytest.mark.e2e

try:
    comfyui_paths()
except ComfyUIUnavailable as reason:
    pytest.skip(str(reason), allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO.parent / "shared" / "fixtures"
NODE = "DDColor-ddcolorize"
VIDEO_NODE = "DDColor-colorize-video"
PRESETS = {"ddcolor_person": ("einstein.png", 640), "ddcolor_building": ("ny_riverfront_1931.jpg", 1024)}
VIDEO = "ddcolor_video"
FINETUNE = "DDColor-finetune"
# Every UI preset (drag-and-drop, template browser) and the API twin it queues as.
UI_PRESETS = {
    "ddcolor_person": "ddcolor_person", "ddcolor_building": "ddcolor_building", VIDEO: VIDEO,
    "DDColor人物黑白修复": "ddcolor_person", "DDColor建筑黑白修复": "ddcolor_building", "DDColor视频上色": VIDEO,
    "ddcolor_finetune": "ddcolor_finetune", "DDColor微调训练": "ddcolor_finetune",
}
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, tiny_checkpoint, small_checkpoint):
    if not FIXTURES.is_dir():
        pytest.skip(f"no test photos in {FIXTURES}")
    checkpoint, other = tiny_checkpoint, small_checkpoint
    # A user's own ddcolor folder from extra_model_paths.yaml, which our registration must keep.
    extra = tmp_path_factory.mktemp("extra_models")
    (extra / "ddcolor").mkdir()
    (extra / "ddcolor" / "extra_ddcolor.pth").symlink_to(checkpoint)
    config = extra / "extra_model_paths.yaml"
    config.write_text(f"mine:\n  base_path: {extra}\n  ddcolor: ddcolor\n")
    with comfyui_server(
        {"ddcolor_modelscope.pth": checkpoint, "custom/my_ddcolor.pth": other, ".cache/huggingface/partial.pth": checkpoint},
        inputs=[FIXTURES / name for name, _ in PRESETS.values()],
        extra_args=["--extra-model-paths-config", str(config)],
    ) as server:
        yield server


def api_preset(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())


def ddcolor_id(prompt: dict) -> str:
    return next(i for i, n in prompt.items() if n["class_type"] == NODE)


def small_prompt(size: int = 256, image: str = "einstein.png", **ddcolor_inputs) -> dict:
    """The person preset at a small size (CPU time), reading ``image``."""
    prompt = api_preset("ddcolor_person")
    prompt["1"]["inputs"]["image"] = image
    prompt[ddcolor_id(prompt)]["inputs"].update(size=size, **ddcolor_inputs)
    return prompt


def run(comfy, prompt: dict, timeout: float = 600) -> dict:
    """Queue ``prompt`` and return its /history entry once it has finished."""
    return comfy.wait(comfy.queue(prompt), timeout=timeout)


def output_file(comfy, entry: dict, node_id: str) -> Path:
    """The one image node ``node_id`` wrote in a finished prompt."""
    (path,) = comfy.output_files({"outputs": {node_id: entry["outputs"][node_id]}})
    return path


def status_message(entry: dict, kind: str) -> dict | None:
    return next((data for name, data in entry["status"]["messages"] if name == kind), None)


def loads_in_log(comfy) -> int:
    return len(re.findall(r"ddcolor: loaded ", comfy.log()))


# ----------------------------------------------------------------------------- what the server says about us


def test_object_info_lists_the_node_with_its_widgets(comfy):
    info = comfy.get(f"/object_info/{NODE}")[NODE]
    assert info["display_name"] == "DDColor Colorize"
    assert info["category"] == "image/color"
    assert info["description"] and info["output"] == ["IMAGE"] and info["output_tooltips"][0]
    assert info["input_order"] == {"required": ["image", "precision", "size"], "optional": ["model", "temporal"]}
    required, optional = info["input"]["required"], info["input"]["optional"]
    spec = spec_from_object_info(NODE, info)  # reads either way of listing a combo's choices
    assert spec.input("precision").options["choices"] == ["fp16", "fp32", "bf16", "auto"] and required["precision"][1]["default"] == "fp16"
    assert {k: required["size"][1][k] for k in ("default", "min", "max", "step")} == {"default": 512, "min": 256, "max": 2048, "step": 32}
    assert "control_after_generate" not in required["size"][1]
    # models/ddcolor is registered: its files are listed after the published names,
    # the downloaded default only once, download leftovers in .cache never.
    choices = spec.input("model").options["choices"]
    assert choices == [
        "ddcolor_modelscope", "ddcolor_artistic", "ddcolor_paper", "ddcolor_paper_tiny",
        "custom/my_ddcolor.pth", "extra_ddcolor.pth",
    ]
    assert optional["model"][1]["default"] == "ddcolor_modelscope"
    assert optional["temporal"][0] == "FLOAT"
    assert {k: optional["temporal"][1][k] for k in ("default", "min", "max")} == {"default": 0.0, "min": 0.0, "max": 1.0}
    for declaration in [*required.values(), *optional.values()]:
        assert declaration[1]["tooltip"]


def test_object_info_lists_the_video_node_with_its_widgets(comfy):
    info = comfy.get(f"/object_info/{VIDEO_NODE}")[VIDEO_NODE]
    image_node = comfy.get(f"/object_info/{NODE}")[NODE]["input"]
    assert info["display_name"] == "DDColor Colorize Video" and info["category"] == "image/color"
    assert info["output"] == ["VIDEO"] and info["output_tooltips"][0] and info["description"]
    assert info["input_order"] == {"required": ["video", "precision", "size", "model", "temporal", "crf"]}
    required = info["input"]["required"]
    assert required["video"][0] == "VIDEO"
    for name in ("precision", "size", "model"):  # the same widgets as DDColor Colorize
        assert required[name] == {**image_node["required"], **image_node["optional"]}[name]
    assert required["temporal"][1]["default"] == 0.9 and required["crf"][1]["default"] == 18
    for declaration in required.values():
        assert declaration[1]["tooltip"]


def test_the_versioned_registration_describes_the_nodes_as_the_classic_one_does(comfy):
    """The server holds the io.ComfyNode (this ComfyUI has the versioned API); this process, without a
    ComfyUI, the classic class. Both are built from one declaration and must agree on what a workflow sees."""
    pack = load_pack()
    assert "comfy_entrypoint" not in vars(pack)
    for name, classic in pack.NODE_CLASS_MAPPINGS.items():
        info = comfy.get(f"/object_info/{name}")[name]
        served, local = spec_from_object_info(name, info), spec_from_node_class(name, classic)

        def described(spec):
            # The versioned API repeats a combo's choices as options and adds multiselect: False;
            # the model list follows each side's models folder (none here), compared below.
            return [
                (i.name, i.type, i.optional,
                 {k: v for k, v in i.options.items() if k not in ("multiselect", "options") and (i.name, k) != ("model", "choices")})
                for i in spec.inputs
            ]

        assert described(served) == described(local)
        published = local.input("model").options["choices"]
        assert served.input("model").options["choices"][: len(published)] == published
        assert served.outputs == local.outputs and served.output_node == local.output_node
        assert (info["display_name"], info["category"], info["description"]) == (pack.NODE_DISPLAY_NAME_MAPPINGS[name], classic.CATEGORY, classic.DESCRIPTION)
        assert (info["output_name"], info["output_tooltips"]) == (list(classic.RETURN_NAMES), list(classic.OUTPUT_TOOLTIPS))


def test_models_folder_is_registered_first_and_keeps_the_users_folders(comfy):
    (ddcolor,) = [f for f in comfy.get("/experiment/models") if f["name"] == "ddcolor"]
    folders = [Path(f) for f in ddcolor["folders"]]
    assert folders[0] == comfy.base / "models" / "ddcolor"  # where downloads go
    assert any(f.name == "ddcolor" and f.parent.name.startswith("extra_models") for f in folders[1:])
    files = {f["name"] for f in comfy.get("/experiment/models/ddcolor")}
    assert {"ddcolor_modelscope.pth", "custom/my_ddcolor.pth", "extra_ddcolor.pth"} <= files
    # A model from the user's folder runs.
    assert run(comfy, small_prompt(256, model="extra_ddcolor.pth"))["status"]["status_str"] == "success"


def test_core_nodes_list_matches_the_real_server(comfy):
    """tests/core_nodes.json (used by the contract tests) says what this ComfyUI says."""
    written = json.loads(CORE_NODES_FILE.read_text())
    for name, entry in written.items():
        if name.startswith("_") or entry.get("frontend_only"):
            continue
        ours = spec_from_object_info(name, entry)
        real = spec_from_object_info(name, comfy.get(f"/object_info/{name}")[name])
        assert [(i.name, i.type, i.optional) for i in ours.inputs] == [(i.name, i.type, i.optional) for i in real.inputs], name
        assert ours.outputs == real.outputs and ours.output_node == real.output_node, name
        for mine, theirs in zip(ours.inputs, real.inputs):
            for key, value in mine.options.items():
                assert theirs.options.get(key) == value, f"{name}.{mine.name}.{key}"


def test_locales_are_served(comfy):
    translations = comfy.get("/i18n")
    assert translations["en"]["nodeDefs"][NODE]["display_name"] == "DDColor Colorize"
    assert translations["zh"]["nodeDefs"][NODE]["display_name"] == "DDColor 上色"
    assert translations["zh"]["nodeCategories"]["color"] == "颜色"
    assert translations["zh"]["nodeDefs"][NODE]["inputs"]["temporal"]["name"] == "防闪烁"
    assert translations["zh"]["nodeDefs"][VIDEO_NODE]["display_name"] == "DDColor 视频上色"


def template_url(comfy, name: str, suffix: str) -> str:
    # As the browser sends it: the Chinese file names percent-encoded in UTF-8.
    return f"{comfy.url}/api/workflow_templates/{PACK_FOLDER_NAME}/{urllib.parse.quote(name)}.{suffix}"


def test_presets_are_listed_as_templates(comfy):
    assert sorted(comfy.get("/workflow_templates")[PACK_FOLDER_NAME]) == sorted(UI_PRESETS)
    for name in UI_PRESETS:
        with urllib.request.urlopen(template_url(comfy, name, "jpg")) as response:
            assert response.headers["Content-Type"] == "image/jpeg"
        with urllib.request.urlopen(template_url(comfy, name, "json")) as response:
            served = json.loads(response.read().decode("utf-8"))
        assert served == json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8")), name


# ----------------------------------------------------------------------------- running prompts


def finetune_prompt(comfy, file_name: str, steps: int) -> dict:
    """The fine-tuning preset, small: two fixture color photos in input/ddcolor_training, 64 px, fp32, no perceptual loss."""
    folder = comfy.base / "input" / "ddcolor_training"
    folder.mkdir(exist_ok=True)
    for name in ("haze.jpg", "lr-face.jpg"):
        shutil.copy(FIXTURES / name, folder / name)
    prompt = api_preset("ddcolor_finetune")
    prompt["2"]["inputs"].update(steps=steps, batch=2, size=64, precision="fp32", perceptual=False, file_name=file_name)
    prompt["4"]["inputs"]["image"] = "einstein.png"
    prompt["5"]["inputs"]["size"] = 256
    return prompt


def test_finetune_preset_trains_plots_and_the_next_queue_colorizes_with_the_new_model(comfy):
    prompt = finetune_prompt(comfy, "e2e_tuned.pth", steps=2)
    client = uuid.uuid4().hex
    with comfy.messages(client) as messages:
        entry = comfy.wait(comfy.queue(prompt, client_id=client), timeout=900)
        time.sleep(0.5)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert (comfy.base / "models" / "ddcolor" / "e2e_tuned.pth").is_file()
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == "2"]
    assert progress[-1]["value"] == progress[-1]["max"] == 2
    (graph,) = comfy.output_files({"outputs": {"3": entry["outputs"]["3"]}})  # Plot Loss Graph's PNG
    assert Image.open(graph).size == (840, 520)
    assert {image["filename"] for image in entry["outputs"]["2"]["images"]} == {"e2e_tuned_validation.png", "e2e_tuned_loss.png"}
    # Listed by DDColor Colorize; the same prompt with it chosen colorizes without training again.
    assert "e2e_tuned.pth" in comfy.get(f"/object_info/{NODE}")[NODE]["input"]["optional"]["model"][0]
    prompt["5"]["inputs"]["model"] = "e2e_tuned.pth"
    assert run(comfy, prompt)["status"]["status_str"] == "success"
    assert comfy.log().count("ddcolor finetune: wrote ") == 1


def test_cancel_stops_finetuning_and_keeps_the_snapshot(comfy):
    prompt = finetune_prompt(comfy, "e2e_cancelled.pth", steps=200)
    client = uuid.uuid4().hex
    with comfy.messages(client) as messages:
        prompt_id = comfy.queue(prompt, client_id=client)
        deadline = time.monotonic() + 600
        while not any(m["type"] == "progress" and m["data"].get("node") == "2" for m in messages):
            assert time.monotonic() < deadline, "no progress from the fine-tune node"
            time.sleep(0.05)
        comfy.post("/interrupt")
        entry = comfy.wait(prompt_id)
    assert status_message(entry, "execution_interrupted")["node_id"] == "2"
    assert (comfy.base / "output" / "ddcolor_finetune" / "e2e_cancelled_snapshot.pt").is_file()
    assert not (comfy.base / "models" / "ddcolor" / "e2e_cancelled.pth").exists()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_and_returns_images_of_the_right_size(comfy, preset):
    photo, size = PRESETS[preset]
    prompt = api_preset(preset)
    prompt["1"]["inputs"]["image"] = photo
    client = uuid.uuid4().hex
    start = time.perf_counter()
    with comfy.messages(client) as messages:
        entry = comfy.wait(comfy.queue(prompt, client_id=client), timeout=600)
        seconds = time.perf_counter() - start
        time.sleep(0.5)
    assert entry["status"]["status_str"] == "success", entry["status"]
    print(f"{preset} at {size}: {seconds:.1f} s on the CPU (tiny calibrated checkpoint)")

    width, height = Image.open(FIXTURES / photo).size
    saved, preview = output_file(comfy, entry, "3"), output_file(comfy, entry, "5")
    # Node 3 saves the colorized photo at the photo's size; node 5 previews before | 16 px | after.
    assert Image.open(saved).size == (width, height) and Image.open(saved).mode == "RGB"
    assert Image.open(preview).size == (2 * width + 16, height)
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == ddcolor_id(prompt)]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 1


def test_colorized_output_has_color(comfy):
    entry = run(comfy, small_prompt(256))
    saved = output_file(comfy, entry, "3")
    pixels = np.asarray(Image.open(saved).convert("RGB"), dtype=np.float32)
    gray = np.asarray(Image.open(FIXTURES / "einstein.png").convert("L"), dtype=np.float32)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 3  # not gray any more
    assert np.corrcoef(pixels.mean(-1).ravel(), gray.ravel())[0, 1] > 0.9  # same picture


def test_size_change_reuses_the_model_and_model_change_reloads(comfy):
    run(comfy, small_prompt(256))
    current_precision = small_prompt()[ddcolor_id(small_prompt())]["inputs"]["precision"]
    loads = loads_in_log(comfy)
    for size in (288, 320):
        assert run(comfy, small_prompt(size))["status"]["status_str"] == "success"
    assert loads_in_log(comfy) == loads
    # A precision that resolves to the same one on the server's device (a CPU: --cpu) is the same
    # model; one that resolves differently is another. What each resolves to depends on the CPU.
    for precision in ("auto", "fp32", "bf16", "fp16"):
        before, previous = loads_in_log(comfy), resolve_precision(current_precision, "cpu").precision
        assert run(comfy, small_prompt(256, precision=precision))["status"]["status_str"] == "success"
        assert loads_in_log(comfy) == before + (resolve_precision(precision, "cpu").precision != previous), precision
        current_precision = precision
    loads = loads_in_log(comfy)
    assert run(comfy, small_prompt(256, model="custom/my_ddcolor.pth"))["status"]["status_str"] == "success"
    assert loads_in_log(comfy) == loads + 1


def test_size_off_the_grid_is_rounded_and_said(comfy):
    entry = run(comfy, small_prompt(460))
    assert entry["status"]["status_str"] == "success"
    assert "size 460 is not a multiple of 32; using 448" in comfy.log()


def test_old_prompt_without_model_runs_with_the_default(comfy):
    prompt = small_prompt(256)
    del prompt[ddcolor_id(prompt)]["inputs"]["model"]
    assert run(comfy, prompt)["status"]["status_str"] == "success"


@pytest.mark.parametrize("change,error", [
    ({"size": 4096}, "value_bigger_than_max"),
    ({"size": 100}, "value_smaller_than_min"),
    ({"precision": "fp8"}, "value_not_in_list"),
    ({"model": "missing.pth"}, "value_not_in_list"),
    ({"image": None}, "required_input_missing"),
])
def test_malformed_prompt_gets_a_validation_error(comfy, change, error):
    prompt = small_prompt(256)
    inputs = prompt[ddcolor_id(prompt)]["inputs"]
    for key, value in change.items():
        if value is None:
            del inputs[key]
        else:
            inputs[key] = value
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue(prompt)
    assert rejected.value.status == 400
    node_errors = rejected.value.body["node_errors"][ddcolor_id(prompt)]["errors"]
    assert error in [e["type"] for e in node_errors], node_errors
    comfy.check_alive()


def test_unknown_node_type_is_rejected(comfy):
    prompt = small_prompt(256)
    prompt[ddcolor_id(prompt)]["class_type"] = "DDColor-colorize-typo"
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue(prompt)
    assert rejected.value.body["error"]["type"] == "invalid_prompt"
    assert "DDColor-colorize-typo" in rejected.value.body["error"]["message"]


def test_missing_published_checkpoint_offline_fails_clearly(comfy):
    entry = run(comfy, small_prompt(256, model="ddcolor_artistic"))
    error = status_message(entry, "execution_error")
    assert entry["status"]["status_str"] == "error" and error["node_type"] == NODE
    message = error["exception_message"]
    assert "ddcolor_artistic.pth" in message
    assert "https://huggingface.co/piddnad/DDColor-models/resolve/main/ddcolor_artistic.pth" in message
    assert str(comfy.base / "models" / "ddcolor") in message
    # The server is fine and the next prompt runs.
    assert run(comfy, small_prompt(288))["status"]["status_str"] == "success"


def test_missing_published_checkpoint_is_downloaded_with_progress_on_the_node(small_checkpoint):
    """First use of a published model: downloaded into models/ddcolor, progress shown on the node."""
    payload = small_checkpoint.read_bytes()  # stands in for ddcolor_paper_tiny.pth
    with fake_hub({"/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth": payload}) as hub, comfyui_server(
        inputs=[FIXTURES / "einstein.png"], offline=False, env={"HF_ENDPOINT": hub.endpoint}
    ) as server:
        prompt = small_prompt(256, model="ddcolor_paper_tiny")
        client = uuid.uuid4().hex
        with server.messages(client) as messages:
            entry = server.wait(server.queue(prompt, client_id=client))
            time.sleep(0.5)
        assert entry["status"]["status_str"] == "success", entry["status"]
        downloaded = server.base / "models" / "ddcolor" / "ddcolor_paper_tiny.pth"
        assert downloaded.read_bytes() == payload
        bars = [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == ddcolor_id(prompt)]
        assert any(b["max"] == len(payload) for b in bars), bars  # the download, in bytes
        assert bars[-1]["value"] == bars[-1]["max"] == 1  # then the image
        # Listed by its published name only, and not downloaded again.
        choices = spec_from_object_info(NODE, server.get(f"/object_info/{NODE}")[NODE]).input("model").options["choices"]
        assert choices.count("ddcolor_paper_tiny") == 1 and "ddcolor_paper_tiny.pth" not in choices
        requests = len(hub.requests)
        assert run(server, small_prompt(288, model="ddcolor_paper_tiny"))["status"]["status_str"] == "success"
        assert len(hub.requests) == requests


def test_interrupt_stops_a_batch_between_chunks(comfy):
    prompt = small_prompt(256)
    node = ddcolor_id(prompt)
    prompt["10"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 40}}
    prompt[node]["inputs"]["image"] = ["10", 0]
    client = uuid.uuid4().hex
    with comfy.messages(client) as messages:
        prompt_id = comfy.queue(prompt, client_id=client)
        deadline = time.monotonic() + 300
        while not any(m["type"] == "progress" and m["data"].get("node") == node for m in messages):
            assert time.monotonic() < deadline, "no progress from the node"
            time.sleep(0.05)
        comfy.post("/interrupt")
        entry = comfy.wait(prompt_id)
    assert status_message(entry, "execution_interrupted")["node_id"] == node
    done = [m["data"]["value"] for m in messages if m["type"] == "progress" and m["data"].get("node") == node]
    assert done[-1] < 40, "the whole batch ran despite the interrupt"
    assert run(comfy, small_prompt(256))["status"]["status_str"] == "success"


def test_memory_stays_flat_over_20_runs(comfy):
    # Alternate sizes so that the node really runs each time (ComfyUI caches a
    # node whose inputs did not change since the last prompt).
    samples = []
    for i in range(20):
        prompt = small_prompt(256 if i % 2 else 288)
        entry = run(comfy, prompt)
        assert entry["status"]["status_str"] == "success"
        assert ddcolor_id(prompt) not in status_message(entry, "execution_cached")["nodes"]
        samples.append(comfy.rss_bytes())
    mib = [round(s / 2**20) for s in samples]
    print(f"server RSS over 20 runs (MiB): {mib}")
    settled = samples[4:]  # allocator warm-up in the first runs
    growth = settled[-1] - settled[0]
    assert growth < 16 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB over 16 runs: {mib}"
    # No steady climb either: the last runs are not all above the middle ones.
    assert min(settled[-5:]) <= max(settled[:8]) + 16 * 2**20, mib


def test_node_inside_comfyui_memory_management_progress_and_interrupt(tmp_path, tiny_checkpoint, small_checkpoint):
    """Checks that need ComfyUI's own objects; see tests/comfyui_inprocess.py."""
    comfy_root, python = comfyui_paths()
    for sub in ("custom_nodes", "models/ddcolor"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "custom_nodes" / PACK_FOLDER_NAME).symlink_to(REPO)
    (tmp_path / "models" / "ddcolor" / "ddcolor_modelscope.pth").symlink_to(tiny_checkpoint)
    (tmp_path / "models" / "ddcolor" / "other.pth").symlink_to(small_checkpoint)
    result = subprocess.run(
        [python, str(REPO / "tests" / "comfyui_inprocess.py"), str(comfy_root), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = [l for l in result.stdout.splitlines() if l.startswith("FACTS ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    facts = json.loads(lines[-1].removeprefix("FACTS "))
    assert facts["versioned"] and facts["exports"] == ["comfy_entrypoint"]  # registered through comfy_api, only
    assert facts["output_shape"] == [3, 90, 120, 3]
    assert facts["progress"] == [[1, 3], [2, 3], [3, 3]]  # one step per chunk (one image per chunk on a CPU)
    assert facts["loaded_after_run"] == [True]  # our ModelPatcher is in ComfyUI's loaded models
    assert facts["loaded_after_unload_all"] == 0  # ComfyUI can unload it...
    assert facts["same_patcher_after_reload"] and facts["loaded_after_reload"] == 1  # ...and it comes back
    assert facts["after_unload_others"] == ["DDColor"]  # the out-of-memory retry frees others, not ours
    assert facts["alpha_kept"]
    assert facts["loaded_after_switch"] == 1 and facts["old_model_freed"]  # no leak across models
    assert facts["interrupt"] == "raised" and facts["progress_before_interrupt"] == [[1, 4]]
    assert facts["leak_warnings"] == []
    # fp16 that runs as another precision on this CPU is said once per load (two fp16 loads: the default
    # model, then other.pth), not per prompt (five fp16 prompts).
    assert facts["precision_notes"] == 2 * int(resolve_precision("fp16", "cpu").precision != "fp16")
    assert facts["temporal_shape"] == [6, 48, 64, 3] and facts["temporal_progress"][-1] == [6, 6]


# ----------------------------------------------------------------------------- video


def make_clip(path: Path, frames: int, rate: Fraction, size: tuple[int, int], tone_hz: float = 440.0) -> None:
    """A black-and-white H.264 clip panning across a real photo, with a stereo AAC tone as its sound."""
    av = pytest.importorskip("av")
    width, height = size
    photo = Image.open(FIXTURES / "ny_riverfront_1931.jpg").convert("L")
    photo = photo.resize((width * 2, round(width * 2 * photo.height / photo.width)))
    sample_rate = 44100
    with av.open(str(path), "w") as container:
        video = container.add_stream("h264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=sample_rate, layout="stereo")
        for i in range(frames):
            left = round(i * (photo.width - width) / max(1, frames - 1))
            gray = np.asarray(photo.crop((left, 0, left + width, height)))
            frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=-1), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        container.mux(video.encode(None))
        samples = math.ceil(frames / rate * sample_rate)
        t = np.arange(samples) / sample_rate
        tone = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
        for start in range(0, samples, 1024):
            block = np.ascontiguousarray(np.stack([tone[start:start + 1024]] * 2))
            chunk = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = sample_rate, start
            for packet in audio.encode(chunk):
                container.mux(packet)
        container.mux(audio.encode(None))


def read_clip(path: Path) -> dict:
    """Frames (N, H, W, 3 uint8), frame rate, and the sound (seconds, sample rate, RMS) of a video file."""
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        rate = video.average_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return {"frames": frames, "rate": rate, "audio": None}
        stream = container.streams.audio[0]
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        channels = stream.channels
        seconds = len(sound) / channels / stream.sample_rate
        return {"frames": frames, "rate": rate, "audio": {"seconds": seconds, "rate": stream.sample_rate,
                                                          "codec": stream.codec_context.name, "rms": float(np.sqrt(np.mean(sound ** 2)))}}


def upload(comfy, path: Path) -> str:
    """POST /upload/image (the endpoint the frontend's Load Video upload uses too); the stored name."""
    boundary = uuid.uuid4().hex
    body = b"".join([
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode(), path.read_bytes(), b"\r\n",
        f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n--{boundary}--\r\n'.encode(),
    ])
    request = urllib.request.Request(f"{comfy.url}/upload/image", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["name"]


def video_prompt(file: str, size: int = 256) -> dict:
    """The video preset reading ``file``, at a small size with the small checkpoint (CPU time)."""
    prompt = api_preset(VIDEO)
    prompt["1"]["inputs"]["file"] = file
    node = video_node_id(prompt)
    assert prompt[node]["inputs"]["temporal"] > 0  # the preset stabilizes
    prompt[node]["inputs"].update(size=size, model="custom/my_ddcolor.pth")
    return prompt


def video_node_id(prompt: dict) -> str:
    return next(i for i, n in prompt.items() if n["class_type"] == VIDEO_NODE)


def node_progress(messages: list[dict], node: str) -> list[dict]:
    return [m["data"] for m in messages if m["type"] == "progress" and m["data"].get("node") == node]


def temp_videos(comfy) -> list[Path]:
    return sorted((comfy.base / "temp").rglob("*.mp4*"))


def color_tags(path: Path) -> tuple:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.color_primaries, context.color_trc, context.colorspace


@pytest.mark.parametrize("rate,frames", [(Fraction(24), 18), (Fraction(30000, 1001), 15)], ids=["24fps", "29.97fps"])
def test_video_preset_keeps_frames_rate_size_and_sound(comfy, tmp_path, rate, frames):
    source = tmp_path / f"clip_{float(rate):.2f}.mp4"
    make_clip(source, frames, rate, (160, 96))
    original = read_clip(source)
    assert len(original["frames"]) == frames and original["audio"]  # the test clip itself is right
    prompt = video_prompt(upload(comfy, source))
    node = video_node_id(prompt)
    client = uuid.uuid4().hex
    with comfy.messages(client) as messages:
        entry = comfy.wait(comfy.queue(prompt, client_id=client), timeout=600)
        time.sleep(0.5)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = comfy.output_files(entry)
    assert saved.suffix == ".mp4" and saved.parent.name == "ddcolor"
    result = read_clip(saved)
    assert result["frames"].shape == original["frames"].shape  # same frame count and size
    assert abs(float(result["rate"]) - float(rate)) < 1e-3 * float(rate), (result["rate"], rate)
    sound = result["audio"]
    assert sound and sound["codec"] == "aac" and sound["rate"] == 44100
    assert abs(sound["seconds"] - frames / float(rate)) < 0.1 and sound["rms"] > 0.1
    colors = result["frames"].astype(np.int16)
    assert (colors.max(-1) - colors.min(-1)).mean() > 3, "the saved video is still gray"
    # Save Video copied the node's clip as it is: the same pictures, still tagged BT.709.
    ours = [p for p in temp_videos(comfy) if not p.name.startswith(".")]
    assert any(np.array_equal(read_clip(p)["frames"], result["frames"]) for p in ours)
    assert color_tags(saved) == (1, 1, 1)
    # Progress on the node: frame by frame, to the whole clip.
    progress = node_progress(messages, node)
    assert [p["value"] for p in progress] == list(range(1, frames + 1)) and progress[-1]["max"] == frames


def test_video_from_create_video_runs_through_the_video_node(comfy, tmp_path):
    """A VIDEO built from frames, sound and rate in memory (Create Video) is streamed from its batch."""
    source = tmp_path / "components.mp4"
    make_clip(source, 10, Fraction(24), (160, 96))
    prompt = video_prompt(upload(comfy, source))
    node = video_node_id(prompt)
    prompt["10"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
    prompt["11"] = {"class_type": "CreateVideo", "inputs": {"images": ["10", 0], "audio": ["10", 1], "fps": ["10", 2]}}
    prompt[node]["inputs"]["video"] = ["11", 0]
    entry = run(comfy, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = comfy.output_files(entry)
    result = read_clip(saved)
    assert result["frames"].shape == (10, 96, 160, 3) and result["rate"] == 24
    assert result["audio"]["codec"] == "aac" and abs(result["audio"]["seconds"] - 10 / 24) < 0.1


def test_short_clip_through_the_image_node_keeps_frames_rate_and_sound(comfy, tmp_path):
    """The IMAGE path for short clips: Get Video Components -> DDColor Colorize (temporal) -> Create Video."""
    source = tmp_path / "image_path.mp4"
    make_clip(source, 12, Fraction(24), (160, 96))
    prompt = {
        "1": {"class_type": "LoadVideo", "inputs": {"file": upload(comfy, source)}},
        "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
        "3": {"class_type": NODE, "inputs": {"image": ["2", 0], "precision": "fp16", "size": 256,
                                             "model": "custom/my_ddcolor.pth", "temporal": 0.9}},
        "4": {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "audio": ["2", 1], "fps": ["2", 2]}},
        "5": {"class_type": "SaveVideo", "inputs": {"video": ["4", 0], "filename_prefix": "ddcolor/image_path", "format": "mp4", "codec": "h264"}},
    }
    entry = run(comfy, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    result = read_clip(output_file(comfy, entry, "5"))
    assert result["frames"].shape == (12, 96, 160, 3) and result["rate"] == 24
    assert result["audio"]["codec"] == "aac" and abs(result["audio"]["seconds"] - 12 / 24) < 0.1
    colors = result["frames"].astype(np.int16)
    assert (colors.max(-1) - colors.min(-1)).mean() > 3, "the saved video is still gray"


def test_cancel_mid_clip_leaves_no_file_and_the_server_serves_the_next_prompt(comfy, tmp_path):
    source = tmp_path / "long.mp4"
    make_clip(source, 120, Fraction(24), (160, 96))
    prompt = video_prompt(upload(comfy, source))
    node = video_node_id(prompt)
    prompt[node]["inputs"]["crf"] = 20  # not a prompt ComfyUI has cached
    outputs_before = sorted((comfy.base / "output").rglob("*"))
    temp_before = temp_videos(comfy)
    client = uuid.uuid4().hex
    with comfy.messages(client) as messages:
        prompt_id = comfy.queue(prompt, client_id=client)
        deadline = time.monotonic() + 300
        while not any(p["value"] >= 3 for p in node_progress(messages, node)):
            assert time.monotonic() < deadline, "no progress from the node"
            time.sleep(0.05)
        comfy.post("/interrupt")
        entry = comfy.wait(prompt_id)
    assert status_message(entry, "execution_interrupted")["node_id"] == node
    done = [p["value"] for p in node_progress(messages, node)]
    assert done[-1] < 120, "the whole clip ran despite the Cancel"
    assert temp_videos(comfy) == temp_before, "a partial video was left in temp/"
    assert sorted((comfy.base / "output").rglob("*")) == outputs_before
    # The server goes on: the next prompt (a short clip) runs to the end.
    short = tmp_path / "short.mp4"
    make_clip(short, 4, Fraction(24), (160, 96))
    entry = run(comfy, video_prompt(upload(comfy, short)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(read_clip(output_file(comfy, entry, "3"))["frames"]) == 4


# ----------------------------------------------------------------------------- the frontend


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed", exc_type=ImportError)
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        yield instance
        instance.close()


def open_frontend(comfy, browser, settings: dict | None = None):
    # Saved before the page loads: the template dialog would otherwise cover the canvas.
    for key, value in {"Comfy.TutorialCompleted": True, **(settings or {})}.items():
        comfy.post(f"/settings/{key}", value)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(comfy.url)
    page.wait_for_function(
        "() => window.app && window.app.graph && window.LiteGraph && 'DDColor-ddcolorize' in LiteGraph.registered_node_types",
        timeout=120_000,
    )
    return page


def drop_file(page, path: Path, arrived: str, arg=None, tries: int = 3) -> None:
    """A real file drop on the canvas: the frontend's own drop handler loads it.

    Dropped again while ``arrived`` (a JavaScript function of ``arg``) stays
    false for 15 s: a drop soon after the page opens is now and then lost.
    """
    from playwright.sync_api import TimeoutError as PageTimeout

    data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}
    for attempt in range(tries):
        cdp = page.context.new_cdp_session(page)
        for kind in ("dragEnter", "dragOver", "drop"):
            cdp.send("Input.dispatchDragEvent", {"type": kind, "x": 800, "y": 500, "data": data})
        cdp.detach()
        try:
            page.wait_for_function(arrived, arg=arg, timeout=15_000)
            return
        except PageTimeout:
            if attempt == tries - 1:
                raise


# A dropped workflow has arrived when each of its nodes is on the canvas with its type.
WORKFLOW_SHOWN = "nodes => nodes.every(([id, type]) => app.graph.getNodeById(id)?.type === type)"


def workflow_nodes(workflow: dict) -> list:
    return [[n["id"], n["type"]] for n in workflow["nodes"]]


def graph_nodes(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries(app.graph._nodes.map(n => [n.id, {
            type: n.type, title: n.title, widgets: (n.widgets || []).map(w => [w.name, w.value])}]))"""
    )


def wait_for_graph(page, node_ids: set) -> dict:
    page.wait_for_function(
        "ids => ids.every(id => app.graph.getNodeById(id))", arg=sorted(node_ids), timeout=30_000
    )
    page.wait_for_timeout(500)  # let dialogs (if any) open
    return graph_nodes(page)


def missing_nodes_dialogs(page) -> list[str]:
    """Texts of open dialogs about missing nodes ("Some Nodes Are Missing ... not found")."""
    texts = page.evaluate("() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")
    return [t for t in texts if "Missing" in t or "not found" in t]


@pytest.mark.parametrize("preset", UI_PRESETS)
def test_preset_opens_by_drag_and_drop_with_its_saved_values(comfy, browser, preset, tmp_path):
    path = REPO / "workflows" / f"{preset}.json"
    workflow = json.loads(path.read_text(encoding="utf-8"))
    page = open_frontend(comfy, browser)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        drop_file(page, path, WORKFLOW_SHOWN, workflow_nodes(workflow))
        shown = wait_for_graph(page, {n["id"] for n in workflow["nodes"]})
        assert missing_nodes_dialogs(page) == []
        assert page.evaluate("types => types.filter(t => !(t in LiteGraph.registered_node_types))",
                             sorted({n["type"] for n in workflow["nodes"]})) == []
        for node in workflow["nodes"]:
            widgets = shown[str(node["id"])]["widgets"]
            assert [value for _, value in widgets] == node["widgets_values"], node["type"]
        # The frontend's own conversion to an API prompt is the API twin.
        queued = page.evaluate("async () => (await app.graphToPrompt()).output")
        twin = api_preset(UI_PRESETS[preset])
        assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in queued.items()} == \
               {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()}
        assert errors == []
        shot = tmp_path / f"{preset}_canvas.png"
        page.screenshot(path=str(shot))
        if os.environ.get("DDCOLOR_SCREENSHOT_DIR"):
            target = Path(os.environ["DDCOLOR_SCREENSHOT_DIR"])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target / shot.name)
    finally:
        page.close()


def test_template_browser_lists_every_preset_and_opens_a_chinese_one(comfy, browser):
    """Workflow -> Browse Templates -> our pack: thumbnails load, and a Chinese-named preset opens."""
    page = open_frontend(comfy, browser)
    try:
        page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.get_by_text(PACK_FOLDER_NAME, exact=True).first.click()
        for name in UI_PRESETS:
            card = page.get_by_text(name, exact=True).first
            card.wait_for(timeout=30_000)
            card.scroll_into_view_if_needed()  # the browser loads a thumbnail once its card is in view
            page.wait_for_function(
                "n => [...document.querySelectorAll('.p-dialog img')].some(i => i.alt === n && i.naturalWidth > 0)",
                arg=name, timeout=30_000,
            )
        page.get_by_text("DDColor视频上色", exact=True).first.click()
        page.wait_for_function("() => app.graph._nodes.some(n => n.type === 'LoadVideo')", timeout=30_000)
        notes = page.evaluate("() => app.graph._nodes.filter(n => n.type === 'Note').map(n => n.widgets[0].value)")
        expected = json.loads((REPO / "workflows" / "DDColor视频上色.json").read_text(encoding="utf-8"))
        assert notes == [n["widgets_values"][0] for n in expected["nodes"] if n["type"] == "Note"]
        assert missing_nodes_dialogs(page) == []
    finally:
        page.close()


def test_missing_node_warning_is_detected(comfy, browser, tmp_path):
    """The check above would see the frontend's warning: a workflow with an unknown node shows it."""
    workflow = json.loads((REPO / "workflows" / "ddcolor_person.json").read_text())
    workflow["nodes"][1]["type"] = "DDColorNodeThatDoesNotExist"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(workflow))
    page = open_frontend(comfy, browser)
    try:
        # Another dialog may open first: wait for the one that names the node.
        drop_file(page, broken, "() => [...document.querySelectorAll('.p-dialog')].some(d => d.innerText.includes('DDColorNodeThatDoesNotExist'))")
        (dialog,) = missing_nodes_dialogs(page)
        assert "DDColorNodeThatDoesNotExist" in dialog
    finally:
        page.close()


def test_frontend_widgets_follow_the_contract_rules(comfy, browser):
    """What tests/workflow_check.py assumes about widgets, checked on the real frontend."""
    page = open_frontend(comfy, browser)
    try:
        names = page.evaluate(
            """types => Object.fromEntries(types.map(t => {
                const node = LiteGraph.createNode(t);
                return [t, (node.widgets || []).map(w => w.name)];
            }))""",
            ["LoadImage", "SaveImage", "PreviewImage", "ImageStitch", "Note", NODE, VIDEO_NODE,
             "LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo", FINETUNE, "LoadImageSetFromFolderNode", "LossGraphNode"],
        )
    finally:
        page.close()
    specs = {**core_specs(), **{name: spec_from_object_info(name, comfy.get(f"/object_info/{name}")[name]) for name in (NODE, VIDEO_NODE, FINETUNE)}}
    for kind, widget_names in names.items():
        assert widget_names == [name for name, _ in specs[kind].widgets()], kind


@pytest.mark.parametrize("saved", [["fp32", 768], ["fp32", 768, "ddcolor_paper_tiny"]], ids=["two values", "three values"])
def test_old_workflow_loads_with_the_defaults_of_newer_widgets(comfy, browser, tmp_path, saved):
    """Workflows saved before the model widget (two values) or the temporal one (three)."""
    workflow = json.loads((REPO / "workflows" / "ddcolor_person.json").read_text())
    node = next(n for n in workflow["nodes"] if n["type"] == NODE)
    node["widgets_values"] = saved
    newer = ["model", "temporal"][len(saved) - 2:]
    node["inputs"] = [i for i in node["inputs"] if i["name"] not in newer]
    old = tmp_path / "old_ddcolor.json"
    old.write_text(json.dumps(workflow))
    page = open_frontend(comfy, browser)
    try:
        drop_file(page, old, WORKFLOW_SHOWN, workflow_nodes(workflow))
        shown = wait_for_graph(page, {n["id"] for n in workflow["nodes"]})
        assert missing_nodes_dialogs(page) == []
        defaults = ["fp32", 768, "ddcolor_modelscope", 0]
        expected = [*saved, *defaults[len(saved):]]
        assert shown[str(node["id"])]["widgets"] == [list(w) for w in zip(["precision", "size", "model", "temporal"], expected)]
        queued = page.evaluate("async () => (await app.graphToPrompt()).output")
        assert queued[str(node["id"])]["inputs"]["temporal"] == 0
    finally:
        page.close()


def test_chinese_locale_names_the_node(comfy, browser):
    page = open_frontend(comfy, browser, {"Comfy.Locale": "zh"})
    try:
        title, labels = page.evaluate(
            "() => { const n = LiteGraph.createNode('DDColor-ddcolorize'); return [n.title, n.widgets.map(w => w.label)]; }")
        assert title == "DDColor 上色"
        assert labels == ["精度", "尺寸", "模型", "防闪烁"]
    finally:
        page.close()
        comfy.post("/settings/Comfy.Locale", "en")
