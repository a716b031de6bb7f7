-- The broker Pool: mp.Pool{broker = URL} with `luamp worker` processes,
-- against a redis-server of the spec's own (helper.lua's H.redis_server).

local mp = require "luamp"
local H = spec_helper

-- The tasks' globals: busted's file environment reaches its globals
-- through a function, which the codec does not send; as upvalues they go
-- by name.
local error, io, os, package, require, tostring = error, io, os, package,
  require, tostring

local R, why = H.redis_server()
if not R then
  describe("broker pool", function()
    pending("SKIP: " .. why)
  end)
  return
end

local KEY = H.AUTHKEY

-- A broker pool on R with the tests' key and short leases.
local function pool(opts)
  opts = opts or {}
  opts.broker = opts.broker or R.url
  opts.authkey = opts.authkey or KEY
  opts.lease = opts.lease or 1
  opts.broker_timeout = opts.broker_timeout or 1
  return mp.Pool(opts)
end

local function marker_dir()
  local d = os.tmpname()
  os.remove(d)
  os.execute("mkdir -p " .. H.q(d))
  return d
end

local function count_files(dir, pattern)
  local f = io.popen("ls " .. H.q(dir) .. " 2>/dev/null")
  local n = 0
  for name in f:lines() do
    if name:find(pattern) then n = n + 1 end
  end
  f:close()
  return n
end

