-- sync_spec.lua -- Lock, RLock, Semaphore, BoundedSemaphore and Event:
-- exact return values and error messages, block and timeout, wake-up
-- across processes, Ctrl-C, the scoped form lock:with, and the objects
-- sent through a Queue and a Pipe.  Every child is a fork of the test
-- process; a test that waits on a child always does so with a timeout.

local mp = require "luamp"
local H = require "spec_helper"
local timed, state, until_asleep = H.timed, H.state, H.until_asleep
local spawn, finish = H.spawn, H.finish
local took = H.took

-- Checks that fn returned exactly the values in want (a table with n).
local function returns(want, ...)
  assert.are.same(want, table.pack(...))
end

-- Starts a child that takes one unit of obj (a lock or a semaphore) and
-- holds it until the returned function is called; that function lets the
-- child release and end, and joins it.  When this returns, the child
-- holds the unit.
local function hold_elsewhere(obj)
  local held, go = mp.Event(), mp.Event()
  local p = spawn(function()
    assert(obj:acquire(true, 10))
    held:set()
    assert(go:wait(10))
    obj:release()
  end)
  assert.is_true(held:wait(10), "the child never took the lock")
  return function()
    go:set()
    finish(p)
  end
end

-- Checks that l (a Lock or RLock) is locked() but not owned() here while
-- a child holds it, and that the child sees it locked() too.
local function locked_elsewhere(l)
  local res, held, go = mp.Value('b', 0), mp.Event(), mp.Event()
  local p = spawn(function()
    l:acquire()
    res.value = l:locked() and 1 or 2
    held:set()
    assert(go:wait(10))
    l:release()
  end)
  assert.is_true(held:wait(10))
  assert.is_true(l:locked())
  assert.is_false(l:owned())
  assert.are.equal(1, res.value)
  go:set()
  finish(p)
  assert.is_false(l:locked())
end

-- The four lock-like kinds, each made with one free unit; `held` says
-- whether this process holds it (or, for a semaphore, the unit is taken).
local kinds = {
  {name = "Lock", make = function() return mp.Lock() end,
   held = function(l) return l:locked() end},
  {name = "RLock", make = function() return mp.RLock() end,
   held = function(l) return l:owned() end},
  {name = "Semaphore", make = function() return mp.Semaphore(1) end,
   held = function(s) return s:get_value() == 0 end},
  {name = "BoundedSemaphore",
   make = function() return mp.BoundedSemaphore(1) end,
   held = function(s) return s:get_value() == 0 end},
}

describe("Lock", function()
  H.leakcheck()

  -- After CPython's _TestLock.test_lock.
  it("acquires, refuses a second acquire(false), releases, then raises",
     function()
    local l = mp.Lock()
    assert.is_false(l:locked())
    returns({n = 1, true}, l:acquire())
    assert.is_true(l:locked())
    returns({n = 1, false}, l:acquire(false))
    returns({n = 0}, l:release())
    assert.is_false(l:locked())
    assert.has_error(function() l:release() end, "release unlocked lock")
  end)

  it("is not recursive: the holder's own acquire times out", function()
    local l = mp.Lock()
    assert.is_true(l:acquire())
    local dt, ok = timed(function() return l:acquire(true, 0.1) end)
    assert.is_false(ok)
    took(dt, 0.09, 1.5, "acquire(true, 0.1)")
    l:release()
  end)

  it("may be released by a process that did not acquire it", function()
    local l = mp.Lock()
    l:acquire()
    local p = spawn(function() l:release() end)
    finish(p)
    assert.is_false(l:locked())
    returns({n = 1, true}, l:acquire(false))
    l:release()
  end)

  -- After CPython's test_lock_locked_2processes.
  it("is locked() in another process while a child holds it", function()
    locked_elsewhere(mp.Lock())
  end)

  it("has a tostring that names it and its state", function()
    local l = mp.Lock()
    assert.matches("^luamp%.Lock %(0?x?%x+, unlocked%)$", tostring(l))
    l:acquire()
    assert.matches("^luamp%.Lock %(0?x?%x+, locked by pid "
      .. mp.current_process().pid .. "%)$", tostring(l))
    l:release()
  end)

  it("rejects bad timeouts and a self that is not a lock", function()
    local l = mp.Lock()
    assert.has_error(function() l:acquire(true, "soon") end,
      "bad argument #2 to 'acquire' (number expected, got string)")
    assert.has_error(function() l:acquire(true, 0 / 0) end,
      "bad argument #2 to 'acquire' (timeout must be a number, not NaN)")
    assert.has_error(function() l.acquire({}) end,
      "bad argument #1 to 'acquire' (luamp.Lock expected, got table)")
    assert.is_false(l:locked())
  end)
end)

