"""The Python API, with the primary in this process and real worker
processes (tests/apps/worker_app.py), checked with real sockets."""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
import threading

import pytest

import rcluster
import rcluster.aio
from conftest import APPS, alive, wait_until

APP = str(APPS / "worker_app.py")


def primary(mode: str, workers: int = 2, **options) -> rcluster.Primary:
    options.setdefault("stop_timeout", 5.0)
    return rcluster.Primary(workers=workers, argv=[sys.executable, APP, mode], **options)


def take(p: rcluster.Primary, kind: str, count: int = 1, timeout: float = 15.0) -> list[rcluster.Event]:
    """The next ``count`` events of ``kind`` (others are skipped)."""
    found: list[rcluster.Event] = []
    while len(found) < count:
        event = p.next_event(timeout)
        assert event is not None, f"no {kind} event within {timeout} s (got {len(found)})"
        if event.kind == kind:
            found.append(event)
    return found


def test_roles_in_the_test_process():
    assert rcluster.is_primary and not rcluster.is_worker and rcluster.worker_id is None
    with pytest.raises(rcluster.StateError) as info:
        rcluster.worker()
    assert isinstance(info.value, rcluster.Error) and isinstance(info.value, OSError)
    assert info.value.code == rcluster.Code.STATE


def test_messages_round_trip_both_ways():
    with primary("echo") as p:
        hellos = {e.worker_id: e.json() for e in take(p, "message", 2)}
        assert set(hellos) == {1, 2}
        assert all(h["hello"] == wid for wid, h in hellos.items())
        assert {w.pid for w in p.workers.values()} == {h["pid"] for h in hellos.values()}
        for wid in (1, 2):
            p.send(wid, b"bytes \x00\xff from the primary")
            assert take(p, "message")[0].data == b"echo:bytes \x00\xff from the primary"
            p.send_json(wid, {"add": [wid, 40]})
            reply = take(p, "message")[0]
            assert reply.worker_id == wid and reply.json() == {"sum": wid + 40}
        big = bytes(range(256)) * 4096  # 1 MiB: several records each way
        p.send(1, big)
        assert take(p, "message")[0].data == b"echo:" + big
        assert p.broadcast(b"all") == 2
        assert sorted(e.worker_id for e in take(p, "message", 2)) == [1, 2]
    assert p.ended and p.closed


def test_callbacks_iterator_and_worker_table():
    seen: list[str] = []
    exits: list[rcluster.Event] = []
    p = primary("echo", restart=False)
    p.on("*", lambda e: seen.append(e.kind))

    @p.on("exit")
    def on_exit(event):
        exits.append(event)

    with p:
        host, port = p.wait_listening(timeout=15)
        assert host == "127.0.0.1" and port > 0
        assert {w.state for w in p.workers.values()} == {"listening"}
        assert all(w.addresses == [(host, port)] for w in p.workers.values())
        p.kill(1, signal.SIGKILL)
        for event in p:
            if event.kind == "exit":
                break
        assert exits[0].worker_id == 1 and exits[0].signal == signal.SIGKILL
        assert exits[0].exit_code is None and not exits[0].after_disconnect
        assert list(p.workers) == [2]
    assert seen[-1] == "shutdown"
    assert [e.worker_id for e in exits] == [1, 2] and exits[1].after_disconnect
    for kind in ("fork", "online", "listening", "disconnect", "exit", "shutdown"):
        assert kind in seen


def test_scale_stats_and_reload():
    with primary("echo", workers=1) as p:
        p.wait_listening(timeout=15)
        p.scale(3)
        p.wait_listening(3, timeout=15)
        stats = p.stats()
        assert [s.worker_id for s in stats] == [1, 2, 3]
        assert all(s.state == "listening" and s.pid > 0 and s.uptime >= 0 for s in stats)
        assert all(s.rss_bytes > 1_000_000 and s.cpu >= 0 for s in stats), stats
        generation = p.reload()
        assert generation == 1
        done = take(p, "reload_done", timeout=30)[0]
        assert done.generation == 1
        # The replaced workers may still be leaving; every serving one is new.
        serving = [s for s in p.stats() if s.state not in ("leaving", "disconnected")]
        assert len(serving) == 3 and {s.generation for s in serving} == {1}, p.stats()
        p.scale(1)
        wait_until(lambda: len(p.stats()) == 1, 15, "scale down to 1")


def test_killed_worker_is_replaced_by_the_core():
    with primary("echo", workers=1, restart_delay=0.05) as p:
        p.wait_listening(timeout=15)
        victim = p.workers[1].pid
        p.kill(1, signal.SIGKILL)
        forked = take(p, "fork")[0]
        assert forked.worker_id == 2 and forked.slot == 0
        take(p, "listening")
        assert not alive(victim)
        assert p.stats()[0].restarts == 1


