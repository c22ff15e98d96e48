"""A file server on 127.0.0.1 for the download tests, started in a thread by the test itself.

``server.files`` maps a URL path's file name to bytes; ``server.cut_after`` makes it announce the
whole length and close the connection after that many bytes (a dropped download);
``server.stall_seconds`` makes it wait after the headers; ``server.requests`` counts what was asked for.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "FileServer"

    def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        self.server.requests[name] += 1
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.server.stall_seconds:
            time.sleep(self.server.stall_seconds)
        cut = self.server.cut_after.get(name)
        self.wfile.write(data if cut is None else data[:cut])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


class FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.requests: Counter[str] = Counter()
        self.stall_seconds = 0.0  # wait this long after the headers (a stalled download)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def closed_port_url() -> str:
    """A 127.0.0.1 URL where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
