"""Process lifecycle for navi-actor: spawning, reaping, restart policy, signals.

This package knows nothing of WebSockets or of agents' events: it starts the
processes it is given (a front, actors), reaps them, explains their deaths and
passes file descriptors between them.
"""
