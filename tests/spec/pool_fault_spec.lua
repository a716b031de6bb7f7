-- pool_fault_spec.lua -- a Pool when things go wrong: workers killed
-- (by their own task, by the owner, 100 times at random during a long
-- run), Ctrl-C in the owner, initializers that fail, and workers recycled
-- by maxtasksperchild.  In every case each task ends with its result or
-- an error that says what happened, and nothing hangs: every wait has a
-- timeout, and the cases that could hang the host run in a separate one
-- under a time limit.

local mp = require "luamp"
local H = require "spec_helper"
local timed, took, raises, alive = H.timed, H.took, H.raises, H.alive
local range = H.range
-- The pids of the running workers (the only children of the tests).
local worker_pids = H.child_pids

-- Tasks travel to the workers with their upvalues, but busted runs this
-- file in its own _ENV, which does not travel: what tasks use from the
-- globals is a local here.
local assert, error, io, os, tostring = assert, error, io, os, tostring

local LOST = "the worker running the task died"

-- The task's own worker ends, as by `kill -9` from a shell.
local function kill_self()
  os.execute("kill -9 " .. mp.current_process().pid)
  mp.sleep(10)
end

describe("Pool under faults", function()
  H.leakcheck()

  describe("a worker that dies", function()
    it("fails its task with WorkerLostError, and is replaced", function()
      local pool <close> = mp.Pool(2)
      local before = worker_pids()
      local lost = pool:apply_async(kill_self)
      local other = pool:apply_async(function(x)
        mp.sleep(0.2)
        return x
      end, {7})
      raises(mp.WorkerLostError, LOST, lost.get, lost, 10)
      assert.is_false(lost:successful())
      assert.are.equal(7, other:get(10))
      local r = pool:map(function()
        mp.sleep(0.01)
        return mp.current_process().name
      end, range(1, 20), 1)
      for i = 1, 20 do assert.matches("^PoolWorker%-%d+$", r[i]) end
      local after = worker_pids()
      assert.are.equal(2, #after)
      assert.are_not.same(before, after)
    end)

    it("fails its task with WorkerLostError when the task exits the worker",
       function()
      local pool <close> = mp.Pool(1)
      raises(mp.WorkerLostError, LOST, pool.apply, pool, function()
        os.exit(3)
      end)
      assert.are.equal(6, pool:apply(function(a, b) return a * b end,
        {2, 3}))
    end)

    it("fails its task at once when the owner kills it", function()
      local pool <close> = mp.Pool(2)
      local pid = mp.Value("i", 0)
      local r = pool:apply_async(function()
        pid.value = mp.current_process().pid
        mp.sleep(10)
      end)
      local deadline = mp.monotonic() + 10
      while pid.value == 0 and mp.monotonic() < deadline do
        mp.sleep(0.001)
      end
      assert.are_not.equal(0, pid.value, "the task did not start")
      os.execute("kill -9 " .. pid.value)
      local dt = timed(function()
        raises(mp.WorkerLostError, LOST, r.get, r, 10)
      end)
      took(dt, 0, 1, "get after the kill")
      assert.is_false(alive(pid.value))
      assert.are.equal(2, #worker_pids())
    end)

    it("is replaced when the owner kills it while idle", function()
      local pool <close> = mp.Pool(2)
      local victim = mp.active_children()[1]
      local pid = victim.pid
      victim:kill()
      local r = pool:map(function(x)
        mp.sleep(0.005)
        return {x * x, mp.current_process().pid}
      end, range(1, 40), 1)
      for i = 1, 40 do
        assert.are.equal(i * i, r[i][1])
        assert.are_not.equal(pid, r[i][2])
      end
      assert.are.equal(2, #worker_pids())
    end)

    it("runs no task twice: the tasks it finished keep their results",
       function()
      -- One worker, many tasks waiting: they travel several at a time.
      -- Task 15 ends the worker.
      local pool <close> = mp.Pool(1)
      local runs = mp.Array("i", 30)
      local rs = {}
      for i = 1, 30 do
        rs[i] = pool:apply_async(function(x)
          runs[x] = runs[x] + 1
          if x == 15 and runs[x] == 1 then kill_self() end
          return x
        end, {i})
      end
      for i = 1, 30 do
        if i == 15 then
          raises(mp.WorkerLostError, LOST, rs[i].get, rs[i], 10)
        else
          assert.are.equal(i, rs[i]:get(10))
        end
      end
      local want = {}
      for i = 1, 30 do want[i] = 1 end
      assert.are.same(want, runs:totable(), "tasks ran more than once")
    end)

    it("makes map fail as a whole with WorkerLostError", function()
      local pool <close> = mp.Pool(2)
      raises(mp.WorkerLostError, LOST, pool.map, pool, function(x)
        if x == 5 then kill_self() end
        return x
      end, range(1, 10), 1)
      assert.are.same({n = 3, 1, 2, 3}, pool:map(function(x) return x end,
        range(1, 3)))
    end)

    it("gives imap WorkerLostError at that item's position, and the rest",
       function()
      local pool <close> = mp.Pool(2)
      local function f(x)
        if x == 10 or x == 25 then kill_self() end
        mp.sleep(0.001)
        return x * 2
      end
      local it = pool:imap(f, range(1, 40))
      for i = 1, 40 do
        if i == 10 or i == 25 then
          raises(mp.WorkerLostError, LOST, it)
        else
          assert.are.equal(i * 2, it())
        end
      end
      assert.is_nil(it())
      it = pool:imap_unordered(f, range(1, 40))
      local got, lost = {}, 0
      for _ = 1, 40 do
        local ok, v = pcall(it)
        if ok then
          got[#got + 1] = v
        else
          assert.are.equal(mp.WorkerLostError, v.type)
          lost = lost + 1
        end
      end
      assert.is_nil(it())
      table.sort(got)
      local want = {}
      for i = 1, 40 do
        if i ~= 10 and i ~= 25 then want[#want + 1] = i * 2 end
      end
      assert.are.same(want, got)
      assert.are.equal(2, lost)
    end)
  end)

  it("survives 100 kills at random: each task has its result or "
     .. "WorkerLostError", function()
    local why = H.seeded()
    local N, KILLS = 1500, 100
    local pool = mp.Pool(4)
    local rs = {}
    for i = 1, N do
      rs[i] = pool:apply_async(function(x)
        mp.sleep(0.002)
        return x * 3
      end, {i})
    end
    -- The pool reaps its workers itself.
    local killed = H.kill_rounds{rounds = KILLS, pause = 0.004, reap = false,
      victim = function()
        rs[N]:ready() -- take results in, replace the dead
        local kids = mp.active_children()
        if #kids > 0 then return kids[math.random(#kids)] end
      end}
    local deadline = mp.monotonic() + 30
    local lost = 0
    for i = 1, N do
      local left = math.max(0, deadline - mp.monotonic())
      local ok, v = pcall(rs[i].get, rs[i], left)
      if ok then
        assert.are.equal(i * 3, v, "task " .. i .. why)
      else
        assert.are.equal("table", type(v), tostring(v) .. why)
        assert.are.equal(mp.WorkerLostError, v.type,
          "task " .. i .. ": " .. tostring(v) .. why)
        lost = lost + 1
      end
    end
    assert.are.equal(H.rounds(KILLS), killed, why)
    assert.is_true(lost >= 1 and lost <= killed, lost .. " tasks lost to "
      .. killed .. " kills" .. why)
    assert.are.same({n = 8, 1, 2, 3, 4, 5, 6, 7, 8}, pool:map(function(x)
      return x
    end, range(1, 8), 1))
    assert.are.equal(4, #worker_pids(), why)
    pool:close()
    pool:join()
  end)

  describe("Ctrl-C", function()
    -- The job's first task waits until the owner is asleep in the pool
    -- call, notes the time and sends the owner SIGINT.
    local PRELUDE = H.PROC .. [[
      io.stdout:setvbuf("no")
      local mp = require "luamp"
      local owner = mp.current_process().pid
      local flag, told = mp.Value("i", 0), mp.Value("d", 0)
      local function interrupt()
        if flag:cas(0, 1) then
          local deadline = mp.monotonic() + 10
          while state(owner) ~= "S" and mp.monotonic() < deadline do
            mp.sleep(0.001)
          end
          told.value = mp.monotonic()
          os.execute("kill -INT " .. owner)
        end
        mp.sleep(30)
      end
      local pool = mp.Pool(2)
      local pids = {}
      for _, p in ipairs(mp.active_children()) do
        pids[#pids + 1] = p.pid
      end
      print(table.concat(pids, " "))
    ]]

    it("in map raises KeyboardInterrupt, with the workers gone", function()
      local status, out, err = H.luamp_e(PRELUDE .. [[
        local ok, e = pcall(pool.map, pool, interrupt, {1, 2, 3, 4}, 1)
        local took = mp.monotonic() - told.value
        print(ok, type(e) == "table" and e.type, tostring(e),
              took < 1 and "prompt" or took)
        -- Gone within 1 s of the signal.
        local left
        repeat
          left = 0
          for _, pid in ipairs(pids) do
            if state(pid) and state(pid) ~= "Z" then left = left + 1 end
          end
          if left > 0 then mp.sleep(0.01) end
        until left == 0 or mp.monotonic() > told.value + 1
        print(left, #mp.active_children(), tostring(pool))
        local ok2, e2 = pcall(pool.apply, pool, print)
        print(ok2, (tostring(e2):match("Pool not running$")))
        pool:join()
      ]], "timeout -s KILL 20 env --default-signal=INT")
      assert.are.equal(0, status, err)
      local pids, rest = out:match("^([%d ]+)\n(.*)$")
      assert.is_not_nil(pids, out)
      assert.are.equal("false\tKeyboardInterrupt\t"
        .. "luamp.KeyboardInterrupt: interrupted\tprompt\n"
        .. "0\t0\tluamp.Pool (2 processes, TERMINATE)\n"
        .. "false\tPool not running\n", rest)
    end)

    it("in get at the top level ends the host with status 130, with the "
       .. "workers gone", function()
      local t0
      local status, out, err = H.luamp_e(PRELUDE .. [[
        local r = pool:apply_async(interrupt)
        r:get()
        print("not reached")
      ]], "timeout -s KILL 20 env --default-signal=INT")
      t0 = mp.monotonic()
      assert.are.equal(130, status, err)
      local pids = {}
      for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
      assert.are.equal(2, #pids, out)
      assert.is_nil(out:find("not reached", 1, true))
      local left
      repeat
        left = 0
        for _, pid in ipairs(pids) do
          if alive(pid) then left = left + 1 end
        end
        if left > 0 then mp.sleep(0.01) end
      until left == 0 or mp.monotonic() > t0 + 1
      assert.are.equal(0, left, "workers outlived the host")
    end)

    -- Ctrl-C over and over while the pool's work is done inside other
    -- luamp calls (mp.sleep, r:ready), which the owner catches each time
    -- and goes on where it was.  An interrupt may come in the middle of
    -- the pool's bookkeeping: a step, its callbacks' queue, a submission.
    -- An interrupter child sends this process SIGINT, each once the last
    -- was caught, 0.2 to 3 ms after; drive(f) runs f() until it returns,
    -- catching each interrupt and counting it for the interrupter.
    local OVER_AND_OVER = [[
      io.stdout:setvbuf("no")
      local mp = require "luamp"
      local owner = mp.current_process().pid
      local sent, caught, stop = mp.Value("q", 0), mp.Value("q", 0),
        mp.Value("i", 0)
      local interrupter = mp.Process{target = function()
        local sh = io.popen("sh", "w")
        sh:setvbuf("no")
        while stop.value == 0 do
          while caught.value < sent.value and stop.value == 0 do
            mp.sleep(0.0002)
          end
          mp.sleep(0.0002 + math.random() * 0.003)
          if stop.value ~= 0 then break end
          sent:add(1)
          sh:write("kill -INT " .. owner .. "\n")
        end
        sh:close()
      end}
      local others = {}
      local function drive(f)
        interrupter:start()
        while true do
          local ok, e = pcall(f)
          if ok then break end
          if type(e) == "table" and e.type == mp.KeyboardInterrupt then
            caught:add(1)
          else
            others[#others + 1] = tostring(e)
            stop.value = 1
            interrupter:join()
            break
          end
        end
      end
    ]]

    it("caught over and over leaves every result ready with its outcome, "
       .. "and runs each callback once", function()
      local status, out, err = H.luamp_e(OVER_AND_OVER .. [[
        local pool = mp.Pool(2)
        -- Callbacks in C (their __call): each is whole or not run.
        local log, maps = {}, {}
        local cb = setmetatable(log, {__call = table.insert})
        local mcb = setmetatable(maps, {__call = table.insert})
        local function work(x)
          if x % 97 == 0 then error("no " .. x, 0) end
          return 3 * x
        end
        local items = {}
        for i = 1, 40 do items[i] = i end
        -- Rounds of 500 applies and a map, until 150 interrupts have
        -- been caught.  An interrupt comes after a call returns, so a
        -- handle may not reach rs: its callback still runs once.
        local rs, ms, sub, checked = {}, {}, 0, 0
        local round_end, phase, deadline, late = 500, "submit", nil, false
        local function all_ready()
          for i = checked + 1, sub do
            if rs[i] and not rs[i]:ready() then return false end
            checked = i
          end
          for _, m in ipairs(ms) do
            if not m:ready() then return false end
          end
          return true
        end
        drive(function()
          while true do
            if phase == "submit" then
              while sub < round_end do
                sub = sub + 1
                local i = sub
                local r = pool:apply_async(work, {i}, cb, cb)
                rs[i] = r
                if i % 25 == 0 then mp.sleep(0.0005) end
              end
              local m = pool:map_async(work, items, 3, mcb)
              ms[#ms + 1] = m
              deadline = mp.monotonic() + 10
              phase = "wait"
            elseif phase == "wait" then
              while not all_ready() and mp.monotonic() < deadline do
                mp.sleep(0.001)
              end
              if not all_ready() then
                late, phase = true, "stop"
              elseif caught.value >= 150 then
                phase = "stop"
              else
                round_end, phase = round_end + 500, "submit"
              end
            else
              stop.value = 1
              interrupter:join()
              return
            end
          end
        end)
        local ran, wrong, twice, missing, handles = {}, 0, 0, 0, 0
        for _, v in ipairs(log) do
          local i = type(v) == "table" and tonumber(v.message:match("%d+"))
            or v // 3
          if ran[i] then twice = twice + 1 end
          ran[i] = true
        end
        for i = 1, sub do
          local r = rs[i]
          if r then
            handles = handles + 1
            local ok, v = pcall(r.get, r, 0)
            if i % 97 == 0 then
              ok = not ok and v.type == mp.RemoteError
            else
              ok = ok and v == 3 * i
            end
            if not ok then wrong = wrong + 1 end
            if not ran[i] then missing = missing + 1 end
          end
        end
        local mwrong, mran = 0, {}
        for _, t in ipairs(maps) do
          if mran[t] then twice = twice + 1 end
          mran[t] = true
        end
        for _, m in ipairs(ms) do
          local ok, t = pcall(m.get, m, 0)
          if not ok or t.n ~= 40 or t[40] ~= 120 then mwrong = mwrong + 1 end
          if not mran[t] then missing = missing + 1 end
        end
        local ok, m = pcall(function()
          return pool:map_async(work, {1, 2, 3}):get(10)
        end)
        pool:terminate()
        print("caught " .. tostring(caught.value >= 150),
              "late " .. tostring(late), "errors " .. #others,
              "tasks " .. tostring(handles >= 1000),
              "wrong " .. wrong, "missing " .. missing, "twice " .. twice,
              "maps " .. tostring(#ms >= 2),
              "maps wrong " .. mwrong, "after " .. tostring(ok and m[3]),
              table.concat(others, "; "))
      ]], "timeout -s KILL 60 env --default-signal=INT")
      assert.are.equal(0, status, err)
      assert.are.equal("caught true\tlate false\terrors 0\ttasks true\t"
        .. "wrong 0\tmissing 0\ttwice 0\tmaps true\tmaps wrong 0\t"
        .. "after 9\t\n", out)
    end)

    -- The input sends its process SIGINT once, before its 12th item (by
    -- a child: os.execute's would ignore it), and is interrupted.
    it("that interrupts an imap's input comes out of the call that read "
       .. "it, and the input goes on", function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local me = mp.current_process().pid
        local pool <close> = mp.Pool(2)
        local n, fired = 0, false
        local function input()
          if n == 11 and not fired then
            fired = true
            io.popen("kill -INT " .. me):close()
            while true do end -- (interrupted here)
          end
          n = n + 1
          if n <= 20 then return n end
        end
        local it = pool:imap(function(x) return 2 * x end, input)
        local got, interrupts = {}, 0
        while true do
          local ok, v = pcall(it)
          if not ok then
            assert(v.type == mp.KeyboardInterrupt, tostring(v))
            interrupts = interrupts + 1
          elseif v == nil then
            break
          else
            got[#got + 1] = v
          end
        end
        print(interrupts, table.concat(got, " "), tostring(pool))
      ]], "timeout -s KILL 30 env --default-signal=INT")
      assert.are.equal(0, status, err)
      local want = {}
      for i = 1, 20 do want[i] = 2 * i end
      assert.are.equal("1\t" .. table.concat(want, " ")
        .. "\tluamp.Pool (2 processes, RUN)\n", out)
    end)
  end)

  describe("a task the arena has no room for", function()
    it("fails with RemoteError, and the pool still ends", function()
      -- A 2 MiB arena, and arguments of 3 MiB: the batch cannot reach
      -- its worker, which must not be left waiting for its outcome.
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local big = string.rep("x", 3 << 20)
        local pool = mp.Pool(1)
        local r = pool:apply_async(function(s) return #s end, {big})
        local ok, e = pcall(r.get, r, 10)
        print(ok, e.type, e.message:match("^cannot send the task: "
          .. "shared memory exhausted: %d+ bytes wanted") ~= nil)
        ok, e = pcall(pool.map, pool, function(s) return #s end,
                      {"a", big, "b"})
        print(ok, e.type)
        print(pool:apply(function() return "still serving" end))
        pool:close()
        pool:join()
        print("joined", #mp.active_children())
      ]], "timeout -s KILL 20 env LUAMP_ARENA=2M")
      assert.are.equal(0, status, err)
      assert.are.equal("false\tRemoteError\ttrue\n"
        .. "false\tRemoteError\n"
        .. "still serving\n"
        .. "joined\t0\n", out)
    end)
  end)

  describe("an initializer", function()
    it("that raises gives a ProcessError with its message, without "
       .. "restarting workers", function()
      local starts = mp.Value("i", 0)
      local pool = mp.Pool{processes = 2, initializer = function(msg)
        starts:add(1)
        error(msg, 0)
      end, initargs = {"no init"}}
      local msg = "the pool's initializer failed in a worker: no init"
      local e = raises(mp.ProcessError, msg, pool.map, pool,
        function(x) return x end, range(1, 10))
      assert.are.equal("string", type(e.traceback))
      assert.are.equal("no init\nstack traceback:",
        e.traceback:sub(1, 24))
      assert.are.equal(0, #mp.active_children())
      local n = starts.value
      assert.is_true(n >= 1 and n <= 2, n .. " workers started")
      -- Later calls say why the pool cannot run them.
      raises(mp.ProcessError, msg, pool.apply, pool, function() end)
      raises(mp.ProcessError, msg, pool.map, pool, function() end, {1})
      pool:terminate()
      pool:join()
      assert.are.equal(n, starts.value)
    end)

    it("that ends its worker gives a ProcessError, without a storm of "
       .. "restarts", function()
      local starts = mp.Value("i", 0)
      local pool = mp.Pool{processes = 2, initializer = function()
        starts:add(1)
        os.exit(3)
      end}
      local r = pool:apply_async(function() return 1 end)
      local ok, e = pcall(r.get, r, 2)
      pool:terminate()
      pool:join()
      local n = starts.value
      assert.is_true(n >= 1 and n <= 4, n .. " workers started")
      assert.is_false(ok)
      assert.are.equal(mp.ProcessError, e.type, tostring(e))
      assert.matches("initializer", e.message)
    end)

    it("that failed does not disturb the other pools", function()
      local function doomed()
        local pool = mp.Pool{processes = 1, initializer = function()
          error("no init", 0)
        end}
        raises(mp.ProcessError, {pattern = "no init$"}, pool.map, pool,
          function(x) return x end, {1})
      end
      doomed()
      collectgarbage() -- the doomed pool is finalized, not yet gone
      local pool <close> = mp.Pool(1)
      assert.are.equal(42, pool:apply(function() return 42 end))
      assert.are.same({n = 2, 1, 2}, pool:map(function(x) return x end,
        {1, 2}))
    end)
  end)

  describe("maxtasksperchild", function()
    -- After CPython's test_pool_worker_lifetime.
    it("recycles workers without losing tasks", function()
      local pool = mp.Pool{processes = 3, maxtasksperchild = 10}
      local first = worker_pids()
      assert.are.equal(3, #first)
      local rs = {}
      for i = 1, 100 do
        rs[i] = pool:apply_async(function(x)
          return x * x, mp.current_process().pid
        end, {i})
      end
      local per = {}
      for i = 1, 100 do
        local v, pid = rs[i]:get(10)
        assert.are.equal(i * i, v)
        per[pid] = (per[pid] or 0) + 1
      end
      local n = 0
      for pid, k in pairs(per) do
        n = n + 1
        assert.is_true(k <= 10, "worker " .. pid .. " ran " .. k .. " tasks")
      end
      assert.is_true(n >= 10, "only " .. n .. " workers ran the tasks")
      assert.are_not.same(first, worker_pids())
      pool:close()
      pool:join()
      assert.are.equal(0, #mp.active_children())
    end)

    it("counts a chunk as one task", function()
      local pool = mp.Pool{processes = 2, maxtasksperchild = 5}
      local r = pool:map(function(x)
        return {x + 1, mp.current_process().pid}
      end, range(1, 60), 2)
      local per = {}
      for i = 1, 60 do
        assert.are.equal(i + 1, r[i][1])
        per[r[i][2]] = (per[r[i][2]] or 0) + 1
      end
      local n = 0
      for pid, k in pairs(per) do
        n = n + 1
        assert.is_true(k <= 10, "worker " .. pid .. " ran " .. k .. " items")
      end
      assert.is_true(n >= 6, "only " .. n .. " workers ran the chunks")
      pool:close()
      pool:join()
    end)

    -- After CPython's test_pool_worker_lifetime_early_close.
    it("lets close and join wait for the last tasks", function()
      local pool = mp.Pool{processes = 1, maxtasksperchild = 1}
      local rs = {}
      for i = 1, 6 do
        rs[i] = pool:apply_async(function(x, t)
          mp.sleep(t)
          return x * x
        end, {i, 0.01})
      end
      pool:close()
      pool:join()
      for i = 1, 6 do assert.are.equal(i * i, rs[i]:get(0)) end
      assert.are.equal(0, #mp.active_children())
    end)
  end)
end)

-- A process killed with children of its own (a Pool's workers, a child
-- of its own that passes large messages): the kernel kills them with it,
-- and no parent of theirs reaps them.  Whoever reaps the killed process
-- releases their slots and what they hold, once they have ended.
describe("a process killed with children of its own", function()
  H.leakcheck()

  it("leaves no slot, object or block of theirs behind", function()
    local q = mp.Queue()
    local start = mp.stats().processes
    for round = 1, 4 do
      local ready = mp.Queue()
      local mid = mp.Process{target = function()
        if round % 2 == 1 then
          local pool = mp.Pool(2)
          ready:put(true)
          pool:map(function() mp.sleep(60) end, {1, 2, 3, 4})
        else
          local g = mp.Process{target = function()
            ready:put(true)
            local big = string.rep("z", 1 << 20)
            while true do q:put(big); q:get() end
          end}
          g:start()
          mp.sleep(60)
        end
      end}
      mid:start()
      assert.is_true(ready:get(true, 10))
      mid:kill()
      assert.is_true(mid:join(10))
      assert.are.equal(-9, mid.exitcode)
      mid:close()
      ready:close()
      assert.are.equal(start, mp.stats().processes,
                       "slots left after round " .. round)
    end
    while pcall(q.get_nowait, q) do end
    q:close()
  end)
end)
