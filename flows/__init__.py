"""Orchestration: the Prefect flow, its deployments, the local server, the fault-injection driver."""

import os

# Set before Prefect reads its settings. A run without PREFECT_API_URL starts a temporary server and
# waits 20 s for it by default; on a loaded machine (two runs, 2 cores) that start took longer and
# both runs died. A value already in the environment wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# An empty PREFECT_API_URL (what `make run` passes unless you export one) means "no server: start a
# temporary one". Prefect's own client reads empty as unset, but its events worker does not: it fails
# ("api_url must be provided") and every task-run state event is lost, so the UI shows no task runs.
if os.environ.get("PREFECT_API_URL") == "":
    del os.environ["PREFECT_API_URL"]
