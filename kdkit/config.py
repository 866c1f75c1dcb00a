"""Base class of every plugin configuration."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PluginConfig(BaseModel):
    """A plugin's configuration: strict (unknown keys are errors) and tagged with its ``kind``.

    Subclasses narrow ``kind`` to ``Literal["<registered name>"]`` with that name as default and
    give every field a ``Field(description=...)``: the same text feeds validation, the generated
    recipe reference and editor completion.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)

    kind: str = Field(description="Registered name of the plugin that builds this block.")
