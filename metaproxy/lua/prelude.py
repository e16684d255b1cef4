"""The Lua side of the host: the sandbox, the handle and the bounded dispatcher.

It runs once in every fresh runtime, with the real globals (``debug``, ``jit``)
still present, and returns a ``host`` table of functions that Python calls.
Everything a script may touch is built here from copies, so a script can only
reach its own environment and the handle:

* the dangerous globals (``os``, ``io``, ``debug``, ``package``, ``require``,
  ``dofile``, ``loadfile``, ``loadstring``, ``python``, ``collectgarbage``,
  ``getfenv``/``setfenv``, ``coroutine``) are simply not in the script's
  environment; ``load`` only compiles text into that environment;
* the step limit is a count hook on the main thread that never goes away
  (LuaJIT's hook does not fire in compiled traces, so the JIT is switched off
  for the whole runtime); Python resets ``budget`` per call, which costs an
  upvalue store instead of two ``debug.sethook`` calls;
* ``pcall``/``xpcall`` given to scripts re-raise the host's own aborts (step
  limit, memory, ``respond_error``) so a script cannot swallow them.

``py`` is a table of Python callables; they stay upvalues of the handle's
closures and are never reachable from a script.
"""

PRELUDE = r"""
local py, error_kinds, kinds_text, step_limit, hook_every = ...

local debug_sethook, debug_getinfo = debug.sethook, debug.getinfo
local raw_pcall, raw_xpcall, raw_error, raw_load = pcall, xpcall, error, load
local type, tostring, next, select, setmetatable = type, tostring, next, select, setmetatable
local string_rep = string.rep
local unpack = unpack or table.unpack
local huge = math.huge

if jit then jit.off() end
string.dump = nil
-- Lock the string metatable: getmetatable("") would hand out the real string library.
getmetatable("").__metatable = false

local STEP = setmetatable({}, {__tostring = function() return "step limit exceeded" end})
local REPLY = setmetatable({}, {__tostring = function() return "local reply" end})
local MEMORY = "not enough memory"

local budget = huge
local abort_where = nil

local function is_abort(e)
  return e == STEP or e == REPLY or e == MEMORY
end

local function hook()
  budget = budget - hook_every
  if budget < 0 then
    if budget + hook_every >= 0 then  -- the firing that spent the budget: remember where
      local info = debug_getinfo(2, "Sl")
      abort_where = info and (info.short_src .. ":" .. tostring(info.currentline)) or "?"
    end
    raw_error(STEP, 0)
  end
end
debug_sethook(hook, "", hook_every)

-- ---------------------------------------------------------------- the sandbox
local function copy(t)
  local c = {}
  if t then for k, v in next, t do c[k] = v end end
  return c
end

local function rethrow_aborts(ok, ...)
  if not ok then
    local e = ...
    if is_abort(e) then raw_error(e, 0) end
  end
  return ok, ...
end

local function safe_pcall(f, ...)
  return rethrow_aborts(raw_pcall(f, ...))
end

local function safe_xpcall(f, handler, ...)
  local function guarded(e)
    if is_abort(e) then return e end
    return handler(e)
  end
  local args = {n = select("#", ...), ...}
  return rethrow_aborts(raw_xpcall(function() return f(unpack(args, 1, args.n)) end, guarded))
end

local function new_env(script_name)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    select = select, tonumber = tonumber, tostring = tostring, type = type,
    rawequal = rawequal, rawget = rawget, rawset = rawset, rawlen = rawlen,
    setmetatable = setmetatable, getmetatable = getmetatable, unpack = unpack,
    pcall = safe_pcall, xpcall = safe_xpcall, _VERSION = _VERSION,
    string = copy(string), table = copy(table), math = copy(math),
    utf8 = utf8 and copy(utf8) or nil, bit = bit and copy(bit) or nil,
  }
  env._G = env
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    py.log(script_name, 1, table.concat(parts, "\t"))
  end
  env.load = function(chunk, name, mode, chunk_env)
    if type(chunk) ~= "string" then return nil, "load: only source text is accepted" end
    return raw_load(chunk, name or "=(load)", "t", chunk_env or env)
  end
  return env
end

-- ---------------------------------------------------------------- the handle
local function check_key(k, what)
  if type(k) ~= "string" then raw_error(what .. ": key must be a string, got " .. type(k), 3) end
end

local function as_value(v, what)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  raw_error(what .. ": value must be a string, number or boolean, got " .. t, 3)
end

local md_get, md_set, md_keys, md_items = py.md_get, py.md_set, py.md_keys, py.md_items
local mut_get, mut_set, mut_remove = py.mut_get, py.mut_set, py.mut_remove

local metadata = {}
function metadata:get(k) check_key(k, "metadata():get"); return md_get(k) end
function metadata:set(k, v) check_key(k, "metadata():set"); md_set(k, as_value(v, "metadata():set")) end
function metadata:keys() return md_keys() end
function metadata:pairs() return next, md_items(), nil end

local mutation = {}
function mutation:get(k) check_key(k, "mutation():get"); return mut_get(k) end
function mutation:set(k, v) check_key(k, "mutation():set"); mut_set(k, as_value(v, "mutation():set")) end
function mutation:remove(k) check_key(k, "mutation():remove"); mut_remove(k) end

local script_name = "?"
local script_config = nil
local scratch = nil
local reply_kind, reply_message = nil, nil

local handle = {}
function handle:metadata() return metadata end
function handle:mutation() return mutation end
function handle:config() return script_config end
function handle:route_name() return py.route_name() end
function handle:cluster() return py.cluster() end
function handle:scratch()
  if scratch == nil then scratch = {} end
  return scratch
end
function handle:respond_error(kind, message)
  if type(kind) ~= "string" or not error_kinds[kind:lower()] then
    raw_error("respond_error: unknown error kind " .. tostring(kind) .. " (one of: " .. kinds_text .. ")", 2)
  end
  reply_kind = kind:lower()
  reply_message = message ~= nil and tostring(message) or ""
  raw_error(REPLY, 0)
end
local function logger(level)
  return function(self, msg) py.log(script_name, level, tostring(msg)) end
end
handle.log_debug, handle.log_info, handle.log_warn, handle.log_err = logger(0), logger(1), logger(2), logger(3)
handle.log_trace, handle.log_critical = logger(0), logger(3)
-- Envoy spellings, so Envoy scripts port with few edits.
handle.logDebug, handle.logInfo, handle.logWarn, handle.logErr = handle.log_debug, handle.log_info,
  handle.log_warn, handle.log_err
setmetatable(handle, {__newindex = function() raw_error("the handle is read-only", 2) end,
                      __metatable = false})
setmetatable(metadata, {__pairs = function() return next, md_items(), nil end, __metatable = false})
setmetatable(mutation, {__metatable = false})

-- ---------------------------------------------------------------- the host API
local on_request, on_response = nil, nil

local function describe(e)
  if e == STEP then
    return "step limit of " .. tostring(step_limit) .. " exceeded at " .. tostring(abort_where)
  end
  if e == MEMORY then return "memory limit exceeded" end
  if type(e) == "string" then return e end
  local ok, text = raw_pcall(tostring, e)
  return ok and text or "(error value of type " .. type(e) .. ")"
end

-- Status codes returned to Python: nil or 0 ok (0 with a scratch table), 1 local reply,
-- 2 script error, 3 memory error.
local function finish(ok, e)
  -- An exhausted budget fails the call even if the script swallowed the abort
  -- (an error inside an xpcall handler turns it into "error in error handling").
  if budget < 0 then ok, e = false, STEP end
  budget = huge
  local sc = scratch
  scratch = nil
  if ok then
    if sc == nil then return nil end
    return 0, nil, nil, sc
  end
  if e == REPLY then
    local k, m = reply_kind, reply_message
    reply_kind, reply_message = nil, nil
    return 1, k, m, sc
  end
  local text = describe(e)
  abort_where = nil
  if e == MEMORY then return 3, text, nil, sc end
  return 2, text, nil, sc
end

local host = {}

function host.run(phase, sc)
  budget = step_limit
  local f = phase == 1 and on_request or on_response
  if f == nil then budget = huge; return nil end
  scratch = sc
  return finish(raw_pcall(f, handle))
end

-- Compile and run a script's top level in a fresh environment; only on success
-- do its callbacks replace the running ones. Returns has_request, has_response
-- or nil, reason.
function host.compile(source, chunkname, config)
  local env = new_env(chunkname)
  env.config = config
  local chunk, err = raw_load(source, "@" .. chunkname, "t", env)
  if not chunk then return nil, err end
  budget = step_limit
  local ok, e = raw_pcall(chunk)
  if budget < 0 then ok, e = false, STEP end
  budget = huge
  if not ok then
    local text = describe(e)
    abort_where = nil
    return nil, text
  end
  local req = env.on_request or env.envoy_on_request
  local resp = env.on_response or env.envoy_on_response
  if req ~= nil and type(req) ~= "function" then return nil, "on_request is not a function" end
  if resp ~= nil and type(resp) ~= "function" then return nil, "on_response is not a function" end
  on_request, on_response = req, resp
  script_name, script_config = chunkname, config
  return req ~= nil, resp ~= nil
end

-- Forget a call that ended outside the host's pcall (Python saw an exception).
function host.reset()
  budget, scratch, abort_where, reply_kind, reply_message = huge, nil, nil, nil, nil
end

-- Run a snippet in a fresh sandbox environment (tests use it to probe the sandbox).
function host.probe(source)
  local env = new_env("probe")
  env.handle = handle
  local chunk, err = raw_load(source, "=probe", "t", env)
  if not chunk then return nil, err end
  budget = step_limit
  local ok, e = raw_pcall(chunk)
  if budget < 0 then ok, e = false, STEP end
  budget = huge
  if not ok then return finish(false, e) end
  return e
end

return host
"""
