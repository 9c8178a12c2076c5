"""`python -m kubetune_trainer`: the command the operator's Jobs run.

Reads the trial config (`--config PATH` or `KUBETUNE_TRIAL_CONFIG`), runs the trial, and ends
with an exit code from `kubetune.contract` (0 ok, 2 bad input, 3 training failed, 4 storage
failed, 1 unexpected) and a one-line termination message: the result summary, or the error.
Given several GPUs, the command runs the trial as one process per GPU and reports for them
all (`kubetune_trainer.launch`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kubetune.contract import (
    DEFAULT_TERMINATION_MESSAGE_PATH,
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    TERMINATION_MESSAGE_ENV,
    failure_message,
    termination_summary,
)
from kubetune_trainer.config import load_config
from kubetune_trainer.errors import InputError, TrialError
from kubetune_trainer.launch import is_worker, launch, process_count, worker_message_path
from kubetune_trainer.logs import route_library_logs, set_up_logging

log = logging.getLogger("kubetune_trainer")


def termination_message_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """A launched worker's own file; else the env var's path, else Kubernetes' default if it
    is writable here, else None."""
    worker = worker_message_path(environ)
    if worker is not None:
        return worker
    configured = environ.get(TERMINATION_MESSAGE_ENV)
    if configured:
        return Path(configured)
    default = Path(DEFAULT_TERMINATION_MESSAGE_PATH)
    return default if os.access(default, os.W_OK) else None


def write_termination_message(message: str) -> None:
    path = termination_message_path()
    if path is None:
        return
    try:
        path.write_text(message + "\n", encoding="utf-8")
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", path, error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kubetune_trainer",
        description="Run one Kubetune fine-tuning trial.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="trial config JSON file (default: the KUBETUNE_TRIAL_CONFIG environment variable)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        set_up_logging(args.log_level)
    except ValueError as error:
        message = failure_message(EXIT_BAD_INPUT, str(error))
        print(message, file=sys.stderr)
        write_termination_message(message)
        return EXIT_BAD_INPUT
    try:
        config = load_config(args.config)
        processes = 1 if is_worker() else process_count()
        if processes > 1:
            if config.gradient_cache.enabled:
                raise InputError(
                    f"gradient_cache runs in one process, and this trial has {processes} "
                    "devices: give the trainer one GPU, or turn gradient caching off"
                )
            outcome = launch(processes, sys.argv[1:] if argv is None else argv)
            write_termination_message(outcome.message)
            return outcome.exit_code
        log.info("trial %s/%s (%s)", config.trial.namespace, config.trial.name, config.method)
        route_library_logs()
        from kubetune_trainer.trial import run_trial

        result = run_trial(config)
        if result is None:
            log.info("done; rank 0 reports the result")
            return EXIT_OK
    except TrialError as error:
        message = failure_message(error.exit_code, str(error))
        log.error("%s", message)
        write_termination_message(message)
        return error.exit_code
    except Exception as error:
        log.exception("unexpected failure")
        write_termination_message(
            failure_message(EXIT_INTERNAL_ERROR, f"{type(error).__name__}: {error}")
        )
        return EXIT_INTERNAL_ERROR
    summary = termination_summary(result)
    log.info("%s", summary)
    write_termination_message(summary)
    return EXIT_OK
