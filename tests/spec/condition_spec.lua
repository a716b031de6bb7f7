-- condition_spec.lua -- Condition and Barrier across processes: notify,
-- notify(n), notify_all, wait and wait_for with timeouts, the lock a wait
-- gives up and takes back; Barrier rounds, action, abort, reset, timeouts
-- and the BrokenBarrierError error object; Ctrl-C in both.  Most cases
-- follow CPython's _TestCondition and _TestBarrier, with processes where
-- CPython mixes processes and threads.

local mp = require "luamp"
local H = require "spec_helper"
local timed, spawn, finish, took, raises =
  H.timed, H.spawn, H.finish, H.took, H.raises
local reaches, waiting = H.reaches, H.waiting

local function finish_all(ps)
  for _, p in ipairs(ps) do finish(p) end
end

local BROKEN = "the barrier is broken"

-- In a child: true if fn raises a BrokenBarrierError error object.
local function is_broken(fn, ...)
  local ok, e = pcall(fn, ...)
  return not ok and type(e) == "table" and e.type == mp.BrokenBarrierError
    and tostring(e) == "luamp.BrokenBarrierError: " .. BROKEN
end

describe("Condition", function()
  H.leakcheck()

  describe("constructor", function()
    it("makes a new RLock by default", function()
      local c = mp.Condition()
      assert.matches("^luamp%.RLock ", tostring(c:get_lock()))
      assert.are.same({true}, {c:acquire()})
      assert.are.same({true}, {c:acquire(false)})
      c:release()
      assert.is_true(c:get_lock():owned())
      c:release()
      assert.is_false(c:get_lock():locked())
      assert.has_error(function() c:release() end,
        "cannot release un-acquired lock")
    end)

    it("uses the Lock it is given", function()
      local l = mp.Lock()
      local c = mp.Condition(l)
      assert.are.equal(tostring(l), tostring(c:get_lock()))
      assert.is_true(c:acquire())
      assert.is_true(l:locked())
      assert.is_false(c:acquire(false))
      assert.is_false(l:acquire(false))
      c:release()
      assert.is_false(l:locked())
      assert.has_error(function() c:release() end, "release unlocked lock")
    end)

    it("rejects what is not a Lock or an RLock", function()
      for _, bad in ipairs{mp.Semaphore(), 5, {}} do
        local ok, e = pcall(mp.Condition, bad)
        assert.is_false(ok)
        assert.matches("^bad argument #1 to '[%w_.]*Condition' %(a Lock or "
          .. "RLock expected%)$", e)
      end
    end)

    it("has a tostring that names it and counts its waiters", function()
      local c = mp.Condition()
      assert.matches("^luamp%.Condition %(0?x?%x+, 0 waiting%)$",
        tostring(c))
    end)
  end)

  describe("without the lock", function()
    it("raises on wait, wait_for, notify and notify_all", function()
      local c = mp.Condition()
      assert.has_error(function() c:wait() end,
        "cannot wait on un-acquired lock")
      assert.has_error(function() c:wait(0) end,
        "cannot wait on un-acquired lock")
      assert.has_error(function() c:wait_for(function() return false end) end,
        "cannot wait on un-acquired lock")
      assert.has_error(function() c:notify() end,
        "cannot notify on un-acquired lock")
      assert.has_error(function() c:notify(3) end,
        "cannot notify on un-acquired lock")
      assert.has_error(function() c:notify_all() end,
        "cannot notify on un-acquired lock")
    end)

    it("raises when another process holds the lock", function()
      local c = mp.Condition(mp.Lock())
      local held, go = mp.Event(), mp.Event()
      local p = spawn(function()
        c:acquire()
        held:set()
        assert(go:wait(10))
        c:release()
      end)
      assert.is_true(held:wait(10))
      assert.has_error(function() c:wait(0) end,
        "cannot wait on un-acquired lock")
      assert.has_error(function() c:notify() end,
        "cannot notify on un-acquired lock")
      go:set()
      finish(p)
    end)
  end)

  describe("wait", function()
    -- After CPython's _TestCondition.test_timeout.
    it("returns false after its timeout, holding the lock again", function()
      local c = mp.Condition()
      c:acquire()
      local dt, r = timed(function() return c:wait(0.1) end)
      assert.is_false(r)
      took(dt, 0.09, 1.5, "wait(0.1)")
      dt, r = timed(function() return c:wait(0) end)
      assert.is_false(r)
      took(dt, 0, 0.05, "wait(0)")
      dt, r = timed(function() return c:wait(-1) end)
      assert.is_false(r)
      took(dt, 0, 0.05, "wait(-1)")
      assert.is_true(c:get_lock():owned())
      c:release()
      assert.is_false(c:get_lock():locked())
      assert.are.equal(0, waiting(c))
    end)

    it("gives up every recursion level while waiting and takes them back",
       function()
      local c, q = mp.Condition(), mp.Queue()
      c:acquire()
      c:acquire()
      c:acquire()
      local p = spawn(function()
        -- Only possible while the parent waits.
        q:put(c:acquire(true, 10))
        c:notify()
        c:release()
      end)
      assert.is_true(c:wait(10))
      assert.is_true(q:get(true, 10))
      finish(p)
      c:release()
      c:release()
      assert.is_true(c:get_lock():owned())
      c:release()
      assert.is_false(c:get_lock():locked())
      assert.has_error(function() c:release() end,
        "cannot release un-acquired lock")
    end)

    -- After CPython's _TestCondition.test_wait_result.
    it("returns true when notified by another process", function()
      local c = mp.Condition()
      c:acquire()
      assert.is_false(c:wait(0))
      assert.is_false(c:wait(0.1))
      local p = spawn(function()
        c:acquire()
        c:notify()
        c:release()
      end)
      local dt, r = timed(function() return c:wait(60) end)
      assert.is_true(r)
      took(dt, 0, 5, "wait(60)")
      c:release()
      finish(p)
    end)

    it("wakes within 0.5 s of a notify in another process", function()
      local c, q = mp.Condition(), mp.Queue()
      local p = spawn(function()
        c:acquire()
        q:put("waiting")
        local r = c:wait(10)
        q:put({r, mp.monotonic()})
        c:release()
      end)
      assert.are.equal("waiting", q:get(true, 10))
      c:acquire() -- the child is in wait once this succeeds
      local t0 = mp.monotonic()
      c:notify()
      c:release()
      local r = q:get(true, 10)
      finish(p)
      assert.is_true(r[1])
      took(r[2] - t0, 0, 0.5, "the wake-up")
    end)

    it("rejects a bad timeout", function()
      local c = mp.Condition()
      c:acquire()
      assert.has_error(function() c:wait("soon") end,
        "bad argument #1 to 'wait' (number expected, got string)")
      c:release()
    end)
  end)

  describe("notify", function()
    -- The child of CPython's tests: says it sleeps, waits, says it woke.
    local function f(c, sleeping, woken, timeout)
      c:acquire()
      sleeping:release()
      c:wait(timeout)
      woken:release()
      c:release()
    end

    -- Starts n children running f and waits until all of them wait.
    local function sleepers(n, c, sleeping, woken, timeout)
      local ps = {}
      for i = 1, n do ps[i] = spawn(f, c, sleeping, woken, timeout) end
      for _ = 1, n do assert.is_true(sleeping:acquire(true, 10)) end
      return ps
    end

    -- After CPython's _TestCondition.test_notify.
    it("wakes one waiter at a time", function()
      local c, sleeping, woken = mp.Condition(), mp.Semaphore(0),
        mp.Semaphore(0)
      local ps = sleepers(2, c, sleeping, woken)
      c:acquire() -- both are in wait once this succeeds
      assert.are.equal(2, waiting(c))
      assert.are.equal(0, woken:get_value())
      c:notify()
      c:release()
      reaches(1, function() return woken:get_value() end)
      reaches(1, function() return waiting(c) end)
      c:acquire()
      c:notify()
      c:release()
      reaches(2, function() return woken:get_value() end)
      finish_all(ps)
      assert.are.equal(0, waiting(c))
    end)

    it("wakes the waiters in the order they began to wait", function()
      local c, q, order = mp.Condition(), mp.Queue(), mp.Queue()
      local ps = {}
      for i = 1, 3 do
        ps[i] = spawn(function()
          c:acquire()
          q:put(i)
          c:wait(10)
          order:put(i)
          c:release()
        end)
        assert.are.equal(i, q:get(true, 10))
        c:acquire() -- child i is in wait once this succeeds
        c:release()
      end
      for i = 1, 3 do
        c:acquire()
        c:notify()
        c:release()
        assert.are.equal(i, order:get(true, 10))
      end
      finish_all(ps)
    end)

    -- After CPython's _TestCondition.test_notify_all.
    it("notify_all wakes every waiter; timed-out ones are gone", function()
      local c, sleeping, woken = mp.Condition(), mp.Semaphore(0),
        mp.Semaphore(0)
      local ps = sleepers(6, c, sleeping, woken, 0.1)
      for _ = 1, 6 do assert.is_true(woken:acquire(true, 10)) end
      assert.are.equal(0, woken:get_value())
      finish_all(ps)
      assert.are.equal(0, waiting(c))
      ps = sleepers(6, c, sleeping, woken)
      c:acquire()
      assert.are.equal(6, waiting(c))
      assert.are.equal(0, woken:get_value())
      c:notify_all()
      c:release()
      for _ = 1, 6 do assert.is_true(woken:acquire(true, 10)) end
      assert.are.equal(0, woken:get_value())
      finish_all(ps)
      assert.are.equal(0, waiting(c))
    end)

    -- After CPython's _TestCondition.test_notify_n.
    it("notify(n) wakes n waiters, or as many as there are", function()
      local c, sleeping, woken = mp.Condition(), mp.Semaphore(0),
        mp.Semaphore(0)
      local ps = sleepers(6, c, sleeping, woken)
      c:acquire()
      assert.are.equal(0, woken:get_value())
      c:notify(2)
      c:release()
      reaches(2, function() return woken:get_value() end)
      reaches(4, function() return waiting(c) end)
      c:acquire()
      c:notify(4)
      c:release()
      reaches(6, function() return woken:get_value() end)
      c:acquire()
      c:notify(3)
      c:notify(0)
      c:notify_all()
      c:release()
      assert.are.equal(6, woken:get_value())
      finish_all(ps)
      assert.are.equal(0, waiting(c))
    end)

    it("does nothing without waiters", function()
      local c = mp.Condition()
      c:acquire()
      assert.are.same({}, {c:notify()})
      assert.are.same({}, {c:notify_all()})
      assert.is_false(c:wait(0))
      c:release()
    end)
  end)

  describe("wait_for", function()
    -- After CPython's _TestCondition.test_waitfor.
    it("waits until the predicate holds, rechecking after each notify",
       function()
      local c, state_ = mp.Condition(), mp.Value('i', -1)
      local p = spawn(function()
        c:with(function()
          state_.value = 0
          c:notify()
          local r = c:wait_for(function() return state_.value == 4 end)
          if r ~= true or state_.value ~= 4 then os.exit(1) end
        end)
      end)
      c:with(function()
        local r = c:wait_for(function() return state_.value == 0 end)
        assert.is_true(r)
        assert.are.equal(0, state_.value)
      end)
      for _ = 1, 4 do
        c:with(function()
          state_.value = state_.value + 1
          c:notify()
        end)
      end
      finish(p)
    end)

    -- After CPython's _TestCondition.test_waitfor_timeout.
    it("returns the predicate's false value after the timeout", function()
      local c, state_, sem = mp.Condition(), mp.Value('i', 0),
        mp.Semaphore(0)
      local result = mp.Value('i', 0)
      local p = spawn(function()
        sem:release()
        c:with(function()
          local t0 = mp.monotonic()
          local r = c:wait_for(function() return state_.value == 4 end, 0.1)
          local dt = mp.monotonic() - t0
          if r == false and dt >= 0.099 and dt < 1.5 then result.value = 1 end
        end)
      end)
      assert.is_true(sem:acquire(true, 10))
      for _ = 1, 3 do
        c:with(function()
          state_.value = state_.value + 1
          c:notify()
        end)
      end
      finish(p)
      assert.are.equal(1, result.value)
    end)

    it("returns the predicate's last value, whatever it is", function()
      local c = mp.Condition()
      c:acquire()
      assert.are.equal("ready", c:wait_for(function() return "ready" end))
      local dt, r = timed(function()
        return c:wait_for(function() return nil end, 0.1)
      end)
      assert.is_nil(r)
      took(dt, 0.09, 1.5, "wait_for(pred, 0.1)")
      dt, r = timed(function()
        return c:wait_for(function() return false end, 0)
      end)
      assert.is_false(r)
      took(dt, 0, 0.05, "wait_for(pred, 0)")
      assert.is_true(c:get_lock():owned())
      c:release()
    end)

    it("returns a true value as it is, after waits for notifies", function()
      local c, n = mp.Condition(), mp.Value('i', 0)
      local p = spawn(function()
        for _ = 1, 3 do
          c:with(function()
            n:add(1)
            c:notify()
          end)
        end
      end)
      local function three() return n.value >= 3 and "n=" .. n.value end
      local r = c:with(function() return c:wait_for(three, 10) end)
      assert.are.equal("n=3", r)
      finish(p)
    end)
  end)

  describe("with", function()
    it("holds the lock during fn, returns its results, releases on error",
       function()
      local c = mp.Condition()
      local r = table.pack(c:with(function(a)
        c:notify()
        return a, nil, c:get_lock():owned()
      end, "x"))
      assert.are.same({n = 3, "x", nil, true}, r)
      assert.is_false(c:get_lock():locked())
      local e = {}
      local ok, got = pcall(c.with, c, function() error(e) end)
      assert.is_false(ok)
      assert.is_true(rawequal(e, got))
      assert.is_false(c:get_lock():locked())
    end)
  end)

  describe("sent to another process", function()
    it("through a queue, made after the child started, is the same one",
       function()
      local q, back = mp.Queue(), mp.Queue()
      local p = spawn(function()
        local c = q:get(true, 10)
        c:acquire()
        back:put("waiting")
        back:put(c:wait(10))
        c:release()
      end)
      local c = mp.Condition()
      q:put(c)
      assert.are.equal("waiting", back:get(true, 10))
      c:acquire()
      assert.are.equal(1, waiting(c))
      c:notify()
      c:release()
      assert.is_true(back:get(true, 10))
      finish(p)
    end)

    it("through a pipe, with its own Lock, is the same one", function()
      local a, b = mp.Pipe()
      local p = spawn(function()
        local c = b:recv()
        c:acquire()
        b:send("waiting")
        b:send(c:wait(10))
        c:release()
      end)
      local l = mp.Lock()
      local c = mp.Condition(l)
      a:send(c)
      assert.are.equal("waiting", a:recv())
      assert.is_true(l:acquire(true, 10))
      c:notify()
      l:release()
      assert.is_true(a:recv())
      finish(p)
      a:close()
      b:close()
    end)
  end)
end)

