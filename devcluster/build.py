"""Build the control-plane binaries from Go modules, once, into a cache outside the repo.

There is no Docker here and no prebuilt Kubernetes download, so every binary comes from
the Go module proxy. Each component is built into ``<cache>/<component>/<version>/``;
a file lock stops two processes building the same component at once, and a component
whose binaries are already there costs nothing. ``up`` and ``.ci/run`` call
:func:`ensure_all`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v3.21.4"
VERSITYGW_VERSION = "v1.7.0"


class MissingPrerequisiteError(RuntimeError):
    """A tool the build needs is not installed; the message says what to install."""


def cache_root() -> Path:
    """Where built binaries live; shared by every checkout on the machine."""
    configured = os.environ.get("KUBETUNE_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kubetune"


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return cache_root() / self.name / self.version

    def path(self, binary: str) -> Path:
        return self.directory / binary

    def is_cached(self) -> bool:
        return all(os.access(self.path(b), os.X_OK) for b in self.binaries)


KUBERNETES = Component(
    "kubernetes", KUBERNETES_VERSION, ("kube-apiserver", "kube-controller-manager", "kubectl")
)
ETCD = Component("etcd", ETCD_VERSION, ("etcd",))
HELM = Component("helm", HELM_VERSION, ("helm",))
VERSITYGW = Component("versitygw", VERSITYGW_VERSION, ("versitygw",))
ALL_COMPONENTS = (ETCD, KUBERNETES, HELM, VERSITYGW)


def require_go() -> str:
    go = shutil.which("go")
    if go is None:
        raise MissingPrerequisiteError(
            "Go is not installed: install Go 1.26 or newer (https://go.dev/doc/install) "
            "and put `go` on PATH; devcluster builds Kubernetes, etcd, helm and "
            "versitygw from Go modules."
        )
    return go


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOWORK": "off"})
    env.setdefault("GOPATH", str(Path.home() / "go"))
    env["GOTOOLCHAIN"] = env.get("GOTOOLCHAIN", "local")
    env["PWD"] = str(work)
    return env


def _run(args: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(args, cwd=cwd, env=_go_env(cwd), stdout=out, stderr=out)
    if result.returncode != 0:
        raise RuntimeError(f"build step failed ({' '.join(args[:3])} ...); see {log}")


def _kubernetes_staging_replaces(go: str, version: str, work: Path, log: Path) -> list[str]:
    """Read upstream's go.mod and pin each `./staging/...` module at the matching v0 tag."""
    out = subprocess.run(
        [go, "mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
        cwd=work,
        env=_go_env(work),
        capture_output=True,
        text=True,
        check=True,
    )
    gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
    staging_version = "v0" + version[2:]
    modules = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, re.MULTILINE)
    with log.open("a") as f:
        f.write(f"staging modules: {len(modules)}\n")
    return [f"{m} => {m} {staging_version}" for m in modules]


def _kubernetes_ldflags(version: str) -> str:
    major, minor = version[1:].split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return "-s -w " + " ".join(flags)


def _build_kubernetes(go: str, work: Path, target: Path, log: Path) -> None:
    version = KUBERNETES.version
    replaces = _kubernetes_staging_replaces(go, version, work, log)
    gomod = ["module kubetune.dev/devcluster/kubernetes", "", "go 1.26", ""]
    gomod += [f"require k8s.io/kubernetes {version}", "", "replace ("]
    gomod += [f"\t{r}" for r in replaces] + [")", ""]
    (work / "go.mod").write_text("\n".join(gomod))
    (work / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        '\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n'
        '\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"\n'
        '\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
    )
    _run([go, "mod", "tidy"], work, log)
    ldflags = _kubernetes_ldflags(version)
    for binary in KUBERNETES.binaries:
        _run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                ldflags,
                "-o",
                str(target / binary),
                f"k8s.io/kubernetes/cmd/{binary}",
            ],
            work,
            log,
        )


def _build_single_module(
    go: str,
    work: Path,
    target: Path,
    log: Path,
    package: str,
    module: str,
    version: str,
    binary: str,
) -> None:
    (work / "go.mod").write_text(f"module kubetune.dev/devcluster/{binary}\n\ngo 1.26\n")
    (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{package}"\n')
    _run([go, "get", f"{module}@{version}"], work, log)
    _run([go, "mod", "tidy"], work, log)
    _run(
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(target / binary), package],
        work,
        log,
    )


def _build(component: Component, go: str, work: Path, target: Path, log: Path) -> None:
    if component is KUBERNETES:
        _build_kubernetes(go, work, target, log)
    elif component is ETCD:
        _build_single_module(
            go,
            work,
            target,
            log,
            "go.etcd.io/etcd/server/v3",
            "go.etcd.io/etcd/server/v3",
            ETCD.version,
            "etcd",
        )
    elif component is HELM:
        _build_single_module(
            go,
            work,
            target,
            log,
            "helm.sh/helm/v3/cmd/helm",
            "helm.sh/helm/v3",
            HELM.version,
            "helm",
        )
    elif component is VERSITYGW:
        _build_single_module(
            go,
            work,
            target,
            log,
            "github.com/versity/versitygw/cmd/versitygw",
            "github.com/versity/versitygw",
            VERSITYGW.version,
            "versitygw",
        )
    else:
        raise ValueError(f"unknown component {component.name}")


def ensure(component: Component, progress: bool = True) -> Path:
    """Return the component's cache directory, building it first if it is missing."""
    if component.is_cached():
        return component.directory
    go = require_go()
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f"{component.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if component.is_cached():  # another process finished it while we waited
            return component.directory
        log = root / f"{component.name}-{component.version}.build.log"
        log.write_text("")
        if progress:
            print(
                f"devcluster: building {component.name} {component.version} "
                f"(log: {log}); this happens once per version",
                file=sys.stderr,
                flush=True,
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{component.name}-", dir=root))
        with tempfile.TemporaryDirectory(prefix=f"kubetune-build-{component.name}-") as work:
            try:
                _build(component, go, Path(work), staging, log)
                component.directory.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(component.directory)  # atomic: the cache is complete or absent
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return component.directory


def ensure_all(progress: bool = True) -> dict[str, Path]:
    return {c.name: ensure(c, progress) for c in ALL_COMPONENTS}


def binary(component: Component, name: str) -> Path:
    return ensure(component) / name
