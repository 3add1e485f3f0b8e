"""Base class for config sections: strict (unknown keys refused), immutable, typed; and their flat form."""

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

# The names result rows carry: the search agent's method, and the macro-average "benchmark" of result
# tables. Here, not in searchr1.agent, so that tracking and reports need not import the agent package.
AGENT = "search_agent"
BASE_CHECKPOINT = "base"  # the untrained policy's checkpoint name (step 0)
AVERAGE = "average"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
