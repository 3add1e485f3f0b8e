"""Serve the flow's deployments: `reproduce-search-r1/tiny` and `reproduce-search-r1/paper`.

`make serve` (flows/serve.py) starts a Prefect server on 127.0.0.1 and runs this once per profile:
the tiny deployment's process runs offline (HF_HUB_OFFLINE=1: its models ship in wheels), the paper
one's may reach the hub. Then, from another shell,
`prefect deployment run reproduce-search-r1/tiny` (add `--param until=index` or
`--param 'overrides=["training.grpo.steps=5"]'`). `serve` keeps this process polling for runs and
executes each one in a subprocess of it.

    python -m flows.deploy [tiny] [paper]      # default: both, in this process
"""

from __future__ import annotations

import argparse
import sys

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.reproduce import reproduce

PROFILES = {
    "tiny": "Embedded default: synthetic world, SmolLM2-135M, TRL on CPU (offline).",
    "paper": "Search-R1's setup: wiki-18, e5-base-v2, Qwen2.5-3B-Instruct, verl on GPUs.",
}


def deployments(profiles: list[str] | None = None) -> list[RunnerDeployment]:
    # enforce_parameter_schema: a bad `until` or a non-list `overrides` is refused when the run is created
    return [reproduce.to_deployment(name=name, description=PROFILES[name],
                                    parameters={"config": f"configs/{name}.yaml"}, tags=["searchr1", name],
                                    enforce_parameter_schema=True)
            for name in profiles or list(PROFILES)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.deploy", description="Serve the flow's deployments "
                                 "(PREFECT_API_URL must name a running server; `make serve` does all of it).")
    ap.add_argument("profiles", nargs="*", metavar="PROFILE",
                    help=f"deployments to serve: {', '.join(PROFILES)} (default: all)")
    args = ap.parse_args(argv)
    unknown = [p for p in args.profiles if p not in PROFILES]
    if unknown:
        ap.error(f"unknown profile(s) {', '.join(unknown)}; expected some of {', '.join(PROFILES)}")
    serve(*deployments(args.profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
