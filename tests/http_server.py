"""The one HTTP server of the test suite: serves a folder from 127.0.0.1, misbehaves on demand.

Tests never touch the network: every test that downloads starts a `FileServer` on a free local
port. `server.faults[name]` makes the file called `name` (the last path component, or the whole
request path) misbehave; a fault is a function `(handler, body)` that writes the whole response,
and the factories below cover the usual ones (HTTP errors, truncated, corrupted, slow, hostile).

Example:
    with FileServer(tmp_path) as server:
        server.faults["model.weights.h5"] = status(404)
        fetch(f"{server.url}/preset/model.weights.h5")  # -> HTTP 404
        assert server.requests == ["/preset/model.weights.h5"]
"""

import http.server
import threading
import time
from pathlib import Path


class FileServer:
    """Serves the files under `root` on 127.0.0.1 (a free port) until `stop()`.

    Attributes:
        url: `http://127.0.0.1:<port>`.
        requests: the paths requested so far, in order.
        faults: file name (or request path) -> fault function, see the module docstring.
        delay_s: seconds to wait before answering any request.
    """

    def __init__(self, root):
        self.root = Path(root).resolve()
        self.faults = {}
        self.requests = []
        self.delay_s = 0.0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def fault_for(self, path):
        return self.faults.get(path) or self.faults.get(path.rsplit("/", 1)[-1])

    def body_of(self, path):
        """The bytes of the file at request `path`, or None (missing, or outside the root)."""
        file_path = (self.root / path.split("?", 1)[0].lstrip("/")).resolve()
        if file_path != self.root and self.root not in file_path.parents:
            return None
        return file_path.read_bytes() if file_path.is_file() else None

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def _handler_class(owner):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            owner.requests.append(self.path)
            time.sleep(owner.delay_s)
            body = owner.body_of(self.path)
            fault = owner.fault_for(self.path)
            try:
                if fault is not None:
                    fault(self, body)
                elif body is None:
                    self.send_error(404)
                else:
                    send(self, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # The client gave up (a test of its deadline or size cap): nothing to do.

    return Handler


def send(handler, body, status_code=200, headers=None):
    """A complete response; `headers` replace the default Content-Length if they name one."""
    handler.send_response(status_code)
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    for key, value in headers.items():
        if value is not None:
            handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


# ------------------------------------------------------------------------------------ faults


def status(code):
    """An HTTP error status."""
    return lambda handler, body: handler.send_error(code)


def truncate(handler, body):
    """The right Content-Length, half the body, then the connection closes."""
    send_headers(handler, len(body))
    handler.wfile.write(body[: len(body) // 2])


def corrupt(handler, body):
    """The right length, the last byte flipped."""
    send(handler, body[:-1] + bytes([body[-1] ^ 0xFF]))


def respond(content, headers=None, status_code=200):
    """A fixed response instead of the file (an HTML error page, a huge or malformed header...)."""
    return lambda handler, body: send(handler, content, status_code, headers)


def drip(interval_s=1.0, length=None):
    """Headers at once (Content-Length `length`, default the file's), then one byte per interval."""

    def fault(handler, body):
        send_headers(handler, len(body) if length is None else length)
        for index in range(len(body)):
            handler.wfile.write(body[index:index + 1])
            time.sleep(interval_s)

    return fault


def drip_headers(interval_s=1.0):
    """The status line and headers one byte per interval: a peer that never gets to the body."""

    def fault(handler, body):
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for index in range(len(head)):
            handler.wfile.write(head[index:index + 1])
            time.sleep(interval_s)
        handler.wfile.write(body)

    return fault


def endless(chunk=b"\0" * 65536, content_length=None):
    """A body without end (no Content-Length unless given): only a size cap stops it."""

    def fault(handler, body):
        send_headers(handler, content_length)
        while True:
            handler.wfile.write(chunk)

    return fault


def send_headers(handler, content_length):
    handler.send_response(200)
    if content_length is not None:
        handler.send_header("Content-Length", str(content_length))
    handler.end_headers()
