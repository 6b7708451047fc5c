"""The daemons' small HTTP side: /healthz, /metrics, and any routes a daemon adds."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from repovault_daemons._metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # JSON-serialisable, or str for text
    content_type: str = "application/json"


Route = Callable[[Request], Response]


class HttpSide:
    """Serves health and metrics on a background thread; routes are ``(method, path)``."""

    def __init__(self, listen: str, metrics: Metrics) -> None:
        host, _, port = listen.rpartition(":")
        self.healthy: Callable[[], bool] = lambda: True
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/healthz"): lambda _: self._health(),
            ("GET", "/metrics"): lambda _: Response(
                200, metrics.render(), "text/plain; version=0.0.4"
            ),
        }
        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _health(self) -> Response:
        if self.healthy():
            return Response(200, {"status": "ok"})
        return Response(503, {"status": "retrying: a service it needs is unavailable"})

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def add_route(self, method: str, path: str, route: Route) -> None:
        self._routes[(method, path)] = route

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        routes = self._routes

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                route = routes.get((self.command, self.path.split("?", 1)[0]))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if route is None:
                    response = Response(404, {"error": f"no route {self.command} {self.path}"})
                else:
                    request = Request(self.command, self.path, dict(self.headers.items()), body)
                    try:
                        response = route(request)
                    except Exception:  # a failing request must not take the daemon down
                        log.exception("request failed", extra={"path": self.path})
                        response = Response(503, {"error": "temporarily unavailable; try again"})
                payload = (
                    response.body.encode()
                    if isinstance(response.body, str)
                    else json.dumps(response.body).encode()
                )
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve  # BaseHTTPRequestHandler's naming

            def log_message(self, format: str, *args: Any) -> None:
                """Access logs stay off: requests carry bearer tokens in headers."""

        return Handler
