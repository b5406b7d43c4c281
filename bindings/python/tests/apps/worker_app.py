"""Worker programs for the API tests: `worker_app.py MODE`.

- echo: listen on 127.0.0.1:0, say hello (JSON), answer every message
  (bytes: "echo:" + data; JSON {"add": [a, b]}: {"sum": a + b}), leave when asked;
- bind: try to listen on 127.0.0.1:$TEST_PORT, report the error as JSON;
- hold: accept connections and keep them open until the message "close",
  then close them all (each close reports the connection finished);
- misuse: call the API wrongly and report what was raised, as JSON;
- two: listen twice on 127.0.0.1:0, report both ports (JSON), answer each
  connection with the name of the listener it came from ("first"/"second");
- aio: asyncio: a protocol server (upper-cases lines) from
  rcluster.aio.create_server, and messages from rcluster.aio.events
  ("ping" -> "pong"); leaves when asked.
"""

from __future__ import annotations

import asyncio
import os
import sys

import rcluster
import rcluster.aio


def echo() -> None:
    me = rcluster.worker()
    listener = rcluster.listen(("127.0.0.1", 0))
    me.send_json({"hello": rcluster.worker_id, "pid": os.getpid(), "port": listener.port})
    for event in me:
        if event.kind == "message":
            if event.data.startswith(b"{"):
                numbers = event.json()["add"]
                me.send_json({"sum": sum(numbers)})
            else:
                me.send(b"echo:" + event.data)
        elif event.kind == "disconnect":
            break
    me.close()


def hold() -> None:
    me = rcluster.worker()
    listener = rcluster.listen(("127.0.0.1", 0))
    listener.settimeout(0)
    me.send_json({"port": listener.port})
    held = []
    while True:
        try:
            sock, _ = listener.accept()
            held.append(sock)
        except BlockingIOError:
            pass
        event = me.next_event(0.02)
        if event is not None and event.kind == "message" and event.data == b"close":
            for sock in held:
                sock.close()
            held.clear()
            me.send(b"closed")
        elif event is not None and event.kind == "disconnect":
            break
    me.close()


def two() -> None:
    me = rcluster.worker()
    listeners = {"first": rcluster.listen(("127.0.0.1", 0)), "second": rcluster.listen(("127.0.0.1", 0))}
    me.send_json({"ports": [listeners["first"].port, listeners["second"].port]})
    for listener in listeners.values():
        listener.settimeout(0)
    while True:
        for name, listener in listeners.items():
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.sendall(name.encode())
            sock.close()
        event = me.next_event(0.02)
        if event is not None and event.kind == "disconnect":
            break
    me.close()


def bind() -> None:
    me = rcluster.worker()
    try:
        rcluster.listen(("127.0.0.1", int(os.environ["TEST_PORT"])), timeout=10)
        me.send_json({"ok": True})
    except rcluster.Error as e:
        me.send_json(
            {
                "type": type(e).__name__,
                "code": int(e.code),
                "errno": e.errno,
                "oserror": isinstance(e, OSError),
                "text": str(e),
            }
        )
    me.next_event(10)  # until the primary asks us to leave
    me.close()


def misuse() -> None:
    me = rcluster.worker()
    report: dict[str, str] = {}

    def attempt(name, fn) -> None:
        try:
            fn()
            report[name] = "no error"
        except Exception as e:
            report[name] = f"{type(e).__name__}:{int(e.code) if isinstance(e, rcluster.Error) else ''}"

    attempt("bad_host", lambda: me.listen(("not an address!", 80), timeout=5))
    attempt("second_open", lambda: rcluster.Worker())
    attempt("send_str", lambda: me.send("text"))
    listener = me.listen(("127.0.0.1", 0), timeout=5)
    listener.setblocking(False)
    attempt("accept_nothing", listener.accept)
    listener.settimeout(0.05)
    attempt("accept_timeout", listener.accept)
    listener.close()
    attempt("accept_closed", listener.accept)
    me.send_json(report)
    me.next_event(10)
    me.close()
    attempt("send_after_close", lambda: me.send(b"x"))
    attempt("listen_after_close", lambda: me.listen(("127.0.0.1", 0)))
    # Nothing left to report to; the primary sees the exit code.
    sys.exit(0 if report["send_after_close"].startswith("BadHandle") else 9)


class Upper(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())
        if data.endswith(b"\n"):
            self.transport.close()


async def aio() -> None:
    me = rcluster.worker()
    server = await rcluster.aio.create_server(Upper, "127.0.0.1", 0)
    async for event in rcluster.aio.events(me):
        if event.kind == "message" and event.data == b"ping":
            me.send(b"pong")
        elif event.kind == "disconnect":
            break
    async with server:
        await server.serve_forever()  # returns at once: the queue is drained
    me.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "aio":
        asyncio.run(aio())
    else:
        {"echo": echo, "bind": bind, "misuse": misuse, "hold": hold, "two": two}[mode]()
