-- luamp.pool -- Pool and AsyncResult: worker processes fed by their owner.
--
-- The owner keeps every task until its result is in.  It sends each worker
-- its own messages (a few tasks at a time, through the worker's inbox
-- queue), and each worker puts the result of each task on one queue shared
-- by all as soon as the task ends.  So when a worker dies the owner knows
-- exactly where it was: the tasks whose results came are done; the one it
-- was running (announced in a shared array) fails with WorkerLostError;
-- the rest, which it never started, go to other workers; and a new worker
-- takes its place.  Results are collected, and callbacks run, whenever the
-- owner is in a luamp call: the pool registers a service that every
-- blocking call runs on wake-up.
--
-- The owner keeps its tasks in slots, a set of parallel arrays indexed by
-- a small number that is reused, so that a task costs no table of its own.
-- A task travels as its id: its slot plus SLOTS times the slot's
-- generation, so that a slot's new task is never taken for its old one.

local core = require "luamp.core"
local errors = require "luamp.errors"
local process = require "luamp.process"

local error, getmetatable, ipairs, math_type, next, pairs, pcall,
  select, setmetatable, tonumber, tostring, type, xpcall =
  error, getmetatable, ipairs, math.type, next, pairs, pcall,
  select, setmetatable, tonumber, tostring, type, xpcall
local pack, unpack, remove = table.pack, table.unpack, table.remove
local format = string.format
local traceback = debug.traceback
local encode, encode_slice, decode, decode_into, monotonic, newtable =
  core.encode, core.encode_slice, core.decode, core.decode_into,
  core.monotonic, core.newtable

local M = {}

local DEPTH = 2       -- messages in flight per worker
local MAXBATCH = 64   -- tasks in one message, when many are waiting
local LAZY_AHEAD = 4  -- imap: chunks in flight per worker
local SLOTS = 1 << 24 -- task id = slot + SLOTS * generation
local PLAIN_MAX = 8   -- results sent as they are, not encoded apart
local PUMP_EVERY = 32 -- apply_async: collect results every so many tasks
local EAGER = 8       -- apply_async: tasks a worker may be sent at once
-- Task functions no task uses any more are kept for reuse, the most
-- recently used first, up to this many and this many bytes.
local IDLE_FUNCS, IDLE_BYTES = 64, 1 << 20

-- Task kinds, as they travel.
local APPLY, CHUNK, STARCHUNK = 0, 1, 2

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

-- Misuse raises at the user's call: see luamp.errors for `level`.
local argerror, checkself = errors.argerror, errors.checkself

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

local last_tb -- the traceback of the last error a task raised
local function on_error(e)
  last_tb = traceback(errtext(e), 2)
  return e
end

