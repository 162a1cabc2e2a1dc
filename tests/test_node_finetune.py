"""The DDColor Fine-tune node in CI: the file it writes, its LOSS_MAP, progress, Cancel and resume, refusals.

ComfyUI is replaced by the stand-ins of tests/fake_comfy.py; the training is
real (the "small" calibrated checkpoint, 64 x 64 crops, three steps, no
perceptual loss: VGG weights cannot be downloaded here).
"""

from __future__ import annotations

import sys

import pytest
import torch

from tests import fake_comfy
from tests.pack import load_pack
from tests.workflow_check import core_specs, spec_from_node_class

pack = load_pack()
node_module = sys.modules[f"{pack.__name__}.nodes.finetune"]
models_module = sys.modules[f"{pack.__name__}.nodes.models"]
colorize_module = sys.modules[f"{pack.__name__}.nodes.colorize"]

NODE = "DDColor-finetune"
STEPS, SIZE = 3, 64


@pytest.fixture
def comfy(monkeypatch, tmp_path, small_checkpoint):
    """ComfyUI stand-ins whose models/ddcolor holds the small checkpoint as start.pth."""
    folder = tmp_path / "models" / "ddcolor"
    folder.mkdir(parents=True)
    (folder / "start.pth").symlink_to(small_checkpoint)
    record = fake_comfy.install(monkeypatch, folder)
    record.folder = folder
    record.reports = tmp_path / "output" / node_module.REPORTS_FOLDER
    monkeypatch.setattr(colorize_module, "_LOADED", models_module.ModelCache())
    return record


@pytest.fixture
def node():
    return pack.NODE_CLASS_MAPPINGS[NODE]()


def color_photos(count: int = 4, height: int = 72, width: int = 80) -> torch.Tensor:
    """An IMAGE batch of smooth color pictures, different in every image."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(count, 3, 3, 3, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1).permute(0, 2, 3, 1)


def run(node, images, **changes):
    """The node's function as ComfyUI calls it: under torch.inference_mode(), every input a list (INPUT_IS_LIST),
    the images made in inference mode as a loader's are; returns its result dict."""
    widgets = dict(model="start.pth", steps=STEPS, batch=2, size=SIZE, learning_rate=1e-3, precision="fp32", train="all",
                   gradient_checkpointing=False, seed=0, file_name="tuned.pth", perceptual=False, overwrite=False)
    widgets.update(changes)
    with torch.inference_mode():
        images = [image.clone() for image in (images if isinstance(images, list) else [images])]
        return node.finetune(images, **{name: [value] for name, value in widgets.items()})


def listed(comfy) -> list[str]:
    """What DDColor Colorize's model widget lists now."""
    import folder_paths

    return models_module.model_choices(folder_paths.get_filename_list("ddcolor"))


# ----------------------------------------------------------------------------- a run


def test_the_node_writes_a_checkpoint_colorize_lists_and_loads(comfy, node):
    result = run(node, color_photos())
    (loss,) = result["result"]
    assert list(loss) == ["loss"] and len(loss["loss"]) == STEPS and all(isinstance(v, float) for v in loss["loss"])
    assert comfy.bars[-1] == STEPS and comfy.progress[-STEPS:] == [(step, STEPS) for step in range(1, STEPS + 1)]
    assert ("unload_all_models",) in comfy.calls  # other models leave the device before training
    # Only the checkpoint lands in models/ddcolor; the run's files are in output/ddcolor_finetune.
    assert sorted(p.name for p in comfy.folder.iterdir()) == ["start.pth", "tuned.pth"]
    assert "tuned.pth" in listed(comfy)
    shown = result["ui"]["images"]
    assert {image["filename"] for image in shown} == {"tuned_validation.png", "tuned_loss.png"}
    assert all((comfy.reports / image["filename"]).is_file() and image["type"] == "output" for image in shown)
    assert not (comfy.reports / "tuned_snapshot.pt").exists()
    # DDColor Colorize loads it (strictly: its loader refuses missing or extra keys) and colors with it.
    gray = color_photos(1).mean(-1, keepdim=True).expand(-1, -1, -1, 3)
    (colored,) = pack.NODE_CLASS_MAPPINGS["DDColor-ddcolorize"]().colorize_images(gray, "fp32", 256, model="tuned.pth")
    assert colored.shape == gray.shape and (colored[..., 0] - colored[..., 2]).abs().mean() > 1e-3


def test_cancel_keeps_the_snapshot_writes_no_checkpoint_and_queueing_again_continues(comfy, node):
    images = color_photos()

    def cancel_after_the_first_step(done, total):
        comfy.interrupted = done == 1 and total == STEPS

    comfy.on_progress = cancel_after_the_first_step
    with pytest.raises(fake_comfy.InterruptProcessingException):
        run(node, images)
    assert (comfy.reports / "tuned_snapshot.pt").is_file()
    assert not (comfy.folder / "tuned.pth").exists() and "tuned.pth" not in listed(comfy)
    assert not comfy.interrupted  # the cancel was handed to ComfyUI, which clears it

    # Other settings cannot continue that run: the error names the snapshot and both ways out.
    with pytest.raises(ValueError, match="tuned_snapshot.pt holds a stopped run") as error:
        run(node, images, size=96)
    assert "delete that file" in str(error.value) and "size 64 -> 96" in str(error.value)

    comfy.progress.clear()
    (loss,) = run(node, images)["result"]
    assert comfy.progress[0] == (2, STEPS)  # continued after step 1, not from the start
    assert len(loss["loss"]) == STEPS  # the whole run's curve
    assert (comfy.folder / "tuned.pth").is_file() and not (comfy.reports / "tuned_snapshot.pt").exists()


