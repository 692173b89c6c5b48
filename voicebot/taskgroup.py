"""``asyncio.TaskGroup`` that leaves no reference cycle behind when it ends with an exception.

On Python 3.11 a task group that ends by cancellation or with errors raises from a frame whose locals hold the
exception it raises and the group itself, and the group holds the task it runs in, which holds its cancellation
with its traceback: a cycle through objects that lived as long as the call. Reference counting never frees such a
cycle; only a full run of the cycle collector does, and under load that came every few hundred calls, so hundreds of
finished calls stayed in memory at once and pinned the allocator's arenas (BENCHMARKS.md, "Round 3";
``tests/test_call_memory.py``). This group clears the finished frames' locals on its way out and forgets its task.
"""

from __future__ import annotations

import asyncio
import traceback
from types import TracebackType


class TaskGroup(asyncio.TaskGroup):
    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await super().__aexit__(et, exc, tb)
        except BaseException as raised:
            if raised.__traceback__ is not None:
                traceback.clear_frames(raised.__traceback__)  # the frames that raised it have finished
            raise
        finally:
            self._parent_task = None
