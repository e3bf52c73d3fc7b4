"""What a Redis namespace holds, scanned for tokens: the check behind "the store holds no usable
token" (issue 11, item 3), in process and across processes alike."""

import redis as redis_sync


def stored_bytes(redis_url: str, namespace: str) -> list[tuple[bytes, bytes]]:
    """Every key of ``namespace`` with its whole value as bytes, whatever the value's type."""
    client = redis_sync.Redis.from_url(redis_url)
    readers = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"set": client.smembers,
        b"zset": lambda key: client.zrange(key, 0, -1),
        b"stream": client.xrange,
    }
    stored = []
    try:
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            read = readers.get(client.type(key))  # type: ignore[arg-type]
            value = read(key) if read is not None else b""
            stored.append((key, value if isinstance(value, bytes) else repr(value).encode()))
    finally:
        client.close()
    return stored


def assert_no_token_in(stored: list[tuple[bytes, bytes]], tokens: list[str]) -> None:
    """No key or value holds any of ``tokens``, nor a JWT's signature alone."""
    needles = {part.encode() for token in tokens for part in (token, token.rpartition(".")[2]) if len(part) > 16}
    for key, value in stored:
        for needle in needles:
            assert needle not in key and needle not in value, f"a token is stored under {key!r}"
