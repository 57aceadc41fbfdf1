"""The front process: aiohttp serving WebSocket and HTTP, talking to actors over pipes."""
