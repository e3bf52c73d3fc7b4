"""Where a service's CPU goes, from py-spy's raw (collapsed) stacks: ``bench.services --py-spy DIR``.

    python -m bench.pyspy_breakdown DIR/*.txt

Each sample is given to the first category found walking its stack from the innermost frame out
(a psycopg call made by SQLAlchemy made by a handler counts as database), except the pool's
pre-ping, counted wherever it appears. SQLAlchemy's greenlets cut py-spy's stacks, so a
database sample often lacks the frames above it: categories by the innermost frame stay right.
"""

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

Test = Callable[[str], bool]
ANYWHERE: list[tuple[str, Test]] = [
    ("db pre-ping", lambda frame: "do_ping" in frame),
]
INNERMOST_FIRST: list[tuple[str, Test]] = [
    ("prometheus metrics", lambda frame: "prometheus" in frame),
    ("logging", lambda frame: "logging/" in frame or "shared/logs.py" in frame),
    ("token verification (JWT)", lambda frame: "jwt/" in frame or "TokenVerifier" in frame or "_check_claims" in frame),
    ("redis round trips", lambda frame: "redis/" in frame or "shared/stores.py" in frame),
    ("database: SQLAlchemy + psycopg", lambda frame: "sqlalchemy" in frame or "psycopg" in frame),
    ("serialisation", lambda frame: "msgspec" in frame or "serialization" in frame or "litestar/response" in frame),
    ("Airtable cache, grants, tokens", lambda frame: "airtable_gateway/" in frame),
    ("service code", lambda frame: any(s in frame for s in ("user_service/", "auth_service/", "analytics_service/"))),
    ("kernel HTTP (shared/)", lambda frame: "shared/" in frame),
    ("Litestar", lambda frame: "litestar/" in frame),
    ("uvicorn, httptools, socket writes", lambda frame: "uvicorn/" in frame or "httptools" in frame),
]


def category(frames: list[str]) -> str:
    for name, test in ANYWHERE:
        if any(test(frame) for frame in frames):
            return name
    for frame in reversed(frames):
        for name, test in INNERMOST_FIRST:
            if test(frame):
                return name
    return "event loop, other"


def breakdown(path: Path) -> tuple[int, Counter[str]]:
    samples: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            samples[category(stack.split(";"))] += int(count)
    return sum(samples.values()), samples


def main(paths: list[str]) -> int:
    for path in paths:
        total, samples = breakdown(Path(path))
        print(f"{path} ({total} samples)")
        for name, count in samples.most_common():
            print(f"  {100 * count / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
