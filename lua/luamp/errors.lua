-- luamp.errors -- error objects: what a correct program is expected to
-- handle (Empty, TimeoutError...) is raised as a table with `type` and
-- `message`, whose tostring is "luamp.<type>: <message>".

local core = require "luamp.core"

local error, setmetatable, type = error, setmetatable, type

local M = {}

M.types = {
  "Empty", "Full", "TimeoutError", "EOFError", "BrokenBarrierError",
  "RemoteError", "WorkerLostError", "ProcessError", "AuthenticationError",
  "KeyboardInterrupt",
}

-- The metatable of error objects, made by the C runtime, which raises
-- them too: __tostring gives "luamp.<type>: <message>".
local Error = core.metatable("luamp.Error")

M.Error = Error

-- Makes an error object: new("Empty", "queue is empty", {extra = ...}).
function M.new(etype, message, fields)
  local e = {}
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  e.type, e.message = etype, message
  return setmetatable(e, Error)
end

-- Raises an error object at the caller's caller.
function M.raise(etype, message, fields, level)
  error(M.new(etype, message, fields), (level or 1) + 1)
end

function M.is(e, etype)
  return type(e) == "table" and getmetatable(e) == Error
    and (etype == nil or e.type == etype)
end

return M
