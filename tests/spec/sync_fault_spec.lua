-- sync_fault_spec.lua -- synchronization when a process dies in it: a
-- holder of a Lock, RLock or semaphore unit killed with SIGKILL does not
-- block the others (the next acquirer is told "owner died"), a killed
-- waiter does not swallow a Condition's notify, and a killed party breaks
-- a Barrier until it is reset.  Deaths are real: p:kill() sends SIGKILL.

local mp = require "luamp"
local H = require "spec_helper"
local timed, state, until_asleep = H.timed, H.state, H.until_asleep
local spawn, finish, kill = H.spawn, H.finish, H.kill
local took, reaches, waiting = H.took, H.reaches, H.waiting

-- Starts a child that takes obj `levels` times and sleeps until it is
-- killed; returns it once it holds obj.
local function holder(obj, levels)
  local held = mp.Event()
  local p = spawn(function()
    for _ = 1, levels or 1 do assert(obj:acquire(true, 10)) end
    held:set()
    mp.sleep(60)
  end)
  assert.is_true(held:wait(10), "the holder never took the lock")
  return p
end

local kinds = {
  {name = "Lock", make = function() return mp.Lock() end, levels = 1},
  {name = "RLock", make = function() return mp.RLock() end, levels = 3},
  {name = "Semaphore", make = function() return mp.Semaphore(1) end,
   levels = 1},
  {name = "BoundedSemaphore",
   make = function() return mp.BoundedSemaphore(1) end, levels = 1},
}

for _, k in ipairs(kinds) do
  describe(k.name .. " whose holder is killed", function()
    H.leakcheck()

    it("passes to a blocked acquirer within 1 s, which is told \"owner "
       .. "died\"", function()
      local l, q = k.make(), mp.Queue()
      local h = holder(l, k.levels)
      local w = spawn(function()
        q:put("trying")
        local r = table.pack(l:acquire(true, 10))
        q:put({r.n, r[1], r[2], mp.monotonic()})
        l:release()
      end)
      assert.are.equal("trying", q:get(true, 10))
      until_asleep(w.pid)
      assert.is_true(q:empty(), "acquired while the holder lived")
      local t0 = mp.monotonic()
      kill(h)
      local r = q:get(true, 10)
      finish(w)
      assert.are.same({2, true, "owner died"}, {r[1], r[2], r[3]})
      took(r[4] - t0, 0, 1, "the take-over")
      -- The waiter's one release freed it: no level of the dead is left.
      assert.is_true((l:acquire(false)))
      l:release()
      if k.name:match("Semaphore") then
        assert.are.equal(1, l:get_value())
      else
        assert.is_false(l:locked())
      end
    end)

    it("is taken by the next acquire(false), told \"owner died\"",
       function()
      local l = k.make()
      kill(holder(l, k.levels))
      local dt, ok, why = timed(function() return l:acquire(false) end)
      assert.is_true(ok)
      assert.are.equal("owner died", why)
      took(dt, 0, 0.05, "acquire(false)")
      l:release()
      if k.name:match("Semaphore") then
        assert.are.equal(1, l:get_value())
      else
        assert.is_false(l:locked())
      end
    end)

    it("wakes the holder's parent blocked in acquire within 1 s", function()
      -- A sibling kills the holder once this process is asleep in acquire.
      local l, armed, t0 = k.make(), mp.Value('i', 0), mp.Value('d', 0)
      local h = holder(l, k.levels)
      local me = mp.current_process().pid
      local killer = spawn(function()
        local deadline = mp.monotonic() + 10
        while not (armed.value == 1 and state(me) == "S")
              and mp.monotonic() < deadline do
          mp.sleep(0.001)
        end
        t0.value = mp.monotonic()
        os.execute("kill -9 " .. h.pid)
      end)
      armed.value = 1
      local ok, why = l:acquire(true, 10)
      local t1 = mp.monotonic()
      finish(killer)
      assert.is_true(h:join(10))
      assert.are.equal(-9, h.exitcode)
      assert.is_true(ok)
      assert.are.equal("owner died", why)
      took(t1 - t0.value, 0, 1, "the take-over")
      l:release()
    end)
  end)
end

