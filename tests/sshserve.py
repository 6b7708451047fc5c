"""A local sshd on a loopback port, serving the test repositories over SSH."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.gitserve import _wait_for_port, free_port

SSHD = "/usr/sbin/sshd"


def keypair(path: Path) -> Path:
    """An ed25519 key pair without passphrase; returns the private key's path."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


class SshServer:
    """sshd accepting ``client_key`` for the current user, on 127.0.0.1:PORT."""

    def __init__(self, base: Path, client_key: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.host_key = keypair(base / "host_key")
        authorized = base / "authorized_keys"
        authorized.write_text(Path(f"{client_key}.pub").read_text())
        authorized.chmod(0o600)
        self.port = free_port()
        config = base / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {authorized}\nPidFile {base / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self.log = base / "sshd.log"
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stderr=self.log.open("wb")
        )
        _wait_for_port(self.port)
        time.sleep(0.2)

    def known_hosts_line(self) -> str:
        key_type, key = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key}\n"

    def url(self, repo: Path, user: str) -> str:
        return f"ssh://{user}@127.0.0.1:{self.port}{repo}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
