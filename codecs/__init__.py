"""Protocol codecs shipped with metaproxy, installed as the package ``metaproxy_codecs``.

Never import this folder as ``codecs`` (that is the standard library module).
"""

# metaproxy first: it decides, before any codec module loads, whether the compiled hot path (which
# holds some of the codecs) is used (metaproxy/compiled.py).
import metaproxy  # noqa: E402,F401
