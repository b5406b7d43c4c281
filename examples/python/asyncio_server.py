#!/usr/bin/env python3
"""The hello server of ../examples/README.md on asyncio streams.

    .venv/bin/python examples/python/asyncio_server.py --workers 2 --port 8080

Same arguments and behaviour as hello_server.py, but each worker runs an
asyncio loop: `rcluster.aio.start_server` works like `asyncio.start_server`,
with the connections handed over by the primary (the channel's fd is
watched with `loop.add_reader`; no thread per connection).
"""

from __future__ import annotations

import asyncio
import os
import sys

import rcluster
import rcluster.aio

from hello_server import parse_args

MAX_HEADER = 64 * 1024


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> None:
    """HTTP/1.1 with keep-alive: answer every request until the client closes
    (or says `Connection: close`, or stays idle 5 s)."""
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                return
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            length = int(headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            close = headers.get("connection") == "close" or lines[0].endswith("HTTP/1.0")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(body), b"Connection: close\r\n" if close else b"", body)
            )
            await writer.drain()
            if close:
                return
    except ConnectionError:
        pass
    finally:
        writer.close()


async def run_worker(host: str, port: int) -> None:
    body = f"worker {rcluster.worker_id} pid {os.getpid()}\n".encode()
    server = await rcluster.aio.start_server(lambda r, w: serve_http(r, w, body), host, port)
    async with server:  # on leaving: waits for the connections in flight
        await server.serve_forever()  # returns once the primary asked us to leave
    rcluster.worker().close()


async def run_primary(args) -> int:
    """The primary on asyncio too: its events come through `rcluster.aio.events`."""
    status = 0
    with rcluster.Primary(workers=args.workers, policy=args.policy, handle_signals=True) as primary:
        listening: set[int] = set()
        async for event in rcluster.aio.events(primary):  # ends with the "shutdown" event
            if event.kind == "listening" and len(listening) < args.workers:
                listening.add(event.worker_id)
                if len(listening) == args.workers:
                    ready = f"ready http://{args.host}:{event.port} workers={args.workers} policy={args.policy}"
                    print(ready, flush=True)
            elif event.kind == "crash_loop" and len(listening) < args.workers:
                why = f"worker {event.worker_id} crash-looped before the cluster was ready"
                print(f"asyncio_server: {why}", file=sys.stderr)
                status = 1
                primary.shutdown(0)
    return status


def main() -> int:
    args = parse_args("asyncio_server")
    if rcluster.is_worker:
        asyncio.run(run_worker(args.host, args.port))
        return 0
    return asyncio.run(run_primary(args))


if __name__ == "__main__":
    sys.exit(main())
