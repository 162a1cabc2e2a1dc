"""Fine-tuning: ddcolor/finetune/ (trainer, data, losses, report, distributed) and ``python -m ddcolor finetune``.

CPU only, the "small" calibrated checkpoint, 64 x 64 crops, a few steps; the
perceptual loss is off except in its own test, which uses stand-in VGG
weights (random, of torchvision's layout) in a temporary TORCH_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ddcolor
from ddcolor.checkpoint import read_state_dict
from ddcolor.cli import main
from ddcolor.cli.finetune import photos_from_files
from ddcolor.color import lab_to_rgb
from ddcolor.finetune import trainable
from ddcolor.finetune.config import FinetuneConfig
from ddcolor.finetune.data import Batch, hold_out, photos_from_images, prepare
from ddcolor.finetune.distributed import Distributed
from ddcolor.finetune.losses import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PERCEPTUAL_LAYERS,
    PERCEPTUAL_WEIGHT,
    VGG16_BN_URL,
    Discriminator,
    PaperLosses,
    PerceptualLoss,
    PerceptualWeightsMissing,
    load_vgg16_bn_features,
    perceptual_vgg,
    vgg16_bn_features,
    vgg16_bn_weights_path,
    vgg_layer_indices,
)
from ddcolor.finetune.trainer import FinetuneError, Trainer, finetune
from ddcolor.precision import autocast
from tests.calibrated import BOUNDARY_RECIPES
from tests.support import calibrated_checkpoint, interrupt, started, wait_for_stderr

REPO = Path(__file__).resolve().parent.parent
SIZE = 64


def color_scenes(count: int, height: int = SIZE, width: int = SIZE, seed: int = 0) -> torch.Tensor:
    """(B, H, W, 3) color images whose colors follow their lightness (the same rule in every
    image, so there is something to learn): smooth random lightness, ab a fixed function of it."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 4, 4, generator=generator)
    lightness = 25 + 55 * torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    a = 45 * torch.cos(lightness / 12)
    b = 45 * torch.sin(lightness / 17)
    return lab_to_rgb(torch.cat((lightness, a, b), dim=1)).permute(0, 2, 3, 1).contiguous()


def config(tmp_path: Path, checkpoint: Path, **overrides) -> FinetuneConfig:
    settings = dict(output=tmp_path / "out" / "tuned.pth", model=str(checkpoint), steps=4, batch=2, size=SIZE, lr=1e-3,
                    precision="fp32", perceptual=False, val_every=0, save_every=0)
    settings.update(overrides)
    return FinetuneConfig(**settings)


def make_trainer(checkpoint: Path, precision: str, **overrides) -> Trainer:
    settings = FinetuneConfig(output=Path("unused.pth"), **overrides)
    model = trainable.trainable_model(read_state_dict(checkpoint), train=settings.train)
    losses = PaperLosses(perceptual=False, gan=settings.gan, autocast=lambda: autocast(precision, torch.device("cpu")))
    return Trainer(model, losses, settings, precision, torch.device("cpu"), Distributed())


def training_batch(count: int = 2, seed: int = 3) -> Batch:
    return Batch.from_rgb(color_scenes(count, seed=seed).permute(0, 3, 1, 2), "cpu")


def parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.module.named_parameters()}


# ----------------------------------------------------------------------------- the loop


def test_loss_falls_on_a_small_set(tmp_path, small_checkpoint):
    # Two 64x64 photos, both in every batch: the fit to them must improve clearly.
    result = finetune(config(tmp_path, small_checkpoint, steps=30), color_scenes(2))
    losses = result.loss_history["loss"]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert set(result.loss_history) == {"loss", "pix", "col"}
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert result.checkpoint.is_file() and result.skipped_steps == 0 and not result.stopped


