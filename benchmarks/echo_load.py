"""The load generator of ``benchmarks/echo.py``: one process, raw sockets, no library.

It is driven by the orchestrator over stdin/stdout, one JSON object per line each
way: a command (``{"cmd": "echo", ...}``) in, its result out. It stays alive for the
whole run, so the connections it holds (for the memory and fan-out measurements)
outlive a single command.

It is written so that it is not the bottleneck, and so that it does the same work
whatever the server:

* client frames (masked, as RFC 6455 requires) are built **once** per run, by hand
  (no WebSocket library is imported here), and the stream sent is that frame
  repeated: a window of 64 frames is pre-built and sent with one ``send()`` per
  batch from a ``memoryview``;
* replies are counted, not decoded: the parser reads each frame's 2- to 10-byte
  header to find where the next one starts and skips the payload; a message counts
  once its last byte has arrived;
* sockets are non-blocking and driven by ``poll``/``epoll``, so a server that
  pushes back (a full window of 1 MiB messages) never deadlocks it.

For the raw TCP echo servers the same bytes-per-message are sent unframed and a
message is ``size`` bytes of echo.

CPU time: the server's is ``utime + stime`` from ``/proc/<pid>/stat`` (all its
threads; clock ticks, 10 ms) read just before and just after the measured window;
the generator's own is ``time.process_time()``.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import resource
import select
import socket
import struct
import sys
import time
from typing import Any

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEY = base64.b64encode(b"trillium-bench-k").decode()  # 16 bytes, as RFC 6455 asks
ACCEPT = base64.b64encode(
    hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
)
STALL = 15.0  # seconds without progress before a measurement is declared stuck


class Failure(Exception):
    """The server misbehaved (or died): reported to the orchestrator, not raised."""


# --------------------------------------------------------------------- /proc


def server_cpu(pid: int) -> float:
    """The server's CPU seconds so far (user + system, all threads)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise Failure(f"server process {pid} is gone") from None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        raise Failure(f"server process {pid} died")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------- frames


def xor_mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One FIN frame, masked as a client must."""
    key = key if key is not None else os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + key + xor_mask(payload, key)


CLOSE_FRAME = client_frame(0x8, struct.pack("!H", 1000))
GO_FRAME = client_frame(0x2, b"go")


def upgrade_request(port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def check_response(head: bytes) -> None:
    if not head.startswith(b"HTTP/1.1 101"):
        raise Failure(f"handshake refused: {head[:200]!r}")
    if ACCEPT not in head:
        raise Failure(f"wrong Sec-WebSocket-Accept in {head[:400]!r}")


class FrameCounter:
    """Counts complete server messages in a byte stream, reading headers only.

    The caller receives into ``buf[keep:]`` and calls ``feed(n)``; an incomplete
    header is moved to the front of ``buf`` (``keep`` bytes) for the next read, and
    a payload that runs past the read is skipped in later ones.
    """

    def __init__(self, buf: bytearray) -> None:
        self.buf = buf
        self.keep = 0
        self.skip = 0
        self.skip_counts = False
        self.count = 0
        self.closed = False

    def feed(self, n: int) -> None:
        buf = self.buf
        end = self.keep + n
        pos = 0
        count = self.count
        if self.skip:
            if self.skip > end:
                self.skip -= end
                self.keep = 0
                return
            pos = self.skip
            self.skip = 0
            count += self.skip_counts
        while end - pos >= 2:
            b0 = buf[pos]
            length = buf[pos + 1]
            if length < 126:
                header = 2
            elif length == 126:
                if end - pos < 4:
                    break
                length = buf[pos + 2] << 8 | buf[pos + 3]
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            else:
                raise Failure(f"server sent a masked frame (header 0x{b0:02x}{length:02x})")
            opcode = b0 & 0x0F
            counts = b0 & 0x80 and opcode < 8  # last frame of a data message
            if opcode == 8:
                self.closed = True
            nxt = pos + header + length
            if nxt > end:
                self.skip = nxt - end
                self.skip_counts = bool(counts)
                pos = end
                break
            if counts:
                count += 1
            pos = nxt
        self.count = count
        keep = end - pos
        if keep:
            buf[:keep] = buf[pos:end]
        self.keep = keep


class ByteCounter:
    """The raw TCP equivalent: a message is ``size`` bytes of echo."""

    def __init__(self, buf: bytearray, size: int) -> None:
        self.buf = buf
        self.size = size
        self.total = 0
        self.count = 0
        self.keep = 0
        self.closed = False

    def feed(self, n: int) -> None:
        self.total += n
        self.count = self.total // self.size


def parse_messages(data: bytes | bytearray) -> tuple[list[bytes], int]:
    """Full decode of server frames (for the correctness check): messages, bytes used."""
    messages: list[bytes] = []
    parts: list[bytes] = []
    pos = 0
    while len(data) - pos >= 2:
        b0, length = data[pos], data[pos + 1]
        header = 2
        if length & 0x80:
            raise Failure("server sent a masked frame")
        if length == 126:
            if len(data) - pos < 4:
                break
            length = struct.unpack_from("!H", data, pos + 2)[0]
            header = 4
        elif length == 127:
            if len(data) - pos < 10:
                break
            length = struct.unpack_from("!Q", data, pos + 2)[0]
            header = 10
        if len(data) - pos < header + length:
            break
        payload = bytes(data[pos + header : pos + header + length])
        opcode = b0 & 0x0F
        if opcode < 8:
            parts.append(payload)
            if b0 & 0x80:
                messages.append(b"".join(parts))
                parts = []
        pos += header + length
    return messages, pos


# --------------------------------------------------------------------- connections


def connect(port: int, framed: bool, timeout: float = 10.0) -> socket.socket:
    """A connected socket, upgraded to WebSocket if ``framed``; left blocking."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if framed:
        sock.sendall(upgrade_request(port))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise Failure(f"connection closed during the handshake: {head!r}")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        check_response(head)
        if rest:
            raise Failure(f"unexpected bytes after the 101 response: {rest[:50]!r}")
    sock.settimeout(None)
    return sock


