"""What localstack tells a person: progress on stderr, errors, and secrets kept out of both."""

from __future__ import annotations

import sys
import threading
import time

_T0 = time.monotonic()
_SECRET_VALUES: set[str] = set()
_PRINT_LOCK = threading.Lock()


class StackError(Exception):
    """A failure a person can act on: which service, what went wrong, what to do."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.message = message


def register_secret(value: str) -> None:
    """From now on ``redact`` hides ``value``."""
    _SECRET_VALUES.add(value)


def redact(text: str) -> str:
    """Replace every known secret in ``text`` by ``***`` (logs and errors never show them)."""
    for value in sorted(_SECRET_VALUES, key=len, reverse=True):
        if len(value) >= 6:
            text = text.replace(value, "***")
    return text


def say(message: str) -> None:
    """Progress on stderr, so stdout stays for the answer (start's summary, env, status)."""
    with _PRINT_LOCK:
        print(f"[localstack {time.monotonic() - _T0:6.1f}s] {redact(message)}", file=sys.stderr)


def report_errors(errors: list[StackError]) -> int:
    if not errors:
        return 0
    for exc in errors:
        print(f"localstack: error: {redact(str(exc))}", file=sys.stderr)
    return 1


def print_ok(message: str) -> int:
    say(message)
    return 0