def test_one_mixed_precision_step_matches_one_fp32_step(small_checkpoint):
    batch = training_batch()
    # A loss scale these gradients (up to ~60) fit in: a larger one skips this step (the next test).
    reference, mixed = make_trainer(small_checkpoint, "fp32"), make_trainer(small_checkpoint, "fp16", initial_loss_scale=2.0**8)
    terms_32, skipped_32 = reference.step(batch)
    terms_16, skipped_16 = mixed.step(batch)
    assert not skipped_32 and not skipped_16
    for name in terms_32:  # fp16 keeps ~3 decimal digits; the loss is a mean over many of them
        assert float(terms_16[name]) == pytest.approx(float(terms_32[name]), rel=2e-2), name
    # The FP32 master gradients (unscaled) point the same way and have the same size. Not
    # element by element: this checkpoint's gradients are chaotic (in FP32, an input changed
    # by 1e-4 turns them to cosine 0.995 and changes their size by 18%); fp16 measured
    # cosine 0.9994 and size ratio 1.03. A scale left in would be a ratio of 256.
    grads_32 = torch.cat([p.grad.flatten() for p in reference.parameters if p.grad is not None])
    grads_16 = torch.cat([p.grad.flatten() for p in mixed.parameters if p.grad is not None])
    assert float(torch.nn.functional.cosine_similarity(grads_16, grads_32, dim=0)) > 0.98
    assert 0.8 < float(grads_16.norm() / grads_32.norm()) < 1.25
    assert all(p.dtype == torch.float32 for p in mixed.parameters)
    assert all(s.dtype == torch.float32 for state in mixed.optimizer.state.values() for s in state.values() if s.is_floating_point())


def test_an_overflowing_fp16_step_is_skipped_the_scale_lowered_and_counted(tmp_path, small_checkpoint):
    # Scaled by 2^40, the gradients leave fp16's range (65504) in the backward pass.
    trainer = make_trainer(small_checkpoint, "fp16", initial_loss_scale=2.0**40)
    before = parameters(trainer)
    terms, skipped = trainer.step(training_batch())
    assert skipped and torch.isfinite(terms["loss"])
    assert trainer.loss_scale == 2.0**39
    assert all(torch.equal(before[name], p) for name, p in trainer.module.named_parameters())

    result = finetune(config(tmp_path, small_checkpoint, steps=2, precision="fp16", initial_loss_scale=2.0**40), color_scenes(2))
    assert result.skipped_steps == 2
    records = [json.loads(line) for line in result.files.log.read_text().splitlines()]
    assert [(r["skipped"], r["loss_scale"]) for r in records if "loss" in r] == [(True, 2.0**39), (True, 2.0**38)]


def test_an_fp16_forward_that_overflows_is_measured_and_run_again():
    """The units are measured on the first fp16 batch; should a later batch (or weights grown in
    training) overflow, the step is measured again, those units join, and it runs again."""
    trainer = make_trainer(calibrated_checkpoint("small", stress="ffn"), "fp16", initial_loss_scale=2.0**8)
    trainer.half_range_measured = True  # as if the first batch had put nothing out of range
    terms, _ = trainer.step(training_batch())
    assert torch.isfinite(terms["loss"]) and trainer.module.fp32_units
    # A snapshot carries them: the resumed run computes as the interrupted one did.
    resumed = make_trainer(calibrated_checkpoint("small", stress="ffn"), "fp16")
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.module.fp32_units == trainer.module.fp32_units and resumed.half_range_measured


# Each boundary recipe puts some tensor past fp16's range; the trainer keeps those units in FP32.
# GradScaler starts at 2^16 and halves the scale at each skipped step (it grows back only after
# 2000 good steps), so the skips are the scale's way down to where the gradients fit: 3 in 24 steps
# for the calibrated checkpoint, 3 to 9 for these. A range problem it cannot solve skips every step.
@pytest.mark.slow
@pytest.mark.parametrize("recipe", [*BOUNDARY_RECIPES, "overflow"])
def test_fp16_training_of_stress_checkpoints_stays_finite_and_rarely_skips(recipe):
    trainer = make_trainer(calibrated_checkpoint("small", stress=recipe), "fp16", lr=1e-4)
    skipped = []
    for step in range(24):
        terms, was_skipped = trainer.step(training_batch(seed=step))
        assert all(torch.isfinite(value) for value in terms.values()), (step, terms)
        skipped.append(was_skipped)
    assert sum(skipped) <= 12, skipped
    assert trainer.loss_scale == 2.0 ** (16 - sum(skipped)) >= 2.0**4  # every step skipped: 2^-8
    assert all(torch.isfinite(p).all() for p in trainer.parameters)


