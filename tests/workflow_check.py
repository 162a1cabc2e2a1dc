"""Validate ComfyUI workflow files without a ComfyUI.

Node specs come in /object_info's shape (``{"input": {"required": ..., "optional": ...},
"output": [...], "output_node": bool}``): ours from ``INPUT_TYPES``, the core
nodes the presets use from the hand-written ``core_nodes.json``. The rules for
how a spec becomes widgets and ``widgets_values`` mirror the ComfyUI frontend;
tests/test_e2e_comfyui.py checks them against the real frontend and server.

Every ``check_*`` function returns a list of problems (empty: valid), so tests
can show all of them at once and can assert that a broken file is caught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORE_NODES_FILE = Path(__file__).with_name("core_nodes.json")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"]
# Combo options after which the frontend adds its "upload" button widget (LoadImage, LoadVideo).
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


@dataclass(frozen=True)
class Input:
    name: str
    type: str  # IMAGE, INT, COMBO, ...
    optional: bool
    options: dict = field(default_factory=dict)  # default, min, max, step, choices, image_upload, ...

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    output_node: bool = False
    frontend_only: bool = False  # exists only in the frontend (Note): never in API prompts

    def input(self, name: str) -> Input | None:
        return next((i for i in self.inputs if i.name == name), None)

    def widgets(self) -> list[tuple[str, Input]]:
        """(name, spec) per widget, in ``widgets_values`` order, with the frontend's extra UI-only widgets."""
        widgets = []
        for i in self.inputs:
            if not i.is_widget:
                continue
            widgets.append((i.name, i))
            if i.type == "COMBO" and any(i.options.get(kind) for kind in UPLOAD_OPTIONS):
                widgets.append(("upload", Input("upload", "IMAGEUPLOAD", True)))
            # As the frontend: the option if given (false turns it off), else by name.
            if i.type in ("INT", "FLOAT") and i.options.get("control_after_generate", i.name in ("seed", "noise_seed")):
                widgets.append(("control_after_generate", Input("control_after_generate", "COMBO", True, {"choices": CONTROL_VALUES})))
        return widgets


def spec_from_object_info(name: str, info: dict) -> NodeSpec:
    """A NodeSpec from an /object_info entry (or an INPUT_TYPES-shaped dict)."""
    inputs = []
    for section in ("required", "optional"):
        for input_name, declaration in info.get("input", {}).get(section, {}).items():
            kind, options = declaration[0], dict(declaration[1]) if len(declaration) > 1 else {}
            if isinstance(kind, (list, tuple)):  # old combo form: the list of choices
                kind, options["choices"] = "COMBO", list(kind)
            elif kind == "COMBO" and "options" in options:  # new combo form
                options["choices"] = list(options.pop("options"))
            inputs.append(Input(input_name, kind, section == "optional", options))
    return NodeSpec(
        name,
        tuple(inputs),
        tuple(info.get("output", ())),
        bool(info.get("output_node", False)),
        bool(info.get("frontend_only", False)),
    )


def spec_from_node_class(name: str, cls: type) -> NodeSpec:
    info = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES), "output_node": getattr(cls, "OUTPUT_NODE", False)}
    return spec_from_object_info(name, json.loads(json.dumps(info)))


def core_specs() -> dict[str, NodeSpec]:
    data = json.loads(CORE_NODES_FILE.read_text())
    return {name: spec_from_object_info(name, info) for name, info in data.items() if not name.startswith("_")}


# ----------------------------------------------------------------------------- values


def check_value(where: str, spec: Input, value: Any) -> list[str]:
    """Problems with one widget value for its input spec."""
    t, o = spec.type, spec.options
    if t == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: {spec.name} must be an integer, got {value!r}"]
        problems = []
        if "min" in o and value < o["min"] or "max" in o and value > o["max"]:
            problems.append(f"{where}: {spec.name}={value} is outside {o.get('min')}..{o.get('max')}")
        if o.get("step", 1) > 1 and (value - o.get("min", 0)) % o["step"]:
            problems.append(f"{where}: {spec.name}={value} is not on its step of {o['step']}")
        return problems
    if t == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: {spec.name} must be a number, got {value!r}"]
        if "min" in o and value < o["min"] or "max" in o and value > o["max"]:
            return [f"{where}: {spec.name}={value} is outside {o.get('min')}..{o.get('max')}"]
        return []
    if t == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {spec.name} must be true or false, got {value!r}"]
    if t in ("STRING", "IMAGEUPLOAD"):
        return [] if isinstance(value, str) else [f"{where}: {spec.name} must be a string, got {value!r}"]
    if t == "COMBO":
        if not isinstance(value, str):
            return [f"{where}: {spec.name} must be a string choice, got {value!r}"]
        choices = o.get("choices")
        if choices is not None and value not in choices:
            return [f"{where}: {spec.name}={value!r} is not one of {choices}"]
        return []
    return [f"{where}: {spec.name} has type {t}, which takes a link, not a value"]


