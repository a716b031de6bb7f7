-- luamp.pool.remote -- the broker transport of a Pool: its workers are
-- `luamp worker` processes on any host that reach the same Redis, and the
-- scheduler (luamp.pool.scheduler) talks to them as to local ones.
--
-- The scheduler sees `n` workers (the pool's `processes`), each taking
-- batches of tasks as a local worker would; here each batch becomes one
-- entry of the pool's task stream, sealed (luamp.broker), which whatever
-- worker has a free executor takes.  The outcomes of a batch come back in
-- one entry of the result stream, which this transport reads with a
-- blocking XREAD on a connection of its own, and hands to the scheduler
-- as a local worker's messages.  A batch that ran out of deliveries comes
-- back as lost, and its tasks fail with WorkerLostError; when the broker
-- is gone for longer than broker_timeout, every task out fails with
-- BrokerError, and so does every task sent after.
--
-- The functions go once per pool, each under a keyed hash of its bytes
-- (ns:p:P:code:H), where the executors fetch them.  Every key of the pool
-- expires unless the owner renews it, so a pool whose owner is killed
-- leaves nothing behind.

local broker = require "luamp.broker"
local core = require "luamp.core"
local errors = require "luamp.errors"
local msgs = require "luamp.pool.messages"

local error, ipairs, next, pairs, pcall, setmetatable, tonumber, tostring,
  type = error, ipairs, next, pairs, pcall, setmetatable, tonumber,
  tostring, type
local format = string.format
local seal, open, monotonic = core.seal, core.open, core.monotonic

local T = {}
T.__index = T

local BLOCK_MS = 2000 -- a blocking read returns at least this often
local READ_COUNT = 512

-- A transport for n virtual workers (nil: twice the executor slots of the
-- workers alive, at least 2), with the pool's cfg (initializer,
-- initargs, maxtasksperchild) and bo, the broker options: conn (the
-- parsed URL), keys (luamp.broker.keys), lease, max_deliveries,
-- broker_timeout, requires, name, host, ttl.
function T.new(cfg, n, bo)
  local self = setmetatable({cfg = cfg, n = n, bo = bo, keys = bo.keys,
                             pid = broker.hex(core.random_bytes(8)),
                             seq = 0, entries = {}, vw = {}, out = {},
                             unconfirmed = {},
                             last = "0-0", hash = {}, published = {},
                             read_id = false, changed = false,
                             broken = false,
                             ttl_ms = math.floor(bo.ttl * 1000)},
                            T)
  self.k = broker.names(bo.conn.ns, self.pid)
  local meta = seal(bo.keys.msg, broker.meta_ctx(self.pid), {
    initializer = cfg.initializer, initargs = cfg.initargs,
    maxtasksperchild = cfg.maxtasksperchild, requires = bo.requires,
    max_deliveries = bo.max_deliveries, lease = bo.lease, name = bo.name,
    owner = format("%s:%d", bo.host, core.getpid()),
  }, "settings")
  self.cmd = broker.connect(bo.conn, "owner", bo.broker_timeout, 2)
  local ok, e = pcall(function()
    self.blk = broker.connect(bo.conn, "owner-read", bo.broker_timeout, 2)
    self.run_id = self.cmd:run_id()
    local k, c, ttl = self.k, self.cmd, self.ttl_ms
    local ids = {
      c:send({"XGROUP", "CREATE", k.t, "w", "$", "MKSTREAM"}),
      c:send({"HSET", k.meta, "m", meta, "name", bo.name or "",
              "owner", format("%s:%d", bo.host, core.getpid())}),
      c:send({"PEXPIRE", k.meta, ttl}),
      c:send({"PEXPIRE", k.t, ttl}),
      c:send({"SADD", k.pools, self.pid}),
      c:send({"XADD", k.announce, "MAXLEN", "~", 1000, "*", "pool",
              self.pid, "event", "created"}),
    }
    for _, id in ipairs(ids) do c:wait(id) end
    local slots = T.live_slots(c, bo.conn.ns)
    self.n = n or (slots > 0 and 2 * slots or 2)
    self.nolive = slots == 0
  end)
  if not ok then -- what was made of it goes (a command refused midway)
    pcall(function()
      local c, k = self.cmd, self.k
      local ids = {c:send({"DEL", k.t, k.meta}, 1),
                   c:send({"SREM", k.pools, self.pid}, 1)}
      for _, id in ipairs(ids) do c:wait(id) end
    end)
    self.cmd:close()
    if self.blk then self.blk:close() end
    error(e, 0)
  end
  self.renew_at = monotonic() + bo.ttl / 3
  self.born, self.heard_at, self.ping_at = monotonic(), monotonic(), 0
  self.ping_id = false
  return self
