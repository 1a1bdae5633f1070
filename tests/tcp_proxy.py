"""A TCP proxy in front of a server whose connections a test can cut, like a network blip."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from types import TracebackType

_LAST_EVENT_ID = re.compile(rb"(?im)^last-event-id:[ \t]*([^\r\n]*)\r?$")


class CuttableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_port``; :meth:`cut` drops every open connection.

    ``last_event_ids`` lists the ``Last-Event-ID`` header of every request that
    carried one, in order (requests are read as they pass, never changed);
    ``accepted`` counts the connections clients opened (also those it could not forward).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.last_event_ids: list[str] = []
        self.accepted = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.refusing = False
        """While set, new connections are closed at once (the server looks down)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CuttableProxy:
        self._spawn(self._accept)
        return self

    def cut(self) -> None:
        """Close every connection open now; new ones are accepted as before."""
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            _close(sock)

    def down(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`up`."""
        self.refusing = True
        self.cut()

    def up(self) -> None:
        """Forward new connections again."""
        self.refusing = False

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> CuttableProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.refusing:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, request: bool) -> None:
        seen = bytearray()
        try:
            while chunk := source.recv(65536):
                if request:
                    seen += chunk
                    while b"\r\n\r\n" in seen:  # one whole request head (stream requests have no body)
                        head, _, rest = bytes(seen).partition(b"\r\n\r\n")
                        seen = bytearray(rest)
                        match = _LAST_EVENT_ID.search(head)
                        if match:
                            self.last_event_ids.append(match.group(1).decode())
                sink.sendall(chunk)
        except OSError:
            return  # cut, or the other side closed
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