def widget_values_by_name(spec: NodeSpec, values: list) -> dict[str, Any]:
    """Map positional ``widgets_values`` to widget names, as the frontend does on load.

    Missing trailing values keep their defaults (how a workflow saved before a
    widget existed loads); UI-only extra widgets are dropped.
    """
    named = {}
    for index, (name, widget) in enumerate(spec.widgets()):
        if widget.type == "IMAGEUPLOAD" or name == "control_after_generate":
            continue
        if index < len(values):
            named[name] = values[index]
        elif "default" in widget.options:
            named[name] = widget.options["default"]
    return named


# ----------------------------------------------------------------------------- UI format


def check_ui_workflow(workflow: dict, specs: dict[str, NodeSpec]) -> list[str]:
    """Problems with a UI-format (drag-and-drop) workflow."""
    problems = []
    if workflow.get("version") != 0.4:
        problems.append(f"version is {workflow.get('version')!r}; the frontend writes 0.4")
    nodes = workflow.get("nodes")
    links = workflow.get("links")
    if not isinstance(nodes, list) or not isinstance(links, list):
        return problems + ["a UI workflow needs lists 'nodes' and 'links'"]

    by_id = {}
    for node in nodes:
        if node.get("id") in by_id:
            problems.append(f"node id {node.get('id')} is used twice")
        by_id[node.get("id")] = node
    link_by_id = {}
    for link in links:
        if not (isinstance(link, list) and len(link) == 6):
            problems.append(f"link {link!r} is not [id, origin, origin_slot, target, target_slot, type]")
            continue
        if link[0] in link_by_id:
            problems.append(f"link id {link[0]} is used twice")
        link_by_id[link[0]] = link
    if nodes and workflow.get("last_node_id", 0) < max(by_id, default=0):
        problems.append("last_node_id is lower than a node id")
    if links and workflow.get("last_link_id", 0) < max(link_by_id, default=0):
        problems.append("last_link_id is lower than a link id")

    for node in nodes:
        where = f"node {node.get('id')} ({node.get('type')})"
        spec = specs.get(node.get("type"))
        if spec is None:
            problems.append(f"{where}: unknown node type; it is neither ours nor in core_nodes.json")
            continue
        if node.get("mode", 0) != 0:
            problems.append(f"{where}: mode {node.get('mode')} (muted or bypassed); presets run every node")
        problems += _check_ui_slots(where, node, spec, link_by_id)
        values = node.get("widgets_values", [])
        widgets = spec.widgets()
        if not isinstance(values, list) or len(values) != len(widgets):
            problems.append(
                f"{where}: widgets_values has {len(values) if isinstance(values, list) else values!r} values; "
                f"expected {len(widgets)} for {[w for w, _ in widgets]}"
            )
            continue
        for (name, widget), value in zip(widgets, values):
            problems += check_value(where, widget, value)

    for link_id, (_, origin, origin_slot, target, target_slot, kind) in link_by_id.items():
        where = f"link {link_id}"
        source, sink = by_id.get(origin), by_id.get(target)
        if source is None or sink is None:
            problems.append(f"{where}: connects missing node {origin if source is None else target}")
            continue
        outputs, inputs = source.get("outputs", []), sink.get("inputs", [])
        if origin_slot >= len(outputs) or link_id not in (outputs[origin_slot].get("links") or []):
            problems.append(f"{where}: output {origin_slot} of node {origin} does not list it")
        elif outputs[origin_slot].get("type") != kind:
            problems.append(f"{where}: carries {kind} but output {origin_slot} of node {origin} is {outputs[origin_slot].get('type')}")
        if target_slot >= len(inputs) or inputs[target_slot].get("link") != link_id:
            problems.append(f"{where}: input {target_slot} of node {target} does not hold it")
        elif inputs[target_slot].get("type") != kind:
            problems.append(f"{where}: carries {kind} into input {inputs[target_slot].get('name')!r} of type {inputs[target_slot].get('type')}")
    return problems


