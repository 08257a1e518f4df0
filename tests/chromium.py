"""Headless Chromium driven through its DevTools protocol over a pipe (`--remote-debugging-pipe`).

No port and no extra package: Chromium reads protocol messages from file descriptor 3 and writes its
answers and events to descriptor 4, each a JSON object ended by a NUL byte (what Puppeteer's `pipe`
mode does). The report test and `benchmarks/report_scale.py` use it to open a page, run JavaScript in
it, click and type as a user would, and read the DOM back.

Debian's Chromium needs these flags on this closed network (no sandbox inside the container, no GPU, no
background requests that would wait on a network that is not there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--mute-audio",
]  # fmt: skip


def _above_4(fd: int) -> int:
    """The same pipe end on a descriptor number of 10 or more (the original closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, exited, or a condition did not come true in time."""


class Chromium:
    """One headless Chromium and one page (tab) in it. Use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        if CHROMIUM is None:  # the set-up (scripts/setup.sh) installs Debian's chromium
            raise BrowserError("chromium is not installed: run scripts/setup.sh")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="repsub-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends must not be 3 or 4 themselves, or the shell's redirections below would overwrite
        # one with the other.
        to_browser_r, from_browser_w = (_above_4(fd) for fd in (to_browser_r, from_browser_w))
        command = [CHROMIUM, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                   f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        # bash (dash reads one-digit descriptors only) puts the pipe ends on 3 and 4, then becomes Chromium.
        self._log = Path(self._profile) / "chromium.log"  # a file: an unread pipe could fill and block it
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                ["/bin/bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", *command],
                pass_fds=(to_browser_r, from_browser_w),
                stdout=log,
                stderr=log,
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, queue.Queue] = {}
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
            self.session = attached["sessionId"]
            for domain in ("Page", "Runtime"):
                self.send(f"{domain}.enable", session=True)
        except BaseException:
            self.close()  # no browser or profile left behind
            raise

    # -------------------------------------------------------------- protocol

    def _read(self) -> None:
        buffer = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as stream:
            while chunk := stream.read(1 << 16):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        with self._lock:
                            waiting = self._answers.get(message["id"])
                        if waiting is not None:
                            waiting.put(message)
                    else:
                        self._events.put(message)
        with self._lock:  # Chromium is gone: wake every waiting command
            for waiting in self._answers.values():
                waiting.put({"error": {"message": "chromium exited"}})

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """Send one command (to the page's session if `session`) and return its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            answer: queue.Queue = queue.Queue()
            self._answers[ident] = answer
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"{method}: chromium has exited; its log:\n{self.log()}") from None
        try:
            reply = answer.get(timeout=self.timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer in {self.timeout} s") from None
        finally:
            with self._lock:
                self._answers.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, name: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                break
            if event.get("method") == name:
                return event.get("params", {})
        raise BrowserError(f"no {name} event in {timeout or self.timeout} s")

    # -------------------------------------------------------------- what a test does with a page

    def _navigate(self, url: str) -> None:
        while not self._events.empty():  # events of earlier pages
            self._events.get_nowait()
        self.send("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired")

    def open(self, url: str) -> float:
        """Load `url` as a new document and wait for its load event; returns the seconds that took.
        (From about:blank: a URL that differs from the current one by its #fragment only would not load.)"""
        self._navigate("about:blank")
        started = time.perf_counter()
        self._navigate(url)
        return time.perf_counter() - started

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:80]}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float | None = None, poll: float = 0.02):
        """Poll until the expression is truthy; returns its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(poll)
        raise BrowserError(f"not true within {timeout or self.timeout} s: {expression}")

    def click(self, x: float, y: float) -> None:
        """A left click at viewport coordinates, as the mouse makes it (press, release)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session=True,
            )

    def click_element(self, selector: str) -> None:
        """Scroll the element into view and click its centre."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"no element {selector}")
        self.click(*box)

    def key(self, key: str) -> None:
        """Press and release one key (e.g. 'Enter', 'Escape', 'Tab') in the focused element."""
        codes = {"Enter": 13, "Escape": 27, "Tab": 9, "ArrowDown": 40, "ArrowUp": 38}
        params = {"key": key, "code": key, "windowsVirtualKeyCode": codes.get(key, 0)}
        if key == "Enter":
            params["text"] = "\r"
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", **params}, session=True)
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **params}, session=True)

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", {"text": text}, session=True)

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    # -------------------------------------------------------------- lifetime

    def log(self, tail: int = 4000) -> str:
        """The end of Chromium's own output (stderr), for error messages."""
        try:
            return self._log.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def close(self) -> None:
        with contextlib.suppress(BrowserError):  # it may have exited already
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
