"""Built-in agents: ``demo`` (every event kind) and ``echo``."""

import os


def tokens_per_second() -> float:
    """The built-in agents' streaming rate, from NAVI_AGENT_TOKENS_PER_SECOND (default 50)."""
    raw = os.environ.get("NAVI_AGENT_TOKENS_PER_SECOND", "50")
    try:
        rate = float(raw)
    except ValueError:
        raise ValueError(f"NAVI_AGENT_TOKENS_PER_SECOND={raw!r} is not a number") from None
    return rate
