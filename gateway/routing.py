"""The route table, the single path check, and which routes are public.

The path is checked once, on the raw bytes the client sent. Anything a server behind us could
read differently from us (encoded dots, slashes or backslashes, dot segments, empty segments,
NUL or control bytes, parameters) is refused with 400, so the path we authorise is exactly the
path we forward.
"""

import re
import unicodedata
from urllib.parse import unquote_to_bytes

import msgspec

from gateway.errors import BadPath
from shared.registry import SERVICES

# Unreserved and sub-delim characters of RFC 3986 plus '/', '%' (checked below) and ':' '@'.
_ALLOWED = re.compile(rb"^/[A-Za-z0-9\-._~!$&'()*+,=:@/%]*$")
# The common case in one match: segments that start with anything but '.' (so never "", "." or "..")
# and hold no '%', optionally a trailing '/'. Anything else takes the full check below.
_PLAIN = re.compile(rb"^(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)+/?$")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
# Percent-encodings that would change the path's structure once decoded.
_FORBIDDEN_ENCODED = {0x2E, 0x2F, 0x5C, 0x25, 0x3B, 0x3F, 0x23} | set(range(0x00, 0x20)) | {0x7F}
_PATH_SYNTAX = "./\\%;?#"  # characters whose appearance under NFKC would change how a path reads

# Anonymous routes that take a credential or an address: the strict ``auth`` rate-limit policy.
AUTH_POLICY_ROUTES: frozenset[str] = frozenset().union(*(entry.credential_routes for entry in SERVICES))
# What passes without a token: those, and the routes each service declares public (shared/registry.py).
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {("POST", path) for path in AUTH_POLICY_ROUTES}.union(*(entry.public_routes for entry in SERVICES))
)


class Route(msgspec.Struct, frozen=True):
    prefix: str
    name: str

    @property
    def template(self) -> str:
        return self.prefix + "/*"


def checked_path(raw_path: bytes) -> str:
    """The path to authorise and forward, or BadPath."""
    if _PLAIN.match(raw_path):
        return raw_path.decode("ascii")
    if not _ALLOWED.match(raw_path) or (b"%" in raw_path and _has_forbidden_encoding(raw_path)):
        raise BadPath()
    if raw_path.count(b"%") != len(_PERCENT.findall(raw_path)):
        raise BadPath()  # a lone or malformed '%'
    segments = raw_path.split(b"/")[1:]
    if any(segment in (b"", b".", b"..") for segment in segments[:-1]) or segments[-1] in (b".", b".."):
        raise BadPath()
    if any(segment.endswith(b".") and segment.strip(b".") == b"" for segment in segments):
        raise BadPath()
    return raw_path.decode("ascii")


def _has_forbidden_encoding(raw_path: bytes) -> bool:
    codes = [int(code, 16) for code in _PERCENT.findall(raw_path)]
    if any(code in _FORBIDDEN_ENCODED for code in codes):
        return True
    return any(code >= 0x80 for code in codes) and not _is_plain_text(unquote_to_bytes(raw_path))


def _is_plain_text(decoded: bytes) -> bool:
    """Percent-encoded non-ASCII (a table named "Café") is allowed as well-formed UTF-8 (no overlong
    forms) without control characters that Unicode compatibility normalisation (NFKC, which a
    server behind us might apply) does not turn into path syntax: fullwidth dots or solidi are
    refused like their ASCII forms."""
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if any(unicodedata.category(character) == "Cc" for character in text):
        return False
    normal = unicodedata.normalize("NFKC", text)
    return all(normal.count(character) == text.count(character) for character in _PATH_SYNTAX)


class RouteTable:
    def __init__(self, prefixes: list[str]) -> None:
        # Longest prefix first, so "/api/v1/auth/admin" could override "/api/v1/auth".
        self.routes = [Route(prefix, prefix.rsplit("/", 1)[-1]) for prefix in sorted(prefixes, key=len, reverse=True)]
        self._by_prefix = {route.prefix: route for route in self.routes}
        self._depths = sorted({prefix.count("/") for prefix in self._by_prefix}, reverse=True)

    def match(self, path: str) -> Route | None:
        """The route whose prefix is the path or its longest leading run of whole segments."""
        for depth in self._depths:  # one dict lookup per prefix depth (one in practice), deepest first
            parts = path.split("/", depth + 1)
            if len(parts) > depth:
                route = self._by_prefix.get("/".join(parts[: depth + 1]))
                if route is not None:
                    return route
        return None


def is_public(method: str, path: str) -> bool:
    return (method, path.rstrip("/") or "/") in PUBLIC_ROUTES


def uses_auth_policy(path: str) -> bool:
    return path.rstrip("/") in AUTH_POLICY_ROUTES
