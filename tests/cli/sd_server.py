"""A plain Python HTTP server that knows nothing of rcluster: it takes its
listening socket by the systemd protocol (LISTEN_FDS / LISTEN_PID, fd 3),
as `rcluster run --listen` gives it. Answers `worker <id> pid <pid> fds <n>
names <LISTEN_FDNAMES>`. SIGTERM: stop accepting, finish the request in
hand, exit 0."""

import os
import signal
import socket
import sys

if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit(f"sd_server: LISTEN_PID={os.environ.get('LISTEN_PID')} is not my pid {os.getpid()}")
count = int(os.environ.get("LISTEN_FDS", "0"))
if count < 1:
    sys.exit("sd_server: no LISTEN_FDS")
listener = socket.socket(fileno=3)
# rcluster passes the socket as the primary holds it (non-blocking); this
# server accepts blocking. Every worker runs this same program, so setting
# the shared socket's mode here agrees with all of them.
listener.setblocking(True)
worker = os.environ.get("RCLUSTER_WORKER_ID", "?")
names = os.environ.get("LISTEN_FDNAMES", "")
delay = float(os.environ.get("SD_DELAY", "0"))
# A plain flag, not a threading.Event: the handler can run again inside
# itself (a killed daemon's workers get SIGTERM once per thread of the
# daemon, PR_SET_PDEATHSIG being per thread), and Event.set() taking its
# lock twice in one thread deadlocked the worker for good.
stopping = False


def on_term(signum, frame):
    global stopping
    stopping = True
    # Wake the blocking accept: shutdown() would stop the socket for every
    # worker sharing it, so close our copy instead.
    try:
        listener.close()
    except OSError:
        pass


signal.signal(signal.SIGTERM, on_term)
print(f"sd_server worker {worker} pid {os.getpid()} serving fds {count} names {names}", flush=True)
print(f"sd_server worker {worker} says hello on stderr", file=sys.stderr, flush=True)

while not stopping:
    try:
        conn, _ = listener.accept()
    except OSError:
        break
    with conn:
        data = b""
        conn.settimeout(5)
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if delay:
                import time
                time.sleep(delay)
            body = f"worker {worker} pid {os.getpid()} fds {count} names {names}\n".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
sys.exit(0)
