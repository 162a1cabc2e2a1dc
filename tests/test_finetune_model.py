"""The model side of fine-tuning: a trainable DDColor that computes what inference
computes, trains what it is told to, keeps pinned computations FP32 under autocast,
and exports a checkpoint every DDColor loader reads."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ddcolor.precision
from ddcolor import load_model
from ddcolor.checkpoint import IGNORED_KEYS, read_state_dict
from ddcolor.color import gray_rgb_from_lightness, rgb_to_lab
from ddcolor.finetune import autocast, published_state_dict, save_checkpoint, trainable, trainable_model, trainable_parameters
from ddcolor.finetune.trainable import LowRankDelta, compute_in_fp32, half_range_units
from ddcolor.finetune.trainer import set_training
from ddcolor.precision import training_precision
from tests.calibrated import BOUNDARY_RECIPES, STREAM_RECIPES, STRESS_RECIPES, calibration_images
from tests.oracle import original_model, relative_difference
from tests.support import calibrated_checkpoint

TRAIN_CHOICES = ["all", "decoder", "lora"]


@pytest.fixture(scope="module")
def small_state(small_checkpoint):
    return read_state_dict(small_checkpoint)


def fresh(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` to build a model from: the model takes the tensors it is given and trains them."""
    return {k: v.clone() for k, v in state.items()}


