-- luamp.pool.jobs -- what a Pool's tasks are for: an AsyncResult (one
-- apply, or a whole map), a Map filling one table from its chunks, a Lazy
-- (imap) reading its input as results come, and the progress line.
--
-- A job hears of its tasks from the scheduler:
--   job:_done(sched, at, n, m)    the task of n items at position `at`
--                                 ended, m its outcome
--                                 (luamp.pool.messages)
--   job:_failed(sched, at, n, e, k)  it failed with error object e (k: the
--                                 item of a chunk that failed, if known);
--                                 at == nil: the pool failed as a whole
-- Callbacks are not run there: settle hands them to sched:defer, which
-- runs them once the scheduler's step is over.

local core = require "luamp.core"
local errors = require "luamp.errors"
local msgs = require "luamp.pool.messages"

local error, format, getmetatable, pcall, setmetatable, tostring, type,
  unpack = error, string.format, getmetatable, pcall, setmetatable,
  tostring, type, table.unpack
local decode, decode_into, is_interrupt, monotonic, newtable = core.decode,
  core.decode_into, core.is_interrupt, core.monotonic, core.newtable
local checkself, checktimeout = errors.checkself, errors.checktimeout

local M = {}

local KIND, VALUES_FIRST, result_message = msgs.KIND, msgs.VALUES_FIRST,
  msgs.result_message

-- Decodes Message m and lets go of it.
local function open(m)
  local ok, v = pcall(decode, m)
  m:close()
  if not ok then error(v, 0) end
  return v
end

-- The error object a failed task's err becomes: a RemoteError with the
-- value raised (when it could be sent and received), and the traceback.
function M.remote_error(err)
  -- A transport's own failure (the broker's): an error of its type.
  if err.type then return errors.new(err.type, err.message, err.fields) end
  local value = err.message
  if err.value then
    local ok, v = pcall(open, err.value)
    if ok then value = v end
  end
  return errors.new("RemoteError", err.message,
                    {value = value, traceback = err.traceback})
end

-- -------------------------------------------------------------- AsyncResult

local AsyncResult = {__name = "luamp.AsyncResult", __send = false}
AsyncResult.__index = AsyncResult
M.AsyncResult = AsyncResult

-- A result's fields are the items of its array: a table of nine items
-- takes half the time and memory of one of nine named fields, and there
-- is one such table for every task an apply_async submits.  The
-- scheduler's board (src/types/board.c) knows these places: it settles an
-- apply's plain results into the record itself, from VALUES on.
local POOL <const>, READY <const>, OK <const>, VALUE <const>, MAP <const>,
  FIRST <const>, LAST <const>, CALLBACK <const>, ERRBACK <const>,
  VALUES <const> = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10

-- A result: of a map, whose VALUE is the table; or of an apply (MAP
-- false), whose VALUE is a table holding the results from index FIRST to
-- LAST (the record itself, when the board settled it), or their Message
-- until they are first needed.  READY once its outcome is in, OK if that
-- is a success; CALLBACK and ERRBACK, or false.  (In a record the board
-- made, what is false here is nil: it reads the same.)
function M.new_result(pool, map, callback, error_callback)
  -- Every item is set here, so that the table never grows; and the place
  -- of the first value, which the board may fill.
  return setmetatable({pool, false, false, false, map, 1, 0,
                       callback or false, error_callback or false, nil},
                      AsyncResult)
end

-- Marks res as settled with nothing: its caller gets an error instead.
function M.abandon(res) res[READY] = true end

-- The values of an apply (a table, and the indexes of the first and the
-- last), decoded now if they were not yet; a value this process cannot
-- receive makes the task fail.
local function apply_values(res)
  local v = res[VALUE]
  if res[OK] and type(v) == "userdata" then
    local ok, t = pcall(open, v)
    if ok then
      res[FIRST], res[LAST] = 1, t.n
      v = t
    else
      res[OK] = false
      v = errors.new("RemoteError", "cannot receive the result of the " ..
                     "task: " .. tostring(t), {value = t})
    end
    res[VALUE] = v
  end
  return v, res[FIRST], res[LAST]
end

-- Runs a result's callback, once the scheduler's step is over.
local function call_back(res)
  local value, first, last = res[VALUE], 1, 0
  if not res[MAP] then value, first, last = apply_values(res) end
  if res[OK] then
    local cb = res[CALLBACK]
    if cb then
      if res[MAP] then cb(value) else cb(unpack(value, first, last)) end
    end
  else
    local cb = res[ERRBACK]
    if cb then cb(value) end
  end
end

