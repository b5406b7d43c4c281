"""The worker for test_handles.py: messages that carry sockets.

On each message from the primary, by its text:
- ``server``: ``event.fds[0]`` is a listening socket (the seed's
  ``child.send('server', server)``): accept one client, answer
  ``worker ID``, close both, tell the primary ``served``;
- ``sticky LINE``: ``event.fds[0]`` is a client whose first line the primary
  read: answer ``worker ID got LINE`` on it and close it;
- ``bounce``: send the same bytes and fds back, then close ours;
- ``unasked``: send a message with stdin attached (to a primary that did
  not ask for fds);
- ``bad``: try a closed socket, an object that is not a socket, and one fd
  too many, and report what each raised as JSON (an error's code name).
"""

from __future__ import annotations

import socket

import rcluster


def main() -> None:
    me = rcluster.worker()
    me.send(b"up")
    for event in me:
        if event.kind == "disconnect":
            break
        if event.kind != "message":
            continue
        verb, _, rest = event.data.decode().partition(" ")
        if verb == "server":
            server = event.fds[0]
            conn, _ = server.accept()
            conn.sendall(f"worker {rcluster.worker_id}\n".encode())
            conn.close()
            server.close()
            me.send(b"served")
        elif verb == "sticky":
            with event.fds[0] as conn:
                conn.sendall(f"worker {rcluster.worker_id} got {rest}\n".encode())
        elif verb == "bounce":
            me.send(event.data, fds=event.fds)
            for sock in event.fds:
                sock.close()
        elif verb == "unasked":
            me.send(b"unasked", fds=[0])
        elif verb == "bad":
            closed = socket.socket()
            closed.close()
            report = {}
            for name, fds in (("closed", [closed]), ("not_socket", ["fd"]), ("too_many", [0] * (rcluster.MAX_FDS + 1))):
                try:
                    me.send(b"x", fds=fds)
                    report[name] = None
                except rcluster.Error as e:
                    report[name] = e.code.name
                except TypeError:
                    report[name] = "TypeError"
            me.send_json(report)
    me.close()


if __name__ == "__main__":
    main()
