"""The real services the tests run against: PostgreSQL, aiosmtpd, a Pushgateway, and binaries.

In CI (``RECONCILE_AUDIT_REQUIRE_SERVICES=1``, set by ``.ci/run``) a missing service fails the
test instead of skipping it, so a green run always means the real parts were exercised.
Fixtures that hand these out live in ``conftest.py``.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import adbc_driver_postgresql.dbapi as pg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

PG_ADMIN_URL = os.environ.get("RECONCILE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_SERVICES = os.environ.get("RECONCILE_AUDIT_REQUIRE_SERVICES") == "1"
SMTP_USER = "reconcile"


def unavailable(what: str) -> None:
    """Skip locally, fail in CI: a test that needs a real part never silently passes without it."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required in CI (RECONCILE_AUDIT_REQUIRE_SERVICES=1) but unavailable")
    pytest.skip(f"{what} unavailable")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"the {name!r} binary")
    return path  # type: ignore[return-value]


def admin_execute(sql: str, url: str = PG_ADMIN_URL) -> None:
    """One statement as the PostgreSQL superuser, outside any transaction."""
    with pg.connect(url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(sql)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_pushgateway(web_config: Path | None = None) -> Iterator[str]:
    """A real Pushgateway (Debian's binary) on a free loopback port, in memory only; yields its URL.

    ``web_config``: a Prometheus web configuration file (basic auth users, for one).
    """
    binary = require_binary("prometheus-pushgateway")
    port = free_port()
    extra = [f"--web.config.file={web_config}"] if web_config else []
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except urllib.error.HTTPError as refused:
                if refused.code == 401:  # up, and asking for the credentials it was configured with
                    break
                raise
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the Pushgateway did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    envelopes: list[Envelope] = field(default_factory=list)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"

    @property
    def messages(self) -> list[EmailMessage]:
        parsed = []
        for envelope in self.envelopes:
            raw = envelope.original_content or envelope.content
            assert isinstance(raw, bytes)
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            parsed.append(message)
        return parsed

    def only_message(self) -> EmailMessage:
        assert len(self.envelopes) == 1
        return self.messages[0]


def password_check(user: str, password: str) -> Any:
    """An aiosmtpd authenticator that takes exactly this login, as a real relay would."""

    def authenticate(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # handled=False: aiosmtpd then answers 535 itself (its default, True, sends nothing).
        return AuthResult(success=ok, handled=False)

    return authenticate


@contextmanager
def running_smtp(password: str, *, user: str = SMTP_USER, **controller: Any) -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a free loopback port that checks the login.

    ``controller``: aiosmtpd ``Controller`` options (TLS contexts, ``auth_required``...); by
    default AUTH is allowed in clear, as on a local relay.
    """
    inbox = Inbox()
    options: dict[str, Any] = {"auth_require_tls": False, **controller}
    server = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=password_check(user, password), **options
    )
    server.start()
    try:
        yield inbox, server.port
    finally:
        server.stop()


@dataclass(frozen=True)
class PageView:
    """A page as headless Chromium laid it out on a screen of ``inner_width`` CSS pixels."""

    scroll_width: int
    inner_width: int
    png: bytes


def view_in_chromium(page: Path, width: int, height: int, profile: Path) -> PageView:
    """Open ``page`` in headless Chromium on a ``width`` x ``height`` phone-like screen, through
    the DevTools protocol: ``--window-size`` cannot go below 500 px, and a 375 px phone is the
    case that matters. Measures the layout and takes a screenshot; the page runs no script."""
    import asyncio
    import base64
    import json
    from itertools import count

    from tornado.websocket import websocket_connect

    binary = require_binary("chromium")
    profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def session() -> PageView:
        active = profile / "DevToolsActivePort"
        for _ in range(300):
            if active.exists() and len(active.read_text().splitlines()) >= 2:
                break
            await asyncio.sleep(0.05)
        port, path = active.read_text().splitlines()[:2]
        socket_ = await websocket_connect(f"ws://127.0.0.1:{port}{path}", max_message_size=256 * 2**20)
        ids = count(1)

        async def call(
            method: str, params: dict[str, Any] | None = None, session_id: str | None = None
        ) -> Any:
            number = next(ids)
            message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
            if session_id:
                message["sessionId"] = session_id
            await socket_.write_message(json.dumps(message))
            while True:
                raw = await socket_.read_message()
                if raw is None:
                    raise RuntimeError("Chromium closed the DevTools connection")
                answer = json.loads(raw)
                if answer.get("id") == number:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]

        target = (await call("Target.createTarget", {"url": "about:blank"}))["targetId"]
        sid = (await call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 500}
        await call("Emulation.setDeviceMetricsOverride", metrics, sid)
        await call("Page.navigate", {"url": page.resolve().as_uri()}, sid)
        for _ in range(200):
            state = await call(
                "Runtime.evaluate", {"expression": "document.readyState", "returnByValue": True}, sid
            )
            if state["result"].get("value") == "complete":
                break
            await asyncio.sleep(0.05)
        measured = await call(
            "Runtime.evaluate",
            {
                "expression": "[document.documentElement.scrollWidth, window.innerWidth]",
                "returnByValue": True,
            },
            sid,
        )
        scroll_width, inner_width = measured["result"]["value"]
        shot = await call("Page.captureScreenshot", {"format": "png"}, sid)
        socket_.close()
        return PageView(int(scroll_width), int(inner_width), base64.b64decode(shot["data"]))

    try:
        return asyncio.run(asyncio.wait_for(session(), timeout=120))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
