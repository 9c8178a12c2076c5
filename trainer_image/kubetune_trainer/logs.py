"""The trainer's log: its own lines and the libraries', in one format (text, or JSON lines
with `KUBETUNE_LOG_FORMAT=json`, which the operator passes on from its own setting), without
the libraries' console output that does not belong in a Pod's log.

Called first by `python -m kubetune_trainer`: the variables below are read when MLflow,
huggingface_hub and transformers are imported."""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from kubetune.contract import LOG_FORMAT_ENV
from kubetune.logs import configure_logging

LIBRARY_SETTINGS = {
    # MLflow's lines go through the trainer's handler, in its format.
    "MLFLOW_CONFIGURE_LOGGING": "false",
    # The trainer logs the run's URL itself; MLflow would also print it to stdout.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # The image has no git: GitPython would print 20 lines each time MLflow looks for it.
    "GIT_PYTHON_REFRESH": "quiet",
    # Progress bars redraw with carriage returns, which a Pod's log keeps as one long line.
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


def set_up_logging(level: str, environ: MutableMapping[str, str] = os.environ) -> None:
    """Raises ValueError for a format or level that does not exist."""
    for name, value in LIBRARY_SETTINGS.items():
        environ.setdefault(name, value)
    configure_logging(level, environ.get(LOG_FORMAT_ENV) or "text")
    # MLflow records the source's git commit where there is one; a trial has none.
    logging.getLogger("mlflow.utils.git_utils").setLevel(logging.ERROR)


def route_library_logs() -> None:
    """torch and transformers write through stderr handlers of their own, which their loggers
    do not pass on: send their lines to the root's handler instead, in the log's format."""
    import torch  # noqa: F401 - its import installs its handlers
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    loggers = logging.root.manager.loggerDict
    for name in [n for n in loggers if n == "torch" or n.startswith("torch.")]:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
