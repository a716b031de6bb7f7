-- luamp.pool.scheduler -- a Pool's work, over a transport: the tasks in
-- slots, the backlog of those not sent, the batches sent to each worker,
-- taking work back from a busy worker for an idle one, the workers' lives
-- and deaths, and the outcomes that reach the jobs.
--
-- The owner keeps every task until its outcome is in.  It sends each
-- worker its own batches (a few tasks at a time) and each worker sends the
-- outcome of each task as soon as it ends, so when a worker dies the
-- owner knows where it was: the tasks whose outcomes came are done; the
-- one it was running fails with WorkerLostError; the rest, which it never
-- started, go to other workers; and a new worker takes its place.
--
-- The books of the tasks are kept in C, on a board (luamp.core.Board):
-- each task in a slot, a small number that is reused, so that a task costs
-- no table of its own; the backlog of those not sent; each worker's
-- batches in flight.  A task travels as its id, which the board makes so
-- that a slot's new task is never taken for its old one.
--
-- One step at a time.  Every change to this state happens inside
-- `locked`, which one step at a time may hold: a luamp call made during a
-- step (a finalizer's, say) runs the Pools' work, and this pool's is then
-- skipped, not run inside its own step.  No user code runs inside a step:
-- callbacks are deferred to after it, input functions (imap) are read
-- between steps, a job at a time.
--
-- Nor does Ctrl-C cut a step: it holds the interrupt (the waits it makes
-- go on, a worker's join say), which is raised once the step is over.
-- The bookkeeping between steps, in this module and the others of the
-- Pool, is not cut either: the runtime raises no interrupt in their code
-- (core.c), but in the caller's once the pool's call returns, or in a
-- callback or input function as it is called, or in a wait of the pool's.
-- So that a callback is not lost to an interrupt raised as it is called,
-- the deferred work raises a waiting interrupt before it takes the next.

local core = require "luamp.core"
local errors = require "luamp.errors"
local msgs = require "luamp.pool.messages"
local jobs = require "luamp.pool.jobs"

local assert, error, ipairs, next, pairs, pcall, setmetatable, tostring =
  assert, error, ipairs, next, pairs, pcall, setmetatable, tostring
local message_slice = core.message_slice
local hold_interrupt, release_interrupt, interrupt_point =
  core.hold_interrupt, core.release_interrupt, core.interrupt_point
local ID, KIND, FAILURE = msgs.ID, msgs.KIND, msgs.FAILURE

local DEPTH = 2       -- batches in flight per worker
local MAXBATCH = 64   -- tasks in one batch, when many are waiting

local S = {}
S.__index = S

local M = {}

M.RUN, M.CLOSE, M.TERMINATE = "RUN", "CLOSE", "TERMINATE"
local RUN = M.RUN

-- A scheduler for n workers over transport t, with function cache funcs.
function M.new(t, funcs, cfg, n)
  return setmetatable({
    t = t, funcs = funcs, cfg = cfg, n = n, state = M.RUN,
    -- the functions an apply may be submitted with in one call (S:apply):
    -- those the function cache knows by identity, unless the transport
    -- checks what it sends
    quick = t.check and {} or funcs.cache,
    workers = {}, lazy = {},
    board = core.Board(n),
    -- what batches carried, by serial: {worker, {[fid] = Message}}
    carried = {},
    -- outcomes taken in, and the next to read; what the board says of
    -- the outcomes it settled itself
    rbuf = {}, rh = 1, rn = 0, rserials = {}, runused = {},
    -- work for after the step: callbacks, in order
    dq = {}, dh = 1, dt = 0,
    busy = false,
    starved = false, -- at the last step, every worker had done all it had
  }, S)
end

-- Runs f(self, ...) as one step: nothing else changes the scheduler
-- meanwhile, and Ctrl-C waits for its end.  Returns false (and does
-- nothing) if a step is under way.
local function locked(self, f, ...)
  if self.busy then return false end
  self.busy = true
  hold_interrupt()
  local ok, e = pcall(f, self, ...)
  release_interrupt()
  self.busy = false
  if not ok then error(e, 0) end
  return true
end
M.locked = locked

-- ---------------------------------------------------------------- workers

-- Starts worker wid; raises the transport's error if it cannot.
local function start_worker(self, wid)
  self.t:start(wid)
  self.workers[wid] = {id = wid, sent = 0} -- sent: tasks, for its quota
end

function S:start_all()
  for wid = 1, self.n do start_worker(self, wid) end
end

-- ------------------------------------------------------------------ slots

local dispatch

-- Adds a task at the end of the backlog.  With depth, then sends work to
-- the workers as dispatch(depth) does.
function S:add(job, fid, args, kind, at, n, depth)
  local _, _, first = self.board:add(job, fid, args, kind, at, n)
  if first then self.funcs:activate(fid) end
  if depth then dispatch(self, depth) end
end

-- Adds a task between steps; with at most `limit` tasks on the board,
-- then sends work as dispatch(depth) does (a step of its own).  False if
-- a step is under way.  Adding needs no `locked`: the board is whole
-- whenever a finalizer may run.
function S:submit(job, fid, args, kind, limit, depth)
  if self.busy then return false end
  local _, live, first = self.board:add(job, fid, args, kind)
  if first then self.funcs:activate(fid) end
  if live <= limit then return locked(self, dispatch, depth) end
  return true
end

-- Submits an apply of function f to `args` in one call to the board,
-- which encodes the arguments, makes the result's record (an AsyncResult,
-- of metatable mt, for `pool`) and adds the task; then, with at most
-- `limit` tasks on the board, sends work as dispatch(depth) does.
-- Returns the record; nil, having done nothing, unless f is a function
-- the function cache knows by identity, the pool runs, no step is under
-- way, this process is the pool's, its transport has no check, and no
-- other apply ran while the arguments were encoded (a metamethod's, a
-- finalizer's): the caller then takes the general way (submit).
-- Arguments that are not a table (fname's argument 2) or cannot be sent
-- raise at `level`, as error(e, level) in the caller would.  Nothing
-- here needs `locked`: the board is whole whenever its allocations may
-- run a finalizer (before the task is added).
function S:apply(mt, pool, f, args, callback, errback, limit, depth, fname,
                 level)
  local fid = self.quick[f]
  if not fid or self.state ~= RUN or self.busy then return nil end
  local res, live, first = self.board:apply(mt, pool, fid, args, callback,
                                            errback, fname, level + 1)
  if not res then return nil end -- (a fork's, or another apply meanwhile)
  if first then self.funcs:activate(fid) end
  if live <= limit then locked(self, dispatch, depth) end
  return res
end

-- A use of function fid other than a task's (a map, a lazy job) begins.
function S:use(fid)
  if self.board:use(fid) then self.funcs:activate(fid) end
end

-- ... and ends.
function S:unuse(fid)
  if self.board:unuse(fid) then self.funcs:release(fid) end
end

-- Empties slot s; returns the job, position and size of its task.
local function free_slot(self, s)
  local job, at, n, unused = self.board:free(s)
  if unused then self.funcs:release(unused) end
  return job, at, n
end

function S:backlog() return self.board:backlog() end

-- Takes back the tasks of a job not sent yet (the last ones added), as
-- when the input of a map turns out unsendable.
function S:cancel(job)
  local fids = self.board:cancel(job)
  for i = 1, #fids do self.funcs:release(fids[i]) end
end

-- --------------------------------------------------------------- sending

-- Sends one batch to worker w; false when there is nothing to send.
local function send_one(self, w, nw)
  local board = self.board
  local left = board:backlog()
  if left == 0 then return false end
  local quota = self.cfg.maxtasksperchild
  local want = quota and quota - w.sent or self.cfg.batch or MAXBATCH
  if want <= 0 then return false end
  local even = (left - 1 + nw * DEPTH) // (nw * DEPTH)
  if want > even then want = even end
  if want > MAXBATCH then want = MAXBATCH end
  local wid, funcs = w.id, self.funcs
  local ids, fids, args, kinds, serial, used = board:take(wid, want)
  if not ids then return false end
  local carried
  for i = 1, #used do -- (each function once, when tasks in a row share it)
    local fid = used[i]
    local fm = funcs:for_worker(wid, fid)
    if fm then
      carried = carried or {}
      carried[fid] = fm
    end
  end
  w.sent = w.sent + #ids
  if carried then self.carried[serial] = {wid, carried} end
  local drops = funcs:take_drops(wid)
  local sent, e = self.t:send(wid, msgs.batch(ids, fids, args, kinds,
                                              carried, drops))
  if sent == false then
    -- The batch did not leave (the arena is full): the books go back to
    -- what they were, as when a batch is taken back, and its tasks fail
    -- with the reason, as a task whose result cannot be sent back does,
    -- rather than wait on this worker for good.
    funcs:untake_drops(wid, drops)
    board:untake(wid, ids[1])
    self.carried[serial] = nil
    w.sent = w.sent - #ids
    local err = errors.new("RemoteError", "cannot send the task: "
                           .. tostring(e), {value = e})
    for i = 1, #ids do
      local job, at, n = free_slot(self, board:slot(ids[i]))
      job:_failed(self, at, n, err)
    end
    return false
  end
  return true
end

-- When the backlog is empty but a worker is idle while another has a
-- batch waiting behind the one it runs, that batch is taken back from the
-- busy worker (if it has not taken it yet) and its tasks go to the front
-- of the backlog: so no task waits behind a long one while a worker has
-- nothing to do.  True if it took one.
local function steal(self)
  local board = self.board
  local victim, most, idle = nil, 1, false
  for wid = 1, self.n do
    local w = self.workers[wid]
    if w and not w.dead and not w.stopped then
      local k = board:inflight(wid)
      if k == 0 then idle = true elseif k > most then victim, most = w, k end
    end
  end
  if not idle or not victim then return false end
  local b = self.t:take_back(victim.id)
  if not b then return false end -- it took it first
  -- The worker never saw this batch: its drops are still to send, and
  -- the functions it carried are not known there.
  self.funcs:untake_drops(victim.id, b.drop)
  local serial = board:untake(victim.id, b.id[1])
  if serial then self.carried[serial] = nil end
  victim.sent = victim.sent - #b.id
  local slots = {}
  for i, id in ipairs(b.id) do slots[i] = board:slot(id) end
  -- The batch taken back holds its arguments' Message: the board keeps
  -- them still.
  b.a:close()
  if b.funcs then for _, fm in pairs(b.funcs) do fm:close() end end
  board:requeue(slots)
  return true
end

-- Sends work to the workers that have room: level by level, so that an
-- idle worker gets a batch before a busy one gets its second.  With
-- depth 1, only to idle workers.
function dispatch(self, depth)
  local nw, workers = self.n, self.workers
  for level = 1, depth or DEPTH do
    for wid = 1, nw do
      local w = workers[wid]
      if w and not w.dead and not w.stopped
         and self.board:inflight(wid) < level then
        if not send_one(self, w, nw) then return end
      end
    end
  end
end

function S:dispatch(depth) return locked(self, dispatch, depth) end

-- How many tasks one dispatch can send at most.
function S:room() return self.n * DEPTH * MAXBATCH end

-- The same, inside a step already under way.
S.dispatch_now = dispatch

-- ---------------------------------------------------------------- outcomes

-- The first outcome of batch `serial` has come: the worker has read it,
-- functions and all.
local function batch_read(self, serial)
  local c = self.carried[serial]
  if c then
    self.carried[serial] = nil
    self.funcs:known_by(c[1], c[2])
  end
end

-- The outcome m of one task reaches its job.
local function deliver(self, m)
  local job, at, n, unused, serial = self.board:done(m[ID])
  if not job then return end
  if serial then batch_read(self, serial) end
  if unused then self.funcs:release(unused) end
  if m[KIND] == FAILURE then
    local err, k = msgs.failure_error(m)
    if at and at > 1 and type(err) == "table"
       and type(err.message) == "string" then
      -- A chunk's worker counts its results from 1; the input, from at.
      err.message = err.message:gsub("^cannot send result%[(%d+)%]",
        function(i) return "cannot send result[" .. at + i - 1 .. "]" end, 1)
    end
    job:_failed(self, at, n, jobs.remote_error(err), k)
  else
    job:_done(self, at, n, m)
  end
end

-- Worker wid is gone: what its batches in flight carried is forgotten.
local function forget_worker(self, wid)
  local serials = self.board:forget(wid)
  for i = 1, #serials do self.carried[serials[i]] = nil end
  self.t:forget(wid)
  self.funcs:forget_worker(wid)
end

local function fail_all(self, e)
  local board = self.board
  for _, s in ipairs(board:slots()) do
    local job, at, n = free_slot(self, s)
    job:_failed(self, at, n, e)
  end
  for job in pairs(self.lazy) do
    job:_failed(self, nil, nil, e)
    self.lazy[job] = nil
    self:unuse(job.fid)
  end
  board:clear_backlog()
end

-- Lets go of the workers, which have left or are leaving (waits for them).
local function release_workers(self)
  for wid = 1, self.n do
    if self.workers[wid] then forget_worker(self, wid) end
  end
  self.workers = {}
end
S.release_workers = release_workers

-- Kills the workers and waits for them.
local function kill_workers(self)
  for wid = 1, self.n do
    if self.workers[wid] then self.t:kill(wid) end
  end
  release_workers(self)
end

-- Stops the pool now: its workers are killed and its unfinished tasks
-- fail with e.
local function stop(self, e)
  self.state = M.TERMINATE
  kill_workers(self)
  fail_all(self, e)
end

function S:stop(e) return locked(self, stop, e) end

-- The pool cannot go on: its initializer failed.
local function init_failed(self, e)
  self.init_error = e
  stop(self, e)
end

-- Takes in every message the workers sent; false if the pool failed.
local function drain(self)
  local workers, buf = self.workers, self.rbuf
  while true do
    local i = self.rh
    if i > self.rn then
      local serials, unused = self.rserials, self.runused
      local n, ns, nu = self.t:collect(buf, self.board, serials, unused)
      for k = 1, ns or 0 do
        batch_read(self, serials[k])
        serials[k] = nil
      end
      for k = 1, nu or 0 do
        self.funcs:release(unused[k])
        unused[k] = nil
      end
      self.rn, i = n, 1
      if n == 0 then break end
    end
    local m = buf[i]
    buf[i], self.rh = nil, i + 1
    if m[ID] ~= nil then -- msgs.is_outcome(m)
      deliver(self, m)
    elseif msgs.is_init_failure(m) then
      init_failed(self, errors.new("ProcessError", "the pool's initializer "
        .. "failed in a worker: " .. m.init_error,
        {traceback = m.traceback}))
      return false
    elseif workers[msgs.worker_of(m)] then
      workers[msgs.worker_of(m)].ready = true
    end
  end
  return true
end

-- Inside a step already under way: takes in the outcomes that came and
-- sends the workers more work, so that a long step (the encoding of a
-- map's chunks) keeps them busy.  False if the pool failed.
function S:collect_now()
  if not drain(self) then return false end
  dispatch(self)
  return true
end

-- A worker has ended, and its last outcomes are in: settle what it held,
-- replace it.
local function worker_ended(self, w)
  local wid = w.id
  local running, board, redo = self.t:running(wid), self.board, {}
  for _, s in ipairs(board:slots(wid)) do
    if board:id(s) == running then
      local job, at, n = free_slot(self, s)
      job:_failed(self, at, n, errors.new("WorkerLostError",
        "the worker running the task died"))
    else
      redo[#redo + 1] = s
    end
  end
  board:requeue(redo) -- the tasks it had not started
  forget_worker(self, wid)
  self.workers[wid] = nil
  if self.state ~= M.TERMINATE and not self.init_error
     and (self.state == M.RUN or self:backlog() > 0
          or self.board:live() > 0) then
    start_worker(self, wid)
  end
end

-- After close: each worker with nothing left to do is told to leave.
local function stop_idle(self)
  if self:backlog() > 0 or next(self.lazy) then return end
  for wid = 1, self.n do
    local w = self.workers[wid]
    if w and not w.stopped and self.board:inflight(wid) == 0 then
      w.stopped = true
      self.t:stop(wid)
    end
  end
end

-- One step: collects outcomes, notices dead workers, sends more work.
local function step(self)
  if self.state == M.TERMINATE then return end
  if not drain(self) then return end
  -- Every worker has sent the outcomes of all it was sent: the workers
  -- wait for this process.
  self.starved = self.board:starved()
  if self.t:ended() then
    for wid = 1, self.n do
      local w = self.workers[wid]
      if w and self.t:exitcode(wid) ~= nil then
        -- Its last outcomes may still be waiting: take them first.
        if not drain(self) then return end
        if self.cfg.initializer and not w.ready then
          -- It ended before its initializer let it start: the same
          -- failure as an initializer that raises, not one to respawn.
          init_failed(self, errors.new("ProcessError", "the pool's "
            .. "initializer ended its worker (exit code "
            .. tostring(self.t:exitcode(wid)) .. ")"))
          return
        end
        worker_ended(self, w)
      end
    end
  end
  dispatch(self)
  if self.board:backlog() == 0 and steal(self) then dispatch(self) end
  if self.state == M.CLOSE then stop_idle(self) end
end

-- ------------------------------------------------------------ after a step

-- Has f(arg) run once the step under way is over (in order).
function S:defer(f, arg)
  local dt = self.dt + 1
  self.dq[dt], self.dt = {f, arg}, dt
end

-- Runs what steps deferred.  A callback that raises leaves the rest for
-- the next run; one that calls into the pool finds it between steps.  A
-- Ctrl-C that waits is raised before the next is taken.
local function run_deferred(self)
  while self.dh <= self.dt do
    interrupt_point()
    local d = self.dq[self.dh]
    self.dq[self.dh], self.dh = nil, self.dh + 1
    if self.dh > self.dt then self.dh, self.dt = 1, 0 end
    d[1](d[2])
  end
end

-- Reads more of each lazy job's input (outside any step: the input is the
-- user's), and adds what it read as tasks.  True if it added any, or an
-- input ended: the step after it has tasks to send, or, on a closed pool,
-- idle workers to let go.  A Ctrl-C that interrupted the input is raised
-- once what was read before it is added.
local function refill(self)
  local changed = false
  for job in pairs(self.lazy) do
    while self.state ~= M.TERMINATE and job:wants_more(self.state == M.CLOSE)
    do
      local items, at, n, interrupt = job:read()
      if n > 0 then
        local ok, am = pcall(message_slice, items, at, at + n - 1,
                             "iterable")
        if ok then
          job.inflight = job.inflight + 1
          -- (between steps: nothing can hold the lock here)
          assert(locked(self, S.add, job, job.fid, am, msgs.CHUNK, at, n))
          changed = true
        else
          job:unsendable(at, am)
        end
      end
      if interrupt then error(interrupt, 0) end
    end
    if job.exhausted and self.lazy[job] then
      self.lazy[job] = nil
      self:unuse(job.fid)
      changed = true
    end
  end
  return changed
end

-- The Pool's work, done whenever the owner is in a luamp call: one step,
-- the callbacks it deferred, more input for lazy jobs, and a step to send
-- it.  Does nothing inside a step of its own.  Never blocks, unless a
-- callback or an input does.
function S:pump()
  if self.busy then return end
  locked(self, step)
  run_deferred(self)
  if next(self.lazy) and refill(self) then locked(self, step) end
  run_deferred(self)
end

-- Adds lazy job `job` (imap), which reads its input as its results are
-- taken.
function S:add_lazy(job)
  self:use(job.fid) -- for as long as the input lasts
  self.lazy[job] = true
end

function S:close()
  self.state = M.CLOSE
end

-- Whether every worker has left (after close or terminate).
function S:all_left()
  for wid = 1, self.n do
    if self.workers[wid] and self.t:exitcode(wid) == nil then return false end
  end
  return true
end

return M
