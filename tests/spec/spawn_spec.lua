-- spawn_spec.lua -- start methods: the API Python names them by; the
-- "spawn" method, whose child is a fresh run of the luamp command that
-- maps the family's arena and is given its Process object as a message;
-- and "forkserver", whose server, started as a spawned child is, forks
-- each child and is given the same message.

local mp = require "luamp"
local H = require "spec_helper"

-- A target reaches globals through upvalues: busted runs this file in an
-- environment of its own, which does not cross to another process.
local error, os, package, rawequal, rawget, require = error, os, package,
  rawequal, rawget, require
local G = _G

-- The built command, absolute: what a spawned child runs (under a stock
-- lua5.4 there is no host executable to run again).
local function built()
  local path = H.luamp
  if path:sub(1, 1) ~= "/" then path = os.getenv("PWD") .. "/" .. path end
  return path
end

describe("start methods", function()
  it("are named as Python names them", function()
    assert.are.same({"fork", "spawn", "forkserver"},
                    mp.get_all_start_methods())
    assert.is_nil(mp.get_start_method(true))
    assert.are.equal("fork", mp.get_start_method())
    assert.has_error(function() mp.set_start_method("spawn") end,
                     "context has already been set")
    mp.set_start_method("spawn", true)
    assert.are.equal("spawn", mp.get_start_method())
    mp.set_start_method(nil, true)
    assert.is_nil(mp.get_start_method(true))
    mp.set_start_method("fork")
    assert.has_error(function() mp.set_start_method("forks", true) end,
                     'cannot find context for "forks"')
    assert.has_error(function() mp.get_context(7) end,
      "bad argument #1 to 'get_context' (string expected, got number)")
    assert.are.equal("fork", mp.get_start_method())
  end)

  it("give contexts that share every object and start by their method",
     function()
    local ctx = mp.get_context("spawn")
    assert.are.equal(ctx, mp.get_context("spawn"))
    assert.are.equal("spawn", ctx.get_start_method())
    assert.are.equal("fork", mp.get_context().get_start_method())
    assert.are.equal(mp.Queue, ctx.Queue)
    assert.are.equal(mp.Value, ctx.Value)
    assert.has_error(function() ctx.Process{target = 5} end,
      "bad argument #1 to 'Process' (field 'target' is not callable "
      .. "(a number value))")
    -- As Python: a concrete context's method is its own for good.
    assert.has_error(function() ctx.set_start_method("forkserver") end,
      "cannot set start method of concrete context")
    assert.are.equal("spawn", ctx.get_start_method())
    assert.are.equal("fork", mp.get_start_method())
  end)
end)

local core = require "luamp.core"

-- Starts a process by the forkserver, so that its server runs: the
-- server's socket and slot are there before the leak checks count.
local function serve()
  local p = mp.get_context("forkserver").Process{target = function() end}
  p:start()
  p:join()
  return core.forkserver_pid()
end

-- Waits until pid is gone or a zombie: true if it went.
local function gone(pid)
  for _ = 1, 200 do
    local f = io.open("/proc/" .. pid .. "/stat")
    local state = f and f:read("a"):match("^%d+ %b() (%a)")
    if f then f:close() end
    if state == nil or state == "Z" then return true end
    mp.sleep(0.05)
  end
  return false
end

