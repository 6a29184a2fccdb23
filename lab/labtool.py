#!/usr/bin/env python3
"""Small tools for the censorship lab (Python standard library only).

  serve     a test server (plain TCP or TLS): BULK n sends n bytes, SINK n reads n bytes and
            answers OK, anything else is echoed. `lab/run --selftest` puts it where the relay
            and the bridges will be, to check each censor rule without Tamizdat.
  fetch     the matching client: connects (directly or through SOCKS5), optionally does TLS,
            sends a command or raw bytes, and reports in JSON what happened and how fast.
  dns       one DNS question over UDP, TCP or DoH (RFC 8484); prints rcode and A answers.
  doctor    checks and summarises `tamizdat doctor --json` output.
  results   assembles $LAB_OUT/results.json from the per-scenario records `lab/run` writes.
"""

import argparse
import base64
import json
import os
import random
import select
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.request

# --------------------------------------------------------------------------- DNS wire format

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def dns_query(name, qtype=1):
    """A recursive query for NAME (type A by default) in DNS wire format."""
    header = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return header + labels + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(msg, off):
    while True:
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n


def dns_parse(msg):
    """rcode, the A answers and the truncation bit of a DNS response."""
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    answers = []
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        if rtype == 1 and rdlen == 4:
            answers.append(socket.inet_ntoa(msg[off:off + 4]))
        off += rdlen
    return {"rcode": RCODES.get(flags & 0xF, str(flags & 0xF)), "answers": answers, "truncated": bool(flags & 0x200)}


def dns_udp(server, port, wire, timeout):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (server, port))
        return s.recv(4096)


def dns_tcp(server, port, wire, timeout):
    with socket.create_connection((server, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        size = struct.unpack("!H", _recv_exact(s, 2))[0]
        return _recv_exact(s, size)


def dns_doh(url, wire, timeout, cafile, method):
    ctx = ssl.create_default_context(cafile=cafile)
    if method == "GET":
        q = base64.urlsafe_b64encode(wire).rstrip(b"=").decode()
        req = urllib.request.Request(f"{url}?dns={q}", headers={"accept": "application/dns-message"})
    else:
        req = urllib.request.Request(url, data=wire, method="POST",
                                     headers={"content-type": "application/dns-message",
                                              "accept": "application/dns-message"})
    with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
        return resp.read()


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return buf


def cmd_dns(args):
    wire = dns_query(args.name)
    out = {"name": args.name, "via": args.via}
    try:
        if args.via == "udp":
            msg = dns_udp(args.server, args.port, wire, args.timeout)
        elif args.via == "tcp":
            msg = dns_tcp(args.server, args.port, wire, args.timeout)
        else:
            msg = dns_doh(args.server, wire, args.timeout, args.ca, args.method)
        out.update(dns_parse(msg))
    except (socket.timeout, TimeoutError):
        out["error"] = "timeout"
    except Exception as e:  # the lab wants the failure's kind, not a traceback
        out["error"] = _classify(e)
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- test server

def _serve_conn(conn, tls_ctx):
    conn.settimeout(30)
    try:
        if tls_ctx is not None:
            conn = tls_ctx.wrap_socket(conn, server_side=True)
        first = conn.recv(65536)
        if first.startswith(b"BULK "):
            # Small writes, so TLS records are small too: a client cut off after ~16 KB (the
            # freeze) must still be able to count what it did receive.
            n = int(first.split()[1])
            block = b"x" * 1024
            while n > 0:
                conn.sendall(block[:min(n, len(block))])
                n -= min(n, len(block))
        elif first.startswith(b"SINK "):
            n = int(first.split()[1])
            got = len(first) - len(first.split(b"\n", 1)[0]) - 1
            while got < n:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                got += len(chunk)
            conn.sendall(b"OK\n")
        else:
            while first:
                conn.sendall(first)
                first = conn.recv(65536)
    except (OSError, ValueError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def cmd_serve(args):
    tls_ctx = None
    if args.cert:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(args.cert, args.key)
    host, port = args.listen.rsplit(":", 1)
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_serve_conn, args=(conn, tls_ctx), daemon=True).start()


# --------------------------------------------------------------------------- test client

def _classify(e):
    """A short word for a network failure, the way the scenarios and the doctor talk."""
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ssl.SSLError):
        return "tls-error:" + (e.reason or str(e))
    if isinstance(e, OSError) and e.errno in (101, 113):
        return "unreachable"
    if isinstance(e, urllib.request.URLError):
        return _classify(e.reason) if isinstance(e.reason, Exception) else str(e.reason)
    return type(e).__name__ + ":" + str(e)


def _socks5_connect(sock, host, port):
    sock.sendall(b"\x05\x01\x00")
    if _recv_exact(sock, 2) != b"\x05\x00":
        raise ConnectionError("socks: no acceptable method")
    sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port))
    reply = _recv_exact(sock, 10)
    if reply[1] != 0:
        raise ConnectionError(f"socks: connect failed with code {reply[1]}")


