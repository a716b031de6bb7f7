-- luamp.worker -- `luamp worker`: runs the tasks of broker pools (see
-- luamp.pool.remote) on this host, and `luamp workers` and `luamp keygen`.
--
-- A worker is a supervisor and its executors.  The supervisor learns of
-- the pools alive (ns:pools, each with its sealed settings; it serves
-- only those whose settings it can verify with its authkey), reads task
-- entries from their streams with XREADGROUP, never more than it has free
-- executor slots, and runs each in a local Pool of forked executors kept
-- per remote pool (with that pool's initializer, requires and
-- maxtasksperchild).  It never decodes a task: the executor checks its
-- MAC, decodes it, fetches the functions it lacks, runs the batch and
-- seals its outcomes, which the supervisor records with one script that
-- lets the first completion win.  Meanwhile the supervisor renews the
-- leases of the entries it holds, gives back those whose executor died,
-- and takes back, for every worker, the entries whose lease lapsed.

local broker = require "luamp.broker"
local core = require "luamp.core"
local errors = require "luamp.errors"
local msgs = require "luamp.pool.messages"
local worker = require "luamp.pool.worker"

local error, ipairs, next, pairs, pcall, print, setmetatable, tonumber,
  tostring, type = error, ipairs, next, pairs, pcall, print, setmetatable,
  tonumber, tostring, type
local format = string.format
local unpack = table.unpack
local monotonic = core.monotonic

local M = {}

-- pcall, but Ctrl-C and SIGTERM (KeyboardInterrupt) go through: they stop
-- the worker, whatever it was doing.
local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] and core.is_interrupt(r[2]) then error(r[2], 0) end
  return table.unpack(r, 1, r.n)
end

local core_pool -- luamp.pool's Pool, once a command runs

local BLOCK_MS = 2000
local HEARTBEAT = 2 -- s between heartbeats; a worker's key lives 3 times that
local MAX_CODE = 256 -- functions an executor keeps

-- What the executors inherit from the supervisor (they are its forks).
local state = {}

-- ------------------------------------------------------------ executors

local code_cache, ncode = {}, 0

-- The function of hash h, from pool pid's keys (once per executor).
local function code(pid, h)
  local f = code_cache[h]
  if f then return f end
  if not state.conn then
    state.conn = broker.connect(state.cfg, "executor", state.timeout)
  end
  local blob = state.conn:call({"GET",
                                broker.names(state.cfg.ns, pid).code .. h})
  if not blob then
    error("the task's function is gone from the broker (its pool ended?)",
          0)
  end
  local fm = core.open(state.keys.code, broker.code_ctx(h), blob)
  f = core.decode(fm)
  fm:close()
  if ncode >= MAX_CODE then code_cache, ncode = {}, 0 end
  code_cache[h], ncode = f, ncode + 1
  return f
end

-- Lets go of the Messages of outcome m.
local function close_outcome(m)
  if type(m[3]) == "userdata" then m[3]:close() end
  if type(m[3]) == "table" and m[3].value then m[3].value:close() end
end

