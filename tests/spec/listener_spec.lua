-- listener_spec.lua -- Listener and Client between two separate luamp
-- programs (not parent and child: they share no arena), over a Unix
-- path, an abstract name and TCP on the loopback; timeouts, closing,
-- mp.wait and bad addresses.

local mp = require "luamp"
local H = require "spec_helper"
local raises = H.raises

-- Starts `luamp -e` with a client chunk that connects to addr, sends
-- {n, "from client"}, receives a reply and prints it; returns the pipe
-- of its output.
local function client(addr, n)
  local code = string.format([[
    local mp = require "luamp"
    local c = mp.Client(%q, {timeout = 10})
    c:send({%d, "from client"})
    assert(c:poll(10), "no reply")
    local r = c:recv()
    io.write(r[1], " ", r[2])
  ]], addr, n)
  return assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(code)))
end

-- Serves one client of `listener` from another program; checks both
-- sides.
local function exchange(l)
  local out = client(l.address, 7)
  local c = l:accept(10)
  assert.is_true(c:poll(10), "nothing came in 10 s")
  local m = c:recv()
  assert.are.same({7, "from client"}, m)
  c:send({m[1] * 2, "from listener"})
  assert.are.equal("14 from listener", out:read("a"))
  assert.is_true(out:close())
  c:close()
end

