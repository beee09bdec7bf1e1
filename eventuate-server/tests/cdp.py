"""Drives the status page in a headless Chromium over the Chrome DevTools Protocol, for
`eventuate-server/tests/observability.rs` (which starts the server and Chromium and checks
the outcome), with the session of `cdp_session.py`. Needs `websocket-client` (`pip install websocket-client`, or Debian's
`python3-websocket`).

Usage: cdp.py DEVTOOLS_PORT PAGE_URL SUBSCRIBER_ID SCREENSHOT_BEFORE SCREENSHOT_AFTER

Navigates to the page, waits until it shows the subscriber and a Replay button for its parked
event, takes a screenshot, clicks the button, waits until the page says nothing is parked,
takes another screenshot. Exits non-zero with a message on any failure or time-out.
"""

import base64
import json
import sys

from cdp_session import Page

port, url, subscriber, shot_before, shot_after = sys.argv[1:6]
page = Page(port)
call, evaluate, wait_for = page.call, page.evaluate, page.wait_for


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
page.close()
print("ok: the page showed the subscriber, the replay was clicked, nothing is parked")
