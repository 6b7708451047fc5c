"""Verifying who submits: Keycloak access tokens checked against the realm's published keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt


class Unauthenticated(Exception):
    """The token is missing, forged, expired or meant for someone else (HTTP 401)."""


class Forbidden(Exception):
    """The token is genuine but lacks the role the action needs (HTTP 403)."""

    def __init__(self, username: str, role: str) -> None:
        super().__init__(f"user {username} lacks the role {role}")
        self.username = username


@dataclass(frozen=True)
class Identity:
    subject: str
    username: str
    roles: frozenset[str]


class TokenVerifier:
    """Checks signature (JWKS, cached), issuer, audience, expiry and the required role."""

    def __init__(self, issuer: str, audience: str, required_role: str) -> None:
        self._issuer = issuer
        self._audience = audience
        self._required_role = required_role
        self._keys = jwt.PyJWKClient(
            f"{issuer}/protocol/openid-connect/certs", cache_keys=True, lifespan=300
        )

    def verify(self, token: str, *extra_roles: str) -> Identity:
        """The identity the token proves, if it holds the required role and ``extra_roles``."""
        claims = self._claims(token)
        roles = frozenset(claims.get("realm_access", {}).get("roles", []))
        username = str(claims.get("preferred_username") or claims["sub"])
        for role in (self._required_role, *extra_roles):
            if role not in roles:
                raise Forbidden(username, role)
        return Identity(subject=str(claims["sub"]), username=username, roles=roles)

    def _claims(self, token: str) -> dict[str, Any]:
        try:
            key = self._keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as error:
            raise Unauthenticated(f"token not signed by a key of {self._issuer}: {error}") from None
        except jwt.DecodeError:
            raise Unauthenticated("not a JSON Web Token") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "PS256"],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired; log in again (`rv login`)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"token is not meant for {self._audience}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"token was not issued by {self._issuer}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"invalid token: {error}") from None
        return claims
