"""`python -m devcluster.demo [up|down]` (what `make demo` and `make demo-down` run).

`up` starts (or reuses) a devcluster, installs the CRDs and the Helm chart (its RBAC,
namespaced to the demo's namespace), runs the chart's operator container here as the
release's ServiceAccount, uploads the
packaged all-MiniLM-L6-v2 and the quickstart's Debian slice into the S3 server, applies
`examples/quickstart/`, shows the task's progress in place, and ends with a summary.
Running it again reuses everything and starts no new training.
"""

from __future__ import annotations

import argparse
import sys

from devcluster.demo.run import demo_down, demo_up
from devcluster.state import default_state_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.demo", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["up", "down"], default="up")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the task")
    args = parser.parse_args(argv)
    state_dir = default_state_dir()
    if args.command == "down":
        demo_down(state_dir)
        return 0
    return demo_up(state_dir, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
