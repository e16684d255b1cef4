"""The Lua filter host: operators' scripts run by lupa, sandboxed, bounded and hot-reloaded.

See docs/lua.md for the script API and metaproxy/lua/filter.py for the config.
"""

from metaproxy.lua.filter import LuaFilter

__all__ = ["LuaFilter"]
