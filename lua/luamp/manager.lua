-- luamp.manager -- Manager: Python's factory of shared objects.  In luamp
-- every shared object already lives in the arena, reached directly by each
-- process, so a manager needs no server process: it makes the same objects
-- mp.Dict, mp.List, mp.Queue... make, under the names Python code uses.

local core = require "luamp.core"
local errors = require "luamp.errors"

local error, ipairs, pcall, setmetatable, type =
  error, ipairs, pcall, setmetatable, type
local argerror, checkself, reraise = errors.argerror, errors.checkself,
  errors.reraise

local M = {}

local Manager = {__name = "luamp.Manager"}
Manager.__index = Manager

-- Checks that self is a manager still running; raises at the caller of
-- the method fname.
local function check(self, fname)
  checkself(self, Manager, fname, 2)
  if self._shut then error("the manager is shut down", 3) end
end

-- The factory method fname calling f, with errors reported at the
-- caller's line.
local function factory(f, fname)
  return function(self, ...)
    check(self, fname)
    local ok, obj = pcall(f, ...)
    if not ok then reraise(obj, fname) end
    return obj
  end
end

Manager.dict, Manager.list = factory(core.Dict, "dict"),
  factory(core.List, "list")
for _, name in ipairs{"Queue", "JoinableQueue", "Lock", "RLock", "Semaphore",
                      "BoundedSemaphore", "Condition", "Event", "Barrier",
                      "Value", "Array"} do
  Manager[name] = factory(core[name], name)
end

-- m:Pool(...) -> a Pool, as mp.Pool(...) makes (its workers are this
-- process's children, not the manager's: luamp's manager has no process)
function Manager:Pool(...)
  check(self, "Pool")
  local ok, pool = pcall(require("luamp.pool").Pool, ...)
  if not ok then reraise(pool, "Pool") end
  return pool
end

-- m:Namespace([fields]) -> a Namespace, with the given fields set
function Manager:Namespace(fields)
  check(self, "Namespace")
  if fields ~= nil and type(fields) ~= "table" then
    argerror(1, "Namespace", "table expected, got " .. type(fields))
  end
  local ok, ns = pcall(core.Namespace, fields)
  if not ok then reraise(ns, "Namespace") end
  return ns
end

-- m:shutdown(): no more objects from this manager.  Those it made live on
-- while any process holds them, as every shared object does.
function Manager:shutdown()
  checkself(self, Manager, "shutdown")
  self._shut = true
end

-- m:start() and the manager as a scoped value, for code written for
-- Python's managers: `local m <close> = mp.Manager()`.
function Manager:start() return self end
Manager.__close = Manager.shutdown

function Manager.__tostring(self)
  return "luamp.Manager (" .. (self._shut and "shut down" or "running") .. ")"
end

-- mp.Manager() -> a manager
function M.Manager()
  return setmetatable({_shut = false}, Manager)
end

M.class = Manager
return M
