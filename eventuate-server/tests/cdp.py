"""Drives the status page in a headless Chromium over the Chrome DevTools Protocol, for
`eventuate-server/tests/observability.rs` (which starts the server and Chromium and checks
the outcome). Needs `websocket-client` (`pip install websocket-client`, or Debian's
`python3-websocket`).

Usage: cdp.py DEVTOOLS_PORT PAGE_URL SUBSCRIBER_ID SCREENSHOT_BEFORE SCREENSHOT_AFTER

Navigates to the page, waits until it shows the subscriber and a Replay button for its parked
event, takes a screenshot, clicks the button, waits until the page says nothing is parked,
takes another screenshot. Exits non-zero with a message on any failure or time-out.
"""

import base64
import itertools
import json
import sys
import time
import urllib.request

import websocket

port, url, subscriber, shot_before, shot_after = sys.argv[1:6]
ids = itertools.count(1)


def page_target():
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        if time.time() > deadline:
            sys.exit("no page target in Chromium after 30 s")
        time.sleep(0.2)


ws = websocket.create_connection(page_target(), timeout=30, suppress_origin=True)


def call(method, **params):
    call_id = next(ids)
    ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
    while True:
        message = json.loads(ws.recv())
        if message.get("id") == call_id:
            if "error" in message:
                sys.exit(f"{method} failed: {message['error']}")
            return message["result"]


def evaluate(expression):
    result = call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in result:
        sys.exit(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def wait_for(expression, what, seconds=30):
    # Page.navigate answers before the new document exists: until then the expression
    # may throw, which counts as not yet.
    guarded = f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
    deadline = time.time() + seconds
    while not evaluate(guarded):
        if time.time() > deadline:
            text = evaluate("document.body ? document.body.innerText : ''")
            sys.exit(f"timed out after {seconds} s waiting for {what}; the page shows:\n{text}")
        time.sleep(0.2)


def screenshot(path):
    data = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))


button = f'button.replay[data-subscriber={json.dumps(subscriber)}]'
call("Emulation.setDeviceMetricsOverride", width=1100, height=720, deviceScaleFactor=1, mobile=False)
call("Page.navigate", url=url)
wait_for(
    f"document.querySelector('#subscribers').innerText.includes({json.dumps(subscriber)})"
    f" && !!document.querySelector({json.dumps(button)})"
    " && Number(document.body.dataset.polls || 0) >= 2",
    f"the subscriber `{subscriber}` and its Replay button",
)
screenshot(shot_before)
evaluate(f"document.querySelector({json.dumps(button)}).click(); true")
wait_for(
    "document.getElementById('parked').innerText.includes('No parked events')",
    "the page to show no parked events after the replay",
)
screenshot(shot_after)
ws.close()
print("ok: the page showed the subscriber, the replay was clicked, nothing is parked")
