-- queue_spec.lua -- Queue, JoinableQueue and SimpleQueue: order, the
-- values that cross, blocking and timeouts, maxsize, close, many processes
-- at once, large messages and Ctrl-C.  Every child is a fork of the test
-- process; a test that waits on a child always does so with a timeout.

local mp = require "luamp"
local H = require "spec_helper"
local timed, state, until_asleep = H.timed, H.state, H.until_asleep
local spawn, finish = H.spawn, H.finish
local raises = H.raises

local EMPTY = "queue is empty"
local FULL = "queue is full"

describe("Queue", function()
  H.leakcheck()

  describe("constructor", function()
    it("is unbounded without a maxsize, with 0 and with a negative one",
       function()
      for _, q in ipairs{mp.Queue(), mp.Queue(0), mp.Queue(-1)} do
        assert.are.equal(0, q:maxsize())
        for i = 1, 1000 do q:put_nowait(i) end
        assert.is_false(q:full())
        assert.are.equal(1000, q:qsize())
        q:close()
      end
    end)

    it("has join_thread and cancel_join_thread, which do nothing, as "
       .. "there is no feeder thread", function()
      for _, q in ipairs{mp.Queue(), mp.JoinableQueue()} do
        q:put("kept")
        assert.are.equal(0, select("#", q:cancel_join_thread()))
        assert.are.equal(0, select("#", q:join_thread()))
        assert.are.equal("kept", q:get())
        local ok, err = pcall(q.join_thread, {})
        assert.is_false(ok)
        assert.matches("bad argument #1 to 'join_thread'", err)
        q:close()
      end
    end)

    it("keeps a positive maxsize", function()
      assert.are.equal(3, mp.Queue(3):maxsize())
      assert.are.equal(1, mp.Queue(1):maxsize())
    end)

    it("rejects a maxsize that is not an integer", function()
      assert.has_error(function() mp.Queue("x") end,
        "bad argument #1 to 'Queue' (number expected, got string)")
      assert.has_error(function() mp.Queue(1.5) end,
        "bad argument #1 to 'Queue' (number has no integer representation)")
    end)

    it("shows its address, and (closed) once closed", function()
      local q = mp.Queue()
      assert.matches("^luamp%.Queue %(0x%x+%)$", tostring(q))
      q:close()
      assert.are.equal("luamp.Queue (closed)", tostring(q))
    end)
  end)

  describe("put and get", function()
    it("return values in FIFO order", function()
      local q = mp.Queue()
      for i = 1, 100 do q:put("item " .. i) end
      for i = 1, 100 do assert.are.equal("item " .. i, q:get()) end
      assert.is_true(q:empty())
    end)

    it("stay whole when a finalizer puts on the same handle during a get",
       function()
      -- The get decodes a message its handle holds while the collector
      -- may run the finalizer, whose put must not write over it.
      local q = mp.Queue()
      local note = "released: " .. string.rep("r", 50)
      for i = 1, 200 do q:put({i, string.rep("x", i % 100), {a = i}}) end
      local bad, first = H.finalizer_inside(20000, function()
        local v = q:get(false)
        if type(v) == "table" then q:put(v) end
        return v
      end, function() q:put(note) end, function(v)
        if type(v) == "string" then return v == note end
        return type(v) == "table" and v[2] == string.rep("x", v[1] % 100)
          and v[3].a == v[1]
      end)
      assert.are.equal(0, bad, tostring(first))
      q:close()
    end)

    it("put returns nothing, get returns one value", function()
      local q = mp.Queue()
      assert.are.equal(0, select("#", q:put(1)))
      assert.are.equal(0, select("#", q:put_nowait(2)))
      assert.are.equal(0, select("#", q:put(3, true, 1)))
      assert.are.equal(1, select("#", q:get()))
      assert.are.equal(1, select("#", q:get_nowait()))
      assert.are.equal(1, select("#", q:get(true, 1)))
    end)

    it("carry nil, booleans, integers and floats exactly", function()
      local q = mp.Queue()
      local p = spawn(function()
        for _, v in ipairs{true, false, 0, -1, math.maxinteger,
                           math.mininteger, 1, 1.0, 0.1, -0.0, 1 / 0,
                           -1 / 0, 0 / 0, 2^53} do
          q:put(v)
        end
        q:put(nil)
      end)
      finish(p)
      assert.is_true(q:get())
      assert.is_false(q:get())
      for _, v in ipairs{0, -1, math.maxinteger, math.mininteger, 1} do
        local got = q:get()
        assert.are.equal("integer", math.type(got))
        assert.are.equal(v, got)
      end
      local one = q:get()
      assert.are.equal("float", math.type(one))
      assert.are.equal(1.0, one)
      assert.are.equal(0.1, q:get())
      local nz = q:get()
      assert.are.equal(-1 / 0, 1 / nz, "-0.0 lost its sign")
      assert.are.equal(1 / 0, q:get())
      assert.are.equal(-1 / 0, q:get())
      local nan = q:get()
      assert.are.equal("float", math.type(nan))
      assert.is_true(nan ~= nan)
      local big = q:get()
      assert.are.equal("float", math.type(big))
      assert.are.equal(2^53, big)
      assert.are.equal(1, q:qsize())
      assert.is_nil(q:get_nowait())
      assert.is_true(q:empty())
    end)

    it("carry binary strings, NULs and every byte value included", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      local q = mp.Queue()
      finish(spawn(function()
        q:put("")
        q:put("a\0b\0\0c")
        q:put(all)
        q:put(("\0"):rep(20000))
      end))
      assert.are.equal("", q:get())
      assert.are.equal("a\0b\0\0c", q:get())
      assert.are.equal(all, q:get())
      assert.are.equal(("\0"):rep(20000), q:get())
    end)

    it("carry nested tables with cycles and shared references", function()
      local q = mp.Queue()
      finish(spawn(function()
        local shared = {"shared"}
        local t = {1, 2, {3, {4}}, name = "t", [true] = "yes", [1.5] = "f",
                   a = shared, b = shared}
        t.self = t
        t[3][2].up = t
        t[shared] = "table key"
        q:put(t)
      end))
      local t = q:get()
      assert.are.equal(1, t[1])
      assert.are.equal(2, t[2])
      assert.are.equal(3, t[3][1])
      assert.are.equal(4, t[3][2][1])
      assert.are.equal("t", t.name)
      assert.are.equal("yes", t[true])
      assert.are.equal("f", t[1.5])
      assert.is_true(rawequal(t, t.self))
      assert.is_true(rawequal(t, t[3][2].up))
      assert.is_true(rawequal(t.a, t.b))
      assert.are.same({"shared"}, t.a)
      assert.are.equal("table key", t[t.a])
    end)

    it("carry closures with their upvalues; shared upvalues stay shared",
       function()
      local q = mp.Queue()
      finish(spawn(function()
        local n, log = 41, {"made in the child"}
        local function inc() n = n + 1; return n end
        local function get() return n, log[1] end
        q:put({inc = inc, get = get})
      end))
      local f = q:get()
      assert.are.equal(42, f.inc())
      assert.are.equal(43, f.inc())
      local n, s = f.get()
      assert.are.equal(43, n)
      assert.are.equal("made in the child", s)
    end)

    it("carry C functions by name: the same function arrives", function()
      local q = mp.Queue()
      finish(spawn(function() q:put({string.format, math.max}) end))
      local t = q:get()
      assert.is_true(rawequal(string.format, t[1]))
      assert.is_true(rawequal(math.max, t[2]))
    end)

    it("put nil and get it back: a nil item is not an empty queue",
       function()
      local q = mp.Queue()
      q:put(nil)
      assert.are.equal(1, q:qsize())
      assert.is_false(q:empty())
      local ok, v = pcall(q.get_nowait, q)
      assert.is_true(ok)
      assert.is_nil(v)
      raises(mp.Empty, EMPTY, q.get_nowait, q)
    end)

    it("raise at put on a value that cannot be sent; the queue is unchanged",
       function()
      local q = mp.Queue()
      q:put("first")
      q:put("second")
      assert.has_error(function() q:put(coroutine.create(print)) end,
        "cannot send value: thread")
      assert.has_error(function() q:put({f = io.stdout}) end,
        "cannot send value.f: userdata (FILE*)")
      assert.has_error(function() q:put({1, {x = io.stderr}}) end,
        "cannot send value[2].x: userdata (FILE*)")
      -- Handles of this process alone: a connection and a sentinel.
      local a, b = mp.Pipe()
      assert.has_error(function() q:put({conn = a}) end,
        "cannot send value.conn: userdata (luamp.Connection)")
      local p = H.spawn(function() end)
      p:join()
      assert.has_error(function() q:put(p.sentinel) end,
        "cannot send value: userdata (luamp.Sentinel)")
      a:close()
      b:close()
      -- A closed shared object says so.
      local closed = mp.Lock()
      closed:close()
      assert.has_error(function() q:put{closed} end,
        "cannot send value[1]: closed luamp.Lock")
      -- A class whose metatable says __send = false.
      local Handle = {__name = "my.Handle", __send = false}
      assert.has_error(function()
        q:put({1, {h = setmetatable({}, Handle)}})
      end, "cannot send value[2].h: my.Handle objects cannot be passed "
        .. "between processes")
      assert.has_error(function()
        q:put(setmetatable({}, {__send = false}))
      end, "cannot send value: such objects cannot be passed between "
        .. "processes")
      -- A shared object reached before the bad value is not kept either.
      local inner = mp.Queue()
      assert.has_error(function()
        q:put({inner, coroutine.create(print)})
      end, "cannot send value[2]: thread")
      inner:close()
      assert.are.equal(2, q:qsize())
      assert.are.equal("first", q:get())
      assert.are.equal("second", q:get())
      assert.is_true(q:empty())
    end)

    it("reject a put without a value and bad timeouts", function()
      local q = mp.Queue()
      assert.has_error(function() q:put() end,
        "bad argument #1 to 'put' (value expected)")
      assert.has_error(function() q:get(true, "soon") end,
        "bad argument #2 to 'get' (number expected, got string)")
      assert.has_error(function() q:get(true, 0 / 0) end,
        "bad argument #2 to 'get' (timeout must be a number, not NaN)")
      assert.has_error(function() q.get({}) end,
        "bad argument #1 to 'get' (luamp.Queue expected, got table)")
    end)
  end)

  describe("a queue sent through a queue", function()
    it("is the same queue in the same process", function()
      local q, inner = mp.Queue(), mp.Queue()
      q:put(inner)
      local got = q:get()
      assert.are.equal(tostring(inner), tostring(got))
      got:put("through the copy")
      assert.are.equal("through the copy", inner:get())
      inner:put("through the original")
      assert.are.equal("through the original", got:get())
    end)

    it("is the same queue in a child, though made after the child started",
       function()
      local ctl = mp.Queue()
      local p = spawn(function()
        local t = ctl:get(true, 10)
        local up, down = t[1], t[2]
        up:put("from the child")
        up:put(down:get(true, 10) .. ", answered")
      end)
      local up, down = mp.Queue(), mp.Queue()
      ctl:put({up, down})
      assert.are.equal("from the child", up:get(true, 10))
      down:put("from the parent")
      assert.are.equal("from the parent, answered", up:get(true, 10))
      finish(p)
    end)

    it("is one handle wherever it comes again in one message, as a table "
       .. "is one table", function()
      local q = mp.Queue()
      local lock, d = mp.Lock(), mp.Dict()
      q:put({lock, [lock] = "owner A", t = {lock, d}, d = d})
      local r = q:get()
      assert.is_true(rawequal(r[1], r.t[1]))
      assert.is_true(rawequal(r.d, r.t[2]))
      assert.are.equal("owner A", r[r[1]])
      assert.are.equal(lock, r[1])
      -- Through a pipe, and between two processes, the same.
      local a, b = mp.Pipe()
      local p = spawn(function()
        local m = b:recv()
        b:send({rawequal(m[1], m[2]), m[m[1]]})
      end)
      a:send({d, d, [d] = "the dict"})
      assert.are.same({true, "the dict"}, a:recv())
      finish(p)
      a:close()
      b:close()
    end)

    it("keeps its kind and maxsize", function()
      local q = mp.Queue()
      q:put({mp.JoinableQueue(5), mp.SimpleQueue(), mp.Queue(2)})
      local t = q:get()
      assert.matches("^luamp%.JoinableQueue %(", tostring(t[1]))
      assert.matches("^luamp%.SimpleQueue %(", tostring(t[2]))
      assert.matches("^luamp%.Queue %(", tostring(t[3]))
      assert.are.equal(5, t[1]:maxsize())
      assert.are.equal(2, t[3]:maxsize())
    end)
  end)

  describe("maxsize", function()
    -- After CPython's test_put.
    it("makes the queue full after maxsize puts; put_nowait raises Full",
       function()
      local q = mp.Queue(6)
      assert.is_true(q:empty())
      assert.is_false(q:full())
      q:put(1)
      q:put(2, true)
      q:put(3, true, nil)
      q:put(4, false)
      q:put(5, false, nil)
      q:put_nowait(6)
      assert.is_false(q:empty())
      assert.is_true(q:full())
      assert.are.equal(6, q:qsize())
      local dt = timed(function()
        raises(mp.Full, FULL, q.put_nowait, q, 7)
      end)
      assert.is_true(dt < 0.1, "put_nowait took " .. dt)
      assert.are.equal(6, q:qsize())
      for i = 1, 6 do assert.are.equal(i, q:get()) end
      assert.is_false(q:full())
    end)

    it("put with block=false raises Full at once, whatever the timeout",
       function()
      local q = mp.Queue(1)
      q:put("x")
      local dt = timed(function()
        raises(mp.Full, FULL, q.put, q, 7, false)
        raises(mp.Full, FULL, q.put, q, 7, false, nil)
        raises(mp.Full, FULL, q.put, q, 7, false, 5)
        raises(mp.Full, FULL, q.put, q, 7, true, 0)
        raises(mp.Full, FULL, q.put, q, 7, true, -1)
      end)
      assert.is_true(dt < 0.1, "the puts took " .. dt)
      assert.are.equal(1, q:qsize())
      assert.are.equal("x", q:get())
    end)

    it("put with a timeout waits that long, then raises Full", function()
      local q = mp.Queue(1)
      q:put("x")
      local dt = timed(function()
        raises(mp.Full, FULL, q.put, q, 7, true, 0.2)
      end)
      assert.is_true(dt >= 0.19 and dt < 1.5, "put(7, true, 0.2) took " .. dt)
      assert.are.equal(1, q:qsize())
      assert.are.equal("x", q:get())
      assert.is_true(q:empty())
    end)

    it("a blocked put goes on as soon as another process gets", function()
      local q, ready, took = mp.Queue(1), mp.Queue(), mp.Queue()
      q:put("first")
      local ppid = mp.current_process().pid
      local p = spawn(function()
        ready:get(true, 10)
        until_asleep(ppid)
        local v = q:get()
        took:put({v, mp.monotonic()})
      end)
      ready:put(true)
      q:put("second", true, 10)
      local now = mp.monotonic()
      local t = took:get(true, 10)
      assert.are.equal("first", t[1])
      local latency = now - t[2]
      assert.is_true(latency < 0.5, "the put woke " .. latency .. " s late")
      assert.are.equal("second", q:get_nowait())
      finish(p)
    end)

    it("is emptied by another process's gets", function()
      local q, done = mp.Queue(6), mp.Queue()
      for i = 1, 6 do q:put(i) end
      local p = spawn(function()
        local got = {}
        for i = 1, 6 do got[i] = q:get(true, 10) end
        done:put(got)
      end)
      assert.are.same({1, 2, 3, 4, 5, 6}, done:get(true, 10))
      assert.is_true(q:empty())
      assert.is_false(q:full())
      assert.are.equal(0, q:qsize())
      finish(p)
    end)
  end)

  describe("get", function()
    it("raises Empty at once when it must not wait", function()
      local q = mp.Queue()
      local dt = timed(function()
        raises(mp.Empty, EMPTY, q.get_nowait, q)
        raises(mp.Empty, EMPTY, q.get, q, false)
        raises(mp.Empty, EMPTY, q.get, q, false, nil)
        raises(mp.Empty, EMPTY, q.get, q, false, 5)
        raises(mp.Empty, EMPTY, q.get, q, true, 0)
        raises(mp.Empty, EMPTY, q.get, q, true, -1)
        raises(mp.Empty, EMPTY, q.get, q, nil, 0)
      end)
      assert.is_true(dt < 0.1, "the gets took " .. dt)
    end)

    it("with a timeout waits that long, then raises Empty", function()
      local q = mp.Queue()
      local dt = timed(function()
        raises(mp.Empty, EMPTY, q.get, q, true, 0.2)
      end)
      assert.is_true(dt >= 0.19 and dt < 1.5, "get(true, 0.2) took " .. dt)
      dt = timed(function() raises(mp.Empty, EMPTY, q.get, q, nil, 0.2) end)
      assert.is_true(dt >= 0.19 and dt < 1.5, "get(nil, 0.2) took " .. dt)
    end)

    it("a blocked get wakes as soon as another process puts", function()
      local q, ready = mp.Queue(), mp.Queue()
      local ppid = mp.current_process().pid
      local p = spawn(function()
        ready:get(true, 10)
        until_asleep(ppid)
        q:put(mp.monotonic())
      end)
      ready:put(true)
      local sent = q:get(true, 10)
      local latency = mp.monotonic() - sent
      assert.is_true(latency >= 0 and latency < 0.5,
        "the get woke " .. latency .. " s late")
      finish(p)
    end)

    -- After CPython's test_get.
    it("takes what another process put, with every form of get", function()
      local q, go, done = mp.Queue(), mp.Queue(), mp.Queue()
      local p = spawn(function()
        go:get(true, 10)
        for i = 2, 5 do q:put(i) end
        done:put(true)
      end)
      assert.is_true(q:empty())
      go:put(true)
      assert.is_true(done:get(true, 10))
      assert.is_false(q:empty())
      assert.are.equal(2, q:get(true, nil))
      assert.are.equal(3, q:get(true))
      assert.are.equal(4, q:get(true, 1))
      assert.are.equal(5, q:get_nowait())
      assert.is_true(q:empty())
      raises(mp.Empty, EMPTY, q.get, q, false)
      finish(p)
    end)

    it("is interrupted by Ctrl-C with a KeyboardInterrupt error object",
       function()
      local status, out, err = H.luamp_e(H.CTRL_C .. [[
        local q = mp.Queue()
        local took, p, ok, e = interrupted(function() return q:get() end)
        print(ok, type(e), e.type, tostring(e), took < 1 and "prompt" or took)
        q:put("still usable")
        print(q:get(true, 1))
        p:terminate()
        print(p:join(5), p.exitcode)
      ]], "timeout -s KILL 20")
      assert.are.equal(0, status, err)
      assert.are.equal("false\ttable\tKeyboardInterrupt\t"
        .. "luamp.KeyboardInterrupt: interrupted\tprompt\n"
        .. "still usable\ntrue\t-15\n", out)
    end)
  end)

  describe("qsize, empty and full", function()
    -- After CPython's test_qsize.
    it("count exactly", function()
      local q = mp.Queue()
      assert.are.equal(0, q:qsize())
      q:put(1)
      assert.are.equal(1, q:qsize())
      q:put(5)
      assert.are.equal(2, q:qsize())
      q:get()
      assert.are.equal(1, q:qsize())
      q:get()
      assert.are.equal(0, q:qsize())
    end)

    it("count exactly what several producers put", function()
      local q = mp.Queue()
      local ps = {}
      for i = 1, 3 do
        ps[i] = spawn(function()
          for k = 1, 100 do q:put(i * 1000 + k) end
        end)
      end
      for i = 1, 3 do finish(ps[i]) end
      assert.are.equal(300, q:qsize())
      assert.is_false(q:empty())
      for _ = 1, 150 do q:get() end
      assert.are.equal(150, q:qsize())
      for _ = 1, 150 do q:get() end
      assert.are.equal(0, q:qsize())
      assert.is_true(q:empty())
    end)

    -- After CPython's test_fork.
    it("see the items of the parent and of a child, in order", function()
      local q = mp.Queue()
      for i = 0, 9 do q:put(i) end
      local p = spawn(function()
        for i = 10, 19 do q:put(i) end
      end)
      for i = 0, 19 do assert.are.equal(i, q:get(true, 10)) end
      raises(mp.Empty, EMPTY, q.get, q, false)
      finish(p)
    end)

    it("counts only what it holds when its ring cannot grow", function()
      -- Small messages until the ring can grow no more: the put that
      -- fails leaves the count as it was, and the queue gives back every
      -- message it took, in order, and takes more once it has room.
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local q = mp.Queue()
        local n = 0
        while true do
          local ok, e = pcall(q.put, q, n + 1)
          if not ok then
            print((tostring(e):gsub(":.*", "")))
            break
          end
          n = n + 1
        end
        print(n > 1000, q:qsize() == n, q:empty())
        for i = 1, 10 do assert(q:get() == i) end
        q:put("after")
        local k, last = 10, nil
        while not q:empty() do
          last = q:get()
          k = k + 1
        end
        print(k == n + 1, last, q:qsize())
      ]], "LUAMP_ARENA=2M timeout -s KILL 20")
      assert.are.equal(0, status, err)
      assert.are.equal("shared memory exhausted\ntrue\ttrue\tfalse\n"
        .. "true\tafter\t0\n", out)
    end)
  end)

    it("grow while their records wrap around the ring's end, and give "
       .. "them back in order", function()
      -- The head is moved into the ring first, so that the messages that
      -- make it grow wrap around its end (behind a padding record).
      local q = mp.Queue()
      local function msg(i) return ("%05d"):format(i) .. ("m"):rep(495) end
      for i = 1, 25 do q:put(msg(i)) end
      for i = 1, 25 do assert.are.equal(msg(i), q:get(false)) end
      for i = 26, 525 do
        q:put(msg(i))
        assert.are.equal(i - 25, q:qsize())
      end
      assert.are.same({500, 500}, {q:_recount()})
      for i = 26, 525 do assert.are.equal(msg(i), q:get(false)) end
      assert.are.same({0, 0}, {q:_recount()})
      raises(mp.Empty, EMPTY, q.get, q, false)
    end)

    it("keep their count and order across the wrap of their positions",
       function()
      -- A queue's positions and counts start short of their wrap (1000
      -- messages, 1 MiB); 3000 messages of 1 KiB cross both, with ten
      -- waiting at every step.
      local q = mp.Queue(10)
      local body = ("w"):rep(1000)
      for i = 1, 10 do q:put(i .. body) end
      for i = 11, 3000 do
        assert.is_true(q:full())
        assert.are.equal(i - 10 .. body, q:get(false))
        assert.are.equal(9, q:qsize())
        q:put(i .. body, false)
        assert.are.equal(10, q:qsize())
      end
      raises(mp.Full, "queue is full", q.put, q, "one more", false)
      for i = 2991, 3000 do assert.are.equal(i .. body, q:get(false)) end
      assert.is_true(q:empty())
      assert.are.same({0, 0}, {q:_recount()})
    end)

  describe("_drain", function()
    it("takes every waiting message, in order, without blocking", function()
      local q = mp.Queue()
      local t = {}
      local dt, n = timed(function() return q:_drain(t) end)
      assert.are.equal(0, n)
      assert.is_nil(next(t))
      assert.is_true(dt < 0.5, "an empty queue took " .. dt .. " s")
      local big = ("x"):rep(1 << 20) -- out of line in the arena
      q:put({1, "one"})
      q:put(big)
      q:put(3)
      assert.are.equal(3, q:_drain(t))
      assert.are.same({{1, "one"}, big, 3}, t)
      assert.are.equal(0, q:qsize())
      raises(mp.Empty, EMPTY, q.get, q, false)
      q:put(4)
      assert.are.equal(4, q:get(false), "a put after a drain")
      q:close()
      assert.has_error(function() q:_drain({}) end,
        "attempt to use a closed queue")
    end)
  end)

  describe("_put_values", function()
    it("puts the array of its arguments, nils kept, objects held", function()
      local q, inner = mp.Queue(), mp.Queue()
      q:_put_values(7, 3, nil, "x", nil)
      local t = q:get(false)
      assert.are.same({7, 3, nil, "x"}, t)
      assert.is_nil(t.n)
      local big = ("y"):rep(1 << 20) -- out of line, in pieces
      q:_put_values(inner, big)
      inner:put("through")
      local got = q:get(false)
      inner:close() -- the message's handle is its own
      assert.are.equal("through", got[1]:get(false))
      assert.are.equal(big, got[2])
      got[1]:close()
      q:_put_values()
      assert.are.same({}, q:get(false))
      assert.has_error(function()
        q:_put_values(1, coroutine.create(print))
      end, "cannot send value[2]: thread")
      assert.are.equal(0, q:qsize())
      q:close()
    end)
  end)

  describe("close", function()
    it("makes every method raise 'attempt to use a closed queue'", function()
      local q = mp.Queue()
      q:put(1)
      q:close()
      for _, call in ipairs{
        function() q:put(1) end, function() q:get() end,
        function() q:put_nowait(1) end, function() q:get_nowait() end,
        function() q:qsize() end, function() q:empty() end,
        function() q:full() end, function() q:maxsize() end,
      } do
        assert.has_error(call, "attempt to use a closed queue")
      end
    end)

    it("is idempotent, and happens at the end of a <close> scope",
       function()
      local q = mp.Queue()
      q:close()
      q:close()
      assert.are.equal("luamp.Queue (closed)", tostring(q))
      local outer
      do
        local scoped <close> = mp.Queue()
        outer = scoped
        scoped:put("x")
      end
      assert.are.equal("luamp.Queue (closed)", tostring(outer))
      assert.has_error(function() outer:get() end,
        "attempt to use a closed queue")
    end)

    it("closes this process's handle only", function()
      local q, back = mp.Queue(), mp.Queue()
      finish(spawn(function() q:close() end))
      q:put("after the child closed")
      assert.are.equal("after the child closed", q:get())
      local go = mp.Queue()
      local p = spawn(function()
        go:get(true, 10)
        q:put("the child's")
        back:put(q:get(true, 10))
      end)
      q:close()
      go:put(true)
      assert.are.equal("the child's", back:get(true, 10))
      finish(p)
    end)

    it("frees the queue and what is left in it once every handle is gone",
       function()
      collectgarbage()
      collectgarbage()
      local before = mp.stats()
      local q, inner = mp.Queue(), mp.Queue()
      q:put(inner)
      q:put(("x"):rep(100000)) -- out of line
      q:put("small")
      inner:put(("y"):rep(50000))
      inner:close()
      q:close()
      local after = mp.stats()
      assert.are.equal(before.objects, after.objects)
      assert.are.equal(before.arena_used, after.arena_used)
      assert.are.equal(before.arena_blocks, after.arena_blocks)
    end)
  end)

  describe("many processes", function()
    it("4 producers' 10,000 items each reach 4 consumers exactly once, "
       .. "in each producer's order", function()
      local q, results = mp.Queue(100), mp.Queue()
      local N = 10000
      local producers, consumers = {}, {}
      for c = 1, 4 do
        consumers[c] = spawn(function()
          local got = {}
          while true do
            local v = q:get(true, 30)
            if v == false then break end
            got[#got + 1] = v
          end
          results:put(got)
        end)
      end
      for p = 1, 4 do
        producers[p] = spawn(function()
          for i = 1, N do q:put(p * 100000 + i) end
        end)
      end
      for p = 1, 4 do finish(producers[p]) end
      for _ = 1, 4 do q:put(false) end
      local seen, total = {}, 0
      for _ = 1, 4 do
        local got = results:get(true, 30)
        local last = {0, 0, 0, 0}
        for _, v in ipairs(got) do
          local p, i = v // 100000, v % 100000
          assert(seen[v] == nil, "item " .. v .. " received twice")
          seen[v] = true
          assert(i > last[p], "producer " .. p .. "'s item " .. i
            .. " came after its item " .. last[p])
          last[p] = i
          total = total + 1
        end
      end
      assert.are.equal(4 * N, total)
      for c = 1, 4 do finish(consumers[c]) end
      assert.is_true(q:empty())
    end)
  end)

  describe("large messages", function()
    it("carries 1 MiB from a child", function()
      local q = mp.Queue()
      local p = spawn(function()
        q:put(("0123456789abcdef"):rep(1 << 16) .. "end")
      end)
      local s = q:get(true, 10)
      assert.are.equal((1 << 20) + 3, #s)
      assert.are.equal(("0123456789abcdef"):rep(1 << 16) .. "end", s)
      finish(p)
    end)

    it("carries 64 MiB and gives the arena back once it is got", function()
      local q = mp.Queue()
      q:put("warm") -- the ring exists before the baseline
      q:get()
      collectgarbage()
      local base = mp.stats().arena_used
      local s = ("ab"):rep(32 << 20) .. "z"
      q:put(s)
      assert.is_true(mp.stats().arena_used >= base + (64 << 20),
        "the message is not in the arena")
      local got = q:get()
      assert.are.equal(base, mp.stats().arena_used)
      assert.are.equal(#s, #got)
      assert.is_true(s == got)
    end)

    it("keeps long strings, the values between them and shared objects "
       .. "in their places", function()
      collectgarbage()
      local before = mp.stats()
      local q, res, d = mp.Queue(1), mp.Queue(), mp.Dict{k = "v"}
      local a, b = ("a"):rep(20000) .. "1", ("b"):rep(300000) .. "2"
      local msg = {a, 7, {b, d, "small"}, a, x = b}
      local p = spawn(function()
        q:put(msg)
        -- the queue is full: this one times out and lets go of d
        local ok, e = pcall(q.put, q, {b, d}, true, 0.05)
        res:put(not ok and type(e) == "table" and e.type == "Full"
                or tostring(e))
      end)
      assert.is_true(res:get(true, 10))
      local got = q:get(true, 10)
      assert.are.equal(a, got[1])
      assert.are.equal(7, got[2])
      assert.are.equal(b, got[3][1])
      assert.is_true(got[3][2] == d)
      assert.are.equal("v", got[3][2].k)
      assert.are.equal("small", got[3][3])
      assert.are.equal(a, got[4])
      assert.are.equal(b, got.x)
      finish(p)
      assert.is_true(q:empty())
      got = nil
      msg = nil
      d:close()
      q:close()
      res:close()
      collectgarbage()
      collectgarbage()
      local after = mp.stats()
      assert.are.equal(before.objects, after.objects)
      assert.are.equal(before.arena_blocks, after.arena_blocks)
    end)

    H.long_it("carries 256 MiB between processes", function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local q = mp.Queue()
        q:put(0)
        q:get()
        local w = mp.Process{target = function() end} -- a forkserver starts
        w:start()
        w:join()
        local base = mp.stats().arena_used
        local p = mp.Process{target = function()
          q:put(("ab"):rep((128 << 20) - 1) .. "yz")
        end}
        p:start()
        local s = q:get(true, 60)
        p:join()
        print(#s, s:sub(1, 4), s:sub(-4), s:byte(128 << 20),
          s:byte((128 << 20) + 1), mp.stats().arena_used - base, p.exitcode)
      ]], "timeout -s KILL 60")
      assert.are.equal(0, status, err)
      assert.are.equal("268435456\tabab\tabyz\t98\t97\t0\t0\n", out)
    end)

    it("raises when the arena cannot hold a message, and stays usable",
       function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local q = mp.Queue()
        q:put("before")
        local ok, e = pcall(q.put, q, ("x"):rep(16 << 20))
        print(ok, (tostring(e):gsub(":.*", "")))
        print(q:qsize(), q:get())
        q:put("after")
        print(q:get())
      ]], "LUAMP_ARENA=8M timeout -s KILL 20")
      assert.are.equal(0, status, err)
      assert.are.equal("false\tshared memory exhausted\n1\tbefore\nafter\n",
        out)
    end)
  end)
