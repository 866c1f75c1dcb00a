"""Files for the tiny recipes in ``recipes/tiny/``: random-init teachers in their libraries' real formats.

Run ``python -m kdkit.engine.tiny DATA_ROOT`` once, then ``kdkit run recipes/tiny/<recipe>.yaml
--data-root DATA_ROOT``. The recipes name these files relative to ``runtime.data_root``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def prepare_tiny(data_root: str | Path) -> Path:
    """Write the tiny teachers the ``recipes/tiny`` recipes load into ``data_root``; returns it.

    Layout: ``teachers/clip/`` (an open_clip model directory) and ``teachers/eva02/model.safetensors``
    (timm weights). Existing files are kept, so preparing twice is harmless.
    """
    import torch

    from kdkit_plugins.teachers.tiny import write_tiny_open_clip, write_tiny_timm

    root = Path(data_root)
    state = torch.get_rng_state()
    torch.manual_seed(1234)  # the same teachers on every machine
    try:
        if not (root / "teachers" / "clip" / "open_clip_config.json").is_file():
            write_tiny_open_clip(root / "teachers" / "clip")
        if not (root / "teachers" / "eva02" / "model.safetensors").is_file():
            write_tiny_timm(root / "teachers" / "eva02")
    finally:
        torch.set_rng_state(state)
    return root


def main() -> None:
    """Command line: ``python -m kdkit.engine.tiny DATA_ROOT``."""
    parser = argparse.ArgumentParser(description=prepare_tiny.__doc__.splitlines()[0])
    parser.add_argument("data_root", help="directory to write the tiny teacher files into")
    print(prepare_tiny(parser.parse_args().data_root))


if __name__ == "__main__":
    main()