def cmd_fetch(args):
    """Connect, (TLS), send, then read until EOF, an idle gap or the overall timeout."""
    out = {"connect": None, "tls": None, "sent": 0, "received": 0, "end": None}
    host, port = args.connect.rsplit(":", 1)
    port = int(port)
    t0 = time.monotonic()
    try:
        if args.socks:
            phost, pport = args.socks.rsplit(":", 1)
            sock = socket.create_connection((phost, int(pport)), timeout=args.connect_timeout)
            _socks5_connect(sock, host, port)
        else:
            sock = socket.create_connection((host, port), timeout=args.connect_timeout)
        out["connect"] = "ok"
    except Exception as e:
        out["connect"] = _classify(e)
        out["seconds"] = round(time.monotonic() - t0, 3)
        print(json.dumps(out))
        return 0
    out["connect_seconds"] = round(time.monotonic() - t0, 3)
    try:
        sock.settimeout(args.idle)
        if args.tls:
            ctx = ssl.create_default_context(cafile=args.ca) if args.ca else ssl._create_unverified_context()
            if not args.ca:
                ctx.check_hostname = False
            # Python sends no SNI for an IP address; it is still what the certificate is checked for.
            sock = ctx.wrap_socket(sock, server_hostname=args.sni or (host if args.ca else None))
            out["tls"] = "ok"
        payload = b""
        if args.send:
            payload = args.send.encode().decode("unicode_escape").encode("latin-1")
        if args.send_random:
            payload += random.Random(7).randbytes(args.send_random)
        if args.upload:
            payload = f"SINK {args.upload}\n".encode() + b"u" * args.upload
        t_send = time.monotonic()
        if payload:
            sock.sendall(payload)
            out["sent"] = len(payload)
        deadline = t_send + args.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                out["end"] = "timeout"
                break
            sock.settimeout(min(args.idle, left))
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                out["end"] = "idle" if left > args.idle else "timeout"
                break
            if not chunk:
                out["end"] = "eof"
                break
            if out["received"] == 0:
                out["first_byte_seconds"] = round(time.monotonic() - t_send, 3)
                out["first_bytes"] = chunk[:8].hex()
                out["first_text"] = chunk[:24].decode("latin-1")
            out["received"] += len(chunk)
            out["last_byte_seconds"] = round(time.monotonic() - t_send, 3)
            if args.expect and out["received"] >= args.expect:
                out["end"] = "complete"
                break
    except Exception as e:
        kind = _classify(e)
        if out["tls"] is None and args.tls:
            out["tls"] = kind
        out["end"] = kind
    finally:
        sock.close()
    out["seconds"] = round(time.monotonic() - t0, 3)
    # The rate of the transfer itself: from sending the request to the last byte in.
    moved = out["received"] if not args.upload else out["sent"]
    span = out.get("last_byte_seconds") or 0
    if moved and span:
        out["kbit_per_s"] = round(moved * 8 / 1000 / span, 1)
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- doctor output

def _load_doctor(path):
    """The one JSON object `tamizdat doctor --json` prints (tolerating stray lines around it)."""
    text = open(path, encoding="utf-8", errors="replace").read()
    try:
        return json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            return None
        try:
            return json.loads(text[start:end + 1])
        except ValueError:
            return None


def cmd_doctor(args):
    d = _load_doctor(args.file)
    if args.action == "summary":
        if not isinstance(d, dict):
            print("(no JSON from doctor)")
            return 0
        parts = [f"verdict={d.get('verdict')}"]
        for e in d.get("endpoints") or []:
            parts.append(f"[{e.get('endpoint')}: {e.get('verdict')}]")
        print(" ".join(parts))
        return 0
    # check VERDICT [SUBSTRING]: any endpoint (whose name contains SUBSTRING) has VERDICT;
    # without a substring the overall verdict counts too.
    if not isinstance(d, dict):
        return 1
    want, sub = args.verdict, args.substring or ""
    for e in d.get("endpoints") or []:
        if e.get("verdict") == want and sub in str(e.get("endpoint", "")):
            return 0
    return 0 if not sub and d.get("verdict") == want else 1


# --------------------------------------------------------------------------- results.json

