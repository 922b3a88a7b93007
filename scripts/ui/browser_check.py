#!/usr/bin/env python3
"""Drive `ferrotune ui` in headless Chromium over the Chrome DevTools Protocol.

Run by crates/cli/tests/ui_cli.rs with FERROTUNE_CHECK_UI_BROWSER=1 against a dashboard it set
up (a trained run `runs/a`, a hostile run name, open promotion request 2 for `canary`). Checks:

- every page loads, has a heading, and no script runs from what users wrote (a JavaScript
  dialog opening, or the Content-Security-Policy reporting a blocked script, fails the check);
- the run page's curve updates live: a line appended to metrics.jsonl shows up in the summary
  through server-sent events, without a reload;
- logging in and approving request 2 from the keyboard (focus + Enter) moves the alias;
- screenshots of each page go to --out.

Needs `chromium` (Debian package) and `websocket-client` (pip; the test uses .venv-ui/ when it
exists). Usage: browser_check.py --url http://127.0.0.1:PORT --key-file KEY --run-dir RUN --out DIR
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Browser:
    def __init__(self, width=1200, height=820):
        exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if not exe:
            sys.exit("chromium not found (apt-get install -y chromium)")
        self.profile = tempfile.mkdtemp(prefix="ferrotune-ui-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = None
        deadline = time.time() + 30
        while time.time() < deadline and port is None:
            line = self.proc.stderr.readline()
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                port = int(m.group(1))
        if port is None:
            self.close()
            sys.exit("chromium did not start its DevTools endpoint")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events = []
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.on_event(msg)

    def on_event(self, msg):
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":
            # Dismiss it so the page does not hang, then fail: nothing here may open a dialog.
            self.call("Page.handleJavaScriptDialog", accept=False)
            raise AssertionError(f"a script ran and opened a dialog: {msg['params'].get('message')!r}")

    def pump(self, seconds):
        """Take events for a while (dialogs fail the check as they come)."""
        end = time.time() + seconds
        self.ws.settimeout(0.1)
        try:
            while time.time() < end:
                try:
                    self.on_event(json.loads(self.ws.recv()))
                except websocket.WebSocketTimeoutException:
                    pass
        finally:
            self.ws.settimeout(30)

    def eval(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_loaded(self, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            if self.eval("document.readyState") == "complete":
                self.pump(0.3)
                return
            time.sleep(0.1)
        raise AssertionError("page did not finish loading")

    def goto(self, url):
        self.call("Page.navigate", url=url)
        time.sleep(0.2)
        self.wait_loaded()

    def wait_for(self, expr, what, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            if self.eval(expr):
                return
            self.pump(0.2)
        where = self.eval("location.href + ' :: ' + (document.querySelector('main') || document.body).innerText.slice(0, 400)")
        raise AssertionError(f"timed out waiting for {what}; the page is {where}")

    def key(self, key, code, vk, text=None):
        for kind in ("keyDown", "keyUp"):
            p = {"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}
            if text and kind == "keyDown":
                p["text"] = text
            self.call("Input.dispatchKeyEvent", **p)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def csp_violations(self):
        return [e for e in self.events if e.get("method") == "Log.entryAdded"
                and "Content Security Policy" in e["params"]["entry"].get("text", "")]

    def close(self):
        try:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key-file", required=True)
    ap.add_argument("--run-dir", required=True, help="the run behind /runs/0/a (a line is appended to its metrics.jsonl)")
    ap.add_argument("--hostile-run", required=True, help="path of the run page whose name is markup")
    ap.add_argument("--out", required=True, help="folder for the screenshots")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    key = open(a.key_file).read().strip()
    base = a.url.rstrip("/")
    b = Browser()
    try:
        def visit(path, shot=None, heading=None):
            b.goto(base + path)
            h1 = b.eval("document.querySelector('main h1') && document.querySelector('main h1').textContent")
            assert h1, f"{path}: no heading"
            if heading:
                assert heading in h1, f"{path}: heading {h1!r}, expected {heading!r}"
            if shot:
                b.screenshot(os.path.join(a.out, shot))
            print(f"ok {path}: {h1}")

        visit("/", "runs.png", "Runs")
        visit(a.hostile_run, None, "<img src=x onerror=alert(1)>")
        visit("/compare?run=0/a&run=0/" + a.hostile_run.rsplit("/", 1)[1], None, "Compare")
        visit("/compare?run=0/a&run=0/b", "compare.png", "Compare a, b")
        visit("/evals", None, "Evaluations")
        b.eval("document.querySelector('main table a').click()")
        time.sleep(0.3)
        b.wait_loaded()
        assert b.eval("document.querySelector('main h1').textContent") == "Evaluation"
        b.screenshot(os.path.join(a.out, "eval.png"))
        print("ok evaluation page (followed the link)")
        visit("/audit", "audit.png", "Audit")
        visit("/kb/docs?q=refunds&mode=bm25", "kb.png", "Knowledge base")
        visit("/serving", None, "Serving")

        # Live curve: the summary follows metrics.jsonl through server-sent events.
        visit("/runs/0/a", None, "Run a")
        b.wait_for("document.getElementById('live').textContent === 'live'", "the event stream to open")
        with open(os.path.join(a.run_dir, "metrics.jsonl"), "a") as f:
            f.write('{"step":14,"epoch":4.67,"loss":2.45,"lr":0.0001,"tokens_per_sec":900.0,"eval_loss":2.6}\n')
        b.wait_for("document.getElementById('summary').textContent.includes('step 14 ')", "the live summary to show step 14")
        assert b.eval("document.querySelector('#curve svg') !== null"), "the curve was replaced by something else"
        b.screenshot(os.path.join(a.out, "run.png"))
        print("ok live curve update")

        # Log in, then approve request 2 from the keyboard.
        visit("/login", None, "Log in")
        b.eval(f"document.getElementById('user').value = 'carol'; document.getElementById('key').value = {json.dumps(key)};")
        b.eval("document.getElementById('key').focus()")
        b.key("Enter", "Enter", 13, "\r")
        b.wait_for("location.pathname === '/registry' && document.readyState === 'complete'", "the registry after logging in")
        assert "ui:carol" in b.eval("document.querySelector('.who').textContent")
        b.screenshot(os.path.join(a.out, "registry.png"))
        b.eval("document.getElementById('approve-2').focus()")
        assert b.eval("document.activeElement.id") == "approve-2"
        b.key("Enter", "Enter", 13, "\r")
        b.wait_for("document.querySelector('main h1') && document.querySelector('main h1').textContent === 'Approved'", "the approval page")
        msg = b.eval("document.querySelector('main p').textContent")
        assert "support@canary → support@1" in msg, msg
        b.screenshot(os.path.join(a.out, "approved.png"))
        print(f"ok approve from the keyboard: {msg}")

        # Kill switch confirmation page (not submitted: the Rust test covers the write).
        visit("/registry/disable?ref=support%401", "disable.png", "Disable support@1")
        assert b.eval("document.querySelector('button.warn') !== null")

        v = b.csp_violations()
        assert not v, f"Content-Security-Policy blocked something: {v[0]['params']['entry']['text']}"
        print(f"browser check passed; screenshots in {a.out}")
    finally:
        b.close()


if __name__ == "__main__":
    main()
