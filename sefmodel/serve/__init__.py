"""``sefmodel serve``: the settings, scorer and app assembly (:mod:`.app`), its middleware (:mod:`.middleware`),
its routes (:mod:`.routes`) and the page (``static/``)."""