describe("RLock", function()
  H.leakcheck()

  -- After CPython's _TestLock.test_rlock.
  it("counts recursion: n acquires need n releases, then it raises",
     function()
    local l = mp.RLock()
    returns({n = 1, true}, l:acquire())
    assert.is_true(l:locked())
    returns({n = 1, true}, l:acquire())
    returns({n = 1, true}, l:acquire(false))
    returns({n = 0}, l:release())
    assert.is_true(l:locked())
    returns({n = 0}, l:release())
    assert.is_true(l:owned())
    returns({n = 0}, l:release())
    assert.is_false(l:locked())
    assert.is_false(l:owned())
    assert.has_error(function() l:release() end,
      "cannot release un-acquired lock")
  end)

  it("can only be released by its owner", function()
    local l, q = mp.RLock(), mp.Queue()
    l:acquire()
    local p = spawn(function()
      local ok, e = pcall(l.release, l)
      q:put({ok, e, l:owned(), l:locked(), l:acquire(false)})
    end)
    local r = q:get(true, 10)
    finish(p)
    assert.are.same({false, "cannot release un-acquired lock", false, true,
                     false}, r)
    assert.is_true(l:owned())
    l:release()
    assert.is_false(l:locked())
  end)

  it("is taken by another process only after its last release", function()
    local l, q = mp.RLock(), mp.Queue()
    l:acquire()
    l:acquire()
    local p = spawn(function()
      q:put("trying")
      q:put({l:acquire(true, 10), mp.monotonic()})
      l:release()
    end)
    assert.are.equal("trying", q:get(true, 10))
    until_asleep(p.pid)
    l:release()
    -- Still held once: the child must not have it.
    assert.is_true(l:owned())
    assert.is_true(q:empty())
    local t0 = mp.monotonic()
    l:release()
    local r = q:get(true, 10)
    finish(p)
    assert.is_true(r[1])
    took(r[2] - t0, 0, 0.5, "the wake-up after the last release")
  end)

  -- After CPython's test_rlock_locked_2processes.
  it("is locked() in another process while a child holds it", function()
    locked_elsewhere(mp.RLock())
  end)

  it("has a tostring that names it", function()
    assert.matches("^luamp%.RLock %(0?x?%x+, unlocked%)$",
      tostring(mp.RLock()))
  end)
end)

