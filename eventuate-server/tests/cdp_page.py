"""Loads a page in a headless Chromium over the Chrome DevTools Protocol and prints, as JSON,
the value of a JavaScript expression once another one is true; for the browser tests of
`eventuate-server/tests` (`chromium_support`). Needs `websocket-client`
(`pip install websocket-client`, or Debian's `python3-websocket`).

Usage: cdp_page.py DEVTOOLS_PORT PAGE_URL READY_EXPRESSION RESULT_EXPRESSION

Exits non-zero with a message (and the page's text) on any failure or after 30 s.
"""

import json
import sys

from cdp_session import Page

port, url, ready, result = sys.argv[1:5]
page = Page(port)
page.call("Page.navigate", url=url)
# Until the new document exists the expression may still see the previous one: require its URL.
page.wait_for(f"location.href === {json.dumps(url)} && !!({ready})", f"`{ready}`", pause=0.1)
print(json.dumps(page.evaluate(f"JSON.parse(JSON.stringify({result}))")))
page.close()
