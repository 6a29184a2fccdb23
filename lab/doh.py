#!/usr/bin/env python3
"""A DNS-over-HTTPS server for the lab (RFC 8484), Python standard library only.

It answers `POST /dns-query` (body: a DNS message, content-type application/dns-message) and
`GET /dns-query?dns=<base64url>` by forwarding the wire query over UDP (TCP if the answer is
truncated) to an ordinary resolver, and returning its answer unchanged.

HTTP/1.1 only: that is what Tamizdat's client speaks.

    doh.py --listen 192.0.2.53:443 --cert doh.pem --key doh.key --upstream 192.0.2.53:53
"""

import argparse
import base64
import http.server
import socket
import socketserver
import ssl
import struct
import sys
import urllib.parse

from labtool import _recv_exact

UPSTREAM = ("127.0.0.1", 53)


def resolve(query: bytes) -> bytes:
    """Sends the wire-format query to the upstream resolver; returns its wire answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for _ in range(2):
            s.sendto(query, UPSTREAM)
            try:
                answer = s.recv(65535)
                break
            except socket.timeout:
                continue
        else:
            raise TimeoutError("upstream resolver did not answer")
    if len(answer) >= 4 and answer[2] & 0x02:  # TC: ask again over TCP
        with socket.create_connection(UPSTREAM, timeout=3) as t:
            t.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", _recv_exact(t, 2))[0]
            answer = _recv_exact(t, size)
    return answer


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "doh"
    sys_version = ""
    timeout = 30

    def handle(self):
        try:
            self.connection.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().handle()

    def _answer(self, query):
        try:
            body, status, ctype = resolve(query), 200, "application/dns-message"
        except (TimeoutError, OSError):
            body, status, ctype = b"upstream failed\n", 502, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=0")
        self.end_headers()
        self.wfile.write(body)

    def _fail(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/dns-query":
            return self._fail(404, "not found")
        q = urllib.parse.parse_qs(url.query).get("dns")
        if not q:
            return self._fail(400, "missing dns parameter")
        try:
            query = base64.urlsafe_b64decode(q[0] + "=" * (-len(q[0]) % 4))
        except ValueError:
            return self._fail(400, "dns parameter is not base64url")
        self._answer(query)

    def do_POST(self):
        if urllib.parse.urlsplit(self.path).path != "/dns-query":
            return self._fail(404, "not found")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/dns-message":
            return self._fail(415, "content-type must be application/dns-message")
        length = int(self.headers.get("Content-Length") or 0)
        if not 12 <= length <= 65535:
            return self._fail(400, "bad length")
        self._answer(self.rfile.read(length))

    def log_message(self, fmt, *args):
        sys.stderr.write("doh: %s %s\n" % (self.client_address[0], fmt % args))


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, ctx):
        super().__init__(addr, Handler)
        self.ctx = ctx

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(30)
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


def main():
    global UPSTREAM
    p = argparse.ArgumentParser(description="Lab DNS-over-HTTPS server (RFC 8484).")
    p.add_argument("--listen", default="192.0.2.53:443")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--upstream", default="127.0.0.1:53")
    args = p.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    UPSTREAM = (host, int(port))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    host, port = args.listen.rsplit(":", 1)
    Server((host, int(port)), ctx).serve_forever()


if __name__ == "__main__":
    main()
