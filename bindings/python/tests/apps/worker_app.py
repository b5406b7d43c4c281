"""Worker programs for the API tests: `worker_app.py MODE`.

- echo: listen on 127.0.0.1:0, say hello (JSON), answer every message
  (bytes: "echo:" + data; JSON {"add": [a, b]}: {"sum": a + b}), leave when asked;
- bind: try to listen on 127.0.0.1:$TEST_PORT, report the error as JSON;
- hold: accept connections and keep them open until the message "close",
  then close them all (each close reports the connection finished);
- misuse: call the API wrongly and report what was raised, as JSON;
- two: listen twice on 127.0.0.1:0, report both ports (JSON), answer each
  connection with the name of the listener it came from ("first"/"second");
- batch: listen on 127.0.0.1:0, report the port and whether the primary
  counts finished connections; on "take", one accept_many(16): report the
  peers' ports, answer each connection "hi" and close it;
- attach: an http.server attached to a listener (make_server), not serving
  until the message "serve"; on "report", the sizes of the batches it took;
- aio: asyncio: a protocol server (upper-cases lines) from
  rcluster.aio.create_server, and messages from rcluster.aio.events
  ("ping" -> "pong"); leaves when asked.
- fail_listen: listen on $TEST_PORT (taken by the test), and fail: exit 1
  (TEST_FAIL=exit) or an uncaught AddressError (TEST_FAIL=raise);
- aio_sock: a listener handed to asyncio itself, `loop.create_server(sock=...)`
  (what uvicorn's `sockets=` does), answering "ok" over HTTP/1.0; stderr goes
  to $TEST_LOG. With TEST_ON_DONE=1 it stops the server from
  `listener.on_done` and leaves; else it leaves nothing to stop it (the
  primary's SIGTERM ends it).
- leave: listen on 127.0.0.1:0, say "up", wait until asked to leave (the
  primary shuts down), then report (JSON) what accept and a new listen raise;
- uvicorn_sock: the same through uvicorn's own `Server.run(sockets=[listener])`.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import sys
import threading

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


def wait_for_message(me: rcluster.Worker, data: bytes) -> None:
    while True:
        event = me.next_event(30)
        if event is None or event.kind != "message":
            raise SystemExit(f"worker_app: no {data!r} message (got {event})")
        if event.data == data:
            return


def batch() -> None:
    me = rcluster.worker()
    listener = rcluster.listen(("127.0.0.1", 0))
    me.send_json({"port": listener.port, "reports_done": me.reports_done})
    wait_for_message(me, b"take")
    listener.settimeout(10)
    taken = listener.accept_many(16)
    me.send_json({"peers": [address[1] for _, address in taken]})
    for sock, _ in taken:
        sock.sendall(b"hi")
        sock.close()
    me.next_event(30)  # until the primary asks us to leave
    me.close()


class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def attach() -> None:
    me = rcluster.worker()
    sizes: list[int] = []
    server = rcluster.make_server(http.server.ThreadingHTTPServer, ("127.0.0.1", 0), Hello)
    listener = server.socket
    take = listener.accept_many

    def recording(max: int = 64) -> list:
        taken = take(max)
        sizes.append(len(taken))
        return taken

    listener.accept_many = recording
    me.send_json({"port": listener.port})
    wait_for_message(me, b"serve")

    def answer_reports() -> None:
        for event in me:
            if event.kind == "message" and event.data == b"report":
                me.send_json({"sizes": sizes})

    threading.Thread(target=answer_reports, daemon=True).start()
    server.serve_forever()  # until the primary asks us to leave
    server.server_close()
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


def fail_listen() -> None:
    """Fails before it listens: $TEST_PORT is in use. TEST_FAIL=exit: catches
    the error and exits 1 (the Worker's finalizer says goodbye first);
    TEST_FAIL=raise: leaves the AddressError uncaught."""
    rcluster.worker()
    try:
        rcluster.listen(("127.0.0.1", int(os.environ["TEST_PORT"])), timeout=10)
    except rcluster.AddressError as e:
        if os.environ.get("TEST_FAIL") == "exit":
            print(f"worker_app: {e}", file=sys.stderr)
            sys.exit(1)
        raise


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
    attempt("accept_many_zero", lambda: listener.accept_many(0))
    listener.close()
    attempt("accept_closed", listener.accept)
    me.send_json(report)
    me.next_event(10)
    me.close()
    attempt("send_after_close", lambda: me.send(b"x"))
    attempt("listen_after_close", lambda: me.listen(("127.0.0.1", 0)))
    # Nothing left to report to; the primary sees the exit code.
    sys.exit(0 if report["send_after_close"].startswith("BadHandle") else 9)


def leave() -> None:
    me = rcluster.worker()
    listener = me.listen(("127.0.0.1", 0), timeout=5)
    me.send(b"up")
    while (event := me.next_event(10)) is not None and event.kind != rcluster.EventKind.DISCONNECT:
        pass
    report: dict[str, str] = {}
    for name, call in (("accept", listener.accept), ("listen", lambda: me.listen(("127.0.0.1", 0), timeout=5))):
        try:
            call()
            report[name] = "no error"
        except rcluster.Error as e:
            report[name] = f"{type(e).__name__}:{int(e.code)}:{e.errno or 0}:closed={isinstance(e, rcluster.Closed)}"
    me.send_json(report)
    me.close()


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


class Ok(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.transport.close()


async def aio_sock() -> None:
    listener = rcluster.listen(("127.0.0.1", 0))
    server = await asyncio.get_running_loop().create_server(Ok, sock=listener)
    if os.environ.get("TEST_ON_DONE") == "1":
        listener.on_done(server.close)
    try:
        await server.serve_forever()
    except asyncio.CancelledError:
        pass  # server.close() from on_done ends serve_forever this way
    rcluster.worker().close()


async def hello_asgi(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def uvicorn_sock() -> None:
    import uvicorn

    listener = rcluster.listen(("127.0.0.1", 0))
    config = uvicorn.Config(hello_asgi, lifespan="off", log_level="warning", loop="asyncio")
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    mode = sys.argv[1]
    if "TEST_LOG" in os.environ:
        log = os.open(os.environ["TEST_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 2)
    if mode == "aio":
        asyncio.run(aio())
    elif mode == "aio_sock":
        asyncio.run(aio_sock())
    elif mode == "uvicorn_sock":
        uvicorn_sock()
    else:
        modes = {"echo": echo, "bind": bind, "misuse": misuse, "hold": hold, "two": two, "batch": batch, "attach": attach,
                 "fail_listen": fail_listen, "leave": leave}
        modes[mode]()
