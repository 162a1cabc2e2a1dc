"""``python -m ddcolor``: colorize, download, info (queue: test_comfy_client.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ddcolor
from ddcolor.cli import main
from tests.fake_hub import fake_hub, modelscope_files, refused_endpoint
from tests.support import colorfulness, interrupt, photo, started, wait_for_stderr

REPO = Path(__file__).resolve().parent.parent


def file_colorfulness(path: Path) -> float:
    """The colorfulness of an image file: 0 for gray."""
    with Image.open(path) as image:
        return colorfulness(np.asarray(image.convert("RGB")))


def run(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of three small gray photos."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(photo(seed=i)).save(folder / f"p{i}.png")
    return folder


# ----------------------------------------------------------------------------- colorize


def test_every_mode_is_colorized_with_its_size_and_alpha(tmp_path, small_checkpoint, capsys):
    folder = tmp_path / "modes"
    folder.mkdir()
    gray = Image.fromarray(photo())
    gray.convert("1").save(folder / "bilevel.png")
    gray.save(folder / "gray.jpg")
    gray.convert("P").save(folder / "palette.gif")
    gray.convert("CMYK").save(folder / "cmyk.jpg")
    gray.convert("RGB").save(folder / "rgb.tif")
    Image.fromarray(photo().astype(np.uint16) * 257).save(folder / "deep16.png")
    rgba = gray.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(96, dtype=np.uint8) * 2, (64, 1))))
    rgba.save(folder / "rgba.png")
    rotated = Image.fromarray(photo(width=80, height=48))
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed turned 90 degrees: 48x80
    rotated.save(folder / "rotated.jpg", exif=exif)

    assert run("colorize", folder, "-o", tmp_path / "out", "--model", small_checkpoint, "--size", 128) == 0

    outputs = {p.name: p for p in (tmp_path / "out").iterdir()}
    expected = {f"{name}_color.png" for name in ("bilevel", "gray", "palette", "cmyk", "rgb", "deep16", "rgba", "rotated")}
    assert set(outputs) == expected
    for name, path in outputs.items():
        with Image.open(path) as image:
            size = (48, 80) if name.startswith("rotated") else (96, 64)
            assert image.size == size, name
            assert image.mode == ("RGBA" if name.startswith("rgba") else "RGB"), name
        assert file_colorfulness(path) > 2.0, f"{name} came out gray"
    with Image.open(outputs["rgba_color.png"]) as image:
        np.testing.assert_array_equal(np.asarray(image)[..., 3], np.asarray(rgba)[..., 3])
    assert "colorized 8, skipped 0, failed 0" in capsys.readouterr().out


def test_scans_are_colorized_band_by_band_as_whole_images_would_be(tmp_path, small_checkpoint, monkeypatch):
    """A 16-bit gray and an RGBA scan of odd sizes, cut into bands of one row: the
    8-bit outputs are the whole-image results rounded, and only they are left."""
    import torch

    from tests.oracle import whole_image_colorize

    monkeypatch.setattr(ddcolor.pipeline, "BAND_PIXELS", 97)
    rng = np.random.default_rng(0)
    scans = {"deep": photo(width=75, height=53).astype(np.uint16) * 257 + rng.integers(0, 257, (53, 75), dtype=np.uint16)}
    scans["rgba"] = np.dstack([np.repeat(photo(width=67, height=41)[..., None], 3, axis=-1), rng.integers(0, 256, (41, 67), dtype=np.uint8)])
    (tmp_path / "in").mkdir()
    for name, pixels in scans.items():
        Image.fromarray(pixels).save(tmp_path / "in" / f"{name}.png")

    assert run("colorize", tmp_path / "in", "-o", tmp_path / "out", "--model", small_checkpoint, "--size", 64, "--precision", "fp32") == 0

    model = ddcolor.load_model(small_checkpoint, precision="fp32")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["deep_color.png", "rgba_color.png"]
    for name, pixels in scans.items():
        pixels = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1))[None]
        expected = (whole_image_colorize(model, pixels, 64)[0] * 255 + 0.5).to(torch.uint8).numpy().astype(int)
        with Image.open(tmp_path / "out" / f"{name}_color.png") as image:
            assert np.abs(np.asarray(image).astype(int) - expected).max() <= 1, name


def test_real_photos(tmp_path, small_checkpoint, fixture_photos):
    assert run("colorize", *fixture_photos, "-o", tmp_path, "--model", small_checkpoint, "--size", 128) == 0
    for source in fixture_photos:
        with Image.open(source) as original, Image.open(tmp_path / f"{source.stem}_color.png") as result:
            assert result.size == original.size
        assert file_colorfulness(tmp_path / f"{source.stem}_color.png") > 2.0


def test_an_unreadable_file_mid_batch_is_reported_and_the_batch_goes_on(photos, tmp_path, small_checkpoint, capsys):
    (photos / "p1.png").write_bytes(b"not a png at all")
    code = run("colorize", photos, "-o", tmp_path / "out", "--model", small_checkpoint, "--size", 64)
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0_color.png", "p2_color.png"]
    captured = capsys.readouterr()
    assert "colorized 2, skipped 0, failed 1" in captured.out
    assert f"failed: {photos / 'p1.png'}: not an image format Pillow can read" in captured.out
    assert "failed:" in captured.err  # reported as it happens, too


def test_existing_outputs_need_a_decision(photos, tmp_path, small_checkpoint, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1_color.png").write_bytes(b"earlier result")
    common = ["colorize", photos, "-o", out, "--model", small_checkpoint, "--size", 64]

    assert run(*common) == 2
    assert "--skip-existing" in capsys.readouterr().err and not (out / "p0_color.png").exists()

    assert run(*common, "--skip-existing") == 0
    assert (out / "p1_color.png").read_bytes() == b"earlier result"
    assert "colorized 2, skipped 1, failed 0" in capsys.readouterr().out

    assert run(*common, "--overwrite") == 0
    with Image.open(out / "p1_color.png") as image:
        assert image.size == (96, 64)


def test_outputs_beside_inputs_with_suffix_and_never_over_an_input(photos, small_checkpoint, capsys):
    assert run("colorize", photos / "p0.png", "--model", small_checkpoint, "--size", 64, "--suffix=-c") == 0
    assert (photos / "p0-c.png").is_file()
    before = (photos / "p2.png").read_bytes()
    assert run("colorize", photos / "p2.png", "--model", small_checkpoint, "--suffix", "", "--overwrite") == 1
    assert (photos / "p2.png").read_bytes() == before
    assert "would replace the input" in capsys.readouterr().out


def test_running_again_beside_the_inputs_resumes_without_colorizing_results(photos, small_checkpoint, capsys):
    assert run("colorize", photos, "--model", small_checkpoint, "--size", 64) == 0
    assert sorted(p.name for p in photos.iterdir()) == ["p0.png", "p0_color.png", "p1.png", "p1_color.png", "p2.png", "p2_color.png"]
    capsys.readouterr()
    assert run("colorize", photos, "--model", small_checkpoint, "--size", 64, "--skip-existing") == 0
    assert "colorized 0, skipped 3, failed 0" in capsys.readouterr().out
    assert not list(photos.glob("*_color_color*"))


def test_globs_recursive_folders_and_missing_inputs(tmp_path, small_checkpoint, capsys):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(photo()).save(tmp_path / "in" / "a.png")
    Image.fromarray(photo()).save(tmp_path / "in" / "b.jpg")
    Image.fromarray(photo()).save(tmp_path / "in" / "sub" / "c.png")
    common = ["--model", small_checkpoint, "--size", 64]

    assert run("colorize", str(tmp_path / "in" / "*.png"), "-o", tmp_path / "glob", *common) == 0
    assert [p.name for p in (tmp_path / "glob").iterdir()] == ["a_color.png"]

    assert run("colorize", tmp_path / "in", "-r", "-o", tmp_path / "tree", *common) == 0
    found = sorted(str(p.relative_to(tmp_path / "tree")) for p in (tmp_path / "tree").rglob("*.png"))
    assert found == ["a_color.png", "b_color.png", "sub/c_color.png"]

    assert run("colorize", tmp_path / "nope.png", *common) == 2
    assert "nope.png: no such file or folder" in capsys.readouterr().err
    assert run("colorize", str(tmp_path / "*.tif"), *common) == 2
    assert "no files match" in capsys.readouterr().err


def test_jpeg_output_with_quality_and_alpha_stays_png(tmp_path, small_checkpoint, capsys):
    Image.fromarray(photo()).save(tmp_path / "plain.png")
    Image.fromarray(photo()).convert("LA").save(tmp_path / "alpha.png")
    code = run("colorize", tmp_path / "plain.png", tmp_path / "alpha.png", "-o", tmp_path / "out",
               "--model", small_checkpoint, "--size", 64, "--format", "jpg", "--quality", 40)
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alpha_color.png", "plain_color.jpg"]
    with Image.open(tmp_path / "out" / "plain_color.jpg") as image:
        assert image.format == "JPEG"
    assert "keep its alpha channel" in capsys.readouterr().out
    assert run("colorize", tmp_path / "plain.png", "--model", small_checkpoint, "--quality", 0) == 2


@pytest.mark.parametrize("options, size", [([], 512), (["--preset", "person"], 640), (["--preset", "building"], 1024), (["--size", "320"], 320)])
def test_size_and_presets_and_one_model_load_per_run(photos, tmp_path, small_checkpoint, monkeypatch, options, size):
    loads, sizes = [], []
    real_load = ddcolor.load_model

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    def recording_colorize(model, images, *, size, dtype):
        sizes.append(size)
        return images.expand(-1, -1, -1, 3).to(dtype)

    monkeypatch.setattr(ddcolor, "load_model", counting_load)
    monkeypatch.setattr(ddcolor, "colorize", recording_colorize)
    assert run("colorize", photos, "-o", tmp_path / "out", "--model", small_checkpoint, *options) == 0
    assert len(loads) == 1
    assert sizes == [size] * 3


def test_size_and_preset_exclude_each_other(photos, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("colorize", photos, "--size", "512", "--preset", "person")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_bad_model_is_reported_before_any_work(photos, tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"")
    assert run("colorize", photos, "-o", tmp_path / "out", "--model", broken) == 1
    assert f"{broken} is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_a_usage_error(photos, capsys):
    assert run("colorize", photos, "--device", "tpu") == 2
    assert "--device tpu" in capsys.readouterr().err


def test_an_interrupted_write_leaves_no_file(photos, tmp_path, small_checkpoint, monkeypatch, capsys):
    """Ctrl-C arriving while an output is written: nothing half-written appears."""
    real_save = Image.Image.save
    saves = []

    def interrupted_save(self, fp, *args, **kwargs):
        saves.append(fp)
        if len(saves) == 2:
            fp.write(b"\x89PNG partial")
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    code = run("colorize", photos, "-o", tmp_path / "out", "--model", small_checkpoint, "--size", 64)
    assert code == 130
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["p0_color.png"]  # the first is complete, the second never appeared
    with Image.open(tmp_path / "out" / "p0_color.png") as image:
        image.load()
    assert "interrupted" in capsys.readouterr().out


def test_ctrl_c_stops_after_the_current_image(tmp_path, small_checkpoint):
    """SIGINT to a real process mid-batch: it finishes the image under way, writes it
    whole, reports, and exits 130; the rest is not started."""
    folder = tmp_path / "in"
    folder.mkdir()
    count = 8
    for i in range(count):
        Image.fromarray(photo(320, 240, seed=i)).save(folder / f"p{i}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ddcolor", "colorize", folder, "-o", out, "--model", small_checkpoint]
    with started(command) as process:
        wait_for_stderr(process, b"[1/", timeout=60)  # the first image is done: the batch is under way
        stdout, stderr = interrupt(process, timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping after the current image" in stderr
    written = sorted(out.iterdir())
    assert 1 <= len(written) < count
    assert not [p for p in written if not p.name.endswith("_color.png")]  # no temporaries left
    for path in written:
        with Image.open(path) as image:
            image.load()  # complete files only
    assert f"colorized {len(written)}, skipped 0, failed 0" in stdout
    assert f"interrupted: {count - len(written)} image(s) not started" in stdout


# ----------------------------------------------------------------------------- download / info


def test_download_fetches_into_the_models_folder_and_skips_present_ones(tmp_path, monkeypatch, capsys):
    payload = os.urandom(200_000)
    with fake_hub({"/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth": payload}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        assert run("download", "ddcolor_paper_tiny", "--models-dir", tmp_path) == 0
        assert (tmp_path / "ddcolor_paper_tiny.pth").read_bytes() == payload
        assert "GET /piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth" in hub.requests
        assert "ddcolor_paper_tiny: saved" in capsys.readouterr().out

        hub.requests.clear()
        assert run("download", "ddcolor_paper_tiny", "--models-dir", tmp_path) == 0
        assert "already present" in capsys.readouterr().out and hub.requests == []


def test_colorize_downloads_the_default_model_on_first_use(photos, tmp_path, small_checkpoint, monkeypatch, capsys):
    """The README's first command: no model anywhere yet, `colorize photo` fetches it and runs."""
    models = tmp_path / "models"
    with fake_hub({"/piddnad/DDColor-models/resolve/main/ddcolor_modelscope.pth": small_checkpoint.read_bytes()}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("DDCOLOR_MODELS_DIR", str(models))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        assert run("colorize", photos / "p0.png", "--size", 64) == 0
    assert (models / "ddcolor_modelscope.pth").read_bytes() == small_checkpoint.read_bytes()
    assert file_colorfulness(photos / "p0_color.png") > 2.0
    assert "ddcolor_modelscope: first use, downloading" in capsys.readouterr().err


def test_download_failures_name_the_url_and_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run("download", "ddcolor_artistic", "--models-dir", tmp_path) == 1
    err = capsys.readouterr().err
    assert "ddcolor_artistic.pth" in err and str(tmp_path) in err and "by hand" in err
    assert run("download", "ddcolor_nope", "--models-dir", tmp_path) == 2
    assert "choose from" in capsys.readouterr().err


def test_download_from_a_chosen_source_and_info_says_where_downloads_come_from(tmp_path, monkeypatch, capsys):
    payload = os.urandom(200_000)
    files = modelscope_files("damo/cv_ddcolor_image-colorization", "pytorch_model.pt", payload)
    with fake_hub(files) as ms:
        monkeypatch.setenv("HF_ENDPOINT", refused_endpoint())
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("DDCOLOR_SOURCE", raising=False)
        assert run("download", "ddcolor_modelscope", "--source", "modelscope", "--models-dir", tmp_path) == 0
    assert (tmp_path / "ddcolor_modelscope.pth").read_bytes() == payload
    assert f"downloading {ms.endpoint}/api/v1/models/damo/cv_ddcolor_image-colorization/repo?" in capsys.readouterr().out

    assert run("info") == 0
    downloads = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("downloads:"))
    assert downloads.index("Hugging Face") < downloads.index("ModelScope at " + ms.endpoint)
    assert "has ddcolor_modelscope only" in downloads and "DDCOLOR_SOURCE" in downloads


def test_info_lists_devices_precisions_and_present_models(tmp_path, monkeypatch, capsys):
    from ddcolor.precision import fast_precisions

    monkeypatch.setenv("DDCOLOR_MODELS_DIR", str(tmp_path))
    (tmp_path / "ddcolor_paper_tiny.pth").write_bytes(b"x" * 2**20)
    (tmp_path / "my_finetune.safetensors").write_bytes(b"x")
    assert run("info") == 0
    out = capsys.readouterr().out
    assert f"models folder: {tmp_path} ($DDCOLOR_MODELS_DIR)" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ddcolor_")}
    assert "present, 1 MiB" in lines["ddcolor_paper_tiny"]
    assert "missing: python -m ddcolor download ddcolor_modelscope" in lines["ddcolor_modelscope"]
    assert "my_finetune.safetensors" in out
    assert f"cpu: precisions {', '.join(fast_precisions('cpu'))}" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "ddcolor", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("colorize", "download", "info", "queue"):
        assert command in result.stdout
