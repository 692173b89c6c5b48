"""Measurement only: log every connection aiohttp's connector opens, to see whether the provider pools churn.

Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; with ``CONNLOG=/some/prefix`` set, each process
appends ``<monotonic time> <port><path>`` to ``/some/prefix.<pid>`` for every new connection (BENCHMARKS.md, Round 8):

    .venv/bin/python scripts/bench.py --sweep --sweep-calls 100 --calls 100 --skip-pipecat --skip-relay \\
        --server-env PYTHONPATH="$PWD/scripts/experiments/count_connections" --server-env CONNLOG=/tmp/conn
    awk '{print $2}' /tmp/conn.* | sort | uniq -c
"""

from __future__ import annotations

import os
import time
from typing import Any

if os.environ.get("CONNLOG"):
    import aiohttp

    _log = open(f"{os.environ['CONNLOG']}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115 (open for the process)
    _create = aiohttp.TCPConnector._create_connection

    async def _counted(self: aiohttp.TCPConnector, req: Any, traces: Any, timeout: Any) -> Any:  # noqa: ASYNC109 (aiohttp's signature)
        _log.write(f"{time.monotonic():.3f} {req.url.port}{req.url.path}\n")
        return await _create(self, req, traces, timeout)

    aiohttp.TCPConnector._create_connection = _counted  # type: ignore[method-assign]
