#!/usr/bin/env python3
"""Starts one contender of the nginx group for bench/run.py and speaks its
protocol: prints `ready http://127.0.0.1:PORT` once every worker answers,
stops what it started on SIGTERM. The seed's alternative to a cluster is
nginx in front of N single-process servers; this sets it beside rcluster.

    launch.py nginx-singles N   # nginx -> N single-process Node servers (bench/cmd/app.js)
    launch.py rcluster N        # one rcluster Node cluster of N workers (examples/node/hello_server.js, rr)
    launch.py nginx-rcluster N  # nginx -> that rcluster cluster

nginx (Debian's package) runs in the foreground with a configuration
written to a temporary directory under bench/tmp, keep-alive to its
upstreams, one worker process, access logs off.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
from launching import free_port, wait_serving  # noqa: E402
NGINX = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"


def nginx_conf(directory: Path, port: int, upstreams: list[int]) -> Path:
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in upstreams)
    user = "user root;\n" if os.geteuid() == 0 else ""
    d = directory
    conf = (
        f"{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n"
        f"  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
        f"  upstream app {{\n{servers}    keepalive 64;\n  }}\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n"
        "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }\n  }\n}\n"
    )
    path = d / "nginx.conf"
    path.write_text(conf)
    return path


def main() -> int:
    kind, workers = sys.argv[1], int(sys.argv[2])
    tmp = ROOT / "bench" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="nginx-", dir=tmp))
    port = free_port()
    children: list[subprocess.Popen] = []

    def start(argv: list[str], env: dict | None = None, cwd: Path = ROOT) -> None:
        children.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=sys.stderr, stdin=subprocess.DEVNULL))

    def start_cluster(cluster_port: int) -> None:
        start(["node", str(ROOT / "examples" / "node" / "hello_server.js"), "--workers", str(workers),
               "--port", str(cluster_port), "--policy", "rr"])

    if kind == "nginx-singles":
        upstreams = [free_port() for _ in range(workers)]
        for i, p in enumerate(upstreams):
            start(["node", str(ROOT / "bench" / "cmd" / "app.js")],
                  env=dict(os.environ, PORT=str(p), NODE_APP_INSTANCE=str(i + 1)))
        start([NGINX, "-p", str(directory), "-c", str(nginx_conf(directory, port, upstreams))])
    elif kind == "rcluster":
        start_cluster(port)
    elif kind == "nginx-rcluster":
        behind = free_port()
        start_cluster(behind)
        start([NGINX, "-p", str(directory), "-c", str(nginx_conf(directory, port, [behind]))])
    else:
        sys.exit(f"launch.py: unknown contender {kind}")

    def stop(code: int = 0) -> None:
        for child in reversed(children):
            if child.poll() is None:
                # nginx stops gracefully on SIGQUIT, the Node servers on SIGTERM.
                child.send_signal(signal.SIGQUIT if child.args[0] == NGINX else signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(directory, ignore_errors=True)
        sys.exit(code)

    signal.signal(signal.SIGTERM, lambda *_: stop())
    signal.signal(signal.SIGINT, lambda *_: stop())
    # Behind nginx's keep-alive one connection stays with one worker: every
    # worker answering is checked with new connections to nginx only where
    # nginx spreads them (the singles); the cluster's own spread is its own.
    want = workers if kind != "nginx-rcluster" else 1
    if not wait_serving(port, want, lambda: all(c.poll() is None for c in children)):
        print(f"launch.py: {kind} did not serve with {workers} workers", file=sys.stderr)
        stop(1)
    print(f"ready http://127.0.0.1:{port} workers={workers}", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