def test_bind_error_is_an_rcluster_error_with_errno():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with primary("bind", workers=1, env={"TEST_PORT": str(port)}) as p:
            report = take(p, "message")[0].json()
    finally:
        taken.close()
    assert report["type"] == "AddressError" and report["oserror"]
    assert report["code"] == rcluster.Code.ADDR and report["errno"] == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in report["text"]


def test_each_workers_second_listener_on_port_0_gets_a_port_of_its_own():
    with primary("two", workers=2) as p:
        reports = [event.json()["ports"] for event in take(p, "message", 2)]
        first, second = reports[0]
        assert first != second, "one worker's two port-0 listeners got one port"
        assert reports[1] == reports[0], "every worker's n-th port-0 listener shares one port"
        for port, name in [(first, b"first"), (second, b"second")] * 2:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.settimeout(10)
                answer = b""
                while chunk := conn.recv(64):
                    answer += chunk
            assert answer == name, f"a connection to port {port}"


def test_misuse_raises_and_never_crashes():
    with primary("misuse", workers=1, restart=False) as p:
        report = take(p, "message")[0].json()
        p.shutdown()
        exit_event = take(p, "exit")[0]
    assert report == {
        "bad_host": "InvalidArgument:-1",
        "second_open": "StateError:-10",
        "send_str": "TypeError:",
        "accept_nothing": "WouldBlock:-5",
        "accept_timeout": "Timeout:-4",
        "accept_many_zero": "ValueError:",
        "accept_closed": "Closed:-6",
    }
    assert exit_event.exit_code == 0


def test_a_leaving_worker_is_told_so_by_its_own_code():
    # Asked to leave, a worker's accept (nothing queued) and a new listen
    # (the primary is shutting down) raise Leaving, RCLUSTER_E_LEAVING with
    # no errno; it is a Closed too, which accept loops of 0.1 caught.
    with primary("leave", workers=1, restart=False) as p:
        assert take(p, "message")[0].data == b"up"
        p.shutdown()
        report = take(p, "message")[0].json()
        exit_event = take(p, "exit")[0]
    leaving = f"Leaving:{rcluster.Code.LEAVING.value}:0:closed=True"
    assert report == {"accept": leaving, "listen": leaving}
    assert rcluster.Code.LEAVING == -13 and exit_event.exit_code == 0


def test_codes_and_event_kinds_are_the_librarys_table():
    # Derived from the header; compared here with what the library itself
    # answers for each number (rcluster_strerror, rcluster_event_name).
    from rcluster._ffi import ffi, lib

    for code in rcluster.Code:
        if code != 0:
            message = ffi.string(lib.rcluster_strerror(code)).decode()
            assert message not in ("", "unknown error code"), code
    names = {ffi.string(lib.rcluster_event_name(number)).decode() for number in range(1, 64)} - {"unknown"}
    assert {kind.value for kind in rcluster.EventKind} == names
    assert rcluster.EventKind.CRASH_LOOP == "crash_loop" and rcluster.EventKind.PRIMARY_GONE == "primary_gone"


def test_primary_errors():
    with pytest.raises(rcluster.InvalidArgument):
        rcluster.Primary(workers=1, policy="random")
    with pytest.raises(TypeError, match="unknown Primary option"):
        rcluster.Primary(workers=1, no_such_option=1)
    with pytest.raises(rcluster.InvalidArgument):
        rcluster.Primary(workers=1, restart_backoff=0.5)  # the C layer refuses it
    p = rcluster.Primary(workers=0, argv=["/nonexistent/program"])
    try:
        with pytest.raises(rcluster.Error) as info:
            p.fork()
        assert info.value.errno == errno.ENOENT
        with pytest.raises(rcluster.Closed):
            p.send(42, b"nobody")
        with pytest.raises(TypeError):
            p.send(1, "text")
    finally:
        p.close()
    p.close()  # idempotent
    with pytest.raises(rcluster.BadHandle):
        p.fork()
    with pytest.raises(rcluster.BadHandle):
        p.next_event(0)


def test_asyncio_protocol_server_and_events():
    async def main() -> None:
        with primary("aio") as p:
            listening = []
            async for event in rcluster.aio.events(p):
                if event.kind == "listening":
                    listening.append(event)
                    if len(listening) == 2:
                        break
            port = listening[0].port
            for _ in range(4):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"hello rcluster\n")
                assert await asyncio.wait_for(reader.read(), 10) == b"HELLO RCLUSTER\n"
                writer.close()
            p.send(1, b"ping")
            async for event in rcluster.aio.events(p):
                if event.kind == "message":
                    assert event.data == b"pong" and event.worker_id == 1
                    break
            p.shutdown()
            await rcluster.aio.run(p)
            assert p.ended

    asyncio.run(asyncio.wait_for(main(), 60))