@pytest.mark.slow
def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path, small_checkpoint):
    # With --gan, so the discriminator and its optimizer travel in the snapshot too; a
    # validation in between must not disturb the sequence.
    images = color_scenes(5, height=80, width=96)  # crops and flips are random
    settings = dict(steps=6, gan=True, val_every=2)
    whole = finetune(config(tmp_path / "whole", small_checkpoint, **settings), images)

    asked = []
    stopped = finetune(config(tmp_path / "parts", small_checkpoint, **settings), images,
                       should_stop=lambda: asked.append(1) or len(asked) > 3)
    assert stopped.stopped and stopped.steps_done == 3 and stopped.checkpoint is None
    assert stopped.files.snapshot.is_file() and not stopped.files.checkpoint.exists()
    resumed = finetune(config(tmp_path / "parts", small_checkpoint, resume=True, **settings), images)

    assert not resumed.stopped and not resumed.files.snapshot.exists()
    assert set(whole.loss_history) == {"loss", "pix", "col", "adv", "d"}
    for name, values in whole.loss_history.items():
        assert np.allclose(resumed.loss_history[name], values, rtol=1e-5, atol=1e-6), name
    assert [v["step"] for v in resumed.validations] == [0, 2, 4, 6]
    first, second = read_state_dict(whole.checkpoint), read_state_dict(resumed.checkpoint)
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k], second[k], rtol=1e-5, atol=1e-6) for k in first)
    # The log was rewritten from the snapshot, then continued: each step once.
    steps = [json.loads(line)["step"] for line in resumed.files.log.read_text().splitlines() if "loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- refusals before any work


@pytest.mark.parametrize(
    "overrides, images, message",
    [
        (dict(size=48), "color", "--size 48: use a multiple of 32"),
        (dict(steps=0), "color", "--steps 0"),
        (dict(batch=0), "color", "--batch 0"),
        (dict(output="tuned.ckpt"), "color", ".pth or .safetensors"),
        (dict(gan=True, size=32), "color", "--gan needs crops of at least 64"),
        (dict(), "gray", "no color photos to train on (3 grayscale"),
        (dict(resume=True), "color", "--resume: no snapshot"),
        (dict(perceptual=True), "color", VGG16_BN_URL),
    ],
)
def test_bad_requests_fail_clearly_before_any_work(tmp_path, monkeypatch, overrides, images, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    batch = color_scenes(3) if images == "color" else color_scenes(3).mean(dim=-1, keepdim=True).expand(-1, -1, -1, 3)
    # A start model that does not exist: reaching it would be a CheckpointError, not this.
    settings = config(tmp_path, tmp_path / "no_such_model.pth", **overrides)
    if "output" in overrides:
        settings.output = tmp_path / overrides["output"]
    with pytest.raises(FinetuneError) as error:
        finetune(settings, batch)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_an_unfinished_run_is_not_overwritten_without_resume(tmp_path, small_checkpoint):
    settings = config(tmp_path, small_checkpoint)
    settings.files().snapshot.parent.mkdir(parents=True)
    settings.files().snapshot.write_bytes(b"an earlier run's snapshot")
    with pytest.raises(FinetuneError, match="holds an unfinished run; pass --resume"):
        finetune(settings, color_scenes(2))
    settings.resume = True
    with pytest.raises(FinetuneError, match="cannot be read"):
        finetune(settings, color_scenes(2))


# ----------------------------------------------------------------------------- data


def test_gray_and_unreadable_files_are_skipped_and_counted(tmp_path):
    color = (color_scenes(2, height=70, width=90).numpy() * 255).astype(np.uint8)
    Image.fromarray(color[0]).save(tmp_path / "color.jpg", quality=95)
    Image.fromarray(color[1]).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(color[0].mean(axis=-1).astype(np.uint8)).save(tmp_path / "gray_l.png")
    Image.fromarray(np.repeat(color[1].mean(axis=-1, keepdims=True), 3, axis=-1).astype(np.uint8)).save(tmp_path / "gray_rgb.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "color.jpg").read_bytes()[:200])
    photos, skipped = prepare(photos_from_files([str(tmp_path)]), SIZE)

    assert photos.names == [str(tmp_path / "color.jpg"), str(tmp_path / "palette.png")]
    assert all(image.shape == (3, SIZE, 82) and image.dtype == torch.uint8 for image in photos.images)  # short side 64
    reasons = {Path(item.name).name: item.reason for item in skipped}
    assert reasons.keys() == {"gray_l.png", "gray_rgb.jpg", "truncated.jpg"}
    assert reasons["gray_l.png"].startswith("grayscale") and reasons["gray_rgb.jpg"].startswith("grayscale")
    assert reasons["truncated.jpg"].startswith("cannot read") and [item.unreadable for item in skipped].count(True) == 1


def test_comfyui_images_come_as_a_batch_or_a_list_of_any_sizes():
    batch = color_scenes(2, height=70, width=90)
    single = color_scenes(1, height=100, width=64, seed=1)[0]  # (H, W, C)
    photos, skipped = prepare(photos_from_images([batch, single]), SIZE)
    assert photos.names == ["image 1", "image 2", "image 3"] and not skipped
    assert [tuple(image.shape) for image in photos.images] == [(3, SIZE, 82), (3, SIZE, 82), (3, 100, SIZE)]
    assert len(prepare(photos_from_images(batch), SIZE)[0]) == 2


def test_the_held_out_share_is_fixed_by_the_seed():
    assert hold_out(40, seed=1) == hold_out(40, seed=1)
    train, val = hold_out(40, seed=1)
    assert len(val) == 4 and sorted(train + val) == list(range(40))
    assert hold_out(40, seed=2)[1] != val
    assert hold_out(1, seed=1) == ([0], [])


# ----------------------------------------------------------------------------- perceptual loss


def test_perceptual_loss_reads_vgg16_bn_from_torchs_cache_or_says_where_to_put_it(tmp_path, monkeypatch, small_checkpoint):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth"
    assert vgg16_bn_weights_path() == expected
    with pytest.raises(PerceptualWeightsMissing) as missing:
        load_vgg16_bn_features()
    assert VGG16_BN_URL in str(missing.value) and str(expected) in str(missing.value) and "--no-perceptual" in str(missing.value)

    # Stand-in weights of torchvision's layout (random: this tests loading, not quality).
    torch.manual_seed(0)
    stand_in = {f"features.{k}": v for k, v in vgg16_bn_features(44).state_dict().items()}
    stand_in["classifier.0.weight"] = torch.zeros(4, 4)
    expected.parent.mkdir(parents=True)
    torch.save(stand_in, expected)
    features = load_vgg16_bn_features()
    assert all(torch.equal(v, stand_in[f"features.{k}"]) for k, v in features.state_dict().items())
    assert not any(p.requires_grad for p in features.parameters())

    loss = PerceptualLoss(features)
    truth = color_scenes(2).permute(0, 3, 1, 2)
    prediction = truth.flip(1).clone().requires_grad_(True)
    assert float(loss(truth, truth)) == 0
    value = loss(prediction, truth)
    value.backward()
    assert value > 0 and prediction.grad.abs().sum() > 0

    # In a run, under mixed precision: the term is logged with the others.
    result = finetune(config(tmp_path, small_checkpoint, steps=2, perceptual=True, precision="bf16"), color_scenes(2))
    assert set(result.loss_history) == {"loss", "pix", "per", "col"}
    assert np.isfinite(result.loss_history["per"]).all() and min(result.loss_history["per"]) > 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_perceptual_loss_is_the_papers_sum_and_checkpointing_keeps_its_gradient(precision):
    torch.manual_seed(0)
    features = perceptual_vgg()  # untrained: this tests the computation, not the weights
    truth = color_scenes(2, height=64, width=64).permute(0, 3, 1, 2)
    prediction = (truth.flip(1) * 0.8 + 0.1).requires_grad_(True)
    half = lambda: autocast(precision, torch.device("cpu"))  # noqa: E731

    def literal(x):  # each layer's output, read off the whole network; compared in FP32 copies
        x, taps = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), {}
        with half():
            for index, layer in enumerate(features):
                x = layer(x)
                taps[index] = x.float()
        return taps

    indices = vgg_layer_indices()
    ours, theirs = literal(prediction), literal(truth)
    expected = PERCEPTUAL_WEIGHT * sum(w * F.l1_loss(ours[indices[name]], theirs[indices[name]]) for name, w in PERCEPTUAL_LAYERS.items())
    (expected_grad,) = torch.autograd.grad(expected, prediction)
    # bf16: the differences are rounded to bf16 (each by at most 2^-8; the mean measured 3e-6), their signs exact.
    tolerance = 1e-5 if precision == "fp32" else 1e-4
    for checkpointing in (False, True):
        value = PerceptualLoss(features, autocast=half, checkpointing=checkpointing)(prediction, truth)
        (grad,) = torch.autograd.grad(value, prediction)
        assert torch.allclose(value, expected, rtol=tolerance)
        assert torch.allclose(grad, expected_grad, rtol=10 * tolerance, atol=1e-6 * expected_grad.abs().max())


def test_the_discriminator_is_the_authors_patch_critic():
    critic = Discriminator()
    assert critic(torch.rand(2, 3, 256, 256)).shape == (2, 13 * 13)  # one logit per patch, as the original at 256
    assert critic(torch.rand(1, 3, Discriminator.MIN_SIZE, Discriminator.MIN_SIZE)).shape == (1, 1)
    attention = [name for name, module in critic.named_modules() if type(module).__name__ == "SelfAttention"]
    assert attention == ["layers.2.2"]  # after the first strided block, only there


def test_our_vgg16_bn_layers_have_torchvisions_names_and_shapes():
    vgg = pytest.importorskip("torchvision.models.vgg")
    theirs = vgg.make_layers(vgg.cfgs["D"], batch_norm=True).state_dict()  # vgg16_bn().features
    ours = vgg16_bn_features(44).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


# ----------------------------------------------------------------------------- the command line


def write_photos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(color_scenes(count, height=72, width=88)):
        Image.fromarray((image.numpy() * 255).astype(np.uint8)).save(folder / f"photo_{i}.png")
    return folder


def test_cli_writes_a_checkpoint_that_loads_strictly_and_its_reports(tmp_path, small_checkpoint, capsys):
    photos = write_photos(tmp_path / "photos", 4)
    Image.new("L", (80, 80), 128).save(photos / "gray.png")
    output = tmp_path / "models" / "mine.pth"
    code = main(["finetune", str(photos), "-o", str(output), "--model", str(small_checkpoint), "--steps", "3", "--batch", "2",
                 "--size", str(SIZE), "--no-perceptual", "--val-every", "2", "--device", "cpu", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "left out 1 photo(s): 1 grayscale" in err and "validation at step 2" in err and "best" in err

    model = ddcolor.load_model(output)  # strict: every key of the published layout, nothing else
    assert model.config == ddcolor.load_model(small_checkpoint).config
    records = [json.loads(line) for line in (tmp_path / "models" / "mine_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "validation" in r] == [0, 2, 3]
    for picture in ("mine_validation.png", "mine_loss.png"):
        with Image.open(tmp_path / "models" / picture) as image:
            assert image.format == "PNG" and image.width >= 400

    # A usage mistake: exit 2, a message naming the option, nothing written.
    code = main(["finetune", str(photos), "-o", str(tmp_path / "other.pth"), "--size", "100"])
    assert code == 2 and "--size 100: use a multiple of 32" in capsys.readouterr().err
    assert not list(tmp_path.glob("other*"))


def test_ctrl_c_stops_at_the_next_step_and_keeps_a_snapshot(tmp_path, small_checkpoint):
    photos = write_photos(tmp_path / "photos", 3)
    output = tmp_path / "mine.pth"
    command = [sys.executable, "-m", "ddcolor", "finetune", photos, "-o", output, "--model", small_checkpoint,
               "--steps", "1000", "--batch", "1", "--size", SIZE, "--no-perceptual", "--val-every", "0", "--device", "cpu",
               "--precision", "fp32"]
    with started(command, env={**os.environ, "OMP_NUM_THREADS": "1"}) as process:
        wait_for_stderr(process, b"[step ", timeout=120)  # training is under way
        _, stderr = interrupt(process, timeout=120)
    assert process.returncode == 130, stderr
    assert "stopping after this step" in stderr and "(continue with --resume)" in stderr
    assert (tmp_path / "mine_snapshot.pt").is_file() and not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_command_line_and_colorize_do_not_import_the_training_code():
    probe = ("import sys; from ddcolor.cli.commands import build_parser; build_parser(); "
             "print(sorted(m for m in sys.modules if m.startswith('ddcolor.finetune.') and m != 'ddcolor.finetune.config' "
             "and m != 'ddcolor.finetune.files'))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- data parallel


# A process of a data-parallel run: the process group meets through a file (torchrun's
# MASTER_ADDR/PORT store would listen on every interface), then the command runs as under torchrun.
RANK_PROCESS = """
import os, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method=sys.argv[1], rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
from ddcolor.cli import main
from ddcolor.cli.finetune import photos_from_files
code = main(sys.argv[2:])
dist.destroy_process_group()
raise SystemExit(code)
"""


def run_two_processes(tmp_path: Path, arguments: list[str], rendezvous: str) -> list[tuple[str, str]]:
    """Run the command in two gloo processes; their (stdout, stderr). Stops exactly what it started."""
    command = [sys.executable, "-c", RANK_PROCESS, f"file://{tmp_path / rendezvous}", *arguments]
    with ExitStack() as stack:
        processes = []
        for rank in range(2):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo",
                   "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
            processes.append(stack.enter_context(started(command, env=env, text=True)))
        outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    assert "2 processes" in outputs[0][1] and "fine-tuning" not in outputs[1][1]  # rank 1 stays quiet
    return outputs


def assert_same_training(start_path: Path, reference_path: Path, other_path: Path) -> None:
    start, reference, other = (read_state_dict(path) for path in (start_path, reference_path, other_path))
    assert reference.keys() == other.keys()
    # Compared over the whole update, not element by element: Adam moves a weight by about
    # the learning rate whatever its gradient's size, so the attention key biases (whose
    # gradient is 0 up to rounding: softmax ignores them) step by +-lr at random in both
    # runs. Measured: the updates differ by 1.6% of their size (0.18% without those biases);
    # processes that did not average their gradients would differ by tens of percent.
    keys = [k for k in reference if reference[k].is_floating_point()]
    update = torch.cat([(reference[k] - start[k]).flatten() for k in keys])
    difference = torch.cat([(other[k] - reference[k]).flatten() for k in keys])
    assert update.norm() > 0.05  # training moved the weights
    assert float(difference.norm() / update.norm()) < 0.05
    # And the two models colorize alike: measured 0.04% of how far training moved the colors.
    photos = color_scenes(3, 96, 96, seed=5)
    colors = [ddcolor.colorize(ddcolor.load_model(path), photos, size=SIZE) for path in (start_path, reference_path, other_path)]
    assert float((colors[2] - colors[1]).abs().max()) < 0.01 * float((colors[1] - colors[0]).abs().max())


@pytest.mark.slow
def test_two_gloo_processes_train_and_resume_as_one(tmp_path, small_checkpoint, capsys):
    photos = write_photos(tmp_path / "photos", 5)
    common = ["finetune", str(photos), "--model", str(small_checkpoint), "--steps", "4", "--batch", "2",
              "--size", str(SIZE), "--no-perceptual", "--val-every", "0", "--device", "cpu", "--precision", "fp32"]
    assert main([*common, "-o", str(tmp_path / "one.pth")]) == 0

    run_two_processes(tmp_path, [*common, "-o", str(tmp_path / "two.pth")], "rendezvous_1")
    assert_same_training(small_checkpoint, tmp_path / "one.pth", tmp_path / "two.pth")

    # A snapshot of one process, continued by two: each reads it, and rank 0 finishes the run.
    settings = config(tmp_path, small_checkpoint, output=tmp_path / "resumed.pth", steps=4, lr=1e-4, val_every=0)
    asked = []
    assert finetune(settings, photos_from_files([str(photos)]), should_stop=lambda: asked.append(1) or len(asked) > 2).steps_done == 2
    outputs = run_two_processes(tmp_path, [*common, "-o", str(tmp_path / "resumed.pth"), "--resume"], "rendezvous_2")
    assert "resumed at step 2 of 4" in outputs[0][1]
    assert not (tmp_path / "resumed_snapshot.pt").exists()
    assert_same_training(small_checkpoint, tmp_path / "one.pth", tmp_path / "resumed.pth")
