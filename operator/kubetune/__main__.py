"""`python -m kubetune`: run the operator (kopf) with settings from the environment.

Flags mirror what the Helm chart sets: the namespaces to watch (default: all), the
liveness endpoint, and standalone mode (no peering) for single-replica deployments.
"""

from __future__ import annotations

import argparse
import logging
import os

import kopf

import kubetune.handlers  # noqa: F401 - registers the handlers with kopf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubetune", description=__doc__)
    parser.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("KUBETUNE_LIVENESS_ENDPOINT"),
        help="e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("KUBETUNE_PEERING"),
        help="kopf peering object name; unset: standalone",
    )
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    namespaces = args.namespace or [
        n for n in os.environ.get("KUBETUNE_NAMESPACES", "").split(",") if n
    ]
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
