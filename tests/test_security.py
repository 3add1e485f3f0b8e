"""Security basics, asserted: loopback by default, no remote code, safe tensor loading, no shell
strings, no secrets in logged params."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from searchr1.agent.config import PolicyConfig
from searchr1.config import load_config
from searchr1.retrieval.config import ServerConfig
from searchr1.tracking import redact

PROJECT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("searchr1", "flows", "tasks", "benchmarks") for p in (PROJECT / d).rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_source_file_follows_the_rules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for call in _calls(tree):
        name, where = _name(call), f"{path}:{call.lineno}"
        kw = {k.arg: k.value for k in call.keywords}
        assert name not in ("system", "popen"), f"{where}: os.system/os.popen runs a shell"
        if "shell" in kw:
            assert isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False, f"{where}: shell=True"
        if "trust_remote_code" in kw:
            assert not (isinstance(kw["trust_remote_code"], ast.Constant) and kw["trust_remote_code"].value), \
                f"{where}: trust_remote_code hard-wired on; it must come from config"
        if name == "load" and isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "torch":
            assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, \
                f"{where}: torch.load without weights_only=True"
        is_subprocess = isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") in (
            "subprocess", "asyncio") or name == "Popen"
        if is_subprocess and name in ("run", "Popen", "check_output", "check_call", "create_subprocess_exec") \
                and call.args:
            assert not isinstance(call.args[0], (ast.JoinedStr, ast.Constant, ast.BinOp)), \
                f"{where}: subprocess started from a string; pass an argument list"


def test_servers_bind_loopback_and_no_remote_code_by_default():
    assert ServerConfig().host == "127.0.0.1"
    assert PolicyConfig().trust_remote_code is False
    for name in ("tiny.yaml", "paper.yaml"):
        cfg = load_config(PROJECT / "configs" / name)
        assert cfg.retrieval.server.host == "127.0.0.1"
        assert cfg.policy.trust_remote_code is False


def test_secrets_are_redacted_from_params():
    params = {"training.verl.extra.wandb_api_key": "abc", "hub.token": "hf_x", "training.grpo.steps": 3}
    assert redact(params) == {"training.verl.extra.wandb_api_key": "***", "hub.token": "***",
                              "training.grpo.steps": 3}
