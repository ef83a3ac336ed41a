"""The web UI (`colonies ui`): a colony's graphs drawn, followed live and replayed.

- :mod:`.server`: the aiohttp application (pages, JSON API, live stream, access guards);
- :mod:`.reader`: every read, signed with the key of the person running it;
- :mod:`.timeline`: a graph's nodes, edges and per-event changes, for the scrubber;
- ``static/``: the page (HTML, CSS, JavaScript) and the vendored layout library, shipped
  in the wheel: the UI works offline.
"""
