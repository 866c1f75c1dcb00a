"""Recipe loading and validation: every problem at once, with paths; extends; overrides."""

from __future__ import annotations

import pytest
import yaml
from fakes import GOOD_RECIPE

from kdkit.errors import RecipeError
from kdkit.recipe import dump_recipe, load_recipe, recipe_dict


def problems(excinfo) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


def write(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_recipe_validates_and_attaches_plugin_configs(good_recipe, fake_registry) -> None:
    recipe = load_recipe(good_recipe, registry=fake_registry)
    assert recipe.name == "good"
    assert recipe.teachers["eva02"].config.checkpoint == "eva.safetensors"
    assert [a.config.hidden for a in recipe.teachers["eva02"].align] == [64, 32]
    assert recipe.losses["fine"].weight == 0.5
    assert recipe.student.config.width == 16


def test_every_problem_reported_at_once_with_paths(tmp_path, fake_registry) -> None:
    bad = (
        GOOD_RECIPE.replace("hidden: 32", "hiden: 32")
        .replace("kind: fake_teacher", "kind: fake_teachr")
        .replace("global_size: 8", "global_size: 7")
        .replace("lr: 1.0e-3", "lr: fast")
        .replace("width: 16", "width: wide")
        + "runtme: {}\n"
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, bad), registry=fake_registry)
    assert problems(info) == [
        "student.width: Input should be a valid integer, unable to parse string as an integer",
        "teachers.eva02.kind: unknown teacher 'fake_teachr' (known: fake_teacher); did you mean 'fake_teacher'?",
        "teachers.eva02.align[1].hiden: unknown key (known: hidden); did you mean 'hidden'?",
        "stages.pretrain.optimizer.lr: Input should be a valid number, unable to parse string as a number",
        "stages.pretrain.batch: Value error, global_size 7 is not a multiple of per_device 4",
        "runtme: unknown key (known: name, description, student, teachers, scorer, adapters, losses, stages, eval, "
        "runtime, loggers); did you mean 'runtime'?",
    ]
    assert str(info.value).startswith(f"invalid recipe {tmp_path / 'r.yaml'} (6 problems):")


def test_missing_required_plugin_key_and_bad_names(tmp_path, fake_registry) -> None:
    bad = GOOD_RECIPE.replace("    checkpoint: eva.safetensors\n", "").replace("  fine:", "  fine-grained:")
    bad = bad.replace("trainable: [adapters]", "trainable: [adapters]\n    losses: [fine, nope]")
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, bad), registry=fake_registry)
    assert problems(info) == [
        "teachers.eva02.checkpoint: required key is missing",
        "losses.fine-grained (key): String should match pattern '^[A-Za-z_][A-Za-z0-9_]*$'",
    ]


def test_stage_naming_an_unknown_loss(tmp_path, fake_registry) -> None:
    bad = GOOD_RECIPE.replace("trainable: [adapters]", "trainable: [adapters]\n    losses: [fine, nope]")
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, bad), registry=fake_registry)
    assert problems(info) == ["stages.pretrain.losses[1]: 'nope' is not a loss of this recipe (losses: fine, coarse)"]


