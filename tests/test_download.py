"""Downloading published checkpoints, against loopback stand-ins for Hugging Face and ModelScope."""

from __future__ import annotations

import hashlib

import pytest
import torch

import ddcolor
from ddcolor import checkpoint
from ddcolor import PUBLISHED, DownloadError, download
from tests.fake_hub import fake_hub, modelscope_files, refused_endpoint

NAME = "ddcolor_paper_tiny"
PATH = f"/{PUBLISHED[NAME].repo_id}/resolve/main/{PUBLISHED[NAME].filename}"
# The one checkpoint ModelScope has, where its file API serves it.
ON_BOTH = "ddcolor_modelscope"
HF_PATH = "/piddnad/DDColor-models/resolve/main/ddcolor_modelscope.pth"
MS_MODEL, MS_FILE = "damo/cv_ddcolor_image-colorization", "pytorch_model.pt"
MS_PATH = f"/api/v1/models/{MS_MODEL}/repo?Revision=master&FilePath={MS_FILE}"


@pytest.fixture
def payload(small_checkpoint) -> bytes:
    return small_checkpoint.read_bytes()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("DDCOLOR_SOURCE", raising=False)
    monkeypatch.delenv("MODELSCOPE_DOMAIN", raising=False)
    # Never the real ModelScope: a test that reaches it by fallback finds nobody there.
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", refused_endpoint())


def test_published_name_downloads_once_then_loads(payload, tmp_path, monkeypatch):
    progress = []
    with fake_hub({PATH: payload}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        path = download(NAME, tmp_path, progress=lambda done, total: progress.append((done, total)))
        assert path == tmp_path / "ddcolor_paper_tiny.pth" and path.read_bytes() == payload
        assert progress[-1] == (len(payload), len(payload))
        requests = len(hub.requests)
        model = ddcolor.load_model(NAME, models_dir=tmp_path)  # already there: no request
        assert len(hub.requests) == requests
    assert model.config.num_queries == 10


def test_dropped_connections_resume_within_one_call(payload, tmp_path, monkeypatch):
    third = len(payload) // 3 + 1
    with fake_hub({PATH: payload}, drops=2, drop_after=third) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        path = download(NAME, tmp_path)
    assert path.read_bytes() == payload
    assert hub.ranges(PATH) == [0, third, 2 * third]  # each retry asked only for the rest


def test_a_failed_download_resumes_in_the_next_run(payload, tmp_path, monkeypatch):
    third = len(payload) // 3 + 1
    with fake_hub({PATH: payload}, drops=1, drop_after=third) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        original_fetch = checkpoint._fetch

        def server_goes_down_after_the_drop(*args):
            def cut(done, total):
                hub.unavailable = hub.unavailable or done >= third

            return original_fetch(*args[:4], cut)

        monkeypatch.setattr(checkpoint, "_fetch", server_goes_down_after_the_drop)
        with pytest.raises(DownloadError, match="by hand"):
            download(NAME, tmp_path)
        assert not (tmp_path / "ddcolor_paper_tiny.pth").exists()  # never a half file under the real name
        assert (tmp_path / ".ddcolor_paper_tiny.pth.huggingface.part").stat().st_size == third

        monkeypatch.setattr(checkpoint, "_fetch", original_fetch)
        hub.unavailable = False
        path = download(NAME, tmp_path)
    assert path.read_bytes() == payload
    assert hub.ranges(PATH) == [0, third]
    assert not (tmp_path / ".ddcolor_paper_tiny.pth.huggingface.part").exists()


def test_corrupted_transfer_is_caught_by_the_sha256_etag(payload, tmp_path, monkeypatch):
    with fake_hub({PATH: payload}) as hub:
        hub.etag = '"' + hashlib.sha256(b"something else").hexdigest() + '"'
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DownloadError, match="SHA-256 mismatch"):
            download(NAME, tmp_path)
        assert not any(tmp_path.iterdir())
        hub.etag = '"' + hashlib.sha256(payload).hexdigest() + '"'
        assert download(NAME, tmp_path).read_bytes() == payload


def test_offline_mode_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(DownloadError) as error:
        ddcolor.load_model(NAME, models_dir=tmp_path)
    message = str(error.value)
    assert "https://huggingface.co/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth" in message
    assert str(tmp_path / "ddcolor_paper_tiny.pth") in message and "HF_HUB_OFFLINE" in message


def test_offline_mode_uses_a_file_already_there(payload, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "ddcolor_paper_tiny.pth").write_bytes(payload)
    assert isinstance(ddcolor.load_model(NAME, models_dir=tmp_path), torch.nn.Module)