describe("Listener and Client", function()
  it("exchange values over a Unix socket path, removed on close", function()
    local path = os.tmpname()
    os.remove(path)
    local l = mp.Listener(path)
    assert.are.equal(path, l.address)
    exchange(l)
    l:close()
    l:close()
    assert.is_nil(io.open(path))
    assert.has_error(function() l:accept(0) end,
                     "attempt to use a closed listener")
  end)

  it("picks a Unix socket path of its own when given no address, as "
     .. "Python's does", function()
    local l = mp.Listener()
    local l2 = mp.Listener(nil, {authkey = "a key of sixteen bytes"})
    assert.matches("^/.*/luamp%-listener%-%d+%-%d+%-%d+$", l.address)
    assert.are_not.equal(l.address, l2.address)
    exchange(l)
    local path = l.address
    l:close()
    l2:close()
    assert.is_nil(io.open(path))
  end)

  it("take only plain data from outside the family, and send no shared "
     .. "object there", function()
    local path = os.tmpname()
    os.remove(path)
    local l <close> = mp.Listener(path)
    local code = string.format([[
      local mp = require "luamp"
      local c = mp.Client(%q, {timeout = 10})
      c:send(function() return 1 end)
      c:send({print})
      c:send({x = setmetatable({}, {__index = {}})})
      c:send({1, "two", {three = 3.0}})
      io.write(tostring(c:recv()))
    ]], path)
    local out = assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(code)))
    local c = l:accept(10)
    for _ = 1, 3 do
      assert.is_true(c:poll(10), "nothing came in 10 s")
      local ok, e = pcall(c.recv, c)
      assert.is_false(ok)
      assert.matches("cannot receive a %a+", tostring(e))
    end
    assert.are.same({1, "two", {three = 3}}, c:recv())
    local d = mp.Dict()
    assert.has_error(function() c:send({d}) end, "cannot send value[1]: a "
      .. "shared Dict cannot leave its process family")
    c:send("still usable")
    assert.are.equal("still usable", out:read("a"))
    assert.is_true(out:close())
    c:close()
    d:close()
  end)

  it("carry shared objects between processes of one family, once "
     .. "authenticated", function()
    local path = os.tmpname()
    os.remove(path)
    local l <close> = mp.Listener(path, {authkey = "kin"})
    local q, d = mp.Queue(), mp.Dict()
    local child = mp.Process{target = function()
      local c = mp.Client(path, {timeout = 10, authkey = "kin"})
      local got = c:recv()         -- a Dict the parent made
      got.d.from_child = true
      local mine = mp.Queue()
      mine:put("made in the child")
      c:send({q = mine, f = function() return got.d end})
      -- The child lets go of its Queue and ends before the parent reads:
      -- the message in flight keeps it alive.
      mine = nil
      collectgarbage()
      collectgarbage()
      c:close()
    end}
    child:start()
    local c = l:accept(10)
    c:send({d = d})
    child:join(10)
    assert.are.equal(0, child.exitcode)
    local back = c:recv()
    assert.are.equal("made in the child", back.q:get(10))
    assert.are.equal(d, back.f())
    assert.is_true(d.from_child)
    back.q:close()
    c:close()
    q:close()
    d:close()
  end)

  describe("with an authkey", function()
    -- Runs `code` (with PATH set to the listener's address) as another
    -- program; returns the pipe of its output.
    local function peer(path, code)
      return assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(
        "local mp = require 'luamp'\nlocal PATH = " .. string.format("%q",
        path) .. "\n" .. code)))
    end

    local function fresh_path()
      local path = os.tmpname()
      os.remove(path)
      return path
    end

    it("carries closures, upvalues and C functions once authenticated, "
       .. "and no shared object", function()
      local path = fresh_path()
      local l <close> = mp.Listener(path, {authkey = "sesame"})
      local out = peer(path, [[
        local c = mp.Client(PATH, {authkey = "sesame", timeout = 10})
        local k = 10
        c:send(function(x) return string.rep("a", x) .. k end)
        local f = c:recv()
        io.write(f(3))
      ]])
      local c = l:accept(10)
      local f = c:recv()
      assert.are.equal("aaa10", f(3))
      local t = {n = 2}
      c:send(function(x) return t.n * x end)
      assert.are.equal("6", out:read("a"))
      assert.is_true(out:close())
      local d = mp.Dict()
      assert.has_error(function() c:send({fn = function() return d end}) end,
        "cannot send value.fn<upvalue d>: a shared Dict cannot leave its "
        .. "process family")
      d:close()
      c:close()
    end)

    it("refuses a function whose bytecode miscounts what it sizes, and "
       .. "stays usable", function()
      local path = fresh_path()
      local l <close> = mp.Listener(path, {authkey = "sesame"})
      -- One more upvalue name than upvalues: Lua 5.4.4's loader would
      -- write past the upvalues.  The count is the dump's last but the
      -- upvalue's value, (1 name, "u") become (2 names, none, none).
      local out = peer(path, [[
        local core = require "luamp.core"
        local c = mp.Client(PATH, {authkey = "sesame", timeout = 10})
        local u = 5
        local b = core.message(function() return u end):bytes()
        local at
        for i in b:gmatch("()\x81\x82u") do at = i end
        c:send_bytes(b:sub(1, at - 1) .. "\x82\x80\x80" .. b:sub(at + 3))
        c:send(function() return u + 1 end)
        io.write(c:recv())
      ]])
      local c = l:accept(10)
      assert.has_error(function() c:recv() end, "malformed message")
      assert.are.equal(6, c:recv()())
      c:send("done")
      assert.are.equal("done", out:read("a"))
      assert.is_true(out:close())
      c:close()
    end)

    it("lets both sides in when they share the key", function()
      local path = fresh_path()
      local l <close> = mp.Listener(path, {authkey = "sesame"})
      local out = peer(path, [[
        local c = mp.Client(PATH, {authkey = "sesame", timeout = 10})
        c:send({"in"})
        io.write(c:recv())
      ]])
      local c = l:accept(10)
      assert.are.same({"in"}, c:recv())
      c:send("welcome")
      assert.are.equal("welcome", out:read("a"))
      assert.is_true(out:close())
      c:close()
    end)

    it("raises AuthenticationError on both sides for a wrong key, and "
       .. "closes the connection", function()
      local path = fresh_path()
      local l <close> = mp.Listener(path, {authkey = "sesame"})
      local out = peer(path, [[
        local ok, e = pcall(mp.Client, PATH, {authkey = "simsim",
                                              timeout = 10})
        io.write(tostring(e))
      ]])
      raises("AuthenticationError", "digest received was wrong", l.accept,
             l, 10)
      assert.are.equal("luamp.AuthenticationError: digest sent was rejected",
                       out:read("a"))
      assert.is_true(out:close())
    end)

    it("refuses a peer that does not authenticate, and one that leaves "
       .. "half way", function()
      local path = fresh_path()
      local l <close> = mp.Listener(path, {authkey = "sesame"})
      local out = peer(path, [[
        local c = mp.Client(PATH, {timeout = 10})
        c:send_bytes(("no key here, only data "):rep(4))
        local ok, e = pcall(c.recv, c)
        io.write(tostring(ok))
      ]])
      raises("AuthenticationError", "digest received was wrong", l.accept,
             l, 10)
      assert.are.equal("false", out:read("a"))
      assert.is_true(out:close())
      out = peer(path, [[ mp.Client(PATH, {timeout = 10}):close() ]])
      raises("AuthenticationError", "the connection closed during "
             .. "authentication", l.accept, l, 10)
      assert.is_true(out:close())
    end)

    -- A client without the key whose first message is shorter than an
    -- answer: the listener used to wait for the answer's 32 bytes, and
    -- the client for the rest of a "message" the challenge began.  Both
    -- now fail at once, as Python's do.
    it("fails at once on both sides for a client without the key",
       function()
      local path = fresh_path()
      local l <close> = mp.Listener(path, {authkey = "sesame"})
      for _, first in ipairs{"c:send('hi')", ""} do
        local out = peer(path, [[
          local c = mp.Client(PATH, {timeout = 10})
          ]] .. first .. [[
          local ok, e = pcall(c.recv, c)
          io.write(tostring(ok), " ", tostring(e))
          c:close()
        ]])
        local t0 = mp.monotonic()
        raises("AuthenticationError", first == "" and "the connection "
               .. "closed during authentication" or "digest received was "
               .. "wrong", l.accept, l, 10)
        H.took(mp.monotonic() - t0, 0, 5, "the refusal")
        assert.are.equal("false luamp.AuthenticationError: the peer asks "
                         .. "for an authkey, and this connection has none",
                         out:read("a"))
        assert.is_true(out:close())
      end
    end)

    it("makes a client with a key refuse a listener without one",
       function()
      local path = fresh_path()
      local l <close> = mp.Listener(path)
      local out = peer(path, [[
        local ok, e = pcall(mp.Client, PATH, {authkey = "sesame",
                                              timeout = 10})
        io.write(tostring(e))
      ]])
      local c = l:accept(10)
      c:send_bytes(("plain, with no challenge "):rep(4))
      assert.are.equal("luamp.AuthenticationError: the peer sent no "
                       .. "challenge", out:read("a"))
      assert.is_true(out:close())
      c:close()
    end)

    it("survives garbage in place of a handshake, and stays usable",
       function()
      local l <close> = mp.Listener("127.0.0.1:0", {authkey = "sesame"})
      local port = l.address:match(":(%d+)$")
      -- Each peer writes bytes of its own (some starting as an answer or a
      -- family hello would, most random, some cut short) and goes.
      local script = os.tmpname()
      H.writefile(script, [[
        exec 3<>/dev/tcp/127.0.0.1/$1 || exit 0
        case $(($2 % 4)) in
          0) head -c $(($2 % 97)) /dev/urandom >&3 ;;
          1) printf 'LMPK' >&3; head -c $(($2 % 40)) /dev/urandom >&3 ;;
          2) head -c 32 /dev/urandom >&3; printf '\001LMPA' >&3
             head -c $(($2 % 50)) /dev/urandom >&3 ;;
          3) head -c 33 /dev/urandom >&3; sleep 0.05 ;;
        esac
        exec 3>&-
      ]])
      local seen = {}
      for i = 1, H.rounds(120) do
        os.execute(string.format("bash %s %s %d 2>/dev/null &", H.q(script),
                                 port, math.random(0, 1 << 20) * 4 + i % 4))
        local ok, e = pcall(l.accept, l, 5)
        assert.is_false(ok, "garbage was let in")
        assert.is_table(e, tostring(e))
        seen[e.type] = true
      end
      os.remove(script)
      assert.is_true(seen.AuthenticationError)
      -- and a real client still gets in
      local out = assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(
        ("local mp = require 'luamp'\n"
         .. "local c = mp.Client(%q, {authkey = 'sesame', timeout = 10})\n"
         .. "c:send('hello')"):format(l.address))))
      local c = l:accept(10)
      assert.are.equal("hello", c:recv())
      assert.is_true(out:close())
      c:close()
    end)

    it("must be a non-empty string", function()
      assert.has_error(function() mp.Listener(fresh_path(), {authkey = 5}) end,
        "bad argument #2 to 'Listener' (authkey must be a non-empty string)")
      assert.has_error(function() mp.Client("/nowhere", {authkey = ""}) end,
        "bad argument #2 to 'Client' (authkey must be a non-empty string)")
    end)
  end)

  it("exchange values over an abstract Unix name", function()
    local name = "\0luamp-spec-" .. H.q(os.time()):sub(2, -2) .. "-"
      .. tostring({}):match("0x%x+")
    local l <close> = mp.Listener(name)
    assert.are.equal(name, l.address)
    exchange(l)
  end)

  it("exchange values over TCP on 127.0.0.1 and ::1, port 0 chosen", function()
    local l4 <close> = mp.Listener("127.0.0.1:0")
    local port = tonumber(l4.address:match("^127%.0%.0%.1:(%d+)$"))
    assert.is_true(port > 0)
    exchange(l4)
    assert.matches("^127%.0%.0%.1:%d+$", l4.last_accepted)
    local ok, l6 = pcall(mp.Listener, {"::1", 0})
    if ok then
      assert.matches("^%[::1%]:%d+$", l6.address)
      exchange(l6)
      l6:close()
    end
  end)

  it("take an empty host as Python does: every IPv4 address, and this host "
     .. "for a client", function()
    for _, addr in ipairs{":0", {"", 0}} do
      local l <close> = mp.Listener(addr)
      local port = l.address:match("^0%.0%.0%.0:(%d+)$")
      assert.is_not_nil(port, l.address)
      local c = mp.Client(type(addr) == "table" and {"", tonumber(port)}
                          or ":" .. port)
      local s = l:accept(5)
      c:send("hi")
      assert.are.equal("hi", s:recv())
      assert.matches("^127%.0%.0%.1:%d+$", l.last_accepted)
      c:close()
      s:close()
    end
  end)

  it("accept times out with TimeoutError; mp.wait sees a waiting client",
     function()
    local l <close> = mp.Listener("127.0.0.1:0")
    raises("TimeoutError", "no connection came", l.accept, l, 0.05)
    assert.are.same({}, mp.wait({l}, 0))
    local c = mp.Client(l.address)
    local ready = mp.wait({l}, 10)
    assert.are.equal(1, #ready)
    assert.are.equal(l, ready[1])
    local s = l:accept(0)
    c:send("x")
    local r = mp.wait({l, s, c}, 10)
    assert.are.same({s}, r)
    assert.are.equal("x", s:recv())
    c:close()
    s:close()
  end)

  it("raise EOFError when the peer is killed with -9 mid-message",
     function()
    local l <close> = mp.Listener("127.0.0.1:0")
    local code = string.format([[
      local mp = require "luamp"
      local c = mp.Client(%q, {timeout = 10})
      io.write(mp.current_process().pid, "\n")
      io.flush()
      c:send_bytes(string.rep("x", 64 << 20))
    ]], l.address)
    local out = assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(code)))
    local c = l:accept(10)
    local pid = tonumber(out:read("l"))
    assert.is_truthy(pid)
    assert.is_false(c:poll(0.05))  -- not all of it: none is read
    H.until_asleep(pid)            -- blocked in the middle of the message
    os.execute("kill -9 " .. pid)
    raises("EOFError", "connection closed in the middle of a message",
           c.recv_bytes, c)
    out:close()
  end)

  it("hold no more of a message than has come, whatever length it claims",
     function()
    local l <close> = mp.Listener("127.0.0.1:0")
    local port = l.address:match(":(%d+)$")
    -- A header claiming 1 TiB, 5 bytes of body, and the peer goes.
    os.execute(string.format("bash -c %s 2>/dev/null &", H.q(
      "exec 3<>/dev/tcp/127.0.0.1/" .. port
      .. [[ && printf '\377\377\377\377\0\0\1\0\0\0\0\0hello' >&3]])))
    local c = l:accept(10)
    raises("EOFError", "connection closed in the middle of a message",
           c.recv_bytes, c)
    c:close()
  end)

  it("serve 100 clients connected at once", function()
    local l <close> = mp.Listener("127.0.0.1:0")
    local code = string.format([[
      local mp = require "luamp"
      local cs = {}
      for i = 1, 100 do cs[i] = mp.Client(%q, {timeout = 10}) end
      for i = 1, 100 do cs[i]:send(i) end
      local sum = 0
      for i = 1, 100 do assert(cs[i]:poll(10)); sum = sum + cs[i]:recv() end
      io.write(sum)
    ]], l.address)
    local out = assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(code)))
    local conns = {}
    for i = 1, 100 do conns[i] = l:accept(10) end
    local got = 0
    while got < 100 do
      for _, c in ipairs(mp.wait(conns, 10)) do
        c:send(c:recv() * 2)
        c:close()
        got = got + 1
        for j, d in ipairs(conns) do
          if d == c then table.remove(conns, j) break end
        end
      end
    end
    assert.are.equal(tostring(2 * 5050), out:read("a"))
    assert.is_true(out:close())
  end)

  it("refuse bad addresses in Lua's words", function()
    assert.has_error(function() mp.Listener(5) end,
      "bad argument #1 to 'Listener' (string or {host, port} expected, "
      .. "got number)")
    assert.has_error(function() mp.Listener({"127.0.0.1", 70000}) end,
      "bad argument #1 to 'Listener' ({host, port} with a port from 0 to "
      .. "65535 expected)")
    assert.has_error(function() mp.Client("/nonexistent/luamp.sock") end,
      "cannot connect to /nonexistent/luamp.sock: No such file or directory")
    for _, addr in ipairs{"127.0.0.1:99999", "127.0.0.1:65536",
                          "127.0.0.1:80x", "127.0.0.1:-1"} do
      assert.has_error(function() mp.Listener(addr) end,
        "bad argument #1 to 'Listener' (\"host:port\" with a port from 0 "
        .. "to 65535 expected)", addr)
      assert.has_error(function() mp.Client(addr) end,
        "bad argument #1 to 'Client' (\"host:port\" with a port from 0 "
        .. "to 65535 expected)", addr)
    end
  end)

  it("refuse options they do not know, naming those they do", function()
    assert.has_error(function() mp.Listener("127.0.0.1:0", {backlg = 1}) end,
      "bad argument #2 to 'Listener' (unknown option 'backlg' (the options "
      .. "are backlog and authkey))")
    assert.has_error(function() mp.Client("127.0.0.1:1", {timout = 1}) end,
      "bad argument #2 to 'Client' (unknown option 'timout' (the options "
      .. "are timeout and authkey))")
    local l = mp.Listener("127.0.0.1:0", {backlog = 4})
    local c = mp.Client(l.address, {timeout = 5})
    local s = l:accept(5)
    c:send(1)
    assert.are.equal(1, s:recv())
    c:close()
    s:close()
    l:close()
  end)

  it("leaves its socket file to the process that made it", function()
    -- A child that closes its inherited copy removes nothing.
    local path = os.tmpname()
    os.remove(path)
    local l = mp.Listener(path)
    local p = H.spawn(function() l:close() end)
    H.finish(p)
    assert.are.equal("socket", require("lfs").attributes(path, "mode"),
      "the socket file was removed")
    local c = mp.Client(path)
    local s = l:accept()
    c:send("still here")
    assert.are.equal("still here", s:recv())
    c:close()
    s:close()
    l:close()
    assert.is_nil(require("lfs").attributes(path), "its maker's close "
      .. "removes it")
  end)

  it("has its socket file removed by a maker that leaves without closing it",
     function()
    local lfs = require "lfs"
    local path = os.tmpname()
    os.remove(path)
    -- A child that makes one and ends; the parent's, inherited, stays.
    local mine = mp.Listener(path .. ".parent")
    local p = H.spawn(function()
      local l = mp.Listener(path .. ".child")
      assert(l.address == path .. ".child")
    end)
    H.finish(p)
    assert.is_nil(lfs.attributes(path .. ".child"), "the child's file stayed")
    assert.are.equal("socket", lfs.attributes(path .. ".parent", "mode"))
    mine:close()
    -- A program that ends by os.exit, which closes nothing.
    local status, out, err = H.luamp_e(([[
      local mp = require "luamp"
      local l = mp.Listener(%q)
      io.write(require("lfs").attributes(%q, "mode"))
      os.exit(0)
    ]]):format(path, path))
    assert.are.same({0, "socket", ""}, {status, out, err})
    assert.is_nil(lfs.attributes(path), "os.exit left the file")
  end)
end)
