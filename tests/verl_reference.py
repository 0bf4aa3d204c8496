"""verl 0.9.1's own math, imported for the parity tests (installed `--no-deps` from requirements/verl-parity.txt).

verl's package imports Ray and orjson at import time for its DataProto and serialisation, which the functions
compared here never call; where those two are not installed they are replaced by empty placeholder modules, so the
trainer environment does not need Ray.
"""

from __future__ import annotations

import importlib.util
import sys
import types


class _Placeholder(types.ModuleType):
    """Any attribute is a fresh empty class: enough for import-time type annotations and decorators."""

    def __getattr__(self, attr: str) -> type:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {})


_placeholders = [name for name in ("ray", "orjson") if importlib.util.find_spec(name) is None]
for _name in _placeholders:
    sys.modules[_name] = _Placeholder(_name)

import verl  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402
from verl.trainer.ppo import core_algos  # noqa: E402
from verl.utils.reward_score import gsm8k  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

for _name in _placeholders:  # verl holds its references; anything imported later sees the real absence
    del sys.modules[_name]

__all__ = ["AlgoConfig", "ActorConfig", "PolicyLossConfig", "core_algos", "gsm8k", "verl"]