def color_pair(size: int = 64, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth colorful scene as (gray RGB input, true ab)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    rgb = torch.stack([x, y * (1 - x), (1 - y) * 0.8 + 0.2 * torch.sin(6 * x)]).clamp(0, 1)
    lab = rgb_to_lab(rgb[None].expand(batch, -1, -1, -1).contiguous())
    return gray_rgb_from_lightness(lab[:, :1]), lab[:, 1:]


def l1_steps(model, gray, ab, steps: int, lr: float) -> list[float]:
    """``steps`` AdamW steps on the L1 loss; the loss before each."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr)
    losses = []
    for _ in range(steps):
        loss = (model(gray) - ab).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def eval_output(model, x):
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    return out


# ----------------------------------------------------------------------------- the same network


@pytest.mark.parametrize("train", TRAIN_CHOICES)
def test_in_eval_mode_it_computes_what_the_inference_model_computes(small_checkpoint, small_state, train):
    gray = calibration_images(64, count=2, seed=3)
    expected = load_model(small_checkpoint)(gray)
    model = trainable_model(fresh(small_state), train=train)
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert relative_difference(expected, eval_output(model, gray)) < 1e-4


def test_the_autograd_path_computes_what_the_inference_path_computes(small_state):
    """With autograd recording, the ConvNeXt blocks skip their in-place bands and
    attention its in-place softmax; the result must not change."""
    model = trainable_model(fresh(small_state)).eval()
    gray = calibration_images(64, count=1, seed=4)
    with torch.no_grad():
        lean = model(gray)
    recorded = model(gray)
    assert recorded.requires_grad
    assert relative_difference(lean, recorded.detach()) < 1e-5


@pytest.mark.parametrize("train", ["all", "lora"])
def test_a_model_in_training_can_be_copied(small_state, train):
    """E.g. for an average of the weights, or to keep the start model."""
    model = trainable_model(fresh(small_state), train=train, rank=2)
    gray, ab = color_pair()
    l1_steps(model, gray, ab, steps=1, lr=1e-3)
    copy = deepcopy(model)
    assert torch.equal(eval_output(copy, gray), eval_output(model, gray))


@pytest.mark.parametrize("train", TRAIN_CHOICES)
def test_its_own_state_dict_restores_it_exactly(small_state, train):
    """What a resumable snapshot needs: adapters, spectral vectors and BatchNorm statistics included."""
    gray, ab = color_pair()
    model = trainable_model(fresh(small_state), train=train, rank=2)
    l1_steps(model, gray, ab, steps=2, lr=1e-3)
    restored = trainable_model(fresh(small_state), train=train, rank=2)
    restored.load_state_dict(model.state_dict())
    assert l1_steps(restored, gray, ab, steps=2, lr=1e-3) == l1_steps(model, gray, ab, steps=2, lr=1e-3)


def test_loading_takes_the_state_dicts_tensors_without_a_copy(small_checkpoint):
    """So the weights are never held twice (a state dict read from the file, then the model's copy)."""
    state = read_state_dict(small_checkpoint)
    model = trainable_model(state)
    own = {name: tensor for name, tensor in model.state_dict().items()}
    assert all(own[k].data_ptr() == state[k].data_ptr() for k in own if k in state and state[k].is_floating_point())


# ----------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("train", TRAIN_CHOICES)
def test_gradients_reach_exactly_the_trainable_parameters(small_state, train):
    model = trainable_model(fresh(small_state), train=train, rank=4)
    gray, ab = color_pair()
    (model(gray) - ab).abs().mean().backward()
    trainable = {id(p) for p in trainable_parameters(model)}
    names = {n: p for n, p in model.named_parameters()}
    assert trainable
    for name, p in names.items():
        if id(p) in trainable:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    adapters = {n for n in names if ".parametrizations." in n and not n.endswith(".original")}
    if train == "lora":
        assert adapters == {n for n, p in names.items() if id(p) in trainable}
        # up starts at zero, so only its gradient is nonzero at step 0.
        assert all(names[n].grad.abs().sum() > 0 for n in adapters if n.endswith(".up"))
    else:
        assert not adapters
        assert all(p.grad.abs().sum() > 0 for n, p in names.items() if id(p) in trainable), train
    # The classifier-side norm is loaded but never run: it cannot train.
    encoder = {n: p for n, p in names.items() if n.startswith("encoder.") and not n.startswith("encoder.arch.norm.")}
    encoder_trains = {p.requires_grad for n, p in encoder.items() if train != "lora" or n in adapters}
    assert encoder_trains == ({False} if train == "decoder" else {True})


@pytest.mark.parametrize("train", TRAIN_CHOICES)
def test_a_few_steps_lower_the_l1_loss(small_state, train):
    torch.manual_seed(0)
    model = trainable_model(fresh(small_state), train=train, rank=4)
    gray, ab = color_pair()
    losses = l1_steps(model, gray, ab, steps=6, lr=3e-3)
    assert losses[-1] < 0.95 * losses[0], losses


def test_decoder_training_leaves_the_encoder_as_loaded(small_state):
    model = trainable_model(fresh(small_state), train="decoder")
    gray, ab = color_pair()
    l1_steps(model, gray, ab, steps=2, lr=1e-3)
    exported = published_state_dict(model)
    encoder = [k for k in small_state if k.startswith("encoder.")]
    assert encoder and all(torch.equal(exported[k], small_state[k]) for k in encoder)
    assert any(not torch.equal(exported[k], small_state[k]) for k in small_state if k.startswith("decoder."))


def test_lora_starts_as_the_base_model_and_merges_exactly(small_checkpoint, small_state, tmp_path):
    torch.manual_seed(0)
    model = trainable_model(fresh(small_state), train="lora", rank=4)
    gray, ab = color_pair()
    # Zero-initialised adapters: the base model's output up to summation order (1.1e-6 with one thread).
    assert relative_difference(load_model(small_checkpoint)(gray), eval_output(model, gray)) < 1e-5
    l1_steps(model, gray, ab, steps=3, lr=3e-3)
    unmerged = eval_output(model, gray)
    merged = load_model(save_checkpoint(model, tmp_path / "lora.pth"))(gray)
    assert relative_difference(unmerged, merged) < 1e-4
    # Only the adapted weights changed; frozen BatchNorm statistics and spectral vectors did not.
    exported = published_state_dict(model)
    adapted = {f"{n.split('.parametrizations.')[0]}.{n.split('.parametrizations.')[1].split('.')[0]}"
               for n, _ in model.named_parameters() if n.endswith(".original")}
    assert adapted and all(not torch.equal(exported[k], small_state[k]) for k in adapted)
    assert all(torch.equal(exported[k], small_state[k]) for k in small_state if k not in adapted)


def test_lora_adapters_have_the_rank_asked_for(small_state):
    model = trainable_model(fresh(small_state), train="lora", rank=3)
    adapters = [m for m in model.modules() if isinstance(m, LowRankDelta)]
    blocks = sum(model.config.depths)
    # 2 per ConvNeXt block; per color-decoder layer: 2 attentions x (in, out) + 2 FFN; 3 embedding layers.
    assert len(adapters) == 2 * blocks + 6 * model.config.dec_layers + 3
    assert all(a.down.shape[0] == 3 and a.up.shape[1] == 3 for a in adapters)


def test_bad_choices_are_refused_clearly(small_state):
    with pytest.raises(ValueError, match="all, decoder, lora"):
        trainable_model(fresh(small_state), train="encoder")
    with pytest.raises(ValueError, match="rank"):
        trainable_model(fresh(small_state), train="lora", rank=0)


# ----------------------------------------------------------------------------- memory levers


def parameter_gradients(state, train: str, gray, ab, *, checkpointing: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = trainable_model(fresh(state), train=train, rank=4, checkpointing=checkpointing)
    (model(gray) - ab).abs().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("train", TRAIN_CHOICES)
def test_gradient_checkpointing_gives_the_same_gradients(small_state, train, monkeypatch):
    monkeypatch.setattr("ddcolor.model.GRAD_CHUNK_ELEMENTS", 1)  # the head recomputed in 16 chunks
    gray, ab = color_pair(batch=2)
    plain = parameter_gradients(small_state, train, gray, ab, checkpointing=False)
    recomputed = parameter_gradients(small_state, train, gray, ab, checkpointing=True)
    for name, grad in plain.items():
        assert torch.allclose(grad, recomputed[name], rtol=1e-4, atol=1e-6 * grad.abs().max()), name


# "all" is left out: the gradients of the encoder's tap norms, which feed train-mode BatchNorms, are
# rounding noise (1e-8 of the largest) and change with any summation order.
@pytest.mark.parametrize("train", ["decoder", "lora"])
def test_the_heads_chunks_do_not_change_the_gradients(small_state, train, monkeypatch):
    gray, ab = color_pair(batch=2)
    monkeypatch.setattr("ddcolor.model.GRAD_CHUNK_ELEMENTS", 1 << 30)
    whole = parameter_gradients(small_state, train, gray, ab, checkpointing=False)
    monkeypatch.setattr("ddcolor.model.GRAD_CHUNK_ELEMENTS", 1)  # one sub-pixel group per chunk
    chunked = parameter_gradients(small_state, train, gray, ab, checkpointing=False)
    for name, grad in whole.items():  # summed in another order: measured 2.8e-6 of each one's largest (Xeon)
        assert torch.allclose(grad, chunked[name], rtol=1e-4, atol=1e-5 * grad.abs().max()), name


def test_spectral_weights_are_formed_only_while_used(small_state):
    """The model keeps weight_orig, u and v; the normalized weight exists while its conv runs."""
    model = trainable_model(fresh(small_state), train="all", checkpointing=True)
    gray, ab = color_pair()
    formed = []
    spies = [model.get_submodule(name).register_forward_pre_hook(lambda conv, args: formed.append(conv.weight is not None))
             for name in model.spectral]
    l1_steps(model, gray, ab, steps=1, lr=1e-3)
    for spy in spies:
        spy.remove()
    assert formed and all(formed)
    assert all(model.get_submodule(name).weight is None for name in model.spectral)
    conv = model.get_submodule(model.spectral[0])
    with pytest.raises(RuntimeError):
        conv(torch.zeros(1, 1, 8, 8))  # wrong channels: the weight is dropped all the same
    assert conv.weight is None
    torch.save(model, io.BytesIO())  # hooks by name, not closures: the model pickles
    assert ddcolor.activation_bytes(model, 256) == ddcolor.activation_bytes(None, 256, element_size=4)


def test_power_iteration_runs_in_fp32_inside_a_training_forwards_autocast(small_state, monkeypatch):
    """CUDA autocast would run its matrix-vector products in half and write the rounded u and v back."""
    seen = []
    original = trainable._power_iteration
    monkeypatch.setattr(trainable, "_power_iteration", lambda *args: seen.append(torch.is_autocast_enabled("cpu")) or original(*args))
    model = trainable_model(fresh(small_state), train="all")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(color_pair()[0])
    assert seen == [False] * len(model.spectral)


# ----------------------------------------------------------------------------- mixed precision


class DtypeRecorder(TorchDispatchMode):
    """Every aten op of a forward: (innermost module, op name, float input dtypes)."""

    def __init__(self, model):
        super().__init__()
        self.ops: list[tuple[torch.nn.Module, str, tuple[torch.dtype, ...]]] = []
        self.stack = [model]
        self.handles = []
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(lambda m, args: self.stack.append(m)))
            self.handles.append(module.register_forward_hook(lambda m, args, out: self.stack.pop() and None))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = tuple(a.dtype for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor) and a.is_floating_point())
        self.ops.append((self.stack[-1], func.overloadpacket.__name__, dtypes))
        return func(*args, **(kwargs or {}))


CONVERSIONS = {"_to_copy", "copy_"}


def test_pinned_computations_stay_fp32_under_fp16_autocast(small_state):
    model = trainable_model(fresh(small_state))
    recorder = DtypeRecorder(model)
    # The ConvNeXt stream and its writers
    stream = {name: m for name, m in model.named_modules() if type(m).__name__ in ("FP32Conv2d", "Block")}
    outputs = {}
    for name, module in stream.items():
        module.register_forward_hook(lambda m, args, out, name=name: outputs.update({name: out.dtype}))
    gray = calibration_images(64, count=1)
    with autocast("fp16", "cpu"), recorder:
        ab = model(gray)
    fp32, half = torch.float32, torch.float16
    assert ab.dtype == fp32
    ran_half = {op for _, op, dtypes in recorder.ops if half in dtypes}
    assert {"convolution", "addmm", "bmm"} <= ran_half, "autocast should run the unpinned convs and matmuls in fp16"

    # Modules pinned by design (normalization, FP32 convs, layer scales) compute only in FP32.
    pinned = [m for m in model.modules() if getattr(m, "fp32_tensors", ()) and m is not model]
    for module, op, dtypes in recorder.ops:
        if any(module is p for p in pinned) and op not in CONVERSIONS:
            assert set(dtypes) <= {fp32}, (type(module).__name__, op, dtypes)
    for op in ("native_layer_norm", "native_batch_norm", "_softmax"):
        ran = [dtypes for _, o, dtypes in recorder.ops if o == op]
        assert ran and all(set(d) <= {fp32} for d in ran), op
    # The ConvNeXt stream and its writers are FP32.
    assert stream and all(outputs[name] == fp32 for name in stream)
    # Attention logits: the product just before each softmax.
    ops = [(op, dtypes) for _, op, dtypes in recorder.ops if op in ("bmm", "mm", "_softmax")]
    logits = [ops[i - 1] for i, (op, _) in enumerate(ops) if op == "_softmax"]
    assert logits and all(op == "bmm" and set(d) == {fp32} for op, d in logits)
    # The head: its mixing (the first product at the top level) and its image term (the last conv) are FP32.
    top = [(op, dtypes) for module, op, dtypes in recorder.ops if module is model]
    products = [d for op, d in top if op in ("mm", "bmm")]
    convs = [d for op, d in top if op == "convolution"]
    assert set(products[0]) == {fp32} and set(convs[-1]) == {fp32}
    assert any(half in d for d in convs[:-1]), "the head's sub-pixel conv runs in fp16"


def fp16_stress_loss(model: torch.nn.Module, width: int = 64) -> tuple[torch.Tensor, float]:
    """The L1 loss of ``model`` under fp16 autocast on a 64 x ``width`` image, with the units that
    would leave fp16's range computing in FP32 (as the trainer does), and the peak of its FP32 stream."""
    peaks = []
    hooks = [module.register_forward_hook(lambda m, args, out: peaks.append(out.detach().abs().max().item()))
             for module in model.encoder.modules() if type(module).__name__ == "Block"]
    gray, ab = (t[..., :width] for t in color_pair(size=64))
    compute_in_fp32(model, half_range_units(model, gray))
    with autocast("fp16", "cpu"):
        loss = (model(gray) - ab).abs().mean()
    for hook in hooks:
        hook.remove()
    return loss, max(peaks)


def stress_model(variant: str, recipe: str | None) -> torch.nn.Module:
    return trainable_model(read_state_dict(calibrated_checkpoint(variant, stress=recipe)))


ENCODER_RECIPES = [None, "blocks", *STREAM_RECIPES]


@pytest.mark.parametrize("recipe", [None, *BOUNDARY_RECIPES, "overflow"])
def test_fp16_training_keeps_units_that_would_leave_its_range_in_fp32(recipe):
    """The encoder's stream is FP32 by design; what a checkpoint's scales push past fp16 elsewhere
    (tests.calibrated.BOUNDARY_RECIPES, overflow) would make the loss non-finite: those units compute
    in FP32, the rest, the whole encoder included, stays in fp16. Nothing trained changes."""
    model = stress_model("small", recipe)
    set_training(model)  # BatchNorm statistics frozen, as the trainer runs it
    gray, ab = color_pair(size=64)
    with autocast("fp16", "cpu"):
        before = (model(gray) - ab).abs().mean()
    exported = published_state_dict(model)
    units = half_range_units(model, gray)
    compute_in_fp32(model, units)
    assert all(torch.equal(tensor, published_state_dict(model)[k]) for k, tensor in exported.items())
    with autocast("fp16", "cpu"):
        after = (model(gray) - ab).abs().mean()
    assert torch.isfinite(after)
    if recipe in ENCODER_RECIPES:
        assert units == [] and torch.isfinite(before)
    else:
        assert not torch.isfinite(before) and units and model.fp32_units == units
        assert all(unit == "head" or unit.startswith("decoder.") for unit in units), units


def test_units_computing_in_fp32_stay_so_in_a_copy():
    model = stress_model("small", "concat")
    gray, _ = color_pair(size=64)
    compute_in_fp32(model, half_range_units(model, gray))
    copy = deepcopy(model)
    block = copy.get_submodule(copy.fp32_units[0])
    assert copy.fp32_units == model.fp32_units and block.forward.__self__ is block
    with autocast("fp16", "cpu"):
        assert torch.isfinite(copy(gray)).all()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", STRESS_RECIPES)
def test_fp16_training_forward_of_stress_checkpoints_stays_finite(recipe):
    """DDColor-T: the stress checkpoints' FP32 activations exceed fp16's range; under autocast they must not overflow."""
    model = stress_model("tiny", recipe)
    loss, peak = fp16_stress_loss(model)
    if recipe in ENCODER_RECIPES:  # the stream is FP32 by design: nothing else need be
        assert peak > torch.finfo(torch.float16).max and model.fp32_units == []
    assert torch.isfinite(loss)


# The recipes differ in which forward writer carries the scale. PyTorch has no
# fast fp16 convolution backward on CPUs (seconds per decoder conv), so the
# backward runs for two of them (the largest layer scales, and the stem), on half
# the pixels; tests/test_finetune.py trains the others in fp16 on the small variant.
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["blocks", "stem"])
def test_fp16_training_backward_of_stress_checkpoints_stays_finite(recipe):
    model = stress_model("tiny", recipe)
    loss, _ = fp16_stress_loss(model, width=32)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainable_parameters(model))


