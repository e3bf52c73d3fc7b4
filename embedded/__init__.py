"""The composition root: every service in one process (the embedded run mode).

This is the only module allowed to import several services. Each service keeps its own
database (SQLite files in DATA_DIR by default, or ``<SERVICE>_DATABASE_URL``); the key-value
store and the event bus are shared in-process objects unless REDIS_URL is set.
"""

import shared  # noqa: F401 - first: the kernel keeps unused library extras out (shared/__init__.py)
