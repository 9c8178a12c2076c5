"""``python -m devcluster up | down | env | status | logs POD | build | image``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devcluster import build, cluster, images
from devcluster.nodeagent.pods import find_log
from devcluster.processes import ComponentFailedError, is_alive
from devcluster.state import ClusterInfo, default_state_dir


def _load_running(state_dir: Path) -> ClusterInfo:
    info = ClusterInfo.load(state_dir)
    if info is None:
        sys.exit(f"no devcluster in {state_dir}: run `python -m devcluster up` first")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the cluster keeps its files (env DEVCLUSTER_STATE_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start (or reuse) a devcluster")
    up.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu capacity of the node")
    commands.add_parser("down", help="stop every process and remove the state directory")
    commands.add_parser("env", help="print the env file: source <(python -m devcluster env)")
    commands.add_parser("status", help="print each component and whether it runs")
    commands.add_parser("build", help="build (or find cached) every binary and print paths")
    image = commands.add_parser(
        "image", help="build images with buildah (no Docker engine needed) and print their names"
    )
    image.add_argument(
        "names", nargs="*", metavar="NAME", help=f"{', '.join(images.RECIPES)} (default: all)"
    )
    image.add_argument(
        "--python-image",
        help="the Dockerfile's PYTHON_IMAGE; default: one bootstrapped from Debian packages",
    )
    logs = commands.add_parser("logs", help="print a pod's container log")
    logs.add_argument("pod")
    logs.add_argument("-n", "--namespace", default="default")
    args = parser.parse_args(argv)
    if args.command == "image" and set(args.names) - set(images.RECIPES):
        parser.error(f"image: choose from {', '.join(images.RECIPES)}")
    state_dir: Path = args.state_dir

    try:
        if args.command == "build":
            for name, path in build.ensure_all().items():
                print(f"{name}\t{path}")
        elif args.command == "image":
            for name in args.names or images.RECIPES:
                print(images.build_image(images.RECIPES[name], python_image=args.python_image))
        elif args.command == "up":
            info = cluster.up(state_dir, gpus=args.gpus)
            print(
                f"devcluster {info.kubernetes_version} is up; state in {state_dir}", file=sys.stderr
            )
            print(f"  source {info.env_file}", file=sys.stderr)
        elif args.command == "down":
            cluster.down(state_dir)
        elif args.command == "env":
            print(_load_running(state_dir).env_file.read_text(), end="")
        elif args.command == "status":
            info = _load_running(state_dir)
            report = {
                name: "running" if is_alive(pid) else "stopped"
                for name, pid in info.processes.items()
            }
            print(
                json.dumps(
                    {
                        "state_dir": str(state_dir),
                        "apiserver": info.apiserver_url,
                        "s3": info.s3_endpoint,
                        "mlflow": info.mlflow_uri,
                        "components": report,
                    },
                    indent=2,
                )
            )
            return 0 if cluster.is_running(info) else 1
        elif args.command == "logs":
            path = find_log(state_dir, args.namespace, args.pod)
            if path is None:
                print(f"no log for pod {args.namespace}/{args.pod}", file=sys.stderr)
                return 1
            sys.stdout.write(path.read_text(errors="replace"))
    except (build.MissingPrerequisiteError, ComponentFailedError, images.ImageError) as error:
        print(f"devcluster: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
