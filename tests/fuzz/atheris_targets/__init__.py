"""atheris (libFuzzer) targets, one per codec: ``make fuzz`` runs each for a bounded time."""