-- Settles a result (once) and has its callback run.
local function settle(sched, res, ok, value)
  if res[READY] then return end
  res[READY], res[OK], res[VALUE] = true, ok, value
  if res[CALLBACK] or res[ERRBACK] then sched:defer(call_back, res) end
end
M.settle = settle

-- An apply's result is its own job: its results, in the message (values)
-- or in a Message of their own, decoded when first needed.  (The hot path
-- of every apply_async: settle, inline.)
function AsyncResult:_done(sched, at, n, m)
  if self[READY] then return end
  local count = m[KIND]
  if count >= 0 then -- a values message: its results follow the count
    self[FIRST], self[LAST] = VALUES_FIRST, VALUES_FIRST + count - 1
  else
    m = result_message(m)
  end
  self[READY], self[OK], self[VALUE] = true, true, m
  if self[CALLBACK] or self[ERRBACK] then sched:defer(call_back, self) end
end

function AsyncResult:_failed(sched, at, n, e) settle(sched, self, false, e) end

-- r:ready() -> whether the result has arrived
function AsyncResult:ready()
  checkself(self, AsyncResult, "ready")
  if not self[READY] and self[POOL] then self[POOL]:_pump() end
  return self[READY] == true
end

-- r:successful() -> whether the task returned; raises if not ready
function AsyncResult:successful()
  checkself(self, AsyncResult, "successful")
  if not self:ready() then error("AsyncResult not ready", 2) end
  if not self[MAP] then apply_values(self) end
  return self[OK] == true
end

