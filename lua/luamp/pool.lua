-- luamp.pool -- Pool and AsyncResult: worker processes fed by their owner.
--
-- The owner keeps every task until its result is in.  It sends each worker
-- its own messages (a few tasks at a time, through the worker's inbox
-- queue) and collects results from one queue shared by all; so when a
-- worker dies the owner knows exactly what it held: the task it was
-- running (announced in a shared array) fails with WorkerLostError, the
-- rest go to other workers, and a new worker takes its place.  Results
-- are collected, and callbacks run, whenever the owner is in a luamp call:
-- the pool registers a service that every blocking call runs on wake-up.

local core = require "luamp.core"
local errors = require "luamp.errors"
local process = require "luamp.process"

local error, getmetatable, ipairs, math_type, next, pairs, pcall,
  rawget, select, setmetatable, tostring, type, xpcall =
  error, getmetatable, ipairs, math.type, next, pairs, pcall, rawget,
  select, setmetatable, tostring, type, xpcall
local pack, unpack, concat = table.pack, table.unpack, table.concat
local format = string.format
local traceback = debug.traceback
local encode, decode, monotonic = core.encode, core.decode, core.monotonic

local M = {}

local DEPTH = 2       -- messages in flight per worker
local MAXBATCH = 64   -- tasks in one message, when many are waiting
local LAZY_AHEAD = 4  -- imap: chunks in flight per worker

local RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"

local Pool = {__name = "luamp.Pool"}
Pool.__index = Pool
local AsyncResult = {__name = "luamp.AsyncResult"}
AsyncResult.__index = AsyncResult

local worker_counter = 0
local pools = setmetatable({}, {__mode = "k"}) -- pools this process owns

local function callable(f)
  if type(f) == "function" then return true end
  local m = getmetatable(f)
  return type(m) == "table" and m.__call ~= nil
end

-- Raises a bad-argument error at the user's call, `level` levels above the
-- function that calls argerror (1: its caller).
local function argerror(n, fname, msg, level)
  error(format("bad argument #%d to '%s' (%s)", n, fname, msg),
        (level or 1) + 2)
end

local function errtext(e)
  if type(e) == "string" then return e end
  local m = getmetatable(e)
  if m and m.__tostring then return tostring(e) end
  return format("(error object is a %s value)", type(e))
end

-- ------------------------------------------------------------- worker side

-- A task's error as it travels back: the value itself when it can be
-- sent, and always its text and the worker's traceback.
local function task_error(e, tb)
  local ok, bytes = pcall(encode, e)
  return {message = errtext(e), traceback = tb, value = ok and bytes or nil}
end

