"""The trainer's log holds only lines in its format: torch's and transformers' included."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from kubetune_trainer.logs import route_library_logs, set_up_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ["", "torch", "torch._dynamo", "transformers"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    level, hooks = logging.getLogger().level, (sys.excepthook, threading.excepthook)
    yield
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate
    logging.getLogger().setLevel(level)
    sys.excepthook, threading.excepthook = hooks
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_logging")
def test_torch_and_transformers_lines_come_out_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    environ: dict[str, str] = {"KUBETUNE_LOG_FORMAT": "json"}
    set_up_logging("INFO", environ)
    route_library_logs()
    logging.getLogger("torch._dynamo").warning("recompiling")
    logging.getLogger("transformers.modeling_utils").warning("weights not used")
    logging.getLogger("mlflow.utils.git_utils").warning("no git")  # expected in the image
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["logger"], e["message"]) for e in entries] == [
        ("torch._dynamo", "recompiling"),
        ("transformers.modeling_utils", "weights not used"),
    ]
    assert environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
