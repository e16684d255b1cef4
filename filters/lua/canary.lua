-- Canary by user tag: a request whose user tag (config.tag, default x-user)
-- is listed in config.users or starts with one of config.prefixes gets the
-- metadata key config.key (default x-canary) set to "true". Routes match on
-- it, and the router runs after every Lua filter:
--   routes:
--     - {name: canary, match: {metadata: [{name: x-canary, exact: "true"}]}, route: {cluster: v2}}
--     - {name: default, route: {cluster: v1}}

local tag = (config and config.tag) or "x-user"
local key = (config and config.key) or "x-canary"
local users, prefixes = {}, {}
for _, user in ipairs((config and config.users) or {}) do users[user] = true end
for _, prefix in ipairs((config and config.prefixes) or {}) do prefixes[#prefixes + 1] = prefix end

local function is_canary(user)
  if users[user] then return true end
  for i = 1, #prefixes do
    local p = prefixes[i]
    if string.sub(user, 1, #p) == p then return true end
  end
  return false
end

function on_request(handle)
  local user = handle:metadata():get(tag)
  if user ~= nil and is_canary(user) then
    handle:metadata():set(key, "true")
  end
end
