import os
import socket

from daemon.service import Notifier


def _listener(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s


def test_notify_messages_reach_a_real_datagram_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = _listener(path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval_s == 2.0
    assert n.ready("idle")
    msg = sock.recv(4096).decode().split("\n")
    assert msg[0] == "READY=1" and "STATUS=idle" in msg and f"MAINPID={os.getpid()}" in msg
    n.status("training embedder")
    assert sock.recv(4096) == b"STATUS=training embedder"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    n.stopping()
    assert sock.recv(4096).startswith(b"STOPPING=1\n")
    sock.close()


def test_abstract_socket_and_no_systemd():
    name = f"ragloop-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    assert Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
    assert sock.recv(100) == b"WATCHDOG=1"
    sock.close()
    off = Notifier({})
    assert not off.enabled and off.watchdog_interval_s is None and off.ready("x") is False


def test_watchdog_for_another_pid_is_ignored(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval_s is None
    assert n.send("X=1") is False  # nobody listens: never raises


def test_a_receiver_that_stops_reading_never_blocks_the_sender(tmp_path):
    path = str(tmp_path / "full.sock")
    sock = _listener(path)  # bound, never read
    n = Notifier({"NOTIFY_SOCKET": path})
    results = [n.status(f"stage {i}") for i in range(5000)]
    assert results[0] is True and results[-1] is False  # the queue filled up; sends were dropped, not blocked
    sock.close()
