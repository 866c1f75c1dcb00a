"""The best checkpoint by the recipe's ``eval.select`` metric: ``checkpoints/best``.

``best`` is a link to a directory ``best-<step>`` beside the step checkpoints, which holds the
checkpoint of the step that scored best (its files hard-linked from ``step-<step>``, or copied on
a file system without hard links) plus ``best.json`` (step, stage, metric, value...). A new best
is assembled in a temporary directory, synced, and renamed to ``best-<step>``; the link is then
swapped in one atomic rename, and only after that is the previous ``best-<step>`` removed, so
``best`` always names a complete checkpoint. ``keep_last`` prunes step checkpoints only: the best
one stays whatever its age.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from kdkit.engine.checkpoint import BEST, TMP, fsync_dir

#: Name of the file, inside the best checkpoint, that records why it is the best.
BEST_FILE = "best.json"
#: Prefix of the directory ``best`` links to.
BEST_PREFIX = "best-"


def _copy_synced(source: Path, target: Path) -> None:
    shutil.copy2(source, target)
    with open(target, "rb") as handle:
        os.fsync(handle.fileno())


def link_tree(source: Path, target: Path) -> None:
    """Recreate the directory ``source`` as ``target``: files hard-linked (copied where links fail), all synced."""
    for root, _dirs, files in os.walk(source):
        here = target / Path(root).relative_to(source)
        here.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(root) / name, here / name)  # a step checkpoint's files never change: sharing is safe
            except OSError:
                _copy_synced(Path(root) / name, here / name)
        fsync_dir(here)


def read_best(directory: Path) -> dict[str, Any] | None:
    """The ``best.json`` of ``directory/best`` (``directory``: a run's ``checkpoints/``), or None when there is none."""
    file = directory / BEST / BEST_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def publish_best(directory: Path, source: Path, info: dict[str, Any]) -> Path:
    """Make the checkpoint directory ``source`` the run's best, recording ``info`` in ``best.json``.

    Args:
        directory: The run's ``checkpoints/`` directory.
        source: The step checkpoint that scored best (``checkpoints/step-<step>``).
        info: What ``best.json`` records (``step`` included).

    Returns:
        The ``best-<step>`` directory ``checkpoints/best`` now links to.
    """
    target = directory / f"{BEST_PREFIX}{int(info['step']):08d}"
    link = directory / BEST
    if link.is_symlink() and os.readlink(link) == target.name:  # this step is the best already: refresh its record
        _write_info(target, info)
        return target
    tmp = directory / f"{TMP}{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    link_tree(source, tmp)
    _write_info(tmp, info)
    if target.exists():
        shutil.rmtree(target)  # left by a run killed before it swapped the link
    os.rename(tmp, target)
    fsync_dir(directory)
    _point(link, target)
    fsync_dir(directory)
    for old in directory.glob(f"{BEST_PREFIX}*"):
        if old.is_dir() and old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def _write_info(checkpoint: Path, info: dict[str, Any]) -> None:
    """``best.json`` written into ``checkpoint`` atomically (temporary file, sync, rename)."""
    staged = checkpoint / f"{TMP}{BEST_FILE}"
    with open(staged, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staged, checkpoint / BEST_FILE)
    fsync_dir(checkpoint)


def _point(link: Path, target: Path) -> None:
    """Make ``link`` name ``target`` in one atomic rename (two renames where symbolic links are unavailable)."""
    directory = link.parent
    aside = directory / f"{TMP}previous-{BEST}-{os.getpid()}"
    if link.exists() and not link.is_symlink():  # a real directory (e.g. a run copied without links)
        os.rename(link, aside)
    staged = directory / f"{TMP}{BEST}-link-{os.getpid()}"
    try:
        if staged.is_symlink() or staged.exists():
            staged.unlink()
        os.symlink(target.name, staged)
    except (OSError, NotImplementedError):
        if link.is_symlink():
            link.unlink()
        os.rename(target, link)
    else:
        os.replace(staged, link)
    shutil.rmtree(aside, ignore_errors=True)
