"""Protocol codecs shipped with metaproxy, installed as the package ``metaproxy_codecs``.

Never import this folder as ``codecs`` (that is the standard library module).
"""