def test_yaml_syntax_error_gives_line_and_column(tmp_path, fake_registry) -> None:
    path = write(tmp_path, "student: {kind: a\n  x: [\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, registry=fake_registry)
    assert problems(info) == [f"YAML syntax error at {path}:2:4: expected ',' or '}}', but got ':'"]


def test_missing_file_and_non_mapping(tmp_path, fake_registry) -> None:
    with pytest.raises(RecipeError, match="recipe file not found: .*absent.yaml"):
        load_recipe(tmp_path / "absent.yaml", registry=fake_registry)
    with pytest.raises(RecipeError, match="must hold a mapping of recipe keys, got list"):
        load_recipe(write(tmp_path, "- a\n- b\n"), registry=fake_registry)


def test_extends_merges_and_null_deletes(tmp_path, fake_registry) -> None:
    write(tmp_path, GOOD_RECIPE.replace("  eva02:", "  sam:\n    kind: fake_teacher\n    checkpoint: sam.pth\n  eva02:"), "base.yaml")
    child = write(
        tmp_path,
        "# ablation\nextends: base.yaml\nteachers: {sam: null}\nlosses: {fine: {weight: 0.25}}\n",
        "child.yaml",
    )
    recipe = load_recipe(child, registry=fake_registry)
    assert list(recipe.teachers) == ["eva02"]
    assert recipe.losses["fine"].weight == 0.25
    assert recipe.losses["fine"].kind == "fake_loss"
    assert recipe.name == "child"


def test_extends_missing_file_and_cycle(tmp_path, fake_registry) -> None:
    child = write(tmp_path, "extends: nowhere.yaml\n", "child.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(child, registry=fake_registry)
    assert problems(info)[0].startswith(f"extends: {child.resolve()} extends 'nowhere.yaml', which does not exist")
    write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(RecipeError, match="recipes extend each other in a cycle"):
        load_recipe(tmp_path / "a.yaml", registry=fake_registry)


def test_overrides_apply_and_bad_paths_fail(good_recipe, fake_registry) -> None:
    recipe = load_recipe(
        good_recipe,
        ["losses.fine.weight=0.25", "teachers.eva02.align[1].hidden=8", "stages.pretrain.optimizer.lr=2e-5"],
        registry=fake_registry,
    )
    assert recipe.losses["fine"].weight == 0.25
    assert recipe.teachers["eva02"].align[1].config.hidden == 8
    assert recipe.stages["pretrain"].optimizer.lr == 2e-5
    with pytest.raises(RecipeError) as info:
        load_recipe(good_recipe, ["teachers.eva2.layer=3"], registry=fake_registry)
    assert problems(info) == ["--set teachers.eva2.layer: path does not exist: unknown key 'eva2' (known: eva02); did you mean 'eva02'?"]
    with pytest.raises(RecipeError) as info:
        load_recipe(good_recipe, ["teachers.eva02.align[5].hidden=3"], registry=fake_registry)
    assert problems(info) == ["--set teachers.eva02.align[5].hidden: path does not exist: teachers.eva02.align.5 (list of 2)"]
    with pytest.raises(RecipeError) as info:
        load_recipe(good_recipe, ["losses.fine.wieght=0.3"], registry=fake_registry)
    assert problems(info) == ["losses.fine.wieght: unknown key (known: weight); did you mean 'weight'?"]
    with pytest.raises(RecipeError, match="is not of the form path.to.key=value"):
        load_recipe(good_recipe, ["losses.fine.weight"], registry=fake_registry)


def test_resolved_recipe_round_trips(good_recipe, fake_registry, tmp_path) -> None:
    recipe = load_recipe(good_recipe, registry=fake_registry)
    out = tmp_path / "resolved.yaml"
    dump_recipe(recipe, out)
    data = yaml.safe_load(out.read_text())
    assert data["teachers"]["eva02"]["layer"] == -1  # defaults are filled in
    assert data["runtime"]["precision"] == "fp32"
    again = load_recipe(out, registry=fake_registry)
    assert recipe_dict(again) == recipe_dict(recipe)


def test_override_creates_envelope_sections_left_to_defaults(good_recipe, fake_registry) -> None:
    recipe = load_recipe(
        good_recipe,
        ["runtime.distributed.strategy=ddp", "stages.pretrain.schedule.warmup_ratio=0.1"],
        registry=fake_registry,
    )
    assert recipe.runtime.distributed.strategy == "ddp"
    assert recipe.stages["pretrain"].schedule.warmup_ratio == 0.1
    with pytest.raises(RecipeError) as info:
        load_recipe(good_recipe, ["runtime.distribute.strategy=ddp"], registry=fake_registry)
    assert problems(info) == ["--set runtime.distribute.strategy: path does not exist: unknown key 'distribute' (known: checkpoint_every, checkpoint_forced_passes, data_root, device, distributed, forced_teachers, gradient_checkpointing, keep_last, lock_timeout, log_every, num_workers, on_nonfinite, output_dir, precision, seed, teacher_cache, teacher_cache_append, teacher_cache_mode); did you mean 'distributed'?"]
