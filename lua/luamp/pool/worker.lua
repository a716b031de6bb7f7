-- luamp.pool.worker -- the loop of a Pool's worker: takes batches of
-- tasks, runs them, sends back the outcome of each as soon as it ends.  It
-- knows nothing of how the batches come and go: a transport gives it
--   io.get()          the next batch (luamp.pool.messages), or STOP
--   io.put(m)         sends a message to the owner
--   io.running(id)    says which task it runs now (0: none)
--   io.idle()         (optional) true when no batch is waiting
--   io.put_values(id, n, ...)  (optional) sends an apply's plain results:
--                     the message msgs.values makes, with no table
--   io.owns           true if io.put keeps the Messages of what it is
--                     given (else they are let go of once it returns)

local core = require "luamp.core"
local errors = require "luamp.errors"
local msgs = require "luamp.pool.messages"

local ipairs, pairs, pcall, tonumber, tostring, type, xpcall =
  ipairs, pairs, pcall, tonumber, tostring, type, xpcall
local pack, select, unpack = table.pack, select, table.unpack
local traceback = debug.traceback
local message, message_slice, decode, decode_into, flush =
  core.message, core.message_slice, core.decode, core.decode_into,
  core.flush
local APPLY, STARCHUNK = msgs.APPLY, msgs.STARCHUNK

local M = {}

local PLAIN_MAX = 8 -- results sent as they are, not in a Message of their own

local errtext = errors.text

-- A task's error as it travels back: its text, the worker's traceback,
-- and the value itself when it can be sent.
local function task_error(e, tb)
  local ok, m = pcall(message, e)
  return {message = errtext(e), traceback = tb, value = ok and m or nil}
end

local last_tb -- the traceback of the last error a task raised
local function on_error(e)
  last_tb = traceback(errtext(e), 2)
  return e
end

-- Whether values this worker let go of may hold shared objects: it then
-- collects its garbage before it waits for more work, so that an idle
-- worker does not keep alive what the owner has dropped.
local holds = false

-- Notes whether the Message m names shared objects; returns m.
local function note(m)
  if not holds and m:objects() > 0 then holds = true end
  return m
end

-- Decodes the Message m and lets go of it: the objects it names are held
-- by the values now.
local function open(m)
  local v = decode(note(m))
  m:close()
  return v
end

-- Whether all its arguments are plain values: nil, booleans, numbers,
-- strings.
local function plain(...)
  for i = 1, select("#", ...) do
    local t = type((select(i, ...)))
    if t ~= "number" and t ~= "string" and t ~= "boolean" and t ~= "nil" then
      return false
    end
  end
  return true
end

