"""Every workflow in workflows/ is valid for its format, and the presets are what the README promises.

UI files (workflows/*.json) are what the frontend opens by drag-and-drop and
lists in its template browser; API files (workflows/api/*.json) are what
POST /prompt takes. Node specs: ours from INPUT_TYPES, core ones from
tests/core_nodes.json (checked against a real ComfyUI in test_e2e_comfyui.py).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.pack import REPO, load_pack
from tests.workflow_check import (
    check_api_prompt,
    check_ui_workflow,
    core_specs,
    spec_from_node_class,
    strip_meta,
    ui_to_api,
    widget_values_by_name,
)

NODE = "DDColor-ddcolorize"
VIDEO_NODE = "DDColor-colorize-video"
WORKFLOWS = REPO / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
PRESETS = {"ddcolor_person": 640, "ddcolor_building": 1024}  # photo presets and their size
VIDEO = "ddcolor_video"
FINETUNE = "ddcolor_finetune"
FINETUNE_NODE = "DDColor-finetune"
# Chinese twins of the UI presets (named as Chinese users search for them): same graph, notes in Chinese.
# Their API twin is the English preset's: the notes never reach an API prompt.
CHINESE_TWINS = {"DDColor人物黑白修复": "ddcolor_person", "DDColor建筑黑白修复": "ddcolor_building", "DDColor视频上色": VIDEO,
                 "DDColor微调训练": FINETUNE}
CJK = re.compile(r"[\u4e00-\u9fff]")


def recommended_strength() -> float:
    pack = load_pack()
    return sys.modules[f"{pack.__name__}.nodes.colorize"].RECOMMENDED_STRENGTH


def english_name(path: Path) -> str:
    return CHINESE_TWINS.get(path.stem, path.stem)


@pytest.fixture(scope="module")
def specs():
    pack = load_pack()
    return {**core_specs(), **{name: spec_from_node_class(name, cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()}}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def nodes_of(workflow: dict, kind: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == kind]


def test_the_presets_exist():
    assert {p.stem for p in UI_FILES} == {*PRESETS, VIDEO, FINETUNE, *CHINESE_TWINS}
    assert {p.stem for p in API_FILES} == {*PRESETS, VIDEO, FINETUNE}


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_valid(path, specs):
    assert check_ui_workflow(load(path), specs) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_prompt_is_valid(path, specs):
    assert check_api_prompt(load(path), specs) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_api_twin_matches_the_ui_workflow(path, specs):
    twin = WORKFLOWS / "api" / f"{english_name(path)}.json"
    assert strip_meta(load(twin)) == ui_to_api(load(path), specs)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_has_a_jpeg_thumbnail(path):
    thumbnail = path.with_suffix(".jpg")
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG"
        assert min(image.size) >= 200 and max(image.size) <= 1600


# ----------------------------------------------------------------------------- what the presets are


@pytest.mark.parametrize("name,size", PRESETS.items())
def test_preset_colorizes_at_its_size_in_fp16(name, size, specs):
    workflow = load(WORKFLOWS / f"{name}.json")
    (ddcolor,) = nodes_of(workflow, NODE)
    values = widget_values_by_name(specs[NODE], ddcolor["widgets_values"])
    # Photos are unrelated images: no temporal stabilization.
    assert values == {"precision": "fp16", "size": size, "model": "ddcolor_modelscope", "temporal": 0}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_chain_and_before_after_view(name, specs):
    prompt = ui_to_api(load(WORKFLOWS / f"{name}.json"), specs)
    by_type = {n["class_type"]: (node_id, n) for node_id, n in prompt.items()}
    load_id, _ = by_type["LoadImage"]
    ddcolor_id, ddcolor = by_type[NODE]
    assert ddcolor["inputs"]["image"] == [load_id, 0]
    assert by_type["SaveImage"][1]["inputs"]["images"] == [ddcolor_id, 0]
    # Before | after: the loaded photo stitched to the colorized one, shown in a preview.
    stitch_id, stitch = by_type["ImageStitch"]
    assert stitch["inputs"]["image1"] == [load_id, 0] and stitch["inputs"]["image2"] == [ddcolor_id, 0]
    assert by_type["PreviewImage"][1]["inputs"]["images"] == [stitch_id, 0]


def note_text(name: str) -> str:
    return "\n".join(n["widgets_values"][0] for n in nodes_of(load(WORKFLOWS / f"{name}.json"), "Note"))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_notes_explain_sizes_precision_and_are_honest(name):
    text = note_text(name)
    for fact in ("460-680", "960-1280", "multiple of 32", "fp16", "bf16", "fp32", "auto"):
        assert fact in text, fact
    assert "no separate person or building weights" in text
    assert "differ only in size" in text


def test_presets_differ_only_in_size_and_text(specs):
    person, building = (ui_to_api(load(WORKFLOWS / f"{name}.json"), specs) for name in PRESETS)
    for prompt in (person, building):
        for node in prompt.values():
            node["inputs"].pop("size", None)
            node["inputs"].pop("filename_prefix", None)
    assert person == building


# ----------------------------------------------------------------------------- the video preset


def test_video_preset_streams_the_clip_from_load_video_to_save_video(specs):
    prompt = ui_to_api(load(WORKFLOWS / f"{VIDEO}.json"), specs)
    by_type = {n["class_type"]: (node_id, n) for node_id, n in prompt.items()}
    assert set(by_type) == {"LoadVideo", VIDEO_NODE, "SaveVideo"}
    load_id, _ = by_type["LoadVideo"]
    ddcolor_id, ddcolor = by_type[VIDEO_NODE]
    assert ddcolor["inputs"]["video"] == [load_id, 0]
    save = by_type["SaveVideo"][1]["inputs"]
    assert save["video"] == [ddcolor_id, 0]
    assert save["format"] == "mp4" and save["codec"] == "h264" and save["filename_prefix"].startswith("ddcolor/")


def test_video_preset_uses_the_recommended_strength(specs):
    (ddcolor,) = nodes_of(load(WORKFLOWS / f"{VIDEO}.json"), VIDEO_NODE)
    values = widget_values_by_name(specs[VIDEO_NODE], ddcolor["widgets_values"])
    assert values == {"precision": "fp16", "size": 512, "model": "ddcolor_modelscope", "temporal": recommended_strength(), "crf": 18}


def test_video_preset_uses_core_nodes_only(specs):
    pack = load_pack()
    types = {n["type"] for n in load(WORKFLOWS / f"{VIDEO}.json")["nodes"]}
    assert types - set(pack.NODE_CLASS_MAPPINGS) <= set(core_specs())


def test_video_note_says_memory_stays_flat_and_when_to_use_the_image_node():
    text = note_text(VIDEO)
    assert f"temporal = {recommended_strength():g}" in text and "crf = 18" in text
    assert "memory stays the same for a clip of seconds or a feature film" in text
    assert "Cancel stops within one model call" in text and "leaves no file" in text
    # The IMAGE path for working on frames, and its price: the whole clip in memory, twice.
    assert f"DDColor Colorize (temporal {recommended_strength():g})" in text
    assert "WHOLE clip in memory as one batch" in text and "width x height x 3 x 4 bytes" in text
    assert f"{1280 * 720 * 12 / 1e6:.0f} MB at 1280x720" in text
    assert "python -m ddcolor colorize film.mp4 -o colored/" in text
    for fact in ("size", "512", "multiple of 32", "fp16", "bf16", "fp32", "auto"):
        assert fact in text, fact


# ----------------------------------------------------------------------------- the fine-tuning preset


def test_finetune_preset_chain(specs):
    """Dataset folder -> DDColor Fine-tune -> Plot Loss Graph; a test photo -> DDColor Colorize -> Save Image."""
    prompt = ui_to_api(load(WORKFLOWS / f"{FINETUNE}.json"), specs)
    by_type = {n["class_type"]: (node_id, n) for node_id, n in prompt.items()}
    assert set(by_type) == {"LoadImageSetFromFolderNode", FINETUNE_NODE, "LossGraphNode", "LoadImage", NODE, "SaveImage"}
    folder_id, folder = by_type["LoadImageSetFromFolderNode"]
    tune_id, tune = by_type[FINETUNE_NODE]
    assert tune["inputs"]["images"] == [folder_id, 0]
    assert by_type["LossGraphNode"][1]["inputs"]["loss"] == [tune_id, 0]
    # Plot Loss Graph writes to ComfyUI's temp folder without making subfolders: a plain prefix.
    assert "/" not in by_type["LossGraphNode"][1]["inputs"]["filename_prefix"]
    # The core loader needs photos of one size: Stretch makes them so without changing colors.
    assert folder["inputs"] == {"folder": "ddcolor_training", "resize_method": "Stretch"}
    photo_id, _ = by_type["LoadImage"]
    colorize_id, colorize = by_type[NODE]
    assert colorize["inputs"]["image"] == [photo_id, 0] and by_type["SaveImage"][1]["inputs"]["images"] == [colorize_id, 0]
    assert by_type["SaveImage"][1]["inputs"]["filename_prefix"].startswith("ddcolor/")


def test_finetune_preset_settings(specs):
    (tune,) = nodes_of(load(WORKFLOWS / f"{FINETUNE}.json"), FINETUNE_NODE)
    values = widget_values_by_name(specs[FINETUNE_NODE], tune["widgets_values"])
    assert values == {"model": "ddcolor_modelscope", "steps": 500, "batch": 4, "size": 256, "learning_rate": 0.0001,
                      "precision": "auto", "train": "all", "gradient_checkpointing": False, "seed": 0,
                      "file_name": "my_ddcolor.pth", "perceptual": True, "overwrite": False}


def test_finetune_notes_say_how_to_use_the_new_model_and_what_can_go_wrong():
    text = note_text(FINETUNE)
    for fact in ("input/ddcolor_training/", "Stretch", "models/ddcolor/my_ddcolor.pth", "output/ddcolor_finetune/", "Cancel",
                 "snapshot", "press R", "choose my_ddcolor.pth", "does not train again", "overwrite", "vgg16_bn-6c64b313.pth",
                 "hub/checkpoints/", "perceptual off", "steps 500, batch 4, size 256", "multiple of 32", "fp16", "bf16", "fp32",
                 "python -m ddcolor finetune"):
        assert fact in text, fact
    zh = note_text("DDColor微调训练")
    for fact in ("input/ddcolor_training/", "Stretch", "models/ddcolor/my_ddcolor.pth", "output/ddcolor_finetune/", "按 R",
                 "my_ddcolor.pth", "不会重新训练", "overwrite", "vgg16_bn-6c64b313.pth", "hub/checkpoints/", "python -m ddcolor finetune"):
        assert fact in zh, fact


# ----------------------------------------------------------------------------- the Chinese twins


def without_notes(workflow: dict) -> dict:
    twin = copy.deepcopy(workflow)
    twin.pop("id")
    for node in twin["nodes"]:
        if node["type"] == "Note":
            node["widgets_values"] = []
            node.pop("title", None)  # the frontend does not translate "Note"
    for group in twin.get("groups", []):
        group["title"] = ""  # group titles are text, like the notes
    return twin


@pytest.mark.parametrize("chinese,english", CHINESE_TWINS.items())
def test_chinese_twin_is_the_english_preset_with_chinese_notes(chinese, english):
    zh, en = load(WORKFLOWS / f"{chinese}.json"), load(WORKFLOWS / f"{english}.json")
    assert without_notes(zh) == without_notes(en)
    assert zh["id"] != en["id"]  # two templates, not one saved twice
    for zh_note, en_note in zip(nodes_of(zh, "Note"), nodes_of(en, "Note")):
        text = zh_note["widgets_values"][0]
        assert len(CJK.findall(text)) > 100 and text != en_note["widgets_values"][0]


@pytest.mark.parametrize("chinese,english", CHINESE_TWINS.items())
def test_chinese_notes_keep_the_numbers_users_act_on(chinese, english):
    text = note_text(chinese)
    for fact in ("fp16", "bf16", "fp32", "auto", "32", "output/ddcolor/", "models/ddcolor"):
        assert fact in text, fact
    if english in PRESETS:
        assert "460-680" in text and "960-1280" in text and f"本预设：{PRESETS[english]}" in text
        assert "没有单独的人物或建筑模型" in text and "只是尺寸不同" in text
    elif english == VIDEO:
        assert f"防闪烁（temporal）= {recommended_strength():g}" in text and "画质（crf）= 18" in text
        assert "内存占用都一样" in text and "不留下任何文件" in text
        assert f"DDColor 上色（防闪烁 {recommended_strength():g}）" in text and "整段" in text and "11 MB" in text
        assert "python -m ddcolor colorize film.mp4 -o colored/" in text


def test_chinese_notes_point_to_the_chinese_twins():
    # A note that says "see the building preset" names the one the reader can find beside it.
    assert "DDColor建筑黑白修复" in note_text("DDColor人物黑白修复")
    assert "DDColor人物黑白修复" in note_text("DDColor建筑黑白修复")


def test_readme_lists_every_preset_with_the_video_strength():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for path in UI_FILES:
        assert path.stem in text, path.stem
    strength = f"{recommended_strength():g}"
    assert f"| ddcolor_video | DDColor视频上色 | 512 | {strength} |" in text
    assert f"DDColor Colorize Video (temporal {strength})" in text  # the preset's chain
    assert f"DDColor Colorize (temporal {strength})" in text  # the IMAGE path, for short clips


# ----------------------------------------------------------------------------- old workflows


def test_workflow_saved_before_the_model_widget_loads_with_the_defaults(specs):
    assert widget_values_by_name(specs[NODE], ["fp32", 768]) == {
        "precision": "fp32", "size": 768, "model": "ddcolor_modelscope", "temporal": 0.0}


def test_workflow_saved_before_the_temporal_widget_loads_without_stabilization(specs):
    assert widget_values_by_name(specs[NODE], ["fp32", 768, "ddcolor_paper"]) == {
        "precision": "fp32", "size": 768, "model": "ddcolor_paper", "temporal": 0.0}


# ----------------------------------------------------------------------------- the checker catches mistakes
# A validator that accepts everything would make the tests above worthless.


@pytest.fixture
def person():
    return load(WORKFLOWS / "ddcolor_person.json")


def ddcolor_node(workflow):
    return nodes_of(workflow, NODE)[0]


def test_checker_catches_unknown_node_type(person, specs):
    person["nodes"][0]["type"] = "DDColorLoader"
    assert any("unknown node type" in p for p in check_ui_workflow(person, specs))


def test_checker_catches_wrong_widget_count(person, specs):
    ddcolor_node(person)["widgets_values"].append(0)
    assert any("widgets_values has 5 values" in p for p in check_ui_workflow(person, specs))


@pytest.mark.parametrize("values,problem", [
    (["fp8", 640, "ddcolor_modelscope", 0], "precision='fp8' is not one of"),
    (["fp16", 4096, "ddcolor_modelscope", 0], "size=4096 is outside 256..2048"),
    (["fp16", 650, "ddcolor_modelscope", 0], "not on its step of 32"),
    (["fp16", "640", "ddcolor_modelscope", 0], "size must be an integer"),
    ([640, "fp16", "ddcolor_modelscope", 0], "precision must be a string"),
    (["fp16", 640, "ddcolor_modelscope", 1.5], "temporal=1.5 is outside 0.0..1.0"),
    (["fp16", 640, "ddcolor_modelscope", "0.6"], "temporal must be a number"),
])
def test_checker_catches_bad_widget_values(person, specs, values, problem):
    ddcolor_node(person)["widgets_values"] = values
    assert any(problem in p for p in check_ui_workflow(person, specs)), check_ui_workflow(person, specs)


def test_checker_catches_inconsistent_links(person, specs):
    broken = copy.deepcopy(person)
    broken["links"][0][3] = 99  # link 1 now ends at a node that does not exist
    assert any("missing node 99" in p for p in check_ui_workflow(broken, specs))
    unlisted = copy.deepcopy(person)
    unlisted["nodes"][0]["outputs"][0]["links"] = [2]  # LoadImage forgets link 1
    assert any("does not list it" in p for p in check_ui_workflow(unlisted, specs))
    retyped = copy.deepcopy(person)
    retyped["links"][0][5] = "MASK"
    assert any("carries MASK" in p for p in check_ui_workflow(retyped, specs))


def test_checker_catches_unconnected_required_input(person, specs):
    node = ddcolor_node(person)
    link_id = node["inputs"][0]["link"]
    node["inputs"][0]["link"] = None
    person["links"] = [l for l in person["links"] if l[0] != link_id]
    person["nodes"][0]["outputs"][0]["links"].remove(link_id)
    assert any("required input 'image' is not connected" in p for p in check_ui_workflow(person, specs))


def test_checker_catches_api_mistakes(specs):
    prompt = load(WORKFLOWS / "api" / "ddcolor_person.json")
    ddcolor_id = next(i for i, n in prompt.items() if n["class_type"] == NODE)
    bad = copy.deepcopy(prompt)
    bad[ddcolor_id]["inputs"]["image"] = ["1", 1]  # LoadImage's MASK output
    assert any("takes IMAGE but node 1 output 1 is MASK" in p for p in check_api_prompt(bad, specs))
    bad = copy.deepcopy(prompt)
    del bad[ddcolor_id]["inputs"]["precision"]
    assert any("required input 'precision' is missing" in p for p in check_api_prompt(bad, specs))
    bad = copy.deepcopy(prompt)
    bad[ddcolor_id]["inputs"]["strength"] = 1.0
    assert any("'strength' is not an input" in p for p in check_api_prompt(bad, specs))
    no_output = {k: v for k, v in prompt.items() if v["class_type"] not in ("SaveImage", "PreviewImage")}
    assert any("no output node" in p for p in check_api_prompt(no_output, specs))


def test_checker_catches_a_twin_that_drifted(specs):
    ui = load(WORKFLOWS / "ddcolor_person.json")
    ddcolor_node(ui)["widgets_values"][1] = 512
    assert ui_to_api(ui, specs) != strip_meta(load(WORKFLOWS / "api" / "ddcolor_person.json"))


@pytest.mark.parametrize("dropped", [("temporal",), ("model", "temporal")])
def test_old_api_prompt_without_the_newer_inputs_is_valid(specs, dropped):
    prompt = load(WORKFLOWS / "api" / "ddcolor_person.json")
    for node in prompt.values():
        if node["class_type"] == NODE:
            for name in dropped:
                del node["inputs"][name]
    assert check_api_prompt(prompt, specs) == []


def test_checker_catches_images_fed_to_the_video_node(specs):
    video = load(WORKFLOWS / "api" / f"{VIDEO}.json")
    video["1"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    assert any("video takes VIDEO but node 1 output 0 is IMAGE" in p for p in check_api_prompt(video, specs))


def test_checker_catches_a_crf_outside_x264s_scale(specs):
    video = load(WORKFLOWS / "api" / f"{VIDEO}.json")
    video["2"]["inputs"]["crf"] = 60
    assert any("crf=60 is outside 0..51" in p for p in check_api_prompt(video, specs))
