-- luamp.broker -- what the broker Pool and `luamp worker` share: the
-- broker's URL, connections that raise BrokerError naming it, the keys
-- derived from the authkey, the names of the keys in Redis, and the
-- scripts that change a pool's state in one step on the server.
--
-- Keys (ns is "luamp" unless the URL says ?ns=):
--   ns:pools            SET    the pools alive (each also has a meta key)
--   ns:p:P:meta         HASH   m: the pool's sealed settings; dup: late
--                              duplicate results; expires with its owner
--   ns:p:P:t            STREAM the tasks, group "w"; fields s (seq),
--                              p (sealed batch), d (deliveries)
--   ns:p:P:r            STREAM the outcomes: s, o (ok, lost), v, d, w
--   ns:p:P:done         STRING a bit per seq: its outcome is recorded
--   ns:p:P:refused      HASH   messages refused by workers, by reason
--   ns:p:P:code:H       STRING a sealed task function, H its keyed hash
--   ns:workers          SET    the workers; each has ns:w:ID, a HASH
--                              with a time to live (its heartbeat)
--   ns:dead             STREAM tasks that ran out of deliveries
--   ns:announce         STREAM "a pool came or went", for the workers

local core = require "luamp.core"
local errors = require "luamp.errors"

local error, ipairs, pcall, setmetatable, tonumber, tostring, type =
  error, ipairs, pcall, setmetatable, tonumber, tostring, type
local format = string.format
local hmac = core.hmac

local M = {}

M.DEFAULT_PORT = 6379

-- ------------------------------------------------------------------ URL

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h)
    return string.char(tonumber(h, 16))
  end))
end

local function query(q, cfg)
  for k, v in q:gmatch("([^&=]+)=([^&]*)") do
    k, v = unescape(k), unescape(v)
    if k == "db" then cfg.db = tonumber(v)
    elseif k == "ns" then cfg.ns = v
    elseif k == "password" then cfg.password = v
    else return nil, "unknown parameter '" .. k .. "'" end
  end
  return cfg
end

-- The parts of a broker URL: redis://[[user]:password@]host[:port][/db]
-- [?ns=name] or redis+unix://[:password@]/path[?db=N&ns=name].  The URL
-- as shown in messages leaves the password out.
function M.parse(url)
  if type(url) ~= "string" then
    return nil, "broker URL must be a string, got " .. type(url)
  end
  local cfg = {db = 0, ns = "luamp"}
  local rest, q = url:match("^([^?]*)%??(.*)$")
  local scheme, body = rest:match("^([%w+]+)://(.*)$")
  if scheme == "redis" then
    -- The credentials end at the last "@" (a password may hold one).
    local auth, where = body:match("^(.*)@([^@]*)$")
    if not auth then auth, where = "", body end
    local hostport, db = where:match("^([^/]*)/?(.*)$")
    local host, port = hostport:match("^%[(.+)%]:?(.*)$")
    if not host then host, port = hostport:match("^([^:]*):?(.*)$") end
    if not host or host == "" then return nil, "no host in the URL" end
    if port ~= "" and not (port:match("^%d+$") and tonumber(port) < 65536)
    then
      return nil, "bad port '" .. port .. "'"
    end
    cfg.host, cfg.port = host, tonumber(port) or M.DEFAULT_PORT
    if db ~= "" then cfg.db = db:match("^%d+$") and tonumber(db) end
    if auth ~= "" then
      local user, pw = auth:match("^([^:]*):(.*)$")
      if user ~= nil and user ~= "" then cfg.user = unescape(user) end
      cfg.password = unescape(pw or auth)
    end
  elseif scheme == "redis+unix" then
    local auth, path = body:match("^(.-)@?(/.*)$")
    if not path then return nil, "no socket path in the URL" end
    if auth ~= "" then cfg.password = unescape(auth:match("^:?(.*)$")) end
    cfg.path = path
  else
    return nil, "the URL must start with redis:// or redis+unix://"
  end
  local ok, e = query(q, cfg)
  if not ok then return nil, e end
  if not cfg.db or cfg.db < 0 then return nil, "bad database number" end
  cfg.url = cfg.path and format("redis+unix://%s?db=%d", cfg.path, cfg.db)
    or format("redis://%s:%d/%d", cfg.host:find(":", 1, true)
              and "[" .. cfg.host .. "]" or cfg.host, cfg.port, cfg.db)
  if cfg.ns ~= "luamp" then -- (a namespace of its own is part of it)
    cfg.url = cfg.url .. (cfg.path and "&" or "?") .. "ns=" .. cfg.ns
  end
  return cfg