def test_missing_file_on_the_server_is_reported_with_the_url(tmp_path, monkeypatch):
    with fake_hub({}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(DownloadError, match=f"{hub.endpoint}/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth"):
            download(NAME, tmp_path)


def test_unknown_names_list_the_published_ones(tmp_path):
    with pytest.raises(ddcolor.CheckpointError, match="ddcolor_modelscope, ddcolor_artistic"):
        download("ddcolor_huge", tmp_path)


# ----------------------------------------------------------------------------- a second source: ModelScope


@pytest.mark.parametrize("failure", ["refused", "503"])
def test_falls_back_to_modelscope_when_hugging_face_cannot_be_reached(failure, payload, tmp_path, monkeypatch, caplog):
    with fake_hub({HF_PATH: b"never sent"}) as hf, fake_hub(modelscope_files(MS_MODEL, MS_FILE, payload)) as ms:
        hf.unavailable = True  # answers HEAD, then 503 for the file
        monkeypatch.setenv("HF_ENDPOINT", refused_endpoint() if failure == "refused" else hf.endpoint)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        progress = []
        path = download(ON_BOTH, tmp_path, progress=lambda done, total: progress.append((done, total)))
    assert path == tmp_path / "ddcolor_modelscope.pth" and path.read_bytes() == payload
    assert progress[-1] == (len(payload), len(payload))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddcolor_modelscope.pth"]
    assert "Hugging Face cannot be reached" in caplog.text and ms.endpoint + MS_PATH in caplog.text
    assert isinstance(ddcolor.load_model(ON_BOTH, models_dir=tmp_path), torch.nn.Module)


def test_a_file_missing_on_hugging_face_is_reported_not_passed_over(payload, tmp_path, monkeypatch):
    """A 404 says the name is wrong (or a mirror lacks the file): the other source would only hide it."""
    with fake_hub({}) as hf, fake_hub(modelscope_files(MS_MODEL, MS_FILE, payload)) as ms:
        monkeypatch.setenv("HF_ENDPOINT", hf.endpoint)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        with pytest.raises(DownloadError, match=f"from Hugging Face .*404.*{hf.endpoint}{HF_PATH}"):
            download(ON_BOTH, tmp_path)
    assert ms.requests == []


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_a_source_can_be_chosen(how, payload, tmp_path, monkeypatch):
    with fake_hub({HF_PATH: b"x" * 1000}) as hf, fake_hub(modelscope_files(MS_MODEL, MS_FILE, payload)) as ms:
        monkeypatch.setenv("HF_ENDPOINT", hf.endpoint)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        if how == "environment":
            monkeypatch.setenv("DDCOLOR_SOURCE", "modelscope")
            path = download(ON_BOTH, tmp_path)
        else:
            monkeypatch.setenv("DDCOLOR_SOURCE", "huggingface")  # the argument wins
            path = download(ON_BOTH, tmp_path, source="modelscope")
        assert path.read_bytes() == payload and hf.requests == []
        assert PUBLISHED[ON_BOTH].url("modelscope") == ms.endpoint + MS_PATH

        path.unlink()
        ms.requests.clear()
        assert download(ON_BOTH, tmp_path, source="huggingface").read_bytes() == b"x" * 1000
        assert ms.requests == []


def test_a_bad_source_name_says_which_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCOLOR_SOURCE", "github")
    with pytest.raises(DownloadError, match="DDCOLOR_SOURCE='github'.*huggingface, modelscope or auto"):
        download(NAME, tmp_path)


def test_modelscope_alone_says_which_models_it_has_not(tmp_path, monkeypatch):
    monkeypatch.setenv("DDCOLOR_SOURCE", "modelscope")
    with pytest.raises(DownloadError) as error:
        download(NAME, tmp_path)
    message = str(error.value)
    assert "ModelScope has no copy of ddcolor_paper_tiny" in message
    assert "DDCOLOR_SOURCE" in message and "HF_ENDPOINT" in message
    assert "https://huggingface.co/piddnad/DDColor-models/resolve/main/ddcolor_paper_tiny.pth" in message


def test_both_sources_down_names_both_and_the_mirror_variables(tmp_path, monkeypatch):
    hf, ms = refused_endpoint(), refused_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", hf)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms)
    with pytest.raises(DownloadError) as error:
        download(ON_BOTH, tmp_path)
    message = str(error.value)
    assert f"Hugging Face cannot be reached ({hf}{HF_PATH}" in message
    assert f"ModelScope cannot be reached ({ms}{MS_PATH}" in message
    for variable in ("HF_ENDPOINT", "MODELSCOPE_ENDPOINT", "DDCOLOR_SOURCE"):
        assert variable in message
    assert f"save it as {tmp_path / 'ddcolor_modelscope.pth'}" in message
    assert list(tmp_path.iterdir()) == []


def test_modelscope_transfers_resume_and_are_verified(payload, tmp_path, monkeypatch):
    third = len(payload) // 3 + 1
    files = modelscope_files(MS_MODEL, MS_FILE, payload)
    monkeypatch.setenv("DDCOLOR_SOURCE", "modelscope")
    with fake_hub(files, drops=1, drop_after=third) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        assert download(ON_BOTH, tmp_path).read_bytes() == payload
    assert ms.ranges(MS_PATH) == [0, third]  # the retry asked only for the rest

    (tmp_path / "ddcolor_modelscope.pth").unlink()
    corrupted = modelscope_files(MS_MODEL, MS_FILE, payload, sha256=hashlib.sha256(b"other").hexdigest())
    with fake_hub(corrupted) as ms:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        with pytest.raises(DownloadError, match="SHA-256 mismatch"):
            download(ON_BOTH, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_partial_file_of_one_source_is_not_resumed_from_the_other(payload, tmp_path, monkeypatch):
    """Each source keeps its own partial file: their bytes may differ, so mixing them would corrupt."""
    half = len(payload) // 2
    (tmp_path / ".ddcolor_modelscope.pth.huggingface.part").write_bytes(b"h" * half)
    with fake_hub(modelscope_files(MS_MODEL, MS_FILE, payload)) as ms:
        monkeypatch.setenv("HF_ENDPOINT", refused_endpoint())
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms.endpoint)
        assert download(ON_BOTH, tmp_path).read_bytes() == payload
    assert ms.ranges(MS_PATH) == [0]
    # Hugging Face's part stays for a later run that reaches it.
    assert (tmp_path / ".ddcolor_modelscope.pth.huggingface.part").stat().st_size == half


def test_modelscope_domain_of_the_modelscope_library_is_honoured(monkeypatch):
    monkeypatch.delenv("MODELSCOPE_ENDPOINT")
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "www.modelscope.ai")
    assert PUBLISHED[ON_BOTH].url("modelscope").startswith("https://www.modelscope.ai/api/v1/models/")