def test_cancel_seen_by_comfyuis_progress_hook_stops_at_the_next_step(comfy):
    # ComfyUI's progress hook raises the interrupt (and clears the flag) inside the bar's update:
    # the run must not die there, mid-loop and without a snapshot, but stop at the next step.
    steps = node_module.StepProgress(STEPS)
    assert not steps.should_stop()
    comfy.interrupted = True
    steps(1, STEPS, {"loss": 1.0})
    assert not comfy.interrupted and steps.should_stop()


# ----------------------------------------------------------------------------- refusals, before any work


@pytest.mark.parametrize("changes,problem", [
    ({"size": 100}, "size 100: use a multiple of 32"),
    ({"file_name": "../elsewhere.pth"}, "file_name '../elsewhere.pth': give a plain file name"),
    ({"file_name": "sub/tuned.pth"}, "give a plain file name"),
    ({"file_name": "sub\\tuned.pth"}, "give a plain file name"),
    ({"file_name": ".hidden.pth"}, "would be hidden"),
    ({"file_name": "ddcolor_modelscope"}, "ddcolor_modelscope.pth: that is a published model's file"),
    ({"model": "missing.pth"}, "missing.pth' is not in"),
])
def test_bad_widgets_are_refused_by_name(comfy, node, changes, problem):
    with pytest.raises((ValueError, FileNotFoundError), match=problem.replace("\\", "\\\\").replace("(", r"\(")) as error:
        run(node, color_photos(2), **changes)
    assert "--" not in str(error.value)  # widget names, not the command line's options
    assert comfy.progress == [] and sorted(p.name for p in comfy.folder.iterdir()) == ["start.pth"]


def test_an_empty_batch_is_refused(comfy, node):
    with pytest.raises(ValueError, match="images: the batch is empty"):
        run(node, torch.zeros(0, 64, 64, 3))


def test_an_existing_file_is_kept_unless_overwrite_is_on(comfy, node):
    (comfy.folder / "tuned.pth").write_bytes(b"someone's model")
    with pytest.raises(ValueError, match="tuned.pth already exists .* turn overwrite on"):
        run(node, color_photos())
    assert (comfy.folder / "tuned.pth").read_bytes() == b"someone's model" and comfy.progress == []
    run(node, color_photos(), steps=1, overwrite=True)
    assert (comfy.folder / "tuned.pth").read_bytes() != b"someone's model"


def test_gray_photos_only_are_refused(comfy, node):
    gray = color_photos(3).mean(-1, keepdim=True).expand(-1, -1, -1, 3)
    with pytest.raises(ValueError, match="no color photos to train on"):
        run(node, gray)


def test_a_list_of_images_of_different_sizes_is_one_training_set(comfy, node):
    # What a dataset loader that outputs a list gives; with INPUT_IS_LIST the node sees one call.
    (loss,) = run(node, [color_photos(2, 64, 64), color_photos(1, 96, 80), color_photos(1, 80, 120)], steps=1)["result"]
    assert len(loss["loss"]) == 1 and (comfy.folder / "tuned.pth").is_file()


# ----------------------------------------------------------------------------- helpers


def test_checkpoint_names():
    assert node_module.checkpoint_name("mine") == "mine.pth"
    assert node_module.checkpoint_name(" mine.safetensors ") == "mine.safetensors"
    assert node_module.checkpoint_name("film.v2") == "film.v2.pth"


def test_library_messages_name_the_widgets():
    terms = node_module.in_widget_terms
    assert terms("--lr 5: use a positive learning rate") == "learning_rate 5: use a positive learning rate"
    assert terms("lower --batch or --size, add --checkpointing") == "lower batch or size, add gradient_checkpointing"
    assert terms("or train without it: --no-perceptual") == "or train without it: perceptual off"
    assert terms("-o x.jpg: name the checkpoint .pth") == "file_name x.jpg: name the checkpoint .pth"
    assert terms("a non-option like top-of-range stays") == "a non-option like top-of-range stays"


def test_a_loss_map_leaves_out_non_finite_steps():
    assert node_module.loss_map({"loss": [1.0, float("nan"), 0.5], "pix": [0.1, 0.2, 0.3]}) == {"loss": [1.0, 0.5]}


# ----------------------------------------------------------------------------- the contract


def test_node_identity_and_widgets():
    cls = pack.NODE_CLASS_MAPPINGS[NODE]
    assert pack.NODE_DISPLAY_NAME_MAPPINGS[NODE] == "DDColor Fine-tune"
    assert cls.CATEGORY == "training" and cls.OUTPUT_NODE and cls.INPUT_IS_LIST
    # The output is what ComfyUI's own Plot Loss Graph takes.
    assert cls.RETURN_TYPES == (core_specs()["LossGraphNode"].input("loss").type,) == ("LOSS_MAP",)
    spec = spec_from_node_class(NODE, cls)
    assert [name for name, _ in spec.widgets()] == [
        "model", "steps", "batch", "size", "learning_rate", "precision", "train", "gradient_checkpointing", "seed",
        "file_name", "perceptual", "overwrite",
    ]  # no control_after_generate after seed: "randomize" would retrain on every queue
    required = cls.INPUT_TYPES()["required"]
    assert required["model"][0][:4] == ["ddcolor_modelscope", "ddcolor_artistic", "ddcolor_paper", "ddcolor_paper_tiny"]
    assert required["precision"][0] == ["auto", "fp16", "bf16", "fp32"] and required["train"][0] == ["all", "decoder", "lora"]
    assert {k: required["size"][1][k] for k in ("default", "step")} == {"default": 256, "step": 32}
    for name, declaration in required.items():
        assert len(declaration[1]["tooltip"]) > 20, name