def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cmd_results(args):
    """Each scenario directory holds record.tsv (KEY<TAB>VALUE lines) and doctor*.json."""
    out_dir = args.out
    scenarios = []
    for entry in sorted(os.listdir(out_dir)):
        rec_path = os.path.join(out_dir, entry, "record.tsv")
        if not os.path.isfile(rec_path):
            continue
        rec, subruns = {}, {}
        with open(rec_path, encoding="utf-8") as f:
            for line in f:
                if "\t" not in line:
                    continue
                key, value = line.rstrip("\n").split("\t", 1)
                if "." in key:  # subrun.key
                    sub, k = key.split(".", 1)
                    subruns.setdefault(sub, {})[k] = value
                else:
                    rec[key] = value
        item = {
            "number": int(rec.get("number", 0)),
            "name": rec.get("name"),
            "pass": rec.get("pass") == "1",
            "reason": rec.get("reason") or None,
            "setup_seconds": _num(rec.get("setup_s")),
            "seconds_to_first_message": {"alice_to_bob": _num(rec.get("a2b_s")),
                                         "bob_to_alice": _num(rec.get("b2a_s"))},
            "total_seconds": _num(rec.get("total_s")),
            "doctor": [],
        }
        for key in ("pairing_s", "bulk_expected", "bulk_received", "bulk_sync_s"):
            if key in rec:
                item[key[:-2] + "_seconds" if key.endswith("_s") else key] = _num(rec[key])
        if "probe_findings" in rec:
            item["probe_findings"] = rec["probe_findings"]
        item["censor_hits"] = [h for h in rec.get("censor_hits", "").split("|") if h]
        for name, sub in sorted(subruns.items()):
            item.setdefault("subruns", []).append({
                "name": name, "pass": sub.get("pass") == "1", "reason": sub.get("reason") or None,
                "setup_seconds": _num(sub.get("setup_s")),
                "censor_hits": [h for h in sub.get("censor_hits", "").split("|") if h],
                "seconds_to_first_message": {"alice_to_bob": _num(sub.get("a2b_s")),
                                             "bob_to_alice": _num(sub.get("b2a_s"))}})
        for doc in sorted(os.listdir(os.path.join(out_dir, entry))):
            if doc.startswith("doctor") and doc.endswith(".json"):
                d = _load_doctor(os.path.join(out_dir, entry, doc))
                seen = {"file": os.path.join(entry, doc), "verdict": None, "endpoints": []}
                if isinstance(d, dict):
                    seen["verdict"] = d.get("verdict")
                    seen["endpoints"] = [{"endpoint": e.get("endpoint"), "transport": e.get("transport"),
                                          "verdict": e.get("verdict")} for e in d.get("endpoints") or []]
                item["doctor"].append(seen)
        scenarios.append(item)
    scenarios.sort(key=lambda s: s["number"])
    meta = {}
    meta_path = os.path.join(out_dir, "meta.tsv")
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
    result = {"lab": meta, "scenarios": scenarios,
              "passed": sum(s["pass"] for s in scenarios), "total": len(scenarios)}
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return 0


# --------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve")
    s.add_argument("--listen", required=True)
    s.add_argument("--cert")
    s.add_argument("--key")

    f = sub.add_parser("fetch")
    f.add_argument("--connect", required=True, help="IP:PORT")
    f.add_argument("--socks", help="reach IP:PORT through this SOCKS5 proxy")
    f.add_argument("--tls", action="store_true")
    f.add_argument("--sni", help="server name to send (none by default, like an IP-literal client)")
    f.add_argument("--ca", help="verify against this CA (no verification otherwise)")
    f.add_argument("--send", help="text to send (backslash escapes allowed)")
    f.add_argument("--send-random", type=int, default=0, help="then this many random bytes")
    f.add_argument("--upload", type=int, default=0, help="send SINK N and N bytes")
    f.add_argument("--expect", type=int, default=0, help="stop after this many bytes")
    f.add_argument("--idle", type=float, default=3.0, help="stop after this long without data")
    f.add_argument("--timeout", type=float, default=20.0)
    f.add_argument("--connect-timeout", type=float, default=4.0)

    d = sub.add_parser("dns")
    d.add_argument("--via", choices=["udp", "tcp", "doh"], default="udp")
    d.add_argument("--server", required=True, help="IP, or the DoH URL with --via doh")
    d.add_argument("--port", type=int, default=53)
    d.add_argument("--ca")
    d.add_argument("--method", choices=["POST", "GET"], default="POST")
    d.add_argument("--timeout", type=float, default=3.0)
    d.add_argument("name")

    doc = sub.add_parser("doctor")
    doc.add_argument("action", choices=["check", "summary"])
    doc.add_argument("file")
    doc.add_argument("verdict", nargs="?")
    doc.add_argument("substring", nargs="?")

    r = sub.add_parser("results")
    r.add_argument("out")

    args = p.parse_args()
    handler = {"serve": cmd_serve, "fetch": cmd_fetch, "dns": cmd_dns, "doctor": cmd_doctor,
               "results": cmd_results}[args.cmd]
    sys.exit(handler(args))


if __name__ == "__main__":
    main()
