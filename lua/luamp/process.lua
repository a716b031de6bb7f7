-- luamp.process -- Process objects, as in Python's multiprocessing: the
-- policy over the fork/wait/signal mechanism of luamp.core.

local core = require "luamp.core"
local errors = require "luamp.errors"

local error, getmetatable, ipairs, next, pairs, pcall, rawget, rawset,
  setmetatable, tostring, type, xpcall = error, getmetatable, ipairs, next,
  pairs, pcall, rawget, rawset, setmetatable, tostring, type, xpcall
local os, package = os, package
local concat, unpack = table.concat, table.unpack
local format = string.format
local traceback = debug.traceback
local stderr = io.stderr
local argerror, checkself, checkoptions, checktimeout = errors.argerror,
  errors.checkself, errors.checkoptions, errors.checktimeout

local M = {}

local Process = {}   -- methods
local mt = {__name = "luamp.Process"}
-- Registered by its name, so that a Process object sent to another process
-- (a spawned child's own) has its metatable there.
debug.getregistry()[mt.__name] = mt
local getters = {}   -- computed fields: exitcode, pid, sentinel...

local current        -- this process's Process object
local parent         -- its parent, or nil in the main process
local parent_of      -- in a child: what parent is made of, when first asked
local ParentProcess  -- parent's metatable
local children = {}  -- started here and not yet seen to end, in order
local counter = 0    -- processes made here, for their names

local function callable(f)
  if type(f) == "function" then return true end
  local m = getmetatable(f)
  return m ~= nil and type(m) == "table" and m.__call ~= nil
end

-- These raise at the caller of the method that calls them, or as `level`
-- says (see luamp.errors).

local function checkclosed(self, level)
  if rawget(self, "_closed") then
    error("process object is closed", (level or 1) + 2)
  end
end

local function forget(p)
  for i, c in ipairs(children) do
    if c == p then
      table.remove(children, i)
      return
    end
  end
end

-- Drops the children that have ended from `children`.
local function cleanup()
  local i = 1
  while i <= #children do
    local p = children[i]
    local code = p._child:exitcode()
    if code ~= nil then
      p._exitcode = code
      table.remove(children, i)
    else
      i = i + 1
    end
  end
end

function mt.__index(self, k)
  local get = getters[k]
  if get then return get(self) end
  return Process[k]
end

-- The computed fields are read-only; daemon can be set until the process
-- starts, name (a string) at any time; any other field is the object's.
function mt.__newindex(self, k, v)
  if k == "daemon" then
    if rawget(self, "_child") or rawget(self, "_pid") then
      error("cannot set daemon of a process that has started", 2)
    end
    rawset(self, "_daemon", v and true or false)
  elseif k == "name" then
    if type(v) ~= "string" then
      error("name must be a string, got " .. type(v), 2)
    end
    rawset(self, "_name", v)
  elseif getters[k] then
    error("cannot set the read-only field '" .. tostring(k) ..
          "' of a Process", 2)
  else
    rawset(self, k, v)
  end
end

function mt.__tostring(self)
  local info = {"<Process name=" .. format("%q", tostring(self.name))}
  local pid, code = rawget(self, "_pid"), nil
  local status
  if self == current then
    status = "started"
  elseif rawget(self, "_closed") then
    status = "closed"
  elseif not rawget(self, "_child") then
    status = "initial"
  else
    code = self.exitcode
    status = code ~= nil and "stopped" or "started"
  end
  if pid then info[#info + 1] = "pid=" .. pid end
  if self._parent_pid then info[#info + 1] = "parent=" .. self._parent_pid end
  info[#info + 1] = status
  if code ~= nil then info[#info + 1] = "exitcode=" .. code end
  if self.daemon then info[#info + 1] = "daemon" end
  return concat(info, " ") .. ">"
end

-- `local p <close> = mp.Process{...}`: at the end of the scope the child is
-- joined (if it was started) and the object closed.
function mt.__close(self)
  if rawget(self, "_closed") then return end
  local child = rawget(self, "_child")
  if child and child:ours() then self:join() end
  self:close()
end

-- (__index calls getters in a tail call: their caller is the user's.)
function getters.exitcode(self)
  checkclosed(self)
  local code = rawget(self, "_exitcode")
  if code ~= nil then return code end
  local child = rawget(self, "_child")
  if not child or not child:ours() then return nil end
  code = child:exitcode()
  if code ~= nil then
    self._exitcode = code
    forget(self)
  end
  return code
end

-- A name not given is made when asked, from the identity: a string made
-- at each start is a slot of the string table written, a page fault.
function getters.name(self)
  return rawget(self, "_name") or
    "Process-" .. concat(rawget(self, "_identity"), ":")
end

function getters.daemon(self)
  return rawget(self, "_daemon")
end

function getters.pid(self)
  checkclosed(self)
  return rawget(self, "_pid")
end
getters.ident = getters.pid

-- The sentinel of process p; if it has none, raises at `level` (1: the
-- caller of the function that calls sentinel).
local function sentinel(p, level)
  level = (level or 1) + 1
  checkclosed(p, level)
  local child = rawget(p, "_child")
  if not child then error("process not started", level + 1) end
  return child
end
M.sentinel = sentinel

function getters.sentinel(self)
  local child = sentinel(self)
  return child
end

-- The default run: target(table.unpack(args)).
local function run(self)
  local target = self.target
  if target == nil then return end
  local args = self.args
  if args == nil then return target() end
  return target(unpack(args, 1, args.n or #args))
end

function Process:run()
  checkself(self, mt, "run")
  return run(self)
end

local function report(e)
  if core.is_interrupt(e) then return e end
  e = errors.text(e) -- as lua.c's message handler
  -- The frames below the child's own code (xpcall, fork, start and the
  -- parent's caller) are not its story: cut them.
  local tb = traceback(e, 2)
  local cut = tb:find("\n%s*%(%.%.%.tail calls%.%.%.%)\n%s*%[C%]: in function 'xpcall'")
    or tb:find("\n%s*%[C%]: in function 'xpcall'")
  return cut and tb:sub(1, cut - 1) or tb
end

-- The first Lua code a new child runs: it becomes the current process,
-- with no children of its own yet, and runs `run`.  The value returned is
-- the exit status.  Every page it writes is a page fault, a copy of its
-- parent's: it makes no table (its parent's object is made when asked
-- for), empties the list of children it inherits in place, which is most
-- often empty already, and calls no metamethod.
local function bootstrap(self)
  parent, parent_of = nil, current
  current = self
  for i = #children, 1, -1 do children[i] = nil end
  counter = 0
  rawset(self, "_pid", core.getpid())
  -- (not Process.run, whose check of self is the first run of some code
  -- pages in the child)
  local ok, err = xpcall(rawget(self, "run") or run, report, self)
  if not ok then
    if core.is_interrupt(err) then error(err, 0) end -- dies of the SIGINT
    stderr:write("Process ", tostring(self.name), ":\n", err, "\n")
    stderr:flush()
    return 1
  end
  return 0
end

-- ------------------------------------------------------------ start methods

-- How a Process starts, as Python names it: "fork" (the default);
-- "spawn": a fresh run of an executable (see luamp_child_main) that maps
-- the family's arena and receives the Process object as a message, so
-- that nothing of the parent's state comes along but what the object
-- names; or "forkserver": the same message to a server started once as
-- spawn starts a child, which forks the child from its own clean state.
-- Set once per program, or per object through a context.
local ALL = {"fork", "spawn", "forkserver"}
local METHODS = {}
for _, m in ipairs(ALL) do METHODS[m] = true end
local start_method   -- nil until set or first used
local executable     -- set_executable's, or nil for core.executable()

function M.get_all_start_methods() return {unpack(ALL)} end

local function checkmethod(fname, method, level)
  if type(method) ~= "string" then
    argerror(1, fname, "string expected, got " .. type(method), level)
  end
  if not METHODS[method] then
    error(format("cannot find context for %q", method), level + 1)
  end
end
M.checkmethod = checkmethod

-- get_start_method([allow_none]) -> the method Processes start with; the
-- default is fixed by the first call, unless allow_none.
function M.get_start_method(allow_none)
  if start_method == nil and not allow_none then
    local env = os.getenv("LUAMP_START_METHOD")
    if env ~= nil and env ~= "" and not METHODS[env] then
      error(format("LUAMP_START_METHOD: cannot find context for %q", env), 2)
    end
    start_method = env ~= nil and env ~= "" and env or "fork"
  end
  return start_method
end

-- set_start_method(method, [force]): once, unless forced (nil with force
-- unsets it).
function M.set_start_method(method, force)
  if start_method ~= nil and not force then
    error("context has already been set", 2)
  end
  if method ~= nil or not force then checkmethod("set_start_method", method, 2) end
  start_method = method
end

-- set_executable(path): the program a spawned child runs (the luamp
-- command, or an application that calls luamp_child_main first).
function M.set_executable(path)
  if type(path) ~= "string" then
    argerror(1, "set_executable", "string expected, got " .. type(path))
  end
  executable = path
end

function M.get_executable() return executable or core.executable() end

-- set_forkserver_preload(names): the modules a forkserver loads once when
-- it starts, so that its children have them already (a server already
-- running keeps what it has).  A name that cannot be loaded is reported
-- on the server's standard error and skipped, as Python does.
local preload = {}
function M.set_forkserver_preload(names)
  if type(names) ~= "table" then
    argerror(1, "set_forkserver_preload", "table expected, got "
             .. type(names))
  end
  local list = {}
  for i, name in ipairs(names) do
    if type(name) ~= "string" then
      error(format("bad argument #1 to 'set_forkserver_preload' (module "
                   .. "name expected at [%d], got %s)", i, type(name)), 2)
    end
    list[i] = name
  end
  if #list > 64 then
    error("bad argument #1 to 'set_forkserver_preload' (at most 64 "
          .. "modules)", 2)
  end
  preload = list
end

-- Starts self by `method`, "spawn" or "forkserver": the object itself (its
-- metatable by name), with its parent's name and the module paths, is one
-- message, which holds what it names until the child has its own, and the
-- descriptors of the Connections it names are handed with it.  A target
-- that names the object names the same table in the child.
local function start_from_message(self, method, level)
  local exe = M.get_executable()
  if exe == nil then
    error(format("cannot start a process by %s: there is no luamp "
                 .. "executable to run (name one with mp.set_executable)",
                 method), level + 1)
  end
  rawset(self, "_spawn", {parent = current.name, path = package.path,
                          cpath = package.cpath,
                          method = M.get_start_method(true)})
  local handed = {} -- the Connections it names: their descriptors go too
  local ok, msg = pcall(core.message, self, "process", handed)
  rawset(self, "_spawn", nil)
  if not ok then error(msg, level + 1) end
  local child
  ok, child = pcall(core[method], msg:bytes(), self.daemon and true or false,
                    exe, preload, handed)
  msg:close()
  if not ok then error(child, level + 1) end
  return child
end

-- The body of a spawned child (luamp_child_main calls it with the
-- message): the Process object is rebuilt and run as a fork's is.
function M.spawned(bytes)
  core.require_modules() -- as unpickling imports, from now on
  local self = core.decode(bytes)
  local info = rawget(self, "_spawn")
  rawset(self, "_spawn", nil)
  package.path, package.cpath = info.path, info.cpath
  start_method = info.method -- the parent's, as Python's spawn passes it
  rawset(current, "_name", info.parent)
  return bootstrap(self)
end

-- Forks; the child runs self:run() and exits (0 on return, 1 on error).
function Process:start()
  checkself(self, mt, "start")
  checkclosed(self)
  if rawget(self, "_child") or rawget(self, "_pid") then
    error("cannot start a process twice", 2)
  end
  if self._parent_pid ~= core.getpid() then
    error("can only start a process object created by current process", 2)
  end
  cleanup()
  local ok, child
  local method = rawget(self, "_start_method") or M.get_start_method()
  if method ~= "fork" then
    child = start_from_message(self, method, 2)
  else
    ok, child = pcall(core.fork, bootstrap, rawget(self, "_daemon"), self)
    if not ok then error(child, 2) end
  end
  rawset(self, "_child", child)
  rawset(self, "_pid", child:pid())
  children[#children + 1] = self
end

-- Waits for the child to end; true if it has (false after a timeout).
function Process:join(timeout)
  checkself(self, mt, "join")
  timeout = checktimeout(timeout, 1, "join")
  checkclosed(self)
  if self._parent_pid ~= core.getpid() then
    error("can only join a child process", 2)
  end
  local child = rawget(self, "_child")
  if not child then error("can only join a started process", 2) end
  local ended = child:wait(timeout)
  if ended then
    rawset(self, "_exitcode", child:exitcode())
    forget(self)
  end
  return ended
end

function Process:is_alive()
  checkself(self, mt, "is_alive")
  checkclosed(self)
  if self == current then return true end
  if self._parent_pid ~= core.getpid() then
    error("can only test a child process", 2)
  end
  if not rawget(self, "_child") then return false end
  return self.exitcode == nil
end

local function signal(self, signum, what)
  checkself(self, mt, what, 2)
  checkclosed(self, 2)
  local child = rawget(self, "_child")
  if not child then
    error("cannot " .. what .. " a process that was never started", 3)
  end
  -- (a sibling's copy cannot know whether the pid is still the child's)
  if self._parent_pid ~= core.getpid() then
    error("can only " .. what .. " a child process", 3)
  end
  child:signal(signum)
end

function Process:terminate() signal(self, 15, "terminate") end
function Process:kill() signal(self, 9, "kill") end

-- Releases the process's resources; raises if it is still running.
function Process:close()
  checkself(self, mt, "close")
  if rawget(self, "_closed") then return end
  local child = rawget(self, "_child")
  if child and child:ours() then
    local code = child:exitcode()
    if code == nil then
      error("cannot close a process while it is still running; " ..
            "call join() or terminate() first", 2)
    end
    rawset(self, "_exitcode", code)
    child:close()
  end
  forget(self)
  rawset(self, "_closed", true)
end

-- mp.Process{target=f, args={...}, name="x", daemon=false, ...}: any other
-- field becomes a field of the object (run = function(self) ... end).
local OPTIONS = {target = true, args = true, name = true, daemon = true}

function M.Process(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then
    argerror(1, "Process", "table expected, got " .. type(opts))
  end
  -- Other fields are the object's own (methods, data), but not a
  -- misspelled option.
  checkoptions(opts, OPTIONS, 1, "Process", false)
  if opts.target ~= nil and not callable(opts.target) then
    argerror(1, "Process", "field 'target' is not callable (a " ..
             type(opts.target) .. " value)")
  end
  if opts.args ~= nil and type(opts.args) ~= "table" then
    argerror(1, "Process", "field 'args' must be a table, got " ..
             type(opts.args))
  end
  if opts.name ~= nil and type(opts.name) ~= "string" then
    argerror(1, "Process", "field 'name' must be a string, got " ..
             type(opts.name))
  end
  for k in pairs(opts) do
    if getters[k] and k ~= "daemon" and k ~= "name" then
      argerror(1, "Process", "field '" .. tostring(k) .. "' is read-only")
    end
  end
  counter = counter + 1
  local identity = {unpack(current._identity)}
  identity[#identity + 1] = counter
  local daemon = opts.daemon
  if daemon == nil then
    daemon = current.daemon
  else
    daemon = daemon and true or false
  end
  -- Made at its size, with room (when neither args nor name is given) for
  -- the four fields start, join and close add: a table that grows is made
  -- anew at each power of 2, a block more to write.
  local self = {target = opts.target, args = opts.args, _identity = identity,
                _name = opts.name, _daemon = daemon,
                _parent_pid = core.getpid()}
  for k, v in pairs(opts) do
    if k ~= "daemon" and k ~= "name" then self[k] = v end
  end
  return setmetatable(self, mt)
end

M.class = Process
M.metatable = mt

-- The parent of a child process: a name, a pid and is_alive().
ParentProcess = {__name = "luamp.ParentProcess"}
ParentProcess.__index = function(self, k)
  if k == "pid" or k == "ident" then return rawget(self, "_pid") end
  return ParentProcess[k]
end
function ParentProcess:is_alive()
  checkself(self, ParentProcess, "is_alive")
  return core.alive(self._pid)
end
function ParentProcess:join()
  checkself(self, ParentProcess, "join")
  error("can only join a child process", 2)
end
function ParentProcess.__tostring(self)
  return format("<ParentProcess name=%q pid=%d>", self.name, self._pid)
end
M.ParentProcess = ParentProcess

current = setmetatable({
  _name = "MainProcess", _daemon = false, _identity = {},
  _pid = core.getpid(),
}, mt)

function M.current_process() return current end
function M.parent_process()
  if parent == nil and parent_of ~= nil then
    parent = setmetatable({name = parent_of.name,
                           _pid = rawget(current, "_parent_pid")},
                          ParentProcess)
  end
  return parent
end

-- The children started here that are still running (those that have
-- ended are reaped as a side effect, as in Python).
function M.active_children()
  cleanup()
  local list = {}
  for i, p in ipairs(children) do list[i] = p end
  return list
end

return M
