"""Entry point of `python -m kubetune_trainer` (see `kubetune_trainer.cli`)."""

from kubetune_trainer.cli import main

raise SystemExit(main())
