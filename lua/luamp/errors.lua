-- luamp.errors -- error objects: what a correct program is expected to
-- handle (Empty, TimeoutError...) is raised as a table with `type` and
-- `message`, whose tostring is "luamp.<type>: <message>".

local core = require "luamp.core"

local error, getmetatable, pairs, setmetatable, tostring, type =
  error, getmetatable, pairs, setmetatable, tostring, type
local format = string.format

local M = {}

M.types = {
  "Empty", "Full", "TimeoutError", "EOFError", "BrokenBarrierError",
  "RemoteError", "WorkerLostError", "ProcessError", "AuthenticationError",
  "KeyboardInterrupt", "BufferTooShort", "BrokerError", "WireError",
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

-- Checks the optional timeout t, argument n of fname, and returns it as a
-- number: nil, or a number (a numeric string too, as luaL_checknumber
-- takes), not NaN.
function M.checktimeout(t, n, fname, level)
  if t == nil then return nil end
  local x = type(t) == "string" and tonumber(t) or t
  if type(x) ~= "number" then
    M.argerror(n, fname, "number expected, got " .. M.typename(t),
               (level or 1) + 1)
  end
  if x ~= x then
    M.argerror(n, fname, "timeout must be a number, not NaN",
               (level or 1) + 1)
  end
  return x
end

-- The text of error e without a place in luamp's own code at its start
-- ("luamp/pool/remote.lua:256: "), for a message said to the user.
function M.unplaced(e)
  return (tostring(e):gsub("^luamp/[%w/_]+%.lua:%d+: ", ""))
end

-- An error value as text, as lua.c's message handler gives it: a string
-- or number itself, else its __tostring, else what it is.
function M.text(e)
  local t = type(e)
  if t == "string" or t == "number" then return tostring(e) end
  local m = getmetatable(e)
  if m and m.__tostring then return tostring(e) end
  return format("(error object is a %s value)", t)
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

-- The edit distance of a and b, up to 3 (more is 3): how close a
-- misspelt name is to a known one.
local function distance(a, b)
  if #a > #b then a, b = b, a end
  if #b - #a > 2 then return 3 end
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur, ca = {[0] = i}, a:byte(i)
    for j = 1, #b do
      local cost = ca == b:byte(j) and 0 or 1
      local d = prev[j - 1] + cost
      if prev[j] + 1 < d then d = prev[j] + 1 end
      if cur[j - 1] + 1 < d then d = cur[j - 1] + 1 end
      cur[j] = d
    end
    prev = cur
  end
  return prev[#b] < 3 and prev[#b] or 3
end

-- The known name that `name` is a misspelling of, or nil: one or two
-- edits away, and not the known name with more after it ("names").
local function nearest(name, known)
  local best, bestd = nil, 3
  if type(name) ~= "string" or #name < 4 then return nil end
  for k in pairs(known) do
    local d = distance(name, k)
    if d < bestd and name:sub(1, #k) ~= k then best, bestd = k, d end
  end
  return best
end

-- Checks the keys of the options table opts, argument #n of fname:
-- strict, every key must be in `known` (a set); else only the keys that
-- look like a misspelling of a known one are refused (tables whose other
-- fields are the user's own, as Process{...}).  A key that is no string
-- ({print}, meant as {target = print}) is refused either way.
function M.checkoptions(opts, known, n, fname, strict, level)
  for k in pairs(opts) do
    if type(k) ~= "string" then -- {f}, meant as {target = f}?
      M.argerror(n, fname, "unknown option [" .. tostring(k) .. "] "
                 .. "(options are named)", (level or 1) + 1)
    elseif not known[k] then
      local near = nearest(k, known)
      if strict or near then
        M.argerror(n, fname, "unknown option '" .. tostring(k) .. "'" ..
                   (near and " (did you mean '" .. near .. "'?)" or ""),
                   (level or 1) + 1)
      end
    end
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
