"""A real ASGI application (no framework: the ASGI spec's own interface),
served by an unmodified uvicorn that takes its socket from rcluster:
`rcluster run -i 2 --listen 127.0.0.1:8080 -- uvicorn asgi_app:app --fd 3`.
Answers `worker <id> pid <pid> path <path>`."""

import os


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    body = f"worker {os.environ.get('RCLUSTER_WORKER_ID', '?')} pid {os.getpid()} path {scope['path']}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
