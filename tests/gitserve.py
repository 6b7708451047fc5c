"""Git repositories made by the tests, served on loopback through `git daemon` and
through git's smart HTTP protocol (`git http-backend` behind a small HTTP server)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RepoFactory:
    """Builds source repositories as bare repos under ``root`` (the served directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root.parent / "work"
        self.work.mkdir(exist_ok=True)

    def create(
        self,
        name: str,
        files: dict[str, bytes | str] | None = None,
        symlinks: dict[str, str] | None = None,
        branches: int = 0,
        tags: int = 0,
        empty: bool = False,
    ) -> Path:
        """A bare repository ``name.git`` with one commit of ``files`` on main (unless
        ``empty``), plus extra branches and annotated tags."""
        bare = self.root / f"{name}.git"
        git("init", "--quiet", "--bare", "-b", "main", str(bare))
        if empty:
            return bare
        work = self.work / name
        git("init", "--quiet", "-b", "main", str(work))
        for path, content in (files or {"README.md": f"# {name}\n"}).items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        for path, link_target in (symlinks or {}).items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link_target, work / path)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", "first", cwd=work)
        for index in range(branches):
            git("checkout", "--quiet", "-b", f"branch-{index}", "main", cwd=work)
            (work / f"branch-{index}.txt").write_text(f"branch {index}\n")
            git("add", "-A", cwd=work)
            git("commit", "--quiet", "-m", f"branch {index}", cwd=work)
        git("checkout", "--quiet", "main", cwd=work)
        for index in range(tags):
            git("tag", "-a", f"v{index}.0", "-m", f"release {index}", cwd=work)
            if index % 2 == 0:
                git("tag", f"light-{index}", cwd=work)
        git("push", "--quiet", "--all", str(bare), cwd=work)
        git("push", "--quiet", "--tags", str(bare), cwd=work)
        return bare

    def commit(self, name: str, path: str, content: str) -> None:
        """Add a commit to an existing repository's main branch."""
        work = self.work / name
        (work / path).write_text(content)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "-m", f"change {path}", cwd=work)
        git("push", "--quiet", str(self.root / f"{name}.git"), "main", cwd=work)

    def delete(self, name: str) -> None:
        shutil.rmtree(self.root / f"{name}.git")


def refs_of(repo: Path) -> dict[str, str]:
    """Branches and tags with the objects they point at (tags not peeled)."""
    out = git(
        "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags", cwd=repo
    )
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


class GitDaemon:
    """`git daemon` serving every repository under ``root`` at git://127.0.0.1:PORT/."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                f"--base-path={root}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port)

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class SmartHttp:
    """`git http-backend` behind a threaded HTTP server; optional basic auth."""

    def __init__(
        self, root: Path, credentials: tuple[str, str] | None = None, delay: float = 0
    ) -> None:
        self.requests: list[dict[str, str]] = []
        handler = _http_backend_handler(root, credentials, self.requests, delay)
        self.server = _QuietServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up (a killed worker) are expected here."""


def _http_backend_handler(
    root: Path, credentials: tuple[str, str] | None, seen: list[dict[str, str]], delay: float
) -> type[BaseHTTPRequestHandler]:
    expected = None
    if credentials:
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            time.sleep(delay)
            if expected and self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self._body()
            path, _, query = self.path.partition("?")
            env = {
                "PATH": os.environ["PATH"],
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": "127.0.0.1",
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            }
            result = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True
            )
            head, _, payload = result.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode().split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def iter_files(tree: Path) -> Iterator[tuple[str, bytes | str]]:
    """Files of a checkout (not .git): symlinks as ('link', target), files as bytes."""
    for path in sorted(tree.rglob("*")):
        if ".git" in path.relative_to(tree).parts:
            continue
        relative = str(path.relative_to(tree))
        if path.is_symlink():
            yield relative, "link:" + os.readlink(path)
        elif path.is_file():
            yield relative, path.read_bytes()
