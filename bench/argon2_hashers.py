"""argon2id verification: argon2-cffi's own ``PasswordHasher`` vs the auth service's ``HugePageHasher``.

    python -m bench.argon2_hashers [--seconds 10] [--rounds 4] [--concurrency N] [--json PATH]

Both verify one hash made with the auth service's parameters (``AuthSettings``' defaults: argon2id,
64 MiB, t=3, p=4) in N threads at once (N = ``hash_concurrency``, by default the CPUs this process
may use), side by side in one run: the rounds alternate which goes first (library, service,
service, library, ...). Reported per side: verifications/s and this process's CPU per
verification, user and system apart (the system part is mostly the kernel faulting in and zeroing
argon2's memory, which huge pages cut); and the median of the rounds' ratios, service/library.
"""

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

from argon2 import PasswordHasher

from auth_service.config import AuthSettings
from auth_service.passwords import HugePageHasher, Passwords
from bench.common import cpu_model, exit_with, package_versions, publish, say, utc_timestamp

PASSWORD = "correct horse battery staple 1"


def verifications(hasher: PasswordHasher, password_hash: str, threads: int, seconds: float) -> dict[str, float]:
    """``threads`` threads verifying until the deadline (argon2 releases the GIL): rate and CPU per verification."""
    deadline = time.perf_counter() + seconds
    counts = [0] * threads

    def work(index: int) -> None:
        while time.perf_counter() < deadline:
            hasher.verify(password_hash, PASSWORD)
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
    before, started = os.times(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after, elapsed = os.times(), time.perf_counter() - started
    done = sum(counts)
    return {
        "verifications": done,
        "per_second": done / elapsed,
        "user_ms": 1000 * (after.user - before.user) / done,
        "system_ms": 1000 * (after.system - before.system) / done,
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    settings = AuthSettings()
    service = Passwords(settings).hasher
    if not isinstance(service, HugePageHasher):
        raise SystemExit("the auth service hashes with argon2-cffi's own PasswordHasher here: nothing to compare")
    library = PasswordHasher.from_parameters(service.parameters)
    password_hash = library.hash(PASSWORD)
    threads = args.concurrency or settings.hash_concurrency
    sides = {"library": library, "service": service}
    rounds: list[dict[str, Any]] = []
    for number in range(1, args.rounds + 1):
        order = ["library", "service"] if number % 2 else ["service", "library"]
        figures = {side: verifications(sides[side], password_hash, threads, args.seconds) for side in order}
        ratio = figures["service"]["per_second"] / figures["library"]["per_second"]
        rounds.append({"round": number, "order": order, **figures, "ratio": ratio})
        say(
            f"round {number}: library {figures['library']['per_second']:.2f}/s, "
            f"service {figures['service']['per_second']:.2f}/s, ratio {ratio:.3f}"
        )
    return {
        "benchmark": "argon2_hashers",
        "started_at": utc_timestamp(),
        "parameters": {
            "time_cost": service.time_cost,
            "memory_kib": service.memory_cost,
            "parallelism": service.parallelism,
        },
        "threads": threads,
        "seconds": args.seconds,
        "machine": {
            "cpu_model": cpu_model(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "transparent_hugepage": _thp_setting(),
            "packages": package_versions(["argon2-cffi", "argon2-cffi-bindings"]),
        },
        "rounds": rounds,
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "sides": {side: _medians([r[side] for r in rounds]) for side in sides},
    }


def _medians(figures: list[dict[str, float]]) -> dict[str, float]:
    return {name: round(statistics.median(f[name] for f in figures), 2) for name in figures[0]}


def _thp_setting() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as setting:
            return setting.read().strip()
    except OSError:
        return "unknown"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"argon2id verification, {report['threads']} threads, {report['seconds']:.0f} s a side a round, "
        f"{len(report['rounds'])} rounds; THP {report['machine']['transparent_hugepage']}",
        "",
        "| hasher | verifications/s | user CPU ms/verification | system CPU ms/verification |",
        "|---|---:|---:|---:|",
    ]
    for side, label in (("library", "argon2-cffi `PasswordHasher`"), ("service", "auth's `HugePageHasher`")):
        figures = report["sides"][side]
        lines.append(f"| {label} | {figures['per_second']} | {figures['user_ms']} | {figures['system_ms']} |")
    ratios = ", ".join(f"{r['ratio']:.3f}" for r in report["rounds"])
    lines += ["", f"service/library: median **{report['ratio_median']:.3f}** (rounds: {ratios})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.argon2_hashers", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each side's run (default 10)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each side once (default 4: ABBA order)")
    parser.add_argument("--concurrency", type=int, default=0, help="threads (default: hash_concurrency)")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rounds < 1 or args.concurrency < 0:
        parser.error("--seconds and --rounds must be positive, --concurrency not negative")
    report = bench(args)
    publish(report, markdown(report), args.json)
    return 0


if __name__ == "__main__":
    exit_with(lambda: main(sys.argv[1:]), "nothing to clean up")