local function run_one(f, args, star)
  local tb
  local r = pack(xpcall(f, function(e)
    tb = traceback(errtext(e), 2)
    return e
  end, unpack(args, 1, args.n or #args)))
  if r[1] then return true, r end
  return false, task_error(r[2], tb)
end

-- Runs one task: an apply (all results kept) or a chunk of a map (the
-- first result of each item).
local function run_task(f, t)
  local args = decode(t.a)
  if not t.chunk then
    local ok, r = run_one(f, args)
    if ok then -- drop xpcall's true (shifting by hand: r may have holes)
      for i = 1, r.n - 1 do r[i] = r[i + 1] end
      r[r.n] = nil
      r.n = r.n - 1
    end
    return {id = t.id, ok = ok, r = ok and r or nil, e = not ok and r or nil}
  end
  -- One protected call for the whole chunk: the index says which item
  -- failed.
  local out, n, at, tb = {n = args.n}, args.n, 0, nil
  local ok, e = xpcall(function()
    if t.star then
      for i = 1, n do
        at = i
        local a = args[i]
        out[i] = (f(unpack(a, 1, a.n or #a)))
      end
    else
      for i = 1, n do
        at = i
        out[i] = (f(args[i]))
      end
    end
  end, function(err)
    tb = traceback(errtext(err), 2)
    return err
  end)
  if not ok then
    return {id = t.id, ok = false, e = task_error(e, tb), at = at}
  end
  return {id = t.id, ok = true, r = out}
end

local function worker_main(cfg, wid, inbox, outq, running)
  core.set_service(nil) -- the owner's pools are not ours
  if cfg.initializer then
    local ia = cfg.initargs or {}
    local tb
    local ok, e = xpcall(cfg.initializer, function(err)
      tb = traceback(errtext(err), 2)
      return err
    end, unpack(ia, 1, ia.n or #ia))
    if not ok then
      outq:put({w = wid, init_error = errtext(e), traceback = tb})
      return
    end
    outq:put({w = wid, ready = true}) -- the initializer let it live
  end
  local funcs, done, maxt = {}, 0, cfg.maxtasksperchild
  while true do
    local msg = inbox:get()
    if not msg then break end
    for fid, bytes in pairs(msg.funcs) do funcs[fid] = decode(bytes) end
    local out = {}
    for k, t in ipairs(msg.tasks) do
      running[wid] = t.id
      out[k] = run_task(funcs[t.f], t)
      done = done + 1
    end
    local ok, err = pcall(outq.put, outq, {w = wid, res = out})
    if not ok then
      -- A result that cannot be sent still reaches the caller, as an
      -- error that says why.
      for k, r in ipairs(out) do
        local sendable = pcall(encode, r)
        if not sendable then
          out[k] = {id = r.id, ok = false, e = {message = "cannot send the "
            .. "result of the task: " .. errtext(err)}}
        end
      end
      outq:put({w = wid, res = out})
    end
    running[wid] = 0
    if maxt and done >= maxt then break end
  end
end

-- -------------------------------------------------------------- AsyncResult

local function new_result(pool, kind, callback, error_callback)
  return setmetatable({
    _pool = pool, _kind = kind, _ready = false, _callback = callback,
    _error_callback = error_callback,
  }, AsyncResult)
end

-- Settles a result (once) and runs its callback, in the owner.
local function settle(res, ok, value)
  if res._ready then return end
  res._ready, res._ok, res._value = true, ok, value
  if res._pool then res._pool._cache[res] = nil end
  local cb = ok and res._callback or res._error_callback
  if cb then
    if ok and res._kind == "apply" then cb(unpack(value, 1, value.n))
    else cb(value) end
  end
end

-- r:ready() -> whether the result has arrived
function AsyncResult:ready()
  if not self._ready and self._pool then self._pool:_pump() end
  return self._ready
end

-- r:successful() -> whether the task returned; raises if not ready
function AsyncResult:successful()
  if not self:ready() then error("AsyncResult not ready", 2) end
  return self._ok
end

-- r:wait([timeout]) -> whether the result is ready
function AsyncResult:wait(timeout)
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, "wait", "number expected, got " .. type(timeout))
  end
  if self._ready then return true end
  local pool = self._pool
  return pool:_wait_until(function() return self._ready end, timeout)
end

-- r:get([timeout]) -> the task's results; raises TimeoutError, RemoteError
-- or WorkerLostError
function AsyncResult:get(timeout)
  if not self:wait(timeout) then
    errors.raise("TimeoutError", "the result is not ready after " ..
                 tostring(timeout) .. " s", nil, 2)
  end
  if not self._ok then error(self._value, 2) end
  local v = self._value
  if self._kind == "apply" then return unpack(v, 1, v.n) end
  return v
end

-- ---------------------------------------------------------------- the pool

local function pump_all()
  local pid = core.getpid()
  for pool in pairs(pools) do
    -- A pool waiting in _wait_until pumps itself when its wait returns;
    -- pumping it here would take what that wait is waiting for.
    if pool._pid == pid and not pool._waiting then pool:_pump() end
  end
end

local function new_worker(self, wid)
  worker_counter = worker_counter + 1
  local w = {inbox = core.SimpleQueue(), inflight = {}, known = {},
             sent = 0, id = wid}
  w.proc = process.Process{
    target = worker_main,
    args = {self._cfg, wid, w.inbox, self._outq, self._running},
    name = "PoolWorker-" .. worker_counter,
    daemon = true,
  }
  w.proc:start()
  w.sentinel = w.proc.sentinel
  self._workers[wid] = w
  return w
end

-- mp.Pool([n]) or mp.Pool{processes=n, initializer=f, initargs={...},
-- maxtasksperchild=k}
function M.Pool(opts)
  local cfg = {}
  if opts == nil or math_type(opts) then opts = {processes = opts} end
  if type(opts) ~= "table" then
    argerror(1, "Pool", "number or table expected, got " .. type(opts))
  end
  local n = opts.processes
  if n == nil then n = core.cpu_count() end
  if math_type(n) ~= "integer" or n < 1 then
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
  cfg.initializer, cfg.initargs, cfg.maxtasksperchild =
    opts.initializer, opts.initargs, k
  local self = setmetatable({
    _n = n, _cfg = cfg, _state = RUN, _pid = core.getpid(),
    _outq = core.Queue(), _running = core.Array("q", n, false),
    _workers = {}, _tasks = {}, _backlog = {}, _bhead = 1, _btail = 0,
    _next_id = 0, _fids = {}, _fbytes = {}, _nfid = 0, _lazy = {},
    _cache = {}, _reaped = core.reaped(),
  }, Pool)
  for wid = 1, n do new_worker(self, wid) end
  pools[self] = true
  core.set_service(pump_all)
  -- A result wakes the owner whatever it waits for, so callbacks run
  -- during mp.sleep or a lock's acquire too.
  core.watch(self._outq)
  return self
end

-- The function's id for workers: the same bytes, the same id, so a
-- function is sent to each worker once whatever the number of tasks.
local function fid_of(self, f, fname)
  local ok, bytes = pcall(encode, f, "func")
  if not ok then error(bytes, 4) end
  local id = self._fids[bytes]
  if not id then
    self._nfid = self._nfid + 1
    id = self._nfid
    self._fids[bytes], self._fbytes[id] = id, bytes
  end
  return id
end

local function checkrunning(self)
  if self._init_error then error(self._init_error, 0) end
  if self._state ~= RUN then error("Pool not running", 4) end
end

-- Adds a task: t = {job=, f=fid, a=bytes, keep=..., chunk=, star=, at=}.
local function add_task(self, t)
  self._next_id = self._next_id + 1
  t.id = self._next_id
  self._tasks[t.id] = t
  self._btail = self._btail + 1
  self._backlog[self._btail] = t.id
  return t
end

local function backlog_len(self) return self._btail - self._bhead + 1 end

-- Pulls chunks from lazy jobs (imap) while they may have more in flight.
local function refill(self)
  for job in pairs(self._lazy) do
    while not job.exhausted and job.inflight < job.window
          and job.pos - job.yielded < job.window * job.chunksize do
      job:_more(self)
    end
    if job.exhausted then self._lazy[job] = nil end
  end
end

-- Sends one message to worker w; false when there is nothing to send.
local function send_one(self, w, nw)
  local quota = self._cfg.maxtasksperchild
  local room = quota and (quota - w.sent) or MAXBATCH
  if room <= 0 or backlog_len(self) == 0 then return false end
  local want = (backlog_len(self) + nw * DEPTH - 1) // (nw * DEPTH)
  if want > room then want = room end
  if want > MAXBATCH then want = MAXBATCH end
  if want < 1 then want = 1 end
  local msg, ids = {tasks = {}, funcs = {}}, {}
  for i = 1, want do
    if backlog_len(self) == 0 then break end
    local id = self._backlog[self._bhead]
    -- A chunk is a batch already: one per message, so that the workers
    -- share the end of a map evenly.
    if i > 1 and (self._tasks[id] or {}).chunk then break end
    self._backlog[self._bhead] = nil
    self._bhead = self._bhead + 1
    local t = self._tasks[id]
    if t then
      if not w.known[t.f] then
        w.known[t.f] = true
        msg.funcs[t.f] = self._fbytes[t.f]
      end
      msg.tasks[#msg.tasks + 1] = {id = id, f = t.f, a = t.a,
                                   chunk = t.chunk, star = t.star}
      ids[#ids + 1] = id
      t.wid = w.id
    end
  end
  if #ids == 0 then return false end
  w.sent = w.sent + #ids
  w.inflight[#w.inflight + 1] = ids
  w.inbox:put(msg)
  return true
end

-- Sends work to the workers that have room: level by level, so that an
-- idle worker gets a message before a busy one gets its second.
function Pool:_dispatch()
  local nw = self._n
  for level = 1, DEPTH do
    for wid = 1, nw do
      local w = self._workers[wid]
      if w and w.alive ~= false and #w.inflight < level then
        if next(self._lazy) and backlog_len(self) == 0 then refill(self) end
        if not send_one(self, w, nw) then
          if backlog_len(self) == 0 and not next(self._lazy) then return end
        end
      end
    end
  end
end

-- The outcome of one task reaches its job.
local function deliver(self, r)
  local t = self._tasks[r.id]
  if not t then return end -- already settled (e.g. lost, then re-run)
  self._tasks[r.id] = nil
  local job = t.job
  if r.ok then
    job:_done(self, t, r.r)
  else
    local e = r.e
    local value = e.value and select(2, pcall(decode, e.value)) or e.message
    job:_failed(self, t, errors.new("RemoteError", e.message,
      {value = value, traceback = e.traceback}), r.at)
  end
end

local function lost(self, t)
  self._tasks[t.id] = nil
  t.job:_failed(self, t, errors.new("WorkerLostError",
    "the worker running the task died"))
end

local function fail_all(self, e)
  for id, t in pairs(self._tasks) do
    self._tasks[id] = nil
    t.job:_failed(self, t, e)
  end
  for job in pairs(self._lazy) do
    job:_failed(self, nil, e)
    self._lazy[job] = nil
  end
  self._backlog, self._bhead, self._btail = {}, 1, 0
end

-- A worker has ended: settle what it held, replace it.
local function worker_ended(self, w)
  w.alive = false
  local running = self._running[w.id]
  self._running[w.id] = 0
  local redo = {}
  for _, ids in ipairs(w.inflight) do
    for _, id in ipairs(ids) do
      local t = self._tasks[id]
      if t then
        if id == running then lost(self, t) else redo[#redo + 1] = t end
      end
    end
  end
  w.inflight = {}
  -- Tasks it had not started go to the front of the backlog.
  for i = #redo, 1, -1 do
    self._bhead = self._bhead - 1
    self._backlog[self._bhead] = redo[i].id
  end
  w.proc:close()
  if self._state ~= TERMINATE and not self._init_failed
     and (self._state == RUN or backlog_len(self) > 0 or next(self._tasks)) then
    new_worker(self, w.id)
  else
    self._workers[w.id] = nil
  end
end

-- Collects results, notices dead workers, sends more work.  Never blocks.
function Pool:_pump()
  -- A terminated pool has nothing left to collect: terminate settled it
  -- all, and it is reaping its own workers.
  if self._pumping or self._pid ~= core.getpid()
     or self._state == TERMINATE then
    return
  end
  self._pumping = true
  local ok, err = pcall(function()
    local outq = self._outq
    while outq:qsize() > 0 do
      local msg = outq:get(false)
      if msg.init_error then
        self._init_failed = true
        self._state = TERMINATE
        local e = errors.new("ProcessError", "the pool's initializer " ..
          "failed in a worker: " .. msg.init_error,
          {traceback = msg.traceback})
        self._init_error = e
        self:_kill_workers()
        fail_all(self, e)
        pools[self] = nil
        core.unwatch(outq)
        break
      end
      local w = self._workers[msg.w]
      if msg.ready then
        if w then w.ready = true end
      else
        if w and w.inflight[1] then table.remove(w.inflight, 1) end
        for _, r in ipairs(msg.res) do deliver(self, r) end
      end
    end
    local reaped = core.reaped()
    if reaped ~= self._reaped then
      self._reaped = reaped
      for wid = 1, self._n do
        local w = self._workers[wid]
        if w and w.proc.exitcode ~= nil then
          -- Its last results may still be in the queue: take them first.
          while outq:qsize() > 0 do
            local msg = outq:get(false)
            local ww = self._workers[msg.w]
            if msg.ready and ww then ww.ready = true end
            if msg.res then
              if ww and ww.inflight[1] then table.remove(ww.inflight, 1) end
              for _, r in ipairs(msg.res) do deliver(self, r) end
            end
          end
          if self._cfg.initializer and not w.ready and
             not self._init_failed then
            -- It ended before its initializer let it start: the same
            -- failure as an initializer that raises, not one to respawn.
            self._init_failed = true
            self._state = TERMINATE
            local e = errors.new("ProcessError", "the pool's initializer "
              .. "ended its worker (exit code " .. tostring(w.proc.exitcode)
              .. ")")
            self._init_error = e
            self:_kill_workers()
            fail_all(self, e)
            pools[self] = nil
            core.unwatch(outq)
            return
          end
          worker_ended(self, w)
        end
      end
    end
    if self._state ~= TERMINATE then self:_dispatch() end
    if self._state == CLOSE then self:_stop_idle() end
  end)
  self._pumping = false
  if not ok then error(err, 0) end
end

-- After close: each worker with nothing left to do gets the stop message.
function Pool:_stop_idle()
  if backlog_len(self) > 0 or next(self._lazy) then return end
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w and not w.stopped and #w.inflight == 0 then
      w.stopped = true
      w.inbox:put(false)
    end
  end
end

-- Pumps until done() or the timeout; true if done.  Ctrl-C terminates
-- the pool (its workers are gone at once) and raises.
function Pool:_wait_until(done, timeout)
  local deadline = timeout and monotonic() + timeout
  while true do
    self:_pump()
    if done() then return true end
    local left
    if deadline then
      left = deadline - monotonic()
      if left <= 0 then return false end
    end
    local list = {self._outq}
    for wid = 1, self._n do
      local w = self._workers[wid]
      if w and w.alive ~= false then list[#list + 1] = w.sentinel end
    end
    if #list == 1 and not next(self._tasks) and done() then return true end
    self._waiting = true
    local ok, err = pcall(core.wait, list, left)
    self._waiting = false
    if not ok then
      if core.is_interrupt(err) then self:terminate() end
      error(err, 0)
    end
  end
end

-- ------------------------------------------------------------------- jobs

-- A job of one task: apply, apply_async.
local Apply = {}
Apply.__index = Apply

function Apply:_done(pool, t, r) settle(self.res, true, r) end
function Apply:_failed(pool, t, e) settle(self.res, false, e) end

local function submit_apply(self, f, args, callback, error_callback, fname)
  checkrunning(self)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  if args ~= nil and type(args) ~= "table" then
    argerror(2, fname, "table expected, got " .. type(args), 2)
  end
  args = args or {}
  local ok, a = pcall(encode, args, "args")
  if not ok then error(a, 3) end
  local res = new_result(self, "apply", callback, error_callback)
  local job = setmetatable({res = res}, Apply)
  add_task(self, {job = job, f = fid_of(self, f), a = a, keep = args,
                  fn = f})
  self._cache[res] = true
  -- Now and then take results in (they free workers for more), so that
  -- workers do not wait for the first get.
  if backlog_len(self) % 32 == 0 then self:_pump() else self:_dispatch() end
  return res
end

-- pool:apply(f, [args]) -> all the results of f(table.unpack(args))
function Pool:apply(f, args)
  return submit_apply(self, f, args, nil, nil, "apply"):get()
end

-- pool:apply_async(f, [args], [callback], [error_callback]) -> AsyncResult
function Pool:apply_async(f, args, callback, error_callback)
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

-- Options of map-like calls: a chunksize, or {chunksize=, progress=}.
local function options(opt, fname, argn)
  local chunksize, progress
  if type(opt) == "table" then
    chunksize, progress = opt.chunksize, opt.progress
  elseif opt ~= nil then
    chunksize = opt
  end
  if chunksize ~= nil and (math_type(chunksize) ~= "integer" or chunksize < 1) then
    argerror(argn, fname, "chunksize must be a positive integer", 3)
  end
  if progress == nil then progress = os.getenv("LUAMP_PROGRESS") == "1" end
  return chunksize, progress
end

-- An iterable: an array, or a function called until it returns nil.
local function iterator(it, fname)
  if type(it) == "table" then
    local i, n = 0, it.n or #it
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

-- The live progress line, on stderr when it is a terminal.
local Progress = {}
Progress.__index = Progress

local function new_progress(enabled, total)
  if not enabled or not core.isatty(2) then return nil end
  return setmetatable({total = total, done = 0, t0 = monotonic(),
                       last = 0}, Progress)
end

function Progress:line()
  local el = monotonic() - self.t0
  local rate = el > 0 and self.done / el or 0
  local eta = "?"
  if self.total and rate > 0 then
    eta = format("%.1fs", (self.total - self.done) / rate)
  end
  return format("\r%d/%s done, %.1f/s, %.1fs elapsed, ETA %s\27[K",
    self.done, self.total and tostring(self.total) or "?", rate, el, eta)
end

function Progress:step(n, final)
  self.done = self.done + n
  local now = monotonic()
  if final or now - self.last >= 0.1 then
    self.last = now
    io.stderr:write(self:line())
    if final then io.stderr:write("\n") end
    io.stderr:flush()
  end
end

-- A job of several chunks whose results fill one table: map & co.
local Map = {}
Map.__index = Map

function Map:_done(pool, t, r)
  if self.res._ready then return end
  table.move(r, 1, r.n, t.at, self.out)
  self.left = self.left - 1
  if self.progress then self.progress:step(r.n, self.left == 0) end
  if self.left == 0 then settle(self.res, true, self.out) end
end

function Map:_failed(pool, t, e)
  if self.progress and not self.res._ready then
    io.stderr:write("\n")
  end
  settle(self.res, false, e)
end

-- Splits items into encoded chunks of `chunksize`.
local function chunks_of(items, n, chunksize)
  local list, i = {}, 1
  while i <= n do
    local last = math.min(i + chunksize - 1, n)
    local c = table.move(items, i, last, 1, {n = last - i + 1})
    list[#list + 1] = {at = i, items = c}
    i = i + chunksize
  end
  return list
end

local function submit_map(self, f, iterable, opt, callback, error_callback,
                          fname, star)
  checkrunning(self)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  local chunksize, progress = options(opt, fname, 3)
  local next_item, n = iterator(iterable, fname)
  local items = {}
  if n then
    items = iterable -- read only: chunks are copied from it
  else
    n = 0
    while true do
      local more, v = next_item()
      if not more then break end
      n = n + 1
      items[n] = v
    end
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
  local res = new_result(self, "map", callback, error_callback)
  local job = setmetatable({res = res, out = {n = n}, left = 0,
                            progress = new_progress(progress, n)}, Map)
  local list = chunks_of(items, n, chunksize)
  local encoded = {}
  for k, c in ipairs(list) do
    local ok, a = pcall(encode, c.items, "iterable")
    if not ok then -- name the item by its place in the whole iterable
      a = tostring(a):gsub("^cannot send iterable%[(%d+)%]", function(i)
        return "cannot send iterable[" .. (tonumber(i) + c.at - 1) .. "]"
      end)
      error(a, 3)
    end
    encoded[k] = a
  end
  job.left = #list
  self._cache[res] = true
  for k, c in ipairs(list) do
    add_task(self, {job = job, f = fid, a = encoded[k], keep = c.items,
                    chunk = true, star = star, at = c.at, fn = f})
  end
  if n == 0 then settle(res, true, job.out) end
  self:_dispatch()
  return res
end

-- pool:map(f, iterable, [chunksize | {chunksize=, progress=}]) -> results
-- in order, a table with n set
function Pool:map(f, iterable, opt)
  return submit_map(self, f, iterable, opt, nil, nil, "map"):get()
end

function Pool:map_async(f, iterable, opt, callback, error_callback)
  local r = submit_map(self, f, iterable, opt, callback, error_callback,
                      "map_async")
  return r -- not a tail call: error levels count this frame
end

function Pool:starmap(f, iterable, opt)
  return submit_map(self, f, iterable, opt, nil, nil, "starmap", true):get()
end

function Pool:starmap_async(f, iterable, opt, callback, error_callback)
  local r = submit_map(self, f, iterable, opt, callback, error_callback,
                      "starmap_async", true)
  return r -- not a tail call: error levels count this frame
end

-- imap and imap_unordered: input read lazily, results as they come.
local Lazy = {}
Lazy.__index = Lazy

function Lazy:_more(pool)
  local c, at = {n = 0}, self.pos + 1
  while c.n < self.chunksize do
    local ok, more, v = pcall(self.next_item)
    if not ok then -- the input raised: deliver that at its position
      self.input_error = {at = self.pos + 1, err = more}
      self.exhausted = true
      break
    end
    if not more then
      self.exhausted = true
      break
    end
    self.pos = self.pos + 1
    c.n = c.n + 1
    c[c.n] = v
  end
  if c.n == 0 then return end
  local ok, a = pcall(encode, c, "iterable")
  if not ok then -- name the item by its place in the whole input
    a = tostring(a):gsub("^cannot send iterable%[(%d+)%]", function(i)
      return "cannot send iterable[" .. (tonumber(i) + at - 1) .. "]"
    end)
    self.input_error = self.input_error or {at = at, err = a}
    self.exhausted = true
    self.pos = at - 1 -- none of this chunk was sent
    return
  end
  self.inflight = self.inflight + 1
  add_task(pool, {job = self, f = self.fid, a = a, keep = c, chunk = true,
                  at = at, fn = self.f})
end

function Lazy:_done(pool, t, r)
  self.inflight = self.inflight - 1
  for i = 1, r.n do
    self.results[t.at + i - 1] = {true, r[i]}
    if not self.ordered then
      self.queue[#self.queue + 1] = t.at + i - 1
    end
  end
  if self.progress then self.progress:step(r.n) end
end

function Lazy:_failed(pool, t, e, at)
  if t == nil then -- the pool failed as a whole
    self.fatal = e
    return
  end
  self.inflight = self.inflight - 1
  -- Every position of the chunk gets an outcome: the error where it was
  -- raised (or, when the worker was lost, at every position), so that
  -- the iteration never waits for results that will not come.
  local n = t.keep and (t.keep.n or #t.keep) or 1
  for k = 1, n do
    local where = t.at + k - 1
    if at == nil or k == at then
      self.results[where] = {false, e}
    else
      self.results[where] = self.results[where] or {false, e}
    end
    if not self.ordered then self.queue[#self.queue + 1] = where end
  end
end

local function submit_lazy(self, f, iterable, opt, fname, ordered)
  checkrunning(self)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  local chunksize, progress = options(opt, fname, 3)
  local next_item, n = iterator(iterable, fname)
  local job = setmetatable({
    f = f, fid = fid_of(self, f), next_item = next_item, pos = 0,
    chunksize = chunksize or 1, inflight = 0, results = {}, queue = {},
    qhead = 1, yielded = 0, ordered = ordered,
    window = self._n * LAZY_AHEAD, progress = new_progress(progress, n),
  }, Lazy)
  self._lazy[job] = true
  self:_dispatch()
  local pool = self
  -- The iterator for a generic for: each result in turn, nil at the end.
  return function()
    local key
    local function ready()
      if job.fatal then return true end
      if ordered then
        key = job.yielded + 1
        if job.results[key] then return true end
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
    pool:_wait_until(ready)
    if job.fatal then error(job.fatal, 2) end
    local r = key and job.results[key]
    if r then
      job.results[key] = nil
      if not ordered then job.qhead = job.qhead + 1 end
      job.yielded = job.yielded + 1
      if not r[1] then error(r[2], 2) end
      return r[2]
    end
    if job.input_error and job.yielded + 1 >= job.input_error.at then
      local e = job.input_error.err
      job.input_error = nil
      error(e, 2)
    end
    if job.progress then job.progress:step(0, true) end
    return nil
  end
end

-- for r in pool:imap(f, iterable, [chunksize | options]) do ... end
function Pool:imap(f, iterable, opt)
  local r = submit_lazy(self, f, iterable, opt, "imap", true)
  return r -- not a tail call: error levels count this frame
end

function Pool:imap_unordered(f, iterable, opt)
  local r = submit_lazy(self, f, iterable, opt, "imap_unordered", false)
  return r -- not a tail call: error levels count this frame
end

-- ----------------------------------------------------------- ending a pool

function Pool:_kill_workers()
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w and w.proc.exitcode == nil then w.proc:kill() end
  end
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w then
      w.proc:join()
      w.proc:close()
      w.inbox:close()
      w.alive = false
    end
  end
  self._workers = {}
end

-- pool:close(): no more tasks; the workers leave when the work is done.
function Pool:close()
  if self._state == RUN then
    self._state = CLOSE
    self:_pump()
  end
end

-- pool:terminate(): the workers are stopped now; unfinished tasks fail.
function Pool:terminate()
  if self._state == TERMINATE and not next(self._workers) then return end
  self._state = TERMINATE
  self:_kill_workers()
  fail_all(self, errors.new("ProcessError", "the pool was terminated"))
  pools[self] = nil
  core.unwatch(self._outq)
  self._outq:close()
end

-- pool:join(): waits for the workers to leave (after close or terminate).
function Pool:join()
  if self._state == RUN then error("Pool is still running", 2) end
  self:_wait_until(function()
    for wid = 1, self._n do
      local w = self._workers[wid]
      if w and w.proc.exitcode == nil then return false end
    end
    return true
  end)
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w then
      w.proc:join()
      w.proc:close()
      w.inbox:close()
    end
  end
  self._workers = {}
  pools[self] = nil
  core.unwatch(self._outq)
end

Pool.__close = Pool.terminate
Pool.__gc = function(self)
  if self._pid == core.getpid() and self._state ~= TERMINATE then
    pcall(self.terminate, self)
  end
end

function Pool.__tostring(self)
  return format("luamp.Pool (%d processes, %s)", self._n, self._state)
end

M.class = Pool
M.AsyncResult = AsyncResult
return M
