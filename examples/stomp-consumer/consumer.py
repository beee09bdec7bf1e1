#!/usr/bin/env python3
"""A service in Python that follows the customers-and-orders events over STOMP.

It subscribes durably, as `order-notifier`, to the Customer and Order events of an
eventuate-rs event store server, acknowledges each message after handling it (client
acknowledgements), and deduplicates by event id: delivery is at least once, so a message
handled just before a crash, or acknowledged after a gap in a prefetch window, comes again.
Handling here is printing a line; the ids already handled are kept in a file, so the
deduplication survives restarts.

Usage: consumer.py [--host H] [--port P] [--seen FILE] [--max-events N] [--crash-after N]

--max-events N   disconnect after N messages (handled or skipped as duplicates)
--crash-after N  exit at once after handling the Nth message, before acknowledging it (a
                 crash: the server delivers it again to the next session)

Needs stomp.py (`pip install stomp.py`, or Debian's `python3-stomp`).
"""

import argparse
import json
import os
import sys
import threading

import stomp

SUBSCRIBER = "order-notifier"
DESTINATION = json.dumps({
    "subscriberId": SUBSCRIBER,
    "entityTypesAndEvents": {
        "Customer": ["CustomerCreated"],
        "Order": ["OrderCreated", "OrderApproved", "OrderRejected"],
    },
    "options": {"readFrom": "BEGINNING", "durability": "DURABLE"},
})


def describe(event):
    data = event["eventData"]
    kind, entity = event["eventType"], event["entityId"]
    if kind == "CustomerCreated":
        return f"customer {entity} created: {data.get('name')}"
    if kind == "OrderCreated":
        return f"order {entity} placed by customer {data.get('customer_id')}"
    if kind == "OrderApproved":
        return f"order {entity} approved"
    return f"order {entity} rejected"


class Seen:
    """Event ids already handled, kept in a file (one id a line)."""

    def __init__(self, path):
        self.path = path
        self.ids = set()
        if path and os.path.exists(path):
            with open(path) as f:
                self.ids = {line.strip() for line in f if line.strip()}

    def __contains__(self, event_id):
        return event_id in self.ids

    def add(self, event_id):
        self.ids.add(event_id)
        if self.path:
            with open(self.path, "a") as f:
                f.write(event_id + "\n")
                f.flush()
                os.fsync(f.fileno())


class Notifier(stomp.ConnectionListener):
    def __init__(self, conn, seen, max_events, crash_after):
        self.conn, self.seen = conn, seen
        self.max_events, self.crash_after = max_events, crash_after
        self.count = 0
        self.done = threading.Event()

    def on_message(self, frame):
        event = json.loads(frame.body)
        self.count += 1
        if event["id"] in self.seen:
            print(f"duplicate {event['id']} skipped", flush=True)
        else:
            print(describe(event), flush=True)
            self.seen.add(event["id"])
            if self.count == self.crash_after:
                os._exit(3)
        self.conn.ack(frame.headers["ack"], frame.headers["subscription"])
        if self.count == self.max_events:
            self.done.set()

    def on_error(self, frame):
        print(f"ERROR {frame.headers.get('message')}: {frame.body}", file=sys.stderr, flush=True)
        self.done.set()

    def on_disconnected(self):
        self.done.set()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=61614)
    parser.add_argument("--seen", default="order-notifier.seen")
    parser.add_argument("--max-events", type=int, default=0)
    parser.add_argument("--crash-after", type=int, default=0)
    args = parser.parse_args()
    conn = stomp.Connection12([(args.host, args.port)], heartbeats=(10000, 10000))
    notifier = Notifier(conn, Seen(args.seen), args.max_events, args.crash_after)
    conn.set_listener("", notifier)
    conn.connect(wait=True)
    conn.subscribe(destination=DESTINATION, id="1", ack="client-individual")
    try:
        notifier.done.wait()
    except KeyboardInterrupt:
        pass
    if conn.is_connected():
        conn.disconnect()


if __name__ == "__main__":
    main()
