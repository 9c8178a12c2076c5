"""Kubetune's trainer: runs one fine-tuning trial of a text embedding model.

The operator starts `python -m kubetune_trainer` in a Job with a `kubetune.contract.TrialConfig`;
`kubetune_trainer.trial.run_trial` does the work and returns a `TrialResult`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kubetune")
except PackageNotFoundError:
    __version__ = "0+unknown"