describe("Lock whose holder ended without releasing it", function()
  H.leakcheck()

  it("is taken by the next acquirer, told \"owner died\"", function()
    local l = mp.Lock()
    local p = spawn(function() l:acquire() end)
    finish(p)
    assert.is_true(l:locked())
    assert.are.same({true, "owner died"}, {l:acquire(true, 5)})
    l:release()
    assert.are.same({true}, {l:acquire(false)})
    l:release()
  end)

  it("as the lock of a Value, is taken over too", function()
    local v = mp.Value('i', 0)
    kill(holder(v:get_lock(), 2))
    assert.are.same({true, "owner died"}, {v:get_lock():acquire(true, 5)})
    v.value = 1
    v:get_lock():release()
    assert.is_false(v:get_lock():locked())
  end)
end)

describe("Semaphore units", function()
  H.leakcheck()

  it("of a killed holder of several come back to the semaphore",
     function()
    local s = mp.Semaphore(3)
    kill(holder(s, 2))
    assert.are.equal(1, s:get_value())
    assert.is_true((s:acquire(false)))
    assert.are.same({true, "owner died"}, {s:acquire(false)})
    assert.are.equal(1, s:get_value())
  end)

  it("used up by a process that ended are not given back", function()
    -- A semaphore counting items: three releases, three acquires in a
    -- consumer that then ends normally.  Nothing is left to take.
    local s = mp.Semaphore(0)
    s:release(3)
    finish(spawn(function()
      for _ = 1, 3 do assert(s:acquire(true, 10)) end
    end))
    assert.are.equal(0, s:get_value())
    assert.are.same({false}, {s:acquire(false)})
    assert.are.equal(0, s:get_value())
  end)

  -- A count and the records of who holds what change in several steps:
  -- a kill among them must leave the semaphore as before the change (a
  -- journal the next locker puts back), or a unit is lost for good, or
  -- given twice.
  for _, kind in ipairs{"Semaphore", "BoundedSemaphore"} do
    it("of a " .. kind .. " survive kills at any moment of acquire and "
       .. "release", function()
      local s = mp[kind](1)
      local lost, extra = 0, 0
      for _ = 1, 120 do
        local ps = {}
        for i = 1, 2 do
          ps[i] = mp.Process{target = function()
            while true do
              s:acquire()
              s:release()
            end
          end}
          ps[i]:start()
        end
        mp.sleep(0.001 + math.random() * 0.003)
        for i = 1, 2 do
          ps[i]:kill()
          ps[i]:join()
          ps[i]:close()
        end
        if not s:acquire(true, 2) then
          lost = lost + 1
          s:release()
        else
          if s:acquire(false) then
            extra = extra + 1
            s:release()
          end
          s:release()
        end
      end
      assert.are.same({0, 0, 1}, {lost, extra, s:get_value()})
    end)
  end

  it("of a BoundedSemaphore never exceed its start value", function()
    -- The child takes the unit; this process releases it (any process
    -- may), then the child dies: one unit exists, not two.
    local s = mp.BoundedSemaphore(1)
    local h = holder(s)
    s:release()
    kill(h)
    assert.is_true((s:acquire(false)))
    assert.are.same({false}, {s:acquire(false)})
    assert.are.equal(0, s:get_value())
  end)
end)

describe("Condition with a killed waiter", function()
  H.leakcheck()

  it("does not let it swallow notify(1): the living waiter wakes",
     function()
    local c, q = mp.Condition(), mp.Queue()
    local function waiter(tag)
      return spawn(function()
        c:acquire()
        q:put(tag)
        local r = c:wait(10)
        q:put({tag, r, mp.monotonic()})
        c:release()
      end)
    end
    local dead = waiter("first")
    assert.are.equal("first", q:get(true, 10))
    local alive = waiter("second")
    assert.are.equal("second", q:get(true, 10))
    c:acquire() -- both are in wait once this succeeds
    assert.are.equal(2, waiting(c))
    c:release()
    kill(dead)
    c:acquire()
    local t0 = mp.monotonic()
    c:notify(1)
    c:release()
    local r = q:get(true, 10)
    finish(alive)
    assert.are.same({"second", true}, {r[1], r[2]})
    took(r[3] - t0, 0, 1, "the wake-up")
    assert.are.equal(0, waiting(c))
  end)

  it("still wakes every living waiter with notify_all", function()
    local c, q = mp.Condition(mp.Lock()), mp.Queue()
    local ps = {}
    for i = 1, 3 do
      ps[i] = spawn(function()
        c:acquire()
        q:put("in")
        q:put(c:wait(10))
        c:release()
      end)
      assert.are.equal("in", q:get(true, 10))
    end
    c:acquire()
    c:release()
    kill(ps[2])
    c:acquire()
    c:notify_all()
    c:release()
    assert.is_true(q:get(true, 10))
    assert.is_true(q:get(true, 10))
    finish(ps[1])
    finish(ps[3])
    assert.are.equal(0, waiting(c))
  end)
end)

