"""Shipped recipes (list, copy with the extends chain or resolved, run by name) and plugins whose
optional extra is missing (listed as unavailable with the pip line, refused at build with it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from kdkit import BuildContext, cli
from kdkit.catalog import RecipeNotFoundError, copy_recipe, find_recipe, recipes_root, shipped_recipes
from kdkit.errors import KdkitError, PluginError
from kdkit.recipe.loading import load_with_extends

REPO_RECIPES = Path(__file__).resolve().parents[3] / "recipes"


def test_every_recipe_file_of_the_repository_is_shipped() -> None:
    shipped = {p.relative_to(recipes_root()).as_posix() for p in recipes_root().rglob("*.yaml")}
    assert shipped == {p.relative_to(REPO_RECIPES).as_posix() for p in REPO_RECIPES.rglob("*.yaml")}
    names = shipped_recipes()
    assert "tiny/timm_two_teachers" in names and "hawaii/hawaii_7b" in names
    assert not [n for n in names if "/_" in n or n.startswith("_")]  # parts like tiny/hawaii/_tiny_llava are no recipes
    # a twin without its own description shows the one it inherits
    assert names["tiny/hawaii/hawaii_7b"].description == names["hawaii/hawaii_7b"].description != ""


def test_list_prints_names_and_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["recipes", "list"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == len(shipped_recipes())
    assert any(line.startswith("tiny/timm_two_teachers ") and line.endswith("(engine tests and demos).") for line in lines)
    assert f"({len(lines)} recipes in " in err


def test_copy_keeps_the_extends_chain_resolvable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["recipes", "copy", "tiny/hawaii/hawaii_7b", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'tiny/hawaii/hawaii_7b.yaml'} (+ 4 files it extends)")
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml"))
    assert written == ["baselines/llava15_7b.yaml", "hawaii/hawaii_7b.yaml", "tiny/hawaii/_tiny_llava.yaml",
                       "tiny/hawaii/_tiny_teachers.yaml", "tiny/hawaii/hawaii_7b.yaml"]
    copied = load_with_extends(tmp_path / "tiny/hawaii/hawaii_7b.yaml")
    assert copied == load_with_extends(recipes_root() / "tiny/hawaii/hawaii_7b.yaml")
    with pytest.raises(KdkitError, match=r"tiny/hawaii/hawaii_7b.yaml, .* exists already; choose another destination or pass --force"):
        copy_recipe("tiny/hawaii/hawaii_7b", tmp_path)
    assert copy_recipe("tiny/hawaii/hawaii_7b", tmp_path, force=True)[0] == tmp_path / "tiny/hawaii/hawaii_7b.yaml"


def test_copy_resolve_writes_one_merged_file(tmp_path: Path) -> None:
    (target,) = copy_recipe("demo/hawaii", tmp_path, resolve=True)
    assert target == tmp_path / "hawaii.yaml"
    text = target.read_text()
    assert text.startswith("# Mini-HAWAII demo, row 4 = HAWAII")  # the shipped recipe's opening comment is kept
    data = yaml.safe_load(text)
    assert "extends" not in data
    assert data == load_with_extends(recipes_root() / "demo/hawaii.yaml")


def test_run_takes_a_file_or_a_shipped_name(tmp_path: Path) -> None:
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\n")
    assert find_recipe(own) == own
    assert find_recipe("tiny/timm_two_teachers") == recipes_root() / "tiny/timm_two_teachers.yaml"
    assert find_recipe("recipes/tiny/timm_two_teachers.yaml") in {Path("recipes/tiny/timm_two_teachers.yaml"),
                                                                 recipes_root() / "tiny/timm_two_teachers.yaml"}
    with pytest.raises(RecipeNotFoundError, match=r"^recipe file not found: tiny/timm_two_teacher, and no shipped "
                       r"recipe is called 'tiny/timm_two_teacher'; did you mean 'tiny/timm_two_teachers'\? "
                       r"\(`kdkit recipes list` shows the \d+\)$"):
        find_recipe("tiny/timm_two_teacher")


def test_copy_without_destination_is_one_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["recipes", "copy", "demo/hawaii"]) == 1
    assert capsys.readouterr().err == ("error: kdkit recipes copy needs NAME and DEST (e.g. kdkit recipes copy "
                                       "tiny/timm_two_teachers my_recipes)\n")


@pytest.fixture
def without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))


def test_a_plugin_whose_extra_is_missing_is_listed_with_the_pip_line(without_sklearn, capsys) -> None:
    assert cli.main(["plugins"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  digits ")]
    assert line.endswith('unavailable: needs sklearn (pip install "kdkit[digits]")')


def test_building_it_names_the_extra(without_sklearn, registry, tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"""^data 'digits' needs sklearn, which is not installed: pip install "kdkit\[digits\]"$"""):
        registry.build("data", {"kind": "digits"}, BuildContext(name="digits", data_root=tmp_path))


def test_installed_extras_leave_the_plugin_available(registry) -> None:
    assert registry.factory("data", "digits").missing == ()  # scikit-learn is part of the test environment
