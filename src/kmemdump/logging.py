"""``kmemdump.logging``: the last log records of a process, in its dumps.

    import logging, kmemdump
    from kmemdump.logging import RingHandler

    kmemdump.init(table=True)
    logging.getLogger().addHandler(RingHandler(capacity=1000))

or with ``logging.config.dictConfig``, ``{"class": "kmemdump.logging.RingHandler", "capacity": 1000}``.
See ``docs/integrations.md``. (Inside this package ``import logging`` still means the standard
library's module: imports are absolute.)
"""

from __future__ import annotations

from kmemdump.producer.ringlog import DEFAULT_CAPACITY
from kmemdump.producer.ringlog import DEFAULT_FORMAT
from kmemdump.producer.ringlog import DEFAULT_RECORD_SIZE
from kmemdump.producer.ringlog import RingHandler

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_FORMAT", "DEFAULT_RECORD_SIZE", "RingHandler"]