-- Waits for res as r:wait does, for the method fname; a misuse is raised
-- at `level` (1: the caller of the function that calls wait_result).
local function wait_result(res, timeout, fname, level)
  level = level + 1
  timeout = checktimeout(timeout, 1, fname, level)
  if res[READY] then return true end
  local ready = res[POOL]:_wait_until(function() return res[READY] end,
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
  if getmetatable(self) ~= AsyncResult then
    checkself(self, AsyncResult, "get")
  end
  if not self[READY] and not wait_result(self, timeout, "get", 1) then
    errors.raise("TimeoutError", "the result is not ready after " ..
                 tostring(timeout) .. " s", nil, 2)
  end
  local v = self[VALUE]
  if v == self then -- (settled by the board: its values are its own)
    return unpack(self, self[FIRST], self[LAST])
  end
  if self[OK] and not self[MAP] then
    if type(v) == "table" then return unpack(v, self[FIRST], self[LAST]) end
    local first, last
    v, first, last = apply_values(self)
    if self[OK] then return unpack(v, first, last) end
  end
  if not self[OK] then error(v, 2) end
  return v
end

-- ---------------------------------------------------------------- progress

-- The live progress line, on stderr when it is a terminal.
local Progress = {}
Progress.__index = Progress

function M.new_progress(enabled, total)
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

-- n more done; `final` ends the line (finish).  An ended line is not
-- drawn again.
function Progress:step(n, final)
  if self.over then return end
  self.done = self.done + n
  local now = monotonic()
  if final or now - self.last >= 0.1 then
    self.last = now
    io.stderr:write(self:line())
    if final then
      self.over = true
      io.stderr:write("\n")
    end
    io.stderr:flush()
  end
end

-- Ends the line as it stands: the job is over, done or not (an error, an
-- imap left early).
function Progress:finish()
  self:step(0, true)
end

-- --------------------------------------------------------------------- Map

-- A job of several chunks whose results fill one table: map & co.
local Map = {}
Map.__index = Map

-- A map of `chunks` chunks for AsyncResult res; its table of results is
-- made by new_out and set as `out` before the first outcome comes.
function M.new_map(res, chunks, progress)
  return setmetatable({res = res, out = false, left = chunks,
                       progress = progress}, Map)
end

-- The table of n results, made at its full size.
function M.new_out(n)
  local out = newtable(n, 1)
  out.n = n
  return out
end

function Map:_done(sched, at, n, m)
  local rm = msgs.result_message(m)
  if self.res[READY] then
    rm:close()
    return
  end
  local ok, got = pcall(decode_into, rm, self.out, at)
  rm:close()
  if not ok then
    self:_failed(sched, at, n, errors.new("RemoteError", "cannot receive "
      .. "the result of the task: " .. tostring(got), {value = got}))
    return
  end
  self.left = self.left - 1
  if self.progress then self.progress:step(got, self.left == 0) end
  if self.left == 0 then settle(sched, self.res, true, self.out) end
end

function Map:_failed(sched, at, n, e)
  if self.progress and not self.res[READY] then self.progress:finish() end
  settle(sched, self.res, false, e)
end

-- -------------------------------------------------------------------- Lazy

-- imap and imap_unordered: input read lazily, results as they come.
local Lazy = {}
Lazy.__index = Lazy
M.Lazy = Lazy

-- Each chunk's outcome is kept in `results` at the position of its first
-- item until the iterator takes it: the table of its results (n set), or
-- for a failure {n = n, [FAILED] = the error}, which each of its
-- positions raises.  (The iterator yields a chunk's results from it, with
-- no table or step of the scheduler for each.)
local FAILED = {}
M.FAILED = FAILED

-- (source: a table whose n items are the input, read as it is, in the
-- place of next_item.)
function M.new_lazy(fid, next_item, chunksize, ordered, window, progress,
                    source, n)
  return setmetatable({
    source = source, total = n,
    fid = fid, next_item = next_item, pos = 0, chunksize = chunksize,
    inflight = 0, results = {}, queue = {}, qhead = 1, qtail = 0,
    yielded = 0,
    ordered = ordered, window = window, progress = progress,
  }, Lazy)
end

-- Whether it may read more of its input now: the input is not over and
-- not being read (the input's own luamp calls run the pool meanwhile),
-- and not too much is in flight or waiting to be taken.  Once the pool is
-- closing, results that wait to be taken no longer hold the input back:
-- all of it is work the pool was given, and its workers leave only when
-- that is done, taken or not (as Python's imap, which reads its whole
-- input at once).
function Lazy:wants_more(closing)
  return not self.exhausted and not self.reading
    and self.inflight < self.window
    and (closing or self.pos - self.yielded < self.window * self.chunksize)
end

-- Puts the next chunk's items of the input function in c, at their places
-- in the whole input; self.pos counts them as they come, since the input
-- may raise.
local function fill(self, c)
  local next_item, pos = self.next_item, self.pos
  for _ = 1, self.chunksize do
    local more, v = next_item()
    if not more then
      self.exhausted = true
      return
    end
    pos = pos + 1
    c[pos] = v
    self.pos = pos -- (as it goes: the input may raise)
  end
end

-- Reads the next chunk of the input: a table holding the items at their
-- places in the whole input (so that an unsendable one is named by that
-- place; the source table itself if there is one), the place of the
-- first, and how many; and a Ctrl-C that interrupted the input, for the
-- caller to raise (the input goes on at the next read).  Runs the user's
-- input function: the scheduler calls it outside its step.
function Lazy:read()
  local at = self.pos + 1
  if self.source then
    local n = self.total - self.pos
    if n > self.chunksize then n = self.chunksize end
    self.pos = self.pos + n
    if self.pos == self.total then self.exhausted = true end
    return self.source, at, n
  end
  local c, interrupt = {}, nil
  self.reading = true
  local ok, e = pcall(fill, self, c)
  if not ok and is_interrupt(e) then
    interrupt = e
  elseif not ok then -- the input raised: deliver that at its position, as
    -- it was raised
    self.input_error = {at = self.pos + 1, err = e, level = 0}
    self.exhausted = true
  end
  self.reading = false
  return c, at, self.pos - at + 1, interrupt
end

-- A chunk it read could not be encoded: the input ends there.
function Lazy:unsendable(at, err)
  -- (the encoder's error has no position: the caller's is given it)
  self.input_error = self.input_error or {at = at, err = err, level = 2}
  self.exhausted = true
  self.pos = at - 1 -- none of this chunk was sent
end

-- imap_unordered: the chunk at position `at` has its outcome, to be
-- yielded after those before it in the queue.  The queue's ends are
-- counted, since the iterator clears the positions it has taken (so that
-- an endless input keeps none of them) and `#` cannot find the end past
-- that gap.
local function queue(self, at)
  local t = self.qtail + 1
  self.queue[t], self.qtail = at, t
end

function Lazy:_done(sched, at, n, m)
  local ok, r = pcall(open, msgs.result_message(m))
  if not ok then
    self:_failed(sched, at, n, errors.new("RemoteError", "cannot receive "
      .. "the result of the task: " .. tostring(r), {value = r}))
    return
  end
  self.inflight = self.inflight - 1
  self.results[at] = r
  if not self.ordered then queue(self, at) end
  if self.progress then self.progress:step(r.n) end
end

function Lazy:_failed(sched, at, n, e, k)
  if at == nil then -- the pool failed as a whole
    self.fatal = e
    return
  end
  self.inflight = self.inflight - 1
  -- Every position of the chunk raises the error (the one it was raised
  -- at, k, and the others, whose results did not come back), so that the
  -- iteration never waits for results that will not come.
  self.results[at] = {n = n, [FAILED] = e}
  if not self.ordered then queue(self, at) end
end

return M
