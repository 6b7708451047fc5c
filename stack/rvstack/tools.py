"""Tools the services need: Java of a given version, programs on PATH, Maven; HTTP probes."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.error
import urllib.request

from .console import StackError
from .settings import MAVEN_HINT


def java_major(java: str) -> int | None:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def need_tool(service: str, tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise StackError(service, f"`{tool}` is not on PATH; {hint}")
    return path


def maven_command(service: str) -> list[str]:
    """``mvn`` quiet and non-interactive, ready for a goal (fails when Maven is missing)."""
    return [need_tool(service, "mvn", MAVEN_HINT), "-q", "-B"]


def http_status(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """The HTTP status and body of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""
    except (OSError, ValueError):
        return 0, b""
