"""A headless Chromium driven over the DevTools protocol on a pipe (standard library only).

Chromium started with ``--remote-debugging-pipe`` reads JSON commands on file descriptor 3 and writes
replies and events on descriptor 4, each message ending in a NUL byte. This is the same protocol a
websocket client speaks, without the websocket. What the browser test needs:

* ``open(url)``: a fresh tab (its own DevTools session) with the Page, Runtime and Log domains on, loaded
  and waited for;
* ``errors(session)``: every uncaught exception (Runtime.exceptionThrown), ``console.error``/``assert``
  call (Runtime.consoleAPICalled) and browser error (Log.entryAdded at level error: a resource that failed
  to load, a blocked request, a CSP violation) seen in that tab;
* ``evaluate``, ``click`` (a real mouse press and release at the element's centre), ``hover`` (a real mouse
  move onto it), ``type_text`` (real
  keyboard text input into the focused element) and ``screenshot`` (the whole page as PNG).
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--remote-debugging-pipe",
         "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
         "--force-color-profile=srgb"]


def find_chromium() -> str | None:
    """$HASHBENCH_CHROMIUM, else Debian's chromium (tools/get_chromium.sh installs it)."""
    given = os.environ.get("HASHBENCH_CHROMIUM")
    if given:
        return given
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 900, timeout: float = 60.0):
        self.width, self.height, self.timeout = width, height, timeout
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def descriptors_3_and_4():  # in the child, before exec: its ends of the pipes become fds 3 and 4
            read, write = os.dup(commands_read), os.dup(replies_write)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.log = open(profile.parent / f"{profile.name}-stderr.log", "wb")
        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}",
                                         f"--window-size={width},{height}", "about:blank"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
                                        close_fds=False, preexec_fn=descriptors_3_and_4)
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # ---- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(0.0, left))
            if not ready:
                raise BrowserError(f"no reply from chromium within {self.timeout:.0f} s (see {self.log.name})")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed its pipe (exit code {self.process.poll()}; see {self.log.name})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, event in enumerate(self.events):
                if event["method"] == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            event = self._read_message(deadline)
            if "method" in event:
                self.events.append(event)

    # ---- pages
    def open(self, url: str) -> str:
        """A new tab at ``url``, loaded; returns its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session)
        self.call("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def errors(self, session: str) -> list[str]:
        out = []
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                out.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(f"console.{params['type']}: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                entry = params["entry"]
                out.append(f"{entry.get('source', 'log')}: {entry.get('text', '')} {entry.get('url', '')}".strip())
        return out

    def evaluate(self, session: str, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating {expression[:80]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, session: str, selector: str) -> None:
        """A real left click at the centre of the first element matching ``selector``."""
        box = self._centre(session, selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left",
                                                   "clickCount": 1}, session)

    def hover(self, session: str, selector: str) -> None:
        """A real mouse move onto the centre of the first element matching ``selector``."""
        box = self._centre(session, selector)
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": box["x"], "y": box["y"]}, session)

    def _centre(self, session: str, selector: str) -> dict:
        box = self.evaluate(session, f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return null;
            e.scrollIntoView({{block: "center"}});
            const r = e.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
        }})()""")
        if box is None:
            raise BrowserError(f"nothing matches {selector!r}")
        return box

    def type_text(self, session: str, text: str) -> None:
        self.call("Input.insertText", {"text": text}, session)

    def screenshot(self, session: str, path: Path, max_height: int = 8000) -> Path:
        """The whole page (up to ``max_height`` CSS pixels) as a PNG file."""
        size = self.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": max(size["width"], 1), "height": min(max(size["height"], 1), max_height),
                "scale": 1}
        data = self.call("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                         session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (BrowserError, OSError):
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        for fd in (self._commands, self._replies):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
