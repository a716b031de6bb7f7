-- luamp.pool -- Pool: Python's Pool over a scheduler and a transport.
--
--   pool.lua             the Pool: its options, its methods, waiting
--   pool/scheduler.lua   slots, backlog, batches, taking work back, the
--                        workers' lives; one step at a time
--   pool/jobs.lua        AsyncResult, map's table, imap's lazy input,
--                        the progress line
--   pool/funcs.lua       the task functions, encoded once, sent once
--   pool/messages.lua    what the owner and its workers say
--   pool/worker.lua      a worker's loop
--   pool/local.lua       the local transport: forked workers, arena queues
--
-- Every value crosses once per hop: a task's arguments are encoded once,
-- into a Message (which keeps the shared objects they name alive), and go
-- to the worker as they are; its results come back the same way, and are
-- decoded when the caller asks.  The owner does the pool's work during
-- any of its luamp calls: the pool registers a service that every
-- blocking call runs on wake-up.

local core = require "luamp.core"
local errors = require "luamp.errors"
local funcs = require "luamp.pool.funcs"
local jobs = require "luamp.pool.jobs"
local FAILED = jobs.FAILED
local msgs = require "luamp.pool.messages"
local process = require "luamp.process"
local scheduler = require "luamp.pool.scheduler"
local transport = require "luamp.pool.local"

local error, getmetatable, math_type, next, pairs, pcall, setmetatable,
  tostring, type = error, getmetatable, math.type, next, pairs, pcall,
  setmetatable, tostring, type
local format = string.format
local message, message_slice, monotonic = core.message,
  core.message_slice, core.monotonic
local argerror, checkself, checkoptions = errors.argerror, errors.checkself,
  errors.checkoptions
local RUN, CLOSE, TERMINATE = scheduler.RUN, scheduler.CLOSE,
  scheduler.TERMINATE
local locked = scheduler.locked
local APPLY = msgs.APPLY

local M = {}

local LAZY_AHEAD = 4  -- imap: chunks in flight per worker
local PUMP_EVERY = 32 -- apply_async: collect outcomes every so many tasks,
                      -- or more (see submit_apply)
local EAGER = 8       -- apply_async: tasks a worker may be sent at once

local Pool = {__name = "luamp.Pool", __send = false}
Pool.__index = Pool
local AsyncResult, new_result = jobs.AsyncResult, jobs.new_result

local pools = setmetatable({}, {__mode = "k"}) -- pools this process owns

local function callable(f)
  if type(f) == "function" then return true end
  local m = getmetatable(f)
  return type(m) == "table" and m.__call ~= nil
end

