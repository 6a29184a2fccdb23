#!/usr/bin/env python3
"""A DNS-over-HTTPS server for the lab (RFC 8484), Python standard library only.

It answers `POST /dns-query` (body: a DNS message, content-type application/dns-message) and
`GET /dns-query?dns=<base64url>` by forwarding the wire query over UDP (TCP if the answer is
truncated) to an ordinary resolver, and returning its answer unchanged.

Both HTTP/1.1 and HTTP/2 are offered through ALPN, because common DoH clients (hickory's
among them) speak only HTTP/2. The HTTP/2 side is deliberately minimal: it does not decode
request headers (HPACK with Huffman coding is more than a lab needs), so over HTTP/2 every
request with a body is taken as a POST of a DNS query, and a request without a body gets
400. Responses are encoded with literal header fields only, so no HPACK state is kept.

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


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return buf


# --------------------------------------------------------------------------- HTTP/2 (minimal)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8


def h2_frame(ftype, flags, stream, payload=b""):
    return struct.pack("!I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack("!I", stream) + payload


def hpack_literal(index, value: bytes) -> bytes:
    """A literal header field without indexing, with an indexed name (RFC 7541, 6.2.2)."""
    out = bytearray()
    if index < 15:
        out.append(index)
    else:
        out += bytes([0x0F, index - 15])  # index - 15 < 128 for every name used here
    assert len(value) < 127
    out.append(len(value))  # H=0: no Huffman
    return bytes(out + value)


def h2_response(stream, status: int, body: bytes, ctype: bytes = b"application/dns-message") -> bytes:
    # Static table (RFC 7541, appendix A): 8 ":status", 24 "cache-control", 28 "content-length",
    # 31 "content-type", 54 "server".
    block = hpack_literal(8, str(status).encode())
    block += hpack_literal(31, ctype) + hpack_literal(28, str(len(body)).encode())
    block += hpack_literal(24, b"max-age=0")
    return h2_frame(HEADERS, END_HEADERS, stream, block) + h2_frame(DATA, END_STREAM, stream, body)


def serve_h2(tls):
    """One HTTP/2 connection: SETTINGS/PING handshaking, then each stream's DATA is a query."""
    if _recv_exact(tls, len(H2_PREFACE)) != H2_PREFACE:
        return
    tls.sendall(h2_frame(SETTINGS, 0, 0))
    bodies = {}
    while True:
        head = _recv_exact(tls, 9)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        stream = struct.unpack("!I", head[5:9])[0] & 0x7FFFFFFF
        payload = _recv_exact(tls, length)
        if ftype == SETTINGS and not flags & ACK:
            tls.sendall(h2_frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            tls.sendall(h2_frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            return
        elif ftype == HEADERS:
            bodies.setdefault(stream, b"")
            if flags & END_STREAM:  # no body: a GET we cannot read without HPACK decoding
                bodies.pop(stream, None)
                tls.sendall(h2_response(stream, 400, b"use POST over HTTP/2\n", b"text/plain"))
        elif ftype == DATA:
            if length:  # give the connection's flow-control window back; streams are short
                tls.sendall(h2_frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", length)))
            if flags & PADDED and payload:
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            bodies[stream] = bodies.get(stream, b"") + payload
            if flags & END_STREAM:
                query = bodies.pop(stream)
                try:
                    tls.sendall(h2_response(stream, 200, resolve(query)))
                except (TimeoutError, OSError) as e:
                    if isinstance(e, (BrokenPipeError, ConnectionResetError)):
                        return
                    tls.sendall(h2_response(stream, 502, b"upstream failed\n", b"text/plain"))
        elif ftype == RST_STREAM:
            bodies.pop(stream, None)
        # WINDOW_UPDATE, PRIORITY, CONTINUATION and unknown frames need nothing from us.


# --------------------------------------------------------------------------- HTTP/1.1

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
        if self.connection.selected_alpn_protocol() == "h2":
            try:
                serve_h2(self.connection)
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            self.close_connection = True
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
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    host, port = args.listen.rsplit(":", 1)
    Server((host, int(port)), ctx).serve_forever()


if __name__ == "__main__":
    main()