-- Runs an apply.  The message back is {id, 0, results...} with n set when
-- the results are a few plain values (nil, booleans, numbers, strings);
-- otherwise {id, true, bytes}, where bytes encode table.pack of the
-- results, so that a value the owner cannot decode fails its task alone;
-- or {id, false, error}.
local function run_apply(id, f, bytes)
  local args = decode(bytes)
  local r = pack(id, xpcall(f, on_error, unpack(args, 1, args.n or #args)))
  if not r[2] then return {id, false, task_error(r[3], last_tb)} end
  local n = r.n
  if n <= PLAIN_MAX + 2 then
    local plain = true
    for i = 3, n do
      local t = type(r[i])
      if t ~= "number" and t ~= "string" and t ~= "boolean" and t ~= "nil"
      then
        plain = false
        break
      end
    end
    if plain then
      r[2] = 0
      return r
    end
  end
  local ok, res = pcall(encode_slice, r, 3, n, "result")
  if ok then return {id, true, res} end
  -- Say which result could not be sent, counting from 1.
  ok, res = pcall(encode, pack(unpack(r, 3, n)), "result")
  return {id, false, {message = "cannot send the result of the task: " ..
                      errtext(res)}}
end

-- Runs a chunk of a map: the message back is {id, true, bytes} where
-- bytes encode the first result of each item (holes kept), or
-- {id, false, error, k} when item k failed.
local function run_chunk(id, f, bytes, star)
  local args = decode(bytes)
  local n, at = args.n, 0
  local out = newtable(n)
  -- One protected call for the whole chunk: `at` says which item failed.
  local ok, e = xpcall(function()
    if star then
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
  end, on_error)
  if not ok then return {id, false, task_error(e, last_tb), at} end
  local sent, res = pcall(encode_slice, out, 1, n, "result")
  if sent then return {id, true, res} end
  return {id, false, {message = errtext(res)},
          tonumber(res:match("^cannot send result%[(%d+)%]"))}
end

-- Puts a task's outcome; an outcome that cannot be put (the arena is
-- full) still reaches the caller, as an error that says why.
local function send_result(outq, r)
  local ok, err = pcall(outq.put, outq, r)
  if not ok then
    outq:put({r[1], false, {message = "cannot send the outcome of the " ..
                            "task: " .. errtext(err)}})
  end
end

local function worker_main(cfg, wid, inbox, outq, running)
  core.set_service(nil) -- the owner's pools are not ours
  if cfg.initializer then
    local ia = cfg.initargs or {}
    local ok, e = xpcall(cfg.initializer, on_error,
                         unpack(ia, 1, ia.n or #ia))
    if not ok then
      outq:put({w = wid, init_error = errtext(e), traceback = last_tb})
      return
    end
    outq:put({w = wid, ready = true}) -- the initializer let it live
  end
  local funcs, done, maxt = {}, 0, cfg.maxtasksperchild
  while true do
    local msg = inbox:get()
    if not msg then break end
    if msg.drop then
      for _, fid in ipairs(msg.drop) do funcs[fid] = nil end
    end
    if msg.funcs then
      for fid, bytes in pairs(msg.funcs) do funcs[fid] = decode(bytes) end
    end
    local ids, fids, args, kinds = msg.id, msg.f, msg.a, msg.k
    for i = 1, #ids do
      local id, kind = ids[i], kinds[i]
      running[wid] = id
      if kind == APPLY then
        send_result(outq, run_apply(id, funcs[fids[i]], args[i]))
      else
        send_result(outq, run_chunk(id, funcs[fids[i]], args[i],
                                    kind == STARCHUNK))
      end
    end
    running[wid] = 0
    done = done + #ids
    if maxt and done >= maxt then break end
  end
end

-- -------------------------------------------------------------- AsyncResult

-- A result: of a map, whose value is the table; or of an apply (_map
-- false), whose value is a table holding the results from index _first to
-- its n, or the encoded results until they are first needed.
local function new_result(pool, map, callback, error_callback)
  local res = setmetatable({_pool = pool, _ready = false, _ok = false,
                            _value = false, _map = map, _first = 1},
                           AsyncResult)
  if callback then res._callback = callback end
  if error_callback then res._error_callback = error_callback end
  return res
end

-- The values of an apply (a table, and the index of the first), decoded
-- now if they were not yet; a value this process cannot receive makes the
-- task fail.
local function apply_values(res)
  local v = res._value
  if res._ok and type(v) == "string" then
    local ok, t = pcall(decode, v)
    if ok then
      v = t
    else
      res._ok = false
      v = errors.new("RemoteError", "cannot receive the result of the " ..
                     "task: " .. errtext(t), {value = t})
    end
    res._value, res._first = v, 1
  end
  return v, res._first
end

-- Settles a result (once) and runs its callback, in the owner.
local function settle(res, ok, value)
  if res._ready then return end
  res._ready, res._ok, res._value = true, ok, value
  local cb = res._callback or res._error_callback
  if cb then
    local first
    if not res._map then value, first = apply_values(res) end
    if res._ok then
      cb = res._callback
      if cb then
        if res._map then cb(value) else cb(unpack(value, first, value.n)) end
      end
    else
      cb = res._error_callback
      if cb then cb(value) end
    end
  end
end

-- An apply's result is its own job.
function AsyncResult:_done(pool, at, m)
  if m[2] == true then
    settle(self, true, m[3])
  else
    self._first = 3
    settle(self, true, m)
  end
end
function AsyncResult:_failed(pool, at, n, e) settle(self, false, e) end

-- r:ready() -> whether the result has arrived
function AsyncResult:ready()
  checkself(self, AsyncResult, "ready")
  if not self._ready and self._pool then self._pool:_pump() end
  return self._ready
end

-- r:successful() -> whether the task returned; raises if not ready
function AsyncResult:successful()
  checkself(self, AsyncResult, "successful")
  if not self:ready() then error("AsyncResult not ready", 2) end
  if not self._map then apply_values(self) end
  return self._ok
end

-- Waits for res as r:wait does, for the method fname; a misuse is raised
-- at `level` (1: the caller of the function that calls wait_result).
local function wait_result(res, timeout, fname, level)
  level = level + 1
  if timeout ~= nil and type(timeout) ~= "number" then
    argerror(1, fname, "number expected, got " .. type(timeout), level)
  end
  if timeout ~= timeout then
    argerror(1, fname, "timeout must be a number, not NaN", level)
  end
  if res._ready then return true end
  local ready = res._pool:_wait_until(function() return res._ready end,
                                      timeout, level)
  return ready -- not a tail call: error levels count this frame
end

-- r:wait([timeout]) -> whether the result is ready
function AsyncResult:wait(timeout)
  checkself(self, AsyncResult, "wait")
  local ready = wait_result(self, timeout, "wait", 1)
  return ready -- not a tail call: error levels count this frame
end

-- r:get([timeout]) -> the task's results; raises TimeoutError, RemoteError
-- or WorkerLostError
function AsyncResult:get(timeout)
  checkself(self, AsyncResult, "get")
  if not self._ready and not wait_result(self, timeout, "get", 1) then
    errors.raise("TimeoutError", "the result is not ready after " ..
                 tostring(timeout) .. " s", nil, 2)
  end
  local v = self._value
  if self._map then
    if not self._ok then error(v, 2) end
    return v
  end
  local first
  v, first = apply_values(self)
  if not self._ok then error(v, 2) end
  return unpack(v, first, v.n)
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

-- Starts worker wid.  If it cannot, raises at `level` (1: the caller of
-- the function that calls new_worker), or without a position when level
-- is nil.
local function new_worker(self, wid, level)
  worker_counter = worker_counter + 1
  -- known: the functions it has (it had a message that carried them).
  -- For each message in flight, in order: the id of its first task, how
  -- many of its results are still to come, and the functions it carries.
  local w = {inbox = core.Queue(), known = {}, sent = 0, id = wid,
             mfirst = {}, mleft = {}, mfuncs = {}}
  w.proc = process.Process{
    target = worker_main,
    args = {self._cfg, wid, w.inbox, self._outq, self._running},
    name = "PoolWorker-" .. worker_counter,
    daemon = true,
  }
  local ok, e = pcall(w.proc.start, w.proc)
  if not ok then
    w.inbox:close()
    error(e, level and level + 2 or 0)
  end
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
  local ok, running = pcall(core.Array, "q", n, false)
  if not ok then error(running, 2) end
  local self = setmetatable({
    _n = n, _cfg = cfg, _state = RUN, _pid = core.getpid(),
    _outq = core.Queue(), _running = running,
    _workers = {}, _lazy = {}, _reaped = core.reaped(), _nsub = 0,
    _rbuf = {}, _rh = 1, _rn = 0, -- results taken in, and the next to read
    -- the slots: job, function id, encoded arguments, kind, position and
    -- size of a chunk, worker (0: not sent), generation
    _tj = {}, _tf = {}, _ta = {}, _tk = {}, _tat = {}, _tn = {}, _tw = {},
    _tgen = {}, _nslot = 0, _free = {}, _nfree = 0, _live = 0,
    -- the backlog: slots not sent yet, in order
    _bq = {}, _bh = 1, _bt = 0,
    -- task functions: id by encoding, encoding by id, tasks (and imap
    -- calls) using each, identity cache, and the idle ones, oldest first,
    -- as a list linked both ways
    _fids = {}, _fbytes = {}, _fuse = {}, _nfid = 0,
    _fcache = setmetatable({}, {__mode = "k"}),
    _fprev = {}, _fnext = {}, _fhead = false, _ftail = false, _nidle = 0,
    _idlebytes = 0,
  }, Pool)
  for wid = 1, n do new_worker(self, wid, 1) end
  pools[self] = true
  core.set_service(pump_all)
  -- A result wakes the owner whatever it waits for, so callbacks run
  -- during mp.sleep or a lock's acquire too.
  core.watch(self._outq)
  return self
end

-- ------------------------------------------------------- task functions

-- The function's id for workers: the same bytes, the same id, so a
-- function is sent to each worker once whatever the number of tasks.  A
-- function without upvalues always has the same bytes, so it is looked up
-- by identity first.
local function fid_of(self, f)
  local fid = self._fcache[f]
  if fid and self._fbytes[fid] then return fid end
  local ok, bytes = pcall(encode, f, "func")
  if not ok then error(bytes, 4) end
  fid = self._fids[bytes]
  if not fid then
    fid = self._nfid + 1
    self._nfid = fid
    self._fids[bytes], self._fbytes[fid], self._fuse[fid] = fid, bytes, 0
  end
  if type(f) == "function" and debug.getupvalue(f, 1) == nil then
    self._fcache[f] = fid
  end
  return fid
end

-- Takes idle function fid off the idle list.
local function unidle(self, fid)
  local prev, nxt = self._fprev[fid], self._fnext[fid]
  if prev then self._fnext[prev] = nxt else self._fhead = nxt end
  if nxt then self._fprev[nxt] = prev else self._ftail = prev end
  self._fprev[fid], self._fnext[fid] = nil, nil
  self._nidle = self._nidle - 1
  self._idlebytes = self._idlebytes - #self._fbytes[fid]
end

-- Forgets idle function fid, here and, with their next message, in the
-- workers.
local function evict(self, fid)
  unidle(self, fid)
  local bytes = self._fbytes[fid]
  self._fids[bytes], self._fbytes[fid], self._fuse[fid] = nil, nil, nil
  for _, w in pairs(self._workers) do
    if w.known[fid] then
      w.known[fid] = nil
      w.drop = w.drop or {}
      w.drop[#w.drop + 1] = fid
    end
  end
end

local function use_fid(self, fid)
  local n = self._fuse[fid]
  if n == 0 and (self._fprev[fid] or self._fhead == fid) then
    unidle(self, fid)
  end
  self._fuse[fid] = n + 1
end

-- A task (or imap call) no longer uses fid: once no task does, it joins
-- the idle list, the oldest of which are forgotten beyond the limits.
local function unuse_fid(self, fid)
  local n = self._fuse[fid] - 1
  self._fuse[fid] = n
  if n > 0 then return end
  local tail = self._ftail
  if tail then self._fnext[tail] = fid else self._fhead = fid end
  self._fprev[fid], self._ftail = tail or nil, fid
  self._nidle = self._nidle + 1
  self._idlebytes = self._idlebytes + #self._fbytes[fid]
  while self._nidle > IDLE_FUNCS or self._idlebytes > IDLE_BYTES do
    evict(self, self._fhead)
  end
end

-- ---------------------------------------------------------------- slots

local function checkrunning(self)
  if self._init_error then error(self._init_error, 0) end
  if self._state ~= RUN then error("Pool not running", 4) end
end

-- Adds a task at the end of the backlog; returns its slot.
local function add_task(self, job, fid, bytes, kind, at, n)
  local s, nfree = nil, self._nfree
  if nfree > 0 then
    s = self._free[nfree]
    self._free[nfree], self._nfree = nil, nfree - 1
  else
    s = self._nslot + 1
    self._nslot, self._tgen[s] = s, 0
  end
  self._tj[s], self._tf[s], self._ta[s], self._tk[s], self._tat[s],
    self._tn[s], self._tw[s] = job, fid, bytes, kind, at, n, 0
  self._live = self._live + 1
  use_fid(self, fid)
  local bt = self._bt + 1
  self._bt, self._bq[bt] = bt, s
  return s
end

-- Empties slot s; returns the job, position and size of its task.
local function free_slot(self, s)
  local job, at, n = self._tj[s], self._tat[s], self._tn[s]
  local fid = self._tf[s]
  self._tj[s], self._tf[s], self._ta[s], self._tat[s], self._tn[s],
    self._tw[s] = nil, nil, nil, nil, nil, nil
  self._tgen[s] = (self._tgen[s] + 1) % 1024
  local nfree = self._nfree + 1
  self._free[nfree], self._nfree = s, nfree
  self._live = self._live - 1
  unuse_fid(self, fid)
  return job, at, n
end

local function backlog_len(self) return self._bt - self._bh + 1 end

-- Pulls chunks from lazy jobs (imap) while they may have more in flight.
local function refill(self)
  for job in pairs(self._lazy) do
    while not job.exhausted and job.inflight < job.window
          and job.pos - job.yielded < job.window * job.chunksize do
      job:_more(self)
    end
    if job.exhausted then
      self._lazy[job] = nil
      unuse_fid(self, job.fid)
    end
  end
end

-- Sends one message to worker w; false when there is nothing to send.
local function send_one(self, w, nw)
  local bh, bt = self._bh, self._bt
  if bt < bh then return false end
  local quota = self._cfg.maxtasksperchild
  local want = quota and quota - w.sent or MAXBATCH
  if want <= 0 then return false end
  local even = (bt - bh + nw * DEPTH) // (nw * DEPTH)
  if want > even then want = even end
  if want > MAXBATCH then want = MAXBATCH end
  local bq, tk, tf, ta, tw, tgen, fbytes, known =
    self._bq, self._tk, self._tf, self._ta, self._tw, self._tgen,
    self._fbytes, w.known
  local ids, fids, args, kinds, funcs = {}, {}, {}, {}, nil
  local n, wid = 0, w.id
  while n < want and bh <= bt do
    local s = bq[bh]
    local kind = tk[s]
    -- A chunk is a batch already: one per message, so that the workers
    -- share the end of a map evenly.
    if n > 0 and (kind ~= APPLY or kinds[1] ~= APPLY) then break end
    bq[bh], bh, n = nil, bh + 1, n + 1
    local fid = tf[s]
    if not known[fid] then -- (again, if a message in flight carries it)
      funcs = funcs or {}
      funcs[fid] = fbytes[fid]
    end
    ids[n], fids[n], args[n], kinds[n] = s + SLOTS * tgen[s], fid, ta[s], kind
    tw[s] = wid
  end
  if bh > bt then bh, bt = 1, 0 end
  self._bh, self._bt = bh, bt
  w.sent = w.sent + n
  local m = #w.mleft + 1
  w.mfirst[m], w.mleft[m], w.mfuncs[m] = ids[1], n, funcs or false
  w.inbox:put({id = ids, f = fids, a = args, k = kinds, funcs = funcs,
               drop = w.drop})
  w.drop = nil
  return true
end

-- Puts tasks that never ran (slots, in order) back at the front of the
-- backlog.
local function requeue(self, slots)
  local tw, bq = self._tw, self._bq
  for i = #slots, 1, -1 do
    local s = slots[i]
    tw[s] = 0
    self._bh = self._bh - 1
    bq[self._bh] = s
  end
end

-- When the backlog is empty but a worker is idle while another has a
-- message waiting behind the one it runs, that message is taken back from
-- the busy worker's inbox (if it has not taken it yet) and its tasks go to
-- the front of the backlog: so no task waits behind a long one while a
-- worker has nothing to do.  True if it took one.
local function steal(self)
  local victim, most, idle = nil, 1, false
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w and w.alive ~= false and not w.stopped then
      local k = #w.mleft
      if k == 0 then idle = true elseif k > most then victim, most = w, k end
    end
  end
  if not idle or not victim then return false end
  local ok, msg = pcall(victim.inbox.get, victim.inbox, false)
  if not ok or not msg then return false end -- it took it first
  -- The worker never saw this message: its drops are still to send.
  if msg.drop then
    victim.drop = victim.drop or {}
    for _, fid in ipairs(msg.drop) do victim.drop[#victim.drop + 1] = fid end
  end
  for k = 1, #victim.mfirst do
    if victim.mfirst[k] == msg.id[1] then
      remove(victim.mfirst, k)
      remove(victim.mleft, k)
      remove(victim.mfuncs, k)
      break
    end
  end
  victim.sent = victim.sent - #msg.id
  local slots = {}
  for i, id in ipairs(msg.id) do slots[i] = id % SLOTS end
  requeue(self, slots)
  return true
end

-- Sends work to the workers that have room: level by level, so that an
-- idle worker gets a message before a busy one gets its second.  With
-- depth 1, only to idle workers.
function Pool:_dispatch(depth)
  local nw, workers = self._n, self._workers
  for level = 1, depth or DEPTH do
    for wid = 1, nw do
      local w = workers[wid]
      if w and w.alive ~= false and not w.stopped and #w.mleft < level then
        if self._bt < self._bh and next(self._lazy) then refill(self) end
        if not send_one(self, w, nw) and self._bt < self._bh
           and not next(self._lazy) then
          return
        end
      end
    end
  end
end

-- The outcome of one task reaches its job.
local function deliver(self, m)
  local id = m[1]
  local s = id % SLOTS
  if self._tgen[s] ~= id // SLOTS or not self._tj[s] then return end
  local w = self._workers[self._tw[s]]
  if w then -- one result less to come from its oldest message
    local funcs = w.mfuncs[1]
    if funcs then -- which it has read, functions and all
      for fid in pairs(funcs) do w.known[fid] = true end
      w.mfuncs[1] = false
    end
    local left = w.mleft[1] - 1
    if left > 0 then
      w.mleft[1] = left
    else
      remove(w.mleft, 1)
      remove(w.mfirst, 1)
      remove(w.mfuncs, 1)
    end
  end
  local job, at, n = free_slot(self, s)
  if m[2] then
    job:_done(self, at, m)
  else
    local e = m[3]
    local value = e.value and select(2, pcall(decode, e.value)) or e.message
    job:_failed(self, at, n, errors.new("RemoteError", e.message,
      {value = value, traceback = e.traceback}), m[4])
  end
end

local function fail_all(self, e)
  for s = 1, self._nslot do
    if self._tj[s] then
      local job, at, n = free_slot(self, s)
      job:_failed(self, at, n, e)
    end
  end
  for job in pairs(self._lazy) do
    job:_failed(self, nil, nil, e)
    self._lazy[job] = nil
    unuse_fid(self, job.fid)
  end
  self._bq, self._bh, self._bt = {}, 1, 0
end

-- Lets go of worker w, which has ended or is ending.
local function close_worker(w)
  w.proc:join()
  w.proc:close()
  w.inbox:close()
  w.alive = false
end

-- Kills the workers and waits for them.
local function kill_workers(self)
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w and w.proc.exitcode == nil then w.proc:kill() end
  end
  for wid = 1, self._n do
    if self._workers[wid] then close_worker(self._workers[wid]) end
  end
  self._workers = {}
end

-- This process no longer collects for the pool.
local function detach(self)
  pools[self] = nil
  core.unwatch(self._outq)
end

-- Stops the pool now: its workers are killed and its unfinished tasks
-- fail with e.
local function stop(self, e)
  self._state = TERMINATE
  kill_workers(self)
  fail_all(self, e)
  detach(self)
end

-- The pool cannot go on: its initializer failed.
local function init_failed(self, e)
  self._init_failed = true
  self._init_error = e
  stop(self, e)
end

-- Takes in every message waiting in the result queue; false if the pool
-- failed.
local function drain(self)
  local outq, workers, buf = self._outq, self._workers, self._rbuf
  while true do
    -- Messages are taken many at a time; those a raising callback leaves
    -- unread stay in the buffer for the next call.
    local i = self._rh
    if i > self._rn then
      if outq:qsize() == 0 then break end
      self._rn, i = outq:_drain(buf), 1
      if self._rn == 0 then break end
    end
    local m = buf[i]
    buf[i], self._rh = nil, i + 1
    if m[1] then
      deliver(self, m)
    elseif m.init_error then
      init_failed(self, errors.new("ProcessError", "the pool's initializer "
        .. "failed in a worker: " .. m.init_error,
        {traceback = m.traceback}))
      return false
    elseif workers[m.w] then
      workers[m.w].ready = true
    end
  end
  return true
end

-- A worker has ended, and its last results are in: settle what it held,
-- replace it.
local function worker_ended(self, w)
  w.alive = false
  local wid = w.id
  local running = self._running[wid]
  self._running[wid] = 0
  local tj, tw, tgen, redo = self._tj, self._tw, self._tgen, {}
  for s = 1, self._nslot do
    if tw[s] == wid and tj[s] then
      if s + SLOTS * tgen[s] == running then
        local job, at, n = free_slot(self, s)
        job:_failed(self, at, n, errors.new("WorkerLostError",
          "the worker running the task died"))
      else
        redo[#redo + 1] = s
      end
    end
  end
  requeue(self, redo) -- the tasks it had not started
  close_worker(w)
  if self._state ~= TERMINATE and not self._init_failed
     and (self._state == RUN or backlog_len(self) > 0 or self._live > 0) then
    new_worker(self, wid)
  else
    self._workers[wid] = nil
  end
end

local function pump(self)
  if not drain(self) then return end
  local reaped = core.reaped()
  if reaped ~= self._reaped then
    self._reaped = reaped
    for wid = 1, self._n do
      local w = self._workers[wid]
      if w and w.proc.exitcode ~= nil then
        -- Its last results may still be in the queue: take them first.
        if not drain(self) then return end
        if self._cfg.initializer and not w.ready then
          -- It ended before its initializer let it start: the same
          -- failure as an initializer that raises, not one to respawn.
          init_failed(self, errors.new("ProcessError", "the pool's "
            .. "initializer ended its worker (exit code "
            .. tostring(w.proc.exitcode) .. ")"))
          return
        end
        worker_ended(self, w)
      end
    end
  end
  if self._state ~= TERMINATE then
    self:_dispatch()
    if self._bt < self._bh and not next(self._lazy) and steal(self) then
      self:_dispatch()
    end
  end
  if self._state == CLOSE then self:_stop_idle() end
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
  local ok, err = pcall(pump, self)
  self._pumping = false
  if not ok then error(err, 0) end
end

-- After close: each worker with nothing left to do gets the stop message.
function Pool:_stop_idle()
  if backlog_len(self) > 0 or next(self._lazy) then return end
  for wid = 1, self._n do
    local w = self._workers[wid]
    if w and not w.stopped and not w.mleft[1] then
      w.stopped = true
      w.inbox:put(false)
    end
  end
end

-- Pumps until done() or the timeout; true if done.  Ctrl-C terminates
-- the pool (its workers are gone at once) and raises.  What the wait
-- itself raises is raised at `level` (1: the caller of the function that
-- calls _wait_until).
function Pool:_wait_until(done, timeout, level)
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
    if #list == 1 and self._live == 0 and done() then return true end
    self._waiting = true
    local ok, err = pcall(core.wait, list, left)
    self._waiting = false
    if not ok then
      if core.is_interrupt(err) then self:terminate() end
      error(err, level + 2)
    end
  end
end

-- ------------------------------------------------------------------- jobs

local EMPTY_ARGS = {n = 0}

local function submit_apply(self, f, args, callback, error_callback, fname)
  checkrunning(self)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  if args ~= nil and type(args) ~= "table" then
    argerror(2, fname, "table expected, got " .. type(args), 2)
  end
  local ok, a = pcall(encode, args or EMPTY_ARGS, "args")
  if not ok then error(a, 3) end
  local fid = fid_of(self, f)
  local res = new_result(self, false, callback, error_callback)
  add_task(self, res, fid, a, APPLY)
  -- While few tasks are out, each goes to a worker's inbox at once, so
  -- that they run even if this process then computes for a long time
  -- without a luamp call; when many pile up they wait for the next pump,
  -- which sends them several to a message.  Now and then take results
  -- in: they free workers for more.
  local nsub = self._nsub + 1
  self._nsub = nsub
  if nsub % PUMP_EVERY == 0 then
    self:_pump()
  elseif self._live <= EAGER * self._n then
    self:_dispatch(EAGER)
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
  checkself(self, Pool, "apply_async")
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

function Map:_done(pool, at, m)
  if self.res._ready then return end
  local n = decode_into(m[3], self.out, at)
  self.left = self.left - 1
  if self.progress then self.progress:step(n, self.left == 0) end
  if self.left == 0 then settle(self.res, true, self.out) end
end

function Map:_failed(pool, at, n, e)
  if self.progress and not self.res._ready then
    io.stderr:write("\n")
  end
  settle(self.res, false, e)
end

-- Takes back the tasks of a map whose input turned out unsendable: those
-- not sent yet (the last ones added) leave the backlog, the others run to
-- no purpose.
local function cancel_map(self, job)
  local bq, tj = self._bq, self._tj
  while self._bt >= self._bh and tj[bq[self._bt]] == job do
    free_slot(self, bq[self._bt])
    bq[self._bt], self._bt = nil, self._bt - 1
  end
  if self._bh > self._bt then self._bh, self._bt = 1, 0 end
  job.res._ready = true -- the caller gets the error, not the result
end

local function submit_map(self, f, iterable, opt, callback, error_callback,
                          fname, star)
  checkrunning(self)
  if not callable(f) then argerror(1, fname, "function expected, got " ..
    type(f), 2) end
  local chunksize, progress = options(opt, fname, 3)
  local next_item, n = iterator(iterable, fname)
  local items = iterable
  if not n then
    items, n = {}, 0
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
  local res = new_result(self, true, callback, error_callback)
  local job = setmetatable({res = res, out = newtable(n, 1),
                            left = (n + chunksize - 1) // chunksize,
                            progress = new_progress(progress, n)}, Map)
  job.out.n = n
  -- Each chunk is sent as soon as it is encoded, so that the workers start
  -- while the rest is being encoded.
  local kind = star and STARCHUNK or CHUNK
  for at = 1, n, chunksize do
    local last = at + chunksize - 1
    if last > n then last = n end
    local ok, a = pcall(encode_slice, items, at, last, "iterable")
    if not ok then
      cancel_map(self, job)
      error(a, 3)
    end
    add_task(self, job, fid, a, kind, at, last - at + 1)
    self:_dispatch()
  end
  if n == 0 then
    use_fid(self, fid) -- no task: the function goes straight to idle
    unuse_fid(self, fid)
    settle(res, true, job.out)
  end
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

-- imap and imap_unordered: input read lazily, results as they come.
local Lazy = {}
Lazy.__index = Lazy

-- Reads the next chunk of the input and adds it as a task.
function Lazy:_more(pool)
  local c, at, n = {}, self.pos + 1, 0
  while n < self.chunksize do
    local ok, more, v = pcall(self.next_item)
    if not ok then -- the input raised: deliver that at its position, as
      -- it was raised
      self.input_error = {at = self.pos + 1, err = more, level = 0}
      self.exhausted = true
      break
    end
    if not more then
      self.exhausted = true
      break
    end
    self.pos = self.pos + 1
    c[self.pos] = v
    n = n + 1
  end
  if n == 0 then return end
  -- c holds the items at their places in the whole input, so that an
  -- unsendable one is named by that place.
  local ok, a = pcall(encode_slice, c, at, at + n - 1, "iterable")
  if not ok then
    -- (the encoder's error has no position: the caller's is given it)
    self.input_error = self.input_error or {at = at, err = a, level = 2}
    self.exhausted = true
    self.pos = at - 1 -- none of this chunk was sent
    return
  end
  self.inflight = self.inflight + 1
  add_task(pool, self, self.fid, a, CHUNK, at, n)
end

function Lazy:_done(pool, at, m)
  self.inflight = self.inflight - 1
  local r = decode(m[3])
  for i = 1, r.n do
    self.results[at + i - 1] = {true, r[i]}
    if not self.ordered then
      self.queue[#self.queue + 1] = at + i - 1
    end
  end
  if self.progress then self.progress:step(r.n) end
end

function Lazy:_failed(pool, at, n, e, k)
  if at == nil then -- the pool failed as a whole
    self.fatal = e
    return
  end
  self.inflight = self.inflight - 1
  -- Every position of the chunk gets an outcome: the error where it was
  -- raised (or, when the worker was lost, at every position), so that
  -- the iteration never waits for results that will not come.
  for i = 1, n do
    local where = at + i - 1
    if k == nil or i == k then
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
  local fid = fid_of(self, f)
  use_fid(self, fid) -- for as long as the input lasts
  local job = setmetatable({
    fid = fid, next_item = next_item, pos = 0,
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
    pool:_wait_until(ready, nil, 1)
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
      local e = job.input_error
      job.input_error = nil
      error(e.err, e.level)
    end
    if job.progress then job.progress:step(0, true) end
    return nil
  end
end

-- for r in pool:imap(f, iterable, [chunksize | options]) do ... end
function Pool:imap(f, iterable, opt)
  checkself(self, Pool, "imap")
  local r = submit_lazy(self, f, iterable, opt, "imap", true)
  return r -- not a tail call: error levels count this frame
end

function Pool:imap_unordered(f, iterable, opt)
  checkself(self, Pool, "imap_unordered")
  local r = submit_lazy(self, f, iterable, opt, "imap_unordered", false)
  return r -- not a tail call: error levels count this frame
end

-- ----------------------------------------------------------- ending a pool

-- pool:close(): no more tasks; the workers leave when the work is done.
function Pool:close()
  checkself(self, Pool, "close")
  if self._state == RUN then
    self._state = CLOSE
    self:_pump()
  end
end

-- pool:terminate(): the workers are stopped now; unfinished tasks fail.
function Pool:terminate()
  checkself(self, Pool, "terminate")
  if self._state == TERMINATE and not next(self._workers) then return end
  stop(self, errors.new("ProcessError", "the pool was terminated"))
  self._outq:close()
end

-- pool:join(): waits for the workers to leave (after close or terminate).
function Pool:join()
  checkself(self, Pool, "join")
  if self._state == RUN then error("Pool is still running", 2) end
  self:_wait_until(function()
    for wid = 1, self._n do
      local w = self._workers[wid]
      if w and w.proc.exitcode == nil then return false end
    end
    return true
  end, nil, 1)
  for wid = 1, self._n do
    if self._workers[wid] then close_worker(self._workers[wid]) end
  end
  self._workers = {}
  detach(self)
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