describe("Barrier", function()
  H.leakcheck()

  local N = 5

  -- Runs f(...) in N - 1 children and in this process, then checks that
  -- every child ended with status 0.
  local function run_parties(f, ...)
    local ps = {}
    for i = 1, N - 1 do ps[i] = spawn(f, ...) end
    local ok, e = pcall(f, ...)
    finish_all(ps)
    assert(ok, e)
  end

  describe("constructor", function()
    it("has parties, n_waiting and broken fields", function()
      local b = mp.Barrier(3)
      assert.are.equal(3, b.parties)
      assert.are.equal("integer", math.type(b.parties))
      assert.are.equal(0, b.n_waiting)
      assert.is_false(b.broken)
      assert.matches("^luamp%.Barrier %(0?x?%x+, 0/3%)$", tostring(b))
    end)

    it("rejects bad parties, action and timeout", function()
      local function msg(...)
        local ok, e = pcall(mp.Barrier, ...)
        assert.is_false(ok)
        return (e:gsub("^bad argument (#%d) to '[%w_.]*Barrier'",
          "bad argument %1 to 'Barrier'"))
      end
      assert.are.equal("bad argument #1 to 'Barrier' (parties must be at "
        .. "least 1)", msg(0))
      assert.are.equal("bad argument #1 to 'Barrier' (number expected, got "
        .. "no value)", msg())
      assert.are.equal("bad argument #2 to 'Barrier' (function expected, "
        .. "got number)", msg(2, 5))
      assert.are.equal("bad argument #3 to 'Barrier' (timeout must be "
        .. "a number)", msg(2, nil, 0 / 0))
    end)

    it("takes a callable table for its action, and a negative timeout as "
       .. "none to wait", function()
      local calls = 0
      local b = mp.Barrier(1, setmetatable({}, {__call = function()
        calls = calls + 1
      end}))
      assert.are.equal(0, b:wait())
      assert.are.equal(1, calls)
      local t = mp.Barrier(2, nil, -1)
      local took_ = timed(function()
        assert.is_true(is_broken(t.wait, t))
      end)
      assert.is_true(took_ < 1, took_)
    end)
  end)

  -- After CPython's _TestBarrier.test_single_thread.
  it("of one party lets its only party through at once, index 0", function()
    local b = mp.Barrier(1)
    assert.are.same({0}, {b:wait()})
    assert.are.same({0}, {b:wait()})
    assert.is_false(b.broken)
  end)

  -- After CPython's _TestBarrier.test_barrier and test_barrier_10.
  for _, passes in ipairs{1, 10} do
    it("is passed in lockstep by " .. N .. " processes, " .. passes
       .. " time(s)", function()
      local b = mp.Barrier(N, nil, 30)
      local r0, r1 = mp.Value('i', 0), mp.Value('i', 0)
      run_parties(function()
        local m = b.parties
        for i = 0, passes - 1 do
          r0:add(1)
          assert(r1.value == i * m, "r1 " .. r1.value)
          b:wait()
          r1:add(1)
          assert(r0.value == (i + 1) * m, "r0 " .. r0.value)
          b:wait()
        end
        assert(b.n_waiting == 0)
        assert(not b.broken)
      end)
      assert.are.equal(N * passes, r0.value)
      assert.are.equal(N * passes, r1.value)
    end)
  end

  -- After CPython's _TestBarrier.test_wait_return.
  it("gives each party a distinct index 0 .. parties-1", function()
    local b, q = mp.Barrier(N), mp.Queue()
    run_parties(function() q:put(b:wait(30)) end)
    local got = {}
    for i = 1, N do got[i] = q:get(true, 10) end
    table.sort(got)
    assert.are.same({0, 1, 2, 3, 4}, got)
    assert.are.equal("integer", math.type(got[1]))
  end)

  -- After CPython's _TestBarrier.test_action.
  it("runs the action once, in the last arriver, before the others go",
     function()
    local ran, q = mp.Value('i', 0), mp.Queue()
    local who = mp.Value('i', 0)
    -- An action is sent to the process that runs it; it reaches what it
    -- needs through upvalues, as busted runs this file in its own _ENV.
    local open, tointeger = io.open, math.tointeger
    local function getpid()
      local f = open("/proc/self/stat")
      local pid = tointeger(f:read("n"))
      f:close()
      return pid
    end
    local b = mp.Barrier(N, function()
      ran:add(1)
      who.value = getpid()
    end)
    run_parties(function()
      local i = b:wait(30)
      q:put({i, ran.value, mp.current_process().pid})
    end)
    assert.are.equal(1, ran.value)
    local last
    for _ = 1, N do
      local r = q:get(true, 10)
      assert.are.equal(1, r[2], "a party went before the action ran")
      if r[1] == N - 1 then last = r[3] end
    end
    assert.are.equal(last, who.value)
  end)

  it("breaks when the action raises; the last arriver gets the error",
     function()
    local raise = error
    local b = mp.Barrier(2, function() raise("action failed", 0) end)
    local q = mp.Queue()
    local p = spawn(function() q:put(is_broken(b.wait, b, 10)) end)
    local deadline = mp.monotonic() + 10
    while b.n_waiting < 1 and mp.monotonic() < deadline do
      mp.sleep(0.001)
    end
    local ok, e = pcall(b.wait, b, 10)
    assert.is_false(ok)
    assert.are.equal("action failed", e)
    assert.is_true(q:get(true, 10))
    finish(p)
    assert.is_true(b.broken)
  end)

  it("runs the action itself in the process that made it, so that what it "
     .. "changes stays", function()
    local n, seen = 0, nil
    local b
    b = mp.Barrier(1, function()
      n = n + 1
      seen = b and b.parties
    end)
    assert.are.equal(0, b:wait())
    assert.are.equal(0, b:wait())
    assert.are.equal(2, n)
    assert.are.equal(1, seen)
  end)

  -- (A child started otherwise runs the copy sent with the barrier.)
  H.fork_only("runs its maker's copy in a child forked after, as in Python",
              function()
    local n = 0
    local b = mp.Barrier(1, function() n = n + 1 end)
    b:wait()
    local q = mp.Queue()
    finish(spawn(function()
      b:wait()
      q:put(n)
    end))
    assert.are.equal(2, q:get(true, 10))
    assert.are.equal(1, n)
  end)

  -- While the last arriver runs the action, Python's lock is held: no one
  -- enters, leaves or times out, and abort and reset wait for the round.
  describe("while its action runs", function()
    -- A barrier of 2 whose action says it started and waits for go.
    local function acting()
      local started, go = mp.Event(), mp.Event()
      local b = mp.Barrier(2, function()
        started:set()
        assert(go:wait(30), "go was not set")
      end)
      return b, started, go
    end

    -- Two children wait at b, each putting on q its index or its error's
    -- type; outcomes(q, n) takes n of those, sorted.
    local function two_parties(b)
      local q, ps = mp.Queue(), {}
      for i = 1, 2 do
        ps[i] = spawn(function()
          local ok, r = pcall(b.wait, b, 30)
          q:put(ok and r or r.type)
        end)
      end
      return ps, q
    end
    local function outcomes(q, n)
      local got = {}
      for i = 1, n do got[i] = q:get(true, 30) end
      table.sort(got, function(x, y) return tostring(x) < tostring(y) end)
      return got
    end

    it("keeps a party that comes for the next round", function()
      local b, started, go = acting()
      local ps, q = two_parties(b)
      assert.is_true(started:wait(30))
      local called = mp.Event()
      local late = spawn(function()
        called:set()
        q:put(is_broken(b.wait, b, 1) and "broken" or "passed")
      end)
      assert.is_true(called:wait(30))
      mp.sleep(0.3) -- the late party waits to enter (else: no test)
      go:set()
      -- the round's two parties, and the late one alone in the next
      assert.are.same({0, 1, "broken"}, outcomes(q, 3))
      finish_all(ps)
      finish(late)
    end)

    it("lets the party that ran it go when it is aborted meanwhile, and "
       .. "stays broken", function()
      local b, started, go = acting()
      local ps, q = two_parties(b)
      assert.is_true(started:wait(30))
      b:abort()
      go:set()
      assert.are.same({1, "BrokenBarrierError"}, outcomes(q, 2))
      finish_all(ps)
      assert.is_true(b.broken)
    end)

    it("ends the round as it would have when it is reset meanwhile",
       function()
      local b, started, go = acting()
      local ps, q = two_parties(b)
      assert.is_true(started:wait(30))
      b:reset()
      go:set()
      assert.are.same({0, 1}, outcomes(q, 2))
      finish_all(ps)
      assert.is_false(b.broken)
    end)

    it("does not time out the parties waiting for it", function()
      local b = mp.Barrier(2, function() mp.sleep(1) end)
      local q = mp.Queue()
      local p = spawn(function()
        local ok, r = pcall(b.wait, b, 0.5)
        q:put(ok and r or r.type)
      end)
      reaches(1, function() return b.n_waiting end)
      assert.are.equal(1, b:wait(30))
      assert.are.equal(0, q:get(true, 30))
      finish(p)
      assert.is_false(b.broken)
    end)
  end)

  it("counts n_waiting as parties arrive", function()
    local b = mp.Barrier(3)
    local ps = {}
    for i = 1, 2 do
      ps[i] = spawn(function() b:wait(10) end)
      reaches(i, function() return b.n_waiting end)
    end
    assert.matches("^luamp%.Barrier %(0?x?%x+, 2/3%)$", tostring(b))
    b:wait(10)
    finish_all(ps)
    assert.are.equal(0, b.n_waiting)
    assert.is_false(b.broken)
  end)

  -- After CPython's _TestBarrier.test_abort.
  it("abort breaks it for every party", function()
    local b = mp.Barrier(N, nil, 30)
    local r1, r2 = mp.Value('i', 0), mp.Value('i', 0)
    run_parties(function()
      local ok, e = pcall(function()
        local i = b:wait()
        if i == N // 2 then error("late") end
        b:wait()
        r1:add(1)
      end)
      if not ok then
        if type(e) == "table" and e.type == mp.BrokenBarrierError then
          r2:add(1)
        else
          b:abort()
        end
      end
    end)
    assert.are.equal(0, r1.value)
    assert.are.equal(N - 1, r2.value)
    assert.is_true(b.broken)
    raises(mp.BrokenBarrierError, BROKEN, b.wait, b)
    assert.is_true(b.broken)
  end)

  it("raises a BrokenBarrierError error object once broken", function()
    local b = mp.Barrier(2)
    b:abort()
    local e = raises(mp.BrokenBarrierError, BROKEN, b.wait, b)
    assert.are.equal("BrokenBarrierError", mp.BrokenBarrierError)
    assert.are.equal(mp.BrokenBarrierError, e.type)
    assert.is_true(b.broken)
    assert.are.equal(0, b.n_waiting)
    assert.matches("^luamp%.Barrier %(0?x?%x+, 0/2, broken%)$", tostring(b))
  end)

  -- After CPython's _TestBarrier.test_reset.
  it("reset frees the waiters with BrokenBarrierError, then works again",
     function()
    local b = mp.Barrier(N, nil, 30)
    local r1, r2, r3 = mp.Value('i', 0), mp.Value('i', 0), mp.Value('i', 0)
    run_parties(function()
      local i = b:wait()
      if i == N // 2 then
        local deadline = mp.monotonic() + 10
        while b.n_waiting < N - 1 and mp.monotonic() < deadline do
          mp.sleep(0.001)
        end
        b:reset()
      elseif is_broken(b.wait, b) then
        r2:add(1)
      else
        r1:add(1)
      end
      b:wait()
      r3:add(1)
    end)
    assert.are.equal(0, r1.value)
    assert.are.equal(N - 1, r2.value)
    assert.are.equal(N, r3.value)
    assert.is_false(b.broken)
  end)

  -- After CPython's _TestBarrier.test_abort_and_reset.
  it("can be reset after an abort and used again", function()
    local b, b2 = mp.Barrier(N, nil, 30), mp.Barrier(N, nil, 30)
    local r1, r2, r3 = mp.Value('i', 0), mp.Value('i', 0), mp.Value('i', 0)
    run_parties(function()
      local ok, e = pcall(function()
        local i = b:wait()
        if i == N // 2 then error("late") end
        b:wait()
        r1:add(1)
      end)
      if not ok then
        if type(e) == "table" and e.type == mp.BrokenBarrierError then
          r2:add(1)
        else
          b:abort()
        end
      end
      if b2:wait() == N // 2 then b:reset() end
      b2:wait()
      b:wait()
      r3:add(1)
    end)
    assert.are.equal(0, r1.value)
    assert.are.equal(N - 1, r2.value)
    assert.are.equal(N, r3.value)
    assert.is_false(b.broken)
  end)

  it("reset with nobody waiting mends a broken barrier", function()
    local b = mp.Barrier(1)
    b:abort()
    assert.is_true(b.broken)
    b:reset()
    assert.is_false(b.broken)
    assert.are.equal(0, b:wait())
  end)

  it("wait(timeout) breaks the barrier after the timeout", function()
    local b = mp.Barrier(2)
    local dt = timed(function()
      raises(mp.BrokenBarrierError, BROKEN, b.wait, b, 0.2)
    end)
    took(dt, 0.19, 1.5, "wait(0.2)")
    assert.is_true(b.broken)
    assert.are.equal(0, b.n_waiting)
  end)

  -- After CPython's _TestBarrier.test_timeout and test_default_timeout:
  -- one party comes late (once the barrier is broken); all get the error.
  for _, default in ipairs{false, true} do
    it(default and "breaks after its default timeout for every party"
         or "breaks after a wait's timeout for every party", function()
      local b = default and mp.Barrier(N, nil, 0.3) or mp.Barrier(N, nil, 30)
      local results = mp.Value('i', 0)
      run_parties(function()
        local i = b:wait(10)
        if i == N // 2 then
          local deadline = mp.monotonic() + 10
          while not b.broken and mp.monotonic() < deadline do
            mp.sleep(0.001)
          end
        end
        local t0 = mp.monotonic()
        local broke = is_broken(b.wait, b, (not default) and 0.3 or nil)
        local dt = mp.monotonic() - t0
        if broke and (i == N // 2 or dt < 5) then results:add(1) end
      end)
      assert.are.equal(N, results.value)
      assert.is_true(b.broken)
    end)
  end

  -- After CPython's _TestBarrier.test_thousand (fewer passes).
  it("keeps " .. N .. " processes in step for 300 passes", function()
    local passes = 300
    local b, l = mp.Barrier(N, nil, 30), mp.Lock()
    local conn, child_conn = mp.Pipe(false)
    local ps = {}
    for j = 1, N do
      ps[j] = spawn(function()
        for i = 0, passes - 1 do
          b:wait()
          l:with(function() child_conn:send(i) end)
        end
      end)
    end
    local ok = true
    for i = 0, passes - 1 do
      for _ = 1, N do
        local got = conn:recv()
        if got ~= i then ok = false end
      end
    end
    finish_all(ps)
    assert.is_true(ok, "a process left the barrier out of step")
    conn:close()
    child_conn:close()
  end)

  it("sent through a queue and a pipe is the same barrier", function()
    local q, back = mp.Queue(), mp.Queue()
    local a, c = mp.Pipe()
    local p1 = spawn(function() back:put(q:get(true, 10):wait(10)) end)
    local p2 = spawn(function() back:put(c:recv():wait(10)) end)
    local b = mp.Barrier(3)
    q:put(b)
    a:send(b)
    local got = {b:wait(10), back:get(true, 10), back:get(true, 10)}
    table.sort(got)
    assert.are.same({0, 1, 2}, got)
    finish(p1)
    finish(p2)
    a:close()
    c:close()
  end)
end)

describe("Ctrl-C", function()
  H.leakcheck()

  it("interrupts Condition.wait, which holds the lock again, and "
     .. "Barrier.wait, which breaks the barrier", function()
    local status, out, err = H.luamp_e(H.CTRL_C .. [[
      local c = mp.Condition()
      c:acquire()
      c:acquire()
      interrupt("Condition", function() return c:wait() end)
      print("owned", c:get_lock():owned(), tostring(c):match("%d+ waiting"))
      c:release()
      c:release()
      print("released", c:get_lock():locked())
      local b = mp.Barrier(2)
      interrupt("Barrier", function() return b:wait() end)
      print("broken", b.broken, b.n_waiting)
    ]], "timeout -s KILL 30")
    assert.are.equal(0, status, err)
    local I = "KeyboardInterrupt\tluamp.KeyboardInterrupt: interrupted"
    assert.are.equal(table.concat({
      "Condition\tfalse\t" .. I,
      "owned\ttrue\t0 waiting",
      "released\tfalse",
      "Barrier\tfalse\t" .. I,
      "broken\ttrue\t0", ""}, "\n"), out)
  end)

  it("in Condition.wait takes the lock back even while another process "
     .. "holds it", function()
    -- The child takes the lock that the parent's wait gave up, sends
    -- SIGINT, and lets the lock go once the parent has woken and slept
    -- again (its count of voluntary context switches has grown).  As in
    -- Python, wait ends (here: raises) holding the lock, so that `with`
    -- can release it.
    local status, out, err = H.luamp_e(H.PROC .. [[
      local mp = require "luamp"
      local ppid = mp.current_process().pid
      local function switches(pid)
        return tonumber(assert(readfile("/proc/" .. pid .. "/status")):match(
          "\nvoluntary_ctxt_switches:%s*(%d+)"))
      end
      local c = mp.Condition()
      local function child()
        c:acquire() -- only possible once the parent waits
        local deadline = mp.monotonic() + 10
        while state(ppid) ~= "S" and mp.monotonic() < deadline do
          mp.sleep(0.001)
        end
        local n = switches(ppid)
        os.execute("kill -INT " .. ppid)
        while not (switches(ppid) > n and state(ppid) == "S")
              and mp.monotonic() < deadline do
          mp.sleep(0.001)
        end
        c:release()
      end
      c:acquire()
      local p = mp.Process{target = child}
      p:start()
      local ok, e = pcall(c.wait, c)
      print("wait", ok, type(e) == "table" and e.type)
      print("owned", c:get_lock():owned())
      p:join()
      print(pcall(c.release, c))
      p = mp.Process{target = child}
      p:start()
      ok, e = pcall(c.with, c, function() c:wait() end)
      print("with", ok, type(e) == "table" and e.type or e)
      p:join()
      print("locked", c:get_lock():locked())
    ]], "timeout -s KILL 30")
    assert.are.equal(0, status, err)
    assert.are.equal(table.concat({
      "wait\tfalse\tKeyboardInterrupt",
      "owned\ttrue",
      "true",
      "with\tfalse\tKeyboardInterrupt",
      "locked\tfalse", ""}, "\n"), out)
  end)
end)

