"""The engines' errors, apart from the engines: the loaders raise them too, and the factory and
the stages catch them, so none of those has to import an engine module (or its imports) to do so."""
from __future__ import annotations

from data.errors import UserError


class EngineError(UserError, RuntimeError):
    """A failure the user must act on (bad model path, unreachable endpoint, budget spent)."""


class BudgetExceeded(EngineError):
    """The call or token budget would be exceeded; finished calls are cached, so a rerun with
    a larger budget resumes where this one stopped."""