end

-- The broker a Pool or a worker is given: its argument, else
-- LUAMP_BROKER.  Raises a plain error for a URL it cannot read.
function M.config(url, level)
  url = url or os.getenv("LUAMP_BROKER")
  local cfg, e = M.parse(url)
  if not cfg then error("bad broker URL: " .. e, level + 1) end
  return cfg
end

-- ------------------------------------------------------------------ keys

-- The key in the file at path, its last newline left out; what names the
-- file in the error, raised at level (nil: with no position).
function M.keyfile(path, what, level)
  local f, e = io.open(path, "rb")
  if not f then
    error("cannot read " .. what .. ": " .. e, level and level + 1 or 0)
  end
  local key = f:read("a"):gsub("\r?\n$", "")
  f:close()
  return key
end

-- This host's name, as workers and owners tell it.
function M.hostname()
  local f = io.open("/proc/sys/kernel/hostname")
  local name = f and f:read("l") or "?"
  if f then f:close() end
  return name
end

-- The authkey: the argument, else LUAMP_AUTHKEY, else the contents of the
-- file LUAMP_AUTHKEY_FILE.  At least 16 bytes.  Raises with what to do
-- when there is none.
function M.authkey(key, level)
  level = (level or 1) + 1
  if key == nil then key = os.getenv("LUAMP_AUTHKEY") end
  if key == nil and os.getenv("LUAMP_AUTHKEY_FILE") then
    key = M.keyfile(os.getenv("LUAMP_AUTHKEY_FILE"), "LUAMP_AUTHKEY_FILE",
                    level)
  end
  if key == nil then
    error("a broker pool needs an authkey: pass authkey = ..., or set "
          .. "LUAMP_AUTHKEY or LUAMP_AUTHKEY_FILE (`luamp keygen` makes "
          .. "one)", level)
  end
  if type(key) ~= "string" then
    error("authkey must be a string, got " .. type(key), level)
  end
  if #key < 16 then
    error("authkey must have at least 16 bytes (`luamp keygen` makes "
          .. "one)", level)
  end
  return key
end

-- The keys derived from an authkey, one for each use; the authkey itself
-- never leaves this process.
function M.keys(authkey)
  return {
    msg = hmac(authkey, "luamp msg v1"),   -- tasks, outcomes, settings
    code = hmac(authkey, "luamp code v1"), -- task functions
    id = hmac(authkey, "luamp id v1"),     -- names of task functions
  }
end

-- A stream entry's fields {f1, v1, f2, v2...} as a table.
function M.fields(list)
  local f = {}
  for i = 1, #list, 2 do f[list[i]] = list[i + 1] end
  return f
end

function M.hex(s)
  return (s:gsub(".", function(c) return format("%02x", c:byte()) end))
end

-- A fresh key, as `luamp keygen` prints it.
function M.keygen() return M.hex(core.random_bytes(32)) end

-- The names of a pool's keys.
function M.names(ns, pid)
  local p = ns .. ":p:" .. pid .. ":"
  return {meta = p .. "meta", t = p .. "t", r = p .. "r", done = p .. "done",
          refused = p .. "refused", code = p .. "code:",
          pools = ns .. ":pools",
          dead = ns .. ":dead", announce = ns .. ":announce",
          workers = ns .. ":workers"}
end

function M.worker_key(ns, wid) return ns .. ":w:" .. wid end

