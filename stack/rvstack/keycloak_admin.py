"""Keycloak provisioning through its admin API: rv-cron's secret, the github identity provider."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .config import Config
from .console import StackError, register_secret, say
from .keycloak import import_marks, realm_file
from .settings import CRON_CLIENT_ID, REALM
from .state import load_secrets, store_secret, update_state


def _http_json(
    url: str,
    data: dict[str, str] | None = None,
    token: str | None = None,
    method: str | None = None,
    body: Any = None,
) -> Any:
    headers = {"Accept": "application/json"}
    payload: bytes | None = None
    if data is not None:
        payload = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=payload, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def provision_keycloak(cfg: Config, creds: dict[str, str]) -> None:
    """Read rv-cron's generated secret; configure the github identity provider from the env."""
    base = f"http://127.0.0.1:{cfg.kc_port}"
    try:
        discovery = _http_json(f"{base}/realms/{REALM}/.well-known/openid-configuration")
        if discovery.get("issuer") != f"{base}/realms/{REALM}":
            raise StackError(
                "keycloak",
                f"issuer is {discovery.get('issuer')!r}, expected {base}/realms/{REALM}; "
                f"see {cfg.log('keycloak')}",
            )
        token = _http_json(
            f"{base}/realms/master/protocol/openid-connect/token",
            data={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": creds["keycloak_admin_user"],
                "password": creds["keycloak_admin_password"],
            },
        )["access_token"]
        admin = f"{base}/admin/realms/{REALM}"
        clients = _http_json(
            f"{admin}/clients?clientId={urllib.parse.quote(CRON_CLIENT_ID)}", token=token
        )
        if not clients:
            raise StackError(
                "keycloak",
                f"realm {REALM} has no client {CRON_CLIENT_ID}: check {realm_file(cfg)}",
            )
        secret = _http_json(f"{admin}/clients/{clients[0]['id']}/client-secret", token=token)
        value = secret.get("value") if isinstance(secret, dict) else None
        if not value:
            raise StackError("keycloak", f"{CRON_CLIENT_ID} has no client secret in Keycloak")
        if load_secrets(cfg, create=False).get("rv_cron_client_secret") != value:
            store_secret(cfg, "rv_cron_client_secret", value)
        idp = _http_json(f"{admin}/identity-provider/instances/github", token=token)
        client_id = os.environ.get("RV_GITHUB_CLIENT_ID", "").strip()
        client_secret = os.environ.get("RV_GITHUB_CLIENT_SECRET", "").strip()
        if client_id and client_secret:
            register_secret(client_secret)
            idp["enabled"] = True
            idp.setdefault("config", {}).update(clientId=client_id, clientSecret=client_secret)
            _http_json(
                f"{admin}/identity-provider/instances/github", token=token, method="PUT", body=idp
            )
            say("keycloak: github identity provider configured and enabled")
        elif idp.get("enabled"):
            idp["enabled"] = False
            _http_json(
                f"{admin}/identity-provider/instances/github", token=token, method="PUT", body=idp
            )
            say("keycloak: github identity provider disabled (RV_GITHUB_CLIENT_ID/SECRET unset)")
    except urllib.error.HTTPError as exc:
        hint = (
            " (the bootstrap admin password does not match .stack/secrets.json: stop the stack "
            "and delete .stack/state.json so the Keycloak database is recreated)"
            if exc.code == 401
            else ""
        )
        raise StackError(
            "keycloak",
            f"admin API call {exc.url} answered {exc.code}{hint}; see {cfg.log('keycloak')}",
        ) from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(
            "keycloak",
            f"provisioning through the admin API failed: {exc}; see {cfg.log('keycloak')}",
        ) from exc
    update_state(
        cfg, **import_marks(realm_file(cfg).read_bytes(), creds["keycloak_admin_password"])
    )
    say("keycloak: realm rv ready, rv-cron client secret stored")
