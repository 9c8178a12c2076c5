"""`python -m kubetune`: run the operator (kopf) with settings from the environment.

Flags mirror what the Helm chart sets: the namespaces to watch (default: all) and the
liveness endpoint. kopf runs standalone: replicas coordinate through a Lease
(`KUBETUNE_LEADER_ELECTION`, see `kubetune.leadership`), not kopf's peering, in which
peers of equal priority all pause.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import kopf

import kubetune.handlers  # noqa: F401 - registers the handlers with kopf
from kubetune.config import OperatorConfig
from kubetune.metrics import METRICS


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
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    level = logging.getLevelName(args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if isinstance(level, int) and level >= logging.INFO:
        # kopf logs "Handler ... succeeded" for every watch event (thousands a minute on a
        # busy cluster); its warnings and errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Checked before kopf starts: kopf would retry a failing startup handler every minute,
    # with the operator silent meanwhile. Exiting puts the reason in the Pod's log and its
    # restarts in `kubectl get pods`.
    try:
        config = OperatorConfig.from_env()
    except ValueError as error:
        parser.exit(2, f"kubetune: invalid setting: {error}\n")
    if config.metrics_port:
        try:
            METRICS.serve(config.metrics_port)
        except OSError as error:
            port = config.metrics_port
            parser.exit(1, f"kubetune: cannot serve metrics on port {port}: {error}\n")
    namespaces = args.namespace or list(config.namespaces)
    kopf.run(
        standalone=True,
        namespaces=namespaces,
        clusterwide=not namespaces,
        liveness_endpoint=args.liveness,
        # kopf otherwise names itself after the user, and a pod's numeric user (the image's
        # 65532, or any a platform assigns) has no passwd entry: getpwuid would fail.
        identity=os.environ.get("KUBETUNE_POD_NAME") or socket.gethostname(),
        memo=kopf.Memo(config=config),
    )


if __name__ == "__main__":
    main()