describe("Semaphore", function()
  H.leakcheck()

  -- After CPython's _TestSemaphore.test_semaphore.
  it("counts acquires and releases, with no upper bound", function()
    local s = mp.Semaphore(2)
    assert.are.equal(2, s:get_value())
    returns({n = 1, true}, s:acquire())
    assert.are.equal(1, s:get_value())
    returns({n = 1, true}, s:acquire())
    assert.are.equal(0, s:get_value())
    returns({n = 1, false}, s:acquire(false))
    assert.are.equal(0, s:get_value())
    returns({n = 0}, s:release())
    assert.are.equal(1, s:get_value())
    returns({n = 0}, s:release())
    assert.are.equal(2, s:get_value())
    s:release()
    assert.are.equal(3, s:get_value())
    s:release()
    assert.are.equal(4, s:get_value())
  end)

  it("starts at 1 by default and at 0 when asked", function()
    assert.are.equal(1, mp.Semaphore():get_value())
    assert.are.equal(0, mp.Semaphore(0):get_value())
    assert.is_false(mp.Semaphore(0):acquire(false))
  end)

  it("release(n) adds n units; n must be at least 1", function()
    local s = mp.Semaphore(0)
    s:release(3)
    assert.are.equal(3, s:get_value())
    assert.has_error(function() s:release(0) end,
      "bad argument #1 to 'release' (n must be at least 1)")
    assert.are.equal(3, s:get_value())
  end)

  it("raises on a release past the largest count, which stays", function()
    local top = 2147483647
    local s = mp.Semaphore(top)
    for _, n in ipairs{1, top, 2 ^ 31, 2 ^ 32 + 1} do
      assert.has_error(function() s:release(math.tointeger(n)) end,
        "semaphore or lock released too many times")
    end
    assert.are.equal(top, s:get_value())
    returns({n = 1, true}, s:acquire(false))
    assert.are.equal(top - 1, s:get_value())
    s:release()
    assert.are.equal(top, s:get_value())
    local b = mp.BoundedSemaphore(top)
    assert.has_error(function() b:release(top) end,
      "semaphore or lock released too many times")
    assert.are.equal(top, b:get_value())
  end)

  it("rejects a negative start value", function()
    local ok, e = pcall(mp.Semaphore, -1)
    assert.is_false(ok)
    assert.matches("^bad argument #1 to '[%w_.]*Semaphore' %(semaphore "
      .. "initial value must be >= 0%)$", e)
  end)

  -- After CPython's _TestSemaphore.test_timeout.
  it("does not wait with block false; waits the timeout with block true",
     function()
    local s = mp.Semaphore(0)
    local dt, ok = timed(function() return s:acquire(false) end)
    assert.is_false(ok)
    took(dt, 0, 0.05, "acquire(false)")
    dt, ok = timed(function() return s:acquire(false, nil) end)
    assert.is_false(ok)
    took(dt, 0, 0.05, "acquire(false, nil)")
    dt, ok = timed(function() return s:acquire(false, 0.1) end)
    assert.is_false(ok)
    took(dt, 0, 0.05, "acquire(false, 0.1)")
    dt, ok = timed(function() return s:acquire(true, 0.1) end)
    assert.is_false(ok)
    took(dt, 0.09, 1.5, "acquire(true, 0.1)")
    dt, ok = timed(function() return s:acquire(nil, 0.1) end)
    assert.is_false(ok)
    took(dt, 0.09, 1.5, "acquire(nil, 0.1)")
  end)

  it("returns true and nothing else from an acquire that gets a unit",
     function()
    -- No process has died here, so no "owner died".
    local s = mp.Semaphore(3)
    returns({n = 1, true}, s:acquire())
    returns({n = 1, true}, s:acquire(true, 1))
    returns({n = 1, true}, s:acquire(false))
  end)

  it("has a tostring that names it and its value", function()
    assert.matches("^luamp%.Semaphore %(0?x?%x+, value=2%)$",
      tostring(mp.Semaphore(2)))
  end)
end)

describe("BoundedSemaphore", function()
  H.leakcheck()

  it("counts like a Semaphore up to its start value", function()
    local s = mp.BoundedSemaphore(2)
    assert.are.equal(2, s:get_value())
    returns({n = 1, true}, s:acquire())
    returns({n = 1, true}, s:acquire())
    returns({n = 1, false}, s:acquire(false))
    assert.are.equal(0, s:get_value())
    s:release()
    s:release()
    assert.are.equal(2, s:get_value())
  end)

  it("raises on a release above its start value, which stays", function()
    local s = mp.BoundedSemaphore(2)
    assert.has_error(function() s:release() end,
      "semaphore or lock released too many times")
    assert.are.equal(2, s:get_value())
    s:acquire()
    assert.has_error(function() s:release(2) end,
      "semaphore or lock released too many times")
    assert.are.equal(1, s:get_value())
    s:release()
    assert.are.equal(2, s:get_value())
    assert.has_error(function() mp.BoundedSemaphore():release() end,
      "semaphore or lock released too many times")
  end)

  it("rejects a negative start value", function()
    local ok, e = pcall(mp.BoundedSemaphore, -3)
    assert.is_false(ok)
    assert.matches("^bad argument #1 to '[%w_.]*BoundedSemaphore' "
      .. "%(semaphore initial value must be >= 0%)$", e)
  end)

  it("has a tostring that names it", function()
    assert.matches("^luamp%.BoundedSemaphore %(0?x?%x+, value=1%)$",
      tostring(mp.BoundedSemaphore()))
  end)
end)

