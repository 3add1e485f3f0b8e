"""searchr1.allocator: which malloc the pipeline's processes preload, and the restart that preloads it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from searchr1 import allocator
from searchr1.cli import COMMANDS

MAPS_HAS = "print(any('{lib}' in line for line in open('/proc/self/maps')))"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, *allocator.MIMALLOC_OPTIONS)}
    return {**env, **extra}


def test_choice_defaults_to_mimalloc_and_refuses_unknown_names():
    assert allocator.chosen({}) == "mimalloc"
    assert allocator.chosen({allocator.ENV: ""}) == "mimalloc"
    assert allocator.chosen({allocator.ENV: "system"}) == "system"
    with pytest.raises(ValueError, match=r"SEARCHR1_ALLOCATOR='tcmalloc': expected one of mimalloc, jemalloc, "
                                         r"system"):
        allocator.chosen({allocator.ENV: "tcmalloc"})
    with pytest.raises(ValueError, match="unknown allocator 'glibc'"):
        allocator.find_preload("glibc")


def test_system_leaves_the_environment_alone():
    env = {allocator.ENV: "system", "LD_PRELOAD": "/x/libfoo.so"}
    assert allocator.preload_env(env) == env


def test_preload_goes_first_once_and_a_users_settings_win(monkeypatch, tmp_path):
    lib = tmp_path / "libmimalloc.so"
    monkeypatch.setattr(allocator, "find_preload", lambda name: lib)
    out = allocator.preload_env({"LD_PRELOAD": f"/x/libfoo.so:{lib}", "MIMALLOC_PURGE_DELAY": "10"})
    assert out["LD_PRELOAD"] == f"{lib}:/x/libfoo.so"
    assert out["MIMALLOC_PURGE_DELAY"] == "10"  # the user's value
    assert out["MIMALLOC_ALLOW_LARGE_OS_PAGES"] == "1"
    # jemalloc takes no mimalloc settings
    assert "MIMALLOC_PURGE_DELAY" not in allocator.preload_env({allocator.ENV: "jemalloc"})


def test_a_missing_library_falls_back_to_glibc_with_a_warning(monkeypatch, capsys):
    monkeypatch.setattr(allocator, "find_preload", lambda name: None)
    env = {"PATH": "/bin"}
    assert allocator.preload_env(env) == env
    assert "mimalloc is not installed (`make setup` installs it)" in capsys.readouterr().err


def test_the_pipeline_commands_preload_it():
    assert {c.name for c in COMMANDS if c.preload_allocator} == {"run", "grpo-streams"}


@pytest.mark.skipif(allocator.find_preload("mimalloc") is None, reason="mimalloc not installed: run `make setup`")
def test_ensure_preloaded_restarts_the_process_with_mimalloc_mapped():
    lib = allocator.find_preload("mimalloc")
    code = ("from searchr1.allocator import ensure_preloaded; ensure_preloaded(); import os; "
            "print(os.environ.get('MIMALLOC_PURGE_DELAY'), end=' '); " + MAPS_HAS.format(lib=lib.name))
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["-1", "True"]
    out = subprocess.run([sys.executable, "-c", code], env=_env(**{allocator.ENV: "system"}), capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["None", "False"]