-- An apply's outcome: its results as they are when they are a few plain
-- values, else in a Message, so that a value the owner cannot receive
-- fails this task alone.  Plain results go straight from the call when
-- the transport can put them so (io.put_values, which makes no table),
-- flushed first as send does; nothing is returned then.
local function outcome(io, id, ok, ...)
  if not ok then return msgs.failure(id, task_error((...), last_tb)) end
  local n = select("#", ...)
  if n <= PLAIN_MAX and plain(...) then
    local put = io.put_values
    if not put then return msgs.values(pack(id, true, ...)) end
    flush()
    local sent, err = pcall(put, id, n, ...) -- (msgs.values' message)
    if sent then return nil end
    return msgs.failure(id, {message = "cannot send the outcome of the " ..
                                       "task: " .. errtext(err)})
  end
  -- The results alone, so that the path of a bad one counts from them.
  local sent, rm = pcall(message_slice, pack(...), 1, n, "result")
  if sent then return msgs.result(id, note(rm)) end
  return msgs.failure(id, {message = "cannot send the result of the task: "
                                     .. errtext(rm)})
end

-- f(args...), args spread under the protection of the caller's xpcall:
-- an `n` unpack refuses fails the task, not the worker.
local function spread(f, args)
  local n = args.n
  if n == nil then return f(unpack(args, 1, #args)) end
  if math.type(n) ~= "integer" or n < 0 then
    error("the arguments' n must be a count (an integer from 0), not "
          .. tostring(n), 0)
  end
  return f(unpack(args, 1, n))
end

-- Runs an apply: its outcome, or nothing if it sent it.
local function run_apply(io, id, f, am)
  return outcome(io, id, xpcall(spread, on_error, f, open(am)))
end

-- A chunk's items and results, in tables the worker keeps from chunk to
-- chunk: their memory stays the process's, where fresh tables would fault
-- in fresh pages for every chunk.  Emptied after each, so that they hold
-- no value (and no shared object) between chunks.
local chunk_args, chunk_out = {}, {}

local function empty(t, n)
  for i = 1, n do t[i] = nil end
end

-- Runs a chunk of a map: the first result of each item (holes kept) in a
-- Message, or the failure of item k.
local function run_chunk(id, f, am, star)
  local args, out = chunk_args, chunk_out
  local decoded, n = pcall(decode_into, note(am), args, 1)
  am:close()
  if not decoded then
    chunk_args = {} -- what it decoded before it failed goes with the table
    error(n, 0)
  end
  local at = 0
  -- One protected call for the whole chunk: `at` says which item failed.
  local ok, e = xpcall(function()
    local f, args, out = f, args, out -- locals, not upvalues, per item
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
  empty(args, n)
  if not ok then
    empty(out, n)
    return msgs.failure(id, task_error(e, last_tb), at)
  end
  local sent, rm = pcall(message_slice, out, 1, n, "result")
  empty(out, n)
  if sent then return msgs.result(id, note(rm)) end
  return msgs.failure(id, {message = errtext(rm)},
                      tonumber(rm:match("^cannot send result%[(%d+)%]")))
end

-- Sends a task's outcome, and lets go of its Messages, which the message
-- sent holds for itself; an outcome that cannot be sent (the arena is
-- full) still reaches the caller, as an error that says why.  What the
-- task printed is flushed first: once its outcome is in, the pool may end
-- the worker at any moment.
local function send(io, m)
  flush()
  local ok, err = pcall(io.put, m)
  if not ok then
    io.put(msgs.failure(msgs.task_id(m), {message = "cannot send the " ..
                        "outcome of the task: " .. errtext(err)}))
  end
  if io.owns then return end
  if msgs.is_failure(m) then
    local e = msgs.failure_error(m)
    if e.value then e.value:close() end
  elseif not msgs.is_values(m) then
    msgs.result_message(m):close()
  end
end

-- The worker's life: the initializer, then batches until STOP or its
-- quota of tasks.  Its output is flushed after every task, so that nothing
-- it printed is lost when the pool ends it.
function M.run(cfg, wid, io)
  core.set_service(nil) -- the owner's pools are not ours
  -- Most of what a worker makes dies with its task (the arguments, the
  -- results, their tables): a generational collector frees it young, at a
  -- fraction of an incremental cycle's cost, and keeps the heap, and so
  -- the pages the worker writes, near what lives.  An initializer may
  -- choose otherwise.  It starts afresh: the fork's copy of the owner's
  -- collector may have put its next collection off until the heap grows
  -- by as much again (after one that freed little), which the worker
  -- would spend in fresh pages of its own.  Setting the mode forgets
  -- that, and a step collects what the owner left young and sets the
  -- next collection at a fifth of the heap.
  collectgarbage("generational")
  collectgarbage("step")
  if cfg.initializer then
    local ia = cfg.initargs or {}
    local ok, e = xpcall(cfg.initializer, on_error,
                         unpack(ia, 1, ia.n or #ia))
    flush()
    if not ok then
      io.put(msgs.init_failed(wid, errtext(e), last_tb))
      return
    end
    io.put(msgs.ready(wid))
  end
  local funcs, done, maxt = {}, 0, cfg.maxtasksperchild
  while true do
    if holds and (io.idle == nil or io.idle()) then
      holds = false
      collectgarbage()
    end
    local b = io.get()
    if msgs.is_stop(b) then break end
    if b.drop then
      for _, fid in ipairs(b.drop) do funcs[fid] = nil end
      holds = true -- its upvalues, maybe
    end
    -- A function comes with every batch sent before this worker was
    -- heard to have it; the copy it has stays, with what its tasks left
    -- in its upvalues.
    if b.funcs then
      for fid, fm in pairs(b.funcs) do
        if funcs[fid] == nil then funcs[fid] = open(fm) else fm:close() end
      end
    end
    done = done + M.run_batch(b, funcs, io)
    if maxt and done >= maxt then break end
  end
end

-- Runs the tasks of batch b in order, each with its function funcs[fid],
-- sending each outcome through io as soon as it is known; returns how
-- many tasks it ran.
function M.run_batch(b, funcs, io)
  local ids, fids, kinds = b.id, b.f, b.k
  -- (several tasks: a Message of a Message each; one: its Message)
  local args = #ids == 1 and {b.a} or open(b.a)
  for i = 1, #ids do
    local id, kind = ids[i], kinds[i]
    io.running(id)
    if kind == APPLY then
      local m = run_apply(io, id, funcs[fids[i]], args[i])
      if m then send(io, m) end
    else
      send(io, run_chunk(id, funcs[fids[i]], args[i], kind == STARCHUNK))
    end
  end
  io.running(0)
  return #ids
end

return M