def test_error_is_oserror_with_code_and_message():
    e = rcluster.Error(rcluster.Code.ADDR, "cannot listen", errno.EACCES)
    assert isinstance(e, OSError) and e.errno == errno.EACCES and e.code == rcluster.Code.ADDR
    assert str(e) == "[rcluster E_ADDR] cannot listen (errno 13)"
    assert isinstance(rcluster.WouldBlock(rcluster.Code.AGAIN, "x"), BlockingIOError)
    assert isinstance(rcluster.Timeout(rcluster.Code.TIMEOUT, "x"), TimeoutError)


def test_gil_is_released_during_blocking_c_calls():
    from rcluster._ffi import ffi, lib

    p = rcluster.Primary(workers=0)
    try:
        event = ffi.new("rcluster_event *")
        blocked = threading.Thread(target=lambda: lib.rcluster_primary_wait_event(p._handle, event, 300))
        spins = 0
        blocked.start()
        while blocked.is_alive():
            spins += 1  # runs only if the blocked call let go of the GIL
        blocked.join()
        assert spins > 10_000, spins
    finally:
        p.close()


def test_package_is_typed():
    import importlib.resources

    assert importlib.resources.files("rcluster").joinpath("py.typed").is_file()


def test_closed_connections_are_reported_to_the_least_loaded_policy():
    with primary("hold", workers=1, policy="least") as p:
        port = take(p, "message")[0].json()["port"]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        wait_until(lambda: p.stats()[0].active == 3, 15, "three connections held by the worker")
        p.send(1, b"close")
        assert take(p, "message")[0].data == b"closed"
        wait_until(lambda: p.stats()[0].active == 0, 15, "each close reported to the primary")
        for c in clients:
            c.close()


@pytest.mark.parametrize("policy", ["rr", "least"])
def test_accept_many_takes_every_queued_connection_in_one_call(policy):
    with primary("batch", workers=1, policy=policy) as p:
        hello = take(p, "message")[0].json()
        # Only the load-aware policy has closes reported (others skip the call).
        assert hello["reports_done"] == (policy == "least")
        clients = [socket.create_connection(("127.0.0.1", hello["port"]), timeout=10) for _ in range(3)]
        try:
            wait_until(lambda: p.stats()[0].in_flight == 3, 15, "three connections handed over, none taken")
            p.send(1, b"take")
            peers = take(p, "message")[0].json()["peers"]
            assert sorted(peers) == sorted(c.getsockname()[1] for c in clients)
            wait_until(lambda: p.stats()[0].in_flight == 0, 15, "the batch acknowledged")
            for client in clients:
                assert client.recv(16) == b"hi"
            if policy == "least":
                wait_until(lambda: p.stats()[0].active == 0, 15, "each close reported")
        finally:
            for client in clients:
                client.close()


def test_attached_server_takes_queued_connections_as_one_batch():
    with primary("attach", workers=1) as p:
        port = take(p, "message")[0].json()["port"]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        try:
            for client in clients:
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
            wait_until(lambda: p.stats()[0].in_flight == 4, 15, "four connections queued at the worker")
            p.send(1, b"serve")
            for client in clients:
                answer = b""
                while chunk := client.recv(256):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"ok"), answer
            p.send(1, b"report")
            sizes = take(p, "message")[0].json()["sizes"]
            assert sizes[0] == 4, f"one wake-up took the four queued connections: {sizes}"
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize(
    "how",
    [
        "raise",  # an uncaught exception: the binding drops the goodbye, the primary sees a crash
        "exit",  # goodbye, then exit(1): a crash all the same
    ],
)
def test_wait_listening_reports_workers_that_fail_before_listening(how):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {"TEST_PORT": str(port), "TEST_FAIL": how}
    try:
        with primary("fail_listen", workers=2, env=env, restart_delay=0.05, crash_loop_count=3) as p:
            with pytest.raises(rcluster.StateError) as info:
                # 3 crashes, 0.05 + 0.1 s of backoff, then the slot crash-loops.
                p.wait_listening(timeout=8)
    finally:
        taken.close()
    message = str(info.value)
    assert "crash-looped before the cluster was ready" in message, message
    assert "exit before they listen" in message and "exited with code 1" in message, message


def test_metrics_address_serves_prometheus_and_healthz():
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with primary("echo", workers=2, metrics_address=f"127.0.0.1:{port}", max_memory_mb=1024) as p:
        p.wait_listening(timeout=15)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("rcluster_workers", (("state", "listening"),))] == 2
