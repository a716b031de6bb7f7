-- luamp.pool.local -- the local transport of a Pool: workers are forks of
-- the owner, each with an inbox queue in the arena; all put their messages
-- on one result queue; each says in a shared array which task it runs.
--
-- A transport is what the scheduler (luamp.pool.scheduler) talks to its
-- workers through; its whole interface:
--   T.new(cfg, n)           a transport for n workers (cfg: initializer,
--                           initargs, maxtasksperchild)
--   t:start(wid)            starts worker wid (raises if it cannot)
--   t:send(wid, batch)      sends a batch of tasks to worker wid; false
--                           and the error if it could not, having kept
--                           nothing of it
--   t:take_back(wid)        takes back the oldest batch wid has not begun
--                           reading, or nil
--   t:stop(wid)             wid leaves once the work sent is done
--   t:collect(buf, [board, serials, unused])
--                           -> n, [ns, nu]: the messages the workers
--                           sent, now in buf[1..n]; never blocks.  With
--                           a board, the outcomes it can settle itself
--                           are settled there (board:settle), not put in
--                           buf; a transport may ignore it
--   t:ended()               -> whether any worker may have ended since the
--                           last call (cheap)
--   t:exitcode(wid)         nil while wid runs
--   t:running(wid)          the id of the task wid runs (0: none), read
--                           once it has ended
--   t:forget(wid)           lets go of ended worker wid
--   t:kill(wid)             ends wid now
--   t:waitables(list)       appends what mp.wait may sleep on to hear of
--                           the workers (a message, an end)
--   t:close()               lets go of it all (the workers are gone)

local core = require "luamp.core"
local msgs = require "luamp.pool.messages"
local process = require "luamp.process"
local worker = require "luamp.pool.worker"

local error, pcall, setmetatable = error, pcall, setmetatable

local T = {}
T.__index = T

local counter = 0 -- workers made by this process, for their names

function T.new(cfg, n)
  local ok, running = pcall(core.Array, "q", n, false)
  if not ok then error(running, 0) end
  local t = setmetatable({cfg = cfg, n = n, outq = core.Queue(),
                          running_ = running, workers = {},
                          reaped = core.reaped()}, T)
  -- A message wakes the owner whatever it waits for, so its callbacks
  -- run during mp.sleep or a lock's acquire too.
  core.watch(t.outq)
  return t
end

-- The worker's end of it: its batches, its messages, where it is.
local function worker_io(inbox, outq, running, wid)
  return {
    get = function() return inbox:get() end,
    idle = function() return inbox:qsize() == 0 end,
    put = function(m) outq:put(m) end,
    -- msgs.values' message, put from its parts: id, count, results
    put_values = function(...) outq:_put_values(...) end,
    running = function(id) running[wid] = id end,
  }
end

function T:start(wid)
  counter = counter + 1
  local inbox = core.Queue()
  local cfg, outq, running = self.cfg, self.outq, self.running_
  local p = process.Process{
    target = function() worker.run(cfg, wid, worker_io(inbox, outq,
                                                       running, wid)) end,
    name = "PoolWorker-" .. counter,
    daemon = true,
  }
  if cfg.start_method then p._start_method = cfg.start_method end
  running[wid] = 0
  local ok, e = pcall(p.start, p)
  if not ok then
    inbox:close()
    error(e, 0)
  end
  self.workers[wid] = {proc = p, inbox = inbox}
end

-- (A full arena is the error: the inbox is left as it was.)
function T:send(wid, batch)
  local inbox = self.workers[wid].inbox
  local ok, e = pcall(inbox.put, inbox, batch) -- (e names no line here)
  if not ok then
    if core.is_interrupt(e) then error(e, 0) end
    return false, e
  end
end

function T:take_back(wid)
  local inbox = self.workers[wid].inbox
  local ok, b = pcall(inbox.get, inbox, false)
  if ok and b then return b end
end

function T:stop(wid) self.workers[wid].inbox:put(msgs.STOP) end

function T:collect(buf, board, serials, unused)
  if self.outq:qsize() == 0 then return 0 end
  if board then return board:settle(self.outq, buf, serials, unused) end
  return self.outq:_drain(buf)
end

function T:ended()
  local reaped = core.reaped()
  if reaped == self.reaped then return false end
  self.reaped = reaped
  return true
end

function T:exitcode(wid) return self.workers[wid].proc.exitcode end

function T:running(wid) return self.running_[wid] end

function T:forget(wid)
  local w = self.workers[wid]
  w.proc:join()
  w.proc:close()
  w.inbox:close()
  self.running_[wid] = 0
  self.workers[wid] = nil
end

function T:kill(wid)
  local p = self.workers[wid].proc
  if p.exitcode == nil then p:kill() end
end

function T:waitables(list)
  list[#list + 1] = self.outq
  for wid = 1, self.n do
    local w = self.workers[wid]
    if w then list[#list + 1] = w.proc.sentinel end
  end
  return list
end

function T:close()
  core.unwatch(self.outq)
  self.outq:close()
end

return T
