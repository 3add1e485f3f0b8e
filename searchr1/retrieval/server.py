"""Serve a retrieval index over Search-R1's HTTP API, with cross-request micro-batching.

This module is the server as a process: loading the index, binding the socket, the CLI, and
`running_server` (start one in a subprocess, wait until healthy, stop it). The HTTP app is app.py,
the micro-batcher batcher.py.

CLI: searchr1 retriever serve --index DIR [--config configs/tiny.yaml] [--host H] [--port P] [key.sub=value ...]
(or python -m searchr1.retrieval.server with the same arguments)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

from searchr1.retrieval.app import READY_FILE_ENV, create_app
from searchr1.retrieval.config import RetrievalConfig


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(index_dir: Path, cfg: RetrievalConfig, host: str | None = None, port: int | None = None) -> None:
    """Load the index and serve until interrupted (binds the socket first so port 0 can be reported)."""
    import uvicorn

    from searchr1.retrieval.searcher import load_searcher, read_meta

    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    if cfg.embedder.num_threads:
        import torch

        torch.set_num_threads(cfg.embedder.num_threads)  # our own process: the trainer is not affected
    searcher = load_searcher(index_dir, cfg)
    meta = read_meta(index_dir)
    app = create_app(searcher, cfg, info={"kind": meta["kind"], "count": meta["count"], "index": str(index_dir)})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    app.state.url = _url(host, sock.getsockname()[1])
    print(f"retrieval server on {app.state.url} (index {index_dir}, {meta['count']} passages)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=30))
    server.run(sockets=[sock])


@contextlib.contextmanager
def running_server(index_dir: Path, cfg, port: int = 0, timeout: float = 180.0) -> Iterator[str]:
    """Start the server in a subprocess, wait for /health, yield its base URL, stop it on exit.

    `cfg` is a RetrievalConfig or a PipelineConfig (its retrieval section is used).
    """
    import yaml

    retrieval = getattr(cfg, "retrieval", cfg)
    with tempfile.TemporaryDirectory(prefix="searchr1-retrieval-") as tmp:
        cfg_path, ready, log_path = Path(tmp) / "config.yaml", Path(tmp) / "ready", Path(tmp) / "server.log"
        cfg_path.write_text(yaml.safe_dump({"retrieval": retrieval.model_dump(mode="json")}))
        root = str(Path(__file__).resolve().parents[2])  # so `-m searchr1...` works without an install
        env = {**server_env(), READY_FILE_ENV: str(ready),
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        args = [sys.executable, "-m", "searchr1.retrieval.server", "--index", str(index_dir),
                "--config", str(cfg_path), "--host", retrieval.server.host, "--port", str(port)]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            url = _wait_ready(proc, ready, log_path, timeout)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def server_env() -> dict[str, str]:
    """Environment for a server subprocess. OpenMP threads that busy-wait between parallel regions
    starve when another process (the trainer) uses the same cores; passive waiting avoids that."""
    return {"OMP_WAIT_POLICY": "PASSIVE", **os.environ}


def _wait_ready(proc: subprocess.Popen, ready: Path, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"retrieval server exited with code {proc.returncode} before it was ready:\n{tail}")
        if ready.is_file() and (url := ready.read_text().strip()):
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise TimeoutError(f"retrieval server not healthy after {timeout:.0f}s; log tail:\n{tail}")


def main(argv: Sequence[str] | None = None, prog: str = "python -m searchr1.retrieval.server") -> int:
    from searchr1.config import apply_overrides, config_from_dict, load_config

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, required=True, help="index directory written by build_index")
    p.add_argument("--config", type=Path, default=None, help="pipeline YAML (default: built-in defaults)")
    p.add_argument("--host", default=None, help="default: retrieval.server.host (127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default: retrieval.server.port; 0 = any free port")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, e.g. retrieval.server.batch_window_ms=5")
    a = p.parse_intermixed_args(argv)
    try:
        if a.config is not None:
            cfg = load_config(a.config, a.overrides)
        else:
            cfg = config_from_dict(apply_overrides({}, a.overrides), source="overrides")
        if not a.index.is_dir():
            raise FileNotFoundError(f"--index {a.index}: not a directory (expected an index stage folder)")
        serve(a.index, cfg.retrieval, a.host, a.port)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:  # bad config/index/port: no traceback
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
