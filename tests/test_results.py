import json

import pytest

from genlib import results


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_RESULTS", str(tmp_path))
    return tmp_path


def test_record_replaces_same_model_and_profile(registry):
    results.record("01_intro", "gaussian", {"fid": 30.0}, profile="smoke", params=10)
    results.record("01_intro", "gaussian", {"fid": 25.0}, profile="smoke")
    results.record("01_intro", "gaussian", {"fid": 20.0}, profile="cpu")
    results.record("01_intro", "pixel", {"bits_per_dim": 4.6}, profile="smoke", train_seconds=1.234)
    lines = (registry / "01_intro.jsonl").read_text().splitlines()
    assert len(lines) == 3
    entries = results.load("smoke")
    assert {e["model"]: e["metrics"] for e in entries} == {"gaussian": {"fid": 25.0}, "pixel": {"bits_per_dim": 4.6}}
    assert json.loads(lines[-1])["train_seconds"] == 1.23


def test_table_marks_missing_runs(registry):
    results.record("01_intro", "gaussian", {"fid": 25.0}, profile="smoke")
    table = results.table("smoke", expected=[("01_intro", "gaussian"), ("02_vae", "vae")])
    assert "| 01_intro | gaussian | – | 25 |" in table
    assert "| 02_vae | vae | missing" in table


def test_table_keeps_only_the_chapters_asked_for(registry):
    results.record("01_intro", "gaussian", {"fid": 25.0}, profile="smoke")
    results.record("02_vae", "vae", {"fid": 40.0}, profile="smoke")
    assert "01_intro" not in results.table("smoke", chapters="02_vae")
    assert "| 02_vae | vae |" in results.table("smoke", chapters=["02_vae"])
    assert "01_intro" in results.table("smoke")


def test_record_refuses_what_was_not_measured(registry):
    with pytest.raises(ValueError, match="finite"):
        results.record("01_intro", "x", {"fid": float("nan")})
    with pytest.raises(ValueError, match="number"):
        results.record("01_intro", "x", {"fid": "good"})
    with pytest.raises(ValueError, match="non-empty"):
        results.record("", "x", {})


def test_publish_then_published_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLIB_RESULTS", str(tmp_path / "registry"))
    results.record("02_vae", "vae", {"fid": 41.0}, profile="cpu")
    path = results.publish(tmp_path / "site", commit="abc123")
    payload = results.published(str(path))
    assert payload["commit"] == "abc123" and payload["entries"][0]["metrics"]["fid"] == 41.0
    assert results.published(str(tmp_path / "missing.json")) is None  # offline or absent: None, not an error


def test_markdown_table_renders_as_markdown():
    text = results.markdown_table(["model", "FID"], [["VAE", "41.0"], ["GAN", None]])
    assert text._repr_markdown_().splitlines() == ["| model | FID |", "|---|---|", "| VAE | 41.0 |", "| GAN | – |"]
    with pytest.raises(ValueError, match="2 columns"):
        results.markdown_table(["model", "FID"], [["VAE"]])
