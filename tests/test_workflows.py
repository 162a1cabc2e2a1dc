"""Every workflow in workflows/ is valid for its format, and the presets are what the README promises.

UI files (workflows/*.json) are what the frontend opens by drag-and-drop and
lists in its template browser; API files (workflows/api/*.json) are what
POST /prompt takes. Node specs: ours from INPUT_TYPES, core ones from
tests/core_nodes.json (checked against a real ComfyUI in test_e2e_comfyui.py).
"""

from __future__ import annotations

import copy
import json
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
WORKFLOWS = REPO / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted((WORKFLOWS / "api").glob("*.json"))
PRESETS = {"ddcolor_person": 640, "ddcolor_building": 1024}


@pytest.fixture(scope="module")
def specs():
    pack = load_pack()
    return {**core_specs(), **{name: spec_from_node_class(name, cls) for name, cls in pack.NODE_CLASS_MAPPINGS.items()}}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def nodes_of(workflow: dict, kind: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == kind]


def test_the_presets_exist():
    assert {p.stem for p in UI_FILES} == set(PRESETS)
    assert {p.stem for p in API_FILES} == set(PRESETS)


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_valid(path, specs):
    assert check_ui_workflow(load(path), specs) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_prompt_is_valid(path, specs):
    assert check_api_prompt(load(path), specs) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_api_twin_matches_the_ui_workflow(path, specs):
    twin = WORKFLOWS / "api" / path.name
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
    assert values == {"precision": "fp16", "size": size, "model": "ddcolor_modelscope"}


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


@pytest.mark.parametrize("name", PRESETS)
def test_preset_notes_explain_sizes_precision_and_are_honest(name):
    text = " ".join(n["widgets_values"][0] for n in nodes_of(load(WORKFLOWS / f"{name}.json"), "Note"))
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


# ----------------------------------------------------------------------------- old workflows


def test_workflow_saved_before_the_model_widget_loads_with_the_default_model(specs):
    assert widget_values_by_name(specs[NODE], ["fp32", 768]) == {"precision": "fp32", "size": 768, "model": "ddcolor_modelscope"}


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
    assert any("widgets_values has 4 values" in p for p in check_ui_workflow(person, specs))


@pytest.mark.parametrize("values,problem", [
    (["fp8", 640, "ddcolor_modelscope"], "precision='fp8' is not one of"),
    (["fp16", 4096, "ddcolor_modelscope"], "size=4096 is outside 256..2048"),
    (["fp16", 650, "ddcolor_modelscope"], "not on its step of 32"),
    (["fp16", "640", "ddcolor_modelscope"], "size must be an integer"),
    ([640, "fp16", "ddcolor_modelscope"], "precision must be a string"),
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


def test_old_api_prompt_without_model_is_valid(specs):
    prompt = load(WORKFLOWS / "api" / "ddcolor_person.json")
    for node in prompt.values():
        if node["class_type"] == NODE:
            del node["inputs"]["model"]
    assert check_api_prompt(prompt, specs) == []
