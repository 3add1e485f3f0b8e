"""Fault injection for the reliability tests: die or fail at a named point inside a stage.

`SEARCHR1_FAULT=<point>:<action>[:<once-file>]` where action is `kill` (SIGKILL this process: no
cleanup runs, like a preempted node) or `raise` (an ordinary exception). With a once-file the fault
fires only while that file does not exist, and creates it, so the resumed run goes through.
Points are named in the code that calls `point()`, e.g. "index.before_publish". Unset: a no-op.
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
    target, _, rest = spec.partition(":")
    action, _, once = rest.partition(":")
    if target != name:
        return
    if once:
        if os.path.exists(once):
            return
        with open(once, "w") as fh:
            fh.write(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected failure at {name} ({ENV}={spec})")
