"""Command-line tools for protocol authors and operators (``metaproxy decode``, ``metaproxy new-codec``)."""
