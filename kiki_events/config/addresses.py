"""Checks of network addresses in the settings: Redis URLs, ``host:port``, database numbers."""

from __future__ import annotations

import ipaddress
import re

from ..errors import ConfigError

__all__ = ["check_host", "check_port", "check_redis_url", "parse_database"]

_DATABASE = re.compile(r"[0-9]{1,9}")
"""A Redis database number: ASCII digits (``str.isdigit`` also takes ``²``, which ``int`` refuses)."""
_REDIS_SCHEMES = ("redis", "rediss", "unix")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def parse_database(value: object) -> object:
    """A Redis database number: an integer (or its digits, from an environment variable), never a bool or float."""
    if isinstance(value, str) and _DATABASE.fullmatch(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ConfigError(f"expected a database number (an integer, 0 or more), got {value!r}")


def check_port(text: str, what: str) -> int:
    # ASCII digits only: ``str.isdigit`` also takes ``²`` or ``٣``, which ``int`` refuses.
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{what} {text!r} is not an integer")
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise ConfigError(f"{what} {text[:20]} is out of range (1-65535)")
    return int(text)


def check_host(host: str) -> None:
    if host.startswith("["):
        try:
            if not host.endswith("]"):
                raise ConfigError(host)
            ipaddress.IPv6Address(host[1:-1].split("%", 1)[0])
        except ValueError:
            raise ConfigError(f"host {host!r} is not a valid IPv6 address in brackets") from None
    elif not _HOST_NAME.match(host):
        raise ConfigError(f"host {host!r} is not a valid host name or address")


def check_redis_url(url: str) -> None:
    """Check a Redis URL the way it will be used: scheme, host, port and database.

    Raises:
        ValueError: what is wrong; the message never contains the password.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _REDIS_SCHEMES:
        raise ConfigError("expected a URL such as redis://[user:password@]host:6379/0 (or rediss://, unix://)")
    location, _, query = rest.partition("?")
    netloc, slash, path = location.partition("/")
    if scheme.lower() == "unix":
        path = netloc + slash + path
        if not path:
            raise ConfigError("a unix:// URL needs the socket's path, e.g. unix:///run/redis.sock")
        path = ""  # a socket path is not a database
    else:
        hostport = netloc.rpartition("@")[2]  # what follows the credentials, if any
        if hostport.startswith("["):
            host, bracket, port = hostport.partition("]")
            host += bracket
            if not bracket or (port and not port.startswith(":")):
                raise ConfigError("the host is not well-formed (an IPv6 address is written [address]:port)")
            port = port[1:]
        else:
            host, _, port = hostport.partition(":")
        if not host:
            raise ConfigError("no host (expected redis://[user:password@]host:6379/0)")
        check_host(host)
        if port:
            check_port(port, "port")
    database = path.strip("/")
    for key, value in (pair.partition("=")[::2] for pair in query.split("&") if pair):
        if key == "db":
            database = value
    if database and not _DATABASE.fullmatch(database):
        raise ConfigError(f"database {database!r} is not an integer")
