"""Serve the flow's deployments: `reproduce-search-r1/tiny` and `reproduce-search-r1/paper`.

`make serve` starts a Prefect server on 127.0.0.1 and runs this; then, from another shell,
`prefect deployment run reproduce-search-r1/tiny` (add `--param until=index` or
`--param 'overrides=["training.grpo.steps=5"]'`). `serve` keeps this process polling for runs and
executes each one in a subprocess of it.
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.reproduce import reproduce

PROFILES = {
    "tiny": "Embedded default: synthetic world, SmolLM2-135M, TRL on CPU (offline).",
    "paper": "Search-R1's setup: wiki-18, e5-base-v2, Qwen2.5-3B-Instruct, verl on GPUs.",
}


def deployments() -> list[RunnerDeployment]:
    return [reproduce.to_deployment(name=name, description=text, parameters={"config": f"configs/{name}.yaml"},
                                    tags=["searchr1", name])
            for name, text in PROFILES.items()]


if __name__ == "__main__":
    serve(*deployments())
