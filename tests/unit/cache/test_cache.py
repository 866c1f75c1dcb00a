"""The teacher cache: a cached fp32 run equals the online run (tiny HAWAII twin and a classifier recipe)
without loading the cached teachers; stale teachers and samples, missing samples, damaged shards, a
kill and a full disk are refused or recovered as documented; storage dtypes report their error."""

from __future__ import annotations

import errno
import json
import os
import struct
from pathlib import Path

import pytest
import torch

from kdkit.cache import CacheError
from kdkit.cache.command import cache_stage
from kdkit.cache.quantize import relative_error
from kdkit.cache.source import open_cache
from kdkit.cache.store import TeacherStore
from kdkit.engine import build
from kdkit.engine.monitor import read_metrics
from kdkit.engine.run import run_recipe
from kdkit.errors import KdkitError
from kdkit_plugins.fixtures.hawaii import write_tiny_hawaii

RECIPES = Path(__file__).parents[3] / "recipes" / "tiny"
CLASSIFIER = RECIPES / "timm_two_teachers.yaml"
TWIN = RECIPES / "hawaii" / "hawaii_7b.yaml"
SHORT = {
    CLASSIFIER: ["stages.pretrain.max_steps=2", "stages.finetune.max_steps=2", "stages.pretrain.data.size=16",
                 "stages.finetune.data.size=16"],
    TWIN: [f"stages.{s}.{k}" for s in ("pretrain", "finetune") for k in ("max_steps=2", "batch.global_size=2")],
}


def quiet(*_: object) -> None:
    """Swallow the summary lines."""


def cache_all(recipe: Path, root: Path, cache: Path, registry, *extra: str, dtype: str = "fp32", **kwargs) -> None:
    for stage in ("pretrain", "finetune"):
        cache_stage(recipe, stage, cache, dtype=dtype, overrides=[f"runtime.data_root={root}", *SHORT[recipe], *extra],
                    shard_size=8, registry=registry, echo=quiet, **kwargs)


def losses(recipe: Path, root: Path, out: Path, registry, *extra: str) -> list[dict[str, float]]:
    run_dir = run_recipe(recipe, [f"runtime.data_root={root}", f"runtime.output_dir={out}", *SHORT[recipe], *extra],
                         registry=registry, tensorboard=False, progress=False, report=False)
    return [r["losses"] for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def hawaii_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hawaii(tmp_path_factory.mktemp("tiny_hawaii"))


@pytest.fixture(scope="module")
def classifier_cache(tiny_root: Path, tmp_path_factory, registry) -> Path:
    cache = tmp_path_factory.mktemp("classifier") / "cache"
    cache_all(CLASSIFIER, tiny_root, cache, registry)
    return cache


@pytest.mark.parametrize("recipe", [CLASSIFIER, TWIN], ids=["classifier", "hawaii_twin"])
def test_cached_fp32_run_has_the_online_losses_without_loading_teachers(recipe, tiny_root, hawaii_root, tmp_path,
                                                                        registry, monkeypatch) -> None:
    root = tiny_root if recipe == CLASSIFIER else hawaii_root
    cache = tmp_path / "cache"
    cache_all(recipe, root, cache, registry)
    online = losses(recipe, root, tmp_path / "online", registry)
    built: list[str] = []
    original = build.build_teacher
    monkeypatch.setattr(build, "build_teacher", lambda registry, name, *a, **k: built.append(name) or original(registry, name, *a, **k))
    cached = losses(recipe, root, tmp_path / "cached", registry, f"runtime.teacher_cache={cache}")
    assert cached == online  # bit-identical: same init, same targets
    assert built == []  # every teacher is served from the cache: none is built


def test_text_only_samples_get_no_teacher_work_and_no_kd_term(hawaii_root, registry) -> None:
    from kdkit.engine.trainer import Trainer  # noqa: F401  (the engine's own data path below)
    from kdkit.recipe import load_recipe

    recipe = load_recipe(TWIN, [f"runtime.data_root={hawaii_root}"], registry=registry)
    distiller = build.build_distiller(recipe, registry, torch.device("cpu"))
    context = build.base_context(recipe, torch.device("cpu"))
    context.extras = {"student": distiller.plugin, "run_dir": hawaii_root}
    data = registry.build("data", recipe.stages["finetune"].data.config, context)
    samples = [data[i] for i in range(len(data))]
    text = [s for s in samples if not bool(s["has_image"])]
    image = [s for s in samples if bool(s["has_image"])]
    assert text and image, "the tiny finetune data must hold text-only and image samples"
    seen: list[int] = []
    for teacher in distiller.teachers.values():
        teacher.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    mixed = data.collate([image[0], text[0], image[1]])
    only_images = data.collate([image[0], image[1]])
    with torch.no_grad():
        got, step = distiller(mixed)
        want, _ = distiller(only_images)
    assert step.rows.tolist() == [0, 2]
    assert seen[: len(distiller.teachers)] == [2] * len(distiller.teachers)  # the text-only sample got no teacher work
    for term in ("fine", "coarse"):  # its KD terms are those of the image samples alone
        torch.testing.assert_close(got[term], want[term], rtol=1e-5, atol=1e-6)
    seen.clear()
    texts, _ = distiller(data.collate(text[:2]))
    assert seen == []
    assert float(texts["fine"]) == 0.0 and float(texts["coarse"]) == 0.0
    assert torch.isfinite(texts["task"])


def test_a_cache_of_another_teacher_config_is_refused_naming_the_field(tiny_root, tmp_path, classifier_cache,
                                                                       registry) -> None:
    with pytest.raises(CacheError, match=r"teacher 'eva02': the cache at .* was written by another teacher "
                                         r"\(config.interpolation: \"bicubic\" -> \"bilinear\"\)"):
        losses(CLASSIFIER, tiny_root, tmp_path / "run", registry, f"runtime.teacher_cache={classifier_cache}",
               "teachers.eva02.interpolation=bilinear")


def test_a_cache_of_another_checkpoint_is_refused(tiny_root, tmp_path, registry) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    cache = tmp_path / "cache"
    cache_stage(CLASSIFIER, "pretrain", cache, overrides=[f"runtime.data_root={root}", *SHORT[CLASSIFIER]],
                shard_size=8, registry=registry, echo=quiet)
    weights = root / "teachers" / "eva02" / "model.safetensors"
    tensors = load_file(weights)
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, weights)
    with pytest.raises(CacheError, match=r"teacher 'eva02': .*another teacher \(checkpoint.checkpoint: [0-9a-f]+ -> "):
        losses(CLASSIFIER, root, tmp_path / "run", registry, f"runtime.teacher_cache={cache}")


