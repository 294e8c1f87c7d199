# -*- coding: utf-8 -*-
"""`gpuforge_linear`: Ansible's linear strategy, with each forked worker at a lower CPU priority than the
strategy's own loop.

Why: the linear strategy's main loop is serial. For every task it computes each host's variables, forks a
worker per host and then processes each host's result, and the next task cannot start before it has. While
it does, the workers it already forked (templating, SSH) compete with it for the same cores. When there are
more runnable workers than cores, the loop gets a fair share of a core at best, and each task ends later than
its workers' CPU time needs. A lower priority for the workers (`nice`) keeps their throughput, because the
cores stay busy, and lets the loop go first, so the hosts' tasks start sooner. README (Performance) has the
measurements, docs/decisions.md (ansible.cfg) the choice.

GPUFORGE_WORKER_NICE (default 10; 0 leaves the workers as linear does) is added to the main loop's own
niceness, up to 19, so no privilege is needed. SSH clients a worker starts (and the ControlPersist master the
first one leaves) inherit it; the hosts' own processes are not touched.
"""

from __future__ import annotations

import contextlib
import os

from ansible.plugins.strategy.linear import StrategyModule as LinearStrategyModule

DOCUMENTATION = """
    name: gpuforge_linear
    short_description: linear, with the forked workers at a lower CPU priority than the main loop
    description:
        - Ansible's linear strategy. Each worker it forks runs GPUFORGE_WORKER_NICE (default 10) above the
          main loop's niceness, up to 19.
    author: gpuforge
"""


def worker_nice() -> int:
    """The niceness to give the workers, from GPUFORGE_WORKER_NICE: a whole number from 0 to 19."""
    raw = os.environ.get("GPUFORGE_WORKER_NICE", "10")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"GPUFORGE_WORKER_NICE must be a whole number from 0 to 19, not {raw!r}") from None
    if not 0 <= value <= 19:
        raise ValueError(f"GPUFORGE_WORKER_NICE must be a whole number from 0 to 19, not {value}")
    return value


class StrategyModule(LinearStrategyModule):
    def __init__(self, tqm):
        super().__init__(tqm)
        step = worker_nice()
        # Relative to the loop's own niceness: raising a process's niceness needs no privilege, lowering does.
        self._gpuforge_nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + step) if step else None

    def _queue_task(self, host, task, task_vars, play_context):
        super()._queue_task(host, task, task_vars, play_context)
        if self._gpuforge_nice is None:
            return
        # The worker just started is the one not yet marked (each worker is a new object in its slot).
        for worker in self._workers:
            if worker is None or getattr(worker, "_gpuforge_niced", False):
                continue
            try:
                pid = worker.pid
            except ValueError:  # a closed worker object
                continue
            if pid:
                worker._gpuforge_niced = True
                with contextlib.suppress(ProcessLookupError):  # already exited: nothing left to slow down
                    os.setpriority(os.PRIO_PROCESS, pid, self._gpuforge_nice)
