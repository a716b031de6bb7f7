-- wait_spec.lua -- mp.wait over connections, process sentinels (or
-- Process objects) and queues: which are ready, in what order, how long
-- it waits and how soon it wakes.  A test that waits on a child always
-- does so with a timeout, so that a failure cannot hang the suite.

local mp = require "luamp"
local H = require "spec_helper"
local timed, state, until_asleep = H.timed, H.state, H.until_asleep
local spawn, finish = H.spawn, H.finish

-- Checks that got holds exactly the objects of want, in that order.
local function same_objects(want, got)
  assert.are.equal(#want, #got, "wrong number of ready objects")
  for i = 1, #want do
    assert.is_true(rawequal(want[i], got[i]),
      "ready object " .. i .. " is " .. tostring(got[i]) .. ", not "
      .. tostring(want[i]))
  end
end

describe("wait", function()
  H.leakcheck()

  it("returns the ready objects of a mixed list, in the order given",
     function()
    local a, b = mp.Pipe()
    local c, d = mp.Pipe()
    local full, empty = mp.Queue(), mp.Queue()
    local done, running = mp.Process{target = function() end}, H.sleeper()
    done:start()
    running:start()
    finish(done)
    local ended = spawn(function() end)
    finish(ended)
    local sentinel = ended.sentinel
    full:put("x")
    d:send("y")
    local list = {a, full, running, done, c, empty, sentinel, running.sentinel}
    local ready = mp.wait(list, 5)
    same_objects({full, done, c, sentinel}, ready)
    -- Nothing was taken.
    assert.are.equal(1, full:qsize())
    assert.are.equal("y", c:recv())
    running:kill()
    running:join()
    for _, conn in ipairs{a, b, c, d} do conn:close() end
  end)

  it("gives back a Process object for a Process object, a sentinel for a "
     .. "sentinel", function()
    local p = spawn(function() end)
    finish(p)
    local s = p.sentinel
    local ready = mp.wait({p, s}, 1)
    same_objects({p, s}, ready)
  end)

  it("returns an empty table after the timeout when nothing is ready",
     function()
    local a, b = mp.Pipe()
    local q = mp.Queue()
    local p = H.sleeper()
    p:start()
    local dt, ready = timed(function() return mp.wait({a, q, p}, 0.2) end)
    assert.are.same({}, ready)
    assert.is_true(dt >= 0.19 and dt < 1.2, "wait(..., 0.2) took " .. dt)
    dt, ready = timed(function() return mp.wait({a, q, p.sentinel}, 0.3) end)
    assert.are.same({}, ready)
    assert.is_true(dt >= 0.29 and dt < 1.3, "wait(..., 0.3) took " .. dt)
    p:kill()
    p:join()
    a:close()
    b:close()
  end)

  it("does not wait with a zero or negative timeout", function()
    local a, b = mp.Pipe()
    local q = mp.Queue()
    local dt, r0, r1 = timed(function()
      return mp.wait({a, q}, 0), mp.wait({a, q}, -1)
    end)
    assert.are.same({}, r0)
    assert.are.same({}, r1)
    assert.is_true(dt < 0.1, "wait(..., 0) took " .. dt)
    q:put(1)
    same_objects({q}, mp.wait({a, q}, 0))
    a:close()
    b:close()
  end)

  it("of an empty list returns an empty table after the timeout", function()
    local dt, ready = timed(function() return mp.wait({}, 0.1) end)
    assert.are.same({}, ready)
    assert.is_true(dt >= 0.09 and dt < 1.1, "wait({}, 0.1) took " .. dt)
  end)

  describe("wakes within 0.5 s", function()
    -- The child acts once the parent is asleep in wait, and sends the
    -- time at which it acted (by the pipe `stamp`, not waited on).
    local function woken_by(action, make)
      local objs, arg = make()
      local ready = mp.Queue()
      local stamp_r, stamp_w = mp.Pipe(false)
      local ppid = mp.current_process().pid
      local p = spawn(function()
        ready:get(true, 10)
        until_asleep(ppid)
        stamp_w:send(mp.monotonic())
        action(arg)
      end)
      ready:put(true)
      local got = mp.wait(objs, 10)
      local now = mp.monotonic()
      assert.is_true(stamp_r:poll(10))
      local latency = now - stamp_r:recv()
      assert.is_true(latency >= 0 and latency < 0.5,
        "wait woke " .. latency .. " s late")
      stamp_r:close()
      stamp_w:close()
      return got, p
    end

    it("when a child puts on a queue", function()
      local q, other = mp.Queue(), mp.Queue()
      local got, p = woken_by(function(queue) queue:put("x") end,
        function() return {other, q}, q end)
      same_objects({q}, got)
      assert.are.equal("x", q:get_nowait())
      finish(p)
    end)

    it("when a child sends on a connection", function()
      local a, b = mp.Pipe()
      local q = mp.Queue()
      local got, p = woken_by(function(conn) conn:send("x") end,
        function() return {q, a}, b end)
      same_objects({a}, got)
      assert.are.equal("x", a:recv())
      finish(p)
      a:close()
      b:close()
    end)

    it("when a child exits: its Process object and its sentinel", function()
      local q, ready = mp.Queue(), mp.Queue()
      local stamp_r, stamp_w = mp.Pipe(false)
      local ppid = mp.current_process().pid
      local p = spawn(function()
        ready:get(true, 10)
        until_asleep(ppid)
        stamp_w:send(mp.monotonic())
      end) -- and ends
      ready:put(true)
      local got = mp.wait({q, p, p.sentinel}, 10)
      local now = mp.monotonic()
      same_objects({p, p.sentinel}, got)
      assert.is_true(stamp_r:poll(10))
      local latency = now - stamp_r:recv()
      assert.is_true(latency >= 0 and latency < 0.5,
        "wait woke " .. latency .. " s late")
      finish(p)
      stamp_r:close()
      stamp_w:close()
    end)
  end)

  describe("a queue", function()
    it("is ready exactly while a get would not block", function()
      local q = mp.Queue()
      same_objects({}, mp.wait({q}, 0))
      q:put(nil)
      same_objects({q}, mp.wait({q}, 0))
      q:put(2)
      same_objects({q}, mp.wait({q}, 0))
      q:get()
      same_objects({q}, mp.wait({q}, 0))
      q:get()
      same_objects({}, mp.wait({q}, 0))
    end)

    it("of each kind can be waited on", function()
      local j, s = mp.JoinableQueue(), mp.SimpleQueue()
      s:put(1)
      same_objects({s}, mp.wait({j, s}, 0))
      j:put(1)
      same_objects({j, s}, mp.wait({j, s}, 0))
    end)
  end)

  describe("a connection", function()
    it("is ready at the end of the stream", function()
      local a, b = mp.Pipe()
      b:close()
      same_objects({a}, mp.wait({a}, 1))
      a:close()
    end)

    it("is ready when a message is already buffered", function()
      local a, b = mp.Pipe()
      b:send(1)
      b:send(2)
      assert.is_true(a:poll())
      assert.are.equal(1, a:recv())
      -- The second message was read with the first: only the buffer has it.
      same_objects({a}, mp.wait({a}, 1))
      assert.are.equal(2, a:recv())
      same_objects({}, mp.wait({a}, 0))
      a:close()
      b:close()
    end)
  end)

  describe("arguments", function()
    it("rejects an item that is not a connection, sentinel or queue",
       function()
      local q = mp.Queue()
      local r, w = mp.Pipe(false)
      local closed = mp.Pipe()
      closed:close()
      local gone = mp.Queue()
      gone:close()
      for i, bad in ipairs{3, "x", {}, print} do
        assert.has_error(function() mp.wait({q, bad}, 0) end,
          "bad argument #1 to 'wait' (item 2 is not a connection, listener, "
          .. "process, sentinel or queue of this process)", "case " .. i)
      end
      -- What it is, said, for one of luamp's own that cannot be waited on.
      assert.has_error(function() mp.wait({q, closed}, 0) end,
        "bad argument #1 to 'wait' (item 2 is a closed connection)")
      assert.has_error(function() mp.wait({q, gone}, 0) end,
        "bad argument #1 to 'wait' (item 2 is a closed queue)")
      assert.has_error(function() mp.wait({q, w}, 0) end,
        "bad argument #1 to 'wait' (item 2 is a connection that this "
        .. "process cannot read or wait for)")
      r:close()
      w:close()
    end)

    it("reports a bad item at the caller's line", function()
      local ok, e = pcall(function() mp.wait({mp.Queue(), 1}, 0) end)
      assert.is_false(ok)
      assert.matches("^[^:]*%f[%w_]wait_spec%.lua:%d+: bad argument #1 to "
        .. "'wait'", e)
    end)

    it("rejects a list that is not a table and a timeout that is not a "
       .. "number", function()
      assert.has_error(function() mp.wait(5) end,
        "bad argument #1 to 'wait' (table expected, got number)")
      assert.has_error(function() mp.wait({}, "soon") end,
        "bad argument #2 to 'wait' (number expected, got string)")
    end)

    it("raises for a Process object that was never started", function()
      assert.has_error(function()
        mp.wait({mp.Process{target = function() end}}, 0)
      end, "process not started")
    end)
  end)

  it("is interrupted by Ctrl-C with a KeyboardInterrupt error object",
     function()
    local status, out, err = H.luamp_e(H.CTRL_C .. [[
      local a, b = mp.Pipe()
      local q = mp.Queue()
      local took, p, ok, e = interrupted(function(p)
        return mp.wait({a, q, p})
      end)
      print(ok, type(e), e.type, took < 1 and "prompt" or took)
      p:terminate()
      print(p:join(5), p.exitcode)
    ]], "timeout -s KILL 20")
    assert.are.equal(0, status, err)
    assert.are.equal("false\ttable\tKeyboardInterrupt\tprompt\n"
      .. "true\t-15\n", out)
  end)
end)
