"""Test environment: Prefect and MLflow stay inside a temp folder and never phone home.

Also the test tiers: sample data in the real formats (`generated_data`, written here, and
`reference_data`, the real samples beside the repository, for tests marked `realdata`), and the
rule that a core test never skips: any skip outside OPTIONAL_MARKERS fails the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="searchr1-tests-"))
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_API_URL"] = ""  # no stray server: tests use prefect_test_harness
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("SEARCHR1_FAULT", None)

import pytest  # noqa: E402

from searchr1.corpus.samples import SampleFiles, reference_samples, write_samples  # noqa: E402

# Tiers whose tests may skip because what they need is outside the repository (real data, optional
# extras). A skip of any other test fails the run: a clone must exercise every core code path.
OPTIONAL_MARKERS: tuple[str, ...] = ("realdata", "verl_cpu", "vllm")

# The real samples (wiki-18 rows, NQ questions) that CI keeps beside the repository.
REFERENCE_DATA = Path(os.environ.get("SEARCHR1_REFERENCE_DATA")
                      or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect server (SQLite) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def generated_data(tmp_path_factory) -> SampleFiles:
    """1,000 wiki-18-format passages (jsonl and jsonl.gz) and 17 FlashRAG questions, generated."""
    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def reference_data() -> SampleFiles:
    """The real samples; only tests marked `realdata` may use it (elsewhere its skip fails the run)."""
    try:
        return reference_samples(REFERENCE_DATA)
    except FileNotFoundError as exc:
        pytest.skip(f"realdata tier: {exc}; set SEARCHR1_REFERENCE_DATA to the folder to run it")


@pytest.fixture(params=["generated", pytest.param("reference", marks=pytest.mark.realdata)])
def sample_data(request) -> SampleFiles:
    """Each sample set in turn: the same check on generated files and on the real ones."""
    return request.getfixturevalue(f"{request.param}_data")


# Free space the slow tier needs under the temp folder: its GRPO, checkpoint and flow tests write policies and
# optimiser state (a whole `make test` peaked at 3.8 GB there: bare clone, 2026-12-07). Checked before any test
# runs, so a full disk fails with this message instead of a SafetensorError half-way through the suite (CI on
# 2026-12-07: five tests, after ten minutes).
SLOW_TIER_FREE_GB = float(os.environ.get("SEARCHR1_TEST_FREE_GB", "8"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("slow") for item in items):
        return
    where = Path(tempfile.gettempdir())
    free_gb = shutil.disk_usage(where).free / 2**30
    if free_gb < SLOW_TIER_FREE_GB:
        raise pytest.UsageError(
            f"{where} has {free_gb:.1f} GB free; the slow tests need {SLOW_TIER_FREE_GB:.0f} GB there "
            f"(policies and optimiser state). Free some space, point TMPDIR elsewhere, run `make test-fast`, "
            f"or set SEARCHR1_TEST_FREE_GB to a lower bound at your own risk")


_core_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and not set(OPTIONAL_MARKERS) & set(report.keywords):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
        _core_skips.append(f"{report.nodeid}: {reason.removeprefix('Skipped: ')}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    # a module skipped while importing has no markers to read: skip inside a marked test or fixture instead
    if report.skipped:
        _core_skips.append(f"{report.nodeid}: skipped at collection")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _core_skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _core_skips:
        terminalreporter.write_sep("=", f"FAILED: {len(_core_skips)} core test(s) skipped (only tests marked "
                                        f"{', '.join(OPTIONAL_MARKERS)} may skip)", red=True)
        for line in _core_skips:
            terminalreporter.write_line(line)


@pytest.fixture
def random_llama():
    """A factory of small random Llamas, the same weights at every call (for forward/gradient comparisons)."""
    def make():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        return LlamaForCausalLM(cfg).train()

    return make
