"""The ``kdkit`` command: exit codes, stderr messages without tracebacks, listing, schema."""

from __future__ import annotations

import json

import pytest
from fakes import GOOD_RECIPE

from kdkit import cli


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_lists_builtins_with_distribution(capsys) -> None:
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    rows = json.loads(out)
    builtins = [r for r in rows if r["distribution"] == "kdkit"]
    assert builtins, "no built-in plugin was found through the kdkit entry points"
    assert all(r["module"].startswith("kdkit_plugins.") for r in builtins)


def test_validate_reports_errors_on_stderr_without_traceback(capsys, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_RECIPE.replace("kind: fake_student", "kind: no_such_student"))
    code, out, err = run(capsys, "validate", str(path))
    assert code == 1
    assert out == ""
    assert err.startswith(f"error: invalid recipe {path}")
    assert "student.kind: unknown student 'no_such_student'" in err
    assert "Traceback" not in err


def test_validate_missing_file(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "validate", str(tmp_path / "none.yaml"))
    assert code == 1
    assert "recipe file not found" in err


def test_schema_is_json_with_recipe_sections(capsys) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert {"student", "teachers", "losses", "stages", "runtime"} <= set(schema["properties"])


@pytest.mark.parametrize("command", [[], ["plugins"], ["validate"], ["run"], ["schema"]])
def test_help_on_every_command(command, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: kdkit" in capsys.readouterr().out
