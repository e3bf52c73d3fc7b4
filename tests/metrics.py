"""Reading one Prometheus sample, so a test asserts the change its own requests made.

The registry is shared by the whole test process (and a service process serves its own), so a
metric assertion always compares a value read before the action with the value read after it:
a series an earlier test left can never make it pass.
"""

from prometheus_client import REGISTRY, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly these labels in an exposition, 0 if absent."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include these (any value of the others)."""
    return sum(
        float(found.value)
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name and labels.items() <= found.labels.items()
    )


def local_sample(name: str, **labels: str) -> float:
    """The value of a sample in this process's registry, 0 if absent."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def local_exposition() -> str:
    return generate_latest(REGISTRY).decode()


NEVER_SET = -1.0


def forget(gauge: Gauge) -> None:
    """Give a process-wide gauge a value the code never sets, so what a test reads next is what its
    own action wrote, not what an earlier test's object left there."""
    gauge.set(NEVER_SET)