-- What the four lock-like kinds share: timeouts, wake-up, with, sending.
for _, k in ipairs(kinds) do
  describe(k.name .. " held by another process", function()
    H.leakcheck()

    it("is not taken by acquire(false) or acquire(true, 0), which do not "
       .. "wait", function()
      local l = k.make()
      local release = hold_elsewhere(l)
      for _, args in ipairs{{false}, {true, 0}, {false, 5}, {true, -1},
                            {nil, 0}} do
        local dt, ok = timed(function()
          return l:acquire(table.unpack(args, 1, 2))
        end)
        assert.is_false(ok)
        took(dt, 0, 0.05, "acquire(" .. tostring(args[1]) .. ", "
          .. tostring(args[2]) .. ")")
      end
      release()
      assert.is_true(l:acquire(false))
      l:release()
    end)

    it("makes acquire(true, 0.2) and acquire(nil, 0.2) time out", function()
      local l = k.make()
      local release = hold_elsewhere(l)
      local dt, ok = timed(function() return l:acquire(true, 0.2) end)
      assert.is_false(ok)
      took(dt, 0.19, 1.5, "acquire(true, 0.2)")
      dt, ok = timed(function() return l:acquire(nil, 0.2) end)
      assert.is_false(ok)
      took(dt, 0.19, 1.5, "acquire(nil, 0.2)")
      release()
    end)

    it("wakes a blocked acquire within 0.5 s of the release", function()
      local l, q = k.make(), mp.Queue()
      assert.is_true(l:acquire())
      local p = spawn(function()
        q:put("trying")
        local r = table.pack(l:acquire(true, 10))
        q:put({r.n, r[1], mp.monotonic()})
        l:release()
      end)
      assert.are.equal("trying", q:get(true, 10))
      until_asleep(p.pid)
      assert.is_true(q:empty(), "the child took a held lock")
      local t0 = mp.monotonic()
      l:release()
      local r = q:get(true, 10)
      finish(p)
      assert.are.equal(1, r[1])
      assert.is_true(r[2])
      took(r[3] - t0, 0, 0.5, "the wake-up")
      assert.is_false(k.held(l))
    end)

    it("wakes a blocked acquire() without a timeout too", function()
      local l, q = k.make(), mp.Queue()
      assert.is_true(l:acquire())
      local p = spawn(function()
        q:put("trying")
        q:put({l:acquire(), mp.monotonic()})
        l:release()
      end)
      assert.are.equal("trying", q:get(true, 10))
      until_asleep(p.pid)
      local t0 = mp.monotonic()
      l:release()
      local r = q:get(true, 10)
      finish(p)
      assert.is_true(r[1])
      took(r[2] - t0, 0, 0.5, "the wake-up")
    end)
  end)

  describe(k.name .. ":with", function()
    H.leakcheck()

    it("returns what fn returns, nils included, given the arguments",
       function()
      local l = k.make()
      local r = table.pack(l:with(function(a, b, c)
        return c, nil, a, b
      end, 1, nil, "three"))
      assert.are.same({n = 4, "three", nil, 1, nil}, r)
      returns({n = 0}, l:with(function() end))
      assert.is_false(k.held(l))
    end)

    it("holds the lock while fn runs and releases it after", function()
      local l = k.make()
      local inside = l:with(function() return k.held(l) end)
      assert.is_true(inside)
      assert.is_false(k.held(l))
      assert.is_true(l:acquire(false))
      l:release()
    end)

    it("releases on error and lets the error through unchanged", function()
      local l = k.make()
      local obj = setmetatable({}, {__tostring = function() return "x" end})
      local ok, e = pcall(l.with, l, function() error(obj) end)
      assert.is_false(ok)
      assert.is_true(rawequal(obj, e))
      assert.is_false(k.held(l))
      ok, e = pcall(l.with, l, function() error("plain", 0) end)
      assert.is_false(ok)
      assert.are.equal("plain", e)
      assert.is_false(k.held(l))
      ok, e = pcall(l.with, l, function() error() end)
      assert.is_false(ok)
      assert.is_nil(e)
      assert.is_false(k.held(l))
      assert.is_true(l:acquire(false))
      l:release()
    end)

    it("keeps others out while fn runs", function()
      local l = k.make()
      local entered, leave = mp.Event(), mp.Event()
      local p = spawn(function()
        l:with(function()
          entered:set()
          assert(leave:wait(10))
        end)
      end)
      assert.is_true(entered:wait(10))
      local dt, ok = timed(function() return l:acquire(true, 0.1) end)
      assert.is_false(ok)
      took(dt, 0.09, 1.5, "acquire(true, 0.1) against with")
      leave:set()
      finish(p)
      assert.is_true(l:acquire(true, 5))
      l:release()
    end)
  end)

  describe(k.name .. " sent to another process", function()
    H.leakcheck()

    it("through a queue, made after the child started, is the same lock",
       function()
      local q, back = mp.Queue(), mp.Queue()
      local done = mp.Event()
      local p = spawn(function()
        local l = q:get(true, 10)
        assert(l:acquire(true, 10))
        back:put("held")
        assert(done:wait(10))
        l:release()
      end)
      local l = k.make()
      q:put(l)
      assert.are.equal("held", back:get(true, 10))
      local dt, ok = timed(function() return l:acquire(true, 0.2) end)
      assert.is_false(ok, "acquired while the child held it")
      took(dt, 0.19, 1.5, "acquire(true, 0.2)")
      done:set()
      finish(p)
      assert.is_true(l:acquire(true, 5))
      l:release()
    end)

    it("through a pipe is the same lock", function()
      local a, b = mp.Pipe()
      local done = mp.Event()
      local p = spawn(function()
        local l = b:recv()
        assert(l:acquire(true, 10))
        b:send("held")
        assert(done:wait(10))
        l:release()
      end)
      local l = k.make()
      a:send(l)
      assert.are.equal("held", a:recv())
      assert.is_false(l:acquire(false))
      done:set()
      finish(p)
      assert.is_true(l:acquire(true, 5))
      l:release()
      a:close()
      b:close()
    end)

    it("through a queue in the same process is the same lock", function()
      local q, l = mp.Queue(), k.make()
      q:put(l)
      local got = q:get()
      assert.are.equal(tostring(l), tostring(got))
      assert.is_true(got:acquire(false))
      assert.is_true(k.held(l))
      l:release()
      assert.is_false(k.held(got))
    end)
  end)
