"""systemd's notify protocol, without extra daemons: datagrams to $NOTIFY_SOCKET.

READY=1 after startup, STATUS=<text> for `systemctl status`, WATCHDOG=1 from the main loop at half of
$WATCHDOG_USEC, STOPPING=1 on shutdown. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written "@name"; the kernel wants a leading NUL instead.
        self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval_s = int(usec) / 2e6 if enabled else None

    @property
    def enabled(self) -> bool:
        return bool(self.addr)

    def send(self, *fields: str) -> bool:
        if not self.addr:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            try:
                # MSG_DONTWAIT: a receiver that stopped reading must never block the daemon's main loop.
                s.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self.addr)
            except OSError:
                return False  # systemd gone, socket unreachable or its queue full: never fatal
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")
