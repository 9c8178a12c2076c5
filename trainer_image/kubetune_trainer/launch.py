"""One process per GPU: the trial's command launches its own worker processes.

A trainer container given several GPUs runs `python -m kubetune_trainer` as on one GPU; the
command then starts one worker per GPU through PyTorch's elastic launcher (what `torchrun
--standalone --nproc-per-node N` runs), each running the trial as one rank of the process
group, and reports for all of them as one container: the exit code and termination message of
the worker that failed first, or rank 0's summary. So the operator's Jobs, their exit-code
rules and the termination message are the same for one GPU and for eight. `torchrun` itself
would exit 1 for any failed worker, and a bad dataset would then look like a retryable crash.

The process count is `KUBETUNE_PROCESSES` when set (the operator sets it from the GPUs the
trainer asks for), else the number of CUDA devices the container sees, at least one. A
process started by a launcher (`RANK` is set, as `torchrun` sets it) runs its rank of the
trial and launches nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubetune.contract import EXIT_INTERNAL_ERROR, EXIT_OK, EXIT_REASONS, PROCESSES_ENV
from kubetune_trainer.errors import InputError

log = logging.getLogger(__name__)

WORKER_MESSAGES_ENV = "KUBETUNE_WORKER_MESSAGES"
"""Set by the launcher for its workers: the directory where each writes its termination
message (`rank-N`), for the launcher to report one of them."""
THREADS_ENV = "OMP_NUM_THREADS"


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a launcher started this process as one rank of a trial."""
    return "RANK" in environ


def visible_gpus() -> int:
    """The CUDA devices this container sees (torch imported only here, so that a bad config is
    reported before paying for that import)."""
    import torch

    return torch.cuda.device_count()


def process_count(environ: Mapping[str, str] = os.environ, gpus: int | None = None) -> int:
    """How many processes the trial runs: `KUBETUNE_PROCESSES`, else one per visible CUDA
    device (`gpus`, counted when not given), at least one. With GPUs, one each: no more
    processes than GPUs."""
    gpus = visible_gpus() if gpus is None else gpus
    configured = environ.get(PROCESSES_ENV)
    if configured is None:
        return max(1, gpus)
    try:
        count = int(configured)
    except ValueError:
        count = 0
    if count < 1:
        raise InputError(f"{PROCESSES_ENV}={configured!r}: must be a whole number >= 1")
    if 0 < gpus < count:
        raise InputError(f"{PROCESSES_ENV}={count}, but the trainer sees {gpus} GPUs")
    return count


def worker_message_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where this worker writes its termination message, if a launcher started it."""
    directory = environ.get(WORKER_MESSAGES_ENV)
    if directory is None:
        return None
    return Path(directory) / f"rank-{environ.get('RANK', '0')}"


@dataclass(frozen=True)
class LaunchOutcome:
    """The trial's exit code and termination message, as one container reports them."""

    exit_code: int
    message: str


def _threads_per_worker(environ: Mapping[str, str], processes: int) -> str | None:
    """The container's CPU thread budget split among its workers (each would otherwise start
    that many threads), or None when none is set."""
    budget = environ.get(THREADS_ENV)
    if budget is None or not budget.isdigit():
        return None
    return str(max(1, int(budget) // processes))


def _message(directory: Path, rank: int) -> str:
    path = directory / f"rank-{rank}"
    return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def launch(processes: int, argv: Sequence[str]) -> LaunchOutcome:
    """Run `python -m kubetune_trainer ARGV` as `processes` ranks on this machine and wait
    for all of them."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="kubetune-workers-") as scratch:
        directory = Path(scratch)
        overrides = {WORKER_MESSAGES_ENV: scratch}
        threads = _threads_per_worker(os.environ, processes)
        if threads is not None:
            overrides[THREADS_ENV] = threads
        saved = {name: os.environ.get(name) for name in overrides}
        os.environ.update(overrides)  # the workers' environment is a copy of this one
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=processes,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint="localhost:0",
            max_restarts=0,
            monitor_interval=0.5,
        )
        log.info("launching %d processes of the trial", processes)
        try:
            elastic_launch(config, sys.executable)("-m", "kubetune_trainer", *argv)
        except ChildFailedError as error:
            rank, failure = error.get_first_failure()
            code = failure.exitcode if failure.exitcode in EXIT_REASONS else EXIT_INTERNAL_ERROR
            message = _message(directory, rank) or (
                f"trainer process of rank {rank} exited with code {failure.exitcode}"
            )
            return LaunchOutcome(code, message)
        except SignalException as error:
            return LaunchOutcome(128 + int(error.sigval), f"stopped by {error.sigval.name}")
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return LaunchOutcome(EXIT_OK, _message(directory, 0))
