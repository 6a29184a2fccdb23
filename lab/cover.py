#!/usr/bin/env python3
"""The lab's cover web host: a small HTTPS site that looks like a stock nginx.

Poisoned DNS answers (scenario 3) point here, so a client that trusts the wrong address meets
an ordinary web server with a certificate that is not the relay's. `lab/run --selftest` also
uses it as the reference "ordinary web server" for the prober (lab/probe.py).

    cover.py --listen 192.0.2.80:443 --cert cover.pem --key cover.key
"""

import argparse
import email.utils
import socket
import ssl
import sys
import threading

PAGES = {
    "/": ("text/html", b"<!DOCTYPE html>\n<html><head><title>Welcome</title></head>\n"
                       b"<body><h1>It works</h1><p>Nothing to see here.</p></body></html>\n"),
    "/robots.txt": ("text/plain", b"User-agent: *\nAllow: /\n"),
}


def nginx_error(code, title, extra=""):
    return (f"<html>\r\n<head><title>{code} {title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{code} {title}</h1></center>\r\n{extra}"
            f"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n").encode()


NOT_FOUND = nginx_error(404, "Not Found")
BAD_REQUEST = nginx_error(400, "Bad Request")
PLAIN_HTTP = (b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n"
              b"<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
              b"<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
              b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Not Allowed"}


def response(status, ctype, body, head_only=False, close=False):
    lines = [f"HTTP/1.1 {status} {REASONS[status]}", "Server: nginx",
             f"Date: {email.utils.formatdate(usegmt=True)}", f"Content-Type: {ctype}",
             f"Content-Length: {len(body)}", f"Connection: {'close' if close else 'keep-alive'}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        if len(buf) > 8192:
            return None, buf
        chunk = conn.recv(4096)
        if not chunk:
            return None, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def serve(conn, ctx):
    conn.settimeout(60)
    try:
        first = conn.recv(1, socket.MSG_PEEK)
        if first and first.isupper():  # plain HTTP on the TLS port, answered as nginx does
            head, _ = read_head(conn, b"")
            if head is not None:
                conn.sendall(response(400, "text/html", PLAIN_HTTP, close=True))
            return
        conn = ctx.wrap_socket(conn, server_side=True)
        buf = b""
        for _ in range(100):
            head, buf = read_head(conn, buf)
            if head is None:
                return
            request = head.split(b"\r\n")[0].decode("latin-1").split()
            if len(request) != 3 or not request[2].startswith("HTTP/1."):
                conn.sendall(response(400, "text/html", BAD_REQUEST, close=True))
                return
            method, path = request[0], request[1].split("?")[0]
            close = b"connection: close" in head.lower()
            if method not in ("GET", "HEAD"):
                conn.sendall(response(405, "text/html", nginx_error(405, "Not Allowed"), close=True))
                return
            ctype, body = PAGES.get(path, ("text/html", None))
            status = 200 if body is not None else 404
            conn.sendall(response(status, ctype, body if body is not None else NOT_FOUND, method == "HEAD", close))
            if close:
                return
    except (OSError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def main():
    p = argparse.ArgumentParser(description="Lab cover web host (nginx look-alike).")
    p.add_argument("--listen", default="192.0.2.80:443")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    args = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])
    host, port = args.listen.rsplit(":", 1)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(64)
    print(f"cover: listening on {args.listen}", file=sys.stderr)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, ctx), daemon=True).start()


if __name__ == "__main__":
    main()
