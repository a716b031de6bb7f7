-- pipe_spec.lua -- Pipe connections: both kinds of pipe, values and raw
-- bytes, poll, end of file and closed ends, connections handed to
-- children, large messages and Ctrl-C.  A test that waits on a child
-- always does so with a timeout, so that a failure cannot hang the suite.

local mp = require "luamp"
local core = require "luamp.core"
local lfs = require "lfs"
local H = require "spec_helper"
local timed, state, until_asleep = H.timed, H.state, H.until_asleep
local spawn, finish = H.spawn, H.finish
local raises = H.raises

-- Receives from c, failing after 10 s instead of hanging.
local function recv(c)
  assert.is_true(c:poll(10), "nothing came in 10 s")
  return c:recv()
end

local EOF = "the other end of the connection is closed"

describe("Pipe", function()
  H.leakcheck()

  describe("constructor", function()
    it("makes two duplex connections by default", function()
      for _, arg in ipairs{{}, {true}, {nil}} do
        local a, b = mp.Pipe(table.unpack(arg))
        for _, c in ipairs{a, b} do
          assert.is_true(c.readable)
          assert.is_true(c.writable)
          assert.is_false(c.closed)
          assert.are.equal("luamp.Connection (fd " .. c:fileno() .. ")",
            tostring(c))
        end
        a:close()
        b:close()
      end
    end)

    it("with duplex=false: the first end only receives, the second only "
       .. "sends", function()
      local a, b = mp.Pipe(false)
      assert.is_true(a.readable)
      assert.is_false(a.writable)
      assert.is_false(b.readable)
      assert.is_true(b.writable)
      b:send("one way")
      assert.are.equal("one way", a:recv())
      a:close()
      b:close()
    end)
  end)

  describe("send and recv", function()
    it("stay whole when a finalizer receives on the same connection "
       .. "during a recv", function()
      local a, b = mp.Pipe()
      local i = 0
      local bad, first = H.finalizer_inside(10000, function()
        i = i + 1
        a:send({i, string.rep("x", i % 300), {a = i}})
        a:send({i})
        local got = {}
        while b:poll(0) do got[#got + 1] = b:recv() end
        return got
      end, function() if b:poll(0) then b:recv() end end, function(got)
        for _, v in ipairs(got) do
          if v[2] ~= nil and (v[2] ~= string.rep("x", v[1] % 300)
                              or v[3].a ~= v[1]) then
            return false
          end
        end
        return true
      end)
      assert.are.equal(0, bad, tostring(first))
      a:close()
      b:close()
    end)

    it("carry values both ways between processes", function()
      local a, b = mp.Pipe()
      local p = spawn(function()
        local v = recv(b)
        b:send({"echo", v})
        b:send(recv(b) * 2)
      end)
      a:send("ping")
      assert.are.same({"echo", "ping"}, recv(a))
      a:send(21)
      assert.are.equal(42, recv(a))
      finish(p)
      a:close()
      b:close()
    end)

    it("carry values of every kind exactly", function()
      local a, b = mp.Pipe()
      local q = mp.Queue()
      local p = spawn(function()
        local n = 41
        local function inc() n = n + 1; return n end
        local function get() return n end
        local t = {1, {2}, name = "t", [true] = "yes"}
        t.self = t
        t.again = t[2]
        for _, v in ipairs{true, false, math.maxinteger, 1.0, -0.0, 0.1,
                           "a\0b\0", t, {inc, get}, string.format, q} do
          b:send(v)
        end
        b:send(nil)
        q:put("put by the child")
      end)
      assert.is_true(recv(a))
      assert.is_false(recv(a))
      local i = recv(a)
      assert.are.equal("integer", math.type(i))
      assert.are.equal(math.maxinteger, i)
      local f = recv(a)
      assert.are.equal("float", math.type(f))
      assert.are.equal(1.0, f)
      assert.are.equal(-1 / 0, 1 / recv(a))
      assert.are.equal(0.1, recv(a))
      assert.are.equal("a\0b\0", recv(a))
      local t = recv(a)
      assert.is_true(rawequal(t, t.self))
      assert.is_true(rawequal(t[2], t.again))
      assert.are.equal(2, t[2][1])
      assert.are.equal("yes", t[true])
      local fns = recv(a)
      assert.are.equal(42, fns[1]())
      assert.are.equal(42, fns[2]())
      assert.is_true(rawequal(string.format, recv(a)))
      local q2 = recv(a)
      assert.are.equal(tostring(q), tostring(q2))
      assert.is_true(a:poll(10))
      assert.is_nil(a:recv())
      assert.are.equal("put by the child", q:get(true, 10))
      finish(p)
      a:close()
      b:close()
    end)

    it("keep messages in order and apart", function()
      local a, b = mp.Pipe(false)
      local p = spawn(function()
        for i = 1, 2000 do b:send({i, ("x"):rep(i % 97)}) end
      end)
      for i = 1, 2000 do
        local m = recv(a)
        assert(m[1] == i and m[2] == ("x"):rep(i % 97),
          "message " .. i .. " came wrong")
      end
      finish(p)
      a:close()
      b:close()
    end)

    it("raise at send on a value that cannot be sent; nothing is sent",
       function()
      local a, b = mp.Pipe()
      assert.has_error(function() b:send(coroutine.create(print)) end,
        "cannot send value: thread")
      assert.has_error(function() b:send({f = io.stdout}) end,
        "cannot send value.f: userdata (FILE*)")
      assert.is_false(a:poll())
      b:send("next")
      assert.are.equal("next", a:recv())
      assert.is_false(a:poll())
      a:close()
      b:close()
    end)

    it("reject a send without a value", function()
      local a, b = mp.Pipe()
      assert.has_error(function() b:send() end,
        "bad argument #1 to 'send' (value expected)")
      a:close()
      b:close()
    end)

    it("raise on the wrong end of a one-way pipe", function()
      local a, b = mp.Pipe(false)
      assert.has_error(function() a:send(1) end, "connection is read-only")
      assert.has_error(function() a:send_bytes("x") end,
        "connection is read-only")
      assert.has_error(function() b:recv() end, "connection is write-only")
      assert.has_error(function() b:recv_bytes() end,
        "connection is write-only")
      assert.has_error(function() b:poll() end, "connection is write-only")
      assert.is_false(a:poll())
      a:close()
      b:close()
    end)

    it("work in a child that was given a connection in its args", function()
      local a, b = mp.Pipe()
      local p = mp.Process{target = function(conn, word)
        conn:send(word .. " from the child")
        conn:send(recv(conn) .. ", received")
      end, args = {b, "hello"}}
      p:start()
      assert.are.equal("hello from the child", recv(a))
      a:send("answer")
      assert.are.equal("answer, received", recv(a))
      finish(p)
      a:close()
      b:close()
    end)
  end)

  describe("send_bytes and recv_bytes", function()
    it("carry raw bytes, empty and binary messages included", function()
      local a, b = mp.Pipe()
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      b:send_bytes("")
      b:send_bytes("a\0b")
      b:send_bytes(all)
      a:send_bytes("back")
      assert.are.equal("", a:recv_bytes())
      assert.are.equal("a\0b", a:recv_bytes())
      assert.are.equal(all, a:recv_bytes())
      assert.are.equal("back", b:recv_bytes())
      b:send_bytes("z")
      assert.are.equal(1, select("#", a:recv_bytes()))
      a:close()
      b:close()
    end)

    it("send_bytes(s, i, j) sends s:sub(i, j)", function()
      local a, b = mp.Pipe()
      local s = "hello world"
      local cases = {{3, 5}, {-5}, {0}, {1, 0}, {5, 3}, {-100, 2},
        {2, 100}, {-3, -2}, {7, 7}, {100, 200}, {12}, {11},
        {math.mininteger, math.maxinteger}, {math.maxinteger},
        {-1, math.mininteger}}
      for _, c in ipairs(cases) do
        b:send_bytes(s, c[1], c[2])
        assert.are.equal(s:sub(c[1], c[2]), a:recv_bytes(),
          "send_bytes(s, " .. tostring(c[1]) .. ", " .. tostring(c[2]) .. ")")
      end
      a:close()
      b:close()
    end)

    it("send gives a recv_bytes the encoded value, which decodes", function()
      local a, b = mp.Pipe()
      b:send({1, "two"})
      local raw = a:recv_bytes()
      assert.are.equal("string", type(raw))
      assert.are.same({1, "two"}, core.decode(raw))
      a:close()
      b:close()
    end)

    it("recv of bytes sent with send_bytes raises saying so; the stream "
       .. "stays in step", function()
      local a, b = mp.Pipe()
      local function says(n)
        return "cannot receive a value: the message (" .. n .. " bytes) is "
          .. "not one that send makes (sent with send_bytes? recv_bytes "
          .. "reads it)"
      end
      b:send_bytes("not a value")
      b:send("a value")
      b:send_bytes("")
      b:send_bytes("\0\255")
      b:send({1, "two"})
      assert.has_error(function() a:recv() end, says(11))
      assert.are.equal("a value", a:recv())
      assert.has_error(function() a:recv() end, says(0))
      assert.has_error(function() a:recv() end, says(2))
      assert.are.same({1, "two"}, a:recv())
      assert.is_false(a:poll())
      -- The bytes of a value are a value, as a pickle is in Python; bytes
      -- that only begin as one are a malformed message.
      b:send_bytes(core.message({3}):bytes())
      assert.are.same({3}, a:recv())
      b:send_bytes(core.message({3}):bytes():sub(1, -2))
      local ok, e = pcall(a.recv, a)
      assert.is_false(ok)
      assert.matches("^malformed message: ", e)
      b:send("last")
      assert.are.equal("last", a:recv())
      a:close()
      b:close()
    end)

    it("recv_bytes(maxlength) raises on a longer message; the next one "
       .. "arrives intact", function()
      local a, b = mp.Pipe()
      b:send_bytes("abcdef")
      b:send_bytes("next")
      b:send_bytes("abc")
      assert.has_error(function() a:recv_bytes(3) end,
        "message too long (6 bytes; maxlength is 3)")
      assert.are.equal("next", a:recv_bytes(4))
      assert.are.equal("abc", a:recv_bytes(3))
      b:send_bytes("")
      assert.are.equal("", a:recv_bytes(0))
      assert.has_error(function() a:recv_bytes(-1) end,
        "bad argument #1 to 'recv_bytes' (maxlength must be non-negative)")
      assert.is_false(a:poll())
      a:close()
      b:close()
    end)
  end)

  describe("closed connections", function()
    it("raise 'attempt to use a closed connection' from every method; "
       .. "closed is true",
       function()
      local a, b = mp.Pipe()
      a:close()
      a:close()
      assert.is_true(a.closed)
      assert.is_false(b.closed)
      assert.are.equal("luamp.Connection (closed)", tostring(a))
      for _, call in ipairs{
        function() a:send(1) end, function() a:recv() end,
        function() a:send_bytes("x") end, function() a:recv_bytes() end,
        function() a:poll() end, function() a:fileno() end,
      } do
        assert.has_error(call, "attempt to use a closed connection")
      end
      b:close()
    end)

    it("close at the end of a <close> scope", function()
      local a, b = mp.Pipe()
      do
        local scoped_a <close> = a
        local scoped_b <close> = b
        scoped_b:send(1)
        assert.are.equal(1, scoped_a:recv())
      end
      assert.is_true(a.closed)
      assert.is_true(b.closed)
    end)

    it("recv raises EOFError once the other end is closed and nothing is "
       .. "left", function()
      for _, duplex in ipairs{true, false} do
        local a, b = mp.Pipe(duplex)
        b:close()
        raises(mp.EOFError, EOF, a.recv, a)
        raises(mp.EOFError, EOF, a.recv_bytes, a)
        a:close()
      end
    end)

    it("what was sent before the other end closed is still received, then "
       .. "EOFError", function()
      for _, duplex in ipairs{true, false} do
        local a, b = mp.Pipe(duplex)
        b:send("one")
        b:send_bytes("two")
        b:send({3})
        b:close()
        assert.are.equal("one", a:recv())
        assert.are.equal("two", a:recv_bytes())
        assert.are.same({3}, a:recv())
        raises(mp.EOFError, EOF, a.recv, a)
        a:close()
      end
    end)

    it("the end of file comes only when every process has closed the other "
       .. "end", function()
      local a, b = mp.Pipe()
      local go = mp.Queue()
      local p = spawn(function()
        go:get(true, 10) -- holds its copy of b until then
      end)
      b:close()
      local dt, ready = timed(function() return a:poll(0.2) end)
      assert.is_false(ready, "end of file while a child still holds b")
      assert.is_true(dt >= 0.19 and dt < 1.5, "poll(0.2) took " .. dt)
      go:put(true)
      assert.is_true(a:poll(10))
      raises(mp.EOFError, EOF, a.recv, a)
      finish(p)
      a:close()
    end)

    it("send raises EOFError once the other end is closed", function()
      for _, duplex in ipairs{true, false} do
        local a, b = mp.Pipe(duplex)
        a:close()
        raises(mp.EOFError, EOF, b.send, b, "lost")
        raises(mp.EOFError, EOF, b.send_bytes, b, "lost")
        b:close()
      end
    end)

    it("a failed send keeps no reference to the shared objects it carried",
       function()
      collectgarbage()
      collectgarbage()
      local objects = mp.stats().objects
      local a, b = mp.Pipe()
      a:close()
      local q = mp.Queue()
      raises(mp.EOFError, EOF, b.send, b, {q})
      q:close()
      b:close()
      collectgarbage()
      collectgarbage()
      assert.are.equal(objects, mp.stats().objects,
        "the queue outlived its last handle")
    end)
  end)

  describe("poll", function()
    it("without an argument does not wait, and does not take the message",
       function()
      local a, b = mp.Pipe()
      local dt, ready = timed(function() return a:poll() end)
      assert.is_false(ready)
      assert.is_true(dt < 0.1, "poll() took " .. dt)
      b:send("there")
      assert.is_true(a:poll())
      assert.is_true(a:poll())
      assert.are.equal("there", a:recv())
      assert.is_false(a:poll())
      a:close()
      b:close()
    end)

    it("poll(0) and poll(-1) do not wait", function()
      local a, b = mp.Pipe()
      local dt, r1, r2 = timed(function() return a:poll(0), a:poll(-1) end)
      assert.is_false(r1)
      assert.is_false(r2)
      assert.is_true(dt < 0.1, "poll(0), poll(-1) took " .. dt)
      a:close()
      b:close()
    end)

    it("poll(0.2) waits that long, then returns false", function()
      local a, b = mp.Pipe()
      local dt, ready = timed(function() return a:poll(0.2) end)
      assert.is_false(ready)
      assert.is_true(dt >= 0.19 and dt < 1.5, "poll(0.2) took " .. dt)
      a:close()
      b:close()
    end)

    it("poll(math.huge) waits for a message from another process", function()
      local a, b = mp.Pipe()
      local ready = mp.Queue()
      local ppid = mp.current_process().pid
      local p = spawn(function()
        ready:get(true, 10)
        until_asleep(ppid)
        b:send(mp.monotonic())
      end)
      ready:put(true)
      assert.is_true(a:poll(math.huge))
      local latency = mp.monotonic() - a:recv()
      assert.is_true(latency >= 0 and latency < 0.5,
        "poll woke " .. latency .. " s late")
      finish(p)
      a:close()
      b:close()
    end)

    it("is true once part of a message is there, as Python's; recv waits "
       .. "for the rest", function()
      local a, b = mp.Pipe(false)
      local go = mp.Queue()
      local p = spawn(function()
        -- A frame header promising 10 bytes, then the 10 bytes later.
        local fd = b:fileno()
        local f = assert(io.open("/proc/self/fd/" .. fd, "wb"))
        f:setvbuf("no")
        f:write("\0\0\0\10abc")
        go:get(true, 10)
        f:write("defghij")
        f:close()
      end)
      assert.is_true(a:poll(10))
      assert.is_true(a:poll(), "poll took what it saw")
      go:put(true)
      assert.are.equal("abcdefghij", a:recv_bytes())
      finish(p)
      a:close()
      b:close()
    end)

    it("is true at the end of the stream", function()
      local a, b = mp.Pipe(false)
      b:close()
      assert.is_true(a:poll())
      assert.is_true(a:poll(0))
      raises(mp.EOFError, EOF, a.recv, a)
      a:close()
    end)
  end)

  describe("between processes", function()
    it("gives one process the first of five messages and a child the "
       .. "other four, none twice", function()
      local a, b = mp.Pipe()
      for i = 1, 5 do b:send({i = i, s = ("x"):rep(i * 1000)}) end
      assert.are.equal(1, recv(a).i)
      local got = mp.Queue()
      local p = spawn(function()
        local seen = {}
        for _ = 1, 4 do
          local m = recv(a)
          assert(#m.s == m.i * 1000, "a message came torn")
          seen[#seen + 1] = m.i
        end
        got:put(seen)
      end)
      assert.are.same({2, 3, 4, 5}, got:get(true, 10))
      finish(p)
      assert.is_false(a:poll(), "a message was left over")
      b:send("after")
      assert.are.equal("after", recv(a))
      a:close()
      b:close()
      got:close()
    end)

    it("lets a child poll and the parent receive what it polled",
       function()
      local a, b = mp.Pipe()
      b:send("one")
      b:send_bytes("two")
      local p = spawn(function()
        assert(a:poll(10) and a:poll() and a:poll(0), "nothing to poll")
      end)
      finish(p)
      assert.are.equal("one", recv(a))
      assert.are.equal("two", a:recv_bytes())
      assert.is_false(a:poll())
      a:close()
      b:close()
    end)

    it("lets a child read a message the parent's poll saw first", function()
      local a, b = mp.Pipe()
      b:send({"for", "the", "child"})
      assert.is_true(a:poll(10))
      local got = mp.Queue()
      local p = spawn(function() got:put(recv(a)) end)
      assert.are.same({"for", "the", "child"}, got:get(true, 10))
      finish(p)
      assert.is_false(a:poll())
      a:close()
      b:close()
      got:close()
    end)

    it("reads a 4 MiB message a child writes in slow pieces", function()
      local a, b = mp.Pipe(false)
      local go = mp.Queue()
      local body = ("0123456789abcdef"):rep(1 << 18)
      local p = spawn(function()
        local f = assert(io.open("/proc/self/fd/" .. b:fileno(), "wb"))
        f:setvbuf("no")
        local n = #body
        f:write(string.char(n >> 24 & 255, n >> 16 & 255, n >> 8 & 255,
                            n & 255))
        for i = 1, n, 1 << 20 do
          f:write(body:sub(i, i + (1 << 20) - 1))
          go:get(true, 10) -- the next piece once the parent says so
        end
        f:close()
      end)
      for _ = 1, 4 do go:put(true) end
      local t0 = mp.monotonic()
      local s = a:recv_bytes()
      H.took(mp.monotonic() - t0, 0, 10, "the slow message")
      assert.are.equal(#body, #s)
      assert.is_true(s == body)
      finish(p)
      a:close()
      b:close()
      go:close()
    end)
    it("waits through a header that comes a byte at a time, and takes no "
       .. "byte of the message after it", function()
      local a, b = mp.Pipe(false)
      local p = spawn(function()
        local f = assert(io.open("/proc/self/fd/" .. b:fileno(), "wb"))
        f:setvbuf("no")
        for _, c in ipairs{"\0", "\0", "\0", "\5"} do
          f:write(c) -- the reader meets each part of the header alone
          mp.sleep(0.02)
        end
        f:write("hello", "\0\0\0\3", "abc", "\0\0")
        f:close()
      end)
      b:close() -- the child's is the only writer: its end ends the stream
      assert.are.equal("hello", a:recv_bytes())
      assert.are.equal("abc", a:recv_bytes())
      local ok, e = pcall(a.recv_bytes, a)
      assert.is_false(ok)
      assert.are.equal("EOFError", e.type)
      assert.are.equal("connection closed in the middle of a message",
                       e.message)
      finish(p)
      a:close()
    end)

    it("keeps a fast exchange of small messages whole and apart (a reader "
       .. "that spins reads no further than a header)", function()
      -- Both ends in children, so that a stream out of step fails the
      -- join rather than hang the spec.
      local a, b = mp.Pipe()
      local echo = spawn(function()
        a:close()
        while true do
          local m = b:recv_bytes()
          if m == "" then break end
          b:send_bytes(m)
        end
      end)
      local driver = spawn(function()
        b:close()
        for i = 1, 3000 do
          local m = ("x"):rep(i % 41) .. i
          a:send_bytes(m)
          local got = a:recv_bytes()
          if got ~= m then
            error(("round trip %d: sent %q, got %q"):format(i, m, got))
          end
        end
        a:send_bytes("")
      end)
      a:close()
      b:close()
      finally(function()
        for _, p in ipairs{driver, echo} do
          if p:is_alive() then p:kill() end
          p:join()
        end
      end)
      finish(driver, " (the driver)")
      finish(echo, " (the echo)")
    end)

    it("raises EOFError when the other end closes inside a message",
       function()
      local a, b = mp.Pipe(false)
      local p = spawn(function()
        local f = assert(io.open("/proc/self/fd/" .. b:fileno(), "wb"))
        f:write("\0\0\0\100abc")
        f:close()
      end)
      b:close()
      raises(mp.EOFError, "connection closed in the middle of a message",
             a.recv, a)
      raises(mp.EOFError, EOF, a.recv, a)
      finish(p)
      a:close()
    end)
  end)

  describe("recv_bytes_into", function()
    it("writes the next message into a shared Array and counts its bytes",
       function()
      local a, b = mp.Pipe()
      local arr = mp.Array("B", 8)
      b:send_bytes("\1\2\3")
      assert.are.equal(3, a:recv_bytes_into(arr))
      assert.are.same({1, 2, 3, 0, 0, 0, 0, 0}, arr:totable())
      b:send_bytes("\9\8")
      assert.are.equal(2, a:recv_bytes_into(arr, 6))
      assert.are.same({1, 2, 3, 0, 0, 0, 9, 8}, arr:totable())
      b:send_bytes("")
      assert.are.equal(0, a:recv_bytes_into(arr, 8))
      local ints = mp.Array("i", 2) -- 8 bytes of 4-byte integers
      b:send_bytes(string.pack("<i4i4", 7, -1))
      assert.are.equal(8, a:recv_bytes_into(ints))
      assert.are.same({7, -1}, ints:totable())
      a:close()
      b:close()
    end)

    it("raises BufferTooShort carrying a message that does not fit, and "
       .. "loses nothing after it", function()
      local a, b = mp.Pipe()
      local arr = mp.Array("B", 4)
      b:send_bytes("too long")
      b:send_bytes("ok")
      local e = raises("BufferTooShort",
        "message of 8 bytes does not fit in 2", a.recv_bytes_into, a, arr,
        2)
      assert.are.equal("too long", e.value)
      assert.are.equal(2, a:recv_bytes_into(arr))
      assert.are.same({("o"):byte(), ("k"):byte(), 0, 0}, arr:totable())
      a:close()
      b:close()
    end)

    it("checks its arguments", function()
      local a, b = mp.Pipe()
      local arr = mp.Array("B", 4)
      assert.has_error(function() a:recv_bytes_into({}) end,
        "bad argument #1 to 'recv_bytes_into' (luamp.Array expected, got "
        .. "table)")
      assert.has_error(function() a:recv_bytes_into(arr, 5) end,
        "bad argument #2 to 'recv_bytes_into' (offset out of range)")
      assert.has_error(function() a:recv_bytes_into(arr, -1) end,
        "bad argument #2 to 'recv_bytes_into' (offset out of range)")
      arr:close()
      assert.has_error(function() a:recv_bytes_into(arr) end,
        "attempt to use a closed array")
      a:close()
      b:close()
    end)
  end)

  describe("fileno", function()
    it("is a non-negative integer: the socket or pipe of each end",
       function()
      local function target(fd)
        return lfs.symlinkattributes("/proc/self/fd/" .. fd, "target")
      end
      local a, b = mp.Pipe()
      local r, w = mp.Pipe(false)
      for _, c in ipairs{a, b, r, w} do
        assert.are.equal("integer", math.type(c:fileno()))
        assert.is_true(c:fileno() >= 0)
      end
      assert.are_not.equal(a:fileno(), b:fileno())
      assert.matches("^socket:%[%d+%]$", target(a:fileno()))
      assert.matches("^socket:%[%d+%]$", target(b:fileno()))
      assert.matches("^pipe:%[%d+%]$", target(r:fileno()))
      assert.are.equal(target(r:fileno()), target(w:fileno()))
      for _, c in ipairs{a, b, r, w} do c:close() end
    end)
  end)

  describe("large messages", function()
    it("carry 1 MiB each way, as values and as bytes", function()
      local a, b = mp.Pipe()
      local big = ("0123456789abcdef"):rep(1 << 16)
      local p = spawn(function()
        b:send(big .. "v")
        b:send_bytes(big .. "b")
        b:send(recv(b) == big .. "back" and "ok" or "bad")
      end)
      assert.are.equal(big .. "v", recv(a))
      assert.is_true(a:poll(10))
      assert.are.equal(big .. "b", a:recv_bytes())
      a:send(big .. "back")
      assert.are.equal("ok", recv(a))
      finish(p)
      a:close()
      b:close()
    end)

    H.long_it("carry 256 MiB between processes", function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local a, b = mp.Pipe(false)
        local p = mp.Process{target = function()
          b:send(("ab"):rep((128 << 20) - 1) .. "yz")
        end}
        p:start()
        b:close()
        local s = a:recv()
        p:join()
        print(#s, s:sub(1, 4), s:sub(-4), s:byte(128 << 20),
          s:byte((128 << 20) + 1), p.exitcode)
      ]], "timeout -s KILL 60")
      assert.are.equal(0, status, err)
      assert.are.equal("268435456\tabab\tabyz\t98\t97\t0\n", out)
    end)
  end)

  describe("Ctrl-C", function()
    it("interrupts a blocked recv with a KeyboardInterrupt error object",
       function()
      local status, out, err = H.luamp_e(H.CTRL_C .. [[
        local a, b = mp.Pipe()
        local took, p, ok, e = interrupted(function() return a:recv() end)
        print(ok, type(e), e.type, tostring(e), took < 1 and "prompt" or took)
        b:send("still usable")
        print(a:recv())
        p:terminate()
        print(p:join(5), p.exitcode)
      ]], "timeout -s KILL 20")
      assert.are.equal(0, status, err)
      assert.are.equal("false\ttable\tKeyboardInterrupt\t"
        .. "luamp.KeyboardInterrupt: interrupted\tprompt\n"
        .. "still usable\ntrue\t-15\n", out)
    end)
  end)
end)
