"""`python -m kubetune`: run the operator (kopf) with settings from the environment.

Flags mirror what the Helm chart sets: the namespaces to watch (default: all) and the
liveness endpoint. kopf runs standalone: replicas coordinate through a Lease
(`KUBETUNE_LEADER_ELECTION`, see `kubetune.leadership`), not kopf's peering, in which
peers of equal priority all pause.
"""

from __future__ import annotations

import argparse
import os
import socket

import kopf

import kubetune.handlers  # noqa: F401 - registers the handlers with kopf
from kubetune.config import OperatorConfig
from kubetune.contract import LOG_FORMAT_ENV
from kubetune.logs import configure_logging
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
    parser.add_argument(
        "--log-format",
        default=os.environ.get(LOG_FORMAT_ENV) or "text",
        help="text, or json: one JSON object a line (time, level, logger, message, object)",
    )
    args = parser.parse_args(argv)
    # Checked before kopf starts: kopf would retry a failing startup handler every minute,
    # with the operator silent meanwhile. Exiting puts the reason in the Pod's log and its
    # restarts in `kubectl get pods`.
    try:
        configure_logging(args.log_level, args.log_format)
        # the flag, like the variable, also sets the trainers' format
        config = OperatorConfig.from_env({**os.environ, LOG_FORMAT_ENV: args.log_format})
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
        # 65532, or any a platform assigns) has no passwd entry: getpwuid would fail. (Its
        # type, kopf's Identity, is a NewType of str that kopf does not export.)
        identity=os.environ.get("KUBETUNE_POD_NAME") or socket.gethostname(),  # type: ignore[arg-type]
        memo=kopf.Memo(config=config),
    )


if __name__ == "__main__":
    main()
