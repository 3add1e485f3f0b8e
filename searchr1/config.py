"""The pipeline config: YAML file + `key.sub=value` overrides, validated before any stage runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from searchr1.agent.config import AgentConfig, PolicyConfig
from searchr1.corpus.config import CorpusConfig, QuestionsConfig
from searchr1.evaluation.config import EvaluationConfig
from searchr1.reflection.config import ReflectionConfig
from searchr1.retrieval.config import RetrievalConfig
from searchr1.schema import Section
from searchr1.training.config import TrainingConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the key path and the expectation."""


# Settings that change how fast a stage runs, never what it writes: dropped from every cache key, so switching
# one (after a crash, on another machine) keeps hours of finished stages.
NOT_IN_CACHE_KEYS = ("agent.vllm.in_process",)


class RunConfig(Section):
    name: str = "tiny"
    seed: int = 0
    artifacts_dir: Path = Path("artifacts")
    experiment: str = "reproduce-search-r1"


class PipelineConfig(Section):
    run: RunConfig = RunConfig()
    corpus: CorpusConfig = CorpusConfig()
    questions: QuestionsConfig = QuestionsConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    policy: PolicyConfig = PolicyConfig()
    agent: AgentConfig = AgentConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    reflection: ReflectionConfig = ReflectionConfig()
    notes: str = Field("", description="free text, logged with the run")

    def slice(self, *paths: str) -> dict[str, Any]:
        """The parts of the config a stage depends on, as plain JSON data (for cache keys), less NOT_IN_CACHE_KEYS."""
        data = self.model_dump(mode="json")
        for dropped in NOT_IN_CACHE_KEYS:
            *parents, leaf = dropped.split(".")
            node = data
            for part in parents:
                node = node[part]
            del node[leaf]
        out: dict[str, Any] = {}
        for path in paths:
            node: Any = data
            for part in path.split("."):
                node = node[part]
            out[path] = node
        return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value); the value is read as YAML so `1e-6`, `true`, `[a,b]` work."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. training.grpo.steps=10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string; a number was meant
        for number in (int, float):
            try:
                return key.strip().split("."), number(value)
            except ValueError:
                pass
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str = "override") -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{source} {item!r}: {'.'.join(path[:-1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{loc}' (value {err['input']!r}); check the spelling "
                         f"against configs/tiny.yaml")
        else:
            lines.append(f"{source}: key '{loc}' = {err.get('input')!r}: {err['msg']}")
    return "\n".join(lines)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read a YAML config, apply overrides, validate; raises ConfigError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    overrides = list(overrides)
    data = apply_overrides(data, overrides, source=str(path))
    label = f"{path}" + (f" (+ {len(overrides)} override(s))" if overrides else "")
    return config_from_dict(data, source=label)


def load_config_for_cli(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig | None:
    """For command-line entry points: the config, or None after printing its one-line error to stderr."""
    import sys

    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
