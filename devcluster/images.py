"""Container images on this machine, without a Docker engine: buildah builds and runs them.

The trainer and operator images are built from their Dockerfiles as they are. Their base,
python:3.11-slim-bookworm, lives in a container registry; where none is reachable (as
here), the base is bootstrapped from Debian bookworm's own packages with mmdebstrap and
given what the Dockerfile relies on: `python` 3.11 with `venv`, pip and the headers,
apt-get and useradd. Builds keep their layers (`--layers`), so a rebuild after a change to
Kubetune's code reuses the trainer's 6 GB dependency layer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_PYTHON_IMAGE = "localhost/kubetune-python:3.11-bookworm"
_BASE_SUITE = "bookworm"
_BASE_PACKAGES = ("python3", "python3-venv", "python3-dev", "python-is-python3", "ca-certificates")
_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# The CA bundle every Debian-based image has; a build gets the host's mounted over it.
_IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The host's bundle: the first of these variables that names a file, else Debian's place.
_HOST_CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
_HOST_CA_DEFAULT = Path(_IMAGE_CA_BUNDLE)


@dataclass(frozen=True)
class ImageRecipe:
    """A Dockerfile of this repository and the local name of the image it builds."""

    dockerfile: Path
    tag: str
    dependencies_tag: str | None = None
    """The name kept by the Dockerfile's `dependencies` stage, where it has one."""


TRAINER = ImageRecipe(
    REPO_ROOT / "trainer_image" / "Dockerfile",
    "localhost/kubetune-trainer:dev",
    dependencies_tag="localhost/kubetune-trainer-dependencies:dev",
)
OPERATOR = ImageRecipe(REPO_ROOT / "operator" / "Dockerfile", "localhost/kubetune-operator:dev")
RECIPES = {"trainer": TRAINER, "operator": OPERATOR}


class ImageError(RuntimeError):
    """A tool is missing, or buildah or mmdebstrap failed; the message says which and why."""


@dataclass(frozen=True)
class Mount:
    """A host path bound into a container."""

    source: Path
    target: str
    read_only: bool = True

    def option(self) -> str:
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ImageError(f"{tool} is not installed (apt-get install {tool}; .ci/setup does)")
    return path


def _buildah(*args: str, log: TextIO | None = None) -> str:
    """Runs buildah; returns its stdout, or streams everything to `log` when given."""
    command = [_require("buildah"), *args]
    if log is not None:
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
        if completed.returncode != 0:
            raise ImageError(f"buildah {args[0]} failed ({completed.returncode}); see its log")
        return ""
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise ImageError(
            f"buildah {' '.join(args[:2])} failed ({completed.returncode}): "
            f"{completed.stderr.strip()[-2000:]}"
        )
    return completed.stdout


def image_exists(name: str) -> bool:
    buildah = _require("buildah")
    completed = subprocess.run(
        [buildah, "inspect", "--type", "image", name], capture_output=True, check=False
    )
    return completed.returncode == 0


def image_config(name: str) -> dict[str, Any]:
    """The image's OCI config: Entrypoint, Cmd, User, Env, WorkingDir, Labels."""
    config: dict[str, Any] = json.loads(_buildah("inspect", "--type", "image", name))["OCIv1"][
        "config"
    ]
    return config


