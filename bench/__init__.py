"""Benchmark of navi-actor against the in-process design; run with ``scripts/bench`` (see ``__main__``)."""
