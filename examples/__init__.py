"""Example agents and tools for navi-actor (see docs/agents.md)."""
