"""Completing Keycloak's device flow without a browser: open the verification page, post
the login form, accept the grant page. Forms are parsed generically (themes change)."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, object]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "form":
            self.forms.append({"action": values.get("action", ""), "inputs": {}, "buttons": {}})
        elif self.forms and tag in ("input", "button") and values.get("name"):
            kind = "buttons" if tag == "button" or values.get("type") == "submit" else "inputs"
            target = self.forms[-1][kind]
            assert isinstance(target, dict)
            target[values["name"]] = values.get("value", "")


def _form(page: httpx.Response) -> tuple[str, dict[str, str], dict[str, str]]:
    parser = _Forms()
    parser.feed(page.text)
    if not parser.forms:
        raise AssertionError(f"no form on {page.url}: {page.text[:500]}")
    form = parser.forms[0]
    action = urljoin(str(page.url), str(form["action"]).replace("&amp;", "&"))
    return action, dict(form["inputs"]), dict(form["buttons"])  # type: ignore[call-overload]


class _Browser:
    """Follows redirects and keeps cookies, including `Secure` ones on loopback http as real
    browsers do for 127.0.0.1 (httpx's cookie jar would drop them)."""

    def __init__(self) -> None:
        self._client = httpx.Client(timeout=30)
        self._cookies: dict[str, str] = {}

    def __enter__(self) -> _Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def get(self, url: str) -> httpx.Response:
        return self._request("GET", url)

    def post(self, url: str, data: dict[str, str]) -> httpx.Response:
        return self._request("POST", url, data)

    def _request(self, method: str, url: str, data: dict[str, str] | None = None) -> httpx.Response:
        for _ in range(10):
            cookie = "; ".join(f"{k}={v}" for k, v in self._cookies.items())
            response = self._client.request(
                method, url, data=data, headers={"Cookie": cookie} if cookie else {}
            )
            for header in response.headers.get_list("set-cookie"):
                name, _, rest = header.partition("=")
                self._cookies[name.strip()] = rest.split(";", 1)[0]
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            url = urljoin(str(response.url), response.headers["location"])
            method, data = "GET", None
        raise AssertionError(f"too many redirects at {url}")


def approve_device(
    verification_uri_complete: str, username: str, password: str, grant: bool = True
) -> str:
    """Log in as ``username`` on the device page and grant (or deny) the access asked for;
    return the text of the last page."""
    with _Browser() as browser:
        page = browser.get(verification_uri_complete)
        action, inputs, _ = _form(page)
        if "username" not in inputs and "password" not in inputs:
            # A page that asks for the user code first (verification_uri without code).
            page = browser.post(action, data=inputs)
            action, inputs, _ = _form(page)
        page = browser.post(action, data={**inputs, "username": username, "password": password})
        if "accept" in page.text or "Grant" in page.text or "grant" in page.text:
            action, inputs, buttons = _form(page)
            button = "accept" if grant else "cancel"
            choice = {k: v for k, v in buttons.items() if k == button} or {button: "Yes"}
            page = browser.post(action, data={**inputs, **choice})
        if grant:
            assert page.status_code == 200, page.text[:500]
            assert "invalid" not in page.text.lower() or "success" in page.text.lower(), page.text[
                :800
            ]
        return page.text
