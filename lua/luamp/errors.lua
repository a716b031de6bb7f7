-- luamp.errors -- error objects: what a correct program is expected to
-- handle (Empty, TimeoutError...) is raised as a table with `type` and
-- `message`, whose tostring is "luamp.<type>: <message>".

local core = require "luamp.core"

local error, getmetatable, setmetatable, type =
  error, getmetatable, setmetatable, type
local format = string.format

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

-- Misuse is an ordinary error string at the user's call, in the words of
-- Lua's own argument errors.  `level` says whose call to blame: 1 (the
-- default) the caller of the function that calls these, 2 that caller's
-- caller, and so on.

-- Raises "bad argument #n to 'fname' (msg)".
function M.argerror(n, fname, msg, level)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg),
        (level or 1) + 2)
end

-- The name of v's type as luaL_typeerror gives it: its metatable's
-- __name if it has one.
function M.typename(v)
  local m = getmetatable(v)
  if type(m) == "table" and type(m.__name) == "string" then
    return m.__name
  end
  return type(v)
end

-- Checks that self is an object whose metatable is mt, as the methods of
-- the C types check theirs; a method called with `.` has none.
function M.checkself(self, mt, fname, level)
  if getmetatable(self) ~= mt then
    M.argerror(1, fname, mt.__name .. " expected, got " ..
               (self == nil and "no value" or M.typename(self)),
               (level or 1) + 1)
  end
end

-- Raises again e, an error of a core function called through pcall (so
-- without a position), at the user's call; an argument error names fname,
-- the function the user called.
function M.reraise(e, fname, level)
  if fname and type(e) == "string" then
    e = e:gsub("^(bad argument #%d+ to )'[^']*'", "%1'" .. fname .. "'", 1)
  end
  error(e, (level or 1) + 2)
end

return M
