-- luamp -- Python's multiprocessing for Lua: the module table.  The C core
-- (luamp.core) is mechanism; the files beside this one are policy.

local core = require "luamp.core"
local errors = require "luamp.errors"
local process = require "luamp.process"
local pool = require "luamp.pool"
local manager = require "luamp.manager"

local error, getmetatable, ipairs, pairs, pcall, rawset, setmetatable,
  tonumber, type = error, getmetatable, ipairs, pairs, pcall, rawset,
  setmetatable, tonumber, type
local pack, unpack = table.pack, table.unpack
local argerror, checkself, checktimeout, reraise, typename =
  errors.argerror, errors.checkself, errors.checktimeout, errors.reraise,
  errors.typename

local M = {}

M._VERSION = "luamp 0.1.0"

for _, t in ipairs(errors.types) do
  M[t] = t
end
M.Error = errors.Error

M.Process = process.Process
M.current_process = process.current_process
M.parent_process = process.parent_process
M.active_children = process.active_children

M.Queue = core.Queue
M.JoinableQueue = core.JoinableQueue
M.SimpleQueue = core.SimpleQueue

M.Pipe = core.Pipe
M.Listener = core.Listener
M.Client = core.Client

M.Pool = pool.Pool

M.Dict = core.Dict
M.List = core.List
M.Namespace = core.Namespace
M.Manager = manager.Manager

M.Lock = core.Lock
M.RLock = core.RLock
M.Semaphore = core.Semaphore
M.BoundedSemaphore = core.BoundedSemaphore
M.Condition = core.Condition
M.Event = core.Event
M.Barrier = core.Barrier
M.Value = core.Value
M.Array = core.Array

-- mp.RawValue(typecode, [init]), mp.RawArray(typecode, size_or_table):
-- Value and Array without a lock.
function M.RawValue(typecode, init)
  local ok, v = pcall(core.Value, typecode, init, false)
  if not ok then reraise(v, "RawValue") end
  return v
end

function M.RawArray(typecode, size_or_table)
  local ok, v = pcall(core.Array, typecode, size_or_table, false)
  if not ok then reraise(v, "RawArray") end
  return v
end

local function callable(f)
  if type(f) == "function" then return true end
  local m = getmetatable(f)
  return type(m) == "table" and m.__call ~= nil
end

-- with and wait_for call the lock's own methods through pcall, so that
-- what those raise is raised again at the caller.

-- lock:with(fn, ...) -> what fn returns: fn runs holding the lock, which
-- is released whether fn returns or raises, and whenever a Ctrl-C comes
-- (core.with).
local with = core.with
local function with_for(mt)
  return function(self, fn, ...)
    checkself(self, mt, "with")
    if not callable(fn) then
      argerror(1, "with", "function expected, got " .. typename(fn))
    end
    local r = pack(pcall(with, self, fn, ...))
    if not r[1] then reraise(r[2]) end -- from acquire or release
    if not r[2] then error(r[3], 0) end -- from fn
    return unpack(r, 3, r.n)
  end
end

-- cond:wait_for(predicate, [timeout]) -> the predicate's last value:
-- waits until it is true, or the timeout has passed.
local condition = core.metatable("luamp.Condition")
local function wait_for(self, predicate, timeout)
  checkself(self, condition, "wait_for")
  if not callable(predicate) then
    argerror(1, "wait_for", "function expected, got " .. typename(predicate))
  end
  timeout = checktimeout(timeout, 2, "wait_for")
  local result = predicate()
  local endtime = timeout and core.monotonic() + timeout
  while not result do
    local left
    if endtime then
      left = endtime - core.monotonic()
      if left <= 0 then break end
    end
    local ok, e = pcall(self.wait, self, left)
    if not ok then reraise(e) end
    result = predicate()
  end
  return result
end

for _, name in ipairs{"Lock", "RLock", "Semaphore", "BoundedSemaphore",
                      "Condition"} do
  local mt = core.metatable("luamp." .. name)
  mt.__index.with = with_for(mt)
end
condition.__index.wait_for = wait_for

-- pairs(a) on an Array or a List walks it as pairs walks a table: its
-- items from 1 to #a (as long as it was when the walk began), a List's
-- nils left out.
local function walk(n)
  return function(a, i)
    while i < n do
      i = i + 1
      local v = a[i]
      if v ~= nil then return i, v end
    end
  end
end
for _, name in ipairs{"Array", "List"} do
  core.metatable("luamp." .. name).__pairs = function(a)
    return walk(#a), a, 0
  end
end

-- q:join_thread() and q:cancel_join_thread(): a luamp queue has no feeder
-- thread (a put is in the arena when it returns), so there is nothing to
-- wait for or to cancel; these exist for code written for Python.
local function no_feeder(mt, fname)
  return function(self)
    checkself(self, mt, fname)
  end
end
for _, name in ipairs{"Queue", "JoinableQueue"} do
  local mt = core.metatable("luamp." .. name)
  mt.__index.join_thread = no_feeder(mt, "join_thread")
  mt.__index.cancel_join_thread = no_feeder(mt, "cancel_join_thread")
end

-- mp.wait(objects, [timeout]): the ready subset of connections, process
-- sentinels (or Process objects) and queues, in the order given.
function M.wait(objects, timeout)
  if type(objects) ~= "table" then
    argerror(1, "wait", "table expected, got " .. type(objects))
  end
  timeout = checktimeout(timeout, 2, "wait")
  local list = {}
  for i = 1, #objects do
    local o = objects[i]
    if getmetatable(o) == process.metatable then o = process.sentinel(o) end
    list[i] = o
  end
  -- core.wait answers with positions in the list, so that what comes back
  -- is what was given (a Process object, or its sentinel).
  local ok, where = pcall(core.wait, list, timeout)
  if not ok then reraise(where, "wait") end
  local ready = {}
  for i, k in ipairs(where) do ready[i] = objects[k] end
  return ready
end

M.get_all_start_methods = process.get_all_start_methods
M.get_start_method = process.get_start_method
M.set_start_method = process.set_start_method
M.set_executable = process.set_executable
M.get_executable = process.get_executable
M.set_forkserver_preload = process.set_forkserver_preload

-- mp.get_context([method]) -> the whole API with Processes and Pools that
-- start by `method` (nil: the default method); the objects they share are
-- the same as mp's.
local contexts = {}
function M.get_context(method)
  if method == nil then method = process.get_start_method() end
  process.checkmethod("get_context", method, 2)
  local ctx = contexts[method]
  if ctx then return ctx end
  ctx = setmetatable({}, {__index = M, __name = "luamp.Context"})
  function ctx.get_start_method() return method end
  function ctx.set_start_method()
    error("cannot set start method of concrete context", 2)
  end
  function ctx.Process(opts)
    local ok, p = pcall(process.Process, opts)
    if not ok then reraise(p, "Process") end
    rawset(p, "_start_method", method)
    return p
  end
  function ctx.Pool(opts)
    if opts == nil or type(opts) == "number" then opts = {processes = opts} end
    if type(opts) == "table" and opts.context == nil then
      local copy = {}
      for k, v in pairs(opts) do copy[k] = v end
      copy.context = method
      opts = copy
    end
    local ok, p = pcall(pool.Pool, opts)
    if not ok then reraise(p, "Pool") end
    return p
  end
  contexts[method] = ctx
  return ctx
end

M.cpu_count = core.cpu_count
M.sleep = core.sleep
M.monotonic = core.monotonic
M.stats = core.stats

return M