-- The contexts that bind a sealed message to its place.
function M.task_ctx(pid, seq) return "t|" .. pid .. "|" .. seq end
function M.outcome_ctx(pid, seq) return "o|" .. pid .. "|" .. seq end
function M.meta_ctx(pid) return "m|" .. pid end
function M.code_ctx(h) return "c|" .. h end

-- --------------------------------------------------------------- scripts

-- Records the outcome of task `seq` unless one is in already (first
-- completion wins), and takes the entry off the stream.
-- KEYS: t, r, done, meta.  ARGV: entry id, seq, o, v, d, worker, ttl ms.
M.COMPLETE = [==[
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
redis.call('XACK', KEYS[1], 'w', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('SETBIT', KEYS[3], ARGV[2], 1) == 1 then
  redis.call('HINCRBY', KEYS[4], 'dup', 1)
  return 'duplicate'
end
redis.call('XADD', KEYS[2], '*', 's', ARGV[2], 'o', ARGV[3], 'v', ARGV[4],
           'd', ARGV[5], 'w', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 'ok'
]==]

-- Keeps the entries a worker runs from being taken back: for each id
-- still pending to this consumer, its idle time is reset.  Returns the
-- ids that are no longer its own, or 'gone' when the stream is: the
-- pool ended, or its keys expired with its owner.
-- KEYS: t.  ARGV: consumer, ids...
M.RENEW = [==[
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local lost = {}
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], 'w', ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[1] then
    redis.call('XCLAIM', KEYS[1], 'w', ARGV[1], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
]==]

-- Gives tasks back: the entries named (mode 'ids': an executor died
-- running them; 'return': their worker stopped cleanly, which counts no
-- delivery), or with mode 'idle' those pending longer than the lease
-- (their worker is gone, frozen or cut off).  Each is published anew
-- with one more delivery, unless its outcome is in, or it has had
-- max_deliveries, when it fails as lost (and is noted in dead).  Returns
-- how many it gave back and how many it failed.
-- KEYS: t, r, done, dead.  ARGV: mode, lease ms (for 'idle'),
-- max_deliveries, ttl ms, reason, pool id, ids...
M.GIVE_BACK = [==[
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local ids = {}
if ARGV[1] == 'idle' then
  local p = redis.call('XPENDING', KEYS[1], 'w', 'IDLE', ARGV[2], '-', '+',
                       100)
  for _, e in ipairs(p) do ids[#ids + 1] = e[1] end
else
  for i = 7, #ARGV do ids[#ids + 1] = ARGV[i] end
end
local ret = ARGV[1] == 'return'
local back, failed = 0, 0
for _, id in ipairs(ids) do
  local r = redis.call('XRANGE', KEYS[1], id, id)
  redis.call('XACK', KEYS[1], 'w', id)
  redis.call('XDEL', KEYS[1], id)
  if r[1] then
    local f = {}
    for i = 1, #r[1][2], 2 do f[r[1][2][i]] = r[1][2][i + 1] end
    local d = tonumber(f.d)
    if redis.call('GETBIT', KEYS[3], f.s) == 1 then
      -- its outcome is in: nothing to do
    elseif not ret and d >= tonumber(ARGV[3]) then
      redis.call('SETBIT', KEYS[3], f.s, 1)
      redis.call('XADD', KEYS[2], '*', 's', f.s, 'o', 'lost', 'v', ARGV[5],
                 'd', d, 'w', '')
      redis.call('PEXPIRE', KEYS[2], ARGV[4])
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'pool', ARGV[6],
                 's', f.s, 'd', d, 'reason', ARGV[5])
      failed = failed + 1
    else
      redis.call('XADD', KEYS[1], '*', 's', f.s, 'p', f.p, 'd',
                 ret and d or d + 1)
      back = back + 1
    end
  end
end
return {back, failed}
]==]

-- ------------------------------------------------------------ connections

local Conn = {}
Conn.__index = Conn
M.Conn = Conn

local function broker_error(cfg, msg, level)
  error(errors.new("BrokerError", msg, {url = cfg.url}), level and level + 1)
end
M.broker_error = broker_error

-- A connection to the broker of cfg, made ready: AUTH, SELECT, a name.
-- Raises BrokerError ("cannot connect to redis://...: Connection
-- refused") within timeout seconds.
function M.connect(cfg, role, timeout, level)
  level = (level or 1) + 1
  timeout = timeout or 10
  local ok, c = pcall(core.redis_connect, {host = cfg.host, port = cfg.port,
                                           path = cfg.path,
                                           timeout = timeout})
  if not ok then
    if core.is_interrupt(c) then error(c, 0) end
    local why = tostring(c):match(": ([^:]*)$") or tostring(c)
    broker_error(cfg, "cannot connect to " .. cfg.url .. ": " .. why, level)
  end
  local self = setmetatable({c = c, cfg = cfg, timeout = timeout}, Conn)
  local ids = {}
  if cfg.password then -- an ACL user's, or the default user's
    ids[#ids + 1] = c:send(cfg.user and {"AUTH", cfg.user, cfg.password}
                                     or {"AUTH", cfg.password}, timeout)
  end
  if cfg.db ~= 0 then ids[#ids + 1] = c:send({"SELECT", cfg.db}, timeout) end
  ids[#ids + 1] = c:send({"CLIENT", "SETNAME", format("luamp-%s:%d", role,
                                                       core.getpid())},
                         timeout)
  for _, id in ipairs(ids) do
    local done, v = c:wait(id)
    if not done then
      c:close()
      if v and v:find("NOAUTH", 1, true) then
        error(errors.new("AuthenticationError", cfg.url .. " wants a "
              .. "password: put it in the URL (redis://:PASSWORD@host)"),
              level)
      end
      if v and (v:find("WRONGPASS", 1, true)
                or v:find("invalid password", 1, true)) then
        error(errors.new("AuthenticationError", cfg.url .. " refused the "
              .. "password: " .. v), level)
      end
      broker_error(cfg, "cannot use " .. cfg.url .. ": " .. tostring(v), level)
    end
  end
  return self
end

-- Raises the BrokerError of a connection that has ended.
function Conn:lost(level)
  local _, why = self.c:alive()
  broker_error(self.cfg, "lost connection to " .. self.cfg.url .. ": "
               .. tostring(why), (level or 1) + 1)
end

function Conn:alive() return (self.c:alive()) end

-- Sends a command; its reply is taken with take or wait (keep ~= false),
-- or dropped (its error counted).  The reply must come within timeout
-- seconds (default: the connection's), or the connection ends.
function Conn:send(argv, timeout, keep)
  local ok, id = pcall(self.c.send, self.c, argv, timeout or self.timeout,
                       keep)
  if not ok then self:lost(2) end
  return id
end

-- The outcome of request id: nil while it has not come; else the value,
-- or raises (BrokerError for a lost connection, a plain error for an
-- error reply).
local function outcome(self, done, v, level)
  if done == nil then return nil, false end
  if done then return v, true end
  if not self.c:alive() then self:lost(level + 1) end
  error("redis: " .. tostring(v), level + 1)
end

function Conn:take(id)
  local done, v = self.c:take(id)
  return outcome(self, done, v, 2)
end

function Conn:wait(id, timeout)
  local done, v = self.c:wait(id, timeout)
  return outcome(self, done, v, 2)
end

-- send and wait in one.
function Conn:call(argv, timeout)
  local id = self:send(argv, timeout)
  local done, v = self.c:wait(id)
  return (outcome(self, done, v, 2))
end

-- A script, by its text (the server caches it).
function Conn:eval_argv(script, keys, args)
  local argv = {"EVAL", script, #keys}
  for _, k in ipairs(keys) do argv[#argv + 1] = k end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return argv
end

function Conn:dispatch() self.c:dispatch() end

function Conn:close() self.c:close() end

-- The server's run id, which changes when it restarts.
function Conn:run_id()
  local info = self:call({"INFO", "server"})
  return info:match("run_id:(%w+)")
end

return M
