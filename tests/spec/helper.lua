-- helper.lua -- loaded by busted before the specs (--helper).  It makes
-- `require "luamp"` work under a stock lua5.4 and inside the host alike,
-- and gives every spec the same leak check: after each test no child is
-- left, no shared object or arena block is leaked and no fd is left open.

local mp = require "luamp"
local core = require "luamp.core"
local lfs = require "lfs"
local busted = require "busted"
local assert = require "luassert"

local H = {}

H.luamp = os.getenv("LUAMP") or "build/luamp"
H.build = os.getenv("LUAMP_BUILD") or "build"

-- The passes that repeat the normal tree's host pass (under a stock
-- lua5.4, under the other start methods, under the sanitizers) set
-- LUAMP_SPEC_SHORT: their loops of kills and of random trials run a
-- quarter as many rounds (H.rounds: each kind of round still runs), and
-- the tests whose time goes to waiting out leases and timeouts or to
-- moving hundreds of MiB (H.long_it) run in the host pass alone: what
-- they test is the same code in every pass.
H.SHORT = (os.getenv("LUAMP_SPEC_SHORT") or "") ~= ""

-- n rounds, or a quarter of them (one at the least) in a short pass.
function H.rounds(n)
  return H.SHORT and math.max(1, n // 4) or n
end

-- `it`, or in a short pass `pending` (saying why).
function H.long_it(name, fn)
  if H.SHORT then
    return busted.pending(name .. " (long: run by the normal tree's "
                          .. "host pass alone)")
  end
  return busted.it(name, fn)
end

local function fdcount()
  local n = 0
  for name in lfs.dir("/proc/self/fd") do
    if name ~= "." and name ~= ".." then n = n + 1 end
  end
  return n
end

function H.snapshot()
  collectgarbage()
  collectgarbage()
  local st = mp.stats()
  return {objects = st.objects, blocks = st.arena_blocks, fds = fdcount()}
end

-- Checks that the shared objects and arena blocks are back to a
-- H.snapshot() taken before; why, if given, ends the failure messages.
function H.settled(before, why)
  local now = H.snapshot()
  assert.are.equal(before.objects, now.objects, "shared objects leaked"
    .. (why or ""))
  assert.are.equal(before.blocks, now.blocks, "arena blocks leaked"
    .. (why or ""))
end

-- Installs before_each/after_each in the calling describe block.
function H.leakcheck()
  local before
  busted.before_each(function()
    before = H.snapshot()
  end)
  busted.after_each(function()
    local left = mp.active_children()
    for _, p in ipairs(left) do
      p:kill()
      p:join()
    end
    assert.are.equal(0, #left, "children left running by the test")
    assert.are.equal(0, mp.stats().children, "children not reaped")
    local now = H.snapshot()
    assert.are.same(before, now, "shared objects, arena blocks or fds leaked")
  end)
end

-- Writes s to the file at path, replacing it.  (H.readfile is defined
-- with H.PROC, below.)
function H.writefile(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

-- A file opened for appending, unbuffered: what a process writes there is
-- on disk even if it is killed the next instant.
function H.appender(path)
  local f = assert(io.open(path, "ab"))
  f:setvbuf("no")
  return f
end

-- Runs a shell command; returns its exit status, stdout and stderr.
function H.run(cmd)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(cmd .. " >" .. out .. " 2>" .. err)
  local o, e = assert(H.readfile(out)), assert(H.readfile(err))
  os.remove(out)
  os.remove(err)
  if how == "signal" then code = 128 + code end
  return code, o, e
end

-- Quotes a string for the shell.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a Lua chunk in a fresh `luamp -e` and returns status, stdout, stderr.
function H.luamp_e(code, opts)
  return H.run((opts or "") .. " " .. H.q(H.luamp) .. " -e " .. H.q(code))
end

-- The start of a chunk for H.luamp_e that reads files and looks at
-- processes in /proc.  It defines:
--   readfile(path) -> the whole file, nil if it does not exist
--   state(pid) -> the state letter of process pid (R, S, Z...), nil if it
--     is gone
-- H.readfile and H.state are these two, so that the specs and the chunks
-- they run elsewhere read /proc the same way.
H.PROC = [[
local function readfile(path)
  local f = io.open(path, "rb")
  if f == nil then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local function state(pid)
  local s = readfile("/proc/" .. pid .. "/stat")
  return s and s:match("^%d+ %(.*%) (%a)")
end
]]
H.readfile, H.state = load(H.PROC .. "return readfile, state", "=H.PROC")()

-- The start of a chunk for H.luamp_e that tests Ctrl-C in a blocking call.
-- It defines `mp`, what H.PROC defines, and:
--   interrupted(fn) -> took, p, pcall(fn, p)...: starts a child p that
--     sends this process SIGINT once this process is asleep (blocked in
--     fn's call), then sleeps; calls fn(p) protected.  took is the time
--     from the signal to fn's return.  The caller ends p.
--   interrupt(name, fn): interrupted(fn), p ended, and a line
--     "name <ok> <error type> <error text>" printed.
H.CTRL_C = H.PROC .. [[
local mp = require "luamp"
local function interrupted(fn)
  local me, armed, told = mp.current_process().pid, mp.Value("i", 0),
    mp.Value("d", 0)
  local p = mp.Process{target = function()
    local deadline = mp.monotonic() + 10
    while not (armed.value == 1 and state(me) == "S")
          and mp.monotonic() < deadline do
      mp.sleep(0.001)
    end
    told.value = mp.monotonic()
    os.execute("kill -INT " .. me)
    mp.sleep(60)
  end}
  p:start()
  armed.value = 1
  local r = table.pack(pcall(fn, p))
  return mp.monotonic() - told.value, p, table.unpack(r, 1, r.n)
end
local function interrupt(name, fn)
  local _, p, ok, e = interrupted(fn)
  p:terminate()
  p:join()
  print(name, ok, type(e) == "table" and e.type, tostring(e))
end
]]

-- Shared by the specs.

-- Times fn(): seconds taken, then what fn returned.
function H.timed(fn)
  local t0 = mp.monotonic()
  local r = table.pack(fn())
  return mp.monotonic() - t0, table.unpack(r, 1, r.n)
end

-- Whether process pid runs: true unless it is gone, a zombie or dead.
-- Returns a boolean.
-- (What a child may call reaches its helpers through upvalues, not H: a
-- child of another start method is sent the function, and H is not a
-- module it can load.)
local state = H.state
function H.alive(pid)
  local s = state(pid)
  return s ~= nil and s ~= "Z" and s ~= "X"
end

-- Polls pred() every `step` seconds (default 0.01) until it is true or
-- `timeout` seconds have passed; returns whether it came true.
local function wait_for(pred, timeout, step)
  local deadline = mp.monotonic() + timeout
  repeat
    if pred() then return true end
    mp.sleep(step or 0.01)
  until mp.monotonic() >= deadline
  return pred() and true or false
end
H.wait_for = wait_for

-- Polls fn() (10 s at most) until it returns want, then checks it.
-- Returns nothing; fails the test if fn() never gave want.
function H.reaches(want, fn)
  H.wait_for(function() return fn() == want end, 10, 0.001)
  assert.are.equal(want, fn())
end

-- The integers a to b: {a, a + 1, ..., b} with n set, as a List's
-- totable gives them (and as a Pool's map takes and returns them).
function H.range(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = i end
  t.n = #t
  return t
end

-- Waits (10 s at most) until process pid is asleep; raises if it never
-- is.  Returns nothing.
function H.until_asleep(pid)
  assert(wait_for(function() return state(pid) == "S" end, 10, 0.001),
    "process " .. pid .. " never slept")
end

-- A Process that sleeps until it is killed, not started yet.  Returns the
-- Process; the test starts, kills and joins it.
function H.sleeper()
  return mp.Process{target = function() mp.sleep(60) end}
end

-- Starts a child running fn(...) and returns its Process object.
function H.spawn(fn, ...)
  local p = mp.Process{target = fn, args = table.pack(...)}
  p:start()
  return p
end

-- Joins p (10 s at most) and checks that it ended with status 0; why, if
-- given, ends the failure messages.
function H.finish(p, why)
  assert.is_true(p:join(10), "the child did not end" .. (why or ""))
  assert.are.equal(0, p.exitcode, "the child failed" .. (why or ""))
end

-- Checks that a time is between lo and hi seconds.
function H.took(dt, lo, hi, what)
  assert.is_true(dt >= lo and dt < hi,
    what .. " took " .. dt .. " s, expected [" .. lo .. ", " .. hi .. ")")
end

-- Calls fn(...) and checks that it raised a luamp error object of type
-- etype whose message is msg (a string), or matches msg.pattern, and whose
-- text is "luamp.<etype>: <message>".  Returns the error object.
function H.raises(etype, msg, fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "no error was raised")
  assert.are.equal("table", type(e), "not an error object: " .. tostring(e))
  assert.are.equal(mp.Error, getmetatable(e))
  assert.are.equal(etype, e.type, tostring(e))
  if type(msg) == "table" then
    assert.matches(msg.pattern, e.message)
  else
    assert.are.equal(msg, e.message)
  end
  assert.are.equal("luamp." .. etype .. ": " .. e.message, tostring(e))
  return e
end

-- The message of the error fn(...) raises, a string without its position
-- "file:line: "; fails the test if fn raises nothing or an error object.
function H.errmsg(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "no error was raised")
  assert.are.equal("string", type(e), "not a string: " .. tostring(e))
  return (e:gsub("^[^:]*:%d+: ", "", 1))
end

-- How many processes tostring(c) lists as waiting on Condition c.
-- Returns a number.
function H.waiting(c)
  return tonumber(tostring(c):match("(%d+) waiting%)$"))
end

-- The pids of this process's running children, sorted.  Returns a
-- table (a Pool's workers, where the pool is the only child).
function H.child_pids()
  local pids = {}
  for _, p in ipairs(mp.active_children()) do pids[#pids + 1] = p.pid end
  table.sort(pids)
  return pids
end

-- Calls outer() n times, each after making garbage whose finalizer calls
-- inner(), so that the collector runs inner inside outer as outer's
-- decoding allocates (the collector set to run often meanwhile).  Returns
-- how many calls raised or returned a value that whole(v) refuses, and
-- the first such error or value.
function H.finalizer_inside(n, outer, inner, whole)
  local mt = {__gc = function() inner() end}
  local was = collectgarbage("incremental")
  local bad, first = 0, nil
  for _ = 1, n do
    setmetatable({}, mt)
    local ok, v = pcall(outer)
    if not ok or not whole(v) then
      bad = bad + 1
      first = first or v
    end
  end
  collectgarbage(was)
  collectgarbage()
  return bad, first
end

-- A string of len bytes that repeats "<tag>", so that a reader can tell
-- a whole value from a torn one.  Returns the string.
function H.payload(tag, len)
  local unit = "<" .. tag .. ">"
  return unit:rep(len // #unit + 1):sub(1, len)
end

-- A value tagged r for the fault specs to store and check whole: mostly
-- small, now and then tens of KiB (out of line in the arena); extra goes
-- in as it is (a shared object, to check its references).
function H.fault_value(r, extra)
  local len = math.random() < 0.1 and math.random(16 << 10, 40 << 10)
    or math.random(0, 300)
  return {r = r, len = len, s = H.payload(r, len), extra = extra}
end

-- Checks that v, read back from a shared container at `where`, is an
-- H.fault_value whole, and holds extra when that is given.
function H.assert_whole(v, where, extra)
  assert.are.equal("table", type(v), where)
  assert.are.equal(v.len, #v.s, "a torn value at " .. where)
  assert.is_true(v.s == H.payload(v.r, v.len), "a torn value at " .. where)
  if extra ~= nil then
    assert.is_true(v.extra == extra, "a lost reference at " .. where)
  end
end

-- A small value for key or place r naming the objects of list objs (in
-- turn, 48 times in all): each a reference its container counts, so that
-- a process storing and replacing such values spends much of its time
-- taking and dropping references.  Objects told apart catch a reaper that
-- settles a change cut short with the wrong ones.
local NREFS = 48
function H.fault_refs(r, objs)
  local v = {r = r}
  for i = 1, NREFS do v[i] = objs[(i - 1) % #objs + 1] end
  return v
end

-- Checks that v, read back at `where`, is an H.fault_refs value of objs.
function H.assert_refs(v, where, objs)
  assert.are.equal("table", type(v), where)
  assert.are.equal(NREFS, #v, "a torn value at " .. where)
  for i = 1, NREFS do
    assert.is_true(v[i] == objs[(i - 1) % #objs + 1],
                   "a lost reference at " .. where)
  end
end

-- Kills processes at random moments (H.kill_busy) as each makes a shared
-- object whose values name the objects o.held() returns, fills it and
-- destroys it, over and over (o.step(held)); then checks that nothing is
-- left once those are closed.  o.workers, o.rounds, o.pause: kill_busy's
-- (2, 100, 0.004).
function H.destroy_killed(o)
  local why, seed = H.seeded()
  local before = H.snapshot()
  local held, step = o.held(), o.step
  H.kill_busy{workers = o.workers or 2, rounds = o.rounds or 100,
    pause = o.pause or 0.004, why = why, seed = seed,
    step = function() step(held) end}
  for _, x in ipairs(held) do x:close() end
  H.settled(before, why)
end

-- Kills, o.rounds (40) times at a random moment, a child that changes
-- container c = o.make() over and over: it makes its values once
-- (o.values(held), held being o.held(), shared objects its values may
-- name) and then runs o.step(c, values) in a loop.  Once it is busy
-- (#c > 0) it is killed; o.check(c, round, why, held) then judges what
-- it left, and c is cleared for the next round.  At the end nothing may
-- be left once c and held are closed.
function H.kill_changes(o)
  local why = H.seeded()
  local before = H.snapshot()
  local c, held = o.make(), o.held()
  H.kill_rounds{rounds = o.rounds or 40, pause = 0.003, why = why,
    start = function()
      local p = H.spawn(function()
        local values = o.values(held)
        while true do o.step(c, values) end
      end)
      H.wait_for(function() return #c > 0 end, 10, 0.0005) -- it is busy
      return p
    end,
    after = function(round)
      o.check(c, round, why, held)
      c:clear() -- each round starts empty
    end}
  c:close()
  for _, x in ipairs(held) do x:close() end
  H.settled(before, why)
end

-- Seeds math.random from the clock, for a test that runs at random.
-- Returns " (random seed N)", to end its failure messages, and N.
function H.seeded()
  local seed = os.time()
  math.randomseed(seed)
  return " (random seed " .. seed .. ")", seed
end

-- Kills process p with SIGKILL and reaps it (10 s at most), checking that
-- the signal ended it; why, if given, ends the failure messages.
function H.kill(p, why)
  p:kill()
  assert.is_true(p:join(10), "process " .. p.pid .. " lives on after "
    .. "SIGKILL" .. (why or ""))
  assert.are.equal(-9, p.exitcode, "process " .. p.pid .. " ended by "
    .. "itself" .. (why or ""))
end

-- The fault specs' harness: kills processes with SIGKILL at random
-- moments, H.rounds(o.rounds) times; returns the number of processes
-- killed.
-- Each round:
--   o.start(round), if given, starts a process (and may wait until it is
--     busy) and returns it;
--   then a pause of a random part of o.pause seconds;
--   o.victim(round, started), if given, returns the process to kill
--     instead (nil: none this round);
--   the kill: H.kill(p, o.why), or with o.reap == false only p:kill(),
--     for processes that someone else reaps (a Pool's workers);
--   o.after(round, p), if given, checks what is left and starts a
--     replacement.
function H.kill_rounds(o)
  local kills = 0
  for round = 1, H.rounds(o.rounds) do
    local p = o.start and o.start(round)
    mp.sleep(math.random() * o.pause)
    if o.victim then p = o.victim(round, p) end
    if p ~= nil then
      kills = kills + 1
      if o.reap == false then p:kill() else H.kill(p, o.why) end
      if o.after then o.after(round, p) end
    end
  end
  return kills
end

-- Keeps o.workers processes busy calling o.step() over and over, kills
-- one of them at random o.rounds times (after a pause of a random part of
-- o.pause seconds) and starts another in its place; then stops them all
-- and checks that each ended well.  Each seeds math.random with o.seed
-- plus a number of its own; o.why ends the failure messages.
function H.kill_busy(o)
  local stop = core.blob(1)
  stop:set("\0")
  local step, seed = o.step, o.seed or 0
  local function start(id)
    return H.spawn(function()
      math.randomseed(seed + id)
      while stop:get() == "\0" do step() end
    end)
  end
  local workers = {}
  for i = 1, o.workers do workers[i] = start(i) end
  local i -- the victim's place in workers
  H.kill_rounds{rounds = o.rounds, pause = o.pause, why = o.why,
    victim = function()
      i = math.random(#workers)
      return workers[i]
    end,
    after = function(round) workers[i] = start(#workers + round) end}
  stop:set("\1")
  for _, p in ipairs(workers) do H.finish(p, o.why) end
  stop:close()
end

package.loaded["spec_helper"] = H
_G.spec_helper = H
-- ----------------------------------------------------------- a broker

-- Waits (timeout seconds) for a file to appear in dir; the first name
-- there as a number (the specs name marks after pids), or nil.
function H.first_mark(dir, timeout)
  local first
  H.wait_for(function()
    local f = io.popen("ls " .. H.q(dir))
    first = tonumber(f:read("l"))
    f:close()
    return first ~= nil
  end, timeout)
  return first
end

-- A redis-server of the test's own: loopback, a random port (20000 to
-- 60000, another tried if it is taken), a random password, no
-- persistence, in a directory of its own.  Fields: port, password, url,
-- dir, pid; methods cli(args...) -> the reply as text (redis-cli),
-- stop(), kill() (-9), start() (again, on the same port: empty).
-- Returns nil and a reason when redis-server is not installed.
local Redis = {}
Redis.__index = Redis

function H.redis_server()
  if os.execute("command -v redis-server >/dev/null 2>&1") ~= true then
    return nil, "redis-server is not installed"
  end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. H.q(dir)))
  local r = setmetatable({dir = dir,
                          password = string.format("pw%08x",
                                                   math.random(0, 0x7fffffff))},
                         Redis)
  for _ = 1, 20 do
    r.port = math.random(20000, 60000)
    if r:start() then
      r.url = string.format("redis://:%s@127.0.0.1:%d/0", r.password, r.port)
      return r
    end
  end
  error("cannot start redis-server on a free port")
end

-- Starts the server (daemonized); true once it answers.
-- The shell command that starts the server.
function Redis:command()
  return string.format(
    "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
    .. "--requirepass %s --dir %s --daemonize yes --pidfile %s/redis.pid "
    .. "--logfile %s/redis.log --loglevel warning "
    .. "--enable-debug-command local", self.port, self.password,
    H.q(self.dir), H.q(self.dir), H.q(self.dir))
end

function Redis:start()
  local pidfile = self.dir .. "/redis.pid"
  os.remove(pidfile)
  if os.execute(self:command()) ~= true then return false end
  local up = H.wait_for(function()
    return self:cli("PING") == "PONG"
  end, 5, 0.02)
  if not up then return false end
  self.pid = tonumber(H.readfile(pidfile))
  return true
end

-- Kills the server with -9 and starts it again on the same port, empty,
-- in one shell command: no luamp call (whose pool work might reconnect
-- meanwhile) runs in between.  True once it answers.
function Redis:restart()
  local ok = os.execute(string.format(
    "kill -9 %d; while kill -0 %d 2>/dev/null; do sleep 0.01; done; %s; "
    .. "for i in $(seq 500); do redis-cli -p %d -a %s --no-auth-warning "
    .. "ping 2>/dev/null | grep -q PONG && exit 0; sleep 0.01; done; exit 1",
    self.pid, self.pid, self:command(), self.port, self.password))
  self.pid = tonumber(H.readfile(self.dir .. "/redis.pid"))
  return ok == true
end

function Redis:cli(...)
  local args = {}
  for i, a in ipairs({...}) do args[i] = H.q(a) end
  local f = io.popen(string.format(
    "redis-cli -p %d -a %s --no-auth-warning %s 2>&1", self.port,
    H.q(self.password), table.concat(args, " ")))
  local out = f:read("a")
  f:close()
  return (out:gsub("\n$", ""))
end

-- The number of keys (DBSIZE).
function Redis:dbsize() return tonumber(self:cli("DBSIZE")) end

function Redis:kill()
  if self.pid then os.execute("kill -9 " .. self.pid .. " 2>/dev/null") end
  H.wait_for(function() return not H.alive(self.pid) end, 5)
  self.pid = nil
end

function Redis:stop()
  if self.pid then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    H.wait_for(function() return not H.alive(self.pid) end, 5)
  end
  self.pid = nil
  os.execute("rm -rf " .. H.q(self.dir))
end

-- A `luamp worker` on the broker r, in the background: fields pid and
-- log (its stderr and stdout); methods kill(sig) and wait(), and
-- executors() -> the pids of its children.  opts: c (slots, default 2),
-- key (authkey; default the tests' own), args (more arguments).
local Worker = {}
Worker.__index = Worker
H.AUTHKEY = "luamp-test-key-0123456789abcdef"

function H.worker(r, opts)
  opts = opts or {}
  local log = os.tmpname()
  local cmd = string.format("LUAMP_AUTHKEY=%s exec %s worker %s -c %d %s "
    .. ">%s 2>&1 & echo $!", H.q(opts.key or H.AUTHKEY), H.q(H.luamp),
    H.q(r.url), opts.c or 2, opts.args or "", H.q(log))
  local f = io.popen(cmd)
  local pid = tonumber(f:read("l"))
  f:close()
  local w = setmetatable({pid = pid, log = log, r = r}, Worker)
  assert(H.wait_for(function()
    return (H.readfile(log) or ""):find("serving", 1, true) ~= nil
      or not H.alive(pid)
  end, 10), "the worker did not start")
  return w
end

function Worker:executors()
  local f = io.popen("pgrep -P " .. self.pid)
  local pids = {}
  for line in f:lines() do pids[#pids + 1] = tonumber(line) end
  f:close()
  return pids
end

function Worker:kill(sig)
  os.execute(string.format("kill -%s %d 2>/dev/null", sig or "TERM",
                           self.pid))
end

-- The last lines of its log, for a failure's message.
function Worker:log_tail()
  local log = H.readfile(self.log) or ""
  return "\n" .. log:sub(-1500)
end

-- Waits for the worker to end (10 s at most); its log, and whether it
-- ended.
function Worker:wait()
  local ended = H.wait_for(function() return not H.alive(self.pid) end, 10)
  local log = H.readfile(self.log) or ""
  return log, ended
end

-- Stops it (SIGTERM, then -9 for it and its children) and removes its
-- log; the log.
function Worker:stop()
  local kids = self:executors()
  self:kill("TERM")
  local log, ended = self:wait()
  if not ended then
    for _, k in ipairs(kids) do
      os.execute("kill -9 " .. k .. " 2>/dev/null")
    end
    self:kill("KILL")
  end
  os.remove(self.log)
  return log
end

-- ------------------------------------------------ other start methods

-- With LUAMP_START_METHOD set to "spawn" or "forkserver", a Process's
-- target is sent to its child as a message.  busted runs each spec file
-- in an environment of its own, whose lookups go through a function that
-- cannot be sent; so under those methods the spec files run in the
-- globals themselves, with busted's names put there, and a target finds
-- the globals of the process it runs in.  H.method is the method;
-- H.fork_only is `it` under fork, and `pending` (saying so) otherwise,
-- for what only a fork can do: run a function that cannot be sent,
-- share the parent's copies of its values.
H.method = os.getenv("LUAMP_START_METHOD") or ""
if H.method == "" then H.method = "fork" end
function H.fork_only(name, fn)
  if H.method == "fork" then return busted.it(name, fn) end
  return busted.pending(name .. " (a fork's alone: not under "
                        .. H.method .. ")")
end
if H.method ~= "fork" then
  local index = getmetatable(busted).__index
  local core
  for i = 1, math.huge do
    local name, v = debug.getupvalue(index, i)
    if name == nil then break end
    if name == "busted" then core = v end
  end
  assert(core and core.api, "busted's core is not where it was")
  for k, v in pairs(core.api) do rawset(_G, k, v) end
  -- What busted puts in each test's own environment.
  for _, name in ipairs({"finally", "pending"}) do
    rawset(_G, name, function(...)
      local e = core.context.get()
      while e do
        if e.env and e.env[name] then return e.env[name](...) end
        e = core.context.parent(e)
      end
      error(name .. " is not available here", 2)
    end)
  end
  local setfenv = require("busted.compatibility").setfenv
  function core.wrap(callable)
    setfenv((debug.getmetatable(callable) or {}).__call or callable, _G)
  end
  -- The forkserver starts before the leak checks count descriptors.
  if H.method == "forkserver" then
    local p = mp.Process{target = function() end}
    p:start()
    p:join()
  end
end

return H
