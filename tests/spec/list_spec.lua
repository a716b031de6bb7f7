-- list_spec.lua -- List: 1-based indexing as with a table, every method
-- with its exact results and errors, equality by content, values copied in
-- and out, appends from many processes at once, memory given back, and a
-- list as a shared object that travels and nests.  Every child is a fork
-- of the test process; a test that waits on a child always does so with a
-- timeout.

local mp = require "luamp"
local H = require "spec_helper"
local spawn, finish = H.spawn, H.finish
local took, errmsg, range = H.took, H.errmsg, H.range

describe("List", function()
  H.leakcheck()

  describe("constructor", function()
    it("makes an empty list", function()
      local l = mp.List()
      assert.are.equal(0, #l)
      assert.are.same({n = 0}, l:totable())
      l:close()
    end)

    it("starts with the items of a table given, n included", function()
      local l = mp.List{"a", {1}, 3.5, false}
      assert.are.equal(4, #l)
      assert.are.same({"a", {1}, 3.5, false, n = 4}, l:totable())
      l:close()
      l = mp.List(table.pack(1, nil, 3))
      assert.are.equal(3, #l)
      assert.is_nil(l[2])
      assert.are.equal(3, l[3])
      l:close()
    end)

    it("copies another List's items, as Python's list(l) does", function()
      local src = mp.List{1, {2}, 3}
      local l = mp.List(src)
      assert.are.same({1, {2}, 3, n = 3}, l:totable())
      l:append(4)
      assert.are.equal(3, #src)
      local m <close> = mp.Manager()
      assert.are.same({1, {2}, 3, n = 3}, m:list(src):totable())
    end)

    it("rejects an argument that is neither a table nor nil", function()
      assert.has_error(function() mp.List(5) end,
        "bad argument #1 to 'List' (table or List expected, got number)")
      assert.has_error(function() mp.List("abc") end,
        "bad argument #1 to 'List' (table or List expected, got string)")
    end)

    it("shows its length, and (closed) once closed", function()
      local l = mp.List{1, 2}
      assert.matches("^luamp%.List %(0x%x+, 2 items%)$", tostring(l))
      l:close()
      assert.are.equal("luamp.List (closed)", tostring(l))
    end)

    it("refuses every use once closed", function()
      local l = mp.List{1}
      l:close()
      local CLOSED = "attempt to use a closed list"
      assert.has_error(function() return l[1] end, CLOSED)
      assert.has_error(function() l[1] = 2 end, CLOSED)
      assert.has_error(function() return #l end, CLOSED)
      assert.has_error(function() l:append(1) end, CLOSED)
      assert.has_error(function() return l:totable() end, CLOSED)
    end)

    it("can be closed again, as often as one likes", function()
      local l = mp.List{1}
      l:close()
      assert.has_no_error(function() l:close() end)
      assert.has_no_error(function() l:close() end)
      assert.are.equal("luamp.List (closed)", tostring(l))
    end)
  end)

  describe("indexing", function()
    it("is 1-based, and gives nil outside 1 .. #l", function()
      local l = mp.List{"a", "b", "c"}
      assert.are.same({"a", "b", "c"}, {l[1], l[2], l[3]})
      assert.are.equal("a", l[1.0])
      assert.is_nil(l[0])
      assert.is_nil(l[4])
      assert.is_nil(l[-1])
      assert.is_nil(l[1.5])
      assert.is_nil(l[math.maxinteger])
      assert.is_nil(l["1"])
      assert.is_nil(l[true])
      l:close()
    end)

    it("l[i] = v replaces, and l[#l + 1] = v appends", function()
      local l = mp.List{1, 2, 3}
      l[2] = "two"
      l[#l + 1] = 4
      l[#l + 1] = {5}
      assert.are.same({1, "two", 3, 4, {5}, n = 5}, l:totable())
      l:close()
    end)

    it("raises for a write further out", function()
      local l = mp.List{1, 2, 3}
      assert.are.equal("bad argument #2 to 'newindex' (index 5 out of range "
        .. "(list has 3 items))", errmsg(function() l[5] = 1 end))
      assert.are.equal("bad argument #2 to 'newindex' (index 0 out of range "
        .. "(list has 3 items))", errmsg(function() l[0] = 1 end))
      assert.are.equal("bad argument #2 to 'newindex' (index -1 out of range "
        .. "(list has 3 items))", errmsg(function() l[-1] = 1 end))
      assert.are.equal("bad argument #2 to 'newindex' (number expected, got "
        .. "string)", errmsg(function() l.x = 1 end))
      assert.are.same({1, 2, 3, n = 3}, l:totable())
      l:close()
    end)

    it("names a float index in its error", function()
      local l = mp.List{1, 2, 3}
      assert.matches("1%.5", errmsg(function() l[1.5] = 1 end))
      assert.are.same({1, 2, 3, n = 3}, l:totable())
      l:close()
    end)

    it("methods come first by name", function()
      local l = mp.List()
      assert.are.equal("function", type(l.append))
      assert.are.equal("function", type(l.pop))
      assert.is_nil(l.nosuchmethod)
      l:close()
    end)
    it("stays whole when a finalizer stores in the same handle during a "
       .. "read", function()
      local l = mp.List{{1, string.rep("x", 200), {a = 1}}, 0}
      local bad, first = H.finalizer_inside(20000, function() return l[1] end,
        function() l[2] = {string.rep("r", 300)} end,
        function(v)
          return type(v) == "table" and v[2] == string.rep("x", 200)
            and v[3].a == 1
        end)
      assert.are.equal(0, bad, tostring(first))
      l:close()
    end)
  end)

  describe("values", function()
    it("cross between processes exactly", function()
      local l = mp.List()
      local q = mp.Queue()
      finish(spawn(function()
        l:extend(table.pack(nil, true, 0, math.mininteger, 1.0, -0.0, 0 / 0,
                            "a\0b", ("z"):rep(40000), {1, {2}, k = "v"}, q))
        local n = 0
        l:append(function() n = n + 1; return n end)
      end))
      assert.are.equal(12, #l)
      local t = l:totable()
      assert.are.equal(12, t.n)
      assert.is_nil(t[1])
      assert.is_true(t[2])
      assert.are.equal("integer", math.type(t[3]))
      assert.are.equal(math.mininteger, t[4])
      assert.are.equal("float", math.type(t[5]))
      assert.are.equal(-1 / 0, 1 / t[6])
      assert.is_true(t[7] ~= t[7])
      assert.are.equal("a\0b", t[8])
      assert.are.equal(("z"):rep(40000), t[9])
      assert.are.same({1, {2}, k = "v"}, t[10])
      assert.are.equal(q, t[11])
      assert.are.equal(1, t[12]())
      assert.are.equal(1, l[12](), "the stored closure was changed")
      l:close()
      q:close()
    end)

    it("are copied in and out: a table read changes nothing until stored",
       function()
      local l = mp.List()
      local t = {x = 1}
      l:append(t)
      t.x = 2
      assert.are.equal(1, l[1].x)
      local r = l[1]
      r.x = 3
      assert.are.equal(1, l[1].x)
      assert.is_false(rawequal(l[1], l[1]))
      l[1] = r
      assert.are.equal(3, l[1].x)
      local tt = l:totable()
      tt[1].x = 4
      tt[2] = "extra"
      assert.are.equal(3, l[1].x)
      assert.are.equal(1, #l)
      l:close()
    end)

    it("that cannot be sent raise and leave the list unchanged", function()
      local l = mp.List{1}
      assert.has_error(function() l:append(coroutine.create(print)) end,
        "cannot send value: thread")
      assert.has_error(function() l[1] = {f = io.stdout} end,
        "cannot send value.f: userdata (FILE*)")
      assert.has_error(function() l:insert(1, {1, {io.stderr}}) end,
        "cannot send value[2][1]: userdata (FILE*)")
      assert.are.same({1, n = 1}, l:totable())
      l:close()
    end)
  end)

  describe("ipairs", function()
    it("walks the items in order and stops at the end", function()
      local l = mp.List{10, 20, 30}
      local got = {}
      for i, v in ipairs(l) do got[#got + 1] = {i, v} end
      assert.are.same({{1, 10}, {2, 20}, {3, 30}}, got)
      l:close()
    end)

    it("and pairs walk it as a table's, pairs leaving out nils",
       function()
      local l = mp.List{10, nil, 30, n = 3}
      local got = {}
      for i, v in pairs(l) do got[#got + 1] = {i, v} end
      assert.are.same({{1, 10}, {3, 30}}, got)
      l:close()
    end)

    it("reads each item when it reaches it", function()
      local l = mp.List(range(0, 9))
      local f, s, i = ipairs(l)
      l[1] = 100
      assert.are.same({1, 100}, {f(s, i)})
      l:close()
    end)
  end)

  describe("append and extend", function()
    it("append adds one item and returns nothing", function()
      local l = mp.List()
      assert.are.equal(0, select("#", l:append("a")))
      l:append({1})
      l:append(nil)
      assert.are.equal(3, #l)
      assert.are.same({"a", {1}, nil, n = 3}, l:totable())
      assert.has_error(function() l:append() end,
        "bad argument #1 to 'append' (value expected)")
      l:close()
    end)

    it("extend adds the items of a table, up to n when it has one",
       function()
      local l = mp.List{0}
      l:extend{1, 2}
      l:extend(table.pack(3, nil))
      l:extend{}
      assert.are.same({0, 1, 2, 3, nil, n = 5}, l:totable())
      assert.has_error(function() l:extend(5) end,
        "bad argument #1 to 'extend' (table or List expected, got number)")
      local d = mp.Dict()
      assert.has_error(function() l:extend(d) end,
        "bad argument #1 to 'extend' (table or List expected, got luamp.Dict)")
      d:close()
      l:close()
    end)

    it("extend adds the items of another List, or of itself", function()
      local l, o = mp.List{0}, mp.List{1, {2}}
      l:extend(o)
      assert.are.same({0, 1, {2}, n = 3}, l:totable())
      l:extend(l)
      assert.are.same({0, 1, {2}, 0, 1, {2}, n = 6}, l:totable())
      assert.are.same({1, {2}, n = 2}, o:totable())
      l:close()
      o:close()
    end)

    it("extend with an item that cannot be sent raises naming it, and "
       .. "adds nothing", function()
      local l = mp.List{0}
      assert.has_error(function() l:extend{1, 2, 3, 4, io.stdout} end,
        "cannot send value[5]: userdata (FILE*)")
      assert.has_error(function() l:extend{1, {f = {io.stderr}}} end,
        "cannot send value[2].f[1]: userdata (FILE*)")
      assert.are.same({0, n = 1}, l:totable())
      l:close()
    end)

    it("extend is seen by another process all at once", function()
      local l, n = mp.List(), 400
      local items = range(1, n)
      local stop = mp.Value("i", 0)
      local p = spawn(function()
        while stop.value == 0 do
          l:extend(items)
          l:clear()
        end
      end)
      local bad, reads, t0 = {}, 0, mp.monotonic()
      while mp.monotonic() - t0 < 0.5 do
        local k = #l
        local t = l:totable()
        reads = reads + 1
        if k ~= 0 and k ~= n then bad[#bad + 1] = "#l " .. k end
        if t.n ~= 0 and t.n ~= n then bad[#bad + 1] = "totable " .. t.n end
      end
      stop.value = 1
      finish(p)
      assert.are.equal(0, #bad, #bad .. " of " .. reads .. " reads saw part"
        .. " of an extend: " .. table.concat(bad, ", ", 1, math.min(5, #bad)))
      l:close()
    end)

    it("extend from two processes at once keeps each one's items together",
       function()
      local l, n = mp.List(), 500
      local go = mp.Event()
      local ps = {}
      for id = 1, 2 do
        ps[id] = spawn(function()
          local t = {}
          for i = 1, n do t[i] = id end
          go:wait(10)
          for _ = 1, 20 do l:extend(t) end
        end)
      end
      go:set()
      for id = 1, 2 do finish(ps[id]) end
      local t = l:totable()
      assert.are.equal(40 * n, t.n)
      for at = 1, t.n, n do
        for i = at + 1, at + n - 1 do
          assert(t[i] == t[at], "items of two extends mixed at " .. i)
        end
      end
      l:close()
    end)
  end)

  describe("insert", function()
    it("puts an item before position i, 1 .. #l + 1", function()
      local l = mp.List{"b", "d"}
      l:insert(1, "a")
      l:insert(3, "c")
      l:insert(#l + 1, "e")
      assert.are.same({"a", "b", "c", "d", "e", n = 5}, l:totable())
      for i = 1, 50 do l:insert(1, i) end
      assert.are.equal(55, #l)
      assert.are.equal(50, l[1])
      assert.are.equal("e", l[55])
      l:close()
    end)

    it("raises for a position outside 1 .. #l + 1", function()
      local l = mp.List{1, 2}
      assert.has_error(function() l:insert(0, "x") end,
        "bad argument #1 to 'insert' (index 0 out of range (list has 2 "
        .. "items))")
      assert.has_error(function() l:insert(4, "x") end,
        "bad argument #1 to 'insert' (index 4 out of range (list has 2 "
        .. "items))")
      assert.has_error(function() l:insert(-1, "x") end,
        "bad argument #1 to 'insert' (index -1 out of range (list has 2 "
        .. "items))")
      assert.has_error(function() l:insert("a", "x") end,
        "bad argument #1 to 'insert' (number expected, got string)")
      assert.are.same({1, 2, n = 2}, l:totable())
      l:close()
    end)

    it("appends with one argument, as table.insert does", function()
      local l = mp.List{1, 2}
      l:insert("x")
      l:insert(3, "y")
      assert.are.same({1, 2, "y", "x", n = 4}, l:totable())
      l:close()
    end)
  end)

  describe("clear and reverse", function()
    it("clear takes out every item and lets go of what they named",
       function()
      local base = mp.stats()
      local l = mp.List{1, "two", {3}}
      l:append(mp.Dict{k = "v"})
      assert.are.equal(base.objects + 2, mp.stats().objects)
      assert.is_nil(l:clear())
      assert.are.equal(0, #l)
      assert.are.same({n = 0}, l:totable())
      collectgarbage()
      assert.are.equal(base.objects + 1, mp.stats().objects)
      l:append("again")
      assert.are.same({"again", n = 1}, l:totable())
      l:clear()
      l:clear() -- an empty list stays empty
      assert.are.equal(0, #l)
      l:close()
      assert.are.equal(base.arena_blocks, mp.stats().arena_blocks)
    end)

    it("clear lets go of the array it grew to, as Python's does",
       function()
      collectgarbage()
      local l = mp.List()
      local before = mp.stats().arena_used
      l:extend(H.range(1, 5000))
      assert.is_true(mp.stats().arena_used - before > 32 * 1024)
      l:clear()
      assert.are.equal(before, mp.stats().arena_used)
      l:extend({1, 2, 3})
      assert.are.same({1, 2, 3, n = 3}, l:totable())
      l:close()
    end)

    it("reverse turns the items around, in place", function()
      local d = mp.Dict()
      local l = mp.List{1, "two", d, {4}, 5}
      assert.is_nil(l:reverse())
      local t = l:totable()
      assert.are.equal(5, t.n)
      assert.are.equal(5, t[1])
      assert.are.same({4}, t[2])
      assert.is_true(t[3] == d)
      assert.are.equal("two", t[4])
      assert.are.equal(1, t[5])
      local e = mp.List()
      e:reverse()
      assert.are.equal(0, #e)
      local one = mp.List{"x"}
      one:reverse()
      assert.are.same({"x", n = 1}, one:totable())
      l:close(); e:close(); one:close(); d:close()
    end)

    it("are seen whole by another process", function()
      local l = mp.List{1, 2, 3}
      local p = spawn(function()
        l:reverse()
        l:append(0)
      end)
      finish(p)
      assert.are.same({3, 2, 1, 0, n = 4}, l:totable())
      p = spawn(function() l:clear() end)
      finish(p)
      assert.are.equal(0, #l)
      l:close()
    end)
  end)

  describe("pop", function()
    it("takes the last item by default, -1 being the last", function()
      local l = mp.List{1, 2, 3, 4}
      assert.are.equal(4, l:pop())
      assert.are.equal(3, l:pop(-1))
      assert.are.equal(2, #l)
      l:close()
    end)

    it("takes item i, counting from the end when i is negative", function()
      local l = mp.List{"a", "b", "c", "d", "e"}
      assert.are.equal("a", l:pop(1))
      assert.are.equal("c", l:pop(2))
      assert.are.equal("b", l:pop(-3))
      assert.are.same({"d", "e", n = 2}, l:totable())
      l:close()
    end)

    it("returns nil on an empty list", function()
      local l = mp.List()
      assert.is_nil(l:pop())
      assert.is_nil(l:pop(-1)) -- pop(-1) is pop()
      l:append(1)
      assert.are.equal(1, l:pop())
      assert.is_nil(l:pop())
      assert.are.equal(0, #l)
      l:close()
    end)

    it("raises for an index out of range", function()
      local l = mp.List{1, 2, 3}
      assert.has_error(function() l:pop(0) end,
        "bad argument #1 to 'pop' (index 0 out of range (list has 3 "
        .. "items))")
      assert.has_error(function() l:pop(5) end,
        "bad argument #1 to 'pop' (index 5 out of range (list has 3 "
        .. "items))")
      -- #l + 1 is nothing, as table.remove has it: pop(1) of an empty
      -- list is nil.
      assert.are.same({n = 1}, table.pack(l:pop(4)))
      assert.are.same({n = 1}, table.pack(mp.List():pop(1)))
      assert.are.same({n = 1}, table.pack(mp.List():pop()))
      assert.has_error(function() l:pop(-4) end,
        "bad argument #1 to 'pop' (index -4 out of range (list has 3 "
        .. "items))")
      assert.has_error(function() l:pop(1.5) end,
        "bad argument #1 to 'pop' (number has no integer representation)")
      assert.are.equal(3, #l)
      l:close()
    end)
  end)

  describe("remove, index and count", function()
    it("compare items that name an object more than once by what they "
       .. "hold", function()
      local lock = mp.Lock()
      local l = mp.List{{lock, [lock] = 1, a = lock}, {lock}}
      assert.are.equal(1, l:index({lock, [lock] = 1, a = lock}))
      assert.are.equal(2, l:index({lock}))
      assert.are.equal(1, l:count({lock, a = lock, [lock] = 1}))
      assert.are.equal(0, l:count({lock, [lock] = 2, a = lock}))
      l:close()
    end)

    it("remove takes out the first equal item", function()
      local l = mp.List{"a", "b", "a", "c"}
      assert.are.equal(0, select("#", l:remove("a")))
      assert.are.same({"b", "a", "c", n = 3}, l:totable())
      l:remove("c")
      assert.are.same({"b", "a", n = 2}, l:totable())
      assert.has_error(function() l:remove("zz") end, "value not in list")
      assert.are.equal(2, #l)
      l:close()
    end)

    it("index gives the position of the first equal item", function()
      local l = mp.List{"a", "b", "a"}
      assert.are.equal(1, l:index("a"))
      assert.are.equal(2, l:index("b"))
      assert.has_error(function() l:index("zz") end, "value not in list")
      l:close()
    end)

    it("index looks from position i to position j, counted as string.sub "
       .. "counts them", function()
      local l = mp.List{"a", "b", "a", "c"}
      assert.are.equal(3, l:index("a", 2))
      assert.are.equal(3, l:index("a", 2, 3))
      assert.are.equal(3, l:index("a", -2))
      assert.are.equal(4, l:index("c", -1, -1))
      assert.are.equal(1, l:index("a", 0))
      assert.are.equal(1, l:index("a", math.mininteger, math.maxinteger))
      for _, r in ipairs{{2, 2}, {-1}, {1, -5}, {5}, {math.maxinteger}} do
        assert.has_error(function() l:index("a", r[1], r[2]) end,
                         "value not in list")
      end
      assert.matches("bad argument #2 to 'index' %(number expected, got "
                     .. "string%)", H.errmsg(function() l:index("a", "x") end))
      l:remove("a") -- the first, whatever remove is given after it
      assert.are.same({"b", "a", "c", n = 3}, l:totable())
      l:close()
    end)

    it("count counts the equal items", function()
      local l = mp.List{1, "1", 1, {1}, true}
      assert.are.equal(2, l:count(1))
      assert.are.equal(1, l:count("1"))
      assert.are.equal(1, l:count({1}))
      assert.are.equal(1, l:count(true))
      assert.are.equal(0, l:count(false))
      assert.are.equal(0, l:count("zz"))
      l:close()
    end)

    it("compare strings, tables and nested tables by content", function()
      local l = mp.List{"abc", {1, 2, {3}}, {x = 1, y = {z = "w"}}}
      assert.are.equal(1, l:index("ab" .. "c"))
      assert.are.equal(2, l:index({1, 2, {3}}))
      assert.are.equal(3, l:index({y = {z = "w"}, x = 1}))
      assert.are.equal(0, l:count({1, 2, {4}}))
      assert.are.equal(0, l:count({x = 1}))
      l:remove({1, 2, {3}})
      assert.are.equal(2, #l)
      l:close()
    end)

    it("find a table whatever order its fields were set in", function()
      local a, b = {}, {}
      for i = 1, 20 do a["k" .. i] = i end
      for i = 20, 1, -1 do b["k" .. i] = i end
      local c = {}
      c[3], c[2], c[1] = "c", "b", "a"
      local l = mp.List{a, {"a", "b", "c"}}
      assert.are.equal(1, l:count(b))
      assert.are.equal(1, l:index(b))
      assert.are.equal(2, l:index(c))
      l:remove(c)
      assert.are.equal(1, #l)
      l:close()
    end)

    it("compare tables by content, key by key, at any depth", function()
      local function rev(n, f)
        local t = {}
        for i = n, 1, -1 do t[i] = f(i) end
        return t
      end
      local l = mp.List{
        {x = {y = {1, 2, 3}, z = "w"}, n = 1},
        rev(50, function(i) return i * 2 end),
        {[1.5] = "f", [true] = false, s = ""},
      }
      local nested = {n = 1}
      nested.x = {z = "w"}
      nested.x.y = rev(3, function(i) return i end)
      assert.are.equal(1, l:index(nested))
      local evens = {}
      for i = 1, 50 do evens[i] = i * 2 end
      assert.are.equal(2, l:index(evens))
      assert.are.equal(3, l:index({s = "", [true] = false, [1.5] = "f"}))
      -- not equal: a key more, a key less, another value, another depth
      assert.are.equal(0, l:count({x = {y = {1, 2, 3}, z = "w"}, n = 1, m = 2}))
      assert.are.equal(0, l:count({x = {y = {1, 2, 3}, z = "w"}}))
      assert.are.equal(0, l:count({x = {y = {1, 2, 4}, z = "w"}, n = 1}))
      assert.are.equal(0, l:count({x = {y = {1, 2, {3}}, z = "w"}, n = 1}))
      assert.are.equal(0, l:count({}))
      assert.has_error(function() l:index({n = 2}) end, "value not in list")
      l:close()
    end)

    it("take 1 and 1.0 as equal, as values and as keys", function()
      local l = mp.List{{1, 2.5, k = 3}, {[2] = "two"}}
      assert.are.equal(1, l:index({1.0, 2.5, k = 3.0}))
      local t = {}
      t[2.0] = "two" -- a float key with an integer value is the integer
      assert.are.equal(2, l:index(t))
      assert.are.equal(0, l:count({1, 2.5000001, k = 3}))
      l:close()
    end)

    it("match tables used as keys, each value following its key",
       function()
      local k1, k2 = {"a"}, {"b"}
      local l = mp.List{{[k1] = 1, [k2] = 2}}
      local q = {}
      q[{"b"}] = 2
      q[{"a"}] = 1
      assert.are.equal(1, l:index(q))
      local wrong = {}
      wrong[{"a"}] = 2
      wrong[{"b"}] = 1
      assert.are.equal(0, l:count(wrong))
      l:close()
    end)

    it("take a cycle as equal to the same cycle built apart", function()
      local a = {name = "a"}
      a.self = a
      local l = mp.List{a}
      local b = {}
      b.self = b
      b.name = "a"
      assert.are.equal(1, l:index(b))
      local c = {name = "a", self = {name = "a"}} -- no cycle: not equal
      assert.are.equal(0, l:count(c))
      local d = {name = "b"}
      d.self = d
      assert.are.equal(0, l:count(d))
      l:close()
    end)

    it("compare shared objects by identity, inside tables too", function()
      local d1, d2 = mp.Dict(), mp.Dict()
      local l = mp.List{{obj = d1, tag = 1}, {obj = d2, tag = 1}}
      assert.are.equal(1, l:index({tag = 1, obj = d1}))
      assert.are.equal(2, l:index({tag = 1, obj = d2}))
      local d3 = mp.Dict()
      assert.are.equal(0, l:count({tag = 1, obj = d3}))
      l:close()
      d1:close()
      d2:close()
      d3:close()
    end)

    it("count every equal table, however each was built", function()
      local l = mp.List{}
      for i = 1, 6 do
        local t = {}
        if i % 2 == 0 then t.a, t.b = 1, 2 else t.b, t.a = 2, 1 end
        l:append(t)
        l:append({a = i})
      end
      assert.are.equal(6, l:count({a = 1, b = 2}))
      assert.are.equal(1, l:count({a = 4}))
      l:close()
    end)

    it("compare nested tables as maps, at any depth", function()
      local a = {x = {p = 1, q = {2, 3}}, y = "y"}
      local b = {}
      b.y = "y"
      b.x = {}
      b.x.q = {}
      b.x.q[2], b.x.q[1] = 3, 2
      b.x.p = 1
      local l = mp.List{"other", a}
      assert.are.equal(2, l:index(b))
      assert.are.equal(0, l:count({x = {p = 1, q = {2, 3}}, y = "z"}))
      assert.are.equal(0, l:count({x = {p = 1, q = {2, 3}}, y = "y", z = 1}))
      assert.are.equal(0, l:count({x = {p = 1, q = {2, {3}}}, y = "y"}))
      assert.are.equal(0, l:count({x = {p = 1}, y = "y"}))
      l:close()
    end)

    it("match 1.0 and 1 as values and as keys, NaN nowhere", function()
      local l = mp.List{{1, 2.5, n = 3}, {[1.0] = "one", [2] = "two"},
                        {0 / 0}}
      assert.are.equal(1, l:index({1.0, 2.5, n = 3.0}))
      assert.are.equal(0, l:count({1, 2.5, n = 3.5}))
      assert.are.equal(2, l:index({"one", "two"}))
      assert.are.equal(0, l:count({0 / 0}))
      assert.are.equal(0, l:count(0 / 0))
      l:close()
    end)

    it("compare tables that contain themselves", function()
      local a, b = {name = "a"}, {}
      a.self = a
      b.self, b.name = b, "a"
      local c = {name = "a"}
      c.self = {name = "a", self = c}
      local d = {name = "b"}
      d.self = d
      local l = mp.List{a}
      assert.are.equal(1, l:count(b))
      assert.are.equal(1, l:count(c)) -- unrolled once, the same map
      assert.are.equal(0, l:count(d))
      assert.are.equal(0, l:count({name = "a", self = {}}))
      l:close()
    end)

    it("keep shared parts apart from copies only where they differ", function()
      local s = {1, 2}
      local l = mp.List{{s, s, {1, 2}}}
      assert.are.equal(1, l:count({{1, 2}, {1, 2}, s}))
      assert.are.equal(0, l:count({{1, 2}, {1, 2}, {1, 3}}))
      l:close()
    end)

    it("match tables used as keys by their contents", function()
      local l = mp.List{{[{1, 2}] = "a", [{x = 1}] = "b", k = "c"}}
      local t = {}
      t.k = "c"
      t[{x = 1}] = "b"
      t[{1, 2}] = "a"
      assert.are.equal(1, l:index(t))
      assert.are.equal(0, l:count({[{1, 2}] = "a", [{x = 2}] = "b", k = "c"}))
      assert.are.equal(0, l:count({[{1, 2}] = "b", [{x = 1}] = "a", k = "c"}))
      assert.are.equal(0, l:count({[{1, 2}] = "a", k = "c"}))
      l:close()
    end)

    it("match shared objects by identity, not contents", function()
      local d1, d2, d3 = mp.Dict(), mp.Dict(), mp.Dict()
      local l = mp.List{d1, {key = d2, n = 1}}
      assert.are.equal(1, l:index(l[1]))
      assert.are.equal(1, l:count(d1))
      assert.are.equal(0, l:count(d3))
      assert.are.equal(2, l:index({n = 1, key = l[2].key}))
      assert.are.equal(0, l:count({n = 1, key = d3}))
      l:close()
      d1:close()
      d2:close()
      d3:close()
    end)

    it("find a number however it is written: 2 equals 2.0", function()
      local l = mp.List{1, 2.0}
      assert.are.equal(1, l:count(1.0))
      assert.are.equal(1, l:count(2))
      assert.are.equal(2, l:index(2))
      l:remove(1.0)
      assert.are.same({2.0, n = 1}, l:totable())
      l:close()
    end)
  end)

  describe("totable", function()
    it("gives a plain table of the items, with n", function()
      local l = mp.List(range(1, 100))
      local t = l:totable()
      assert.are.same(range(1, 100), t)
      assert.is_nil(getmetatable(t))
      l:close()
    end)

    it("gives the items from position i to position j, counted as "
       .. "string.sub counts them: Python's slices", function()
      local l = mp.List{"a", "b", {"c"}, nil, "e", n = 5}
      assert.are.same({"b", {"c"}, n = 2}, l:totable(2, 3))
      assert.are.same({{"c"}, nil, "e", n = 3}, l:totable(3))
      assert.are.same({nil, "e", n = 2}, l:totable(-2))
      assert.are.same({"a", "b", n = 2}, l:totable(-100, -4))
      assert.are.same({"a", "b", {"c"}, nil, "e", n = 5}, l:totable(0, 99))
      assert.are.same({n = 0}, l:totable(4, 2))
      assert.are.same({n = 0}, l:totable(6))
      local e = mp.List()
      assert.are.same({n = 0}, e:totable(1, 1))
      assert.has_error(function() l:totable("x") end,
        "bad argument #1 to 'totable' (number expected, got string)")
      l:close()
      e:close()
    end)
  end)

  describe("from several processes at once", function()
    it("keeps every item of 4 processes appending 1000 each, in each "
       .. "one's order", function()
      local l = mp.List()
      local go = mp.Event()
      local ps = {}
      for id = 1, 4 do
        ps[id] = spawn(function()
          go:wait(10)
          for i = 1, 1000 do l:append({id, i}) end
        end)
      end
      go:set()
      for id = 1, 4 do finish(ps[id]) end
      assert.are.equal(4000, #l)
      local t = l:totable()
      assert.are.equal(4000, t.n)
      local last = {0, 0, 0, 0}
      for _, v in ipairs(t) do
        local id, i = v[1], v[2]
        assert(i == last[id] + 1, "process " .. id .. ": " .. i
          .. " after " .. last[id])
        last[id] = i
      end
      assert.are.same({1000, 1000, 1000, 1000}, last)
      l:close()
    end)

    it("gives each item to exactly one of 4 processes popping", function()
      local l = mp.List(range(1, 2000))
      local q = mp.Queue()
      local go = mp.Event()
      local ps = {}
      for id = 1, 4 do
        ps[id] = spawn(function()
          go:wait(10)
          local got = {}
          while true do
            local v = l:pop()
            if v == nil then break end
            got[#got + 1] = v
          end
          q:put(got)
        end)
      end
      go:set()
      local seen = {}
      for _ = 1, 4 do
        for _, v in ipairs(q:get(true, 10)) do
          assert(seen[v] == nil, v .. " popped twice")
          seen[v] = true
        end
      end
      for id = 1, 4 do finish(ps[id]) end
      for v = 1, 2000 do assert(seen[v], v .. " never popped") end
      assert.are.equal(0, #l)
      l:close()
      q:close()
    end)
  end)

  describe("memory", function()
    it("stays flat over many append and pop cycles", function()
      local l = mp.List()
      l:append(0)
      l:pop()
      collectgarbage()
      local before = mp.stats()
      local t0 = mp.monotonic()
      for i = 1, 200000 do
        l:append(i)
        l:pop()
      end
      took(mp.monotonic() - t0, 0, 10, "200000 cycles")
      local after = mp.stats()
      assert.are.equal(before.arena_used, after.arena_used)
      assert.are.equal(before.arena_blocks, after.arena_blocks)
      l:close()
    end)

    it("frees replaced, removed and popped items", function()
      local l = mp.List()
      collectgarbage()
      local before = mp.stats().arena_blocks
      for i = 1, 100 do l:append(("v"):rep(1000) .. i) end
      for i = 1, 100 do l[i] = {i} end
      for i = 1, 30 do l:remove({i}) end
      for _ = 1, 30 do l:pop(1) end
      l:insert(1, "x")
      l:pop(1)
      while #l > 0 do l:pop() end
      -- The array may have grown, but it is still one block.
      assert.are.equal(before, mp.stats().arena_blocks)
      l:close()
    end)
  end)

  describe("as a shared object", function()
    it("is the same list after a queue, a pipe or a pool task", function()
      local l = mp.List()
      local q = mp.Queue()
      q:put(l)
      local viaq = q:get(true, 1)
      assert.is_true(viaq == l)
      assert.is_false(rawequal(viaq, l))
      local a, b = mp.Pipe()
      a:send(l)
      local viap = b:recv()
      assert.is_true(viap == l)
      viaq:append("q")
      viap:append("p")
      local pool <close> = mp.Pool(2)
      local r = pool:map(function(x) x:append("task"); return x end, {l, l})
      assert.is_true(r[1] == l and r[2] == l)
      assert.are.equal(4, #l)
      assert.are.same({"p", "q", "task", "task"},
                      (function() local t = l:totable(); t.n = nil
                                  table.sort(t); return t end)())
      a:close()
      b:close()
      q:close()
      l:close()
    end)

    it("holds lists in it as live references", function()
      local a = mp.List{mp.List{0, 1, 2}, mp.List{0, 1, 2}, mp.List{0, 1, 2}}
      finish(spawn(function()
        a[1][3] = 55
        assert(a[2]:pop() == 2)
      end))
      assert.are.same({0, 1, 55, n = 3}, a[1]:totable())
      assert.are.same({0, 1, n = 2}, a[2]:totable())
      assert.are.same({0, 1, 2, n = 3}, a[3]:totable())
      assert.is_true(a[1] == a[1])
      assert.is_false(a[1] == a[2])
      a:close()
    end)

    it("tells its length whole while another process rebuilds it",
       function()
      -- Inserts at the front and removals publish a new array each and
      -- free the old one, whose block the next item may take: a length
      -- read from an array just replaced would be another block's bytes.
      local l = mp.List{1, 2, 3, 4, 5, 6, 7, 8}
      local stop = mp.Event()
      local p = spawn(function()
        local pad = ("x"):rep(200)
        while not stop:is_set() do
          for _ = 1, 8 do l:insert(1, pad) end
          for _ = 1, 8 do l:pop(1) end
        end
      end)
      local bad
      for _ = 1, 200000 do
        local n = #l
        if n < 8 or n > 16 then bad = n break end
      end
      stop:set()
      finish(p)
      assert.is_nil(bad, "a length of " .. tostring(bad)
        .. " for a list of 8 to 16 items")
      l:close()
    end)

    it("may hold itself; taking itself out frees it", function()
      local b = mp.List()
      b:append(b)
      assert.is_true(b[1] == b)
      assert.are.equal(1, #b[1])
      b:pop()
      b:close()
    end)
  end)
end)

-- As for a Dict: a reader holds what its copy of an item names until its
-- handles do, whatever a writer does to the item meanwhile.
describe("List read while another process replaces a shared item", function()
  it("gives the old object or the new one, never a freed one", function()
    local l = mp.List{mp.Dict{a = 1}}
    local function writer()
      local stop = mp.monotonic() + 1.5
      while mp.monotonic() < stop do
        local nd = mp.Dict{a = 1}
        l[1] = nd
        nd:close()
      end
    end
    local function reader(how)
      return function()
        local stop = mp.monotonic() + 1.5
        while mp.monotonic() < stop do
          local nd = how == "index" and l[1] or l:totable()[1]
          assert(nd.a == 1, "a read object lost its field")
          nd:close()
        end
      end
    end
    local ps = {H.spawn(writer), H.spawn(reader("index")),
                H.spawn(reader("totable"))}
    for _, p in ipairs(ps) do H.finish(p) end
  end)
end)
