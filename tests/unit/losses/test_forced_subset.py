"""runtime.forced_teachers: the forced passes of a random k of the N_t teachers per step, and the
losses over them as an unbiased estimate of the full term."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch

from kdkit.engine import build
from kdkit.engine.step import FORCED_WEIGHTS
from kdkit.errors import KdkitError
from kdkit.recipe import load_recipe
from kdkit_plugins.data.synthetic import SyntheticImages
from kdkit_plugins.losses import feature, fgkd
from kdkit_plugins.losses._tiny_step import tiny_context, tiny_step

TEACHERS = ("t0", "t1", "t2")


def losses(context):
    return {
        "fgkd": fgkd.build(fgkd.FgkdConfig(), context),
        "feature": feature.build(feature.FeatureConfig(student="forced"), context),
        "fgkd_two": fgkd.build(fgkd.FgkdConfig(teachers=["t0", "t2"]), context),
    }


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("term", ["fgkd", "feature", "fgkd_two"])
def test_mean_over_every_k_subset_equals_the_full_term(term, k) -> None:
    """Subsets are drawn uniformly, so the estimate's expectation is its mean over all C(N_t, k) subsets."""
    context = tiny_context(teachers=TEACHERS)
    loss = losses(context)[term]
    full = loss(tiny_step(context))
    estimates = []
    for subset in itertools.combinations(TEACHERS, k):
        step = tiny_step(context)
        step.student_forced = {t: step.student_forced[t] for t in subset}  # only the drawn teachers ran
        step.extras[FORCED_WEIGHTS] = {t: len(TEACHERS) / k for t in subset}
        estimates.append(loss(step))
    torch.testing.assert_close(torch.stack(estimates).mean(), full, rtol=1e-6, atol=0)
    assert len({round(float(e), 6) for e in estimates}) > 1  # each estimate alone differs


TINY = Path(__file__).parents[3] / "recipes" / "tiny" / "timm_two_teachers.yaml"


@pytest.fixture(scope="module")
def distiller(tiny_root, registry):
    recipe = load_recipe(TINY, [f"runtime.data_root={tiny_root}", "runtime.forced_teachers=1"], registry=registry)
    return build.build_distiller(recipe, registry, torch.device("cpu"))


def test_only_the_drawn_teachers_forced_passes_run(distiller, monkeypatch) -> None:
    batch = torch.utils.data.default_collate([SyntheticImages(4, 32, 4, 0.1, 0)[i] for i in range(2)])
    calls = []
    encode = distiller.plugin.encode
    monkeypatch.setattr(distiller.plugin, "encode", lambda images: calls.append(images.shape[0]) or encode(images))
    torch.manual_seed(0)
    losses_, step = distiller(batch)
    drawn = step.extras[FORCED_WEIGHTS]
    assert len(drawn) == 1 and list(drawn.values()) == [2.0]  # N_t = 2 teachers, k = 1
    assert list(step.student_forced) == list(drawn) and calls == [2]  # one forced pass (of 2 without the option)
    assert torch.isfinite(losses_["fine"])


def test_every_teacher_is_drawn_alike(distiller) -> None:
    torch.manual_seed(0)
    counts = Counter(t for _ in range(400) for t in distiller.sample_forced())
    assert set(counts) == {"clip", "eva02"} and abs(counts["clip"] - 200) < 40


def test_more_teachers_than_the_recipe_has_is_named(tiny_root, registry) -> None:
    recipe = load_recipe(TINY, [f"runtime.data_root={tiny_root}", "runtime.forced_teachers=3"], registry=registry)
    with pytest.raises(KdkitError, match=r"^runtime.forced_teachers: 3 teachers per step, but the recipe has 2$"):
        build.build_distiller(recipe, registry, torch.device("cpu"))
