"""An example crossmodald extension, installed like any third-party package.

* :mod:`.loudness`: the ``loudness`` plugin (``crossmodald.plugins``): audio level per window.
* :mod:`.tone`: the ``tone`` source type (``crossmodald.sources``): a sine and a moving bar.
* :mod:`.csvsink`: the ``csv`` sink type (``crossmodald.sinks``): one CSV row per event.

Nothing registers itself on import: the daemon finds each part through the entry points in
``pyproject.toml`` and imports it only when a config names it.
"""