def test_training_precision_auto_follows_the_device(monkeypatch, caplog):
    monkeypatch.setattr(ddcolor.precision, "cpu_bf16_units", lambda: "amx")
    assert training_precision("auto", "cpu") == "bf16"
    assert training_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(ddcolor.precision, "cpu_bf16_units", lambda: None)
    assert training_precision("auto", "cpu") == "fp32"
    with caplog.at_level(logging.WARNING, logger="ddcolor"):
        assert training_precision("bf16", "cpu") == "bf16"
        assert "emulated" in caplog.text
        assert training_precision("fp16", "cpu") == "fp16"
        assert "very slow" in caplog.text
    with pytest.raises(ValueError, match="auto, fp16, bf16, fp32"):
        training_precision("mixed", "cpu")


def test_explicit_bf16_training_on_a_gpu_that_emulates_it_warns(monkeypatch, caplog):
    # torch.cuda.is_bf16_supported() says yes on NVIDIA GPUs before Ampere, which only emulate bf16.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    for native in (True, False):
        monkeypatch.setattr(ddcolor.precision, "cuda_native_bf16", lambda device=None, native=native: native)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ddcolor"):
            assert training_precision("bf16", "cuda") == "bf16"
        assert ("Tesla T4" in caplog.text and "emulated" in caplog.text) is not native


