"""navi-actor: streaming AI-agent sessions, each active session's agent in its own process."""

__version__ = "0.1.0"
