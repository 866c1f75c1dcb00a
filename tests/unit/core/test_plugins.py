"""Plugin loading: duplicates, misspelt hooks, disabling, broken imports, strict factories."""

from __future__ import annotations

import sys
import types
from typing import Literal

import pytest
from fakes import FakeLossConfig, FakePlugin
from pydantic import ConfigDict

from kdkit import Factory, PluginConfig, hookimpl
from kdkit.errors import PluginError, UnknownPluginError
from kdkit.plugins import DISABLE_ENV, load_plugins


def test_name_offered_twice_names_both_plugins() -> None:
    with pytest.raises(PluginError) as info:
        load_plugins(entry_points=False, extra=[("first", FakePlugin()), ("second", FakePlugin())])
    assert str(info.value).startswith("teacher 'fake_teacher' is offered by two plugins: 'first' and 'second'")


def test_misspelt_hook_fails_at_load() -> None:
    class Misspelt:
        @hookimpl
        def kdkit_teacher(self):
            return {}

    with pytest.raises(PluginError, match=r"plugin 'oops' implements unknown hook 'kdkit_teacher'; did you mean 'kdkit_teachers'\?"):
        load_plugins(entry_points=False, extra=[("oops", Misspelt())])


def test_plugin_disabled_by_name_and_by_env(monkeypatch) -> None:
    loaded = load_plugins(entry_points=False, extra=[("fake", FakePlugin())], blocked=["fake"])
    assert loaded.registry.names("loss") == []
    assert [p.blocked for p in loaded.plugins] == [True]
    monkeypatch.setenv(DISABLE_ENV, "fake, other")
    assert load_plugins(entry_points=False, extra=[("fake", FakePlugin())]).registry.names("student") == []


def test_unknown_name_lists_known_and_closest(fake_registry) -> None:
    with pytest.raises(UnknownPluginError) as info:
        fake_registry.get("loss", "fake_los")
    assert str(info.value) == "unknown loss 'fake_los' (known: fake_loss); did you mean 'fake_loss'?"


def test_factory_whose_kind_differs_from_its_name_is_rejected() -> None:
    class Wrong:
        @hookimpl
        def kdkit_losses(self):
            return {"other_name": Factory(FakeLossConfig, lambda c, x: None)}

    with pytest.raises(PluginError, match="FakeLossConfig.kind defaults to 'fake_loss'; it must default to 'other_name'"):
        load_plugins(entry_points=False, extra=[("wrong", Wrong())])


def test_config_that_allows_extra_keys_is_rejected() -> None:
    class LooseConfig(PluginConfig):
        model_config = ConfigDict(extra="allow")
        kind: Literal["loose"] = "loose"

    class Loose:
        @hookimpl
        def kdkit_losses(self):
            return {"loose": Factory(LooseConfig, lambda c, x: None)}

    with pytest.raises(PluginError, match="must set extra='forbid'"):
        load_plugins(entry_points=False, extra=[("loose", Loose())])


def test_broken_plugin_is_recorded_and_others_still_load(monkeypatch, fake_registry) -> None:
    import importlib.metadata as md

    module = types.ModuleType("kdkit_test_good_plugin")
    module.plugin = FakePlugin()
    module.kdkit_losses = FakePlugin().kdkit_losses
    sys.modules["kdkit_test_good_plugin"] = module
    eps = [
        md.EntryPoint("broken", "kdkit_test_no_such_module", "kdkit"),
        md.EntryPoint("good", "kdkit_test_good_plugin", "kdkit"),
    ]
    monkeypatch.setattr(md, "entry_points", lambda group: eps if group == "kdkit" else [])
    try:
        loaded = load_plugins()
    finally:
        del sys.modules["kdkit_test_good_plugin"]
    status = {p.name: p.error for p in loaded.plugins}
    assert status["good"] is None
    assert status["broken"] == "ModuleNotFoundError: No module named 'kdkit_test_no_such_module'"
    assert loaded.registry.names("loss") == ["fake_loss"]
    with pytest.raises(UnknownPluginError, match="plugins that failed to load: broken"):
        loaded.registry.get("loss", "missing")
