"""One description per node, and the two ways of handing it to ComfyUI.

A node is declared once, as a ``NodeSpec``: its id, name, category,
description, inputs (widgets and sockets with their defaults and tooltips),
outputs and the function that runs it. Nothing here imports ComfyUI.

``classic_node`` turns a spec into a class with ``INPUT_TYPES``/``FUNCTION``
(what every ComfyUI release loads through ``NODE_CLASS_MAPPINGS``);
``versioned_node`` turns it into an ``io.ComfyNode`` of ComfyUI's versioned
node API (``comfy_api.latest``), handed over by ``comfy_entrypoint``. Both
list the same inputs in the same order with the same options, so saved
workflows and API prompts run unchanged on either.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

COMBO = "COMBO"


@dataclass(frozen=True)
class Input:
    """A widget (INT, FLOAT, BOOLEAN, STRING, COMBO) or a socket (IMAGE, VIDEO, any type name)."""

    name: str
    kind: str
    tooltip: str
    default: Any = None
    choices: Sequence[str] = ()  # a COMBO's entries
    min: float | None = None
    max: float | None = None
    step: float | None = None
    control_after_generate: bool | None = None
    # Optional inputs arrive only when the prompt has them: the function's defaults fill in.
    optional: bool = False

    def widget_options(self) -> dict:
        """The options both APIs spell alike, unset ones left out."""
        options = {
            "default": self.default, "min": self.min, "max": self.max, "step": self.step,
            "control_after_generate": self.control_after_generate,
        }
        if self.kind == "STRING":
            options["multiline"] = False  # the versioned API always states it: the classic one says it too
        return {key: value for key, value in options.items() if value is not None}


@dataclass(frozen=True)
class Output:
    name: str
    kind: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    category: str
    description: str
    # Asked each time ComfyUI lists its nodes: the model list follows the files in models/ddcolor.
    inputs: Callable[[], Sequence[Input]]
    outputs: Sequence[Output]
    # Called with the inputs by name; returns the outputs as a tuple, in order.
    function: Callable[..., tuple]
    output_node: bool = False
    input_is_list: bool = False

    @property
    def class_name(self) -> str:
        return re.sub(r"[^0-9A-Za-z]", "", self.display_name)


# ----------------------------------------------------------------------------- NODE_CLASS_MAPPINGS


def classic_node(spec: NodeSpec) -> type:
    """A node class for ``NODE_CLASS_MAPPINGS``: ``INPUT_TYPES``, ``FUNCTION`` and the output attributes."""

    def input_types(cls) -> dict:
        sections: dict[str, dict] = {"required": {}}
        for item in spec.inputs():
            kind = list(item.choices) if item.kind == COMBO else item.kind
            section = sections.setdefault("optional" if item.optional else "required", {})
            section[item.name] = (kind, {**item.widget_options(), "tooltip": item.tooltip})
        return sections

    function = spec.function.__name__
    return type(spec.class_name, (), {
        "__module__": spec.function.__module__,
        "__doc__": spec.description,
        "DESCRIPTION": spec.description,
        "CATEGORY": spec.category,
        "INPUT_TYPES": classmethod(input_types),
        "FUNCTION": function,
        function: staticmethod(spec.function),
        "RETURN_TYPES": tuple(output.kind for output in spec.outputs),
        "RETURN_NAMES": tuple(output.name for output in spec.outputs),
        "OUTPUT_TOOLTIPS": tuple(output.tooltip for output in spec.outputs),
        "OUTPUT_NODE": spec.output_node,
        "INPUT_IS_LIST": spec.input_is_list,
    })


def classic_mappings(specs: Sequence[NodeSpec]) -> tuple[dict, dict]:
    """``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS`` for ``specs``."""
    return (
        {spec.node_id: classic_node(spec) for spec in specs},
        {spec.node_id: spec.display_name for spec in specs},
    )


# ----------------------------------------------------------------------------- comfy_entrypoint


def versioned_api():
    """``(ComfyExtension, io)`` of ComfyUI's versioned node API, or None on a ComfyUI without it (or none)."""
    try:
        # The module ComfyUI's own nodes use; an older ComfyUI has no comfy_api.latest.
        from comfy_api.latest import ComfyExtension, io
    except ImportError:
        return None
    return ComfyExtension, io


def versioned_node(spec: NodeSpec, io) -> type:
    """An ``io.ComfyNode`` subclass: ``define_schema`` and ``execute``."""

    def define_schema(cls):
        return io.Schema(
            node_id=spec.node_id,
            display_name=spec.display_name,
            category=spec.category,
            description=spec.description,
            inputs=[_versioned_input(item, io) for item in spec.inputs()],
            # No output id: ids must differ from the inputs' ("image" in, "image" out); display_name
            # is the name ComfyUI shows, as RETURN_NAMES is for a classic node.
            outputs=[_io_type(output.kind, io).Output(display_name=output.name, tooltip=output.tooltip)
                     for output in spec.outputs],
            is_output_node=spec.output_node,
            is_input_list=spec.input_is_list,
        )

    def execute(cls, **inputs):
        result = spec.function(**inputs)
        if isinstance(result, dict):  # a classic node's {"ui": ..., "result": (...)}
            return io.NodeOutput(*result["result"], ui=result.get("ui"))
        return io.NodeOutput(*result)

    return type(spec.class_name, (io.ComfyNode,), {
        "__module__": spec.function.__module__,
        "__doc__": spec.description,
        "define_schema": classmethod(define_schema),
        "execute": classmethod(execute),
    })


def versioned_entrypoint(specs: Sequence[NodeSpec], api) -> Callable:
    """``comfy_entrypoint`` for ``specs``: ComfyUI awaits it and asks the extension for its nodes."""
    ComfyExtension, io = api

    class DDColorExtension(ComfyExtension):
        async def get_node_list(self) -> list[type]:
            return [versioned_node(spec, io) for spec in specs]

    async def comfy_entrypoint() -> ComfyExtension:
        return DDColorExtension()

    return comfy_entrypoint


def _io_type(kind: str, io):
    known = {
        "INT": io.Int, "FLOAT": io.Float, "BOOLEAN": io.Boolean, "STRING": io.String, COMBO: io.Combo,
        "IMAGE": io.Image, "VIDEO": io.Video,
    }
    return known.get(kind) or io.Custom(kind)


def _versioned_input(item: Input, io):
    common = {"optional": item.optional, "tooltip": item.tooltip, **item.widget_options()}
    if item.kind == COMBO:
        return _listed_combo(io)(item.name, options=list(item.choices), **common)
    return _io_type(item.kind, io).Input(item.name, **common)


@functools.cache
def _listed_combo(io) -> type:
    class ListedCombo(io.Combo.Input):
        """A combo whose type is its list of choices, as a classic node's: ComfyUI 0.3.64 checks a
        prompt's value against that list only (value_not_in_list, which API clients read); for the
        type "COMBO" it lets any value through to the node."""

        def get_io_type(self):
            return list(self.options)

    return ListedCombo
