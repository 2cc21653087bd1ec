"""``kmemdump.asyncio``: an event loop that feeds the watchdog, and says what blocks it when it hangs.

    import asyncio, kmemdump.asyncio

    async def main():
        kmemdump.asyncio.watch_loop(timeout=5.0)   # the running loop feeds the watchdog
        ...

    asyncio.run(main())

A coroutine that blocks (``time.sleep``, a synchronous driver, a CPU-bound step) stops the loop; the
collector dumps the process after ``timeout``, and the dump names the task and coroutine that held
the loop, with its stack, and where every other task waits. See ``docs/integrations.md``. (Inside
this package ``import asyncio`` still means the standard library's module: imports are absolute.)
"""

from __future__ import annotations

from kmemdump.producer.aiowatch import DEFAULT_MAX_TASKS
from kmemdump.producer.aiowatch import LoopWatch
from kmemdump.producer.aiowatch import current_watch
from kmemdump.producer.aiowatch import watch_loop

__all__ = ["DEFAULT_MAX_TASKS", "LoopWatch", "current_watch", "watch_loop"]
