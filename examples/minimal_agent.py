"""The smallest agent: it answers with the words of the message, backwards.

Run it from the repository root with ``PYTHONPATH=. scripts/serve --agent examples.minimal_agent:agent``
(the `navi-actor` command does not put the current folder on the import path).
"""

from navi_actor.events import TextDelta


async def agent(turn):
    for word in reversed(turn.display_content.split()):
        if turn.stop_event.is_set():  # the user pressed Stop: return, the partial text is kept
            return
        yield TextDelta(word + " ")
