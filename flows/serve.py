"""`make serve` / `make stop`: a Prefect server on 127.0.0.1 and the processes serving the deployments.

    python -m flows.serve start     # (searchr1 serve) start or reuse the server, then serve tiny and paper
    python -m flows.serve status    # (searchr1 status)
    python -m flows.serve stop      # (searchr1 stop) stop what start started

`start` waits for the server's /api/health before serving anything, reuses a healthy server already
on the port (a second `make serve` changes nothing), and records the processes it started in
$PREFECT_HOME (.prefect/): server.pid, serve-tiny.pid, serve-paper.pid, with their logs beside them.
`stop` stops only processes whose pid files it finds there.

Nothing is written into the Prefect profile: PREFECT_API_URL is set only in the environment of the
processes started here, so `make run` (a temporary server per run) never depends on this one.
The tiny deployment is served offline (HF_HUB_OFFLINE=1, its models ship in wheels); the paper one is
not, so it can download wiki-18, its questions and Qwen2.5-3B from the hub.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from searchr1.allocator import preload_env

PROJECT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
FLOW = "reproduce-search-r1"
# profile -> environment of its serving process (on top of ours)
SERVED = {"tiny": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, "paper": {}}


class ServeError(RuntimeError):
    pass


def port() -> int:
    raw = os.environ.get("PREFECT_PORT", "4200")
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ServeError(f"PREFECT_PORT={raw!r}: expected a TCP port number (1-65535)")
    return int(raw)


def api_url(p: int | None = None) -> str:
    return f"http://{HOST}:{p or port()}/api"


def home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or PROJECT / ".prefect")


def _pid_file(name: str) -> Path:
    return home() / f"{name}.pid"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _port_taken(p: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((HOST, p)) == 0


def _alive(name: str, marker: str) -> int | None:
    """The pid recorded for `name` if that process still runs and is the one we started (its command
    line contains `marker`; a recycled pid is not ours)."""
    path = _pid_file(name)
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home()), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    root = str(PROJECT)  # `-m flows...` works from any working directory
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return env


def _spawn(name: str, argv: list[str], env: dict[str, str]) -> int:
    home().mkdir(parents=True, exist_ok=True)
    log = home() / f"{name}.log"
    with log.open("ab") as fh:
        # own session: `stop` ends the whole group (a served flow run is a child of its server process)
        proc = subprocess.Popen(argv, cwd=PROJECT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _pid_file(name).write_text(f"{proc.pid}\n")
    return proc.pid


def _tail(name: str, chars: int = 2000) -> str:
    log = home() / f"{name}.log"
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


def _wait(check, what: str, pid: int, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise ServeError(f"{what}: process {pid} exited; {home() / (name + '.log')} ends with:\n"
                             f"{_tail(name)}") from None
        time.sleep(0.5)
    raise ServeError(f"{what}: not ready after {timeout:.0f}s (SEARCHR1_SERVE_TIMEOUT); "
                     f"{home() / (name + '.log')} ends with:\n{_tail(name)}")


def start_server(timeout: float) -> str:
    url = api_url()
    if healthy(url):
        pid = _alive("server", "prefect")
        print(f"Prefect server: reusing the healthy server at {url}" + (f" (pid {pid})" if pid else
              " (not started by `make serve`: `make stop` leaves it running)"))
        return url
    if _port_taken(port()):
        raise ServeError(f"PREFECT_PORT={port()}: something else listens on {HOST}:{port()} and is not a "
                         f"healthy Prefect API; stop it or choose another port (make serve PREFECT_PORT=4300)")
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port()),
            "--analytics-off"]
    # the UI in the browser calls the API at PREFECT_UI_API_URL, which otherwise defaults to port 4200
    pid = _spawn("server", argv, _env(PREFECT_API_URL="", PREFECT_SERVER_API_HOST=HOST,
                                      PREFECT_SERVER_API_PORT=str(port()), PREFECT_UI_API_URL=url))
    print(f"Prefect server: starting on {url} (pid {pid}, log {home() / 'server.log'})", flush=True)
    t0 = time.monotonic()
    _wait(lambda: healthy(url), f"Prefect server on {url}", pid, "server", timeout)
    print(f"Prefect server: healthy after {time.monotonic() - t0:.1f}s; UI at http://{HOST}:{port()}")
    return url


def _deployment_exists(url: str, profile: str) -> bool:
    try:
        return httpx.get(f"{url}/deployments/name/{FLOW}/{profile}", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def serve_deployments(url: str, profiles: list[str], timeout: float) -> None:
    for profile in profiles:
        name = f"serve-{profile}"
        pid = _alive(name, "flows.deploy")
        if pid:
            print(f"deployment {FLOW}/{profile}: already served (pid {pid})")
            continue
        argv = [sys.executable, "-m", "flows.deploy", profile]
        # the flow runs it serves are its children: they inherit mimalloc (searchr1.allocator)
        pid = _spawn(name, argv, preload_env(_env(PREFECT_API_URL=url, **SERVED[profile])))
        offline = " offline" if SERVED[profile].get("HF_HUB_OFFLINE") else ""
        print(f"deployment {FLOW}/{profile}: serving{offline} (pid {pid}, log {home() / (name + '.log')})",
              flush=True)
    for profile in profiles:
        name = f"serve-{profile}"
        pid = _alive(name, "flows.deploy")
        if pid is None:
            raise ServeError(f"deployment {FLOW}/{profile}: its process exited; {home() / (name + '.log')} "
                             f"ends with:\n{_tail(name)}")
        _wait(lambda p=profile: _deployment_exists(url, p), f"deployment {FLOW}/{profile}", pid, name, timeout)


def start(profiles: list[str], timeout: float) -> None:
    url = start_server(timeout)
    serve_deployments(url, profiles, timeout)
    print(f"\nReady. Start a run from another shell:\n"
          f"  PREFECT_API_URL={url} .venv/bin/prefect deployment run {FLOW}/tiny --param until=index\n"
          f"Watch it at http://{HOST}:{port()}/runs ; stop everything with `make stop`.")


def _terminate(pid: int, grace: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child (in tests start and stop run in one process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop() -> list[str]:
    """Stop the serving processes, then the server; returns what was stopped."""
    stopped = []
    for name, marker in [*((f"serve-{p}", "flows.deploy") for p in SERVED), ("server", "prefect")]:
        pid = _alive(name, marker)
        if pid:
            _terminate(pid)
            stopped.append(f"{name} (pid {pid})")
        _pid_file(name).unlink(missing_ok=True)
    print("stopped: " + ", ".join(stopped) if stopped else "nothing to stop: no process started by `make serve` runs")
    return stopped


def status() -> bool:
    url = api_url()
    up = healthy(url)
    print(f"Prefect server {url}: {'healthy' if up else 'not answering'}"
          + (f" (pid {pid}, started by make serve)" if (pid := _alive("server", "prefect")) else ""))
    for profile in SERVED:
        pid = _alive(f"serve-{profile}", "flows.deploy")
        print(f"deployment {FLOW}/{profile}: " + (f"served by pid {pid}" if pid else "not served"))
    return up


def _parser(prog: str, what: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=what + " (port: $PREFECT_PORT, default 4200; state "
                                   "and logs: $PREFECT_HOME, default .prefect/)")


def serve_main(argv: list[str] | None = None, prog: str = "python -m flows.serve start") -> int:
    ap = _parser(prog, "Start (or reuse) the Prefect server on 127.0.0.1 and serve the deployments.")
    ap.add_argument("profiles", nargs="*", metavar="PROFILE",
                    help=f"deployments to serve: {', '.join(SERVED)} (default: all)")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("SEARCHR1_SERVE_TIMEOUT", 180)),
                    help="seconds to wait for the server and each deployment (default: %(default)s)")
    args = ap.parse_args(argv)
    unknown = [p for p in args.profiles if p not in SERVED]
    if unknown:
        ap.error(f"unknown profile(s) {', '.join(unknown)}; expected some of {', '.join(SERVED)}")
    try:
        start(args.profiles or list(SERVED), args.timeout)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def stop_main(argv: list[str] | None = None, prog: str = "python -m flows.serve stop") -> int:
    _parser(prog, "Stop the processes `make serve` started (pid files in $PREFECT_HOME).").parse_args(argv)
    stop()
    return 0


def status_main(argv: list[str] | None = None, prog: str = "python -m flows.serve status") -> int:
    _parser(prog, "Show whether the server and the deployment processes are up.").parse_args(argv)
    try:
        return 0 if status() else 1
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    actions = {"start": serve_main, "stop": stop_main, "status": status_main}
    if not argv or argv[0] not in actions:
        print(f"usage: python -m flows.serve {{{','.join(actions)}}} [--help]", file=sys.stderr)
        return 2
    return actions[argv[0]](argv[1:], prog=f"python -m flows.serve {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
