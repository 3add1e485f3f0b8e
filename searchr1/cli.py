"""`searchr1`: one command for everything the project runs. It only dispatches: each subcommand is the
`main(argv, prog)` of the module that owns it, so `searchr1 run ...` and `python -m flows.reproduce ...`
take the same arguments and give the same errors.

Config overrides are positional `key.sub=value` words in every subcommand that reads a config.
The flow and the Prefect server live in flows/ (they import Prefect, which this library never does),
so those subcommands import them only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from searchr1.ledger import ledger_path, read_ledger

PROJECT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]  # e.g. ("retriever", "serve")
    target: str  # "module:function" taking (argv, prog) and returning an exit code
    help: str
    extra_argv: tuple[str, ...] = ()  # appended to what the user typed
    preload_allocator: bool = False  # trains or evaluates: restart with mimalloc preloaded (searchr1.allocator)

    @property
    def name(self) -> str:
        return " ".join(self.words)


COMMANDS: tuple[Command, ...] = (
    Command(("run",), "flows.reproduce:main",
            "run or resume the pipeline flow (same as `python -m flows.reproduce`)", preload_allocator=True),
    Command(("ask",), "searchr1.ask:main", "ask a checkpoint one question and print the multi-turn trace"),
    Command(("retriever", "serve"), "searchr1.retrieval.server:main",
            "serve an index over Search-R1's retrieval HTTP API"),
    Command(("verl", "render"), "searchr1.training.verl_launch:main",
            "render the verl GRPO launch (files + command) from a config; no GPU needed",
            extra_argv=("--dry-run",)),
    Command(("verl", "launch"), "searchr1.training.verl_launch:main", "render and run verl GRPO (GPU node)"),
    Command(("fault-injection",), "flows.fault_injection:main",
            "SIGKILL the pipeline inside each stage, resume, compare with an uninterrupted run"),
    Command(("fingerprints",), "flows.fingerprints:main",
            "save the content hashes of a run's stage outputs, or compare a run with saved ones"),
    Command(("grpo-streams",), "searchr1.grpo_streams:main",
            "GRPO again from a run's warm start under other seeds or settings, each stream scored held-out",
            preload_allocator=True),
    Command(("report", "open"), "searchr1.cli:report_open", "print (and open) the latest run report"),
    Command(("serve",), "flows.serve:serve_main",
            "start the Prefect server on 127.0.0.1 and serve the deployments (what `make serve` runs)"),
    Command(("stop",), "flows.serve:stop_main", "stop what `searchr1 serve` started (what `make stop` runs)"),
    Command(("status",), "flows.serve:status_main", "is the Prefect server `searchr1 serve` started up?"),
)


def _overview() -> argparse.ArgumentParser:
    """Only for `searchr1 --help`: the list of subcommands (each one parses its own arguments)."""
    width = max(len(c.name) for c in COMMANDS)
    lines = [f"  {c.name:<{width}}  {c.help}" for c in COMMANDS]
    return argparse.ArgumentParser(
        prog="searchr1", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce Search-R1: one command for the pipeline, its tools and its services.",
        usage="searchr1 COMMAND [ARGS ...] [key.sub=value ...]",
        epilog="commands:\n" + "\n".join(lines) + "\n\n`searchr1 COMMAND --help` shows a command's arguments. "
               "Config overrides are positional key.sub=value words, e.g. training.grpo.steps=5.")


def _find(argv: Sequence[str]) -> tuple[Command, list[str]] | None:
    for command in sorted(COMMANDS, key=lambda c: -len(c.words)):
        if tuple(argv[:len(command.words)]) == command.words:
            return command, [*argv[len(command.words):], *command.extra_argv]
    return None


def _call(target: str, argv: list[str], prog: str) -> int:
    module, _, function = target.partition(":")
    fn: Callable[..., int | None] = getattr(importlib.import_module(module), function)
    try:
        return int(fn(argv, prog=prog) or 0)
    except SystemExit as exc:  # argparse's --help and usage errors
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None  # the `searchr1` script itself, not a caller in this process (tests)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        _overview().print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        from searchr1 import __version__

        print(f"searchr1 {__version__}")
        return 0
    found = _find(argv)
    if found is None:
        groups = {c.words[0]: c for c in COMMANDS if len(c.words) > 1}
        if argv[0] in groups:
            subs = ", ".join(c.words[1] for c in COMMANDS if c.words[0] == argv[0])
            what = f"'{argv[0]} {argv[1]}'" if len(argv) > 1 else f"'{argv[0]}' alone"
            print(f"searchr1: unknown command {what}; expected '{argv[0]}' followed by one of: {subs}",
                  file=sys.stderr)
        else:
            names = ", ".join(c.name for c in COMMANDS)
            print(f"searchr1: unknown command '{argv[0]}'; expected one of: {names} (see searchr1 --help)",
                  file=sys.stderr)
        return 2
    command, rest = found
    if command.preload_allocator and from_command_line:
        from searchr1.allocator import ensure_preloaded

        ensure_preloaded()  # returns at once when preloaded; else this process restarts with it
    return _call(command.target, rest, prog=f"searchr1 {command.name}")


# --- report open -------------------------------------------------------------------------------------

REPORT_STAGE = "report"
MANIFEST = "_manifest.json"


class ReportNotFound(LookupError):
    pass


def find_report(artifacts: Path, run_id: str | None = None) -> Path:
    """report.html of pipeline run `run_id` (the last report its ledger names), or the newest one built."""
    cache = artifacts / "cache" / REPORT_STAGE
    if run_id is not None:
        ledger = ledger_path(artifacts, run_id)
        if not ledger.is_file():
            known = sorted(p.name for p in (artifacts / "runs").glob("*") if p.is_dir())[-5:]
            raise ReportNotFound(f"--run-id {run_id!r}: no pipeline run with that id under {artifacts / 'runs'}"
                                 f" (latest: {', '.join(known) or 'none'})")
        keys = [r["key"] for r in read_ledger(ledger)
                if r.get("stage") == REPORT_STAGE and r.get("status") in ("ran", "cached")]
        if not keys:
            raise ReportNotFound(f"--run-id {run_id!r}: that run has not built its report yet ({ledger})")
        path = cache / keys[-1] / "report.html"
        if not path.is_file():
            raise ReportNotFound(f"--run-id {run_id!r}: its report {path} was deleted; run the pipeline again")
        return path
    built = [m.parent / "report.html" for m in cache.glob(f"*/{MANIFEST}") if (m.parent / "report.html").is_file()]
    if not built:
        raise ReportNotFound(f"--artifacts {artifacts}: no report under {cache}; `searchr1 run` builds one")
    return max(built, key=lambda p: (p.parent / MANIFEST).stat().st_mtime)


def report_open(argv: list[str] | None = None, prog: str = "searchr1 report open") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Print the path of the latest run report "
                                 "(or of one pipeline run's) and, with --browser, open it.")
    ap.add_argument("--artifacts", type=Path, default=Path(os.environ.get("SEARCHR1_ARTIFACTS", PROJECT / "artifacts")),
                    help="artifacts folder (run.artifacts_dir; default: %(default)s)")
    ap.add_argument("--run-id", default=None, help="pipeline run id (default: the newest report)")
    ap.add_argument("--browser", action="store_true", help="also open it in the default web browser")
    args = ap.parse_args(argv)
    try:
        path = find_report(args.artifacts, args.run_id)
    except ReportNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    if args.browser and not webbrowser.open(path.resolve().as_uri()):
        print(f"error: --browser: no web browser found to open {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
