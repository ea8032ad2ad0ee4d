"""A real OpenID Connect provider for the tests: ``oauth2-mock-server`` from the npm registry
(pinned in ``testkit/node/package.json``), run with the system's node by
``testkit/node/oidc-provider.mjs`` on a free port, stopped by its pid.

``npm ci`` installs it into ``testkit/node/node_modules`` (git-ignored) when it is missing."""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from testkit import processes
from testkit.net import free_port

NODE_DIR = Path(__file__).resolve().parent / "node"
PACKAGE = NODE_DIR / "node_modules" / "oauth2-mock-server" / "package.json"


def install() -> str | None:
    """Install the provider with ``npm ci`` if needed; None when it is there, else why not."""
    if PACKAGE.is_file():
        return None
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        return "node and npm are needed for the OIDC provider (apt-get install nodejs npm)"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0 or not PACKAGE.is_file():
        return f"npm ci in {NODE_DIR} failed: {result.stderr.strip()[-500:]}"
    return None


@dataclass
class MockIssuer:
    """A running provider: its issuer URL, its current key id, and control of its tokens."""

    process: subprocess.Popen[str]
    url: str
    kid: str

    def token(self, grant_type: str = "client_credentials", **claims: Any) -> str:
        """An access token the provider signs (client credentials grant) with ``claims``
        added or overriding its own (``iss``, ``aud``, ``exp``, ...)."""
        form = {"grant_type": grant_type, "claims": json.dumps(claims)}
        response = httpx.post(f"{self.url}/token", data=form, timeout=10)
        response.raise_for_status()
        return str(response.json()["access_token"])

    def set_claims(self, claims: dict[str, Any]) -> None:
        """Claims added to every token from now on (also those of the code flow)."""
        self._command({"claims": claims})

    def rotate(self) -> str:
        """A new signing key (published beside the old one, used for the next token)."""
        answer = self._command({"rotate": True})
        self.kid = answer.split()[1]
        return self.kid

    def _command(self, command: dict[str, Any]) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return _read_line(self.process, timeout=10)

    def stop(self) -> None:
        """Stop the provider (by its pid)."""
        processes.stop(self.process)


def start_issuer(timeout: float = 30) -> MockIssuer:
    """Start the provider on a free 127.0.0.1 port and wait until it listens."""
    port = free_port()
    process: subprocess.Popen[str] = processes.spawn(
        ["node", str(NODE_DIR / "oidc-provider.mjs"), str(port)],
        cwd=NODE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(process, timeout)
        word, url, kid = line.split()
        assert word == "ready", line
    except BaseException:
        processes.stop(process)
        raise
    return MockIssuer(process, url, kid)


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The provider's next line of output; RuntimeError if it exits or stays silent."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            return line.strip()
        if process.poll() is not None:
            break
    raise RuntimeError(f"the OIDC provider (pid {process.pid}) did not answer in {timeout} s")
