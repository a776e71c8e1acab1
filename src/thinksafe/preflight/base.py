"""What every preflight check shares: the result (``Preflight``: problems, notes, the plan), its error,
a choice among known values with a did-you-mean hint, and whether the Hub can be asked."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field

from thinksafe.errors import ConfigError

class PreflightError(ConfigError):
    """One or more preflight problems, one line each (``problems``)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Preflight:
    stages: list[str]
    problems: list[str] = field(default_factory=list)    # fatal, one line each, "key: what"
    notes: list[str] = field(default_factory=list)       # worth knowing, not fatal
    plan: list[tuple[str, str]] = field(default_factory=list)   # (what, value) for `thinksafe check`

    def problem(self, key: str, msg: str) -> None:
        line = f"{key}: {msg}"
        if line not in self.problems:
            self.problems.append(line)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_choice(pf: Preflight, key: str, value, allowed) -> bool:
    if value in allowed:
        return True
    guess = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean '{guess[0]}'?" if guess else ""
    pf.problem(key, f"'{value}' is unknown.{hint} Known: {', '.join(map(str, allowed))}")
    return False


def split_key(msg: str, default_key: str) -> tuple[str, str]:
    """A ConfigError message that starts with its key -> (key, rest); else (default_key, msg)."""
    m = re.match(r"^([a-z_]+(?:\.[a-z_]+)+)[ :]+(.*)$", msg, re.S)
    if m:
        return m.group(1), m.group(2)
    return default_key, msg


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_problem(repo_id: str, repo_type: str = "model", timeout: float = 10.0) -> str | None:
    """One line saying why ``repo_id`` cannot be downloaded now (None: it can)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:         # pragma: no cover - a dependency of transformers
        return None
    page = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    try:
        HfApi().auth_check(repo_id, repo_type=repo_type)
        return None
    except GatedRepoError:
        return (f"{repo_id} is gated: accept its licence at {page}, then `hf auth login` (or set HF_TOKEN); "
                "or point at a local copy")
    except RepositoryNotFoundError:
        return (f"{repo_id} was not found on the Hub (ids are case-sensitive; a private repo needs "
                "`hf auth login`)")
    except Exception as e:     # noqa: BLE001 - network: one line, what to do
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return (f"the Hub cannot be reached for {repo_id} ({type(e).__name__}: {first}); set "
                "HF_HUB_OFFLINE=1 and a local folder, or check the network")
