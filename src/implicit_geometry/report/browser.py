"""Open a report in headless Chromium and check it rendered (used by the tests and the sweep benchmark).

Drives Chromium through the DevTools protocol over a local websocket (``websocket-client``), so nothing is
downloaded: Debian's ``chromium`` package is enough. ``check_page`` collects script errors (exceptions, console
errors, log errors), the number of marks each ``.ig-plot`` drew, whether each embedded image decoded, whether
hovering a plot shows its tooltip, and optionally a PNG screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
    "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1280,900",
]

# Runs in the page after load: what every plot drew, whether images decoded, and whether hover shows a value.
_PROBE = r"""
(function () {
  var plots = Array.prototype.map.call(document.querySelectorAll('.ig-plot'), function (el) {
    return {kind: el.getAttribute('data-kind'), drawn: parseInt(el.getAttribute('data-drawn') || '-1', 10),
            svg: el.querySelectorAll('svg').length};
  });
  var images = Array.prototype.map.call(document.images, function (im) { return im.complete && im.naturalWidth > 0; });
  var hover = null;
  var ov = document.querySelector('.ig-overlay');
  if (ov) {
    var svg = ov.ownerSVGElement, r = svg.getBoundingClientRect();
    var dot = svg.querySelector('.ig-dot, .ig-line');
    var b = dot ? dot.getBoundingClientRect() : r;
    var x = dot && dot.classList.contains('ig-dot') ? b.left + b.width / 2 : b.left + 2;
    var y = dot && dot.classList.contains('ig-dot') ? b.top + b.height / 2 : b.top + 2;
    ov.dispatchEvent(new MouseEvent('mousemove', {clientX: x, clientY: y, bubbles: true}));
    var tip = svg.parentNode.querySelector('.ig-tip');
    hover = tip && tip.style.display !== 'none' ? tip.textContent : '';
  }
  return JSON.stringify({rendered: document.body.getAttribute('data-rendered') === '1', plots: plots, images: images,
                         hover: hover, scripts: document.scripts.length, title: document.title});
})()
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None (``IGEOM_CHROMIUM`` overrides)."""
    env = os.environ.get("IGEOM_CHROMIUM")
    if env:
        return env if shutil.which(env) or Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Cdp:
    def __init__(self, url: str) -> None:
        import websocket  # websocket-client

        self.ws = websocket.create_connection(url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.settimeout(60)
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float) -> bool:
        if any(e["method"] == method for e in self.events):
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                msg = json.loads(self.ws.recv())
            except Exception:  # timeout
                break
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return True
        return False

    def close(self) -> None:
        self.ws.close()


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append("log: " + str(p["entry"].get("text")))
    return out


def check_page(html_path: Path | str, screenshot: Path | str | None = None, *, chromium: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Load ``html_path`` from disk in headless Chromium; returns errors, plots, images, hover text.

    Raises RuntimeError when no Chromium is found or it does not start.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("no chromium found (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="igeom-chromium-")
    proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + timeout
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                if proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {proc.returncode} before it listened")
                continue
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            raise RuntimeError("chromium did not open its DevTools port in time")
        # Keep draining stderr so a chatty browser never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        cdp = _Cdp(page["webSocketDebuggerUrl"])
        try:
            for method in ("Runtime.enable", "Log.enable", "Page.enable"):
                cdp.call(method)
            cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
            cdp.events.clear()
            cdp.call("Page.navigate", url=Path(html_path).resolve().as_uri())
            loaded = cdp.wait_event("Page.loadEventFired", timeout)
            probe = json.loads(cdp.call("Runtime.evaluate", expression=_PROBE, returnByValue=True)["result"]["value"])
            cdp.wait_event("__settle__", 0.3)  # collect late console messages
            result = {"loaded": loaded, "errors": _errors(cdp.events), **probe}
            if screenshot is not None:
                metrics = cdp.call("Page.getLayoutMetrics")
                size = metrics.get("cssContentSize") or metrics.get("contentSize")
                height = int(min(size["height"], 12000))
                shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
                result["screenshot"] = str(screenshot)
            return result
        finally:
            cdp.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