end)

describe("JoinableQueue", function()
  H.leakcheck()

  it("has the methods of a Queue", function()
    local q = mp.JoinableQueue(2)
    assert.matches("^luamp%.JoinableQueue %(0x%x+%)$", tostring(q))
    assert.are.equal(2, q:maxsize())
    q:put("a")
    q:put_nowait("b")
    assert.is_true(q:full())
    raises(mp.Full, FULL, q.put_nowait, q, "c")
    assert.are.equal(2, q:qsize())
    assert.are.equal("a", q:get())
    assert.are.equal("b", q:get_nowait())
    raises(mp.Empty, EMPTY, q.get_nowait, q)
    q:close()
    assert.are.equal("luamp.JoinableQueue (closed)", tostring(q))
  end)

  it("join returns true at once when nothing is unfinished", function()
    local q = mp.JoinableQueue()
    local dt, done = timed(function() return q:join() end)
    assert.is_true(done)
    assert.is_true(dt < 0.1, "join took " .. dt)
    q:put(1)
    q:get()
    q:task_done()
    assert.is_true(q:join(0))
  end)

  it("join(timeout) returns false after the timeout while tasks are open",
     function()
    local q = mp.JoinableQueue()
    q:put(1)
    local dt, done = timed(function() return q:join(0.2) end)
    assert.is_false(done)
    assert.is_true(dt >= 0.19 and dt < 1.5, "join(0.2) took " .. dt)
    q:get()
    -- Got but not done: still unfinished.
    dt, done = timed(function() return q:join(0) end)
    assert.is_false(done)
    assert.is_true(dt < 0.1, "join(0) took " .. dt)
    q:task_done()
    assert.is_true(q:join(0))
  end)

  it("task_done more times than items were put raises", function()
    local q = mp.JoinableQueue()
    assert.has_error(function() q:task_done() end,
      "task_done() called too many times")
    q:put(1)
    q:put(2)
    q:get()
    q:get()
    q:task_done()
    q:task_done()
    assert.has_error(function() q:task_done() end,
      "task_done() called too many times")
    assert.is_true(q:join(0))
  end)

  -- After CPython's test_task_done.
  it("join returns once other processes have called task_done for all",
     function()
    local q, results = mp.JoinableQueue(), mp.Queue()
    local workers = {}
    for w = 1, 4 do
      workers[w] = spawn(function()
        while true do
          local v = q:get(true, 30)
          if v == nil then break end
          mp.sleep(0.01)
          results:put(v * v)
          q:task_done()
        end
      end)
    end
    for i = 1, 10 do q:put(i) end
    assert.is_true(q:join(30))
    -- Every result was put before its task_done.
    assert.are.equal(10, results:qsize())
    local sum = 0
    for _ = 1, 10 do sum = sum + results:get() end
    assert.are.equal(385, sum)
    for _ = 1, 4 do q:put(nil) end
    for w = 1, 4 do finish(workers[w]) end
  end)

  it("a join in another process wakes at the last task_done", function()
    local q, joined = mp.JoinableQueue(), mp.Queue()
    q:put("task")
    local ready = mp.Queue()
    local p = spawn(function()
      ready:put(true)
      local ok = q:join(10)
      joined:put({ok, mp.monotonic()})
    end)
    assert.are.equal("task", q:get())
    assert.is_true(ready:get(true, 10))
    until_asleep(p.pid)
    raises(mp.Empty, EMPTY, joined.get_nowait, joined)
    local t0 = mp.monotonic()
    q:task_done()
    local r = joined:get(true, 10)
    assert.is_true(r[1])
    local latency = r[2] - t0
    assert.is_true(latency >= 0 and latency < 0.5,
      "the join woke " .. latency .. " s late")
    finish(p)
  end)

  it("is a JoinableQueue after a trip through a queue, task counts shared",
     function()
    local q, ctl = mp.JoinableQueue(), mp.Queue()
    ctl:put(q)
    local copy = ctl:get()
    assert.matches("^luamp%.JoinableQueue %(", tostring(copy))
    copy:put(1)
    assert.are.equal(1, q:get())
    assert.is_false(q:join(0))
    copy:task_done()
    assert.is_true(q:join(0))
  end)
end)

