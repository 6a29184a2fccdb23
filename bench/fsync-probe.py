#!/usr/bin/env python3
"""How long the disk under a directory takes to make a write durable: the floor under the
relay's group commit. Each round overwrites 92 KiB (23 pages, about one commit's WAL frames at
20,000 messages a second) in a preallocated file, then times fsync or fdatasync.

    python3 bench/fsync-probe.py [DIR] [ROUNDS]

DIR defaults to the system's temporary directory (where `tamizdat-bench` puts its relays),
ROUNDS to 3,000. Prints p50, p90, p99, p99.9 and the maximum, in milliseconds, for each call.
"""
import os
import sys
import tempfile
import time

PAGE, PAGES, SPAN = 4096, 23, 1900


def probe(directory, sync, rounds):
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        os.pwrite(fd, b"\0" * (PAGE * (SPAN + PAGES)), 0)
        os.fsync(fd)
        frame, offset, took = b"x" * (PAGE * PAGES), 0, []
        for _ in range(rounds):
            os.pwrite(fd, frame, offset)
            offset = (offset + len(frame)) % (PAGE * SPAN)
            start = time.perf_counter()
            sync(fd)
            took.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    took.sort()
    at = lambda q: took[min(len(took) - 1, int(len(took) * q))]
    return f"p50 {at(0.5):.3f}  p90 {at(0.9):.3f}  p99 {at(0.99):.3f}  p99.9 {at(0.999):.3f}  max {took[-1]:.3f}"


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    try:
        rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    except ValueError:
        print(f"usage: {sys.argv[0]} [DIR] [ROUNDS]", file=sys.stderr)
        sys.exit(2)
    if not os.path.isdir(directory) or rounds < 1:
        print(f"usage: {sys.argv[0]} [DIR] [ROUNDS]  (DIR must exist, ROUNDS > 0)", file=sys.stderr)
        sys.exit(2)
    for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
        print(f"{name:9} ms  {probe(directory, sync, rounds)}")


if __name__ == "__main__":
    main()
