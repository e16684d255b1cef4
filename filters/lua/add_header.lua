-- Add a header from another metadata key: copy the value of config.from
-- (default x-user) into the upstream request as config.to (default
-- x-forwarded-user). Requests without the key pass unchanged.
--   {name: lua, script: filters/lua/add_header.lua, config: {from: x-user, to: x-forwarded-user}}

local from = (config and config.from) or "x-user"
local to = (config and config.to) or "x-forwarded-user"

function on_request(handle)
  local value = handle:metadata():get(from)
  if value ~= nil then
    handle:mutation():set(to, value)
  end
end
