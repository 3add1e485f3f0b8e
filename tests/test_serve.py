"""`make serve` / `make stop` (flows/serve.py) against a real Prefect server, and `make run`'s command after it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from searchr1.allocator import preload_env

PROJECT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a Prefect server, two serving processes and two flow runs (~3 min on 2 cores)
SMALL = ["corpus.synthetic.n_people=40", "corpus.synthetic.n_places=10", "corpus.synthetic.n_organisations=8",
         "corpus.synthetic.n_works=20", "corpus.synthetic.questions_per_skill=20"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _pid(home: Path, name: str) -> int:
    return int((home / f"{name}.pid").read_text())


def test_serve_is_idempotent_runs_a_deployment_and_stops_and_make_run_needs_none_of_it(tmp_path):
    home, port = tmp_path / "prefect", _free_port()
    url = f"http://127.0.0.1:{port}/api"
    # what `make serve` gives the script: the Makefile's exports, no HF_HUB_OFFLINE, no PREFECT_API_URL
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PREFECT_API_URL")}
    env.update(PREFECT_HOME=str(home), PREFECT_PORT=str(port))
    serve = [sys.executable, "-m", "flows.serve"]

    def call(*args: str, timeout: float = 300, extra: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*args], cwd=PROJECT, env={**env, **(extra or {})}, capture_output=True, text=True,
                              timeout=timeout)

    try:
        first = call(*serve, "start")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "starting on" in first.stdout and "healthy after" in first.stdout
        pids = {name: _pid(home, name) for name in ("server", "serve-tiny", "serve-paper")}
        second = call(*serve, "start")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "reusing the healthy server" in second.stdout and second.stdout.count("already served") == 2
        assert pids == {name: _pid(home, name) for name in pids}  # nothing new was started
        # the tiny deployment is served offline, the paper one may reach the hub
        assert _environ(pids["serve-tiny"]).get("HF_HUB_OFFLINE") == "1"
        assert "HF_HUB_OFFLINE" not in _environ(pids["serve-paper"])
        assert _environ(pids["serve-tiny"])["PREFECT_API_URL"] == url
        # the flow runs they serve inherit the allocator `searchr1 run` restarts with (searchr1.allocator)
        assert _environ(pids["serve-tiny"]).get("LD_PRELOAD") == preload_env(env).get("LD_PRELOAD")
        # the UI in a browser calls this port's API (Prefect's default would be 4200)
        assert httpx.get(f"http://127.0.0.1:{port}/ui-settings", timeout=10).json()["api_url"] == url

        prefect = [sys.executable, "-m", "prefect", "deployment", "run", "reproduce-search-r1/tiny"]
        overrides = json.dumps(SMALL + [f"run.artifacts_dir={tmp_path / 'artifacts'}"])
        bad = call(*prefect, "--param", "until=evalute", extra={"PREFECT_API_URL": url}, timeout=120)
        assert bad.returncode != 0 and "evalute" in bad.stdout + bad.stderr  # refused at creation
        done = call(*prefect, "--param", "until=corpus", "--param", f"overrides={overrides}", "--watch",
                    "--watch-timeout", "240", extra={"PREFECT_API_URL": url})
        assert done.returncode == 0 and "Completed" in done.stdout, done.stdout + done.stderr
        assert list((tmp_path / "artifacts" / "cache" / "corpus").glob("*/_manifest.json"))
    finally:
        stopped = call(*serve, "stop", timeout=120)
    assert stopped.returncode == 0 and "server (pid" in stopped.stdout, stopped.stdout + stopped.stderr
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
    assert not list(home.glob("*.pid"))
    # `make serve` wrote nothing into the profile that a later `make run` would follow
    profiles = home / "profiles.toml"
    assert not profiles.exists() or "PREFECT_API_URL" not in profiles.read_text()

    # `make run`'s command line, with the server gone (the Makefile passes PREFECT_API_URL empty)
    run = call(sys.executable, "-m", "flows.reproduce", "--config", "configs/tiny.yaml", "--until", "questions",
               *SMALL, f"run.artifacts_dir={tmp_path / 'artifacts'}",
               extra={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_API_URL": ""})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "questions" in run.stdout
    assert "EventsWorker' failed" not in run.stdout + run.stderr  # task-run events reach the server
