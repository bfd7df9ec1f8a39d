"""The Cinder releases the project supports, and running a script on an older one.

The newest release is the one ``constraints.txt`` pins (the test process runs on it);
every ``constraints-cinderNN.txt`` names an older supported release NN, installed by
``make venv-cinder-NN`` into ``.venv-cinderNN`` with this checkout installed editable, so
a script run by that venv's interpreter uses this tree's code on that Cinder. The
cross-release tests (marker ``cross_release``) make resources there and operate on them
here, or the other way round.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^cinder==(\d+)\.", re.MULTILINE)
#: The line a script prints its result on (one JSON document).
RESULT = "RESULT "


def _pinned(constraints: Path) -> str:
    found = _PIN.search(constraints.read_text())
    if found is None:
        raise RuntimeError(f"{constraints.name} pins no cinder release")
    return found.group(1)


NEWEST = _pinned(REPO / "constraints.txt")
OLDER = sorted(
    (_pinned(path) for path in REPO.glob("constraints-cinder*.txt")), key=int, reverse=True
)


def running_release() -> str:
    """The major release of the Cinder this process imports."""
    return metadata.version("cinder").split(".")[0]


def python(release: str) -> Path:
    """The interpreter of ``release``'s venv; a missing venv fails the test by name."""
    path = REPO / f".venv-cinder{release}" / "bin" / "python"
    if not path.exists():
        pytest.fail(
            f"Cinder {release}'s venv ({path.parents[1]}) is missing: run "
            f"'make venv-cinder-{release}' ('make test' builds it first)"
        )
    return path


def run(release: str, script: Path, payload: dict[str, Any], timeout: float = 300) -> Any:
    """Run ``script payload-json`` on ``release``; its ``RESULT`` line, checked to come
    from that release (the script reports ``cinder``: the version it imported)."""
    env = dict(os.environ, OS_CINDER_DISABLE_EVENTLET_PATCHING="1")
    # -P: the script's own directory is not put first on the path (csi_support holds
    # modules named like libraries Cinder imports: requests).
    proc = subprocess.run(
        [str(python(release)), "-P", str(script), json.dumps(payload)],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{script.name} on Cinder {release}:\n{proc.stderr[-4000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    assert len(lines) == 1, proc.stdout[-4000:]
    result = json.loads(lines[0][len(RESULT) :])
    assert result["cinder"].split(".")[0] == release, result["cinder"]
    return result


def report(result: dict[str, Any]) -> None:
    """For scripts: print the result line, with the Cinder release this ran on."""
    print(RESULT + json.dumps({**result, "cinder": metadata.version("cinder")}), flush=True)