-- Starts a task of pool p that marks dir with the pid of the worker
-- running it (its executor's parent), sleeps secs and returns that pid;
-- returns its AsyncResult and the pid, once the mark is there.
local function started_somewhere(p, dir, secs)
  local r = p:apply_async(function(d, t)
    local mp = require "luamp"
    local f = io.open(d .. "/" .. mp.parent_process().pid, "w")
    f:close()
    mp.sleep(t)
    return mp.parent_process().pid
  end, {dir, secs})
  local first = H.first_mark(dir, 10)
  assert.is_not_nil(first, "the task did not start")
  return r, first
end

-- What a test leaves to undo, done after it, last first, whatever
-- happened (busted's finally keeps one function).
local undo = {}
local function later(fn) undo[#undo + 1] = fn end

-- Takes pool a's stream off the broker (its settings stay), then checks
-- that a new pool's task runs within 5 s (w: the worker, for its log).
local function stream_gone(a, w)
  R:cli("DEL", a._sched.t.k.t)
  local b = pool()
  later(function()
    a:terminate()
    b:terminate()
  end)
  local t0 = mp.monotonic()
  assert.are.equal(2, b:apply_async(function() return 2 end):get(20))
  assert.is_true(mp.monotonic() - t0 < 5, mp.monotonic() - t0
                 .. " s; the worker's log: " .. w:log_tail())
end

describe("broker pool", function()
  local W1

  after_each(function()
    for i = #undo, 1, -1 do
      local ok, e = pcall(undo[i])
      if not ok then io.stderr:write("cleanup: ", tostring(e), "\n") end
    end
    undo = {}
  end)

  setup(function()
    W1 = H.worker(R, {c = 2})
  end)

  teardown(function()
    W1:stop()
    R:stop()
  end)

  describe("gives what a local pool gives", function()
    local p, lp
    setup(function()
      p = pool{processes = 4}
      lp = mp.Pool(2)
    end)
    teardown(function()
      p:close()
      p:join()
      lp:close()
      lp:join()
    end)

    it("apply, with upvalues and nils", function()
      local k, t = 10, {a = {b = 5}}
      local function f(x, y, z) return x + k + t.a.b, y, z end
      assert.are.same({lp:apply(f, {1, nil, 3, n = 3})},
                      {p:apply(f, {1, nil, 3, n = 3})})
      assert.are.same({16, nil, 3}, {p:apply(f, {1, nil, 3, n = 3})})
    end)

    it("map, starmap, imap and imap_unordered in order", function()
      local function sq(x) return x * x end
      local input = H.range(1, 200)
      assert.are.same(lp:map(sq, input), p:map(sq, input))
      assert.are.same(lp:map(sq, input, 7), p:map(sq, input, 7))
      local function add(a, b) return a + b end
      assert.are.same({3, 7, n = 2}, p:starmap(add, {{1, 2}, {3, 4}}))
      local got = {}
      for r in p:imap(sq, H.range(1, 50), 3) do got[#got + 1] = r end
      got.n = #got
      assert.are.same(lp:map(sq, H.range(1, 50)), got)
      local seen = {}
      for r in p:imap_unordered(sq, H.range(1, 30)) do seen[r] = true end
      for i = 1, 30 do assert.is_true(seen[i * i]) end
    end)

    it("tables with cycles and shared parts", function()
      local t = {name = "x"}
      t.self = t
      local r = p:apply(function(v) return v.self.self.name, v == v.self end,
                        {t})
      assert.are.equal("x", r)
    end)

    it("a task's error as a RemoteError with the worker's traceback",
       function()
      local ok, e = pcall(p.apply, p, function() error("boom") end)
      assert.is_false(ok)
      assert.are.equal("RemoteError", e.type)
      assert.matches("broker_spec.lua:%d+: boom", e.message)
      assert.matches("broker_spec.lua:%d+", e.traceback)
      local ok2, e2 = pcall(p.apply, p, function() error({code = 7}) end)
      assert.is_false(ok2)
      assert.are.same({code = 7}, e2.value)
    end)

    it("many apply_async, their callbacks in this process", function()
      local got, rs = 0, {}
      for i = 1, 2000 do
        rs[i] = p:apply_async(function(x) return x + 1 end, {i},
                              function(v) got = got + v end)
      end
      local sum = 0
      for i = 1, 2000 do sum = sum + rs[i]:get(30) end
      assert.are.equal(2000 * 2001 / 2 + 2000, sum)
      assert.are.equal(sum, got)
    end)

    it("a callback that waits for another result of its pool", function()
      local got
      local r = p:apply_async(function(x) return x + 1 end, {1},
        function(v) got = p:apply(function(y) return y * 10 end, {v}) end)
      assert.are.equal(2, r:get(10))
      assert.is_true(H.wait_for(function() return got ~= nil end, 10))
      assert.are.equal(20, got)
    end)

    it("a C function by name, and a module's", function()
      assert.are.equal("ABC", p:apply(string.upper, {"abc"}))
      local str = string
      assert.are.equal(3, p:apply(function(s) return str.len(s) end, {"abc"}))
    end)

    it("refuses a shared object with its path, and stays usable", function()
      local q = mp.Queue()
      local ok, e = pcall(p.apply, p, function(x) return x end, {1, q})
      assert.is_false(ok)
      assert.are.equal(
        "cannot send args[2]: a local Queue cannot cross to another machine",
        tostring(e):match("cannot send.*"))
      local ok2, e2 = pcall(p.apply, p, function() return q end)
      assert.is_false(ok2)
      assert.matches("cannot send func<upvalue q>: a local Queue cannot "
                     .. "cross to another machine", tostring(e2))
      local ok3, e3 = pcall(p.map, p, function(x) return x end, {1, 2, q})
      assert.is_false(ok3)
      assert.matches("cannot send iterable%[3%]: a local Queue", tostring(e3))
      q:close()
      assert.are.equal(2, p:apply(function() return 2 end))
    end)

    it("fails a task whose result or error holds a shared object, and "
       .. "stays usable", function()
      local function made(x)
        return require("luamp").Value("i", x)
      end
      local ok, e = pcall(p.apply, p, made, {3})
      assert.is_false(ok)
      assert.are.equal("RemoteError", e.type)
      assert.matches("^cannot send the result of the task: .*cannot cross "
                     .. "to another machine", e.message)
      ok, e = pcall(p.map, p, made, {1, 2})
      assert.is_false(ok)
      assert.are.equal("RemoteError", e.type)
      assert.matches("^cannot send the result of the task", e.message)
      ok, e = pcall(p.apply, p, function() error(require("luamp").Queue()) end)
      assert.is_false(ok)
      assert.are.equal("RemoteError", e.type)
      assert.matches("^cannot send the error of the task", e.message)
      assert.are.same({n = 2, 1, 4},
                      p:map(function(x) return x * x end, {1, 2}))
    end)
  end)

  it("does its work while its owner waits in another luamp call", function()
    -- A task is sent, its result taken and its callback run during a
    -- queue's get or an mp.sleep, as a local pool's are: at once, not at
    -- the pool's next ping (every broker_timeout / 4 = 5 s here).
    local p = pool{broker_timeout = 20, lease = 30}
    later(function() p:terminate() end)
    assert.are.equal(1, p:apply(function() return 1 end)) -- warm
    for _ = 1, 2 do
      local q = mp.Queue()
      local t0 = mp.monotonic()
      p:apply_async(function() return "hi" end, nil,
                    function(v) q:put({v, mp.monotonic()}) end)
      local r = q:get(true, 15)
      assert.are.equal("hi", r[1])
      assert.is_true(r[2] - t0 < 2.5, "the callback came after "
                     .. (r[2] - t0) .. " s")
      local at
      t0 = mp.monotonic()
      p:apply_async(function() return 7 end, nil,
                    function() at = mp.monotonic() end)
      mp.sleep(3)
      assert.is_not_nil(at, "no callback during the sleep")
      assert.is_true(at - t0 < 2.5, "the callback came after "
                     .. (at - t0) .. " s")
      q:close()
    end
  end)

  it("raises BrokerError naming the URL when the broker is down", function()
    local url = "redis://:x@127.0.0.1:1/0"
    local took, ok, e = H.timed(function()
      return pcall(mp.Pool, {broker = url, authkey = KEY})
    end)
    assert.is_false(ok)
    assert.are.equal("BrokerError", e.type)
    assert.are.equal("redis://127.0.0.1:1/0", e.url)
    assert.matches("cannot connect to redis://127.0.0.1:1/0: Connection "
                   .. "refused", e.message)
    assert.is_true(took < 1)
  end)

  it("needs an authkey of 16 bytes or more", function()
    local ok, e = pcall(mp.Pool, {broker = R.url, authkey = "short"})
    assert.is_false(ok)
    assert.matches("authkey must have at least 16 bytes", e)
    local ok2, e2 = pcall(mp.Pool, {authkey = KEY, broker = false})
    assert.is_false(ok2)
    assert.matches("authkey is an option of broker pools", e2)
  end)

  it("checks its options before it touches the broker", function()
    local before = R:dbsize()
    for _, case in ipairs{
      {{lease = math.huge}, "lease must be below 1e9 seconds"},
      {{lease = 0}, "lease must be a positive number"},
      {{lease = 0 / 0}, "lease must be a positive number"},
      {{broker_timeout = "5"}, "broker_timeout must be a positive number"},
      {{max_deliveries = 1.5}, "max_deliveries must be a positive integer"},
    } do
      local opts = case[1]
      opts.broker, opts.authkey = R.url, KEY
      local ok, e = pcall(mp.Pool, opts)
      assert.is_false(ok)
      assert.are.equal("bad argument #1 to 'Pool' (" .. case[2] .. ")",
                       tostring(e):match("bad argument.*"))
    end
    assert.are.equal(before, R:dbsize())
  end)

  it("leaves no key of a pool behind once it is closed", function()
    local before = R:dbsize()
    local p = pool()
    assert.are.equal(4, p:apply(function(x) return x * 2 end, {2}))
    assert.is_true(R:dbsize() > before)
    p:close()
    p:join()
    assert.are.equal(before, R:dbsize())
  end)

  it("runs again, once, a task whose executor was killed", function()
    local dir = marker_dir()
    local p = pool{processes = 1}
    later(function() p:terminate() end)
    local r = p:apply_async(function(d)
      local n = 0
      for _ in io.popen("ls " .. d):lines() do n = n + 1 end
      local f = io.open(d .. "/run" .. n, "w")
      f:write(require("luamp").current_process().pid)
      f:close()
      if n == 0 then require("luamp").sleep(30) end
      return n
    end, {dir})
    -- The file exists before its pid is written: wait for the pid.
    assert.is_true(H.wait_for(function()
      return tonumber(H.readfile(dir .. "/run0") or "") ~= nil
    end, 10), "the task did not start; the worker's log: " .. W1:log_tail())
    local victim = tonumber(H.readfile(dir .. "/run0"))
    os.execute("kill -9 " .. victim)
    local took, n = H.timed(function() return r:get(10) end)
    assert.are.equal(1, n)
    assert.is_true(took < 3, "the task waited for its lease: " .. took)
    assert.are.equal(2, count_files(dir, "^run"))
    p:close()
    p:join()
    os.execute("rm -rf " .. H.q(dir))
  end)

  it("fails a task that kills every executor after max_deliveries, and "
     .. "the rest of the map goes on", function()
    local p = pool{processes = 2, max_deliveries = 3}
    later(function() p:terminate() end)
    local rs = p:map_async(function(x)
      if x == 3 then os.execute("kill -9 " .. require("luamp")
                                .current_process().pid) end
      return x * 10
    end, {1, 2, 3, 4}, 1)
    local ok, e = pcall(rs.get, rs, 20)
    assert.is_false(ok)
    assert.are.equal("WorkerLostError", e.type)
    assert.are.equal(3, e.deliveries)
    assert.matches("an executor died running it", e.reason)
    assert.are_not.equal("0", R:cli("XLEN", "luamp:dead"))
    local r2 = p:map(function(x) return x + 1 end, {1, 2, 3}, 1)
    assert.are.same({2, 3, 4, n = 3}, r2)
    p:close()
    p:join()
  end)

  H.long_it("runs a task longer than its lease exactly once", function()
    local dir = marker_dir()
    local p = pool{lease = 1}
    later(function() p:terminate() end)
    local n = p:apply(function(d)
      local f = io.open(d .. "/ran", "a")
      f:write("x")
      f:close()
      require("luamp").sleep(2.5)
      return 1
    end, {dir})
    assert.are.equal(1, n)
    mp.sleep(1.5) -- a second run would have begun by now
    assert.are.equal("x", H.readfile(dir .. "/ran"))
    p:close()
    p:join()
    os.execute("rm -rf " .. H.q(dir))
  end)

  it("gives another worker the task of a worker killed with -9", function()
    local W2 = H.worker(R, {c = 1})
    local dir = marker_dir()
    local p = pool{lease = 1, processes = 1}
    local victim
    later(function()
      p:terminate()
      if victim == W1 then
        W1 = H.worker(R, {c = 2})
      end
      W2:stop()
    end)
    local r, first = started_somewhere(p, dir, 1)
    victim = first == W1.pid and W1 or W2
    local other = victim == W1 and W2 or W1
    for _, k in ipairs(victim:executors()) do
      os.execute("kill -9 " .. k)
    end
    victim:kill("KILL")
    local took, who = H.timed(function() return r:get(30) end)
    assert.are.equal(other.pid, who)
    assert.is_true(took < 1 + 1 + 2, "took " .. took)
    os.execute("rm -rf " .. H.q(dir))
  end)

  it("a worker with another authkey refuses the pool; nothing it ran",
     function()
    W1:kill("STOP") -- only the stranger may take the task
    local bad = H.worker(R, {c = 1, key = "another-key-0123456789abcdef"})
    local dir = marker_dir()
    -- (long enough a broker_timeout that no AuthenticationError comes
    -- before W1 is back)
    local p = pool{broker_timeout = 30}
    later(function()
      W1:kill("CONT")
      bad:stop()
      p:terminate()
    end)
    local r = p:apply_async(function(d)
      io.open(d .. "/ran", "w"):close()
      return 1
    end, {dir})
    r:wait(1.5)
    -- (the stranger has seen the pool and refused it when its log says
    -- so: under load, that may come later)
    assert.is_true(H.wait_for(function()
      r:wait(0.1)
      return (H.readfile(bad.log) or ""):find("refusing pool", 1, true) ~= nil
    end, 15), "the stranger did not refuse the pool")
    assert.is_false(r:ready(), r:ready()
      and "it has an outcome: " .. tostring(select(2, pcall(r.get, r, 0))))
    assert.is_nil(H.readfile(dir .. "/ran"))
    local log = bad:stop()
    assert.matches("refusing pool %x+: the message's MAC is wrong", log)
    W1:kill("CONT")
    assert.are.equal(1, r:get(10))
    p:close()
    p:join()
    os.execute("rm -rf " .. H.q(dir))
  end)

  it("terminate takes the tasks not begun off the stream at once",
     function()
    local p = pool{processes = 4}
    later(function() p:terminate() end)
    local stream = p._sched.t.k.t
    local rs = p:map_async(function(x)
                             require("luamp").sleep(0.2)
                             return x
                           end,
                           H.range(1, 100), 1)
    mp.sleep(0.3)
    assert.is_true(tonumber(R:cli("XLEN", stream)) > 0)
    p:terminate()
    local ok, e = pcall(rs.get, rs, 5)
    assert.is_false(ok)
    assert.matches("terminated", tostring(e))
    assert.are.equal(0, tonumber(R:cli("EXISTS", stream)))
  end)

  it("raises BrokerError within broker_timeout when the broker dies",
     function()
    local r2 = H.redis_server()
    local w = H.worker(r2, {c = 1, args = "--exit-on-broker-loss"})
    local p = mp.Pool{broker = r2.url, authkey = KEY, lease = 1,
                      broker_timeout = 1}
    later(function()
      p:terminate()
      w:stop()
      r2:stop()
    end)
    local rs = p:map_async(function(x) require("luamp").sleep(5) return x end,
                           {1, 2}, 1)
    mp.sleep(0.3)
    r2:kill()
    local took, ok, e = H.timed(function() return pcall(rs.get, rs, 10) end)
    assert.is_false(ok)
    assert.are.equal("BrokerError", e.type)
    assert.matches(r2.url:gsub(":[^:@/]*@", ""):gsub("%p", "%%%0"),
                   e.message)
    assert.is_true(took < 1 + 1.5, "took " .. took)
    local log, ended = w:wait()
    assert.is_true(ended, log)
  end)

  it("says that globals are the worker's own", function()
    local p = pool()
    later(function() p:terminate() end)
    -- A job's function: its globals are the job's (a spec's are busted's
    -- environment, which is no job's).
    local f = load("return function() return undefined_global_x.y end",
                   "=job", "t", _G)()
    local ok, e = pcall(p.apply, p, f)
    assert.is_false(ok)
    assert.matches("globals are the worker's own: make 'undefined_global_x' "
                   .. "a local", e.message)
  end)

  it("runs requires, the initializer and maxtasksperchild on the workers",
     function()
    local dir = marker_dir()
    local p = pool{processes = 1, requires = {"lfs"}, maxtasksperchild = 2,
                   initializer = function(d)
                     local f = io.open(d .. "/init-" .. require("luamp")
                                       .current_process().pid, "w")
                     f:close()
                   end, initargs = {dir}}
    later(function()
      p:terminate()
      os.execute("rm -rf " .. H.q(dir))
    end)
    local pids = p:map(function()
      return require("luamp").current_process().pid, package.loaded.lfs
    end, H.range(1, 10), 1)
    local ran = {}
    for _, pid in ipairs(pids) do ran[pid] = (ran[pid] or 0) + 1 end
    local n = 0
    for pid, k in pairs(ran) do
      n = n + 1
      assert.is_true(k <= 2, pid .. " ran " .. k .. " tasks")
      assert.is_not_nil(H.readfile(dir .. "/init-" .. pid),
                        "no initializer in " .. pid)
    end
    assert.is_true(n >= 5)
    assert.is_true(p:apply(function() return package.loaded.lfs ~= nil end))
  end)

  it("fails with the initializer's error when it raises on the workers",
     function()
    local p = pool{initializer = function() error("no config") end}
    later(function() p:terminate() end)
    local ok, e = pcall(p.apply, p, function() return 1 end)
    assert.is_false(ok)
    assert.matches("initializer failed in a worker: .*no config",
                   tostring(e))
  end)

  it("imap pulls an endless input only as results are taken", function()
    local p = pool{processes = 2}
    later(function() p:terminate() end)
    local stream = p._sched.t.k.t
    local i, most, k = 0, 0, 0
    local function endless() i = i + 1 return i end
    for r in p:imap(function(x) return x * 2 end, endless) do
      k = k + 1
      assert.are.equal(2 * k, r)
      local len = tonumber(R:cli("XLEN", stream))
      if len > most then most = len end
      if k == 60 then break end
    end
    assert.is_true(i < 60 + 2 * 4 * 2 + 1, "read " .. i .. " items")
    assert.is_true(most <= 2 * 4 * 2, "the stream grew to " .. most)
  end)

  H.long_it("keeps its keys while its process waits in any luamp call, and "
     .. "raises BrokerError, not a hang, when they expired outside one",
     function()
    local p = pool()   -- lease 1: its keys live 3 s unless renewed
    later(function() p:terminate() end)
    assert.are.equal(1, p:apply(function() return 1 end))
    mp.sleep(4)        -- a luamp call: the pool renews them meanwhile
    local q <close> = mp.Queue()
    assert.has_error(function() q:get(true, 1) end)
    assert.are.equal(2, p:apply(function() return 2 end))
    os.execute("sleep 4")  -- no luamp call: nothing renews them
    local t0 = mp.monotonic()
    local ok, e = pcall(p.apply, p, function() return 3 end)
    assert.is_false(ok)
    assert.are.equal("BrokerError", e.type)
    assert.matches("this pool's keys expired on the broker at "
                   .. "redis://127%.0%.0%.1:%d+/0: its process made no "
                   .. "luamp call for %d s, longer than their time to live "
                   .. "%(3 s, three times the lease%)", e.message)
    assert.is_true(mp.monotonic() - t0 < 2, "it was not raised at once")
  end)

  it("refuses forged tasks and functions before decoding them", function()
    local broker = require "luamp.broker"
    local core = require "luamp.core"
    local dir = marker_dir()
    -- Keys that outlive the wait below, however slow the machine.
    local p = pool{max_deliveries = 1, lease = 10}
    later(function()
      p:terminate()
      os.execute("rm -rf " .. H.q(dir))
    end)
    local t = p._sched.t
    local conn = broker.connect(broker.parse(R.url), "test", 5)
    later(function() conn:close() end)
    local good = broker.keys(KEY)
    local bad = broker.keys("another-key-0123456789abcdef")
    local touch = function(d) io.open(d, "w"):close() return 1 end
    -- the task's function, as the pool publishes it: under the good key
    local fm = core.message(touch)
    local h = broker.hex(core.hmac(good.id, fm:bytes()):sub(1, 16))
    conn:call({"SET", t.k.code .. h, core.seal(good.code, broker.code_ctx(h),
                                                fm, "function")})
    -- os.execute by name, under a key the pool does not have
    local em = core.message(os.execute)
    local he = broker.hex(core.hmac(good.id, em:bytes()):sub(1, 16))
    conn:call({"SET", t.k.code .. he, core.seal(bad.code, broker.code_ctx(he),
                                                 em, "function")})
    local function entry(keys, seq, fh, arg, flip)
      local am = core.message({arg, n = 1}) -- (one task: its Message)
      local s = core.seal(keys.msg, broker.task_ctx(t.pid, seq),
                          {id = {1}, f = {fh}, a = am, k = {0}}, "task")
      am:close()
      if flip then
        local at = #s - 3
        s = s:sub(1, at - 1) .. string.char(s:byte(at) ~ 1) .. s:sub(at + 1)
      end
      conn:call({"XADD", t.k.t, "*", "s", seq, "p", s, "d", 1})
    end
    entry(bad, 9001, h, dir .. "/forged")        -- the task's MAC is wrong
    entry(good, 9002, h, dir .. "/flipped", true) -- one byte altered
    entry(good, 9003, he, "touch " .. dir .. "/executed") -- forged function
    -- a genuine entry of another pool, replayed into this one
    local am = core.message({dir .. "/replayed", n = 1})
    local other = core.seal(good.msg, broker.task_ctx("0123456789abcdef",
                                                      9005),
                            {id = {1}, f = {h}, a = am, k = {0}}, "task")
    am:close()
    conn:call({"XADD", t.k.t, "*", "s", 9005, "p", other, "d", 1})
    entry(good, 9004, h, dir .. "/genuine")       -- the control
    assert.is_true(H.wait_for(function()
      return H.readfile(dir .. "/genuine") ~= nil
        and R:cli("XLEN", t.k.t) == "0"
        and R:cli("XPENDING", t.k.t, "w"):match("^0") ~= nil
    end, 20), "the entries were not all taken: genuine "
      .. tostring(H.readfile(dir .. "/genuine") ~= nil) .. ", XLEN "
      .. R:cli("XLEN", t.k.t) .. ", XPENDING "
      .. R:cli("XPENDING", t.k.t, "w"):gsub("\n", " "))
    assert.is_nil(H.readfile(dir .. "/forged"))
    assert.is_nil(H.readfile(dir .. "/flipped"))
    assert.is_nil(H.readfile(dir .. "/executed"))
    assert.is_nil(H.readfile(dir .. "/replayed"))
    local dead = R:cli("XRANGE", "luamp:dead", "-", "+")
    assert.matches("MAC is wrong", dead)
    fm:close()
    em:close()
  end)

  H.long_it("lets the keys of a pool whose owner was killed expire",
     function()
    local st, out = H.run(H.q(H.luamp) .. " -e " .. H.q(string.format([[
      local mp = require "luamp"
      local p = mp.Pool{broker = %q, authkey = %q, lease = 1}
      print(p._sched.t.pid)
      io.stdout:flush()
      p:apply_async(function() require("luamp").sleep(30) end)
      mp.sleep(0.5)
      os.execute("kill -9 " .. mp.current_process().pid)
    ]], R.url, KEY)))
    assert.are.equal(137, st)
    local pid = out:match("^(%x+)\n")
    assert.is_not_nil(pid, out)
    assert.are_not.equal("", R:cli("KEYS", "luamp:p:" .. pid .. ":*"),
                         "no key of pool " .. pid .. " after: " .. out)
    assert.is_true(H.wait_for(function()
      return R:cli("KEYS", "luamp:p:" .. pid .. ":*") == ""
    end, 15), "keys left: " .. R:cli("KEYS", "luamp:p:" .. pid .. ":*"))
  end)

  it("takes its tasks off the broker when its owner ends without close",
     function()
    -- An error, the end of the script, a pool dropped and collected (its
    -- owner then killed, so that no exit work runs): each time the tasks
    -- not begun are gone from the broker when the owner is.
    for _, ending in ipairs{
      'error("the owner fails")',
      '',
      'p = nil; collectgarbage(); collectgarbage(); '
        .. 'os.execute("kill -9 " .. mp.current_process().pid)',
    } do
      local st, out = H.run(H.q(H.luamp) .. " -e " .. H.q(string.format([[
        local mp = require "luamp"
        local p = mp.Pool{broker = %q, authkey = %q, lease = 5}
        print(p._sched.t.pid)
        io.stdout:flush()
        p:map_async(function() require("luamp").sleep(30) end,
                    {1, 2, 3, 4, 5, 6}, 1)
        mp.sleep(0.2)
        %s
      ]], R.url, KEY, ending)))
      local pid = out:match("%x+")
      assert.is_not_nil(pid, out)
      assert.are.equal("0", R:cli("EXISTS", "luamp:p:" .. pid .. ":t"),
        "the tasks stayed after: " .. ending .. " (status " .. st .. ")")
    end
  end)

  it("leaves the workers serving other pools when one's stream is gone",
     function()
    -- An owner killed as it ended its pool can leave the pool's settings
    -- without its stream: the workers' read over every stream must not
    -- fail on it until the settings expire.
    local a = pool()
    assert.are.equal(1, a:apply(function() return 1 end))
    stream_gone(a, W1)
  end)

  it("stops a pool's tasks once its stream is gone, every slot busy",
     function()
    -- With no slot free the worker reads no stream, and the pool's
    -- settings stay while its owner lives: the renewal of the leases is
    -- what tells it.
    local a, dir = pool(), marker_dir()
    later(function() os.execute("rm -rf " .. H.q(dir)) end)
    for i = 1, 2 do
      a:apply_async(function(d, n)
        local f = io.open(d .. "/" .. n, "w")
        f:close()
        require("luamp").sleep(30)
      end, {dir, i})
    end
    assert.is_true(H.wait_for(function()
      return count_files(dir, "^%d$") == 2
    end, 10), "the tasks did not start")
    stream_gone(a, W1)
  end)

  it("ends a wait for a reply when it comes, whatever ran meanwhile",
     function()
    -- A local pool's callback, run while a call on the connection waits,
    -- sends on it too: the loop that the wait runs reads the reply, and
    -- the wait ends then, not at the request's deadline.
    local broker = require "luamp.broker"
    local c = broker.connect(broker.config(R.url), "test", 5)
    local lp = mp.Pool(1)
    later(function()
      lp:terminate()
      c:close()
    end)
    lp:apply_async(function() require("luamp").sleep(0.3) end, nil,
                   function() c:send({"PING"}, nil, false) end)
    local took, v = H.timed(function()
      return c:call({"BLPOP", "luamp:test:none", 1}, 5)
    end)
    assert.is_nil(v)
    assert.is_true(took >= 0.9 and took < 2.5, "took " .. took)
  end)

  H.long_it("takes a lease of any length", function()
    for _, lease in ipairs{1.5, 2.0, 0.1} do
      local p = pool{lease = lease}
      later(function() p:terminate() end)
      local r = p:apply_async(function() return "result" end)
      -- an owner busy in plain Lua for longer than a short lease: what
      -- the worker keeps lives three leases, 3 s at the least
      local until_ = mp.monotonic() + 1.5
      while mp.monotonic() < until_ do end
      assert.are.equal("result", r:get(10), "lease " .. lease)
    end
  end)

  it("closes its broker connections in a forked child", function()
    local function owners()
      local n = 0
      for _ in R:cli("CLIENT", "LIST"):gmatch("name=luamp%-owner") do
        n = n + 1
      end
      return n
    end
    -- (the connections of the pools the tests before ended may still be
    -- going, those of pools dropped with their finalizers: counted once
    -- their number holds)
    H.wait_for(function()
      collectgarbage()
      collectgarbage()
      local n = owners()
      mp.sleep(0.5)
      return owners() == n
    end, 10)
    local before = owners()
    local p = pool()
    assert.are.equal(before + 2, owners())
    local child = mp.Process{target = function() mp.sleep(3) end}
    child:start()
    later(function()
      child:kill()
      child:join()
    end)
    p:close()
    p:join()
    -- (at most as many as before: a connection of a test before that was
    -- still closing may have gone meanwhile too)
    assert.is_true(H.wait_for(function() return owners() <= before end, 2),
                   "connections left: " .. owners() - before)
    assert.is_true(child:is_alive())
  end)

  it("sends again the tasks and functions a lost connection took with it",
     function()
    local p = pool()
    later(function() p:terminate() end)
    assert.are.equal(2, p:apply(function(x) return 2 * x end, {1}))
    -- The owner's command connection ends; it does not know yet, and what
    -- it sends next (a new function, and batches) goes nowhere.
    local t = p._sched.t
    local id = t.cmd:call({"CLIENT", "ID"})
    assert.are.equal("1", R:cli("CLIENT", "KILL", "ID", id))
    local up = string.rep("y", 1000)
    local rs = {}
    for i = 1, 20 do
      rs[i] = p:apply_async(function(x) return #up + x end, {i})
    end
    for i = 1, 20 do assert.are.equal(1000 + i, rs[i]:get(10)) end
    assert.are_not.equal(id, t.cmd:call({"CLIENT", "ID"}))
  end)

  H.long_it("raises BrokerError when the broker stops answering", function()
    local p = pool{lease = 1, broker_timeout = 1}
    later(function() p:terminate() end)
    local rs = p:map_async(function(x) require("luamp").sleep(8) return x end,
                           {1}, 1)
    mp.sleep(0.2)
    os.execute(string.format("redis-cli -p %d -a %s --no-auth-warning "
      .. "DEBUG SLEEP 6 >/dev/null 2>&1 &", R.port, H.q(R.password)))
    mp.sleep(0.1)
    local took, ok, e = H.timed(function() return pcall(rs.get, rs, 10) end)
    assert.is_false(ok)
    assert.are.equal("BrokerError", e.type)
    assert.is_true(took < 1 + 1, "took " .. took)
    H.wait_for(function() return R:cli("PING") == "PONG" end, 10)
  end)

  H.long_it("counts a late result of a frozen worker as a duplicate",
     function()
    local W2 = H.worker(R, {c = 1})
    local dir = marker_dir()
    local p = pool{lease = 1, processes = 1}
    local frozen
    later(function()
      if frozen then frozen:kill("CONT") end
      p:terminate()
      W2:stop()
      os.execute("rm -rf " .. H.q(dir))
    end)
    local r, first = started_somewhere(p, dir, 1.5)
    frozen = first == W1.pid and W1 or W2
    frozen:kill("STOP")
    local who = r:get(30)
    assert.are_not.equal(first, who)
    frozen:kill("CONT")
    frozen = nil
    -- the frozen one finishes too: its result is a duplicate, dropped
    assert.is_true(H.wait_for(function()
      return R:cli("HGET", p._sched.t.k.meta, "dup") == "1"
    end, 15), "no duplicate counted")
    assert.are.equal(2, count_files(dir, "%d"))
  end)

  it("a worker carries on across a broker restart", function()
    local r2 = H.redis_server()
    local w = H.worker(r2, {c = 1})
    later(function()
      w:stop()
      r2:stop()
    end)
    assert.is_true(r2:restart())
    local p = mp.Pool{broker = r2.url, authkey = KEY, lease = 1,
                      broker_timeout = 1}
    later(function() p:terminate() end)
    -- (a worker that finds its connections gone tries again each second;
    -- under load, its first tries may come late)
    assert.are.equal(3, p:apply_async(function() return 3 end):get(30))
    assert.is_true(H.alive(w.pid))
  end)

  it("raises BrokerError when the broker restarted empty", function()
    local r2 = H.redis_server()
    local w = H.worker(r2, {c = 1})
    local p = mp.Pool{broker = r2.url, authkey = KEY, lease = 1,
                      broker_timeout = 8}
    later(function()
      p:terminate()
      w:stop()
      r2:stop()
    end)
    local rs = p:apply_async(function() require("luamp").sleep(5) end)
    mp.sleep(0.3)
    assert.is_true(r2:restart())
    local ok, e = pcall(rs.get, rs, 10)
    assert.is_false(ok)
    assert.are.equal("BrokerError", e.type)
    assert.matches("restarted and lost this pool's state", e.message)
  end)

  it("takes its broker and authkey from the environment", function()
    local keyfile = os.tmpname()
    H.writefile(keyfile, KEY .. "\n")
    later(function() os.remove(keyfile) end)
    local st, out, err = H.luamp_e([[
      local mp = require "luamp"
      local p = mp.Pool{lease = 1}
      print(p:apply(function(x) return x * 3 end, {5}))
      p:close()
      p:join()
    ]], "LUAMP_BROKER=" .. H.q(R.url) .. " LUAMP_AUTHKEY_FILE="
        .. H.q(keyfile))
    assert.are.equal(0, st, err)
    assert.are.equal("15\n", out)
  end)

  it("reads broker URLs", function()
    local broker = require "luamp.broker"
    local c = assert(broker.parse("redis://:s%40cret@10.0.0.5:6380/2?ns=etl"))
    assert.are.same({"10.0.0.5", 6380, "s@cret", 2, "etl",
                     "redis://10.0.0.5:6380/2?ns=etl"},
                    {c.host, c.port, c.password, c.db, c.ns, c.url})
    c = assert(broker.parse("redis://localhost"))
    assert.are.same({"localhost", 6379, 0, "luamp"},
                    {c.host, c.port, c.db, c.ns})
    c = assert(broker.parse("redis://user:pw@[::1]:7000"))
    assert.are.same({"::1", 7000, "pw", "redis://[::1]:7000/0"},
                    {c.host, c.port, c.password, c.url})
    c = assert(broker.parse("redis+unix://:pw@/run/redis.sock?db=3"))
    assert.are.same({"/run/redis.sock", "pw", 3,
                     "redis+unix:///run/redis.sock?db=3"},
                    {c.path, c.password, c.db, c.url})
    assert.are.same({nil, "the URL must start with redis:// or "
                          .. "redis+unix://"}, {broker.parse("http://x")})
    assert.are.same({nil, "unknown parameter 'x'"},
                    {broker.parse("redis://h?x=1")})
    -- An ACL user; a password with an "@"; a db or port that is no number.
    c = assert(broker.parse("redis://alice:a@b:c@h:1/2"))
    assert.are.same({"alice", "a@b:c", "h", 1, 2},
                    {c.user, c.password, c.host, c.port, c.db})
    assert.are.same({nil, "bad database number"},
                    {broker.parse("redis://:pw@127.0.0.1:6379/abc")})
    assert.are.same({nil, "bad port '99999'"},
                    {broker.parse("redis://h:99999")})
    assert.are.same({nil, "bad port 'x'"}, {broker.parse("redis://h:x/1")})
    local ok, e = pcall(mp.Pool, {broker = "http://x", authkey = KEY})
    assert.is_false(ok)
    assert.matches("bad broker URL: the URL must start with redis://", e)
  end)

  it("leaves nothing on the broker when a command is refused as it is "
     .. "made", function()
    assert.are.equal("OK", R:cli("ACL", "SETUSER", "noxadd", "on",
                                 ">noxadd-pw", "~*", "&*", "+@all", "-xadd"))
    later(function() R:cli("ACL", "DELUSER", "noxadd") end)
    local before, pools = R:dbsize(), R:cli("SCARD", "luamp:pools")
    local url = ("redis://noxadd:noxadd-pw@127.0.0.1:%d/0"):format(R.port)
    local ok, e = pcall(pool, {broker = url})
    assert.is_false(ok)
    assert.matches("NOPERM", tostring(e))
    assert.are.equal(before, R:dbsize(), R:cli("KEYS", "*"))
    assert.are.equal(pools, R:cli("SCARD", "luamp:pools"))
  end)

  it("fails a task the broker refuses (out of memory), saying why, and "
     .. "stays usable", function()
    local p = pool()
    later(function()
      R:cli("CONFIG", "SET", "maxmemory", "0")
      p:terminate()
    end)
    assert.are.equal(1, p:apply(function() return 1 end))
    assert.are.equal("OK", R:cli("CONFIG", "SET", "maxmemory", "1"))
    local ok, e = pcall(p.apply, p, function() return 2 end)
    assert.is_false(ok)
    assert.are.equal("BrokerError", e.type)
    assert.matches("^the broker refused the task: redis: OOM ", e.message)
    assert.are.equal("OK", R:cli("CONFIG", "SET", "maxmemory", "0"))
    assert.are.equal(3, p:apply(function() return 3 end))
  end)

  it("logs in as the ACL user the URL names", function()
    assert.are.equal("OK", R:cli("ACL", "SETUSER", "alice", "on",
                                 ">alice-pw", "~*", "&*", "+@all"))
    later(function() R:cli("ACL", "DELUSER", "alice") end)
    local url = ("redis://alice:alice-pw@127.0.0.1:%d/0"):format(R.port)
    local p = pool{broker = url}
    later(function() p:terminate() end)
    assert.are.equal(6, p:apply(function(x) return x * 2 end, {3}))
    local ok, e = pcall(pool, {broker = url:gsub("alice%-pw", "wrong")})
    assert.is_false(ok)
    assert.are.equal("AuthenticationError", e.type)
    assert.matches("refused the password", e.message)
  end)

  it("serves a broker on a Unix socket", function()
    local dir = marker_dir()
    local sock = dir .. "/r.sock"
    assert.is_true(os.execute(string.format(
      "redis-server --port 0 --unixsocket %s --save '' --appendonly no "
      .. "--requirepass pw --dir %s --daemonize yes --pidfile %s/r.pid "
      .. "--logfile %s/r.log", H.q(sock), H.q(dir), H.q(dir), H.q(dir))))
    later(function()
      os.execute("kill $(cat " .. H.q(dir) .. "/r.pid) 2>/dev/null")
      H.wait_for(function() return H.readfile(sock) == nil end, 5)
      os.execute("rm -rf " .. H.q(dir))
    end)
    assert.is_true(H.wait_for(function()
      return H.readfile(dir .. "/r.pid") ~= nil
    end, 5))
    local url = "redis+unix://:pw@" .. sock .. "?db=1"
    local w = H.worker({url = url}, {c = 1})
    later(function() w:stop() end)
    local p = mp.Pool{broker = url, authkey = KEY, lease = 1}
    later(function() p:terminate() end)
    assert.are.same({2, 4, n = 2}, p:map(function(x) return 2 * x end,
                                         {1, 2}))
  end)

  it("sends a function once per pool, and each executor fetches it once",
     function()
    local big = string.rep("x", 1 << 20)
    local function gets()
      return tonumber(R:cli("INFO", "commandstats")
                      :match("cmdstat_get:calls=(%d+)") or 0)
    end
    local before = gets()
    -- A lease that outlasts a batch under sanitizers: this case counts
    -- fetches, not redeliveries.
    local p = pool{processes = 2, lease = 5}
    later(function() p:terminate() end)
    local t = p._sched.t
    local function f(i) return #big + i end
    local rs = {}
    for i = 1, 300 do rs[i] = p:apply_async(f, {i}) end
    for i = 1, 300 do assert.are.equal((1 << 20) + i, rs[i]:get(30)) end
    local keys = R:cli("KEYS", t.k.code .. "*")
    assert.are.equal(1, select(2, keys:gsub("\n", "")) + 1, keys)
    -- every GET of a function is one fetch by one executor
    local fetched = gets() - before
    assert.is_true(fetched >= 1 and fetched <= 2, "fetched " .. fetched
                   .. " times by 2 executors")
  end)

  it("refuses a message of another build before its MAC, naming both",
     function()
    local core = require "luamp.core"
    local k = core.hmac(KEY, "x")
    local s = core.seal(k, "ctx", {1, 2, 3})
    local other = s:sub(1, 5) .. "\x44\xc5\x00\x00" .. s:sub(10)
    local ok, e = pcall(core.open, k, "ctx", other)
    assert.is_false(ok)
    assert.are.equal("WireError", e.type)
    assert.are.equal("the message was made by Lua 5.5.0 (64-bit integers, "
      .. "64-bit floats, 64-bit sizes, little-endian); this process runs "
      .. core.wire_build(), e.message)
    local ok2, e2 = pcall(core.open, k, "other ctx", s)
    assert.is_false(ok2)
    assert.are.equal("AuthenticationError", e2.type)
  end)

  it("raises AuthenticationError when only workers with another key serve",
     function()
    W1:kill("STOP")
    local bad = H.worker(R, {c = 1, key = "another-key-0123456789abcdef"})
    -- Within broker_timeout, whatever the lease (its keys' renewal).
    local p = pool{broker_timeout = 1, lease = 20}
    later(function()
      W1:kill("CONT")
      bad:stop()
      p:terminate()
    end)
    local took, ok, e = H.timed(function()
      return pcall(p.apply, p, function() return 1 end)
    end)
    assert.is_false(ok)
    assert.are.equal("AuthenticationError", e.type)
    assert.matches("does every worker have the pool's authkey", e.message)
    assert.is_true(took < 5, "took " .. took .. "; the stranger's log: "
                   .. bad:log_tail())
  end)

  H.long_it("a task longer than broker_timeout, served while a worker "
     .. "with another key refuses the pool, is no AuthenticationError",
     function()
    -- W1 answering first (the test before stopped it for a while).
    local warm = pool()
    assert.are.equal(1, warm:apply(function() return 1 end))
    warm:terminate()
    local bad = H.worker(R, {c = 1, key = "another-key-0123456789abcdef"})
    local p = pool{broker_timeout = 2}
    later(function()
      bad:stop()
      p:terminate()
    end)
    local r = p:apply_async(function()
      require("luamp").sleep(5)
      return "done"
    end)
    assert.are.equal("done", r:get(20))
    -- (the stranger's refusal may come after the task, under load)
    assert.is_true(H.wait_for(function()
      return (H.readfile(bad.log) or ""):find("refusing pool", 1, true) ~= nil
    end, 15), "the stranger did not refuse the pool")
    local log = bad:stop()
    assert.matches("refusing pool", log)
    -- The workers' count of refusals expires with the pool's keys.
    local ttl = tonumber(R:cli("PTTL", p._sched.t.k.refused))
    assert.is_true(ttl > 0, "the refusals' key has no expiry: " .. ttl)
  end)

  it("luamp keygen and luamp workers", function()
    local st, out = H.run(H.q(H.luamp) .. " keygen")
    assert.are.equal(0, st)
    assert.matches("^%x+\n$", out)
    assert.are.equal(65, #out)
    local st2, out2 = H.run(H.q(H.luamp) .. " workers " .. H.q(R.url))
    assert.are.equal(0, st2)
    assert.matches("pid " .. W1.pid .. " slots 2 busy %d+ pools", out2)
    assert.matches("%d+ workers?, 0 pools on " .. R.url:gsub(":[^:@/]*@", "")
                   :gsub("%p", "%%%0"), out2)
    -- No URL, or a bad one: a usage message, not a traceback.
    for _, args in ipairs{"worker", "workers", "worker http://x"} do
      local st3, out3, err3 = H.run("env -u LUAMP_BROKER " .. H.q(H.luamp)
                                    .. " " .. args)
      assert.are.same({2, ""}, {st3, out3}, args)
      assert.matches(args == "worker http://x"
        and "^luamp: bad broker URL: the URL must start with redis://"
        or "^luamp: a broker URL is needed %(or LUAMP_BROKER%)\nusage:",
        err3)
      assert.is_nil(err3:find("traceback", 1, true), args)
    end
  end)

  it("luamp worker, workers and keygen print their usage for --help",
     function()
    for _, cmd in ipairs{"worker --help", "worker -h", "workers --help",
                         "keygen --help", "worker " .. H.q(R.url) ..
                         " --help"} do
      local st, out = H.run(H.q(H.luamp) .. " " .. cmd)
      assert.are.equal(0, st, cmd)
      assert.matches("^usage: luamp worker URL", out, 1, false)
    end
  end)

  it("luamp worker says in one line why it cannot serve, status 1",
     function()
    local url = H.q(R.url)
    local bad_pw = H.q((R.url:gsub(":[^:@/]*@", ":wrong@")))
    for _, case in ipairs{
      {"env -u LUAMP_AUTHKEY -u LUAMP_AUTHKEY_FILE", url,
       "luamp: no authkey: give --authkey-file F, or set LUAMP_AUTHKEY or "
       .. "LUAMP_AUTHKEY_FILE (`luamp keygen` makes one)\n"},
      {"", url .. " --authkey-file /nonexistent/key",
       "luamp: cannot read the authkey file: /nonexistent/key: No such file "
       .. "or directory\n"},
      {"LUAMP_AUTHKEY=short", url,
       "luamp: authkey must have at least 16 bytes (`luamp keygen` makes "
       .. "one)\n"},
      {"LUAMP_AUTHKEY=" .. KEY, bad_pw .. " --exit-on-broker-loss",
       {pattern = "^luamp: luamp%.AuthenticationError: redis://[^ ]* "
                  .. "refused the password: WRONGPASS[^\n]*\n$"}},
    } do
      local st, out, err = H.run("env " .. case[1] .. " timeout 20 "
                                 .. H.q(H.luamp) .. " worker " .. case[2])
      assert.are.same({1, ""}, {st, out}, case[2])
      if type(case[3]) == "table" then
        assert.matches(case[3].pattern, err)
      else
        assert.are.equal(case[3], err)
      end
    end
  end)

  it("luamp worker ends with status 0 on SIGTERM while the broker is down",
     function()
    -- Between two tries to connect (asleep, most of the time) or in one:
    -- either way it leaves cleanly.
    local log = os.tmpname()
    local st, out = H.run(string.format("LUAMP_AUTHKEY=%s timeout 30 sh -c "
      .. "'%s worker redis://127.0.0.1:1/0 -c 1 >%s 2>&1 & pid=$!; "
      .. "until grep -q \"cannot connect\" %s; do sleep 0.05; done; "
      .. "kill -TERM $pid; wait $pid; echo status=$?'", H.q(KEY),
      H.luamp, log, log))
    local text = H.readfile(log) or ""
    os.remove(log)
    assert.are.same({0, "status=0\n"}, {st, out}, text)
    assert.is_nil(text:find("Interrupt", 1, true), text)
  end)
end)
