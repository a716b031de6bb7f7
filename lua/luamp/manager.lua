-- luamp.manager -- Manager: Python's factory of shared objects.  In luamp
-- every shared object already lives in the arena, reached directly by each
-- process, so a manager needs no server process: it makes the same objects
-- mp.Dict, mp.List, mp.Queue... make, under the names Python code uses.

local core = require "luamp.core"

local error, setmetatable, pairs, type = error, setmetatable, pairs, type

local M = {}

local Manager = {__name = "luamp.Manager"}
Manager.__index = Manager

local function check(self)
  if self._shut then error("the manager is shut down", 3) end
end

-- A factory method calling f, with errors reported at the caller's line.
local function factory(f)
  return function(self, ...)
    check(self)
    local ok, obj = pcall(f, ...)
    if not ok then error(obj, 2) end
    return obj
  end
end

Manager.dict, Manager.list = factory(core.Dict), factory(core.List)
for _, name in ipairs{"Queue", "JoinableQueue", "Lock", "RLock", "Semaphore",
                      "BoundedSemaphore", "Condition", "Event", "Barrier",
                      "Value", "Array"} do
  Manager[name] = factory(core[name])
end

-- m:Namespace([fields]) -> a Namespace, with the given fields set
function Manager:Namespace(fields)
  check(self)
  if fields ~= nil and type(fields) ~= "table" then
    error("bad argument #1 to 'Namespace' (table expected, got " ..
          type(fields) .. ")", 2)
  end
  local ns = core.Namespace()
  if fields then
    for k, v in pairs(fields) do ns[k] = v end
  end
  return ns
end

-- m:shutdown(): no more objects from this manager.  Those it made live on
-- while any process holds them, as every shared object does.
function Manager:shutdown()
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