describe("Barrier with a killed party", function()
  H.leakcheck()

  -- In a child: waits at b and reports {ok, error type, when}.
  local function party(b, q)
    return spawn(function()
      local ok, e = pcall(b.wait, b, 30)
      q:put({ok, type(e) == "table" and e.type or e, mp.monotonic()})
    end)
  end

  it("breaks for the waiting others within 1 s; reset mends it", function()
    local b, q = mp.Barrier(3), mp.Queue()
    local victim = spawn(function() b:wait(30) end)
    reaches(1, function() return b.n_waiting end)
    local other = party(b, q)
    reaches(2, function() return b.n_waiting end)
    local t0 = mp.monotonic()
    kill(victim)
    local r = q:get(true, 10)
    finish(other)
    assert.are.same({false, mp.BrokenBarrierError}, {r[1], r[2]})
    took(r[3] - t0, 0, 1, "breaking")
    assert.is_true(b.broken)
    assert.are.equal(0, b.n_waiting)
    b:reset()
    assert.is_false(b.broken)
    local ps = {party(b, q), party(b, q)}
    local got = {b:wait(10)}
    for i = 1, 2 do
      local ri = q:get(true, 10)
      assert.is_true(ri[1])
      got[#got + 1] = ri[2]
      finish(ps[i])
    end
    table.sort(got)
    assert.are.same({0, 1, 2}, got)
    assert.is_false(b.broken)
  end)

  it("breaks for a party that arrives after the death", function()
    local b = mp.Barrier(2)
    local victim = spawn(function() b:wait(30) end)
    reaches(1, function() return b.n_waiting end)
    kill(victim)
    local dt, ok, e = timed(function() return pcall(b.wait, b, 5) end)
    assert.is_false(ok, "passed a barrier whose other party is dead")
    assert.are.equal(mp.BrokenBarrierError, type(e) == "table" and e.type)
    took(dt, 0, 1, "breaking")
    assert.is_true(b.broken)
    b:reset()
    assert.is_false(b.broken)
    assert.are.equal(0, b.n_waiting)
  end)
end)

describe("Barrier made by a process killed as it makes it", function()
  H.leakcheck()

  -- Its action's upvalues name shared objects: a process killed while
  -- it encodes the action, copies it into the arena or makes the Barrier
  -- leaves no reference to them, and no block, behind.  (The Barriers
  -- are kept, for their reaper to destroy.)
  it("leaks nothing its action names", function()
    local why, seed = H.seeded()
    local before = H.snapshot()
    local held = {mp.Dict{note = "named by actions"}, mp.Lock()}
    local refs = H.fault_refs(0, held)
    local kept = {}
    H.kill_busy{workers = 2, rounds = 100, pause = 0.003, why = why,
      seed = seed, step = function()
        kept[#kept + 1] = mp.Barrier(1, function() return refs end)
      end}
    for _, o in ipairs(held) do o:close() end
    H.settled(before, why)
  end)
end)

describe("Objects destroyed by a process killed as it destroys them", function()
  H.leakcheck()

  -- A Barrier's action, a Value's lock and a Condition's lock are
  -- references their object holds: a process killed as it destroys the
  -- object (its last handle closed) leaves its reaper to drop them.
  it("leave nothing their actions and locks name", function()
    H.destroy_killed{pause = 0.003, held = function()
      return {mp.Dict{note = "named by actions"}, mp.Lock()}
    end, step = function(held)
      local refs = H.fault_refs(0, held)
      local b = mp.Barrier(1, function() return refs end)
      local v, c = mp.Value("i", 1), mp.Condition()
      b:close()
      v:close()
      c:close()
    end}
  end)
end)
