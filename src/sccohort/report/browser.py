"""Open a report in headless Chromium: check that it renders, take screenshots.

Talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands
on file descriptor 3, replies on 4, NUL-separated JSON), so it needs nothing but the
standard library and a ``chromium`` binary (Debian: ``apt-get install chromium``). Network
features are switched off; the report must not need them.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Binaries tried in order; Debian's /usr/bin/chromium is a shell wrapper, the real one is
#: under /usr/lib/chromium.
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
)

_IMAGES_JS = """
Promise.allSettled(Array.from(document.images).map(i => i.decode())).then(() =>
  JSON.stringify(Array.from(document.images).map(i => ({
    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))))
"""
_IDS_JS = "JSON.stringify(Array.from(document.querySelectorAll('[id]')).map(e => e.id))"


def find_chromium() -> str | None:
    """Path of a Chromium binary, or ``None`` when none is installed."""
    for name in CANDIDATES:
        found = shutil.which(name) if not os.path.isabs(name) else name
        if found and os.access(found, os.X_OK):
            return found
    return None


@dataclass
class PageCheck:
    """What a page did when loaded: images, element ids, visible text, errors and dialogs."""

    images: list[dict[str, Any]]
    ids: list[str]
    text: str = ""
    errors: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[dict[str, Any]]:
        """Images that did not decode (``naturalWidth`` 0)."""
        return [i for i in self.images if not i["complete"] or i["width"] <= 0]


class Chromium:
    """A headless Chromium driven over the DevTools pipe; use as a context manager."""

    def __init__(self, binary: str | None = None, *, width: int = 1280, height: int = 900):
        binary = binary or find_chromium()
        if binary is None:
            raise InputError(
                "no Chromium browser found",
                hint="Install it, e.g. apt-get install -y chromium",
            )
        self._profile = tempfile.mkdtemp(prefix="sccohort-chromium-")
        cmd_read, cmd_write = os.pipe()
        res_read, res_write = os.pipe()

        def child_fds() -> None:  # runs in the child before exec: commands on 3, replies on 4
            a = fcntl.fcntl(cmd_read, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(res_write, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            close_fds=False,
            preexec_fn=child_fds,  # fds 3 and 4 must be in place before exec
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(res_write)
        self._write = cmd_write
        self._read = res_read
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.width, self.height = width, height

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the browser (politely, then by force) and remove its profile folder."""
        if self.proc.poll() is None:
            # a browser that no longer answers is killed below
            with contextlib.suppress(OSError, TimeoutError, EOFError, RuntimeError):
                self.send("Browser.close", timeout=5)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._write, self._read):
            try:
                os.close(fd)
            except OSError:
                continue
        shutil.rmtree(self._profile, ignore_errors=True)

    def _message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result (events seen meanwhile are kept)."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """Wait for (and consume) the next event called ``method``."""
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._message(max(deadline - time.monotonic(), 0.001))
            if event.get("method") == method:
                return event
            self.events.append(event)

    def open(self, path: str | Path, timeout: float = 60) -> str:
        """Open a local file in a new tab, wait for its load event; returns the session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.send("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=session)
        self.wait_for("Page.loadEventFired", timeout)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
                found.append("console.error: " + " ".join(args))
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params.get('type')} {params.get('message', '')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                found.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
        return found

    def screenshot(self, session: str, path: str | Path, *, full_page: bool = True) -> Path:
        """Save a PNG screenshot of the open page (the whole page when ``full_page``)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            params["clip"] = {
                "x": 0, "y": 0, "width": self.width, "height": min(size["height"], 16000),
                "scale": 1,
            }  # fmt: skip
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params, session=session)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def check_page(path: str | Path, *, binary: str | None = None, settle: float = 0.5) -> PageCheck:
    """Load ``path`` in headless Chromium and report its images, element ids and errors.

    Parameters
    ----------
    path
        A local HTML file.
    binary
        Chromium binary (default: `find_chromium`).
    settle
        Seconds to wait after the load event for late console messages.

    Returns
    -------
    PageCheck
    """
    with Chromium(binary) as browser:
        session = browser.open(path)
        images = json.loads(browser.evaluate(session, _IMAGES_JS))
        ids = json.loads(browser.evaluate(session, _IDS_JS))
        text = browser.evaluate(session, "document.body.innerText")
        time.sleep(settle)
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drain events
        return PageCheck(images=images, ids=ids, text=text, errors=browser.errors())
