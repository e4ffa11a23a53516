import pytest

from genlib import profiles


def test_pick_follows_env(monkeypatch):
    for name, expected in [("smoke", 1), ("cpu", 2), ("full", 3), ("CPU", 2)]:
        monkeypatch.setenv("GENLIB_PROFILE", name)
        assert profiles.pick(smoke=1, cpu=2, full=3) == expected


def test_explicit_profile_wins(monkeypatch):
    monkeypatch.setenv("GENLIB_PROFILE", "smoke")
    assert profiles.pick(smoke=1, cpu=2, full=3, profile="full") == 3


def test_default_depends_on_gpu(monkeypatch):
    monkeypatch.delenv("GENLIB_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "gpu_available", lambda: False)
    assert profiles.active() == "cpu"
    monkeypatch.setattr(profiles, "gpu_available", lambda: True)
    assert profiles.active() == "full"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GENLIB_PROFILE", "fast")
    with pytest.raises(ValueError, match="smoke, cpu, full"):
        profiles.active()
    with pytest.raises(ValueError, match="unknown profile"):
        profiles.pick(smoke=1, cpu=2, full=3, profile="laptop")


def test_describe_names_the_profile(monkeypatch):
    monkeypatch.setenv("GENLIB_PROFILE", "smoke")
    assert "smoke" in profiles.describe()
