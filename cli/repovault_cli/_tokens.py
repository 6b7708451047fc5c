"""Identity on the CLI side: Keycloak's device flow, stored tokens, silent refresh, and
client credentials for cron scripts."""

from __future__ import annotations

import json
import os
import time
import webbrowser
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import platformdirs

from repovault.settings import Settings

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REFRESH_MARGIN_SECONDS = 30


class NotLoggedIn(Exception):
    """No usable credentials; the message says how to get some."""


class LoginFailed(Exception):
    """The device flow ended without tokens (denied, expired, server error)."""


@dataclass(frozen=True)
class StoredTokens:
    issuer: str
    client_id: str
    access_token: str
    refresh_token: str
    expires_at: float
    refresh_expires_at: float  # 0 when the refresh token does not expire (offline token)


@dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


def token_path(settings: Settings) -> Path:
    base = settings.config_dir or platformdirs.user_config_dir("repovault")
    return Path(base) / "tokens.json"


def _endpoint(settings: Settings, name: str) -> str:
    return f"{settings.issuer}/protocol/openid-connect/{name}"


def _post(settings: Settings, name: str, data: dict[str, str]) -> httpx.Response:
    try:
        return httpx.post(_endpoint(settings, name), data=data, timeout=15)
    except httpx.HTTPError as error:
        raise LoginFailed(
            f"cannot reach Keycloak at {settings.keycloak_url} ({type(error).__name__}); "
            "is the stack up (`make status`)?"
        ) from None


def start_device_flow(settings: Settings) -> DeviceCode:
    response = _post(
        settings, "auth/device", {"client_id": settings.cli_client_id, "scope": "openid"}
    )
    if response.status_code != 200:
        raise LoginFailed(f"Keycloak refused the device login: {_error_text(response)}")
    body = response.json()
    return DeviceCode(
        device_code=body["device_code"],
        user_code=body["user_code"],
        verification_uri=body["verification_uri"],
        verification_uri_complete=body.get("verification_uri_complete", body["verification_uri"]),
        expires_in=int(body.get("expires_in", 600)),
        interval=int(body.get("interval", 5)),
    )


def open_browser(url: str) -> bool:
    """Open the verification page where there is a browser; False when there is none."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    try:
        return webbrowser.open(url)
    except webbrowser.Error:
        return False


def poll_device_flow(
    settings: Settings, code: DeviceCode, sleep: Callable[[float], None] = time.sleep
) -> StoredTokens:
    """Poll at the interval the server asks for, slowing down when told to."""
    interval = code.interval
    deadline = time.monotonic() + code.expires_in
    while time.monotonic() < deadline:
        sleep(interval)
        response = _post(
            settings,
            "token",
            {
                "grant_type": DEVICE_GRANT,
                "device_code": code.device_code,
                "client_id": settings.cli_client_id,
            },
        )
        if response.status_code == 200:
            tokens = _stored(settings, response.json())
            save_tokens(settings, tokens)
            return tokens
        error = _error_code(response)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise LoginFailed("the login was denied in the browser; run `rv login` to try again")
        if error == "expired_token":
            break
        raise LoginFailed(f"Keycloak ended the login: {_error_text(response)}")
    raise LoginFailed("the code expired before the login was completed; run `rv login` again")


def access_token(settings: Settings) -> str:
    """A valid access token: client credentials for cron (``RV_CRON_CLIENT_SECRET``),
    otherwise the stored login, refreshed silently when it has expired."""
    if settings.cron_client_id and settings.cron_client_secret:
        response = _post(
            settings,
            "token",
            {
                "grant_type": "client_credentials",
                "client_id": settings.cron_client_id,
                "client_secret": settings.cron_client_secret,
            },
        )
        if response.status_code != 200:
            raise NotLoggedIn(
                f"Keycloak refused the client {settings.cron_client_id}: "
                f"{_error_text(response)}; check RV_CRON_CLIENT_ID and RV_CRON_CLIENT_SECRET"
            )
        return str(response.json()["access_token"])
    tokens = load_tokens(settings)
    if tokens is None:
        raise NotLoggedIn("not logged in; run `rv login`")
    if tokens.expires_at - REFRESH_MARGIN_SECONDS > time.time():
        return tokens.access_token
    return refresh(settings, tokens).access_token


def refresh(settings: Settings, tokens: StoredTokens) -> StoredTokens:
    if tokens.refresh_expires_at and tokens.refresh_expires_at < time.time():
        raise NotLoggedIn("your session has expired; run `rv login`")
    response = _post(
        settings,
        "token",
        {
            "grant_type": "refresh_token",
            "refresh_token": tokens.refresh_token,
            "client_id": tokens.client_id,
        },
    )
    if response.status_code != 200:
        delete_tokens(settings)
        raise NotLoggedIn("your session has ended (logged out or expired); run `rv login`")
    renewed = _stored(settings, response.json())
    save_tokens(settings, renewed)
    return renewed


def logout(settings: Settings) -> bool:
    """End the session at Keycloak and delete the local tokens; False when not logged in."""
    tokens = load_tokens(settings)
    if tokens is None:
        return False
    try:
        _post(
            settings,
            "logout",
            {"client_id": tokens.client_id, "refresh_token": tokens.refresh_token},
        )
        _post(
            settings,
            "revoke",
            {
                "client_id": tokens.client_id,
                "token": tokens.refresh_token,
                "token_type_hint": "refresh_token",
            },
        )
    finally:
        delete_tokens(settings)
    return True


def claims(token: str) -> dict[str, Any]:
    """The token's claims, for display only (the daemons do the verifying)."""
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def _stored(settings: Settings, body: dict[str, Any]) -> StoredTokens:
    now = time.time()
    refresh_in = int(body.get("refresh_expires_in", 0))
    return StoredTokens(
        issuer=settings.issuer,
        client_id=settings.cli_client_id,
        access_token=body["access_token"],
        refresh_token=body.get("refresh_token", ""),
        expires_at=now + int(body.get("expires_in", 60)),
        refresh_expires_at=now + refresh_in if refresh_in else 0,
    )


def save_tokens(settings: Settings, tokens: StoredTokens) -> None:
    """Write atomically, readable by the owner only (0600)."""
    path = token_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(asdict(tokens), handle)
    os.replace(temporary, path)


def load_tokens(settings: Settings) -> StoredTokens | None:
    path = token_path(settings)
    try:
        document = json.loads(path.read_text())
        tokens = StoredTokens(**document)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        raise NotLoggedIn(f"the token file {path} is damaged; run `rv login`") from None
    if tokens.issuer != settings.issuer:
        raise NotLoggedIn(f"logged in to {tokens.issuer}, not {settings.issuer}; run `rv login`")
    return tokens


def delete_tokens(settings: Settings) -> None:
    token_path(settings).unlink(missing_ok=True)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error_description") or body.get("error") or response.status_code)
    except ValueError:
        return f"HTTP {response.status_code}"