-- The Pools' work, run by every luamp call that waits.  A pool waiting in
-- _wait_until pumps itself when its wait returns: pumping it here would
-- take the outcomes that wait is woken by, and it would sleep on.
-- Returns how soon it must run again whatever wakes the process (a broker
-- pool's keys to renew, its broker to ping), or nil.
local function pump_all()
  local pid, due = core.getpid(), nil
  for pool in pairs(pools) do
    if pool._pid == pid then
      if pool._waiting == 0 then pool._sched:pump() end
      local t = pool._sched.t
      local left = t.timeout and t:timeout()
      if left and (due == nil or left < due) then due = left end
    end
  end
  return due and (due > 0.01 and due or 0.01)
end

-- ----------------------------------------------------------------- mp.Pool

local OPTIONS = {processes = true, initializer = true, initargs = true,
                 maxtasksperchild = true, broker = true, authkey = true,
                 max_deliveries = true, lease = true, broker_timeout = true,
                 requires = true, name = true, context = true}
local BROKER_ONLY = {"authkey", "max_deliveries", "lease", "broker_timeout",
                     "requires", "name"}

local function positive(opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    argerror(1, "Pool", name .. " must be a positive number", 3)
  end
  if v >= 1e9 then -- (seconds: the broker's keys live a few times that)
    argerror(1, "Pool", name .. " must be below 1e9 seconds", 3)
  end
  return v
end

-- The options of a broker pool, checked.
local function broker_options(opts, url)
  local broker = require "luamp.broker"
  local bo = {conn = broker.config(url, 3)}
  bo.keys = broker.keys(broker.authkey(opts.authkey, 3))
  local md = opts.max_deliveries
  if md == nil then md = 3 end
  if math_type(md) ~= "integer" or md < 1 then
    argerror(1, "Pool", "max_deliveries must be a positive integer", 2)
  end
  bo.max_deliveries = md
  bo.lease = positive(opts, "lease", 30)
  bo.broker_timeout = positive(opts, "broker_timeout", 10)
  bo.ttl = bo.lease * 3 > 3 and bo.lease * 3 or 3
  local req = opts.requires or {}
  if type(req) ~= "table" then
    argerror(1, "Pool", "requires must be a table of module names", 2)
  end
  for i, m in ipairs(req) do
    if type(m) ~= "string" then
      argerror(1, "Pool", "requires[" .. i .. "] must be a string", 2)
    end
  end
  bo.requires = req
  if opts.name ~= nil and type(opts.name) ~= "string" then
    argerror(1, "Pool", "name must be a string", 2)
  end
  bo.name = opts.name
  bo.host = broker.hostname()
  return bo
end

-- mp.Pool([n]) or mp.Pool{processes=n, initializer=f, initargs={...},
-- maxtasksperchild=k}
function M.Pool(opts)
  if opts == nil or type(opts) == "number" then opts = {processes = opts} end
  if type(opts) ~= "table" then
    argerror(1, "Pool", "number or table expected, got " .. type(opts))
  end
  checkoptions(opts, OPTIONS, 1, "Pool", true)
  local url = opts.broker
  if url == nil then url = os.getenv("LUAMP_BROKER") end
  if not url then
    for _, name in ipairs(BROKER_ONLY) do
      if opts[name] ~= nil then
        argerror(1, "Pool", name .. " is an option of broker pools: give "
                 .. "broker = URL too")
      end
    end
  end
  local n = opts.processes
  if n == nil and not url then n = core.cpu_count() end
  if n ~= nil and math_type(n) ~= "integer" then
    argerror(1, "Pool", "processes must be an integer, got " ..
             (type(n) == "number" and tostring(n) or type(n)))
  end
  if n ~= nil and n < 1 then
    argerror(1, "Pool", "processes must be at least 1")
  end
  if opts.initializer ~= nil and not callable(opts.initializer) then
    argerror(1, "Pool", "initializer must be callable")
  end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    argerror(1, "Pool", "initargs must be a table")
  end
  local k = opts.maxtasksperchild
  if k ~= nil and (math_type(k) ~= "integer" or k < 1) then
    argerror(1, "Pool", "maxtasksperchild must be a positive integer")
  end
  local method = opts.context
  if type(method) == "table" and type(method.get_start_method) == "function"
  then
    method = method.get_start_method()
  end
  if method ~= nil then process.checkmethod("Pool", method, 2) end
  local cfg = {initializer = opts.initializer, initargs = opts.initargs,
               maxtasksperchild = k, start_method = method}
  local ok, t, scfg = nil, nil, cfg
  if url then
    -- The workers count their tasks themselves; the scheduler sends one
    -- task a batch, so that no batch outlasts a process.
    scfg = {initializer = cfg.initializer, initargs = cfg.initargs,
            batch = k and 1}
    ok, t = pcall(require("luamp.pool.remote").new, cfg, n,
                  broker_options(opts, url))
  else
    ok, t = pcall(transport.new, cfg, n)
  end
  if not ok then error(t, 2) end
  n = n or t.n -- a broker pool's default: from the workers alive
  local self = setmetatable({_n = n, _pid = core.getpid(),
                             _pump_every = PUMP_EVERY, _pump_in = PUMP_EVERY,
                             _waiting = 0}, Pool)
  self._sched = scheduler.new(t, funcs.new(), scfg, n)
  local started, e = pcall(self._sched.start_all, self._sched)
  if not started then
    self._sched:stop(errors.new("ProcessError", "the pool could not start"))
    t:close()
    error(e, 2)
  end
  pools[self] = true
  core.set_service(pump_all)
  return self
end

-- ------------------------------------------------------------ waiting

-- Collects outcomes, notices dead workers, sends more work, runs the
-- callbacks.  Never blocks (a callback may).
function Pool:_pump()
  if self._pid == core.getpid() then self._sched:pump() end
end

-- The pool's work after a submission, whose callbacks may raise.  The task
-- is in by then, and its handle must reach the caller: a callback's error
-- here is held, and raised by the pool's next call (raise_held), before
-- that call does anything.  A Ctrl-C comes again, in the caller's code
-- once the handle is there (the runtime raises none in the pool's).
local function pump_submitted(sched)
  local ok, e = pcall(sched.pump, sched)
  if not ok then
    if core.is_interrupt(e) then
      core.interrupt_later()
    elseif sched.held_error == nil then
      sched.held_error = {e}
    end
  end
end

local function raise_held(sched)
  local held = sched.held_error
  if held then
    sched.held_error = nil
    error(held[1], 0) -- as the callback raised it
  end
end

-- Pumps until done() or the timeout; true if done.  Ctrl-C terminates
-- the pool (its workers are gone at once) and raises.  What the wait
-- itself raises is raised at `level` (1: the caller of the function that
-- calls _wait_until).
function Pool:_wait_until(done, timeout, level)
  if self._pid ~= core.getpid() then
    error("the pool belongs to another process", level + 2)
  end
  local sched = self._sched
  raise_held(sched)
  if not pools[self] then -- joined or terminated: all has come there is
    if done() then return true end
    error("the pool has ended: what it was waiting for will not come",
          level + 2)
  end
  local deadline = timeout and monotonic() + timeout
  while true do
    sched:pump()
    if done() then return true end
    local left
    if deadline then
      left = deadline - monotonic()
      if left <= 0 then return false end
    end
    local t = sched.t
    local cap = t.timeout and t:timeout() -- the transport's own work
    if cap and (not left or cap < left) then left = cap end
    local list = t:waitables({})
    self._waiting = self._waiting + 1
    local ok, err = pcall(core.wait, list, left)
    self._waiting = self._waiting - 1
    if not ok then
      if core.is_interrupt(err) then self:terminate() end
      error(err, level + 2)
    end
  end
end

-- ------------------------------------------------------------------- tasks

local function checkrunning(self)
  local sched = self._sched
  if self._pid ~= core.getpid() then
    error("the pool belongs to another process", 4)
  end
  if sched.init_error then error(sched.init_error, 0) end
  if sched.state ~= RUN then error("Pool not running", 4) end
end

-- The id of task function f, raising the encoder's error at the caller of
-- the method (level 4 from here).
local function fid_of(self, f)
  local funcs = self._sched.funcs
  local ok, fid = pcall(funcs.id, funcs, f)
  if not ok then error(fid, 4) end
  local t = self._sched.t
  if t.check then
    local sent, e = pcall(t.check, t, funcs.msgs[fid], f, "func")
    if not sent then error(e, 4) end
  end
  return fid
end

local EMPTY_ARGS = {n = 0}

-- While few tasks are out, each goes to a worker at once, so that they
-- run even if this process then computes for a long time without a luamp
-- call; when many pile up they wait for the next pump, which sends them
-- several to a batch.  Now and then take outcomes in: they free workers
-- for more.
local function submit_apply(self, f, args, callback, error_callback, fname)
  local sched = self._sched
  raise_held(sched)
  -- The common case, a function the pool knows: one call to the board
  -- encodes the arguments and makes the AsyncResult and the task.
  local res = sched:apply(AsyncResult, self, f, args, callback,
                          error_callback, EAGER * self._n, EAGER, fname, 3)
  if not res then
    -- The general way, which says what is wrong if anything is.
    if sched.state ~= RUN or self._pid ~= core.getpid() then
      checkrunning(self)
    end
    local funcs, t = sched.funcs, sched.t
    local fid = funcs.cache[f] -- (only functions are there)
    if not fid and type(f) ~= "function" and not callable(f) then
      argerror(1, fname, "function expected, got " .. type(f), 2)
    end
    if args ~= nil and type(args) ~= "table" then
      argerror(2, fname, "table expected, got " .. type(args), 2)
    end
    local ok, am = pcall(message, args or EMPTY_ARGS, "args")
    if not ok then error(am, 3) end
    if t.check then
      local sent, e = pcall(t.check, t, am, args or EMPTY_ARGS, "args")
      if not sent then
        am:close()
        error(e, 3)
      end
    end
    if not fid then fid = fid_of(self, f) end
    res = new_result(self, false, callback, error_callback)
    if not sched:submit(res, fid, am, APPLY, EAGER * self._n, EAGER) then
      am:close()
      error("the pool is busy: it cannot take a task from inside its own "
            .. "step (a finalizer?)", 3)
    end
  end
  local left = self._pump_in - 1
  if left > 0 then
    self._pump_in = left
    -- (a wait in another luamp call pumps it, if nothing sooner does: a
    -- broker pool's tasks wake no worker until they are sent)
    if sched.t.timeout then core.service_soon() end
  else
    pump_submitted(sched)
    -- A pump that finds every worker done with all it had finds them
    -- asleep, waiting for this process, and each batch it sends wakes one
    -- up: dear, on a small batch.  So the next pump waits for twice as
    -- many tasks (up to what one pump can send), and batches grow until
    -- the workers are still busy when it comes; then it comes as often
    -- as at first.
    local every = PUMP_EVERY
    if sched.starved then
      every = self._pump_every * 2
      if every > sched:room() then every = sched:room() end
    end
    self._pump_every, self._pump_in = every, every
  end
  return res
end

-- pool:apply(f, [args]) -> all the results of f(table.unpack(args))
function Pool:apply(f, args)
  checkself(self, Pool, "apply")
  return submit_apply(self, f, args, nil, nil, "apply"):get()
end

-- pool:apply_async(f, [args], [callback], [error_callback]) -> AsyncResult
function Pool:apply_async(f, args, callback, error_callback)
  if getmetatable(self) ~= Pool then checkself(self, Pool, "apply_async") end
  if callback ~= nil and not callable(callback) then
    argerror(3, "apply_async", "callback must be callable")
  end
  if error_callback ~= nil and not callable(error_callback) then
    argerror(4, "apply_async", "error_callback must be callable")
  end
  local r = submit_apply(self, f, args, callback, error_callback,
                         "apply_async")
  return r -- not a tail call: error levels count this frame
end

local MAP_OPTIONS = {chunksize = true, progress = true}

-- Options of map-like calls: a chunksize, or {chunksize=, progress=}.
local function options(opt, fname, argn)
  local chunksize, progress
  if type(opt) == "table" then
    checkoptions(opt, MAP_OPTIONS, argn, fname, true, 3)
    chunksize, progress = opt.chunksize, opt.progress
  elseif opt ~= nil then
    chunksize = opt
  end
  if chunksize ~= nil and (math_type(chunksize) ~= "integer"
                           or chunksize < 1) then
    argerror(argn, fname, "chunksize must be a positive integer", 3)
  end
  -- No chunk has more items than a table can hold: a larger chunksize is
  -- the same, and sums of it would wrap.
  if chunksize and chunksize > 1 << 31 then chunksize = 1 << 31 end
  if progress == nil then progress = os.getenv("LUAMP_PROGRESS") == "1" end
  return chunksize, progress
end

-- An iterable: an array (its items as `it[i]` reads them, metamethods
-- and all; `n` or `#it` of them), or a function called until it returns
-- nil.
local function iterator(it, fname)
  if type(it) == "table" then
    local i, n = 0, it.n or #it
    if math_type(n) ~= "integer" or n < 0 then
      argerror(2, fname, "its n must be a count (an integer from 0), not "
               .. tostring(n), 3)
    end
    return function()
      i = i + 1
      if i <= n then return true, it[i] end
    end, n
  elseif type(it) == "function" then
    return function()
      local v = it()
      if v ~= nil then return true, v end
    end, nil
  end
  argerror(2, fname, "table or function expected, got " .. type(it), 3)
end

-- Adds the chunks of a map to the scheduler, each sent as soon as it is
-- encoded, so that the workers start while the rest is being encoded;
-- between two chunks the outcomes that came are taken in, so that a
-- worker that is done gets the next chunk at once.  The table of results
-- (the map's largest allocation: the first touch of its pages) is made
-- once the first chunk is on its way.  A Ctrl-C, which the step holds, is
-- raised between two chunks (unless an outer step holds it too): the
-- chunks not sent are taken back, and the map is abandoned.
local function add_chunks(sched, job, fid, items, n, chunksize, kind)
  for at = 1, n, chunksize do
    if at > 1 and core.interrupt_due(1) then
      sched:cancel(job)
      jobs.abandon(job.res)
      core.interrupt_point(1)
    end
    local last = at + chunksize - 1
    if last > n then last = n end
    local ok, am = pcall(message_slice, items, at, last, "iterable")
    if ok and sched.t.check and am:objects() > 0 then
      for i = at, last do -- which item names a shared object
        local sent, e = pcall(sched.t.check, sched.t, am, items[i],
                              "iterable[" .. i .. "]")
        if not sent then
          am:close()
          ok, am = false, e
          break
        end
      end
    end
    if not ok then
      sched:cancel(job)
      jobs.abandon(job.res) -- the caller gets the error, not the result
      error(am, 0)
    end
    sched:add(job, fid, am, kind, at, last - at + 1)
    sched:dispatch_now()
    if not job.out then job.out = jobs.new_out(n) end
    if not sched:collect_now() then return end -- the pool failed
  end
end

local function submit_map(self, f, iterable, opt, callback, error_callback,
                          fname, star)
  checkrunning(self)
  raise_held(self._sched)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  local chunksize, progress = options(opt, fname, 3)
  local next_item, n = iterator(iterable, fname)
  local items = iterable
  -- The items in a table that is read as it is (the codec reads tables
  -- raw): an iterator's, or those of a table with metamethods (a proxy).
  if not n or getmetatable(iterable) ~= nil then
    items, n = {}, 0
    while true do
      local more, v = next_item()
      if not more then break end
      n = n + 1
      items[n] = v
    end
    checkrunning(self) -- (the input's code may have ended the pool)
  end
  if star then
    for i = 1, n do
      if type(items[i]) ~= "table" then
        argerror(2, fname, "item " .. i .. " is not a table of arguments", 2)
      end
    end
  end
  if not chunksize then
    local extra
    chunksize, extra = n // (self._n * 4), n % (self._n * 4)
    if extra > 0 then chunksize = chunksize + 1 end
    if chunksize < 1 then chunksize = 1 end
  end
  local fid = fid_of(self, f)
  local sched = self._sched
  local res = jobs.new_result(self, true, callback, error_callback)
  local job = jobs.new_map(res, (n + chunksize - 1) // chunksize,
                           jobs.new_progress(progress, n))
  if n == 0 then
    local out = jobs.new_out(0)
    sched:use(fid) -- no task: the function goes straight to idle
    sched:unuse(fid)
    jobs.settle(sched, res, true, out)
    pump_submitted(sched) -- its callback
    return res
  end
  -- The map uses its function until its last chunk is added: the first
  -- chunks may be done (and let go of it) before the last is sent.
  sched:use(fid)
  local ok, e = pcall(locked, sched, add_chunks, job, fid, items, n,
                      chunksize, star and msgs.STARCHUNK or msgs.CHUNK)
  sched:unuse(fid)
  if not ok then error(e, 3) end
  if not e then
    error("the pool is busy: it cannot take a task from inside its own "
          .. "step (a finalizer?)", 3)
  end
  -- Outcomes taken in while the chunks were sent may have settled jobs
  -- (this one too): their callbacks run now, before anyone sees them
  -- ready.
  pump_submitted(sched)
  return res
end

-- pool:map(f, iterable, [chunksize | {chunksize=, progress=}]) -> results
-- in order, a table with n set
function Pool:map(f, iterable, opt)
  checkself(self, Pool, "map")
  return submit_map(self, f, iterable, opt, nil, nil, "map"):get()
end

-- Checks the callbacks of a map-like call fname, arguments #4 and #5.
local function checkcallbacks(callback, error_callback, fname)
  if callback ~= nil and not callable(callback) then
    argerror(4, fname, "callback must be callable", 2)
  end
  if error_callback ~= nil and not callable(error_callback) then
    argerror(5, fname, "error_callback must be callable", 2)
  end
end

function Pool:map_async(f, iterable, opt, callback, error_callback)
  checkself(self, Pool, "map_async")
  checkcallbacks(callback, error_callback, "map_async")
  local r = submit_map(self, f, iterable, opt, callback, error_callback,
                      "map_async")
  return r -- not a tail call: error levels count this frame
end

function Pool:starmap(f, iterable, opt)
  checkself(self, Pool, "starmap")
  return submit_map(self, f, iterable, opt, nil, nil, "starmap", true):get()
end

function Pool:starmap_async(f, iterable, opt, callback, error_callback)
  checkself(self, Pool, "starmap_async")
  checkcallbacks(callback, error_callback, "starmap_async")
  local r = submit_map(self, f, iterable, opt, callback, error_callback,
                      "starmap_async", true)
  return r -- not a tail call: error levels count this frame
end

local function submit_lazy(self, f, iterable, opt, fname, ordered)
  checkrunning(self)
  raise_held(self._sched)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  local chunksize, progress = options(opt, fname, 3)
  local next_item, n = iterator(iterable, fname)
  local fid = fid_of(self, f)
  local sched = self._sched
  -- (A table with no metamethods is sliced as it is, as map reads it.)
  local source = n and getmetatable(iterable) == nil and iterable or nil
  local job = jobs.new_lazy(fid, next_item, chunksize or 1, ordered,
                            self._n * LAZY_AHEAD,
                            jobs.new_progress(progress, n), source, n)
  if not locked(sched, sched.add_lazy, job) then
    error("the pool is busy: it cannot take a task from inside its own "
          .. "step (a finalizer?)", 3)
  end
  pump_submitted(sched)
  local pool = self
  -- The iterator for a generic for, each result in turn and nil at the
  -- end, and its closing value, which ends the progress line however the
  -- loop ends (a break, an error).
  local closing = job.progress and setmetatable({}, {__close = function()
    job.progress:finish()
  end})
  -- The chunk being yielded (see Lazy in jobs.lua): its outcome, how many
  -- of its results have been taken, and how many it has.
  local key, cur, taken, size = nil, nil, 0, 0
  local function ready()
    if job.fatal then return true end
    if ordered then
      key = job.yielded + 1
      if job.results[key] ~= nil then return true end
    elseif job.queue[job.qhead] then
      key = job.queue[job.qhead]
      return true
    end
    if job.input_error and job.yielded + 1 >= job.input_error.at
       and job.inflight == 0 then
      return true
    end
    return job.exhausted and job.inflight == 0
      and job.yielded >= job.pos
  end
  -- A step of the scheduler (the input pulled, tasks handed out,
  -- callbacks run) comes with each chunk, not with each result.
  return function()
    if taken == size then
      key, cur = nil, nil
      pool:_wait_until(ready, nil, 1)
      if job.fatal then error(job.fatal, 2) end
      local r = key and job.results[key]
      if r == nil then
        if job.input_error and job.yielded + 1 >= job.input_error.at then
          local e = job.input_error
          job.input_error = nil
          error(e.err, e.level)
        end
        if job.progress then job.progress:finish() end
        return nil
      end
      job.results[key] = nil
      if not ordered then
        job.queue[job.qhead], job.qhead = nil, job.qhead + 1
      end
      cur, taken, size = r, 0, r.n
    end
    taken = taken + 1
    job.yielded = job.yielded + 1
    local failed = cur[FAILED]
    if failed ~= nil then error(failed, 2) end
    return cur[taken]
  end, nil, nil, closing
end

-- for r in pool:imap(f, iterable, [chunksize | options]) do ... end
function Pool:imap(f, iterable, opt)
  checkself(self, Pool, "imap")
  local it, _, _, closing = submit_lazy(self, f, iterable, opt, "imap",
                                        true)
  return it, nil, nil, closing -- (no tail call: error levels count this)
end

function Pool:imap_unordered(f, iterable, opt)
  checkself(self, Pool, "imap_unordered")
  local it, _, _, closing = submit_lazy(self, f, iterable, opt,
                                        "imap_unordered", false)
  return it, nil, nil, closing -- (no tail call: error levels count this)
end

-- ----------------------------------------------------------- ending a pool

-- This process no longer works for the pool.
local function detach(self)
  if not pools[self] then return end
  pools[self] = nil
  self._sched.t:close()
  self._sched.funcs:close()
end

-- pool:close(): no more tasks; the workers leave when the work is done.
function Pool:close()
  checkself(self, Pool, "close")
  if self._pid ~= core.getpid() then
    error("the pool belongs to another process", 2)
  end
  if self._sched.state == RUN then
    self._sched:close()
    self:_pump()
  end
end

-- Ends the pool now: the workers are stopped, unfinished tasks fail, and
-- what that settles is run.  Inside a step of its own (a finalizer that
-- terminates the pool), the scheduler finishes the step first.
local function terminate(self)
  local sched = self._sched
  if sched.state == TERMINATE and not next(sched.workers) then return end
  if not sched:stop(errors.new("ProcessError", "the pool was terminated"))
  then
    sched:defer(terminate, self)
    return
  end
  detach(self)
  sched:pump() -- the error callbacks
end

-- pool:terminate(): the workers are stopped now; unfinished tasks fail.
function Pool:terminate()
  checkself(self, Pool, "terminate")
  if self._pid ~= core.getpid() then
    error("the pool belongs to another process", 2)
  end
  terminate(self)
end

-- pool:join(): waits for the workers to leave (after close or terminate).
function Pool:join()
  checkself(self, Pool, "join")
  local sched = self._sched
  if self._pid ~= core.getpid() then
    error("the pool belongs to another process", 2)
  end
  if sched.state == RUN then error("Pool is still running", 2) end
  if self._joined then return end -- again: nothing left to wait for
  -- Once every worker has ended, one more step: it takes the results the
  -- last ones sent as they ended, or starts workers for tasks still to
  -- run (a worker that reached maxtasksperchild just then).
  self:_wait_until(function()
    if not sched:all_left() then return false end
    sched:pump()
    return sched:all_left()
  end, nil, 1)
  locked(sched, sched.release_workers)
  detach(self)
  self._joined = true
end

-- (In a fork, whose copy of the pool is not its own: nothing.)
Pool.__close = function(self)
  if self._pid == core.getpid() then terminate(self) end
end

-- A pool dropped without close or terminate ends with its handle.  Its
-- workers are killed; waiting for them would run luamp work inside a
-- finalizer, which may run anywhere.
Pool.__gc = function(self)
  if self._pid == core.getpid() and self._sched.state ~= TERMINATE then
    local sched = self._sched
    sched.state = TERMINATE
    for wid = 1, self._n do
      if sched.workers[wid] then pcall(sched.t.kill, sched.t, wid) end
    end
  end
end

function Pool.__tostring(self)
  return format("luamp.Pool (%d processes, %s)", self._n, self._sched.state)
end

M.class = Pool
M.AsyncResult = AsyncResult
return M