def ensure_local_python_image(log: TextIO = sys.stderr) -> str:
    """The stand-in for python:3.11-slim-bookworm, bootstrapped once and then reused."""
    if image_exists(LOCAL_PYTHON_IMAGE):
        return LOCAL_PYTHON_IMAGE
    mmdebstrap = _require("mmdebstrap")
    with tempfile.TemporaryDirectory(prefix="kubetune-base-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        print(f"images: bootstrapping {LOCAL_PYTHON_IMAGE} from Debian packages", file=log)
        log.flush()
        completed = subprocess.run(
            [
                mmdebstrap,
                "--variant=minbase",
                f"--include={','.join(_BASE_PACKAGES)}",
                _BASE_SUITE,
                str(rootfs),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if completed.returncode != 0:
            raise ImageError(f"mmdebstrap failed ({completed.returncode}); see its log")
        container = _buildah("from", "scratch").strip()
        try:
            _buildah("add", container, str(rootfs), "/")
            config = [f"--env={name}={value}" for name, value in _BASE_ENV.items()]
            _buildah("config", *config, "--cmd", "python3", container)
            _buildah("commit", "--quiet", container, LOCAL_PYTHON_IMAGE)
        finally:
            _buildah("rm", container)
    return LOCAL_PYTHON_IMAGE


def _host_ca_bundle() -> Path | None:
    for variable in _HOST_CA_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return _HOST_CA_DEFAULT if _HOST_CA_DEFAULT.is_file() else None


def _build_trust_options() -> list[str]:
    """The host's CA bundle over the image's, and pip pointed at it, for the build only.

    Where egress passes a TLS-inspecting proxy, only the host's bundle trusts it. Mounted
    over a file the base already has, it leaves nothing behind in the image's layers.
    """
    bundle = _host_ca_bundle()
    if bundle is None:
        return []
    return [
        f"--volume={Mount(bundle, _IMAGE_CA_BUNDLE).option()}",
        f"--build-arg=PIP_CERT={_IMAGE_CA_BUNDLE}",
    ]


def build_image(
    recipe: ImageRecipe, python_image: str | None = None, log: TextIO = sys.stderr
) -> str:
    """Builds the recipe's Dockerfile from the repository root; returns the image's tag."""
    base = python_image or ensure_local_python_image(log)
    options = [
        "--layers",
        # A failed build's containers go too: each may hold gigabytes.
        "--force-rm",
        "--isolation=chroot",
        "--network=host",
        f"--build-arg=PYTHON_IMAGE={base}",
        *_build_trust_options(),
        f"--file={recipe.dockerfile}",
    ]
    print(f"images: building {recipe.tag} on {base}", file=log)
    if recipe.dependencies_tag:
        # Named, the dependency stage's layers survive the pruning below of what earlier
        # builds left (gigabytes each time the dependencies change).
        _buildah(
            "bud",
            *options,
            "--target=dependencies",
            f"--tag={recipe.dependencies_tag}",
            str(REPO_ROOT),
            log=log,
        )
    _buildah("bud", *options, f"--tag={recipe.tag}", str(REPO_ROOT), log=log)
    _prune(log)
    return recipe.tag


def _prune(log: TextIO) -> None:
    """Removes the images no name or newer layer refers to. Best effort: an image that a
    container still uses (one a killed run left) stays, and the build stands."""
    log.flush()
    completed = subprocess.run(
        [_require("buildah"), "rmi", "--prune"], stdout=log, stderr=subprocess.STDOUT, check=False
    )
    if completed.returncode != 0:
        print("images: some unused images stay (see above); the build stands", file=log)


def create_container(image: str, name: str | None = None) -> str:
    """A fresh working container of a local image (never pulled); returns its name or id."""
    named = [f"--name={name}"] if name else []
    return _buildah("from", "--quiet", "--pull=never", *named, image).strip()


def remove_container(container: str) -> None:
    """Removes a working container; one already gone is fine."""
    buildah = _require("buildah")
    subprocess.run([buildah, "rm", container], capture_output=True, check=False)


@contextmanager
def container_of(image: str) -> Iterator[str]:
    """A fresh working container of a local image, removed afterwards."""
    container = create_container(image)
    try:
        yield container
    finally:
        remove_container(container)


def run_command(
    image: str,
    container: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    mounts: Sequence[Mount] = (),
    user: str | None = None,
    working_dir: str | None = None,
) -> list[str]:
    """The command that runs `argv` in `container` on the host's network, with only the
    image's and the given environment, as `user` in `working_dir` (default: the image's)."""
    config = image_config(image)
    user = user or config.get("User")
    working_dir = working_dir or config.get("WorkingDir")
    return [
        _require("buildah"),
        "run",
        "--isolation=chroot",
        "--network=host",
        *(f"--volume={mount.option()}" for mount in mounts),
        *(f"--env={name}={value}" for name, value in env.items()),
        *([f"--user={user}"] if user else []),
        *([f"--workingdir={working_dir}"] if working_dir else []),
        container,
        "--",
        *argv,
    ]


def run_in_image(
    image: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    mounts: Sequence[Mount] = (),
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `argv` to its end in a fresh container of `image` (see `run_command`)."""
    with container_of(image) as container:
        return subprocess.run(
            run_command(image, container, argv, env, mounts),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