for _, method in ipairs({"spawn", "forkserver"}) do
describe("a Process started by " .. method, function()
  H.leakcheck()
  local spawn = mp.get_context(method)
  setup(function()
    mp.set_executable(built())
    if method == "forkserver" then serve() end
  end)

  it("is a fresh program that gets its target, upvalues and arguments",
     function()
    G.SPAWN_SPEC_MARK = "the parent's global"
    package.loaded.spawn_spec_module = {}
    local q = mp.Queue()
    local count = 10
    local function bump(k) count = count + k return count end
    local p = spawn.Process{target = function(q, x)
      q:put({rawget(G, "SPAWN_SPEC_MARK"),
             package.loaded.spawn_spec_module ~= nil, bump(x),
             mp.current_process().name, mp.parent_process().name,
             mp.parent_process().pid, mp.current_process().pid})
    end, args = {q, 5}, name = "spawned-one"}
    p:start()
    local r = q:get(20)
    assert.is_true(p:join(20))
    assert.are.equal(0, p.exitcode)
    assert.is_nil(r[1])         -- no global of the parent's
    assert.is_false(r[2])       -- no module of the parent's
    assert.are.equal(15, r[3])  -- its own copy of the upvalue
    assert.are.equal(10, count)
    assert.are.equal("spawned-one", r[4])
    assert.are.equal("MainProcess", r[5])
    assert.are.equal(mp.current_process().pid, r[6])
    assert.are.equal(p.pid, r[7])
    G.SPAWN_SPEC_MARK = nil
    package.loaded.spawn_spec_module = nil
    q:close()
  end)

  it("gets a C function by a name it has, whatever aliases the parent "
     .. "made", function()
    -- (A fresh program: its names are read at its first send.  With
    -- twenty modules that alias it, any order but Lua's libraries first
    -- would name it after one the child cannot load.)
    local status, out, err = H.luamp_e(([[
      local mp = require "luamp"
      mp.set_executable(%q)
      for i = 1, 20 do package.loaded["alias" .. i] = {fmt = string.format} end
      local fmt = string.format
      local q = mp.Queue()
      local p = mp.get_context(%q).Process{target = function(q)
        q:put(fmt("%%d-%%s", 7, "ok"))
      end, args = {q}}
      p:start()
      io.write(q:get(20), " ")
      p:join()
      local p2 = mp.get_context(%q).Process{target = string.format,
                                            args = {"%%d", 1}}
      p2:start()
      p2:join()
      io.write(p.exitcode, " ", p2.exitcode)
    ]]):format(built(), method, method), "timeout 60")
    assert.are.same({0, "7-ok 0 0", ""}, {status, out, err})
  end)

  it("has its parent's start method, as Python's does", function()
    local q = mp.Queue()
    local was = mp.get_start_method(true)
    mp.set_start_method(method, true)
    local p = spawn.Process{target = function(q)
      q:put(mp.get_start_method(true) or "none")
    end, args = {q}}
    p:start()
    local r = q:get(20)
    assert.is_true(p:join(20))
    mp.set_start_method(was, true)
    assert.are.equal(method, r)
    q:close()
  end)

  it("requires the module of a C function it is sent, as unpickling imports",
     function()
    local currentdir = require("lfs").currentdir
    local q = mp.Queue()
    local p = spawn.Process{target = function()
      q:put({currentdir(), package.loaded.lfs ~= nil})
    end}
    p:start()
    local r = q:get(20)
    assert.is_true(p:join(20))
    assert.are.same({currentdir(), true}, r)
    q:close()
  end)

  it("shares the family's objects: queues, values, dicts, locks", function()
    local v = mp.Value("q", 0)
    local d = mp.Dict()
    local lock = mp.Lock()
    local ps = {}
    for i = 1, 3 do
      ps[i] = spawn.Process{target = function()
        for _ = 1, 100 do v:add(1) end
        lock:with(function() d[i] = i * i end)
      end}
      ps[i]:start()
    end
    for _, p in ipairs(ps) do
      assert.is_true(p:join(20))
      assert.are.equal(0, p.exitcode)
    end
    assert.are.equal(300, v.value)
    assert.are.same({1, 4, 9}, {d[1], d[2], d[3]})
    d:close()
  end)

  it("holds the objects it is sent while the parent lets go of them",
     function()
    local q = mp.Queue()
    local d = mp.Dict()
    d.x = 5
    local p = spawn.Process{target = function(d) q:put(d.x) end, args = {d}}
    p:start()
    d = nil       -- the parent's last handle goes, before the child decodes
    collectgarbage()
    collectgarbage()
    assert.are.equal(5, q:get(20))
    assert.is_true(p:join(20))
    assert.are.equal(0, p.exitcode)
    q:close()
  end)

  it("ends as a fork does: exit codes, signals, sentinels, join", function()
    local p = spawn.Process{target = function() error("boom") end}
    local err = os.tmpname()
    p:start()
    assert.is_true(p:join(20))
    assert.are.equal(1, p.exitcode)
    p = spawn.Process{target = function() os.exit(7) end}
    p:start()
    p:join(20)
    assert.are.equal(7, p.exitcode)
    p = spawn.Process{target = function() mp.sleep(60) end}
    p:start()
    assert.is_false(p:join(0.05))
    assert.are.same({}, mp.wait({p}, 0))
    p:terminate()
    assert.are.same({p}, mp.wait({p}, 20))
    p:join()
    assert.are.equal(-15, p.exitcode)
    p = spawn.Process{target = function() mp.sleep(60) end}
    p:start()
    p:kill()
    p:join(20)
    assert.are.equal(-9, p.exitcode)
    os.remove(err)
  end)

  it("is handed the Connections it names, which are the same ones",
     function()
    local a, b = mp.Pipe()
    local r, w = mp.Pipe(false)
    local p = spawn.Process{target = function(c, again, out)
      local x = c:recv()
      c:send({x * 2, rawequal(c, again), out.readable, out.writable})
      out:send("one way")
    end, args = {b, b, w}}
    p:start()
    a:send(21)
    assert.is_true(a:poll(20), "no answer from the child")
    assert.are.same({42, true, false, true}, a:recv())
    assert.is_true(r:poll(20), "nothing on the one-way pipe")
    assert.are.equal("one way", r:recv())
    assert.is_true(p:join(20))
    assert.are.equal(0, p.exitcode)
    -- What the child sent and nobody read is released with the channel.
    b:send({mp.Queue()})
    for _, c in ipairs({a, b, r, w}) do c:close() end
    -- A closed one is named, and nothing starts.
    local c = select(2, mp.Pipe())
    c:close()
    p = spawn.Process{target = function() return c end}
    assert.has_error(function() p:start() end,
      "cannot send process.target<upvalue c>: a closed connection")
    assert.is_nil(p.pid)
  end)

  it("refuses a target it cannot send, by its path, and starts nothing",
     function()
    local co = coroutine.create(function() end)
    local p = spawn.Process{target = function() return co end}
    local before = mp.stats().processes
    assert.has_error(function() p:start() end,
      "cannot send process.target<upvalue co>: thread")
    assert.are.equal(before, mp.stats().processes)
    assert.are.same({}, mp.active_children())
  end)

  it("names a missing executable, and leaves no slot taken", function()
    local server = core.forkserver_pid()
    if server then -- a running server needs no executable: end it first
      os.execute("kill -9 " .. server)
      assert.is_true(gone(server))
      assert.is_nil(core.forkserver_pid()) -- reaped, its slot free
    end
    local before = mp.stats().processes
    mp.set_executable("/nonexistent/luamp")
    local p = spawn.Process{target = function() end}
    local ok, e = pcall(p.start, p)
    mp.set_executable(built())
    assert.is_false(ok)
    assert.matches((method == "spawn" and "cannot spawn a process: "
                    or "cannot start a forkserver: ") .. "/nonexistent/"
                   .. "luamp: No such file or directory", e, 1, true)
    assert.are.equal(before, mp.stats().processes)
    if server then serve() end
  end)

  it("dies with its parent", function()
    local code = string.format([[
      local mp = require "luamp"
      mp.set_executable(%q)
      local p = mp.get_context(%q).Process{target = function()
        mp.sleep(60)
      end}
      p:start()
      io.write(p.pid, "\n", require("luamp.core").forkserver_pid() or "",
               "\n")
      io.flush()
      mp.sleep(60)
    ]], built(), method)
    local out = assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(code)
                                .. " & echo $!"))
    local host = tonumber(out:read("l"))
    local child = tonumber(out:read("l"))
    local server = tonumber(out:read("l"))
    assert.is_truthy(host)
    assert.is_truthy(child)
    assert.are.equal(method == "forkserver", server ~= nil)
    os.execute("kill -9 " .. host)
    out:close()
    assert.is_true(gone(child), "the child outlived its parent")
    if server then
      assert.is_true(gone(server), "the forkserver outlived its parent")
    end
  end)
