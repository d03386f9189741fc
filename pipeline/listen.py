"""The web's listening sockets, made before anything else starts (SPEC §6).

A busy port must stop ``python run.py`` (and ``run.py web``) at once with one line, not after
Redis, the worker and a web process that can never listen were started. So the port is taken
first, here, and the sockets are handed to the web process(es).
"""

from __future__ import annotations

import ctypes
import errno
import random
import socket
import struct
import sys

_SO_ATTACH_REUSEPORT_CBPF = 51
_BPF_LD_W_ABS, _BPF_ALU_MOD_K, _BPF_RET_A = 0x20, 0x94, 0x16
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_RANDOM
# free_port picks above this: below are the well-known and commonly configured ports.
_LOWEST_PICKED = 20000
# What the kernel queues before hypercorn accepts (hypercorn sets its own backlog again).
_BACKLOG = 2048


class PortUnavailable(RuntimeError):
    """The address cannot be listened on (in use, not a local address, or not permitted)."""


def listen(host: str, port: int, count: int = 1) -> list[socket.socket]:
    """``count`` listening TCP sockets on ``host:port``.

    The first one is bound without SO_REUSEPORT, so the port is refused if anyone holds it,
    even a server that set SO_REUSEPORT itself. Only then is SO_REUSEPORT switched on (it
    takes effect at listen) so that the other ``count - 1`` sockets, ours, can share the port
    and the kernel spreads connections over them. A later server binding without
    SO_REUSEPORT (any other ``run.py``) is refused; one that sets SO_REUSEPORT itself (the
    kernel lets the same user join) is steered no connection at all (Linux).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host.strip("[]"), port)
    first = _bound(family, address, share=False)
    if count > 1:
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    first.listen(_BACKLOG)
    sockets = [first]
    try:
        for _ in range(count - 1):
            sockets.append(_bound(family, address, share=True))
            sockets[-1].listen(_BACKLOG)
    except PortUnavailable:
        for sock in sockets:
            sock.close()
        raise
    if count > 1:
        _steer_to_first(first, count)
    return sockets


def _steer_to_first(sock: socket.socket, count: int) -> None:
    # A classic BPF program for the port's SO_REUSEPORT group: each connection goes to socket
    # number random % count, i.e. to one of the ``count`` sockets made here (the first in the
    # group), never to a socket someone else adds later.
    if not sys.platform.startswith("linux"):
        return
    program = [
        (_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),  # A = a random 32-bit number
        (_BPF_ALU_MOD_K, 0, 0, count),  # A = A % count
        (_BPF_RET_A, 0, 0, 0),  # the socket at index A
    ]
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)


def _bound(family: socket.AddressFamily, address: tuple[str, int], *, share: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR only lets a restart bind over connections in TIME_WAIT; a listening
        # socket on the port still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        host, port = address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        raise PortUnavailable(f"port {port} ({where}) {reason}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def adopt(fd: int) -> socket.socket:
    """The listening socket a parent (run.py) handed over as file descriptor ``fd``."""
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise PortUnavailable(f"file descriptor {fd} is not a listening TCP socket")
    return sock


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive TCP ports that nothing holds right now.

    Picked below the kernel's ephemeral range where it is known (Linux): a port from there is
    never handed to an outgoing connection as its local port, so it is still free when a server
    started a moment later binds it (one found by binding port 0 can be taken meanwhile).
    """
    first_ephemeral = _first_ephemeral_port()
    if first_ephemeral - _LOWEST_PICKED > 100 * count:
        for _ in range(200):
            port = random.randrange(_LOWEST_PICKED, first_ephemeral - count + 1)
            if all(_bindable(port + offset) for offset in range(count)):
                return port
    while True:  # elsewhere: what the kernel picks
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if all(_bindable(port + offset) for offset in range(count)):
            return port


def _first_ephemeral_port() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _bindable(port: int) -> bool:
    if port > 65535:
        return False
    with socket.socket() as sock:
        try:
            # Refused too if anyone holds the port on one address only (loopback, say).
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
