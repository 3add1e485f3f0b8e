"""Fault injection for the reliability tests: die or fail at a named point inside a stage.

`SEARCHR1_FAULT=<point>:<action>` where action is `kill` (SIGKILL this process: no cleanup runs,
like a preempted node) or `raise` (an ordinary exception). Points are named in the code that calls
`point()`, e.g. "index.after_shard", "train.mid_checkpoint". Unset in normal runs: a no-op.
"""

from __future__ import annotations

import os
import signal

ENV = "SEARCHR1_FAULT"


class InjectedFault(RuntimeError):
    pass


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, action = spec.partition(":")
    if target != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected failure at {name} ({ENV}={spec})")
