"""One page of a headless Chromium over the Chrome DevTools Protocol: what `cdp.py` (the status
page test) and `cdp_page.py` (the STOMP-over-WebSocket page test) share. Needs
`websocket-client` (`pip install websocket-client`, or Debian's `python3-websocket`).
"""

import itertools
import json
import sys
import time
import urllib.request

import websocket


class Page:
    """The first page target of the Chromium whose DevTools listen on `port`."""

    def __init__(self, port):
        self.ids = itertools.count(1)
        self.ws = websocket.create_connection(
            self._target(port), timeout=30, suppress_origin=True
        )

    @staticmethod
    def _target(port):
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

    def call(self, method, **params):
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    sys.exit(f"{method} failed: {message['error']}")
                return message["result"]

    def evaluate(self, expression):
        answer = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            sys.exit(f"page script failed: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, expression, what, seconds=30, pause=0.2):
        """Waits until `expression` is true. Page.navigate answers before the new document
        exists: until then the expression may throw, which counts as not yet."""
        guarded = (
            f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
        )
        deadline = time.time() + seconds
        while not self.evaluate(guarded):
            if time.time() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''")
                sys.exit(f"timed out after {seconds} s waiting for {what}; the page shows:\n{text}")
            time.sleep(pause)

    def close(self):
        self.ws.close()
