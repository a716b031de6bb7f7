-- dict_spec.lua -- Dict: keys as Lua table keys, values copied in and
-- out, every method with its exact results and errors, pairs() while other
-- processes write, atomic operations from many processes at once, memory
-- given back, and a dict as a shared object that travels and nests.
-- Every child is a fork of the test process; a test that waits on a child
-- always does so with a timeout.

local mp = require "luamp"
local H = require "spec_helper"
local spawn, finish = H.spawn, H.finish
local took, errmsg = H.took, H.errmsg

-- The keys of table t, sorted (numbers before strings before booleans).
local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  local rank = {number = 1, string = 2, boolean = 3}
  table.sort(ks, function(a, b)
    if type(a) ~= type(b) then return rank[type(a)] < rank[type(b)] end
    if type(a) == "boolean" then return not a and b end
    return a < b
  end)
  return ks
end

-- The number of pairs pairs() visits in t.
local function npairs(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end


describe("Dict", function()
  H.leakcheck()

  describe("constructor", function()
    it("makes an empty dict", function()
      local d = mp.Dict()
      assert.are.equal(0, #d)
      assert.are.same({}, d:totable())
      assert.are.same({}, d:keys())
      assert.are.equal(0, npairs(d))
      d:close()
    end)

    it("starts with the pairs of a table given", function()
      local d = mp.Dict{a = 1, [2] = "two", [true] = false, [1.5] = {x = 1},
                        s = "str"}
      assert.are.equal(5, #d)
      assert.are.same({a = 1, [2] = "two", [true] = false, [1.5] = {x = 1},
                       s = "str"}, d:totable())
      d:close()
    end)

    it("copies another Dict's items, as Python's dict(d) does", function()
      local src = mp.Dict{a = 1, b = {2}}
      local d = mp.Dict(src)
      assert.are.same({a = 1, b = {2}}, d:totable())
      d.a = 5
      assert.are.equal(1, src.a)
      local m <close> = mp.Manager()
      assert.are.same({a = 1, b = {2}}, m:dict(src):totable())
      assert.matches("table or Dict expected, got luamp.List",
                     H.errmsg(mp.Dict, mp.List{}))
    end)

    it("rejects an argument that is neither a table nor nil", function()
      assert.has_error(function() mp.Dict(5) end,
        "bad argument #1 to 'Dict' (table or Dict expected, got number)")
      assert.has_error(function() mp.Dict("a=1") end,
        "bad argument #1 to 'Dict' (table or Dict expected, got string)")
    end)

    it("shows its key count, and (closed) once closed", function()
      local d = mp.Dict{1, 2, 3}
      assert.matches("^luamp%.Dict %(0x%x+, 3 keys%)$", tostring(d))
      d:close()
      assert.are.equal("luamp.Dict (closed)", tostring(d))
    end)

    it("refuses every use once closed", function()
      local d = mp.Dict{a = 1}
      d:close()
      local CLOSED = "attempt to use a closed dict"
      assert.has_error(function() return d.a end, CLOSED)
      assert.has_error(function() d.a = 2 end, CLOSED)
      assert.has_error(function() return #d end, CLOSED)
      assert.has_error(function() return pairs(d) end, CLOSED)
      assert.has_error(function() return d:get("a") end, CLOSED)
      assert.has_error(function() return d:incr("a", 1) end, CLOSED)
      assert.has_error(function() return d:keys() end, CLOSED)
      assert.has_error(function() d:clear() end, CLOSED)
    end)

    it("can be closed again, as often as one likes", function()
      local d = mp.Dict{a = 1}
      d:close()
      assert.has_no_error(function() d:close() end)
      assert.has_no_error(function() d:close() end)
      assert.are.equal("luamp.Dict (closed)", tostring(d))
    end)

    it("closes at the end of a <close> scope", function()
      local outer
      do
        local d <close> = mp.Dict{a = 1}
        outer = d
        assert.are.equal(1, d.a)
      end
      assert.are.equal("luamp.Dict (closed)", tostring(outer))
    end)
  end)

  describe("keys", function()
    it("behave as table keys: 1.0 is 1, 1.5 and \"1\" are their own",
       function()
      local d = mp.Dict()
      d[1] = "int"
      assert.are.equal("int", d[1.0])
      d[1.0] = "float one"
      assert.are.equal("float one", d[1])
      assert.are.equal(1, #d)
      d[1.5] = "one and a half"
      d["1"] = "string one"
      assert.are.equal("float one", d[1])
      assert.are.equal("one and a half", d[1.5])
      assert.are.equal("string one", d["1"])
      assert.are.equal(3, #d)
      d[-0.0] = "zero"
      assert.are.equal("zero", d[0])
      d[2^53] = "big"
      assert.are.equal("big", d[math.tointeger(2^53)])
      d[math.maxinteger] = "max"
      d[math.mininteger] = "min"
      d[math.huge] = "inf"
      d[-math.huge] = "-inf"
      assert.are.equal("max", d[math.maxinteger])
      assert.are.equal("min", d[math.mininteger])
      assert.are.equal("inf", d[1 / 0])
      assert.are.equal("-inf", d[-1 / 0])
      assert.are.equal(9, #d)
      d:close()
    end)

    it("come back from pairs, keys and totable with their types", function()
      local d = mp.Dict()
      d[1.0] = "a"
      d[2] = "b"
      d[0.25] = "c"
      d[true] = "d"
      d[false] = "e"
      d["x"] = "f"
      local types = {}
      for k, v in pairs(d) do types[v] = math.type(k) or type(k) end
      assert.are.same({a = "integer", b = "integer", c = "float",
                       d = "boolean", e = "boolean", f = "string"}, types)
      local ks = sorted_keys(d:totable())
      assert.are.same({0.25, 1, 2, "x", false, true},
                      {ks[1], ks[2], ks[3], ks[4], ks[5], ks[6]})
      assert.are.equal("integer", math.type(ks[2]))
      assert.are.equal(6, #d:keys())
      d:close()
    end)

    it("tell booleans from strings and true from false", function()
      local d = mp.Dict()
      d[true] = 1
      d["true"] = 2
      d[false] = 3
      d["false"] = 4
      assert.are.same({1, 2, 3, 4},
                      {d[true], d["true"], d[false], d["false"]})
      assert.are.equal(4, #d)
      d[false] = nil
      assert.is_nil(d[false])
      assert.are.equal(1, d[true])
      d:close()
    end)

    it("are binary-safe strings of any length", function()
      local bytes = {}
      for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
      local all = table.concat(bytes)
      local long = ("k"):rep(100000)
      local d = mp.Dict()
      d[""] = "empty"
      d["a\0b"] = "nul"
      d["a\0c"] = "other nul"
      d[all] = "all"
      d[long] = "long"
      assert.are.equal("empty", d[""])
      assert.are.equal("nul", d["a\0b"])
      assert.are.equal("other nul", d["a\0c"])
      assert.is_nil(d["a"])
      assert.are.equal("all", d[all])
      assert.are.equal("long", d[long])
      for n = 61, 66 do d[("e"):rep(n)] = n end -- either side of 64 bytes
      for n = 61, 66 do assert.are.equal(n, d[("e"):rep(n)]) end
      local seen = 0
      for k, v in pairs(d) do
        if k:sub(1, 1) == "e" then
          assert.are.equal(#k, v)
          seen = seen + 1
        end
      end
      assert.are.equal(6, seen)
      assert.is_nil(d[long .. "k"])
      local t = d:totable()
      local want = {[""] = "empty", ["a\0b"] = "nul", ["a\0c"] = "other nul",
                    [all] = "all", [long] = "long"}
      for n = 61, 66 do want[("e"):rep(n)] = n end
      assert.are.same(want, t)
      d:close()
    end)

    it("raise naming a key of any other type", function()
      local d = mp.Dict()
      local co = coroutine.create(print)
      for _, case in ipairs{
        {{}, "table: 0x%x+", "table"},
        {print, "function: 0x%x+", "function"},
        {function() end, "function: 0x%x+", "function"},
        {co, "thread: 0x%x+", "thread"},
        {io.stdout, "file %(0x%x+%)", "userdata"},
        {nil, "nil", "nil"},
      } do
        local key, tname = case[1], case[3]
        local want = "^bad argument #%d to '%a+' %(string, number or boolean "
          .. "expected, got " .. tname .. "%)$"
        assert.matches(want, errmsg(function() d[key] = 1 end))
        if key == nil then -- read as from a table: no key is nil
          assert.is_nil(d[key])
          assert.are.equal(7, d:get(key, 7))
        else
          assert.matches(want, errmsg(function() return d[key] end))
          assert.matches(want, errmsg(function() return d:get(key) end))
        end
        assert.matches(want, errmsg(function() return d:pop(key, 0) end))
        assert.matches(want, errmsg(function() return d:incr(key, 1, 0) end))
        assert.matches(want, errmsg(function() return d:add(key, 1) end))
      end
      assert.are.equal("bad argument #1 to 'update' (key string, number or "
        .. "boolean expected, got table)",
        errmsg(function() d:update{[{}] = 1} end))
      assert.are.equal("bad argument #2 to 'newindex' (key is NaN)",
        errmsg(function() d[0 / 0] = 1 end))
      assert.is_nil(d[0 / 0])
      assert.are.equal(0, #d)
      d:close()
    end)
  end)

  describe("values", function()
    it("cross between processes exactly, every kind the codec sends",
       function()
      local d = mp.Dict()
      local q = mp.Queue()
      finish(spawn(function()
        d.t, d.f = true, false
        d.zero, d.neg, d.max, d.min = 0, -1, math.maxinteger, math.mininteger
        d.one_f, d.tenth, d.nzero = 1.0, 0.1, -0.0
        d.inf, d.ninf, d.nan = 1 / 0, -1 / 0, 0 / 0
        d.bin = "a\0b\255"
        d.big = ("\0x"):rep(50000)
        local shared = {"shared"}
        local t = {1, {2, {3}}, name = "t", a = shared, b = shared}
        t.self = t
        d.tab = t
        local n = 41
        d.fn = function() n = n + 1; return n end
        d.cfn = string.format
        d.queue = q
      end))
      assert.is_true(d.t)
      assert.is_false(d.f)
      for k, v in pairs{zero = 0, neg = -1, max = math.maxinteger,
                        min = math.mininteger} do
        assert.are.equal("integer", math.type(d[k]))
        assert.are.equal(v, d[k])
      end
      assert.are.equal("float", math.type(d.one_f))
      assert.are.equal(1.0, d.one_f)
      assert.are.equal(0.1, d.tenth)
      assert.are.equal(-1 / 0, 1 / d.nzero, "-0.0 lost its sign")
      assert.are.equal(1 / 0, d.inf)
      assert.are.equal(-1 / 0, d.ninf)
      local nan = d.nan
      assert.is_true(nan ~= nan)
      assert.are.equal("a\0b\255", d.bin)
      assert.are.equal(("\0x"):rep(50000), d.big)
      local t = d.tab
      assert.are.equal(1, t[1])
      assert.are.equal(3, t[2][2][1])
      assert.are.equal("t", t.name)
      assert.is_true(rawequal(t, t.self))
      assert.is_true(rawequal(t.a, t.b))
      assert.are.same({"shared"}, t.a)
      local fn = d.fn
      assert.are.equal(42, fn())
      assert.are.equal(43, fn())
      assert.are.equal(42, d.fn(), "the stored closure was changed")
      assert.is_true(rawequal(string.format, d.cfn))
      assert.are.equal(q, d.queue)
      d.queue:put("through the stored queue")
      assert.are.equal("through the stored queue", q:get(true, 1))
      assert.are.equal(18, #d)
      d:close()
      q:close()
    end)

    it("are copied in and out: a table read changes nothing until stored",
       function()
      local d = mp.Dict()
      local t = {x = 1, list = {1, 2}}
      d.t = t
      t.x = 2
      table.insert(t.list, 3)
      assert.are.same({x = 1, list = {1, 2}}, d.t)
      local r = d.t
      r.x = 3
      assert.are.equal(1, d.t.x)
      assert.is_false(rawequal(d.t, d.t), "two reads gave one table")
      d.t = r
      assert.are.same({x = 3, list = {1, 2}}, d.t)
      local got = d:get("t")
      got.x = 4
      assert.are.equal(3, d:totable().t.x)
      local tt = d:totable()
      tt.t.x = 5
      tt.extra = true
      assert.are.equal(3, d.t.x)
      assert.is_nil(d.extra)
      d:close()
    end)

    it("nil deletes the key; deleting an absent key does nothing",
       function()
      local d = mp.Dict{a = 1, b = 2}
      d.a = nil
      assert.is_nil(d.a)
      assert.are.equal(1, #d)
      assert.are.same({b = 2}, d:totable())
      d.zz = nil
      assert.are.equal(1, #d)
      d.a = false
      assert.is_false(d.a)
      assert.are.equal(2, #d)
      d:close()
    end)

    it("replacing a value keeps the count", function()
      local d = mp.Dict()
      d.a = 1
      d.a = "two"
      d.a = {3}
      assert.are.equal(1, #d)
      assert.are.same({3}, d.a)
      d:close()
    end)

    it("that cannot be sent raise and leave the dict unchanged", function()
      local d = mp.Dict{a = 1}
      assert.has_error(function() d.a = coroutine.create(print) end,
        "cannot send value: thread")
      assert.has_error(function() d.b = {f = io.stdout} end,
        "cannot send value.f: userdata (FILE*)")
      assert.has_error(function() d.c = {1, {x = io.stderr}} end,
        "cannot send value[2].x: userdata (FILE*)")
      assert.are.equal(1, d.a)
      assert.are.equal(1, #d)
      assert.are.same({a = 1}, d:totable())
      d:close()
    end)
  end)

  describe("methods and keys with the same names", function()
    it("d.get is the method, d:get(\"get\") the value stored", function()
      local d = mp.Dict()
      d.get = "stored under get"
      d.keys = "stored under keys"
      assert.are.equal("function", type(d.get))
      assert.are.equal("function", type(d.keys))
      assert.are.equal("stored under get", d:get("get"))
      assert.are.equal("stored under keys", d:get("keys"))
      assert.are.equal(2, #d)
      assert.are.same({get = "stored under get", keys = "stored under keys"},
                      d:totable())
      assert.are.equal("stored under get", d:pop("get"))
      assert.are.equal(1, #d)
      d:close()
    end)

    it("pairs gives the value stored under a method's name", function()
      local d = mp.Dict()
      d.get = "stored under get"
      d.pop = 42
      local seen = {}
      for k, v in pairs(d) do seen[k] = v end
      assert.are.same({get = "stored under get", pop = 42}, seen)
      d:close()
    end)
  end)

  describe("get", function()
    it("returns the value, or the default, or nil: one value", function()
      local d = mp.Dict{a = 1, f = false}
      assert.are.equal(1, d:get("a"))
      assert.are.equal(1, d:get("a", "dflt"))
      assert.are.equal("dflt", d:get("zz", "dflt"))
      assert.is_nil(d:get("zz"))
      assert.is_false(d:get("f", "dflt"))
      assert.are.equal(1, select("#", d:get("zz")))
      assert.are.equal(1, select("#", d:get("a")))
      assert.are.same({t = 1}, d:get("zz", {t = 1}))
      d:close()
    end)
    it("stays whole when a finalizer stores in the same handle during a "
       .. "read", function()
      local d = mp.Dict()
      d.k = {1, string.rep("x", 200), {a = 1}}
      local bad, first = H.finalizer_inside(20000, function() return d.k end,
        function() d.other = {string.rep("r", 300)} end,
        function(v)
          return type(v) == "table" and v[2] == string.rep("x", 200)
            and v[3].a == 1
        end)
      assert.are.equal(0, bad, tostring(first))
      d:close()
    end)
  end)

  describe("setdefault", function()
    it("sets an absent key and returns the value stored", function()
      local d = mp.Dict()
      assert.are.equal(7, d:setdefault("k", 7))
      assert.are.equal(7, d.k)
      assert.are.equal(1, #d)
      local t = {1}
      local got = d:setdefault("t", t)
      assert.are.same({1}, got)
      assert.is_false(rawequal(t, got), "the table itself came back")
      d:close()
    end)

    it("returns the present value and leaves it", function()
      local d = mp.Dict{k = "old"}
      assert.are.equal("old", d:setdefault("k", "new"))
      assert.are.equal("old", d.k)
      d.f = false
      assert.is_false(d:setdefault("f", true))
      assert.are.equal(2, #d)
      d:close()
    end)

    it("with no value stores nothing", function()
      local d = mp.Dict()
      assert.is_nil(d:setdefault("k"))
      assert.are.equal(0, #d)
      d:close()
    end)
  end)

  describe("popitem and copy", function()
    it("popitem takes each item out once, as a key and its value", function()
      local d = mp.Dict{a = 1, b = {x = 2}, [3] = true}
      local got = {}
      for _ = 1, 3 do
        local k, v = d:popitem()
        assert.is_nil(got[k])
        got[k] = v
      end
      assert.are.same({a = 1, b = {x = 2}, [3] = true}, got)
      assert.are.equal(0, #d)
      assert.has_error(function() d:popitem() end,
                       "popitem(): dictionary is empty")
      d:close()
    end)

    it("popitem hands over a shared value alive, and leaks nothing",
       function()
      collectgarbage()
      local before = mp.stats().arena_blocks
      local l = mp.List{1, 2}
      local d = mp.Dict{l = l}
      local k, v = d:popitem()
      assert.are.equal("l", k)
      assert.is_true(v == l)
      l, v = nil, nil
      d:close()
      collectgarbage()
      collectgarbage()
      assert.are.equal(before, mp.stats().arena_blocks)
    end)

    it("copy is a plain table of its items, as Python's proxy gives",
       function()
      local d = mp.Dict{a = 1, b = {2}}
      local c = d:copy()
      assert.is_nil(getmetatable(c))
      assert.are.same({a = 1, b = {2}}, c)
      c.a = 5
      assert.are.equal(1, d.a)
      d:close()
    end)
  end)

  describe("pop", function()
    it("removes and returns the value", function()
      local d = mp.Dict{a = {x = 1}, b = 2}
      assert.are.same({x = 1}, d:pop("a"))
      assert.is_nil(d.a)
      assert.are.equal(1, #d)
      assert.are.equal(2, d:pop("b", "dflt"))
      assert.are.equal(0, #d)
      d:close()
    end)

    it("returns the default for an absent key, even a nil one", function()
      local d = mp.Dict{a = 1}
      assert.are.equal("dflt", d:pop("zz", "dflt"))
      local r = table.pack(d:pop("zz", nil))
      assert.are.equal(1, r.n)
      assert.is_nil(r[1])
      assert.is_false(d:pop("zz", false))
      assert.are.equal(1, #d)
      d:close()
    end)

    it("raises \"key <k> not found\" for an absent key without a default",
       function()
      local d = mp.Dict{a = 1}
      assert.has_error(function() d:pop("zz") end, "key zz not found")
      assert.has_error(function() d:pop(3) end, "key 3 not found")
      assert.has_error(function() d:pop(1.5) end, "key 1.5 not found")
      assert.has_error(function() d:pop(true) end, "key true not found")
      assert.are.equal(1, #d)
      d:close()
    end)

    it("raises a plain argument error when the key is missing", function()
      local d = mp.Dict()
      assert.has_error(function() d:pop() end,
        "bad argument #1 to 'pop' (value expected)")
      d:close()
    end)
  end)

  describe("update", function()
    it("stores every pair of a table, keeping the other keys", function()
      local d = mp.Dict{a = 1, b = 2}
      d:update{b = "two", c = {3}, [4] = 4, [true] = "yes"}
      assert.are.same({a = 1, b = "two", c = {3}, [4] = 4, [true] = "yes"},
                      d:totable())
      assert.are.equal(5, #d)
      d:update{}
      assert.are.equal(5, #d)
      d:close()
    end)

    it("stores every pair of another Dict, or of itself", function()
      local d, o = mp.Dict{a = 1, b = 2}, mp.Dict{b = "two", c = {3}}
      d:update(o)
      assert.are.same({a = 1, b = "two", c = {3}}, d:totable())
      assert.are.same({b = "two", c = {3}}, o:totable())
      d:update(d)
      assert.are.same({a = 1, b = "two", c = {3}}, d:totable())
      d:close()
      o:close()
    end)

    it("wants a table or a Dict", function()
      local d = mp.Dict()
      assert.has_error(function() d:update(5) end,
        "bad argument #1 to 'update' (table or Dict expected, got number)")
      assert.has_error(function() d:update() end,
        "bad argument #1 to 'update' (table or Dict expected, got no value)")
      local l = mp.List{1}
      assert.has_error(function() d:update(l) end,
        "bad argument #1 to 'update' (table or Dict expected, got luamp.List)")
      l:close()
      d:close()
    end)

    it("with a pair that cannot be stored raises naming it, and stores "
       .. "nothing", function()
      local d = mp.Dict{a = 1}
      assert.has_error(function() d:update{1, 2, 3, 4, io.stdout} end,
        "cannot send value[5]: userdata (FILE*)")
      assert.has_error(function()
        d:update{"x", "y", b = 2, c = {f = {io.stderr}}}
      end, "cannot send value.c.f[1]: userdata (FILE*)")
      assert.has_error(function() d:update{1, 2, [{}] = 3} end,
        "bad argument #1 to 'update' (key string, number or boolean "
        .. "expected, got table)")
      assert.are.same({a = 1}, d:totable())
      assert.are.equal(1, #d)
      d:close()
    end)

    it("is seen by another process all at once", function()
      local d, n = mp.Dict(), 300
      local A, B = {}, {}
      for i = 1, n do A["k" .. i], B["k" .. i] = "A", "B" end
      local stop = mp.Value("i", 0)
      local p = spawn(function()
        while stop.value == 0 do
          d:update(A)
          d:update(B)
          d:clear()
        end
      end)
      local bad, reads, t0 = {}, 0, mp.monotonic()
      while mp.monotonic() - t0 < 0.5 do
        local k = #d
        local t = d:totable()
        local a, b = 0, 0
        for _, v in pairs(t) do
          if v == "A" then a = a + 1 else b = b + 1 end
        end
        reads = reads + 1
        if k ~= 0 and k ~= n then bad[#bad + 1] = "#d " .. k end
        if not (a == 0 and (b == 0 or b == n) or a == n and b == 0) then
          bad[#bad + 1] = a .. " A and " .. b .. " B"
        end
      end
      stop.value = 1
      finish(p)
      assert.are.equal(0, #bad, #bad .. " of " .. reads .. " reads saw part"
        .. " of an update: " .. table.concat(bad, ", ", 1, math.min(5, #bad)))
      d:close()
    end)
  end)

  describe("keys, values, items and totable", function()
    it("give plain tables of what is there", function()
      local d = mp.Dict()
      for i = 65, 69 do d[i] = string.char(i) end
      local ks = d:keys()
      table.sort(ks)
      assert.are.same({65, 66, 67, 68, 69}, ks)
      local vs = d:values()
      table.sort(vs)
      assert.are.same({"A", "B", "C", "D", "E"}, vs)
      local items = d:items()
      table.sort(items, function(a, b) return a[1] < b[1] end)
      assert.are.same({{65, "A"}, {66, "B"}, {67, "C"}, {68, "D"}, {69, "E"}},
                      items)
      assert.are.same({[65] = "A", [66] = "B", [67] = "C", [68] = "D",
                       [69] = "E"}, d:totable())
      assert.is_nil(getmetatable(d:totable()))
      d:close()
    end)

    it("list keys and values in the same order", function()
      local d = mp.Dict()
      for i = 1, 100 do d["k" .. i] = i end
      local ks, vs, items = d:keys(), d:values(), d:items()
      assert.are.equal(100, #ks)
      for i = 1, 100 do
        assert.are.equal(ks[i], "k" .. vs[i])
        assert.are.same({ks[i], vs[i]}, items[i])
      end
      d:close()
    end)

    it("are empty for an empty dict", function()
      local d = mp.Dict()
      assert.are.same({}, d:keys())
      assert.are.same({}, d:values())
      assert.are.same({}, d:items())
      assert.are.same({}, d:totable())
      d:close()
    end)
  end)

  describe("clear", function()
    it("removes every key and gives their memory back", function()
      collectgarbage()
      local d = mp.Dict()
      local before = mp.stats().arena_blocks
      for i = 1, 10 do d[i] = ("v"):rep(1000) .. i end
      assert.is_true(mp.stats().arena_blocks > before)
      d:clear()
      assert.are.equal(0, #d)
      assert.are.same({}, d:totable())
      assert.are.equal(before, mp.stats().arena_blocks)
      d.after = 1
      assert.are.same({after = 1}, d:totable())
      d:close()
    end)

    it("lets go of the table it grew to, as Python's does", function()
      collectgarbage()
      local d = mp.Dict()
      local before = mp.stats().arena_used
      for i = 1, 5000 do d[i] = true end
      assert.is_true(mp.stats().arena_used - before > 64 * 1024)
      d:clear()
      assert.are.equal(before, mp.stats().arena_used)
      for i = 1, 100 do d[i] = i end
      assert.are.equal(100, #d)
      assert.are.equal(55, d[55])
      d:close()
    end)

    it("is seen by #d in another process as all or nothing", function()
      local d, lock, n = mp.Dict(), mp.Lock(), 500
      local stop = mp.Value("i", 0)
      local p = H.spawn(function()
        while stop.value == 0 do
          lock:acquire()
          for i = 1, n do d[i] = i end
          lock:release()
          d:clear()
        end
      end)
      local bad, reads, t0 = 0, 0, mp.monotonic()
      while mp.monotonic() - t0 < 0.5 do
        lock:acquire()
        local k = #d
        lock:release()
        reads = reads + 1
        if k ~= 0 and k ~= n then bad = bad + 1 end
      end
      stop.value = 1
      H.finish(p)
      assert.are.equal(0, bad, bad .. " sizes between of " .. reads)
      d:close()
    end)
  end)

  describe("incr", function()
    it("adds to an integer and returns the new value", function()
      local d = mp.Dict{n = 10}
      assert.are.equal(11, d:incr("n", 1))
      assert.are.equal(6, d:incr("n", -5))
      assert.are.equal(6, d:incr("n", 0))
      assert.are.equal("integer", math.type(d.n))
      assert.are.equal(6, d.n)
      d:close()
    end)

    it("wraps integers as Lua does", function()
      local d = mp.Dict{n = math.maxinteger}
      assert.are.equal(math.mininteger, d:incr("n", 1))
      assert.are.equal(math.maxinteger, d:incr("n", -1))
      d:close()
    end)

    it("gives a float when either side is a float", function()
      local d = mp.Dict{i = 1, f = 1.5}
      assert.are.equal(2.5, d:incr("i", 1.5))
      assert.are.equal("float", math.type(d.i))
      assert.are.equal(2.5, d:incr("f", 1))
      assert.are.equal("float", math.type(d.f))
      d.g = 1.0
      local r = d:incr("g", 1)
      assert.are.equal(2.0, r)
      assert.are.equal("float", math.type(r))
      d:close()
    end)

    it("starts an absent key at init, and ignores init otherwise", function()
      local d = mp.Dict()
      assert.are.equal(15, d:incr("a", 5, 10))
      assert.are.equal(15, d.a)
      assert.are.equal(16, d:incr("a", 1, 100))
      local r = d:incr("f", 1, 0.5)
      assert.are.equal(1.5, r)
      assert.are.equal("float", math.type(r))
      assert.are.equal(2, #d)
      d:close()
    end)

    it("raises for an absent key without init, or a value not a number",
       function()
      local d = mp.Dict{s = "5", t = {}}
      assert.has_error(function() d:incr("zz", 1) end,
        "key zz not found (incr takes an initial value as its third argument)")
      assert.has_error(function() d:incr("s", 1) end,
        "cannot increment key s: its value is not a number")
      assert.has_error(function() d:incr("t", 1) end,
        "cannot increment key t: its value is not a number")
      assert.has_error(function() d:incr("s", "x") end,
        "bad argument #2 to 'incr' (number expected, got string)")
      assert.has_error(function() d:incr("s") end,
        "bad argument #2 to 'incr' (number expected, got nil)")
      assert.has_error(function() d:incr("zz", 1, "x") end,
        "bad argument #3 to 'incr' (number expected, got string)")
      assert.are.same({s = "5", t = {}}, d:totable())
      d:close()
    end)
  end)

  describe("add", function()
    it("stores only when the key is absent and says whether it did",
       function()
      local d = mp.Dict()
      assert.is_true(d:add("k", "first"))
      assert.is_false(d:add("k", "second"))
      assert.are.equal("first", d.k)
      assert.is_true(d:add("f", false))
      assert.is_false(d:add("f", true))
      assert.is_false(d.f)
      assert.are.equal(2, #d)
      d:close()
    end)

    it("with a nil value neither stores nor deletes", function()
      local d = mp.Dict{k = 1}
      assert.is_false(d:add("k", nil))
      assert.are.equal(1, d.k)
      assert.is_false(d:add("absent", nil))
      assert.is_nil(d.absent)
      assert.are.equal(1, #d)
      d:close()
    end)

    it("wants a value", function()
      local d = mp.Dict()
      assert.has_error(function() d:add("k") end,
        "bad argument #2 to 'add' (value expected)")
      d:close()
    end)
  end)

  describe("arguments", function()
    it("a method called with a dot names the type it wants", function()
      local d = mp.Dict()
      assert.has_error(function() d.get(5) end,
        "bad argument #1 to 'get' (luamp.Dict expected, got number)")
      assert.has_error(function() d.keys() end,
        "bad argument #1 to 'keys' (luamp.Dict expected, got no value)")
      d:close()
    end)
  end)

  describe("pairs", function()
    it("visits every pair once", function()
      local d, want = mp.Dict(), {}
      for i = 1, 1000 do
        local k = i % 3 == 0 and i or i % 3 == 1 and "s" .. i or i + 0.5
        d[k] = {i}
        want[k] = {i}
      end
      d[true] = "t"
      want[true] = "t"
      local got, n = {}, 0
      for k, v in pairs(d) do
        assert.is_nil(got[k], "visited twice")
        got[k] = v
        n = n + 1
      end
      assert.are.equal(1001, n)
      assert.are.same(want, got)
      d:close()
    end)

    it("skips keys deleted during the walk before they are reached",
       function()
      local d = mp.Dict()
      for i = 1, 100 do d[i] = i end
      local seen = {}
      for k, v in pairs(d) do
        assert.are.equal(k, v)
        seen[#seen + 1] = k
        for j = 1, 100 do
          if j ~= k then d[j] = nil end
        end
      end
      assert.are.equal(1, #seen)
      assert.are.equal(1, #d)
      d:close()
    end)

    it("does not visit keys stored during the walk, and ends", function()
      local d = mp.Dict()
      for i = 1, 10 do d[i] = i end
      local n = 0
      for k in pairs(d) do
        assert.are.equal("number", type(k))
        d[k .. "x"] = true
        n = n + 1
      end
      assert.are.equal(10, n)
      assert.are.equal(20, #d)
      d:close()
    end)

    it("ends after a clear during the walk", function()
      local d = mp.Dict()
      for i = 65, 69 do d[i] = string.char(i) end
      local n = 0
      for _ in pairs(d) do
        n = n + 1
        d:clear()
      end
      assert.are.equal(1, n)
      d:close()
    end)

    it("sees each of 1000 stable keys exactly once per walk while two "
       .. "processes add and remove others", function()
      local d = mp.Dict()
      for i = 1, 1000 do d["s" .. i] = i end
      local stop = mp.Event()
      local progress = mp.Array("q", 2)
      local churners = {}
      for id = 1, 2 do
        churners[id] = spawn(function()
          local n = 0
          while not stop:is_set() do
            n = n + 1
            d["c" .. id .. "." .. n] = {id, n}
            if n > 20 then d["c" .. id .. "." .. (n - 20)] = nil end
            progress[id] = n
          end
          for i = math.max(1, n - 19), n do d["c" .. id .. "." .. i] = nil end
        end)
      end
      -- Both are churning before the first walk starts.
      local deadline = mp.monotonic() + 10
      while (progress[1] < 100 or progress[2] < 100)
            and mp.monotonic() < deadline do
        mp.sleep(0.001)
      end
      local p0 = {progress[1], progress[2]}
      assert.is_true(p0[1] >= 100 and p0[2] >= 100, "no churn")
      local churn_seen = 0
      for walk = 1, 50 do
        local seen, n = {}, 0
        for k, v in pairs(d) do
          if k:sub(1, 1) == "s" then
            assert(seen[k] == nil, k .. " seen twice in walk " .. walk)
            seen[k] = true
            assert(v == tonumber(k:sub(2)), "bad value under " .. k)
            n = n + 1
          else
            local id, i = k:match("^c(%d)%.(%d+)$")
            assert(id, "a key that was never stored: " .. k)
            assert.are.same({tonumber(id), tonumber(i)}, v)
            churn_seen = churn_seen + 1
          end
        end
        assert.are.equal(1000, n, "stable keys missed in walk " .. walk)
      end
      assert.is_true(progress[1] > p0[1] and progress[2] > p0[2],
        "the churn stopped during the walks")
      assert.is_true(churn_seen > 0, "no churn key was ever seen")
      stop:set()
      finish(churners[1])
      finish(churners[2])
      assert.are.equal(1000, #d)
      assert.are.equal(1000, #d:keys())
      d:close()
    end)
  end)

  describe("from several processes at once", function()
    it("keeps every key of 4 processes setting 1000 each", function()
      local d = mp.Dict()
      local ps = {}
      for id = 1, 4 do
        ps[id] = spawn(function()
          for i = 1, 1000 do d["p" .. id .. "." .. i] = id * 10000 + i end
        end)
      end
      for id = 1, 4 do finish(ps[id]) end
      assert.are.equal(4000, #d)
      local t = d:totable()
      assert.are.equal(4000, npairs(t))
      for id = 1, 4 do
        for i = 1, 1000 do
          assert.are.equal(id * 10000 + i, t["p" .. id .. "." .. i])
        end
      end
      d:close()
    end)

    it("counts to 20000 with 4 processes doing 5000 incr each, every "
       .. "result returned once", function()
      local d = mp.Dict()
      local q = mp.Queue()
      local go = mp.Event()
      local ps = {}
      for id = 1, 4 do
        ps[id] = spawn(function()
          go:wait(10)
          local got = {}
          for i = 1, 5000 do got[i] = d:incr("n", 1, 0) end
          q:put(got)
        end)
      end
      go:set()
      local returned = {}
      for _ = 1, 4 do
        for _, v in ipairs(q:get(true, 10)) do
          assert(returned[v] == nil, v .. " returned twice")
          returned[v] = true
        end
      end
      for id = 1, 4 do finish(ps[id]) end
      assert.are.equal(20000, d.n)
      for v = 1, 20000 do assert(returned[v], v .. " never returned") end
      d:close()
      q:close()
    end)

    it("lets exactly one of 4 processes add each key", function()
      local d = mp.Dict()
      local q = mp.Queue()
      local go = mp.Event()
      local ps = {}
      for id = 1, 4 do
        ps[id] = spawn(function()
          go:wait(10)
          local won = {}
          for i = 1, 500 do
            if d:add(i, id) then won[#won + 1] = i end
          end
          q:put({id, won})
        end)
      end
      go:set()
      local winner = {}
      for _ = 1, 4 do
        local r = q:get(true, 10)
        for _, i in ipairs(r[2]) do
          assert(winner[i] == nil, "key " .. i .. " added twice")
          winner[i] = r[1]
        end
      end
      for id = 1, 4 do finish(ps[id]) end
      assert.are.equal(500, #d)
      for i = 1, 500 do assert.are.equal(winner[i], d[i]) end
      d:close()
      q:close()
    end)
  end)

  describe("memory", function()
    it("stays flat over a million set and delete cycles", function()
      local d = mp.Dict()
      d.warm = 1
      d.warm = nil
      collectgarbage()
      local before = mp.stats()
      local t0 = mp.monotonic()
      for i = 1, 1000000 do
        d.x = i
        d.x = nil
      end
      took(mp.monotonic() - t0, 0, 10, "a million cycles")
      local after = mp.stats()
      assert.are.equal(before.arena_used, after.arena_used)
      assert.are.equal(before.arena_blocks, after.arena_blocks)
      assert.are.equal(0, #d)
      d:close()
    end)

    it("frees overwritten values, large ones included", function()
      local d = mp.Dict()
      -- The state the loop ends in, so that usage can be compared exactly.
      d.x = ("a"):rep(100000)
      d.y = {1000, "001000"}
      collectgarbage()
      local before = mp.stats()
      for i = 1, 1000 do
        d.x = ("b"):rep(100000 - i % 2)
        d.y = {i, ("%06d"):format(i)}
      end
      local after = mp.stats()
      assert.are.equal(before.arena_blocks, after.arena_blocks)
      assert.are.equal(before.arena_used, after.arena_used)
      assert.are.equal(("b"):rep(100000), d.x)
      assert.are.same({1000, "001000"}, d.y)
      d:close()
    end)

    it("gives back every block of deleted, popped and cleared keys",
       function()
      local d = mp.Dict()
      collectgarbage()
      local before = mp.stats().arena_blocks
      for i = 1, 3000 do d[i] = {i, ("v"):rep(i % 200)} end
      for i = 1, 1000 do d[i] = nil end
      for i = 1001, 2000 do assert.are.equal(i, d:pop(i)[1]) end
      d:clear()
      assert.are.equal(before, mp.stats().arena_blocks)
      d:close()
    end)
  end)

  describe("as a shared object", function()
    it("made in a child lives on in the parent after the child ends",
       function()
      local q = mp.Queue()
      finish(spawn(function()
        local d = mp.Dict{made = "in the child"}
        d.list = mp.List{1, 2}
        q:put(d)
      end))
      local d = q:get(true, 1)
      assert.are.equal("in the child", d.made)
      assert.are.same({1, 2, n = 2}, d.list:totable())
      d:close()
      q:close()
    end)

    it("is the same dict after a queue, a pipe or a pool task", function()
      local d = mp.Dict()
      local other = mp.Dict()
      local q = mp.Queue()
      q:put(d)
      local viaq = q:get(true, 1)
      assert.is_true(viaq == d)
      assert.is_false(viaq == other)
      assert.is_false(rawequal(viaq, d))
      local a, b = mp.Pipe()
      a:send({d = d})
      local viap = b:recv().d
      assert.is_true(viap == d)
      viaq.q = 1
      viap.p = 2
      local pool <close> = mp.Pool(2)
      local r = pool:map(function(x)
        x.d["task" .. x.i] = x.i
        return x.d
      end, {{d = d, i = 1}, {d = d, i = 2}})
      assert.is_true(r[1] == d and r[2] == d)
      assert.are.same({q = 1, p = 2, task1 = 1, task2 = 2}, d:totable())
      a:close()
      b:close()
      q:close()
      d:close()
      other:close()
    end)

    it("holds another container as a live reference", function()
      local d = mp.Dict()
      d.inner = mp.List()
      d.sub = mp.Dict{x = 1}
      finish(spawn(function()
        d.inner:append(1)
        d.sub.x = 2
      end))
      assert.are.equal(1, #d.inner)
      assert.are.equal(1, d.inner[1])
      assert.are.equal(2, d.sub.x)
      assert.is_true(d.inner == d.inner)
      assert.is_false(rawequal(d.inner, d.inner))
      d:close()
    end)

    it("keeps a nested container alive while it holds it, and no longer",
       function()
      collectgarbage()
      local objects = mp.stats().objects
      local d = mp.Dict()
      local inner = mp.List{"kept"}
      d.inner = inner
      inner:close()
      collectgarbage()
      assert.are.equal(objects + 2, mp.stats().objects)
      assert.are.equal("kept", d.inner[1])
      d.inner = nil
      collectgarbage()
      collectgarbage()
      assert.are.equal(objects + 1, mp.stats().objects)
      d:close()
    end)
  end)
end)

-- A reader copies a value out under the dict's lock and decodes it after;
-- a writer that replaces the value meanwhile drops the entry's references.
-- The reader holds what the copy names until its handles do.
describe("Dict read while another process replaces a shared value", function()
  it("gives the old object or the new one, never a freed one", function()
    local d = mp.Dict()
    d.x = mp.Dict{a = 1}
    local function writer()
      local stop = mp.monotonic() + 1.5
      while mp.monotonic() < stop do
        local nd = mp.Dict{a = 1}
        d.x = nd
        nd:close()
      end
    end
    local function reader(how)
      return function()
        local stop = mp.monotonic() + 1.5
        while mp.monotonic() < stop do
          local nd
          if how == "index" then nd = d.x
          elseif how == "values" then nd = d:values()[1]
          else nd = d:totable().x end
          assert(nd.a == 1, "a read object lost its field")
          nd:close()
        end
      end
    end
    local ps = {H.spawn(writer)}
    for _, how in ipairs{"index", "values", "totable"} do
      ps[#ps + 1] = H.spawn(reader(how))
    end
    for _, p in ipairs(ps) do H.finish(p) end
  end)
end)