end

describe("Event", function()
  H.leakcheck()

  -- After CPython's _TestEvent.test_event.
  it("waits the timeout while unset and not at all once set", function()
    local e = mp.Event()
    assert.is_false(e:is_set())
    local dt, r = timed(function() return e:wait(0) end)
    assert.is_false(r)
    took(dt, 0, 0.05, "wait(0)")
    dt, r = timed(function() return e:wait(0.1) end)
    assert.is_false(r)
    took(dt, 0.09, 1.5, "wait(0.1)")
    dt, r = timed(function() return e:wait(-1) end)
    assert.is_false(r)
    took(dt, 0, 0.05, "wait(-1)")
    returns({n = 0}, e:set())
    assert.is_true(e:is_set())
    dt, r = timed(function() return e:wait() end)
    assert.is_true(r)
    took(dt, 0, 0.05, "wait() when set")
    dt, r = timed(function() return e:wait(0.1) end)
    assert.is_true(r)
    took(dt, 0, 0.05, "wait(0.1) when set")
    e:set()
    assert.is_true(e:is_set())
    returns({n = 0}, e:clear())
    assert.is_false(e:is_set())
    assert.is_false(e:wait(0))
  end)

  it("keeps waiting through wake-ups that are no set", function()
    -- A child's end (SIGCHLD) and a SIGURG (how one process wakes
    -- another) end no wait: only a set does.
    local e = mp.Event()
    local p = spawn(function() mp.sleep(0.05) end)
    local dt, r = timed(function() return e:wait(0.6) end)
    finish(p)
    assert.is_false(r)
    took(dt, 0.55, 3, "wait(0.6) while a child ended")
    local me = mp.current_process().pid
    p = spawn(function()
      mp.sleep(0.05)
      os.execute("kill -URG " .. me)
    end)
    dt, r = timed(function() return e:wait(0.6) end)
    finish(p)
    assert.is_false(r)
    took(dt, 0.55, 3, "wait(0.6) through a SIGURG")
  end)

  it("wakes a waiter in another process within 0.5 s of set", function()
    local e, q = mp.Event(), mp.Queue()
    local p = spawn(function()
      q:put("waiting")
      local r = table.pack(e:wait())
      q:put({r.n, r[1], mp.monotonic()})
    end)
    assert.are.equal("waiting", q:get(true, 10))
    until_asleep(p.pid)
    assert.is_true(q:empty())
    local t0 = mp.monotonic()
    e:set()
    local r = q:get(true, 10)
    finish(p)
    assert.are.same({1, true}, {r[1], r[2]})
    took(r[3] - t0, 0, 0.5, "the wake-up")
  end)

  it("wakes every waiter at once", function()
    local e, q = mp.Event(), mp.Queue()
    local ps = {}
    for i = 1, 4 do
      ps[i] = spawn(function()
        q:put("waiting")
        q:put(e:wait(10))
      end)
    end
    for _ = 1, 4 do assert.are.equal("waiting", q:get(true, 10)) end
    for i = 1, 4 do until_asleep(ps[i].pid) end
    e:set()
    for _ = 1, 4 do assert.is_true(q:get(true, 10)) end
    for i = 1, 4 do finish(ps[i]) end
  end)

  it("wakes every waiter on a set cleared at once", function()
    -- As Python's: the waiters sleeping at the set wake, though the flag
    -- may be down again when they look (then they answer false).
    local e, q = mp.Event(), mp.Queue()
    local ps = {}
    for i = 1, 3 do
      ps[i] = spawn(function()
        q:put("waiting")
        local t0 = mp.monotonic()
        local r = table.pack(e:wait(10))
        q:put({r.n, r[1], mp.monotonic() - t0})
      end)
    end
    for _ = 1, 3 do assert.are.equal("waiting", q:get(true, 10)) end
    for i = 1, 3 do until_asleep(ps[i].pid) end
    e:set()
    e:clear()
    for _ = 1, 3 do
      local r = q:get(true, 15)
      assert.are.equal(1, r[1])
      assert.are.equal("boolean", type(r[2]))
      took(r[3], 0, 5, "the wake-up")
    end
    for i = 1, 3 do finish(ps[i]) end
    assert.is_false(e:wait(0))
  end)

  it("set in a child is seen by the parent (made after the child started)",
     function()
    local q = mp.Queue()
    local p = spawn(function()
      local e = q:get(true, 10)
      e:set()
    end)
    local e = mp.Event()
    q:put(e)
    assert.is_true(e:wait(10))
    finish(p)
    assert.is_true(e:is_set())
  end)

  it("sent through a pipe is the same event", function()
    local a, b = mp.Pipe()
    local p = spawn(function()
      local e = b:recv()
      e:set()
      b:send(e:is_set())
    end)
    local e = mp.Event()
    a:send(e)
    assert.is_true(a:recv())
    finish(p)
    assert.is_true(e:is_set())
    a:close()
    b:close()
  end)

  it("has a tostring that names it and its state", function()
    local e = mp.Event()
    assert.matches("^luamp%.Event %(0?x?%x+, unset%)$", tostring(e))
    e:set()
    assert.matches("^luamp%.Event %(0?x?%x+, set%)$", tostring(e))
  end)

  it("rejects a bad timeout", function()
    assert.has_error(function() mp.Event():wait("soon") end,
      "bad argument #1 to 'wait' (number expected, got string)")
  end)
