"""A fault-injecting HTTP proxy for S3 tests: flaky object storage in front of the moto server, on 127.0.0.1.

    with FaultProxy("http://127.0.0.1:9000", fault_rate=0.1, seed=0) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url      # the S3 clients now talk to the proxy
        ...
        proxy.counts   # {"requests": 812, "500": 27, "503": 26, "reset": 28}

Every request is forwarded to the upstream server as it came (method, path, headers, body; a chunked body
stays chunked), except a `fault_rate` fraction, drawn from a seeded generator, which never reaches it and is
answered, in equal shares, with S3's `500 InternalError`, S3's `503 SlowDown` (throttling), or a connection
reset (the socket is closed with SO_LINGER 0, so the client reads an RST); `kinds` picks among them. These
are the transient faults an S3 client must retry; because a faulted request never reaches the server, a
retry is always safe, as it is against real S3 for these answers.

An outage: with `outage_flag=PATH`, the first request whose path contains `outage_match` after that file
appears removes it and starts `outage_s` seconds in which every request is answered 503 (another process,
e.g. a Ray Train callback, can so take storage down at a chosen upload for longer than the clients' retries
last).
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
           503: ("SlowDown", "Please reduce your request rate.")}


class FaultProxy:
    def __init__(self, upstream: str, *, fault_rate: float = 0.1, seed: int = 0, outage_flag: str = "",
                 outage_match: str = "", outage_s: float = 10.0,
                 kinds: tuple[str, ...] = ("500", "503", "reset")) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.fault_rate, self.outage_flag, self.outage_match, self.outage_s = (fault_rate, outage_flag,
                                                                               outage_match, outage_s)
        self.down_until = 0.0
        self.kinds = kinds  # the faults drawn, in equal shares
        self.counts = {"requests": 0, "500": 0, "503": 0, "reset": 0, "outage": 0}
        self.outage_log: list[str] = []  # "METHOD path" of every request the outage answered
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def draw(self, request: str = "") -> str:
        """"forward", or the fault this request gets ("500", "503", "reset"); counted."""
        with self._lock:
            self.counts["requests"] += 1
            if self.outage_flag and self.outage_match in request and os.path.exists(self.outage_flag):
                os.remove(self.outage_flag)
                self.down_until = time.monotonic() + self.outage_s
            if time.monotonic() < self.down_until:
                self.counts["outage"] += 1
                self.outage_log.append(request)
                return "503"
            if self._rng.random() >= self.fault_rate:
                return "forward"
            kind = self._rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *args) -> None:  # quiet
            pass

        def _any(self) -> None:
            body = self._read_body()
            kind = proxy.draw(f"{self.command} {self.path}")
            if kind == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if kind in ("500", "503"):
                self._answer_error(int(kind))
                return
            self._forward(body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        def _read_body(self) -> bytes:
            """The raw request body: Content-Length bytes, or a chunked body kept in its chunked encoding."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw = b""
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:  # trailers, then the blank line
                            t = self.rfile.readline()
                            raw += t
                            if t in (b"\r\n", b"\n", b""):
                                return raw
                    raw += self.rfile.read(size + 2)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer_error(self, status: int) -> None:
            code, message = _ERRORS[status]
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}'
                    f"</Message><RequestId>fault-proxy</RequestId></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self, body: bytes) -> None:
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
                for k, v in self.headers.items():
                    if k.lower() not in _HOP or (chunked and k.lower() == "transfer-encoding"):
                        conn.putheader(k, v)
                conn.endheaders()
                if body:
                    conn.send(body)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response_only(resp.status, resp.reason)  # the upstream's own Date and Server follow
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD"
                                                       else resp.getheader("Content-Length", "0")))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                conn.close()

    return Handler
