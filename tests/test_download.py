"""Downloading published checkpoints, against a loopback stand-in for the Hugging Face Hub."""

from __future__ import annotations

import hashlib

import pytest
import torch

import ddcolor
from ddcolor import checkpoint
from ddcolor import PUBLISHED, DownloadError, download
from tests.fake_hub import fake_hub

NAME = "ddcolor_paper_tiny"
PATH = f"/{PUBLISHED[NAME].repo_id}/resolve/main/{PUBLISHED[NAME].filename}"


@pytest.fixture
def payload(small_checkpoint) -> bytes:
    return small_checkpoint.read_bytes()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


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
    assert hub.ranges == [0, third, 2 * third]  # each retry asked only for the rest


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
        assert (tmp_path / ".ddcolor_paper_tiny.pth.part").stat().st_size == third

        monkeypatch.setattr(checkpoint, "_fetch", original_fetch)
        hub.unavailable = False
        path = download(NAME, tmp_path)
    assert path.read_bytes() == payload
    assert hub.ranges == [0, third]
    assert not (tmp_path / ".ddcolor_paper_tiny.pth.part").exists()


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
