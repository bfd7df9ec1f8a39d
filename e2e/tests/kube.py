"""kubectl and helm as a user runs them, with waits that say what they waited for.

Why: the end-to-end tests drive the cluster only through its public tools, and a
failure must read like a report ("PVC e2e/data not Bound after 120 s: phase Pending,
events: ...") rather than a timeout. Nothing here knows the plugin's internals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml


class KubeError(AssertionError):
    """A command failed or a wait ran out; the message carries what was seen last."""


class Tool:
    """One command-line tool (kubectl or helm) with fixed leading arguments."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.env = env

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        command = [*self.argv, *args]
        try:
            done = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            shown = " ".join(command[1:4])
            raise KubeError(f"{shown} ... timed out after {timeout:.0f} s") from None
        if check and done.returncode != 0:
            raise KubeError(
                f"`{' '.join(args)}` exited with {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done


class Kubectl(Tool):
    """kubectl against one cluster; ``namespace`` is the default for namespaced calls."""

    def __init__(self, kubectl: str, kubeconfig: str, env: dict[str, str], namespace: str) -> None:
        super().__init__([kubectl, f"--kubeconfig={kubeconfig}"], env)
        self.namespace = namespace

    def apply(self, *objects: dict[str, Any]) -> None:
        text = yaml.safe_dump_all(objects, sort_keys=False)
        self.run("apply", "-n", self.namespace, "-f", "-", stdin=text)

    def _scope(self, namespaced: bool, namespace: str | None) -> list[str]:
        """``-n`` for a namespaced kind: ``namespace``, else the default one."""
        return ["-n", namespace or self.namespace] if namespaced else []

    def get(
        self,
        kind: str,
        name: str | None = None,
        *,
        namespaced: bool = True,
        namespace: str | None = None,
    ) -> Any:
        """The object (or the list when ``name`` is None), None when it does not exist."""
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        args += self._scope(namespaced, namespace)
        done = self.run(*args, check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise KubeError(f"kubectl get {kind} {name or ''}: {done.stderr.strip()}")
        data = json.loads(done.stdout)
        return data["items"] if name is None else data

    def names(
        self,
        kind: str,
        *,
        namespaced: bool = True,
        namespace: str | None = None,
        selector: str = "",
    ) -> list[str]:
        args = ["get", kind, "-o", "name", *self._scope(namespaced, namespace)]
        args += ["-l", selector] if selector else []
        return [n for n in self.run(*args).stdout.split() if n]

    def delete(self, kind: str, *names: str, wait: bool = True, timeout: float = 180) -> None:
        self.run(
            "delete", kind, *names, "-n", self.namespace, "--ignore-not-found",
            f"--wait={str(wait).lower()}", f"--timeout={int(timeout)}s",
            timeout=timeout + 30,
        )  # fmt: skip

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> None:
        self.run("patch", kind, name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch))

    def logs(self, pod: str, container: str | None = None) -> str:
        args = ["logs", pod, "-n", self.namespace]
        args += ["-c", container] if container else []
        return self.run(*args).stdout

    def exec(self, pod: str, *command: str) -> str:
        return self.run("exec", pod, "-n", self.namespace, "--", *command).stdout

    def events(self, kind: str, name: str) -> str:
        """The object's events, oldest first, one line each (for failure messages)."""
        done = self.run(
            "get", "events", "-n", self.namespace,
            "--field-selector", f"involvedObject.kind={kind},involvedObject.name={name}",
            "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
            check=False,
        )  # fmt: skip
        return done.stdout.strip() or "(no events)"

    def wait_for(
        self,
        what: str,
        check: Callable[[], Any],
        *,
        timeout: float = 180,
        interval: float = 1.0,
        explain: Callable[[], str] | None = None,
    ) -> Any:
        """Poll ``check`` until it returns something truthy; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            last = check()
            if last:
                return last
            if time.monotonic() > deadline:
                detail = explain() if explain else ""
                raise KubeError(f"{what}: not reached after {timeout:.0f} s. {detail}".strip())
            time.sleep(interval)


def pod_phase(kubectl: Kubectl, name: str) -> str:
    pod = kubectl.get("pod", name)
    return pod["status"].get("phase", "") if pod else "Gone"


def save_logs(kubectl: Kubectl, directory: Path) -> list[Path]:
    """Every container's log (current and previous) and a description of every pod."""
    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    pods = kubectl.run("get", "pods", "-A", "-o", "json", check=False)
    items = json.loads(pods.stdout).get("items", []) if pods.returncode == 0 else []
    for pod in items:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for container in pod["spec"].get("containers", []):
            for previous in (False, True):
                args = ["logs", name, "-n", ns, "-c", container["name"]]
                done = kubectl.run(*args, *(["--previous"] if previous else []), check=False)
                if done.stdout:
                    suffix = ".previous" if previous else ""
                    path = directory / f"{ns}.{name}.{container['name']}{suffix}.log"
                    path.write_text(done.stdout)
                    saved.append(path)
    described = kubectl.run("describe", "pods,pvc,pv,volumesnapshots", "-A", check=False)
    path = directory / "describe.txt"
    path.write_text(described.stdout + described.stderr)
    saved.append(path)
    return saved


def save_cluster_logs(kubectl: Kubectl | None, state: Path, folder: Path) -> None:
    """Pod logs (when the API server still answers) and every log the cluster harness
    keeps under its state directory, copied to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if kubectl is not None:
        try:
            save_logs(kubectl, folder / "pods")
        except Exception as exc:  # the cluster may be what failed
            (folder / "pods-error.txt").write_text(f"could not collect pod logs: {exc}\n")
    for logs in state.glob("**/logs"):
        if logs.is_dir():
            shutil.copytree(logs, folder / logs.relative_to(state), dirs_exist_ok=True)