def _check_ui_slots(where: str, node: dict, spec: NodeSpec, link_by_id: dict) -> list[str]:
    problems = []
    widget_names = {name for name, _ in spec.widgets()}
    connected = set()
    for slot, entry in enumerate(node.get("inputs", [])):
        name = entry.get("name")
        declared = spec.input(name)
        if declared is None and name not in widget_names:
            problems.append(f"{where}: input {name!r} is not an input of {spec.name}")
            continue
        expected_type = declared.type if declared else entry.get("type")
        if entry.get("type") != expected_type:
            problems.append(f"{where}: input {name!r} has type {entry.get('type')}, expected {expected_type}")
        link_id = entry.get("link")
        if link_id is not None:
            link = link_by_id.get(link_id)
            if link is None or link[3] != node["id"] or link[4] != slot:
                problems.append(f"{where}: input {name!r} holds link {link_id}, which does not end here")
            connected.add(name)
    for declared in spec.inputs:
        if not declared.is_widget and not declared.optional and declared.name not in connected:
            problems.append(f"{where}: required input {declared.name!r} is not connected")
    outputs = node.get("outputs", [])
    if [o.get("type") for o in outputs] != list(spec.outputs):
        problems.append(f"{where}: outputs {[o.get('type') for o in outputs]} differ from {list(spec.outputs)}")
    for slot, output in enumerate(outputs):
        for link_id in output.get("links") or []:
            link = link_by_id.get(link_id)
            if link is None or link[1] != node["id"] or link[2] != slot:
                problems.append(f"{where}: output {slot} lists link {link_id}, which does not start here")
    return problems


def ui_to_api(workflow: dict, specs: dict[str, NodeSpec]) -> dict:
    """The API prompt the frontend would queue for a (valid) UI workflow."""
    link_by_id = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        spec = specs[node["type"]]
        if spec.frontend_only:
            continue
        inputs = widget_values_by_name(spec, node.get("widgets_values", []))
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                _, origin, origin_slot, *_ = link_by_id[entry["link"]]
                inputs[entry["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ----------------------------------------------------------------------------- API format


def check_api_prompt(prompt: dict, specs: dict[str, NodeSpec]) -> list[str]:
    """Problems with an API-format prompt (what POST /prompt takes)."""
    problems = []
    if not isinstance(prompt, dict) or not prompt:
        return ["an API prompt is a non-empty object of node id -> {class_type, inputs}"]
    for node_id, node in prompt.items():
        kind = node.get("class_type")
        where = f"node {node_id} ({kind})"
        spec = specs.get(kind)
        if spec is None or spec.frontend_only:
            problems.append(f"{where}: not a server node type")
            continue
        inputs = node.get("inputs", {})
        for name in inputs:
            if spec.input(name) is None:
                problems.append(f"{where}: {name!r} is not an input of {kind}")
        for declared in spec.inputs:
            value = inputs.get(declared.name)
            if value is None:
                if not declared.optional:
                    problems.append(f"{where}: required input {declared.name!r} is missing")
                continue
            if isinstance(value, list):  # a link: [node id, output slot]
                problems += _check_api_link(where, declared, value, prompt, specs)
            else:
                problems += check_value(where, declared, value)
    if not any(specs.get(n.get("class_type")) and specs[n["class_type"]].output_node for n in prompt.values()):
        problems.append("no output node (SaveImage, PreviewImage): ComfyUI would refuse the prompt")
    return problems


def _check_api_link(where: str, declared: Input, value: list, prompt: dict, specs: dict[str, NodeSpec]) -> list[str]:
    if len(value) != 2 or not isinstance(value[0], str) or not isinstance(value[1], int):
        return [f"{where}: {declared.name} link {value!r} is not [\"node id\", output index]"]
    source = prompt.get(value[0])
    if source is None:
        return [f"{where}: {declared.name} links to missing node {value[0]}"]
    source_spec = specs.get(source.get("class_type"))
    if source_spec is None:
        return []  # reported on the source node itself
    if value[1] >= len(source_spec.outputs):
        return [f"{where}: {declared.name} links to output {value[1]} of node {value[0]}, which has {len(source_spec.outputs)}"]
    kind = source_spec.outputs[value[1]]
    if kind != declared.type:
        return [f"{where}: {declared.name} takes {declared.type} but node {value[0]} output {value[1]} is {kind}"]
    return []


def strip_meta(prompt: dict) -> dict:
    return {node_id: {"class_type": n["class_type"], "inputs": n["inputs"]} for node_id, n in prompt.items()}
