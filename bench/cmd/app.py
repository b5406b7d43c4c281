"""The bench's ASGI app for the `rcluster` command group: the same app under
`rcluster run -i N --listen ... -- uvicorn app:app --fd 3` and under
`uvicorn app:app --workers N`. Answers `worker <id> pid <pid>` (id 0 under
uvicorn's own workers, which have none), as every contender does."""

import os

BODY = f"worker {os.environ.get('RCLUSTER_WORKER_ID', '0')} pid {os.getpid()}\n".encode()
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
