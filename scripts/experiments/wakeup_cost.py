"""CPU per task wake-up from ``asyncio.sleep`` on uvloop: the cost of one more periodic timer per call.

    .venv/bin/python scripts/experiments/wakeup_cost.py [--tasks 2000] [--period 0.5] [--seconds 10]

Each of ``--tasks`` tasks sleeps ``--period`` in a loop (as the per-call watchdogs do); the process's CPU over
``--seconds`` divided by the wake-ups in that time. BENCHMARKS.md, Round 7.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop


async def sleeper(period: float) -> None:
    while True:  # noqa: ASYNC110 - a periodic timer is what is measured
        await asyncio.sleep(period)


async def measure(tasks: int, period: float, seconds: float) -> None:
    running = [asyncio.create_task(sleeper(period)) for _ in range(tasks)]
    await asyncio.sleep(1.0)  # past the first, synchronised wake-ups
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
    wakeups = tasks * elapsed / period
    print(f"{cpu / wakeups * 1e6:.1f} us of CPU per wake-up ({wakeups:.0f} wake-ups, {cpu:.2f} CPU-s)")
    for task in running:
        task.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--period", type=float, default=0.5)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    uvloop.run(measure(args.tasks, args.period, args.seconds))


if __name__ == "__main__":
    main()
