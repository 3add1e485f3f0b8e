"""Keep the flow log readable: no bytecode listings, no warnings a user cannot act on.

Installed once by flows.reproduce, in every process that runs the flow (local runs and served deployments).
"""

from __future__ import annotations

import dis
import io
import sys
import types
import warnings

# (message regex, category, module regex): raised inside libraries, about their own internals or
# about defaults we choose on purpose; nothing in this project's config changes them.
NOISE: tuple[tuple[str, type[Warning], str], ...] = (
    (r".*", DeprecationWarning, r"(prefect|mlflow|transformers|trl|datasets|torch|pydantic|sqlalchemy|alembic)"),
    (r".*", FutureWarning, r"(transformers|trl|datasets|torch|accelerate)"),
)


def _dis_into_stdout(x=None, *, file=None, **kwargs) -> None:
    """`dis.dis` that writes its listing with one `write` instead of many `print`s.

    dill (datasets hashes functions with it) finds a function's globals by disassembling it into a
    captured `sys.stdout`. Prefect's `log_prints` replaces `print` and sends every `print` aimed at
    `sys.stdout` to the run log, so the listing landed in the flow log and dill's capture stayed empty.
    Printing into a private buffer (which log_prints leaves alone) and writing that to the current
    `sys.stdout` keeps the listing where dill looks for it.
    """
    buffer = io.StringIO()
    dis.dis(x, file=buffer, **kwargs)
    (file or sys.stdout).write(buffer.getvalue())


def quiet_dill() -> None:
    try:
        import dill.detect
    except ImportError:  # no dill, nothing disassembles
        return
    if getattr(dill.detect.dis, "dis", None) is _dis_into_stdout:
        return
    shim = types.ModuleType("dis", "dis, writing listings in one piece (see flows.quiet)")
    shim.__dict__.update({k: v for k, v in vars(dis).items() if not k.startswith("__")})
    shim.dis = _dis_into_stdout
    dill.detect.dis = shim


def filter_warnings() -> None:
    for message, category, module in NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def install() -> None:
    quiet_dill()
    filter_warnings()
