"""Messages that carry sockets, with real workers (tests/apps/handles_app.py):
the seed's pattern (the primary hands its listening socket to two workers
and closes its copy), sticky sessions, fd counts on both sides, bad input."""

from __future__ import annotations

import os
import socket
import sys

import pytest

import rcluster
from conftest import APPS

APP = str(APPS / "handles_app.py")


def primary(**options) -> rcluster.Primary:
    options.setdefault("stop_timeout", 5.0)
    return rcluster.Primary(workers=2, argv=[sys.executable, APP], **options)


def take(p: rcluster.Primary, count: int = 1, timeout: float = 15.0) -> list[rcluster.Event]:
    found = []
    while len(found) < count:
        event = p.next_event(timeout)
        assert event is not None, f"no message within {timeout} s"
        assert event.kind != "worker_error", event.text()
        if event.kind == "message":
            found.append(event)
    return found


def up(p: rcluster.Primary) -> list[int]:
    return sorted(e.worker_id for e in take(p, 2))


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_seed_pattern_hands_the_listening_socket_to_two_workers():
    with primary() as p:
        workers = up(p)
        server = socket.create_server(("127.0.0.1", 0))
        address = server.getsockname()
        for wid in workers:
            p.send(wid, b"server", fds=[server])
        server.close()  # the master closes its copy, as in the seed
        answers = []
        for _ in workers:
            with socket.create_connection(address, timeout=10) as client:
                answers.append(client.makefile().readline().strip())
            assert take(p)[0].data == b"served"
        assert sorted(answers) == [f"worker {w}" for w in workers]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=10)


def test_sticky_sessions_hand_a_read_connection_to_the_chosen_worker():
    with primary() as p:
        workers = up(p)
        with socket.create_server(("127.0.0.1", 0)) as server:
            for session in range(6):
                client = socket.create_connection(server.getsockname(), timeout=10)
                client.sendall(f"session-{session}\n".encode())
                conn, _ = server.accept()
                line = b""
                while not line.endswith(b"\n"):  # a byte at a time: nothing past the line is read
                    line += conn.recv(1)
                chosen = workers[session % 2]
                p.send(chosen, b"sticky " + line.strip(), fds=[conn.fileno()])  # an int works too
                conn.close()
                with client:
                    assert client.makefile().readline() == f"worker {chosen} got session-{session}\n"


def test_sockets_come_back_as_sockets_and_fd_counts_stay_flat():
    with primary(accept_message_fds=True) as p:
        workers = up(p)
        pid = p.workers[workers[0]].pid

        def bounce(n: int) -> None:
            for _ in range(n):
                ours, theirs = socket.socketpair()
                p.send(workers[0], b"bounce", fds=[theirs])
                theirs.close()
                back = take(p)[0]
                assert back.data == b"bounce" and len(back.fds) == 1
                returned = back.fds[0]
                assert isinstance(returned, socket.socket)
                ours.sendall(b"same")
                assert returned.recv(4) == b"same"
                returned.close()
                ours.close()

        bounce(20)
        before = (len(os.listdir("/proc/self/fd")), fds_of(pid))
        bounce(1000)
        assert (len(os.listdir("/proc/self/fd")), fds_of(pid)) == before


def test_bad_fds_raise_clear_errors_and_leave_nothing_open():
    with primary(accept_message_fds=True) as p:
        workers = up(p)
        closed = socket.socket()
        closed.close()
        before = len(os.listdir("/proc/self/fd"))
        with pytest.raises(rcluster.InvalidArgument):
            p.send(workers[0], b"x", fds=[closed])
        with pytest.raises(TypeError):
            p.send(workers[0], b"x", fds=[object()])
        with pytest.raises(rcluster.Error) as info:
            p.send(workers[0], b"x", fds=[0] * (rcluster.MAX_FDS + 1))
        assert info.value.code == rcluster.Code.TOOBIG
        assert len(os.listdir("/proc/self/fd")) == before
        p.send(workers[0], b"bad")
        assert take(p)[0].json() == {"closed": "INVAL", "not_socket": "TypeError", "too_many": "TOOBIG"}


def test_fds_a_primary_did_not_ask_for_cut_the_worker_off_and_are_closed():
    before = len(os.listdir("/proc/self/fd"))
    with primary() as p:
        workers = up(p)
        p.send(workers[0], b"unasked")
        while True:
            event = p.next_event(15.0)
            assert event is not None, "no worker_error within 15 s"
            assert event.kind != "message", "the message with fds was not delivered"
            if event.kind == "worker_error":
                break
        assert event.worker_id == workers[0] and "does not accept" in event.text()
    assert len(os.listdir("/proc/self/fd")) == before
