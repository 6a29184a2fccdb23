#!/usr/bin/env python3
"""An active prober, like the one that found Shadowsocks servers in China (net4people/bbs#22,
#58): watch a suspect's first flight, then connect to the server yourself, replay and mutate
it, poke with junk and with ordinary web requests, and see whether anything gives the server
away. A relay passes if it answers every probe the way an ordinary HTTPS web server (nginx)
would, and the same from the censor's vantage point as from an unblocked one.

  probe.py capture --iface tzl-client --src 10.10.1.2 --dst 203.0.113.10:443 --out hello.bin
      sniffs (AF_PACKET) the first TCP flow from SRC to DST and writes the client's first TLS
      record (reassembled across segments), or its first segment if that is not TLS.
  probe.py probe --target 203.0.113.10:443 --hello hello.bin --out censor.json
      runs the probe sequence; mutations are seeded, so every vantage sends the same bytes.
  probe.py report censor.json peer.json
      prints a findings table; exits 1 if there is any finding.
"""

import argparse
import hashlib
import json
import random
import socket
import ssl
import struct
import sys
import time

HANG = 30.0  # seconds without an answer or a close that we call a hang (nginx: 60 s timeouts)
TRUNCATED_WAIT = 12.0
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


# --------------------------------------------------------------------------- capture

def cmd_capture(args):
    src = socket.inet_aton(args.src)
    dhost, dport = args.dst.rsplit(":", 1)
    dst, dport = socket.inet_aton(dhost), int(dport)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    s.bind((args.iface, 0))
    deadline = time.monotonic() + args.timeout
    flow_port, base, segments = None, None, {}
    result = None
    while result is None and time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            frame = s.recv(65535)
        except socket.timeout:
            break
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl, total = (ip[0] & 0x0F) * 4, struct.unpack("!H", ip[2:4])[0]
        if ip[9] != 6 or ip[12:16] != src or ip[16:20] != dst:
            continue
        tcp = ip[ihl:total]
        sport, port, seq = struct.unpack("!HHI", tcp[:8])
        if port != dport or (flow_port is not None and sport != flow_port):
            continue
        flags, payload = tcp[13], tcp[(tcp[12] >> 4) * 4:]
        if flow_port is None:
            if flags & 0x02:  # SYN: data starts at ISN + 1
                flow_port, base = sport, (seq + 1) & 0xFFFFFFFF
                continue
            if not payload:
                continue
            flow_port, base = sport, seq  # joined mid-connection: start at this segment
        if not payload:
            continue
        segments[(seq - base) & 0xFFFFFFFF] = payload
        data = _contiguous(segments)
        if data and data[0] != 0x16:
            result = data  # not TLS: the first flight is what it is
        elif len(data) >= 5 and len(data) >= 5 + struct.unpack("!H", data[3:5])[0]:
            result = data[:5 + struct.unpack("!H", data[3:5])[0]]
    if result is None:
        print(json.dumps({"captured": 0, "error": "no first flight seen"}))
        return 1
    with open(args.out, "wb") as f:
        f.write(result)
    print(json.dumps({"captured": len(result), "source_port": flow_port, "first_bytes": result[:6].hex()}))
    return 0


def _contiguous(segments):
    out, off = b"", 0
    while off in segments:
        out += segments[off]
        off += len(segments[off])
    return out


# --------------------------------------------------------------------------- probes

def _classify_error(e):
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return "tls-error"
    return "error"


def raw_probe(target, payload, wait=HANG):
    """Sends bytes on a fresh TCP connection; classifies the first answer (within WAIT s)."""
    t0 = time.monotonic()
    obs = {"kind": "raw", "sent": len(payload)}
    try:
        with socket.create_connection(target, timeout=5) as s:
            s.sendall(payload)
            s.settimeout(wait)
            first = s.recv(4096)
    except Exception as e:
        obs.update(cls=_classify_error(e), seconds=round(time.monotonic() - t0, 2))
        return obs
    obs["seconds"] = round(time.monotonic() - t0, 2)
    if not first:
        obs["cls"] = "close"
    elif first[0] == 0x16:
        obs["cls"] = "tls-handshake"
    elif first[0] == 0x15:
        obs["cls"] = "tls-alert"
    else:
        obs["cls"] = "plaintext"
        obs["first_bytes"] = first[:32].decode("latin-1")
    return obs