def test_autocast_runs_half_only_when_asked():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        with autocast(precision, "cpu"):
            assert (a @ b).dtype == dtype


# ----------------------------------------------------------------------------- the checkpoint it writes


@pytest.mark.slow
def test_the_export_loads_strictly_everywhere_with_the_same_output(tiny_checkpoint, tmp_path):
    state = read_state_dict(tiny_checkpoint)
    model = trainable_model(fresh(state))
    gray, ab = color_pair(size=64)
    l1_steps(model, gray, ab, steps=1, lr=1e-3)
    exported = published_state_dict(model)
    assert set(exported) == set(state)  # head_cls included, as published
    assert all(v.dtype == state[k].dtype and v.device.type == "cpu" for k, v in exported.items())
    changed = [k for k in state if not torch.equal(exported[k], state[k])]
    assert any(k.endswith(".weight_orig") for k in changed) and any(k.endswith(".weight_u") for k in changed)

    expected = eval_output(model, gray)
    pth = save_checkpoint(model, tmp_path / "mine.pth")
    safetensors = save_checkpoint(exported, tmp_path / "mine.safetensors")
    assert set(torch.load(pth, weights_only=True)) == {"params"}
    for path in (pth, safetensors):
        assert relative_difference(expected, load_model(path)(gray)) < 1e-4, path.name
    with torch.no_grad():
        original = original_model(read_state_dict(pth))(gray)
    assert relative_difference(expected, original) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pth", "mine.safetensors"]


def test_an_interrupted_save_leaves_no_file(small_state, tmp_path, monkeypatch):
    model = trainable_model(fresh(small_state))
    target = tmp_path / "out.pth"

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, target)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"an older checkpoint")
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, target)
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"an older checkpoint"


def test_head_cls_is_kept_only_when_the_source_had_it(small_state):
    without = {k: v for k, v in small_state.items() if k not in IGNORED_KEYS}
    assert set(published_state_dict(trainable_model(fresh(without)))) == set(without)
    assert set(published_state_dict(trainable_model(fresh(small_state)))) == set(small_state)
    data_parallel = {f"module.{k}": v for k, v in small_state.items()}
    assert set(published_state_dict(trainable_model(fresh(data_parallel)))) == set(small_state)


def test_importing_ddcolor_does_not_import_training_code():
    code = "import sys, ddcolor; assert not any(m.startswith('ddcolor.finetune') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
