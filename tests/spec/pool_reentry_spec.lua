-- pool_reentry_spec.lua -- the Pool's work runs during every luamp call
-- of its owner, those made from the Pool's own code included: an imap
-- input that blocks, an imap of an imap, finalizers of other pools,
-- callbacks that terminate or wait on their pool.  Each step of the Pool
-- completes before any of them can run Pool work again.  Also: what a task
-- prints survives the pool's end, and options are checked.

local mp = require "luamp"
local H = require "spec_helper"

local _G, assert, collectgarbage, io, os, pcall, table, tostring =
  _G, assert, collectgarbage, io, os, pcall, table, tostring

local function double(x) return 2 * x end

describe("Pool re-entered", function()
  H.leakcheck()

  describe("by an imap input that blocks in a luamp call", function()
    it("on a queue another process fills", function()
      local pool <close> = mp.Pool(2)
      local q = mp.Queue()
      local p = H.spawn(function()
        for i = 1, 30 do
          mp.sleep(0.002)
          q:put(i)
        end
        q:put(false)
      end)
      local input = function()
        local v = q:get(true, 10)
        if v then return v end
      end
      local got = {}
      for v in pool:imap(double, input) do got[#got + 1] = v end
      H.finish(p)
      assert.are.equal(30, #got)
      for i = 1, 30 do assert.are.equal(2 * i, got[i]) end
    end)

    it("in mp.sleep, unordered", function()
      local pool <close> = mp.Pool(2)
      local i = 0
      local input = function()
        i = i + 1
        mp.sleep(0.001)
        if i <= 25 then return i end
      end
      local got = {}
      for v in pool:imap_unordered(double, input) do got[#got + 1] = v end
      table.sort(got)
      assert.are.equal(25, #got)
      for k = 1, 25 do assert.are.equal(2 * k, got[k]) end
    end)
  end)

  it("by an imap whose input is another pool's imap", function()
    local a <close> = mp.Pool(1)
    local b <close> = mp.Pool(1)
    local got = {}
    for v in b:imap(double, a:imap(double, H.range(1, 40))) do
      got[#got + 1] = v
    end
    assert.are.equal(40, #got)
    for k = 1, 40 do assert.are.equal(4 * k, got[k]) end
  end)

  it("by an imap of the same pool inside its own input", function()
    local pool <close> = mp.Pool(2)
    local inner = pool:imap(double, H.range(1, 20))
    local got = {}
    for v in pool:imap(double, inner) do got[#got + 1] = v end
    assert.are.equal(20, #got)
    for k = 1, 20 do assert.are.equal(4 * k, got[k]) end
  end)

  it("by finalizers of pools dropped while another hands out tasks",
     function()
    local main <close> = mp.Pool(2)
    local rs, n = {}, H.rounds(200)
    for i = 1, n do
      local pool = mp.Pool(1)
      assert.are.equal(i, pool:apply(function(x) return x end, {i}))
      pool = nil
      rs[i] = main:apply_async(double, {i})
      if i % 16 == 0 then collectgarbage() end
    end
    collectgarbage()
    collectgarbage()
    for i = 1, n do assert.are.equal(2 * i, rs[i]:get(10)) end
    main:close()
    main:join()
    H.reaches(0, function() return #mp.active_children() end)
  end)

  it("by a callback that terminates the pool: the other results fail "
     .. "with ProcessError", function()
    local pool <close> = mp.Pool(2)
    local slow = pool:apply_async(mp.sleep, {30})
    local first = pool:apply_async(function() return 1 end, nil,
      function() pool:terminate() end)
    local ok, e = pcall(slow.get, slow, 10)
    assert.is_false(ok)
    assert.are.equal(mp.ProcessError, e.type)
    assert.are.equal("the pool was terminated", e.message)
    assert.are.equal(1, first:get())
  end)

  it("by a callback that starts a process, whose own pools then work",
     function()
    -- The child is forked from inside this process's pool work; its own
    -- pool's work runs in its waits all the same.
    local pool <close> = mp.Pool(1)
    local out = mp.Queue()
    local child
    local r = pool:apply_async(function() return 1 end, nil, function()
      child = mp.Process{target = function()
        local lp = mp.Pool(1)
        local q = mp.Queue()
        lp:apply_async(function() return "own" end, nil,
                       function(v) q:put(v) end)
        local ok, v = pcall(q.get, q, true, 10)
        out:put(ok and v or "its pool's callback never ran")
        lp:terminate()
      end}
      child:start()
    end)
    r:get(10)
    assert.are.equal("own", out:get(true, 20))
    child:join()
  end)

  it("by a callback that waits for another result of its pool", function()
    local pool <close> = mp.Pool(2)
    local later = pool:apply_async(function() mp.sleep(0.05); return "b" end)
    local got
    local first = pool:apply_async(function() return "a" end, nil,
      function(v) got = v .. later:get(10) end)
    assert.are.equal("a", first:get(10))
    H.reaches("ab", function() pool:apply(double, {1}); return got end)
  end)

  it("by a callback that raises: the error reaches the call, the other "
     .. "callbacks still run", function()
    local pool <close> = mp.Pool(1)
    local seen = {}
    local r1 = pool:apply_async(function() return 1 end, nil,
      function() error("from the callback", 0) end)
    local r2 = pool:apply_async(function() return 2 end, nil,
      function(v) seen[#seen + 1] = v end)
    local ok, e = pcall(r2.get, r2, 10)
    if ok then -- r2 was ready before the first callback ran
      ok, e = pcall(r1.get, r1, 10)
    end
    assert.are.equal(1, r1:get())
    H.reaches(1, function()
      pool:apply(double, {1})
      return #seen
    end)
    assert.are.equal(2, seen[1])
    assert.are.equal("from the callback", e)
  end)

  it("by a callback that raises during a submission: every task that "
     .. "runs has its handle, and the error comes once", function()
    -- The error of a callback run after a task went in is raised by the
    -- pool's next call, before that call submits anything.
    local pool <close> = mp.Pool(2)
    local runs = mp.Value("i", 0)
    local first = true
    local function cb()
      if first then
        first = false
        error("callback boom", 0)
      end
    end
    local handles, errs = {}, {}
    for _ = 1, 200 do
      local ok, r = pcall(pool.apply_async, pool,
        function() runs:add(1) end, {}, cb)
      if ok then handles[#handles + 1] = r else errs[#errs + 1] = r end
    end
    for _, r in ipairs(handles) do
      local ok, e = pcall(r.get, r, 10)
      if not ok then errs[#errs + 1] = e end
    end
    pool:close()
    pool:join()
    assert.are.same({"callback boom"}, errs)
    assert.are.equal(#handles, runs.value)
    assert.is_true(#handles >= 199, #handles .. " handles")
  end)

  it("by an apply while another's arguments are encoded: both whole",
     function()
    -- Asking whether the arguments' metatable has a __gc runs this
    -- __index, which submits to the same pool in the middle of the first
    -- apply.  The metatable is registered by its name (before the workers
    -- fork), so it is sent by name, and its __index is not.
    local NAME = "luamp.spec.reentry"
    local reg = debug.getregistry()
    local meta = {__name = NAME}
    reg[NAME] = meta
    local pool <close> = mp.Pool(1)
    local function echo(...) return ... end -- (no upvalue: known by
    pool:apply(echo, {0})                   -- identity from now on)
    local nested
    setmetatable(meta, {__index = function(_, k)
      if k == "__gc" then
        nested = nested or pool:apply_async(echo, {"nested", 1})
      end
    end})
    -- Small arguments, and large ones (a Message of their own).
    for _, big in ipairs{"", string.rep("z", 64 << 10)} do
      nested = nil
      local r = pool:apply_async(echo, setmetatable({"outer", big}, meta))
      assert.are.same({"outer", big}, {r:get(10)})
      assert.are.same({"nested", 1}, {nested:get(10)})
    end
    reg[NAME] = nil
  end)
end)

describe("Pool output", function()
  -- A job whose tasks write to stdout without flushing, then ends its
  -- pool as `how` says; returns what reached stdout.
  local function job(how)
    local status, out, err = H.luamp_e([[
local mp = require "luamp"
io.stdout:setvbuf("full")
]] .. how .. [[
]])
    assert.are.equal(0, status, err)
    return out
  end

  local tasks = [[
local rs = {}
for i = 1, 6 do
  rs[i] = pool:apply_async(function(k) io.write("task ", k, "\n") end, {i})
end
for i = 1, 6 do rs[i]:get(10) end
]]

  it("survives terminate", function()
    local out = job("local pool = mp.Pool(2)\n" .. tasks
                    .. "pool:terminate()\n")
    for i = 1, 6 do assert.matches("task " .. i .. "\n", out, 1, true) end
  end)

  it("survives <close>", function()
    local out = job("do local pool <close> = mp.Pool(2)\n" .. tasks
                    .. "end\n")
    for i = 1, 6 do assert.matches("task " .. i .. "\n", out, 1, true) end
  end)

  it("survives the collector", function()
    local out = job("do local pool = mp.Pool(2)\n" .. tasks
                    .. "end\ncollectgarbage() collectgarbage()\n")
    for i = 1, 6 do assert.matches("task " .. i .. "\n", out, 1, true) end
  end)
end)

describe("Options", function()
  H.leakcheck()

  it("of mp.Pool: an unknown one is named", function()
    assert.are.equal("bad argument #1 to 'Pool' (unknown option 'proceses' "
      .. "(did you mean 'processes'?))",
      H.errmsg(mp.Pool, {proceses = 1}))
    assert.are.equal("bad argument #1 to 'Pool' (unknown option 'size')",
      H.errmsg(mp.Pool, {size = 1}))
    assert.are.equal("bad argument #1 to 'Pool' (processes must be an "
      .. "integer, got 1.5)", H.errmsg(mp.Pool, 1.5))
    assert.are.equal(0, #mp.active_children())
  end)

  it("of map-like calls: an unknown one is named", function()
    local pool <close> = mp.Pool(1)
    assert.are.equal("bad argument #3 to 'map' (unknown option 'chunksze' "
      .. "(did you mean 'chunksize'?))",
      H.errmsg(pool.map, pool, double, {1}, {chunksze = 1}))
    assert.are.equal("bad argument #3 to 'imap' (unknown option 'ordered')",
      H.errmsg(pool.imap, pool, double, {1}, {ordered = true}))
    assert.are.same({2, n = 1}, pool:map(double, {1}, {chunksize = 1}))
  end)

  it("of mp.Process: a misspelt one is named, other fields are the "
     .. "object's", function()
    assert.are.equal("bad argument #1 to 'Process' (unknown option 'deamon' "
      .. "(did you mean 'daemon'?))",
      H.errmsg(mp.Process, {target = print, deamon = true}))
    assert.are.equal("bad argument #1 to 'Process' (unknown option 'taget' "
      .. "(did you mean 'target'?))",
      H.errmsg(mp.Process, {taget = print}))
    -- A positional value, meant as target = print, is no field either.
    assert.are.equal("bad argument #1 to 'Process' (unknown option [1] "
      .. "(options are named))", H.errmsg(mp.Process, {print}))
    assert.are.equal("bad argument #1 to 'Pool' (unknown option [1] "
      .. "(options are named))", H.errmsg(mp.Pool, {2}))
    local p = mp.Process{target = print, names = {"a"}, greeting = "hi"}
    assert.are.same({"a"}, p.names)
    assert.are.equal("hi", p.greeting)
    p:close()
  end)

  it("of mp.Queue: maxsize is an integer", function()
    assert.matches("bad argument #1 to '[%w_.]*Queue' %(number has no "
      .. "integer representation%)", H.errmsg(mp.Queue, 1.5))
  end)
end)
