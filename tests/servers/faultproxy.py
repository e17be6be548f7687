"""A fault-injecting TCP proxy for the S3 fault tests: it stands between client and server on
127.0.0.1 and, per request (a connection's first bytes, or the first the client sends after an answer),
takes the next fault from its queue:

- ``"503"``: reads the request head and answers ``503 Slow Down`` (an S3 error body), closing;
- ``"drop"``: resets the connection as soon as the request starts (nothing answered);
- ``"cut"``: forwards the request, relays only the first 512 bytes of the answer, then resets;
- none queued: relays both ways.

``on_upload(n, callback)`` calls ``callback`` once ``n`` bytes have gone upstream in total (a
server killed in the middle of an upload, at a byte count rather than a time).
"""

from __future__ import annotations

import collections
import socket
import threading

def _slow_down() -> bytes:
    body = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Slow down</Message></Error>'
    return (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.faults: collections.deque[str] = collections.deque()
        self.injected: list[str] = []
        self.connections = 0
        self.sent_up = 0
        self._trigger: tuple[int, object] | None = None
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def inject(self, *faults: str) -> None:
        self.faults.extend(faults)

    def on_upload(self, nbytes: int, callback) -> None:
        with self._lock:
            self._trigger = (self.sent_up + nbytes, callback)

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _next_fault(self) -> str | None:
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
            if fault:
                self.injected.append(fault)
            return fault

    def _serve(self, conn: socket.socket) -> None:
        """Relay one client connection. A request starts when the client sends after the
        server has answered (or first): then the next fault is taken."""
        try:
            up = socket.create_connection(self.upstream)
        except OSError:
            _reset(conn)
            return
        state = {"fresh": True, "cut": None, "relayed": 0}
        t = threading.Thread(target=self._down, args=(up, conn, state), daemon=True)
        t.start()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                if state["fresh"]:
                    state["fresh"] = False
                    fault = self._next_fault()
                    if fault == "503":
                        while b"\r\n\r\n" not in data:  # the request head, then answer and close
                            more = conn.recv(65536)
                            if not more:
                                break
                            data += more
                        conn.sendall(_slow_down())
                        break
                    if fault == "drop":
                        break
                    state["cut"], state["relayed"] = (512 if fault == "cut" else None), 0
                up.sendall(data)
                self._count(len(data))
        except OSError:
            pass
        finally:
            _reset(conn)
            _reset(up)
        t.join(timeout=30)

    def _down(self, up: socket.socket, conn: socket.socket, state: dict) -> None:
        try:
            while True:
                data = up.recv(65536)
                if not data:
                    break
                state["fresh"] = True  # the client's next bytes are its next request
                cut = state["cut"]
                if cut is not None and state["relayed"] + len(data) > cut:
                    conn.sendall(data[: cut - state["relayed"]])
                    break
                state["relayed"] += len(data)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            _reset(conn)
            _reset(up)

    def _count(self, n: int) -> None:
        fire = None
        with self._lock:
            self.sent_up += n
            if self._trigger and self.sent_up >= self._trigger[0]:
                fire, self._trigger = self._trigger[1], None
        if fire:
            fire()


def _reset(s: socket.socket) -> None:
    """Close ``s`` at once (shutdown wakes the other thread blocked on it)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