describe("SimpleQueue", function()
  H.leakcheck()

  it("puts and gets in FIFO order across processes; empty tells", function()
    local q = mp.SimpleQueue()
    assert.matches("^luamp%.SimpleQueue %(0x%x+%)$", tostring(q))
    assert.is_true(q:empty())
    finish(spawn(function()
      for i = 1, 100 do q:put({i, "v" .. i}) end
      q:put(nil)
    end))
    for i = 1, 100 do
      assert.are.same({i, "v" .. i}, q:get())
    end
    assert.is_false(q:empty())
    assert.is_nil(q:get())
    assert.is_true(q:empty())
  end)

  it("has put, get, empty and close only", function()
    local q = mp.SimpleQueue()
    assert.has_error(function() q:qsize() end,
      "attempt to call a nil value (method 'qsize')")
    for _, m in ipairs{"qsize", "full", "maxsize", "put_nowait",
                       "get_nowait", "task_done", "join"} do
      assert.is_nil(q[m], m)
    end
    for _, m in ipairs{"put", "get", "empty", "close"} do
      assert.are.equal("function", type(q[m]), m)
    end
  end)

  it("is unbounded", function()
    local q = mp.SimpleQueue()
    for i = 1, 1000 do q:put(i) end
    for i = 1, 1000 do assert.are.equal(i, q:get()) end
  end)

  it("close makes put, get and empty raise 'attempt to use a closed queue'",
     function()
    local q = mp.SimpleQueue()
    q:close()
    q:close()
    assert.are.equal("luamp.SimpleQueue (closed)", tostring(q))
    assert.has_error(function() q:put(1) end, "attempt to use a closed queue")
    assert.has_error(function() q:get() end, "attempt to use a closed queue")
    assert.has_error(function() q:empty() end, "attempt to use a closed queue")
  end)
end)
