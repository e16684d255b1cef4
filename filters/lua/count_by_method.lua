-- Count by method: keeps a running count of requests per method (in this
-- script's own state, which survives across requests until the file is
-- reloaded) and returns it to the client in the response header
-- x-method-count. Every config.log_every requests (default 1000) of a method
-- it logs the count.

local counts = {}
local log_every = (config and config.log_every) or 1000

function on_request(handle)
  local method = handle:metadata():get("method") or "(none)"
  local n = (counts[method] or 0) + 1
  counts[method] = n
  handle:scratch().count = n
  if n % log_every == 0 then
    handle:log_info(method .. ": " .. n .. " requests")
  end
end

function on_response(handle)
  local n = handle:scratch().count
  if n ~= nil then
    handle:mutation():set("x-method-count", n)
  end
end
