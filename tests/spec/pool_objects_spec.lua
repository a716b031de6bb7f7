-- pool_objects_spec.lua -- shared objects on every route of a Pool: task
-- arguments, results, task functions' upvalues, initargs, map items and
-- results.  Each object is made inline by its sender, which drops every
-- handle and collects garbage before the receiver uses it; the receiver
-- checks the object's identity (`==` a handle kept elsewhere, when there
-- is one) and its contents.  The leak check after each test proves that
-- nothing is left once the messages are gone.

local mp = require "luamp"
local H = require "spec_helper"

-- Tasks travel with their upvalues; what they use from the globals is a
-- local here (busted runs this file in its own _ENV).
local _G, assert, collectgarbage, getmetatable, os, table =
  _G, assert, collectgarbage, getmetatable, os, table

describe("Pool with shared objects", function()
  H.leakcheck()

  describe("as task arguments", function()
    it("keeps each alive until its task has run, though the owner dropped "
       .. "it", function()
      local pool <close> = mp.Pool(2)
      local rs = {}
      for i = 1, 50 do
        rs[i] = pool:apply_async(function(d, k)
          d.v = k
          return d.v
        end, {mp.Dict(), i})
      end
      collectgarbage()
      collectgarbage()
      for i = 1, 50 do assert.are.equal(i, rs[i]:get(10)) end
    end)

    it("arrive as the same objects", function()
      local pool <close> = mp.Pool(1)
      local d, q = mp.Dict{a = 1}, mp.Queue()
      local back, back_q = pool:apply(function(x, y) return x, y end, {d, q})
      assert.are.equal(d, back)
      assert.are.equal(q, back_q)
      assert.are.equal(1, back.a)
    end)

    it("200 tasks, each with a fresh List", function()
      local pool <close> = mp.Pool(2)
      local rs = {}
      for i = 1, 200 do
        rs[i] = pool:apply_async(function(l, k)
          l:append(k)
          return #l, l[1]
        end, {mp.List{"first"}, i})
        if i % 50 == 0 then collectgarbage() end
      end
      for i = 1, 200 do
        local n, first = rs[i]:get(10)
        assert.are.equal(2, n)
        assert.are.equal("first", first)
      end
    end)
  end)

  describe("as results", function()
    it("a Queue outlives the worker that made it (maxtasksperchild = 1)",
       function()
      local pool <close> = mp.Pool{processes = 1, maxtasksperchild = 1}
      local r = pool:apply_async(function()
        local q = mp.Queue()
        q:put("made in the worker")
        return q
      end)
      local q = r:get(10)
      -- The worker has left; a new one runs the next task.
      assert.are.equal(2, pool:apply(function() return 2 end))
      collectgarbage()
      assert.are.equal("made in the worker", q:get(true, 5))
      q:close()
    end)

    it("a Dict survives a worker that collects garbage between tasks",
       function()
      local pool <close> = mp.Pool(1)
      local d = pool:apply(function()
        local d = mp.Dict{k = "v"}
        return d
      end)
      pool:apply(function()
        collectgarbage()
        collectgarbage()
      end)
      collectgarbage()
      assert.are.equal("v", d.k)
      d:close()
    end)

    it("a result kept undecoded holds its objects until it is read",
       function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(function() return {mp.Value("i", 7)} end)
      assert.is_true(r:wait(10))
      pool:apply(function() collectgarbage() end)
      collectgarbage()
      assert.are.equal(7, r:get()[1].value)
    end)
  end)

  describe("in task functions", function()
    it("an upvalue the owner has dropped stays alive while the function is "
       .. "in use", function()
      local pool <close> = mp.Pool(1)
      local r
      do
        local q = mp.Queue()
        q:put("in the upvalue")
        r = pool:apply_async(function() return q:get(true, 5) end)
      end
      collectgarbage()
      collectgarbage()
      assert.are.equal("in the upvalue", r:get(10))
    end)

    it("the same object is reached by every task of the function",
       function()
      local pool <close> = mp.Pool(2)
      local v = mp.Value("q", 0)
      local rs = {}
      for i = 1, 20 do rs[i] = pool:apply_async(function() return v:add(1) end) end
      for i = 1, 20 do rs[i]:get(10) end
      assert.are.equal(20, v.value)
    end)
  end)

  describe("in maps", function()
    it("items and results are the same objects, in order", function()
      local pool <close> = mp.Pool(2)
      local objs = {}
      for i = 1, 12 do objs[i] = mp.Dict{i = i} end
      local back = pool:map(function(d) d.seen = true; return d end, objs, 3)
      for i = 1, 12 do
        assert.are.equal(objs[i], back[i])
        assert.is_true(back[i].seen)
      end
    end)

    it("imap items made inline are alive when their chunk runs", function()
      local pool <close> = mp.Pool(2)
      local i = 0
      local input = function()
        i = i + 1
        if i <= 20 then
          collectgarbage()
          return mp.Queue()
        end
      end
      local n = 0
      for got in pool:imap(function(q)
        q:put(1)
        return q:qsize()
      end, input) do
        assert.are.equal(1, got)
        n = n + 1
      end
      assert.are.equal(20, n)
    end)
  end)

  describe("as initargs", function()
    it("reach every worker's initializer", function()
      local q = mp.Queue()
      local pool <close> = mp.Pool{processes = 2,
        initializer = function(qq) _G.init_queue = qq end, initargs = {q}}
      q = nil
      collectgarbage()
      local rs = {}
      for k = 1, 4 do
        rs[k] = pool:apply_async(function(x)
          _G.init_queue:put(x)
          return true
        end, {k})
      end
      q = pool:apply(function() return _G.init_queue end)
      for k = 1, 4 do assert.is_true(rs[k]:get(10)) end
      local got = {}
      for _ = 1, 4 do got[#got + 1] = q:get(true, 5) end
      table.sort(got)
      assert.are.same({1, 2, 3, 4}, got)
    end)
  end)

  describe("when a worker goes idle", function()
    -- Its last tasks' arguments, results and dropped functions are
    -- garbage there: it collects them, so the objects they named go as
    -- soon as the owner lets go of them too, not at the worker's next
    -- collection, which an idle worker never reaches.
    it("lets go of the objects its tasks named", function()
      local pool <close> = mp.Pool(1)
      local base = mp.stats().objects
      do
        local d, q = mp.Dict{a = 1}, mp.Queue()
        assert.are.equal(1, pool:apply(function(x, y)
          return x.a, y
        end, {d, q}))
        local l = mp.List{"upvalue"}
        assert.are.equal("upvalue", pool:apply(function() return l[1] end))
        assert.are.equal(base + 3, mp.stats().objects)
      end
      collectgarbage()
      collectgarbage()
      -- The function with the List is dropped from the worker's cache
      -- with the next batch.
      assert.are.equal(4, pool:apply(function() return 4 end))
      H.wait_for(function() return mp.stats().objects == base end, 10, 0.01)
      assert.are.equal(base, mp.stats().objects)
    end)
  end)

  describe("when a worker is killed", function()
    it("its task's objects are released with it", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(function(d)
        d.x = 1
        os.execute("kill -9 " .. mp.current_process().pid)
      end, {mp.Dict()})
      local ok, e = pcall(r.get, r, 10)
      assert.is_false(ok)
      assert.are.equal(mp.WorkerLostError, e.type)
      assert.are.equal(3, pool:apply(function() return 3 end))
    end)
  end)

  describe("Messages", function()
    local core = require "luamp.core"

    it("hold what they name until they are closed", function()
      local before = mp.stats().objects
      local m = core.message({mp.Queue(), {mp.Lock()}})
      collectgarbage()
      collectgarbage()
      assert.are.equal(before + 2, mp.stats().objects)
      local v = core.decode(m)
      assert.are.equal("luamp.Queue", getmetatable(v[1]).__name)
      m:close()
      v = nil
      collectgarbage()
      collectgarbage()
      assert.are.equal(before, mp.stats().objects)
      assert.has_error(function() core.decode(m) end,
        "attempt to use a closed message")
    end)

    it("release what they name when collected; a plain one needs no "
       .. "finalizer", function()
      local before = mp.stats().objects
      do
        local m = core.message({mp.Queue()})
        assert.is_function(getmetatable(m).__gc)
      end
      collectgarbage()
      collectgarbage()
      assert.are.equal(before, mp.stats().objects)
      -- A message of plain values owns nothing but its bytes: it is a
      -- Message like any other, without a __gc to call.
      local p = core.message({1, "two", {3}})
      assert.are.equal("luamp.Message", getmetatable(p).__name)
      assert.is_nil(getmetatable(p).__gc)
      assert.are.same({1, "two", {3}}, core.decode(p))
      do
        local c <close> = p
      end
      assert.are.equal("luamp.Message (closed)", tostring(p))
      assert.has_error(function() core.decode(p) end,
        "attempt to use a closed message")
    end)

    it("travel inside another message and through a queue as they are",
       function()
      local q = mp.Queue()
      local d = mp.Dict{a = 1}
      q:put({tag = "outer", inner = core.message(d)})
      collectgarbage()
      local got = q:get(true, 5)
      assert.are.equal("luamp.Message", getmetatable(got.inner).__name)
      assert.are.equal(d, core.decode(got.inner))
      got.inner:close()
    end)

    -- Long strings and long Messages are copied once, straight from where
    -- they are into the message being made; at most 16 a message, the
    -- rest with the other bytes.  Each must land in its place.
    it("keep long strings and long Messages whole and in order, however "
       .. "many", function()
      local function long(i, n)
        return string.char(64 + i) .. ("x"):rep(n - 2) .. string.char(96 + i)
      end
      local strs = {n = 20}
      for i = 1, 20 do strs[i] = long(i, (16 << 10) + i * 1000) end
      strs[7] = "short"
      local d = mp.Dict{k = 1}
      local m = core.message({strs, d, tail = long(26, 40000)})
      assert.are.equal(1, m:objects())
      local back = core.decode(m)
      assert.are.same(strs, back[1])
      assert.are.equal(d, back[2])
      assert.are.equal(long(26, 40000), back.tail)
      -- Long Messages inside a Message, and inside a queue's message,
      -- themselves holding long strings and a shared object.
      local inner = {}
      for i = 1, 18 do
        inner[i] = core.message(i % 5 == 0 and {long(i, 70000), d}
                                or long(i, 20000 + i))
      end
      local outer = core.message({inner, last = core.message("short")})
      assert.are.equal(3, outer:objects()) -- inner 5, 10 and 15
      local q = mp.Queue()
      q:put({outer = outer, inner = inner})
      for _, im in ipairs(inner) do im:close() end
      outer:close()
      collectgarbage()
      local got = q:get(true, 5)
      local o = core.decode(got.outer)
      for i = 1, 18 do
        local v = core.decode(o[1][i])
        local w = core.decode(got.inner[i])
        if i % 5 == 0 then
          assert.are.equal(long(i, 70000), v[1])
          assert.are.equal(d, v[2])
          assert.are.equal(long(i, 70000), w[1])
          assert.are.equal(d, w[2])
        else
          assert.are.equal(long(i, 20000 + i), v)
          assert.are.equal(long(i, 20000 + i), w)
        end
        o[1][i]:close()
        got.inner[i]:close()
      end
      assert.are.equal("short", core.decode(o.last))
      o.last:close()
      got.outer:close()
    end)
  end)
end)