end

-- The executor slots of the workers alive on the broker of conn.
function T.live_slots(conn, ns)
  local names = broker.names(ns, "-")
  local slots = 0
  for _, wid in ipairs(conn:call({"SMEMBERS", names.workers})) do
    local s = conn:call({"HGET", broker.worker_key(ns, wid), "slots"})
    slots = slots + (tonumber(s) or 0)
  end
  return slots
end

-- ------------------------------------------------------------ checks

-- Raises the error of sending value v (whose Message is m) to another
-- machine, if it cannot go: a shared object in it, by its path.
function T:check(m, v, root)
  if m:objects() > 0 then
    local ok, e = pcall(seal, "", "", v, root)
    if not ok then error(e, 0) end
  end
end

-- ------------------------------------------------------------ failing

local function lost_error(d, reason)
  return {type = "WorkerLostError",
          message = format("the task was lost after %d deliver%s: %s", d,
                           d == 1 and "y" or "ies", reason),
          fields = {deliveries = d, reason = reason}}
end

-- Every task of entry seq fails with err (an error as remote_error takes
-- it).
local function fail_entry(self, seq, err)
  local e = self.entries[seq]
  if not e then return end
  self.entries[seq] = nil
  for _, id in ipairs(e.ids) do
    self.out[#self.out + 1] = msgs.failure(id, err)
  end
  local w = self.vw[e.wid]
  if w then w.out = w.out - 1 end
  self.changed = true
end

-- The broker is gone for good: every task out fails, and every task sent
-- from now on.
local function break_down(self, e)
  if self.broken then return end
  if type(e) == "table" and e.type == "AuthenticationError" then
    self.broken = e
  else
    local msg = errors.is(e, "BrokerError") and e.message or tostring(e)
    self.broken = {type = "BrokerError", message = msg,
                   fields = {url = self.bo.conn.url}}
  end
  for seq in pairs(self.entries) do fail_entry(self, seq, self.broken) end
end

-- Whether the pool's keys are gone because their owner made no luamp
-- call for longer than their time to live (3 x lease): a pool cannot keep
-- them alive while its process runs other Lua code or sleeps outside the
-- pool, and what they held (tasks not begun, functions, settings) is
-- lost.  The pool then breaks down, naming why, rather than send tasks
-- no worker will take.
local function expired(self)
  local idle = monotonic() - (self.renew_at - self.bo.ttl / 3)
  if idle <= self.bo.ttl then return false end
  local ok, n = pcall(self.cmd.call, self.cmd, {"EXISTS", self.k.meta})
  if not ok or n ~= 0 then return false end
  break_down(self, errors.new("BrokerError", string.format(
    "this pool's keys expired on the broker at %s: its process made no "
    .. "luamp call for %.0f s, longer than their time to live (%g s, three "
    .. "times the lease)", self.bo.conn.url, idle, self.bo.ttl),
    {url = self.bo.conn.url}))
  return true
end

-- After a lost connection: connects again within broker_timeout; the
-- pool carries on if its state is still there.
local function reconnect(self, e)
  local bo = self.bo
  -- broker_timeout from when the broker was last heard, at least a little
  local deadline = self.heard_at + bo.broker_timeout
  if deadline < monotonic() + 0.1 then deadline = monotonic() + 0.1 end
  local delay = 0.05
  while true do
    local ok, why = pcall(function()
      local left = deadline - monotonic()
      local cmd = broker.connect(bo.conn, "owner", left)
      local blk = broker.connect(bo.conn, "owner-read", left)
      local run_id = cmd:run_id()
      local meta = cmd:call({"EXISTS", self.k.meta}, left)
      if run_id ~= self.run_id and meta == 0 then
        cmd:close()
        blk:close()
        broker.broker_error(bo.conn, "the broker at " .. bo.conn.url ..
                            " restarted and lost this pool's state")
      end
      self.cmd:close()
      self.blk:close()
      self.cmd, self.blk, self.run_id = cmd, blk, run_id
      -- What the old connection may have lost goes again; a batch that
      -- did reach the broker runs twice at worst, and its first outcome
      -- wins.
      for _, u in ipairs(self.unconfirmed) do u.id = cmd:send(u.argv) end
      self.renew_at = 0
    end)
    if ok then
      self.read_id, self.ping_id = false, false
      self.heard_at = monotonic()
      return true
    end
    if core.is_interrupt(why) then error(why, 0) end
    if errors.is(why, "BrokerError") and why.message:find("restarted") then
      break_down(self, why)
      return false
    end
    local left = deadline - monotonic()
    if left <= 0 then
      break_down(self, e)
      return false
    end
    core.sleep(delay < left and delay or left)
    delay = delay < 0.4 and delay * 2 or 0.5
  end
end

-- Runs f(self, ...), and on a BrokerError reconnects and runs it again
-- (or breaks down).
local function guarded(self, f, ...)
  for _ = 1, 2 do
    if self.broken then return end
    local ok, e = pcall(f, self, ...)
    if ok then return end
    if not errors.is(e, "BrokerError") then error(e, 0) end
    if not reconnect(self, e) then return end
  end
end

-- ------------------------------------------------------------- sending

function T:start(wid)
  self.vw[wid] = {out = 0, stopped = false, killed = false}
  self.out[#self.out + 1] = msgs.ready(wid)
end

-- Sends a command that must reach the broker (a batch, a function): its
-- reply is kept until confirm sees it, and a new connection sends it
-- again if the one it went out on ends first.  seq: the entry it is.
local function must(self, argv, seq)
  local u = self.unconfirmed
  u[#u + 1] = {id = self.cmd:send(argv), argv = argv, seq = seq}
end

-- Takes the replies that came to what must reach the broker, in the order
-- sent; a batch the broker refused fails its tasks with why.
local function confirm(self)
  local u, n, done, lost = self.unconfirmed, #self.unconfirmed, 0, nil
  for i = 1, n do
    local ok, v, got = pcall(self.cmd.take, self.cmd, u[i].id)
    if not ok and errors.is(v, "BrokerError") then
      lost = v -- this one and the rest go again on the next connection
      break
    elseif not ok and u[i].seq then
      fail_entry(self, u[i].seq, {type = "BrokerError", message =
        "the broker refused the task: " .. errors.unplaced(v),
        fields = {url = self.bo.conn.url}})
    elseif ok and not got then
      break
    end
    done = i
  end
  if done > 0 then
    table.move(u, done + 1, n, 1)
    for j = n - done + 1, n do u[j] = nil end
  end
  if lost then error(lost, 0) end
end

-- The function of fid, sealed under its hash in ns:code:H, once.
local function publish(self, fid, fm)
  local bytes = fm:bytes()
  local h = broker.hex(core.hmac(self.keys.id, bytes):sub(1, 16))
  self.hash[fid] = h
  if self.published[h] then return end
  local blob = seal(self.keys.code, broker.code_ctx(h), fm, "function")
  must(self, {"SET", self.k.code .. h, blob, "PX", self.ttl_ms})
  self.published[h] = true
end

local function send(self, wid, b)
  if b.funcs then
    for fid, fm in pairs(b.funcs) do publish(self, fid, fm) end
  end
  local hs = {}
  for i, fid in ipairs(b.f) do hs[i] = self.hash[fid] end
  local seq = self.seq
  local ok, sealed = pcall(seal, self.keys.msg, broker.task_ctx(self.pid, seq),
                           {id = b.id, f = hs, a = b.a, k = b.k}, "task")
  if not ok then
    fail_entry(self, seq, {message = tostring(sealed)})
    return
  end
  must(self, {"XADD", self.k.t, "*", "s", seq, "p", sealed, "d", 1}, seq)
end

function T:send(wid, b)
  self.seq = self.seq + 1
  self.entries[self.seq] = {wid = wid, ids = b.id}
  local w = self.vw[wid]
  w.out = w.out + 1
  if self.broken or expired(self) then
    fail_entry(self, self.seq, self.broken)
    return
  end
  guarded(self, send, wid, b)
  if self.broken then fail_entry(self, self.seq, self.broken) end
end

function T:take_back() return nil end

function T:stop(wid)
  self.vw[wid].stopped = true
  self.changed = true
end

-- ----------------------------------------------------------- receiving

local fields = broker.fields

-- One entry of the result stream.
local function outcome(self, f)
  local seq = tonumber(f.s)
  local e = seq and self.entries[seq]
  if not e then return end -- a duplicate, or a stranger's
  local d = tonumber(f.d) or 1
  if f.o == "lost" then
    fail_entry(self, seq, lost_error(d, f.v))
    return
  end
  local ok, list = pcall(open, self.keys.msg,
                         broker.outcome_ctx(self.pid, seq), f.v)
  if not ok then
    fail_entry(self, seq, {type = "AuthenticationError", message =
      "the outcome of the task was refused: " .. tostring(list.message
                                                         or list)})
    return
  end
  if f.o == "init" then
    self.out[#self.out + 1] = msgs.init_failed(e.wid, list[1], list[2])
    fail_entry(self, seq, {message = list[1]})
    return
  end
  self.entries[seq] = nil
  self.heard = true
  local w = self.vw[e.wid]
  if w then w.out = w.out - 1 end
  self.changed = true
  for _, m in ipairs(list) do self.out[#self.out + 1] = m end
end

local function say(self, fmt, ...)
  io.stderr:write(format("luamp: broker pool %s: " .. fmt .. "\n", self.pid,
                         ...))
end

-- What the owner should hear of: workers that refuse this pool (another
-- authkey, another build), or no worker at all.
local function check_workers(self)
  local c = self.cmd
  local refused = c:call({"HGETALL", self.k.refused})
  if refused.n > 0 and not self.warned_refused then
    self.warned_refused = monotonic()
    local parts = {}
    for i = 1, refused.n, 2 do
      parts[#parts + 1] = refused[i + 1] .. " " .. refused[i]
    end
    say(self, "workers refused its tasks (%s): another authkey or "
        .. "another build?", table.concat(parts, ", "))
  end
  if self.warned_refused and not self.heard and next(self.entries)
     and monotonic() - self.warned_refused > self.bo.broker_timeout then
    -- A worker that has taken a task has accepted the pool, even if none
    -- has finished one yet.
    local pending = c:call({"XPENDING", self.k.t, "w"})
    if tonumber(pending[1]) and tonumber(pending[1]) > 0 then
      self.heard = true
      return
    end
    break_down(self, {type = "AuthenticationError", message = "no worker "
      .. "accepted this pool's tasks, and some refused them: does every "
      .. "worker have the pool's authkey?"})
  end
  if not self.heard and not self.warned_idle and next(self.entries)
     and monotonic() - self.born > 10 then
    self.warned_idle = true
    if T.live_slots(c, self.bo.conn.ns) == 0 then
      say(self, "no live luamp worker on %s; start one with `luamp worker "
          .. "%s`", self.bo.conn.url, self.bo.conn.url)
    end
  end
end

local function renew(self)
  if expired(self) then return end
  check_workers(self)
  local k, c, ttl = self.k, self.cmd, self.ttl_ms
  for _, key in ipairs({k.meta, k.t, k.r, k.done, k.refused}) do
    c:send({"PEXPIRE", key, ttl}, nil, false)
  end
  for h in pairs(self.published) do
    c:send({"PEXPIRE", k.code .. h, ttl}, nil, false)
  end
  self.renew_at = monotonic() + self.bo.ttl / 3
end

-- Liveness: a PING is kept going on the command connection, one at a
-- time, every broker_timeout / 4, each with half of broker_timeout to be
-- answered, so that a broker that stops answering is noticed within
-- three quarters of broker_timeout, whatever the pool is doing.
local function ping(self, now)
  local bt = self.bo.broker_timeout
  if self.ping_id then
    local _, done = self.cmd:take(self.ping_id)
    if not done then return end
    self.ping_id = false
    self.heard_at = now
  end
  if now >= self.ping_at then
    self.ping_id = self.cmd:send({"PING"}, bt / 2)
    self.ping_conn = self.cmd
    self.ping_at = now + bt / 4
    -- Until a worker is heard from, whether some refuse the pool, or
    -- none is alive, is looked at as often (renew looks after that).
    if not self.heard and next(self.entries) then check_workers(self) end
  end
end

local function pull(self)
  local blk = self.blk
  blk:dispatch()
  local now = monotonic()
  if self.ping_conn ~= self.cmd then self.ping_id = false end
  confirm(self)
  ping(self, now)
  if now >= self.renew_at then renew(self) end
  while true do
    if not self.read_id then
      if not next(self.entries) then return end
      self.read_id = blk:send({"XREAD", "COUNT", READ_COUNT, "BLOCK",
                               BLOCK_MS, "STREAMS", self.k.r, self.last},
                              BLOCK_MS / 1000 + self.bo.broker_timeout)
      return
    end
    local v, done = blk:take(self.read_id)
    if not done then return end
    self.read_id = false
    self.heard_at = now
    if v then
      local list = v[1][2]
      local dels = {"XDEL", self.k.r}
      for _, e in ipairs(list) do
        self.last = e[1]
        dels[#dels + 1] = e[1]
        outcome(self, fields(e[2]))
      end
      self.cmd:send(dels, nil, false)
    end
  end
end

function T:collect(buf)
  guarded(self, pull)
  local out, n = self.out, #self.out
  if n == 0 then return 0 end
  for i = 1, n do buf[i] = out[i] end
  self.out = {}
  return n
end

function T:ended()
  local c = self.changed
  self.changed = false
  return c
end

function T:exitcode(wid)
  local w = self.vw[wid]
  if not w then return 0 end
  if w.killed then return -9 end
  if w.stopped and w.out == 0 then return 0 end
  return nil
end

function T:running() return 0 end

function T:forget(wid) self.vw[wid] = nil end

-- The commands that take the pool's keys off the broker: the workers drop
-- it at once (its stream gone) and no longer list it (its settings gone).
local function unlist(self)
  local k = self.k
  local del = {"DEL", k.t, k.r, k.done, k.meta, k.refused}
  for h in pairs(self.published) do del[#del + 1] = k.code .. h end
  return del, {"SREM", k.pools, self.pid}
end

-- terminate: the pool's keys go, the tasks not begun with its stream, and
-- the workers are told to stop what they run for this pool.  Both are on
-- the broker before this returns (or a second has passed): a pool dropped
-- without close is killed from its finalizer, and its connection may be
-- closed right after, at the end of the program too.
function T:kill(wid)
  local w = self.vw[wid]
  if w then w.killed = true end
  if not self.terminated and not self.broken then
    self.terminated = true
    self.unconfirmed = {} -- nothing goes again: the keys go
    pcall(function()
      local del, srem = unlist(self)
      self.cmd:send(del, 1, false)
      self.cmd:send(srem, 1, false)
      self.cmd:send({"XADD", self.k.announce, "MAXLEN", "~", 1000, "*",
                     "pool", self.pid, "event", "terminate"}, 1, false)
      self.cmd.c:settle(1)
    end)
  end
end

function T:waitables(list)
  list[#list + 1] = self.blk.c
  return list
end

-- How long a wait may last before the pool's work must run again (its
-- keys' time to live, its liveness check); nil once it is over.
function T:timeout()
  if self.broken or self.closed then return nil end
  local due = self.renew_at < self.ping_at and self.renew_at or self.ping_at
  local left = due - monotonic()
  return left > 0 and left or 0
end

-- The pool is over: its keys go, and the workers are told, within a
-- second in all (terminate has done it already).
function T:close()
  if self.closed then return end
  self.closed = true
  self.unconfirmed = {}
  local k = self.k
  if not self.terminated then
    pcall(function()
      local c = self.cmd
      local del, srem = unlist(self)
      local ids = {
        c:send(del),
        c:send(srem),
        c:send({"XADD", k.announce, "MAXLEN", "~", 1000, "*", "pool",
                self.pid, "event", "closed"}),
      }
      local deadline = monotonic() + 1
      for _, id in ipairs(ids) do
        c:wait(id, math.max(0, deadline - monotonic()))
      end
    end)
  end
  self.cmd:close()
  self.blk:close()
end

return T