def close(sock: socket.socket, framed: bool) -> None:
    """Closing handshake if framed (waiting at most 2 s for the server's close), then TCP."""
    try:
        if framed:
            sock.settimeout(2.0)
            sock.sendall(CLOSE_FRAME)
            tail = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                tail = (tail + chunk)[-16:]
                if len(tail) >= 4 and tail[-4] == 0x88 and tail[-3] == 2:
                    break  # the server's close frame (code only): done
    except OSError:
        pass
    finally:
        sock.close()


def pump(
    sock: socket.socket,
    out: memoryview,
    counter: FrameCounter | ByteCounter,
    want: int,
    *,
    sink: bytearray | None = None,
) -> None:
    """Send all of ``out`` while reading, until ``counter.count >= want``."""
    sock.setblocking(False)
    buf = counter.buf
    mv = memoryview(buf)
    sent = 0
    poller = select.poll()
    last = time.monotonic()
    while counter.count < want:
        mask = select.POLLIN | (select.POLLOUT if sent < len(out) else 0)
        poller.register(sock, mask)
        if not poller.poll(1000):
            if time.monotonic() - last > STALL:
                raise Failure(f"no reply for {STALL:.0f} s ({counter.count}/{want} messages)")
            continue
        last = time.monotonic()
        if sent < len(out):
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(out[sent:])
        try:
            n = sock.recv_into(mv[counter.keep :])
        except BlockingIOError:
            continue
        if not n:
            raise Failure(f"server closed the connection ({counter.count}/{want} messages)")
        if sink is not None:
            sink += mv[counter.keep : counter.keep + n]
        counter.feed(n)
    sock.setblocking(True)


# --------------------------------------------------------------------- commands


def cmd_verify(port: int, size: int, framed: bool, **_: Any) -> dict[str, Any]:
    """Send three distinct messages of ``size`` bytes; they must come back unchanged."""
    payloads = [os.urandom(size) for _ in range(3)]
    sock = connect(port, framed)
    try:
        out = b"".join(client_frame(0x2, p) for p in payloads) if framed else b"".join(payloads)
        buf = bytearray(1 << 18)
        counter: FrameCounter | ByteCounter = (
            FrameCounter(buf) if framed else ByteCounter(buf, size)
        )
        received = bytearray()
        pump(sock, memoryview(out), counter, len(payloads), sink=received)
        if framed:
            got, used = parse_messages(received)
            if used != len(received):
                raise Failure("trailing bytes after the echoed messages")
        else:
            got = [bytes(received[i * size : (i + 1) * size]) for i in range(len(payloads))]
        if got != payloads:
            raise Failure(f"echo of {size}-byte messages differs from what was sent")
    finally:
        close(sock, framed)
    return {"ok": True}