-- Runs one entry of pool pid: its batch's outcomes, sealed.
function M.exec(pid, seq, sealed)
  local keys = state.keys
  local b = core.open(keys.msg, broker.task_ctx(pid, seq), sealed)
  local funcs = {}
  for _, h in ipairs(b.f) do
    if not funcs[h] then funcs[h] = code(pid, h) end
  end
  local out = {}
  worker.run_batch(b, funcs, {
    owns = true,
    put = function(m) out[#out + 1] = m end,
    running = function() end,
  })
  for _, m in ipairs(out) do
    local err = msgs.is_failure(m) and (msgs.failure_error(m))
    local name = err and err.message:match("%(global '([%w_]+)'%)")
    if name then
      err.message = err.message .. format(" (globals are the worker's own: "
        .. "make '%s' a local of the task's file, or load its module on the "
        .. "workers with requires = {...})", name)
    end
  end
  local ctx = broker.outcome_ctx(pid, seq)
  local ok, s = pcall(core.seal, keys.msg, ctx, out, "outcome")
  if not ok then
    -- One of them cannot cross (a result naming a shared object of this
    -- host): it fails, the rest go.
    for i, m in ipairs(out) do
      local sent, e = pcall(core.seal, keys.msg, ctx, m, "result")
      if not sent then
        close_outcome(m)
        out[i] = msgs.failure(msgs.task_id(m), {message = "cannot send the "
          .. (msgs.is_failure(m) and "error" or "result") .. " of the task: "
          .. tostring(e)})
      end
    end
    s = core.seal(keys.msg, ctx, out, "outcome")
  end
  for _, m in ipairs(out) do close_outcome(m) end
  return s
end

-- The initializer of an executor of pool pid: its requires, then its own.
function M.init(pid, meta)
  local settings = core.open(state.keys.msg, broker.meta_ctx(pid), meta)
  for _, name in ipairs(settings.requires or {}) do require(name) end
  if settings.initializer then
    local ia = settings.initargs or {}
    settings.initializer(unpack(ia, 1, ia.n or #ia))
  end
end

-- The task and initializer functions the local pools run: upvalue-free,
-- so that they go to the executors as a name and nothing else.
local function exec_task(pid, seq, sealed)
  return require("luamp.worker").exec(pid, seq, sealed)
end
local function init_executor(pid, meta)
  require("luamp.worker").init(pid, meta)
end

-- ----------------------------------------------------------- supervisor

local W = {}
W.__index = W

local function say(self, fmt, ...)
  io.stderr:write(format("luamp worker %s: " .. fmt .. "\n", self.wid, ...))
end

local fields = broker.fields

-- Registers the worker, or renews its key.
function W:heartbeat()
  local key = broker.worker_key(self.cfg.ns, self.wid)
  local pools = {}
  for pid in pairs(self.pools) do pools[#pools + 1] = pid end
  self.cmd:send({"HSET", key, "host", self.host, "pid", core.getpid(),
                 "slots", self.c, "busy", self.inflight,
                 "pools", table.concat(pools, ","),
                 "build", core.wire_build(), "name", self.name or ""},
                nil, false)
  self.cmd:send({"EXPIRE", key, 3 * HEARTBEAT}, nil, false)
  self.cmd:send({"SADD", self.k.workers, self.wid}, nil, false)
  self.beat_at = monotonic() + HEARTBEAT
end

-- The pools alive: each verified once; those whose settings are gone
-- (closed, or their owner's keys expired) are let go of.
function W:refresh()
  local c = self.cmd
  local pids = c:call({"SMEMBERS", self.k.pools})
  local metas = {}
  for i, pid in ipairs(pids) do -- the settings of new pools, else whether
    local key = broker.names(self.cfg.ns, pid).meta -- they are still there
    metas[i] = c:send(self.pools[pid] and {"HLEN", key} or {"HGET", key, "m"})
  end
  local alive = {}
  for i, pid in ipairs(pids) do
    local m = c:wait(metas[i])
    if not m or m == 0 then
      c:send({"SREM", self.k.pools, pid}, nil, false)
      self.ended[pid] = nil
    else
      alive[pid] = true
      if not self.pools[pid] and not self.refused[pid] and
         not self.ended[pid] then
        self:serve(pid, m)
      end
    end
  end
  for pid, p in pairs(self.pools) do
    if not alive[pid] then self:drop(p) end
  end
  self.refresh_at = monotonic() + 5
end

-- Serves pool pid if its sealed settings m verify; else refuses it, once.
function W:serve(pid, m)
  local ok, settings = try(core.open, self.keys.msg, broker.meta_ctx(pid),
                             m)
  if ok then
    self.pools[pid] = {pid = pid, meta = m, settings = settings,
                       k = broker.names(self.cfg.ns, pid), held = {},
                       lease = settings.lease or 30,
                       md = settings.max_deliveries or 3}
    return
  end
  self.refused[pid] = true
  local why = errors.is(settings, "WireError") and "build" or "bad MAC"
  say(self, "refusing pool %s: %s", pid,
      tostring(settings.message or settings))
  -- (The owner keeps it alive with the pool's other keys; it goes a
  -- minute after that owner does.)
  local key = broker.names(self.cfg.ns, pid).refused
  self.cmd:send({"HINCRBY", key, why, 1}, nil, false)
  self.cmd:send({"PEXPIRE", key, 60000}, nil, false)
end

-- Pool p ended: its executors go.
function W:drop(p)
  self.pools[p.pid] = nil
  if p.lp then try(p.lp.terminate, p.lp) end
  for id in pairs(p.held) do
    p.held[id] = nil
    self.inflight = self.inflight - 1
  end
end

-- The local pool of remote pool p.
function W:executors(p)
  if not p.lp then
    p.lp = core_pool({broker = false, processes = self.c,
                      initializer = init_executor,
                      initargs = {p.pid, p.meta},
                      maxtasksperchild = p.settings.maxtasksperchild})
  end
  return p.lp
end

local function lease_ms(p) return math.floor(p.lease * 1000) end
-- (three leases, 3 s at the least, as the owner has it: luamp.pool)
local function ttl_ms(p)
  return math.floor((p.lease * 3 > 3 and p.lease * 3 or 3) * 1000)
end

-- Gives entries back to the stream: mode "ids" (one more delivery) or
-- "return" (a clean stop: none).
function W:give_back(p, ids, reason, mode)
  local args = {mode or "ids", 0, p.md, ttl_ms(p), reason, p.pid}
  for _, id in ipairs(ids) do args[#args + 1] = id end
  local k = p.k
  return self.cmd:send(self.cmd:eval_argv(broker.GIVE_BACK,
                                          {k.t, k.r, k.done, k.dead}, args),
                       nil, mode == "return")
end

-- Entry `id` of pool p has ended, with the sealed outcome s, or the
-- error e.
function W:finished(p, id, f, ok, v)
  if not p.held[id] then return end
  p.held[id] = nil
  self.inflight = self.inflight - 1
  if self.pools[p.pid] ~= p then return end
  local k = p.k
  if ok then
    self.cmd:send(self.cmd:eval_argv(broker.COMPLETE,
      {k.t, k.r, k.done, k.meta},
      {id, f.s, "ok", v, f.d, self.wid, ttl_ms(p)}), nil, false)
  elseif errors.is(v, "ProcessError") and v.message:find("initializer") then
    local text = v.message:gsub("^the pool's initializer failed in a "
                                .. "worker: ", "")
    local s = core.seal(self.keys.msg, broker.outcome_ctx(p.pid, f.s),
                        {text, v.traceback}, "outcome")
    self.cmd:send(self.cmd:eval_argv(broker.COMPLETE,
      {k.t, k.r, k.done, k.meta},
      {id, f.s, "init", s, f.d, self.wid, ttl_ms(p)}), nil, false)
    self:drop(p)
  elseif errors.is(v, "WorkerLostError") then
    self:give_back(p, {id}, "an executor died running it")
  elseif errors.is(v, "ProcessError") then
    -- the local pool was terminated: the entry is the owner's to redo
  else
    local why = tostring(errors.is(v) and v.message or v)
    say(self, "task of pool %s failed: %s", p.pid, why)
    self:give_back(p, {id}, "refused by worker " .. self.wid .. ": " .. why)
  end
  self:fetch() -- a slot is free
end

-- An entry read from the stream of pool p.
function W:start(p, id, f)
  self.inflight = self.inflight + 1
  p.held[id] = true
  local me = self
  local ok, e = try(function()
    self:executors(p):apply_async(exec_task, {p.pid, f.s, f.p},
      function(s) me:finished(p, id, f, true, s) end,
      function(err) me:finished(p, id, f, false, err) end)
  end)
  if not ok then self:finished(p, id, f, false, e) end
end

-- Asks for as many entries as there are free slots.
function W:fetch()
  if self.fetch_id or self.stopping then return end
  local free = self.c - self.inflight
  if free <= 0 or not next(self.pools) then return end
  local argv = {"XREADGROUP", "GROUP", "w", self.wid, "COUNT", free,
                "BLOCK", BLOCK_MS, "STREAMS"}
  local order = {}
  for pid, p in pairs(self.pools) do
    order[#order + 1] = p
    argv[#argv + 1] = p.k.t
  end
  for _ = 1, #order do argv[#argv + 1] = ">" end
  self.fetch_order = order
  self.fetch_id = self.blk:send(argv, BLOCK_MS / 1000 + self.timeout)
  self.fetch_conn = self.blk
end

function W:fetched()
  if self.fetch_conn ~= self.blk then self.fetch_id = false end
  if not self.fetch_id then return end
  local ok, v, done = try(self.blk.take, self.blk, self.fetch_id)
  if ok and not done then return end
  self.fetch_id = false
  if not ok then
    if not self.blk:alive() then error(v, 0) end
    -- A stream went (NOGROUP): its pool ended.  Its settings may stay
    -- until they expire (an owner killed as it ended the pool): it is not
    -- served again, or every read would fail on it, for every pool.
    local gone = tostring(v):match("No such key '([^']+)'")
    for _, p in ipairs(self.fetch_order) do
      if p.k.t == gone then
        self.ended[p.pid] = true
        self:drop(p)
      end
    end
    self:refresh()
    return
  end
  if not v then return end
  local bykey = {}
  for _, p in ipairs(self.fetch_order) do bykey[p.k.t] = p end
  for _, s in ipairs(v) do
    local p = bykey[s[1]]
    for _, e in ipairs(s[2]) do
      if p and e[2] then self:start(p, e[1], fields(e[2])) end
    end
  end
end

-- Announcements: a pool came (read the pools again) or went.
function W:announced()
  if self.ann_conn ~= self.ann then self.ann_id = false end
  if not self.ann_id then
    self.ann_id = self.ann:send({"XREAD", "BLOCK", BLOCK_MS, "STREAMS",
                                 self.k.announce, self.ann_last},
                                BLOCK_MS / 1000 + self.timeout)
    self.ann_conn = self.ann
    return
  end
  local v, done = self.ann:take(self.ann_id)
  if not done then return end
  self.ann_id = false
  if not v then return self:announced() end
  local again = false
  for _, e in ipairs(v[1][2]) do
    self.ann_last = e[1]
    local f = fields(e[2])
    local p = self.pools[f.pool]
    if f.event == "created" then
      again = true
    elseif p then
      self:drop(p)
    end
  end
  if again then
    self:refresh()
    -- the blocked read does not know the new streams: end it now
    if self.fetch_id then
      self.cmd:send({"CLIENT", "UNBLOCK", self.blk_id}, nil, false)
    end
  end
  self:announced()
end

-- Leases: the entries held stay this worker's; those of every worker
-- whose lease lapsed go back to their streams.  A pool whose stream is
-- gone ended (or its keys expired with its owner): its executors stop
-- now, even with every slot busy and no read to tell.
function W:leases(now)
  for _, p in pairs(self.pools) do
    if p.renew_id then
      local ok, v, done = try(self.cmd.take, self.cmd, p.renew_id)
      if not ok and not self.cmd:alive() then error(v, 0) end
      if not ok or done then p.renew_id = nil end
      if ok and v == "gone" then
        say(self, "pool %s ended: its running tasks stop", p.pid)
        self.ended[p.pid] = true
        self:drop(p)
      end
    end
  end
  for _, p in pairs(self.pools) do
    p.renew_at = p.renew_at or now + p.lease / 3
    p.reap_at = p.reap_at or now + p.lease / 2
    if now >= p.renew_at then
      p.renew_at = now + p.lease / 3
      local args = {self.wid}
      for id in pairs(p.held) do args[#args + 1] = id end
      if #args > 1 and not p.renew_id then
        p.renew_id = self.cmd:send(self.cmd:eval_argv(broker.RENEW,
                                                      {p.k.t}, args))
      end
    end
    if now >= p.reap_at then
      p.reap_at = now + p.lease / 2
      self.cmd:send(self.cmd:eval_argv(broker.GIVE_BACK,
        {p.k.t, p.k.r, p.k.done, p.k.dead},
        {"idle", lease_ms(p), p.md, ttl_ms(p),
         format("its worker stopped answering (lease %g s)", p.lease),
         p.pid}), nil, false)
    end
  end
end

function W:step()
  local now = monotonic()
  if now >= self.beat_at then self:heartbeat() end
  if now >= self.refresh_at then self:refresh() end
  self:leases(now)
  self:fetched()
  self:announced()
  self:fetch()
  local n, last = self.cmd.c:errors()
  if n > self.nerr then
    self.nerr = n
    say(self, "the broker refused a command: %s", last)
  end
end

-- Stops cleanly: the entries held go back at once, without a delivery
-- counted; the executors go; the worker's key goes.
function W:stop()
  self.stopping = true
  local ids = {}
  for _, p in pairs(self.pools) do
    local held = {}
    for id in pairs(p.held) do held[#held + 1] = id end
    if #held > 0 then
      ids[#ids + 1] = self:give_back(p, held, "its worker stopped", "return")
    end
    if p.lp then pcall(p.lp.terminate, p.lp) end
  end
  for _, id in ipairs(ids) do pcall(self.cmd.wait, self.cmd, id, 2) end
  pcall(function()
    self.cmd:call({"DEL", broker.worker_key(self.cfg.ns, self.wid)}, 2)
    self.cmd:call({"SREM", self.k.workers, self.wid}, 2)
  end)
  self.cmd:close()
  self.blk:close()
  self.ann:close()
end

-- Connects, and serves pools until stopped.
function W:run()
  local cfg = self.cfg
  self.fetch_id, self.ann_id, self.nerr = false, false, 0
  self.cmd = broker.connect(cfg, "worker", self.timeout)
  self.blk = broker.connect(cfg, "worker-read", self.timeout)
  self.ann = broker.connect(cfg, "worker-announce", self.timeout)
  self.blk_id = self.blk:call({"CLIENT", "ID"})
  local last = self.cmd:call({"XREVRANGE", self.k.announce, "+", "-",
                              "COUNT", 1})
  self.ann_last = last[1] and last[1][1] or "0-0"
  self:heartbeat()
  self:refresh()
  say(self, "serving %s with %d executor slot%s", cfg.url, self.c,
      self.c == 1 and "" or "s")
  while true do
    self:step()
    local left = self.beat_at - monotonic()
    if left < 0 then left = 0 end
    if left > 0.5 then left = 0.5 end
    core.wait({self.blk.c, self.ann.c}, left)
    self.blk:dispatch()
  end
end

-- ------------------------------------------------------------- commands

local USAGE = [[
usage: luamp worker URL [-c N] [--authkey-file F] [--require MOD]...
                        [--name NAME] [--exit-on-broker-loss]
       luamp workers URL
       luamp keygen
  URL   redis://[:PASSWORD@]HOST[:PORT][/DB] or redis+unix:///PATH?db=N
        (default: LUAMP_BROKER)
  -c N  executor slots: tasks run at once (default: the number of cores)
The authkey comes from --authkey-file, LUAMP_AUTHKEY or LUAMP_AUTHKEY_FILE.]]

local function usage(msg)
  io.stderr:write("luamp: " .. msg .. "\n" .. USAGE .. "\n")
  return 2
end

-- What stops a command before it serves: said on one line (without the
-- place in luamp's own code that raised it), status 1.
local function fail(msg)
  io.stderr:write("luamp: " .. errors.unplaced(msg) .. "\n")
  return 1
end

-- The broker's configuration from url, or LUAMP_BROKER; nil and why.
local function config(url)
  if url == nil and (os.getenv("LUAMP_BROKER") or "") == "" then
    return nil, "a broker URL is needed (or LUAMP_BROKER)"
  end
  local ok, cfg = pcall(broker.config, url, 1)
  if not ok then return nil, tostring(cfg) end
  return cfg
end

local function worker_main(args)
  local url, c, key, name, exit_on_loss = nil, core.cpu_count(), nil, nil,
    false
  local requires = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      io.stdout:write(USAGE, "\n")
      return 0
    elseif a == "-c" then
      i = i + 1
      c = math.tointeger(tonumber(args[i] or ""))
      if not c or c < 1 then return usage("-c wants a positive integer") end
    elseif a == "--authkey-file" then
      i = i + 1
      if not args[i] then return usage("--authkey-file wants a file") end
      local ok, k = pcall(broker.keyfile, args[i], "the authkey file")
      if not ok then return fail(k) end
      key = k
    elseif a == "--require" then
      i = i + 1
      if not args[i] then return usage("--require wants a module") end
      requires[#requires + 1] = args[i]
    elseif a == "--name" then
      i = i + 1
      name = args[i]
    elseif a == "--exit-on-broker-loss" then
      exit_on_loss = true
    elseif a:sub(1, 1) == "-" then
      return usage("unknown option " .. a)
    elseif url then
      return usage("one URL only")
    else
      url = a
    end
    i = i + 1
  end
  local cfg, why = config(url)
  if not cfg then return usage(why) end
  if key == nil and os.getenv("LUAMP_AUTHKEY") == nil
     and os.getenv("LUAMP_AUTHKEY_FILE") == nil then
    return fail("no authkey: give --authkey-file F, or set LUAMP_AUTHKEY or "
                .. "LUAMP_AUTHKEY_FILE (`luamp keygen` makes one)")
  end
  local ok, k = pcall(broker.authkey, key)
  if not ok then return fail(k) end
  key = k
  core.interrupt_on_sigterm()
  for _, m in ipairs(requires) do require(m) end
  local hostname = broker.hostname()
  state.cfg, state.keys, state.timeout = cfg, broker.keys(key), 10
  local self = setmetatable({
    cfg = cfg, keys = state.keys, c = c, name = name, host = hostname,
    wid = format("%s-%d-%s", name or hostname, core.getpid(),
                 broker.hex(core.random_bytes(3))),
    k = broker.names(cfg.ns, "-"), pools = {}, refused = {}, ended = {},
    inflight = 0,
    fetch_id = false, ann_id = false, timeout = 10, nerr = 0,
    beat_at = 0, refresh_at = 0,
  }, W)
  while true do
    local _, e = pcall(W.run, self)
    if core.is_interrupt(e) or not errors.is(e, "BrokerError") then
      if self.cmd and self.cmd:alive() then self:stop() end
      if core.is_interrupt(e) then return 0 end
      -- A refused password, say: one line.  Anything else is a bug.
      if errors.is(e) then return fail(e) end
      error(e, 0)
    end
    say(self, "%s", e.message)
    for _, p in pairs(self.pools) do self:drop(p) end
    for _, c in ipairs({self.cmd, self.blk, self.ann}) do pcall(c.close, c) end
    if exit_on_loss then return 1 end
    local slept, why = pcall(core.sleep, 1)
    if not slept then
      if core.is_interrupt(why) then return 0 end
      error(why, 0)
    end
  end
end

-- luamp workers URL: the live workers.
local function workers_main(args)
  local cfg, why = config(args[1])
  if not cfg then return usage(why) end
  local conn = broker.connect(cfg, "cli", 5)
  local k = broker.names(cfg.ns, "-")
  local wids = conn:call({"SMEMBERS", k.workers})
  table.sort(wids)
  local n = 0
  for _, wid in ipairs(wids) do
    local h = conn:call({"HGETALL", broker.worker_key(cfg.ns, wid)})
    if h.n == 0 then
      conn:call({"SREM", k.workers, wid})
    else
      local f = fields(h)
      n = n + 1
      print(format("%-32s host %s pid %s slots %s busy %s pools %s", wid,
                   f.host, f.pid, f.slots, f.busy,
                   f.pools == "" and "-" or f.pools))
    end
  end
  local pools = conn:call({"SMEMBERS", k.pools})
  print(format("%d worker%s, %d pool%s on %s", n, n == 1 and "" or "s",
               #pools, #pools == 1 and "" or "s", cfg.url))
  conn:close()
  return 0
end

-- Runs a subcommand: worker, workers or keygen; the exit status.
function M.main(cmd, args)
  core_pool = require("luamp.pool").Pool
  if args[1] == "-h" or args[1] == "--help" then
    io.stdout:write(USAGE, "\n")
    return 0
  elseif cmd == "keygen" then
    print(broker.keygen())
    return 0
  elseif cmd == "workers" then
    return workers_main(args)
  end
  return worker_main(args)
end

return M