end)
end

describe("the forkserver", function()
  H.leakcheck()
  local fs = mp.get_context("forkserver")
  local dir
  setup(function()
    mp.set_executable(built())
    dir = os.tmpname()
    os.remove(dir)
    assert(require("lfs").mkdir(dir))
    H.writefile(dir .. "/fs_preloaded.lua",
                "return {pid = require('luamp').current_process().pid}")
    package.path = dir .. "/?.lua;" .. package.path
    serve()
  end)
  teardown(function()
    package.path = package.path:gsub("^[^;]*;", "")
    os.remove(dir .. "/fs_preloaded.lua")
    os.remove(dir)
    mp.set_forkserver_preload({})
  end)

  -- Ends the running server and waits until it is reaped.
  local function stop()
    local pid = core.forkserver_pid()
    if pid then
      os.execute("kill -9 " .. pid)
      assert.is_true(gone(pid))
      assert.is_nil(core.forkserver_pid())
    end
  end

  it("loads its preloaded modules once, for every child", function()
    stop()
    mp.set_forkserver_preload({"fs_preloaded", "fs_no_such_module"})
    local server = serve()
    local q = mp.Queue()
    local ps = {}
    for i = 1, 3 do
      ps[i] = fs.Process{target = function()
        local m = package.loaded.fs_preloaded
        q:put({m and m.pid, mp.current_process().pid})
      end}
      ps[i]:start()
    end
    for i = 1, 3 do
      local r = q:get(20)
      assert.are.equal(server, r[1]) -- loaded by the server, not the child
      assert.are_not.equal(server, r[2])
    end
    for _, p in ipairs(ps) do
      assert.is_true(p:join(20))
      assert.are.equal(0, p.exitcode)
    end
    q:close()
    mp.set_forkserver_preload({})
  end)

  it("checks the names it is given", function()
    assert.has_error(function() mp.set_forkserver_preload("x") end,
      "bad argument #1 to 'set_forkserver_preload' (table expected, got "
      .. "string)")
    assert.has_error(function() mp.set_forkserver_preload({"a", 5}) end,
      "bad argument #1 to 'set_forkserver_preload' (module name expected "
      .. "at [2], got number)")
  end)

  it("makes children of the process that asks, which outlive the server",
     function()
    local e = mp.Event()
    local server = core.forkserver_pid()
    local p = fs.Process{target = function() e:wait(20) os.exit(7) end}
    p:start()
    local f = assert(io.open("/proc/" .. p.pid .. "/stat"))
    local ppid = tonumber(f:read("a"):match("^%d+ %b() %a (%d+)"))
    f:close()
    assert.are.equal(mp.current_process().pid, ppid)
    stop()
    e:set()
    assert.is_true(p:join(20))
    assert.are.equal(7, p.exitcode)
    -- The next start makes a new server.
    p = fs.Process{target = function() end}
    p:start()
    assert.is_true(p:join(20))
    assert.are.equal(0, p.exitcode)
    assert.is_truthy(core.forkserver_pid())
    assert.are_not.equal(server, core.forkserver_pid())
  end)

  it("fails a start it dies in, clearly, and the next start works",
     function()
    local server = core.forkserver_pid()
    local before = mp.stats().processes
    os.execute("kill -STOP " .. server)
    local killer = mp.Process{target = function()
      mp.sleep(0.3)
      os.execute("kill -9 " .. server)
    end}
    killer:start()
    local t0 = mp.monotonic()
    local p = fs.Process{target = function() end}
    local ok, e = pcall(p.start, p)
    assert.is_false(ok)
    assert.are.equal("cannot start a process: the forkserver (pid " .. server
                     .. ") died while starting it", e)
    assert.is_true(mp.monotonic() - t0 >= 0.2)
    assert.is_true(killer:join(20))
    assert.are.equal(before - 1, mp.stats().processes) -- its slot too
    assert.is_nil(p.pid)
    p = fs.Process{target = function() end}
    p:start()
    assert.is_true(p:join(20))
    assert.are.equal(0, p.exitcode)
  end)

  -- A server stopped (SIGSTOP) never answers: Ctrl-C in the start that
  -- waits for it ends the server, raises, and the next start makes a new
  -- one.
  it("ends a start it does not answer on Ctrl-C", function()
    local status, out, err = H.luamp_e(H.CTRL_C .. [[
      local core = require "luamp.core"
      local fs = mp.get_context("forkserver")
      local p = fs.Process{target = function() end}
      p:start()
      p:join()
      local server = core.forkserver_pid()
      os.execute("kill -STOP " .. server)
      local late, killer, ok, e = interrupted(function()
        p = fs.Process{target = function() end}
        p:start()
      end)
      killer:terminate()
      killer:join()
      print(ok, type(e) == "table" and e.type, tostring(e), p.pid,
            late >= 0 and late < 10, state(server))
      p = fs.Process{target = function() os.exit(3) end}
      p:start()
      print(p:join(20), p.exitcode, core.forkserver_pid() ~= server)
    ]], "timeout -s KILL 60")
    assert.are.equal("false\tKeyboardInterrupt\tluamp.KeyboardInterrupt: "
      .. "interrupted\tnil\ttrue\tnil\ntrue\t3\ttrue\n", out, err)
    assert.are.equal(0, status, err)
  end)

  it("is not stopped by a Ctrl-C its group gets", function()
    local server = core.forkserver_pid()
    os.execute("kill -INT " .. server)
    local p = fs.Process{target = function() end}
    p:start()
    assert.is_true(p:join(20))
    assert.are.equal(0, p.exitcode)
    assert.are.equal(server, core.forkserver_pid())
  end)
end)
