"""The recipe as one JSON schema and as a Markdown reference, both generated from the code.

Plugin blocks become discriminated unions (on ``kind``) of the registered plugins' configs, so
the schema an editor sees is exactly what validation accepts.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, create_model

from kdkit.recipe import schema
from kdkit.registry import Registry


def _union(registry: Registry, kind: str, extra_fields: dict[str, Any] | None = None) -> Any:
    """A ``kind``-discriminated union of every config registered for ``kind``."""
    models: list[type[BaseModel]] = []
    for entry in registry.entries(kind):
        model = entry.factory.config
        if extra_fields:
            model = create_model(f"{model.__name__}Block", __base__=model, **extra_fields)  # type: ignore[call-overload]
        models.append(model)
    if not models:
        return dict[str, Any]
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]  # noqa: UP007


def recipe_model(registry: Registry) -> type[BaseModel]:
    """A pydantic model of the whole recipe with every plugin block typed by its plugins."""
    aligner = _union(registry, "aligner")
    align_field = (list[aligner], Field(default_factory=list, description=schema.TeacherBlock.model_fields["align"].description))
    weight = schema.LossBlock.model_fields["weight"]
    weight_field = (float, Field(weight.default, ge=0.0, description=weight.description))
    stage = create_model("Stage", __base__=schema.Stage, data=(_union(registry, "data"), ...))
    benchmark = schema.Eval.model_fields["benchmark"]
    evaluation = create_model("Eval", __base__=schema.Eval, __doc__=schema.Eval.__doc__,
                              benchmark=(_union(registry, "benchmark"), Field(description=benchmark.description)))
    fields = schema.Recipe.model_fields
    return create_model(
        "Recipe",
        __base__=schema.Recipe,
        __doc__=schema.Recipe.__doc__,
        student=(_union(registry, "student"), Field(description=fields["student"].description)),
        teachers=(dict[schema.Key, _union(registry, "teacher", {"align": align_field})], Field(default_factory=dict, description=fields["teachers"].description)),
        scorer=(_union(registry, "scorer") | None, Field(None, description=fields["scorer"].description)),
        adapters=(dict[schema.Key, _union(registry, "adapter")], Field(default_factory=dict, description=fields["adapters"].description)),
        losses=(dict[schema.Key, _union(registry, "loss", {"weight": weight_field})], Field(description=fields["losses"].description)),
        stages=(dict[schema.Key, stage], Field(description=fields["stages"].description)),
        eval=(evaluation | None, Field(None, description=fields["eval"].description)),
        loggers=(dict[schema.Key, _union(registry, "logger")] | None, Field(None, description=fields["loggers"].description)),
    )


def recipe_json_schema(registry: Registry) -> dict[str, Any]:
    """JSON schema of a recipe file (for editors and `kdkit schema`)."""
    return recipe_model(registry).model_json_schema()


def _type_name(annotation: Any) -> str:
    """A short, readable type: ``dict[name, TeacherBlock]``, ``'cosine' | 'linear'``..."""
    import re

    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"Annotated\[str, StringConstraints\(.*?\)\]", "name", text)
    text = re.sub(r"\b(typing|kdkit(\.\w+)*)\.", "", text)
    text = re.sub(r"Literal\[(.*?)\]", lambda m: m.group(1).replace(", ", " | "), text)
    text = text.replace("NoneType", "None")
    return f"`{text}`"  # a pipe inside a code span does not end the table cell


def _cell(text: str) -> str:
    """``text`` for a table cell: pipes escaped outside code spans only (inside one the backslash would show)."""
    parts = text.replace("\n", " ").split("`")
    return "`".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{value!r}`"
    return f"`{field.default!r}`"


def _field_table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        description = _cell(field.description or "")
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {description} |")
    return rows


ENVELOPE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Recipe (top level)", schema.Recipe),
    ("Teacher block (`teachers.<name>`)", schema.TeacherBlock),
    ("Loss block (`losses.<name>`)", schema.LossBlock),
    ("Stage (`stages.<name>`)", schema.Stage),
    ("Optimizer (`stages.<name>.optimizer`)", schema.Optimizer),
    ("Schedule (`stages.<name>.schedule`)", schema.Schedule),
    ("Batch (`stages.<name>.batch`)", schema.Batch),
    ("Runtime (`runtime`)", schema.Runtime),
    ("Distributed (`runtime.distributed`)", schema.Distributed),
    ("Evaluation during training (`eval`)", schema.Eval),
]

KIND_TITLES = {
    "student": "Students (`student`)",
    "teacher": "Teachers (`teachers.<name>`)",
    "aligner": "Aligners (`teachers.<name>.align[i]`)",
    "scorer": "Scorers (`scorer`)",
    "adapter": "Adapters (`adapters.<name>`)",
    "loss": "Losses (`losses.<name>`)",
    "data": "Data (`stages.<name>.data`)",
    "benchmark": "Benchmarks (`eval.benchmark`, `kdkit eval --benchmark`)",
    "logger": "Loggers (`loggers.<name>`)",
}


def recipe_reference_markdown(registry: Registry) -> str:
    """The recipe reference page: envelope sections, then every plugin's config by kind."""
    lines = [
        "# Recipe reference",
        "",
        "<!-- Generated by `python -m kdkit.schema_export docs/reference/recipe.md` from the code; do not edit. -->",
        "",
        "A recipe is a YAML file validated in two stages: the envelope below, then every plugin",
        "block against the config of the plugin its `kind` names. `extends:` (a path or a list of",
        "paths, relative to the file) merges base recipes under this one; `null` deletes a key.",
        "",
        "## Envelope",
    ]
    for title, model in ENVELOPE_SECTIONS:
        lines += ["", f"### {title}", "", (model.__doc__ or "").strip(), "", *_field_table(model)]
    lines += ["", "## Plugins"]
    for kind in registry.kinds:
        lines += ["", f"### {KIND_TITLES.get(kind, kind)}"]
        entries = registry.entries(kind)
        if not entries:
            lines += ["", "None registered."]
        for entry in entries:
            doc = (entry.factory.config.__doc__ or "").strip()
            lines += ["", f"#### `{entry.name}`", "", doc, "", *_field_table(entry.factory.config, skip=("kind",))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m kdkit.schema_export PATH [--check]``: write (or check) the recipe reference."""
    import argparse
    import sys
    from pathlib import Path

    from kdkit.plugins import load_plugins

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--check", action="store_true", help="fail if the file differs from the generated text")
    args = parser.parse_args(argv)
    text = recipe_reference_markdown(load_plugins(distributions={"kdkit"}).registry)
    if args.check:
        if not args.path.is_file() or args.path.read_text(encoding="utf-8") != text:
            print(f"{args.path} is out of date: run `python -m kdkit.schema_export {args.path}`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