def cmd_echo(
    port: int,
    pid: int,
    size: int,
    framed: bool,
    inflight: int,
    warmup: float,
    duration: float,
    max_messages: int,
    **_: Any,
) -> dict[str, Any]:
    """Pipelined echo, ``inflight`` messages outstanding; counts over a timed window."""
    unit = client_frame(0x2, os.urandom(size)) if framed else os.urandom(size)
    ulen = len(unit)
    window = unit * (inflight + 1)
    out = memoryview(window)
    sock = connect(port, framed)
    buf = bytearray(max(1 << 18, min(ulen, 1 << 20)))
    mv = memoryview(buf)
    counter: FrameCounter | ByteCounter = FrameCounter(buf) if framed else ByteCounter(buf, size)
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    polled = select.POLLIN
    sent = 0
    stop_at = 1 << 62  # messages: no more are sent past this
    clock = time.perf_counter
    began = clock()
    last = began
    phase = 0  # 0 warm-up, 1 measuring, 2 draining
    t0 = c0 = s0 = p0 = 0.0
    result: dict[str, Any] = {}
    try:
        while True:
            allowed = min(counter.count + inflight, stop_at) * ulen - sent
            want_out = False
            if allowed > 0:
                offset = sent % ulen
                try:
                    n = sock.send(out[offset : offset + allowed])
                except BlockingIOError:
                    n = 0
                sent += n
                want_out = n < allowed
            mask = select.POLLIN | select.POLLOUT if want_out else select.POLLIN
            if mask != polled:
                poller.modify(sock, mask)
                polled = mask
            events = poller.poll(1000)
            now = clock()
            if not events:
                if now - last > STALL:
                    raise Failure(
                        f"stalled: no reply for {STALL:.0f} s with {inflight} messages of "
                        f"{size} B in flight ({counter.count} echoed so far)"
                    )
                server_cpu(pid)  # raises if the server died
                continue
            last = now
            if events[0][1] & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    n = sock.recv_into(mv[counter.keep :])
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise Failure(
                        f"server closed the connection after {counter.count} echoes of {size} B"
                    )
                if n > 0:
                    counter.feed(n)
                    if counter.closed:
                        raise Failure("server sent a close frame in the middle of the echo")
            if phase == 0 and now - began >= warmup:
                phase = 1
                t0, c0, s0, p0 = now, counter.count, server_cpu(pid), time.process_time()
            elif phase == 1 and (now - t0 >= duration or counter.count - c0 >= max_messages):
                phase = 2
                p1, s1 = time.process_time(), server_cpu(pid)
                messages = counter.count - c0
                result = {
                    "messages": messages,
                    "elapsed": now - t0,
                    "server_cpu": s1 - s0,
                    "client_cpu": p1 - p0,
                }
                stop_at = -(-sent // ulen)  # finish the frame being sent, then stop
            if phase == 2 and counter.count >= stop_at:
                break
    finally:
        sock.setblocking(True)
        close(sock, framed)
    return result


def cmd_latency(
    port: int, pid: int, size: int, framed: bool, samples: int, duration: float, **_: Any
) -> dict[str, Any]:
    """One message in flight: round-trip times in microseconds."""
    unit = client_frame(0x2, os.urandom(size)) if framed else os.urandom(size)
    sock = connect(port, framed)
    buf = bytearray(1 << 16)
    mv = memoryview(buf)
    counter: FrameCounter | ByteCounter = FrameCounter(buf) if framed else ByteCounter(buf, size)
    sock.settimeout(STALL)
    times: list[float] = []
    clock = time.perf_counter_ns
    try:
        for _ in range(50):  # warm-up
            sock.sendall(unit)
            target = counter.count + 1
            while counter.count < target:
                counter.feed(sock.recv_into(mv[counter.keep :]) or _eof())
        s0 = server_cpu(pid)
        deadline = time.perf_counter() + duration
        while len(times) < samples and time.perf_counter() < deadline:
            target = counter.count + 1
            start = clock()
            sock.sendall(unit)
            while counter.count < target:
                counter.feed(sock.recv_into(mv[counter.keep :]) or _eof())
            times.append((clock() - start) / 1000)
        s1 = server_cpu(pid)
    except TimeoutError:
        raise Failure(f"no echo within {STALL:.0f} s, one message in flight") from None
    finally:
        close(sock, framed)
    times.sort()
    return {
        "samples": len(times),
        "p50": times[len(times) // 2],
        "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
        "server_cpu": s1 - s0,
    }


def _eof() -> int:
    raise Failure("server closed the connection")


# Handshake state machine states.
CONNECTING, READING_101, READING_CLOSE = range(3)


class Handshaker:
    """Non-blocking opening handshakes, ``concurrency`` at a time, with epoll."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.request = upgrade_request(port)
        self.ep = select.epoll()
        self.conns: dict[int, list[Any]] = {}  # fd -> [sock, state, buffer]
        self.errors: list[str] = []

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((HOST, self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.errors.append(os.strerror(err))
            return
        self.conns[sock.fileno()] = [sock, CONNECTING, b""]
        self.ep.register(sock.fileno(), select.EPOLLOUT)

    def drop(self, fd: int, error: str | None = None) -> socket.socket:
        sock = self.conns.pop(fd)[0]
        self.ep.unregister(fd)
        if error is not None:
            self.errors.append(error)
            sock.close()
        return sock

    def run(
        self,
        *,
        total: int,
        concurrency: int,
        close: bool,
        deadline: float | None = None,
        keep: list[socket.socket] | None = None,
    ) -> int:
        """Complete up to ``total`` handshakes (stopping at ``deadline``); return how many.

        With ``close``, each connection then does the closing handshake and is closed;
        otherwise the open sockets go to ``keep``.
        """
        started = done = 0
        last = time.monotonic()
        while done < total:
            while len(self.conns) < concurrency and started < total:
                if deadline is not None and time.perf_counter() >= deadline:
                    break
                started += 1
                self.start()
            if not self.conns:
                break
            events = self.ep.poll(1.0)
            if not events:
                if time.monotonic() - last > STALL:
                    raise Failure(f"handshakes stalled ({len(self.conns)} pending)")
                continue
            last = time.monotonic()
            for fd, _ in events:
                entry = self.conns[fd]
                sock, state = entry[0], entry[1]
                try:
                    if state == CONNECTING:
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            self.drop(fd, f"connect: {os.strerror(err)}")
                            continue
                        sock.send(self.request)
                        entry[1] = READING_101
                        self.ep.modify(fd, select.EPOLLIN)
                        continue
                    data = sock.recv(65536)
                    if not data:
                        what = "handshake" if state == READING_101 else "closing handshake"
                        self.drop(fd, f"server closed TCP during the {what}")
                        continue
                    entry[2] += data
                    if state == READING_101:
                        if b"\r\n\r\n" not in entry[2]:
                            continue
                        head, _, rest = entry[2].partition(b"\r\n\r\n")
                        check_response(head)
                        if not close:
                            self.drop(fd)
                            assert keep is not None
                            keep.append(sock)
                            done += 1
                            continue
                        sock.send(CLOSE_FRAME)
                        entry[1], entry[2] = READING_CLOSE, rest
                    if entry[1] == READING_CLOSE and len(entry[2]) >= 4:
                        if entry[2][0] != 0x88:
                            raise Failure(f"expected a close frame, got {entry[2][:20]!r}")
                        self.drop(fd).close()
                        done += 1
                except OSError as exc:
                    self.drop(fd, f"{type(exc).__name__}: {exc}")
        return done


def cmd_handshakes(
    port: int, pid: int, concurrency: int, warmup: float, duration: float, **_: Any
) -> dict[str, Any]:
    """Open, upgrade, close-handshake and close new connections, ``concurrency`` at once."""
    hs = Handshaker(port)
    deadline = time.perf_counter() + warmup
    hs.run(total=1 << 30, concurrency=concurrency, close=True, deadline=deadline)
    s0, p0, t0 = server_cpu(pid), time.process_time(), time.perf_counter()
    n = hs.run(
        total=1 << 30, concurrency=concurrency, close=True, deadline=time.perf_counter() + duration
    )
    elapsed = time.perf_counter() - t0
    s1, p1 = server_cpu(pid), time.process_time()
    return {
        "handshakes": n,
        "elapsed": elapsed,
        "server_cpu": s1 - s0,
        "client_cpu": p1 - p0,
        "errors": hs.errors[:5],
        "error_count": len(hs.errors),
    }


HELD: list[socket.socket] = []
CONTROL: list[socket.socket] = []


def cmd_open(port: int, count: int, concurrency: int, **_: Any) -> dict[str, Any]:
    """Open ``count`` more idle WebSocket connections and hold them."""
    hs = Handshaker(port)
    t0 = time.perf_counter()
    opened: list[socket.socket] = []
    hs.run(total=count, concurrency=concurrency, close=False, keep=opened)
    HELD.extend(opened)
    return {
        "opened": len(opened),
        "held": len(HELD),
        "elapsed": time.perf_counter() - t0,
        "errors": hs.errors[:5],
        "error_count": len(hs.errors),
    }


def cmd_control(port: int, **_: Any) -> dict[str, Any]:
    """Open the connection that triggers fan-outs."""
    CONTROL.append(connect(port, True))
    return {"ok": True}


def cmd_alive(**_: Any) -> dict[str, Any]:
    """How many held connections are still open (nothing to read, no EOF)."""
    poller = select.poll()
    for sock in HELD:
        poller.register(sock, select.POLLIN)
    ready = poller.poll(0)
    return {"held": len(HELD), "alive": len(HELD) - len(ready)}


def cmd_release(**_: Any) -> dict[str, Any]:
    for sock in HELD + CONTROL:
        sock.close()
    n = len(HELD)
    HELD.clear()
    CONTROL.clear()
    return {"closed": n}


def cmd_fanout(pid: int, clients: int, rounds: int, warmup: int = 0, **_: Any) -> dict[str, Any]:
    """Ask the server for ``warmup`` then ``rounds`` fan-outs; time each of the latter
    until ``clients`` got it. (Every server's first few fan-outs to fresh connections
    are slower, by up to half, than the ones after.)"""
    socks = HELD[:clients]
    control = CONTROL[0]
    by_fd = {s.fileno(): s for s in socks}
    ep = select.epoll(len(socks))
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
    times: list[float] = []
    try:
        s0 = server_cpu(pid)
        for i in range(warmup + rounds):
            if i == warmup:
                times.clear()
                s0 = server_cpu(pid)
            have: dict[int, bytes] = dict.fromkeys(by_fd, b"")
            pending = len(socks)
            sent_at = 0
            last = 0
            control.sendall(GO_FRAME)
            while pending:
                events = ep.poll(STALL)
                if not events:
                    raise Failure(f"fan-out reached {len(socks) - pending}/{len(socks)} clients")
                for fd, _ in events:
                    data = by_fd[fd].recv(4096)
                    if not data:
                        raise Failure("server closed an idle connection")
                    before = len(have[fd])
                    have[fd] += data
                    if before < 18 <= len(have[fd]):
                        msg = have[fd]
                        if msg[0] != 0x82 or msg[1] != 16 or len(msg) != 18:
                            raise Failure(f"unexpected fan-out frame {msg[:20]!r}")
                        sent_at = struct.unpack_from("!Q", msg, 2)[0]
                        pending -= 1
                        last = time.monotonic_ns()
            times.append((last - sent_at) / 1e6)
            got = b""
            control.settimeout(STALL)
            while len(got) < 18:  # the control connection gets a copy too
                chunk = control.recv(18 - len(got))
                if not chunk:
                    raise Failure("server closed the control connection")
                got += chunk
            time.sleep(0.02)
        s1 = server_cpu(pid)
    finally:
        ep.close()
        for s in socks:
            s.setblocking(True)
    times.sort()
    return {
        "median_ms": times[len(times) // 2],
        "min_ms": times[0],
        "max_ms": times[-1],
        "server_cpu_ms": (s1 - s0) * 1000 / rounds,
    }


COMMANDS = {
    "verify": cmd_verify,
    "echo": cmd_echo,
    "latency": cmd_latency,
    "handshakes": cmd_handshakes,
    "open": cmd_open,
    "control": cmd_control,
    "alive": cmd_alive,
    "release": cmd_release,
    "fanout": cmd_fanout,
}


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for line in sys.stdin:
        command = json.loads(line)
        try:
            result = COMMANDS[command.pop("cmd")](**command)
        except Failure as exc:
            result = {"error": str(exc)}
        except OSError as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
