"""The phases of a search, in running order: prepare -> calibrate -> explore (the Tune run of
placement trials, optionally warm-started) -> confirm -> publish (the frontier, the notes, the
recommendation and which prior was right). `search.driver` calls them in that order."""