def parse_http(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return status, headers, body


def http_obs(data, t0):
    obs = {"kind": "http", "seconds": round(time.monotonic() - t0, 2)}
    if not data.startswith(b"HTTP/"):
        obs.update(cls="not-http" if data else "close", first_bytes=data[:32].decode("latin-1"))
        return obs
    status, headers, body = parse_http(data)
    obs.update(cls="http", status=status, server=headers.get("server"),
               headers=sorted(h for h in headers if h not in ("date",)),
               body_len=len(body), body_sha=hashlib.sha256(body).hexdigest()[:16],
               nginx_body=b"<center>nginx</center>" in body)
    return obs


def _read_response(s):
    """One HTTP response: the head, then Content-Length bytes of body (or up to the close).
    A keep-alive server leaves the connection open after answering, as nginx does."""
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            _, headers, body = parse_http(data)
            length = headers.get("content-length", "")
            if length.isdigit() and len(body) >= int(length):
                return data
        try:
            chunk = s.recv(65536)
        except (socket.timeout, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk


def plain_http_probe(target, host):
    t0 = time.monotonic()
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\nAccept: */*\r\n\r\n".encode()
    try:
        with socket.create_connection(target, timeout=5) as s:
            s.sendall(req)
            s.settimeout(HANG)
            data = _read_response(s)
    except Exception as e:
        return {"kind": "http", "cls": _classify_error(e), "seconds": round(time.monotonic() - t0, 2)}
    return http_obs(data, t0)


def https_probe(target, host, path, extra=""):
    t0 = time.monotonic()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    connection = "" if "Connection:" in extra else "Connection: close\r\n"
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {UA}\r\nAccept: */*\r\n{extra}{connection}\r\n".encode()
    try:
        with socket.create_connection(target, timeout=5) as raw:
            raw.settimeout(HANG)
            with ctx.wrap_socket(raw) as s:
                s.sendall(req)
                data = _read_response(s)
    except Exception as e:
        return {"kind": "http", "cls": _classify_error(e), "seconds": round(time.monotonic() - t0, 2)}
    return http_obs(data, t0)


def mutations(hello, rng):
    """Probe payloads derived from the captured first flight, the same for every vantage."""
    out = {"replay": hello}
    if len(hello) > 43 and hello[0] == 0x16 and hello[5] == 0x01:
        m = bytearray(hello)
        for i in range(11, 43):  # the ClientHello random: still a well-formed hello
            m[i] ^= rng.randrange(1, 256)
        out["mutate-random"] = bytes(m)
    m = bytearray(hello)
    for i in rng.sample(range(len(hello) // 2, len(hello)), min(8, len(hello) // 2)):
        m[i] ^= 0xFF  # somewhere in the extensions: usually a decode error
    out["mutate-body"] = bytes(m)
    out["truncated"] = hello[:max(1, len(hello) // 2)]
    return out


def cmd_probe(args):
    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))
    rng = random.Random(args.seed)
    probes = {}
    if args.hello:
        hello = open(args.hello, "rb").read()
        for name, payload in mutations(hello, rng).items():
            # Half a hello: a server may wait for the rest as long as it likes (nginx: 60 s);
            # the prober gives up sooner, and either way is ordinary.
            probes[name] = raw_probe(target, payload, TRUNCATED_WAIT if name == "truncated" else HANG)
    probes["random-bytes"] = raw_probe(target, rng.randbytes(517))
    probes["http-plain"] = plain_http_probe(target, host)
    door = "/static/" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
                                for _ in range(22))
    asset = "/static/" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(10)) + ".js"
    for name, path, extra in [
        ("https /", "/", ""),
        ("https /robots.txt", "/robots.txt", ""),
        ("https /favicon.ico", "/favicon.ico", ""),
        ("https /static/<random>", asset, ""),
        ("https door-shaped", door, ""),
        ("https door-shaped ws", door, "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
    ]:
        probes[name] = https_probe(target, host, path, extra)
    with open(args.out, "w") as f:
        json.dump({"target": args.target, "probes": probes}, f, indent=1)
    return 0


# --------------------------------------------------------------------------- judgement

EXPECT_STATUS = {"http-plain": 400, "https /": 200, "https /robots.txt": 200, "https /favicon.ico": 404,
                 "https /static/<random>": 404, "https door-shaped": 404, "https door-shaped ws": 404}
RAW_OK = {
    "replay": {"tls-handshake", "tls-alert", "close"},
    "mutate-random": {"tls-handshake", "tls-alert", "close"},
    "mutate-body": {"tls-handshake", "tls-alert", "close", "reset"},
    "truncated": {"tls-alert", "close", "timeout", "reset"},
    "random-bytes": {"tls-alert", "close", "reset"},
}


def judge(name, obs):
    """What an ordinary nginx on 443 would not have done."""
    problems = []
    if obs.get("seconds", 0) >= HANG - 0.5 and obs.get("cls") in ("timeout", "close") and name != "truncated":
        problems.append(f"hung {obs['seconds']} s")
    if obs["kind"] == "raw":
        if obs["cls"] == "plaintext":
            problems.append(f"answered in plaintext: {obs.get('first_bytes')!r}")
        elif obs["cls"] not in RAW_OK.get(name, set()):
            problems.append(f"got {obs['cls']}")
        return problems
    if obs.get("cls") != "http":
        problems.append(f"no HTTP answer ({obs.get('cls')})")
        return problems
    want = EXPECT_STATUS.get(name)
    if want and obs.get("status") != want:
        problems.append(f"status {obs.get('status')}, nginx gives {want}")
    if obs.get("server") != "nginx":
        problems.append(f"Server: {obs.get('server')!r}")
    if obs.get("status") in (400, 404) and not obs.get("nginx_body"):
        problems.append("error page is not nginx's")
    return problems


def signature(obs):
    """What must be equal between vantages (dates and timings may differ)."""
    if obs["kind"] == "raw":
        return obs["cls"]
    return (obs.get("cls"), obs.get("status"), obs.get("server"), tuple(obs.get("headers") or ()), obs.get("body_len"))


def short(obs):
    if obs is None:
        return "-"
    if obs["kind"] == "raw" or obs.get("cls") != "http":
        return f"{obs.get('cls')} ({obs.get('seconds')} s)"
    return f"{obs.get('status')} {obs.get('server')} {obs.get('body_len')} B"


def cmd_report(args):
    censor = json.load(open(args.censor))["probes"]
    reference = json.load(open(args.reference))["probes"] if args.reference else {}
    findings = []
    rows = []
    for name, obs in censor.items():
        problems = judge(name, obs)
        ref = reference.get(name)
        if ref is not None:
            problems += [f"unblocked vantage: {p}" for p in judge(name, ref)]
            if signature(ref) != signature(obs):
                problems.append("differs from the unblocked vantage")
        rows.append((name, short(obs), short(ref), "; ".join(problems) or "ok"))
        findings += [f"{name}: {p}" for p in problems]
    if not censor:
        findings.append("no probes ran")
    widths = [max(len(r[i]) for r in rows + [("probe", "censor vantage", "unblocked vantage", "finding")])
              for i in range(4)]
    for r in [("probe", "censor vantage", "unblocked vantage", "finding")] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"{len(findings)} finding(s)")
    return 1 if findings else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("capture")
    c.add_argument("--iface", required=True)
    c.add_argument("--src", required=True)
    c.add_argument("--dst", required=True, help="IP:PORT")
    c.add_argument("--out", required=True)
    c.add_argument("--timeout", type=float, default=90)
    pr = sub.add_parser("probe")
    pr.add_argument("--target", required=True, help="IP:PORT")
    pr.add_argument("--hello", help="captured first flight to replay and mutate")
    pr.add_argument("--seed", type=int, default=9)
    pr.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("censor", help="observations from the censor's vantage")
    r.add_argument("reference", nargs="?", help="observations from an unblocked vantage")
    args = p.parse_args()
    sys.exit({"capture": cmd_capture, "probe": cmd_probe, "report": cmd_report}[args.cmd](args))


if __name__ == "__main__":
    main()
