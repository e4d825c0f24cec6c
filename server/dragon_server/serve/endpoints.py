"""ZeroMQ endpoint strings: which ones are allowed, and which only reach this computer."""

from __future__ import annotations

import ipaddress

_LOCAL_NAMES = ("localhost", "ip6-localhost")


class EndpointError(ValueError):
    """An endpoint the server cannot use; the message says which and why."""


def check_endpoint(endpoint: str) -> str:
    """Return `endpoint` if it is a tcp://HOST:PORT or ipc://PATH address, else raise EndpointError."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        raise EndpointError(f"'{endpoint}' is not an endpoint: use tcp://HOST:PORT or ipc://PATH")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host or not (port == "*" or port.isdigit() and 0 < int(port) < 65536):
            raise EndpointError(f"'{endpoint}' needs a host and a port, like tcp://127.0.0.1:5555")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise EndpointError(f"'{endpoint}': write an IPv6 address in brackets, like tcp://[::1]:5555")
    return endpoint


def is_ipv6(endpoint: str) -> bool:
    """True for a tcp endpoint whose host is a bracketed IPv6 address (its socket must allow IPv6)."""
    return endpoint.startswith("tcp://[")


def is_loopback(endpoint: str) -> bool:
    """True if only this computer can reach `endpoint` (ipc, or tcp on a loopback address or name)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