end)

describe("Ctrl-C", function()
  H.leakcheck()

  it("interrupts a blocked acquire or wait with a KeyboardInterrupt error "
     .. "object; the script can go on", function()
    -- For each case a child sends SIGINT once this process is asleep,
    -- that is, blocked in the call under test.
    local status, out, err = H.luamp_e(H.CTRL_C .. [[
      local l = mp.Lock()
      l:acquire()
      interrupt("Lock", function() return l:acquire() end)
      interrupt("Lock.timeout", function() return l:acquire(true, 30) end)
      l:release()
      print("Lock after", l:acquire(false))
      local r, held, go = mp.RLock(), mp.Event(), mp.Event()
      local holder = mp.Process{target = function()
        r:acquire()
        held:set()
        go:wait(30)
        r:release()
      end}
      holder:start()
      held:wait(10)
      interrupt("RLock", function() return r:acquire() end)
      go:set()
      holder:join()
      print("RLock after", r:acquire(false))
      local s = mp.Semaphore(0)
      interrupt("Semaphore", function() return s:acquire() end)
      local b = mp.BoundedSemaphore(1)
      b:acquire()
      interrupt("BoundedSemaphore", function() return b:acquire() end)
      local e = mp.Event()
      interrupt("Event", function() return e:wait() end)
      print("done")
    ]], "timeout -s KILL 30")
    assert.are.equal(0, status, err)
    local I = "KeyboardInterrupt\tluamp.KeyboardInterrupt: interrupted"
    assert.are.equal(table.concat({
      "Lock\tfalse\t" .. I,
      "Lock.timeout\tfalse\t" .. I,
      "Lock after\ttrue",
      "RLock\tfalse\t" .. I,
      "RLock after\ttrue",
      "Semaphore\tfalse\t" .. I,
      "BoundedSemaphore\tfalse\t" .. I,
      "Event\tfalse\t" .. I,
      "done", ""}, "\n"), out)
  end)

  -- Runs a luamp chunk: `setup`, then `body`, during which a child stops
  -- this process once it sleeps (in body's blocking call), makes that call
  -- ready (`ready`), sends SIGINT and resumes it: the process wakes to
  -- both at once.  Returns status, stdout and stderr.
  local function both_at_once(setup, ready, body)
    return H.luamp_e(H.PROC .. [[
      local mp = require "luamp"
      local me, armed = mp.current_process().pid, mp.Value("i", 0)
      ]] .. setup .. [[
      local p = mp.Process{target = function()
        while armed.value == 0 or state(me) ~= "S" do mp.sleep(0.001) end
        os.execute("kill -STOP " .. me)
        while state(me) ~= "T" do mp.sleep(0.001) end
        ]] .. ready .. [[
        os.execute("kill -INT " .. me .. "; kill -CONT " .. me)
      end}
      p:start()
      armed.value = 1
      ]] .. body .. [[
      p:join()
    ]], "timeout -s KILL 30")
  end

  it("that comes as a get succeeds comes after it: the message is the "
     .. "caller's", function()
    local status, out, err = both_at_once("local q = mp.Queue()",
      "q:put('precious')", [[
      local function body()
        local ok, m = pcall(function() return q:get() end)
        return "not reached", ok, m
      end
      -- The handler reads body's locals where the interrupt came.
      local r = table.pack(xpcall(body, function(e)
        local _, ok = debug.getlocal(2, 1)
        local _, m = debug.getlocal(2, 2)
        return {e = e, ok = ok, m = m}
      end))
      print(r[1], r[2].e, r[2].ok, r[2].m, q:qsize())
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal("false\tluamp.KeyboardInterrupt: interrupted\ttrue\t"
      .. "precious\t0\n", out)
  end)

  it("that comes as with acquires its lock leaves the lock released",
     function()
    local status, out, err = both_at_once([[
      local l, held, go = mp.Lock(), mp.Event(), mp.Event()
      local holder = mp.Process{target = function()
        l:acquire()
        held:set()
        go:wait(30)
        l:release()
      end}
      holder:start()
      held:wait(10)
    ]], "go:set()", [[
      local ran = false
      local ok, e = pcall(l.with, l, function() ran = true end)
      holder:join()
      print(ok, tostring(e), ran, l:owned(), l:acquire(false))
    ]])
    assert.are.equal(0, status, err)
    assert.are.equal("false\tluamp.KeyboardInterrupt: interrupted\tfalse\t"
      .. "false\ttrue\n", out)
  end)
end)
