"""Keep third-party libraries' progress bars and root-logger chatter out of kdkit's terminal output.

transformers draws a "Loading weights" bar per model and open_clip logs warnings such as "No
pretrained weights loaded" on the root logger while kdkit loads a checkpoint it then checks
itself. The ``kdkit`` command silences both unless ``--verbose``; kdkit's own messages (progress
bar, stage tables, warnings of ``kdkit`` and ``kdkit_plugins`` loggers) are unaffected.
"""

from __future__ import annotations

import logging
import os

#: Environment read by huggingface_hub / transformers at import time (inherited by torchrun's workers).
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}
#: Loggers whose warnings are kdkit's own and stay visible.
OWN_LOGGERS = ("kdkit", "kdkit_plugins")


def quiet_third_party(verbose: bool) -> None:
    """Silence third-party progress bars and root-logger warnings (nothing when ``verbose``).

    Call before transformers or open_clip are imported; values the user already set are kept.
    """
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger().setLevel(logging.ERROR)  # open_clip and others log with logging.warning(...)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
