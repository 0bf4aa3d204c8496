"""The seven verl reference commands of the guide (a verbatim copy in tests/data/reference/: a fresh clone has no
../shared), parsed the way bash would run them."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

COMMANDS_MD = Path(__file__).parent / "data" / "reference" / "verl-deepspeed-worker-integration.md"


@dataclass(frozen=True)
class ReferenceCommand:
    name: str  # trainer.experiment_name
    env: dict[str, str]  # the NAME=value prefix of the command line
    args: list[str]  # the overrides after `python3 -m verl.trainer.main_ppo`, ${BASE_ARGS} expanded


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def _words(block: str, variables: dict[str, str]) -> list[str]:
    """Join continued lines, substitute ${NAME}, split like the shell (unquoted ${BASE_ARGS} splits into words)."""
    text = block.replace("\\\n", " ")
    while (expanded := re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)) != text:
        text = expanded
    return shlex.split(text)


def reference_commands(path: Path = COMMANDS_MD) -> list[ReferenceCommand]:
    """Every `verl.trainer.main_ppo` command of the guide, in document order."""
    variables: dict[str, str] = {}
    commands = []
    for block in _bash_blocks(path.read_text()):
        if "verl.trainer.main_ppo" not in block:
            for word in _words(block, variables):
                if "=" in word:
                    key, value = word.split("=", 1)
                    variables[key] = value
            continue
        words = _words(block, variables)
        launcher = words.index("python3")
        env = dict(w.split("=", 1) for w in words[:launcher])
        args = words[words.index("verl.trainer.main_ppo") + 1 :]
        name = next(a.split("=", 1)[1] for a in args if a.startswith("trainer.experiment_name="))
        commands.append(ReferenceCommand(name, env, args))
    return commands


def localised(args: list[str], model: str, train_file: str, val_file: str) -> list[str]:
    """The same command with only the model path and the data files changed (what a user edits)."""
    replace = {
        "actor_rollout_ref.model.path": model,
        "critic.model.path": model,
        "data.train_files": train_file,
        "data.val_files": val_file,
    }
    out = []
    for arg in args:
        key = arg.split("=", 1)[0]
        out.append(f"{key}={replace[key]}" if key in replace else arg)
    return out