def test_missing_samples_are_named_then_hybrid_computes_and_appends_them(tiny_root, tmp_path, classifier_cache,
                                                                        registry) -> None:
    # another data size reshuffles the synthetic labels: ids the cache holds now show other images (stale)
    more = ["stages.pretrain.data.size=24", "stages.finetune.data.size=24"]
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(classifier_cache, cache)
    with pytest.raises(CacheError, match=r"teacher 'clip': \d+ of this batch's 4 samples have no entry for their image "
                                         r"in the cache .* \(first ids: \d+"):
        losses(CLASSIFIER, tiny_root, tmp_path / "a", registry, f"runtime.teacher_cache={cache}", *more)
    before = {p.name for p in (cache / "clip").glob("*.safetensors")}
    online = losses(CLASSIFIER, tiny_root, tmp_path / "b", registry, *more)
    hybrid = losses(CLASSIFIER, tiny_root, tmp_path / "c", registry, f"runtime.teacher_cache={cache}",
                    "runtime.teacher_cache_mode=hybrid", "runtime.teacher_cache_append=true", *more)
    assert hybrid == online
    appended = {p.name for p in (cache / "clip").glob("*.safetensors")} - before
    assert appended and all(name.startswith("append-") for name in appended)
    cached = losses(CLASSIFIER, tiny_root, tmp_path / "d", registry, f"runtime.teacher_cache={cache}", *more)
    assert cached == online  # what hybrid appended now serves a fully cached run


def _tensor_offset(path: Path, name: str) -> int:
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    header = json.loads(path.read_bytes()[8:8 + length])
    return 8 + length + header[name]["data_offsets"][0]


def test_truncated_and_corrupt_shards_are_named_never_half_read(classifier_cache, tmp_path, tiny_root, registry) -> None:
    import shutil

    from kdkit.recipe import load_recipe

    cache = tmp_path / "cache"
    shutil.copytree(classifier_cache, cache)
    recipe = load_recipe(CLASSIFIER, [f"runtime.data_root={tiny_root}"], registry=registry)
    context = build.base_context(recipe, torch.device("cpu"))
    shard = sorted((cache / "clip").glob("*.safetensors"))[0]
    offset = _tensor_offset(shard, "grid")
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    source = open_cache(cache, recipe.teachers, context, {}, "cached", False)
    store = source.stores["clip"]
    (path, row, _), = [entry for entries in store.index.values() for entry in entries if entry[0] == shard and entry[1] == 0]
    with pytest.raises(CacheError, match=rf"teacher 'clip': shard {shard} row 0 \(sample id \d+\) is corrupt"):
        store.read([(path, row)], [0])
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError, match=rf"teacher 'clip': shard {shard} is truncated or corrupt"):
        open_cache(cache, recipe.teachers, context, {}, "cached", False)


