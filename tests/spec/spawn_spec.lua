-- spawn_spec.lua -- start methods: the API Python names them by, and the
-- "spawn" method, whose child is a fresh run of the luamp command that
-- maps the family's arena and is given its Process object as a message.

local mp = require "luamp"
local H = require "spec_helper"

-- A target reaches globals through upvalues: busted runs this file in an
-- environment of its own, which does not cross to another process.
local error, os, package, rawget = error, os, package, rawget
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
    assert.are.same({"fork", "spawn"}, mp.get_all_start_methods())
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
  end)
end)

describe("a spawned Process", function()
  H.leakcheck()
  local spawn = mp.get_context("spawn")
  setup(function() mp.set_executable(built()) end)

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
    local before = mp.stats().processes
    mp.set_executable("/nonexistent/luamp")
    local p = spawn.Process{target = function() end}
    local ok, e = pcall(p.start, p)
    mp.set_executable(built())
    assert.is_false(ok)
    assert.matches("cannot spawn a process: /nonexistent/luamp: No such "
                   .. "file or directory", e, 1, true)
    assert.are.equal(before, mp.stats().processes)
  end)

  it("dies with its parent", function()
    local code = string.format([[
      local mp = require "luamp"
      mp.set_executable(%q)
      local p = mp.get_context("spawn").Process{target = function()
        mp.sleep(60)
      end}
      p:start()
      io.write(p.pid, "\n")
      io.flush()
      mp.sleep(60)
    ]], built())
    local out = assert(io.popen(H.q(H.luamp) .. " -e " .. H.q(code)
                                .. " & echo $!"))
    local host = tonumber(out:read("l"))
    local child = tonumber(out:read("l"))
    assert.is_truthy(host)
    assert.is_truthy(child)
    os.execute("kill -9 " .. host)
    out:close()
    local gone = false
    for _ = 1, 200 do
      local f = io.open("/proc/" .. child .. "/stat")
      local state = f and f:read("a"):match("^%d+ %b() (%a)")
      if f then f:close() end
      if state == nil or state == "Z" then
        gone = true
        break
      end
      mp.sleep(0.05)
    end
    assert.is_true(gone, "the spawned child outlived its parent")
  end)
end)
