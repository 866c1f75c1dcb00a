"""The contract kit holds every data plugin to the sample-id rule the teacher cache relies on."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch
from pydantic import Field

from kdkit import Factory, PluginConfig
from kdkit.testing import ContractError, check_plugin


class NoIdsConfig(PluginConfig):
    """A dataset whose samples carry no ids."""

    kind: Literal["no_ids"] = "no_ids"
    size: int = Field(2, description="Samples.")


class Counting:
    """Sample 0 gets a new id at every reading."""

    def __init__(self, with_ids: bool) -> None:
        self.with_ids, self.reads = with_ids, 0

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict[str, Any]:
        self.reads += 1
        sample: dict[str, Any] = {"images": torch.zeros(3, 4, 4)}
        if self.with_ids:
            sample["ids"] = torch.tensor(self.reads)
        return sample


@pytest.mark.parametrize(("with_ids", "message"), [
    (False, "samples must carry 'ids', a 0-dim int64 tensor stable for the sample's content"),
    (True, "reading sample 0 twice gave two different 'ids'; ids must be stable"),
])
def test_data_plugins_without_stable_ids_fail_the_contract(with_ids: bool, message: str, tmp_path) -> None:
    factory = Factory(config=NoIdsConfig, build=lambda config, context: Counting(with_ids))
    with pytest.raises(ContractError, match=message):
        check_plugin("data", "no_ids", factory, tmp_path)
