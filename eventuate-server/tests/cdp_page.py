"""Loads a page in a headless Chromium over the Chrome DevTools Protocol and prints, as JSON,
the value of a JavaScript expression once another one is true; for the browser tests of
`eventuate-server/tests` (`chromium_support`). Needs `websocket-client`
(`pip install websocket-client`, or Debian's `python3-websocket`).

Usage: cdp_page.py DEVTOOLS_PORT PAGE_URL READY_EXPRESSION RESULT_EXPRESSION

Exits non-zero with a message (and the page's text) on any failure or after 30 s.
"""

import itertools
import json
import sys
import time
import urllib.request

import websocket

port, url, ready, result = sys.argv[1:5]
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
    answer = call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    if "exceptionDetails" in answer:
        sys.exit(f"page script failed: {answer['exceptionDetails']}")
    return answer["result"].get("value")


call("Page.navigate", url=url)
# Page.navigate answers before the new document exists: until then the expression may throw
# (or still see the previous document), which counts as not yet.
guarded = (
    f"(() => {{ try {{ return location.href === {json.dumps(url)} && !!({ready}); }}"
    " catch (e) { return false; } })()"
)
deadline = time.time() + 30
while not evaluate(guarded):
    if time.time() > deadline:
        text = evaluate("document.body ? document.body.innerText : ''")
        sys.exit(f"timed out after 30 s waiting for `{ready}`; the page shows:\n{text}")
    time.sleep(0.1)
print(json.dumps(evaluate(f"JSON.parse(JSON.stringify({result}))")))
ws.close()
