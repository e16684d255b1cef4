-- Deny a method: requests for any method listed in config.methods get a
-- permission_denied local reply from the codec and never reach an upstream.
--   {name: lua, script: filters/lua/deny_method.lua, config: {methods: [dropTable]}}

local denied = {}
for _, method in ipairs((config and config.methods) or {}) do
  denied[method] = true
end

function on_request(handle)
  local method = handle:metadata():get("method")
  if method and denied[method] then
    handle:respond_error("permission_denied", "method " .. method .. " is denied")
  end
end