def test_a_killed_cache_run_completes_without_rewriting_finished_shards(tiny_root, tmp_path, registry, monkeypatch) -> None:
    cache = tmp_path / "cache"
    original = TeacherStore.write_shard
    calls = {"n": 0}

    def dies_after_three(self, *args, **kwargs):
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what a kill leaves: some shards published, the rest never started
        calls["n"] += 1
        return original(self, *args, **kwargs)

    settings = [f"runtime.data_root={tiny_root}", *SHORT[CLASSIFIER]]
    monkeypatch.setattr(TeacherStore, "write_shard", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        cache_stage(CLASSIFIER, "pretrain", cache, overrides=settings, shard_size=4, registry=registry, echo=quiet)
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cache.rglob("*.safetensors")}
    assert len(finished) == 3
    monkeypatch.setattr(TeacherStore, "write_shard", original)
    summary = cache_stage(CLASSIFIER, "pretrain", cache, overrides=settings, shard_size=4, registry=registry, echo=quiet)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished  # untouched
    assert summary["teachers"]["clip"]["rows"] == summary["teachers"]["eva02"]["rows"] == 16
    assert not list(cache.rglob(".*tmp*"))


def test_disk_full_while_caching_is_a_clear_error_and_finished_shards_stay_intact(tiny_root, tmp_path, registry,
                                                                                   monkeypatch) -> None:
    import safetensors.torch

    cache = tmp_path / "cache"
    original = safetensors.torch.save_file
    calls = {"n": 0}

    def fills_the_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_the_disk)
    with pytest.raises(CacheError, match=r"No space left on device \(ENOSPC\); the shards already published are intact"):
        cache_stage(CLASSIFIER, "pretrain", cache, overrides=[f"runtime.data_root={tiny_root}", *SHORT[CLASSIFIER]],
                    shard_size=4, registry=registry, echo=quiet)
    shards = sorted(cache.rglob("*.safetensors"))
    assert len(shards) == 2 and not list(cache.rglob(".*tmp*"))
    for shard in shards:  # whole and readable
        with safetensors.safe_open(str(shard), framework="pt") as handle:
            assert handle.get_tensor("grid").shape[0] == 4


@pytest.mark.parametrize(("dtype", "bound"), [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 8e-3), ("int8", 1.5e-2)])
def test_storage_dtypes_reconstruct_within_their_measured_error(dtype: str, bound: float) -> None:
    grid = torch.randn(4, 6, 6, 8) * torch.logspace(-3, 2, 8)  # channels whose ranges differ by 1e5
    assert relative_error(grid, dtype) <= bound
    if dtype == "int8":  # per-channel scales: the smallest channel keeps its own precision
        assert relative_error(grid[..., :1], dtype) <= bound


def test_augmenting_data_is_refused_by_the_cache(tiny_root, tmp_path, classifier_cache, registry, monkeypatch) -> None:
    from kdkit_plugins.data.synthetic import SyntheticImages

    monkeypatch.setattr(SyntheticImages, "augments", True, raising=False)
    message = r"stages.pretrain.data: the 'synthetic' data augments its images at random"
    with pytest.raises(KdkitError, match=message):
        losses(CLASSIFIER, tiny_root, tmp_path / "run", registry, f"runtime.teacher_cache={classifier_cache}")
    with pytest.raises(CacheError, match=message):
        cache_stage(CLASSIFIER, "pretrain", tmp_path / "c", overrides=[f"runtime.data_root={tiny_root}"],
                    registry=registry, echo=quiet)


def test_reads_reopen_shards_beyond_the_open_file_bound(classifier_cache, tiny_root, registry, monkeypatch) -> None:
    import kdkit.cache.store as store_module
    from kdkit.recipe import load_recipe

    recipe = load_recipe(CLASSIFIER, [f"runtime.data_root={tiny_root}"], registry=registry)
    context = build.base_context(recipe, torch.device("cpu"))
    wide = open_cache(classifier_cache, recipe.teachers, context, {}, "cached", False).stores["eva02"]
    entries = [(sample, place[:2]) for sample, places in sorted(wide.index.items()) for place in places]
    assert len({path for _, (path, _) in entries}) > 1
    expected = wide.read([p for _, p in entries], [s for s, _ in entries])
    monkeypatch.setattr(store_module, "OPEN_SHARDS", 1)
    narrow = open_cache(classifier_cache, recipe.teachers, context, {}, "cached", False).stores["eva02"]
    got = narrow.read([p for _, p in entries], [s for s, _ in entries])
    assert len(narrow._files) == 1
    torch.testing.assert_close(got.grid, expected.grid, rtol=0, atol=0)
