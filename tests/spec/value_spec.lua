-- value_spec.lua -- Value, Array, RawValue and RawArray: every
-- typecode at its limits, C wrap-around, the exact errors, 1-based
-- indexing that reads like a table, 'c' arrays as strings, get_lock and
-- the lock option, atomic add and cas under contention, and the objects
-- sent to other processes.  Several cases follow CPython's _TestValue and
-- _TestArray.

local mp = require "luamp"
local H = require "spec_helper"
local spawn, finish, errmsg = H.spawn, H.finish, H.errmsg

-- Runs fn in n children at once and checks that they all ended well.
local function in_parallel(n, fn)
  local ps = {}
  for i = 1, n do ps[i] = spawn(fn, i) end
  for i = 1, n do finish(ps[i]) end
end

-- A float as a C float holds it.
local function as_float(x)
  return (string.unpack("f", string.pack("f", x)))
end

local FLT_MAX = as_float(3.4028234663852886e38)
local FLT_TRUE_MIN = as_float(1.401298464324817e-45)

-- Each typecode, its lowest and highest value as Lua reads them back (an
-- unsigned 64-bit maximum reads as the integer with all bits set, as
-- math.ult sees it), and the Lua type of its values.
local limits = {
  {'b', -128, 127, "integer"},
  {'B', 0, 255, "integer"},
  {'h', -32768, 32767, "integer"},
  {'H', 0, 65535, "integer"},
  {'i', -2147483648, 2147483647, "integer"},
  {'I', 0, 4294967295, "integer"},
  {'l', math.mininteger, math.maxinteger, "integer"},
  {'L', 0, 0xFFFFFFFFFFFFFFFF, "integer"},
  {'q', math.mininteger, math.maxinteger, "integer"},
  {'Q', 0, 0xFFFFFFFFFFFFFFFF, "integer"},
  {'f', -FLT_MAX, FLT_MAX, "float"},
  {'d', -1.7976931348623157e308, 1.7976931348623157e308, "float"},
  {'c', "\0", "\255", "string"},
  {'?', false, true, "boolean"},
}

describe("Value", function()
  H.leakcheck()

  describe("typecodes", function()
    for _, t in ipairs(limits) do
      local tc, lo, hi, kind = t[1], t[2], t[3], t[4]
      it("'" .. tc .. "' round-trips its limits", function()
        local v = mp.Value(tc, lo)
        assert.are.equal(lo, v.value)
        v.value = hi
        assert.are.equal(hi, v.value)
        v.value = lo
        assert.are.equal(lo, v.value)
        if kind == "integer" or kind == "float" then
          assert.are.equal(kind, math.type(v.value))
        else
          assert.are.equal(kind, type(v.value))
        end
        assert.are.equal(tc, v.typecode)
        assert.are.equal(hi, mp.Value(tc, hi).value)
        assert.are.equal(hi, mp.RawValue(tc, hi).value)
      end)
    end

    it("start at zero, 0.0, false and NUL without an initial value",
       function()
      for _, tc in ipairs{'b', 'B', 'h', 'H', 'i', 'I', 'l', 'L', 'q', 'Q'} do
        assert.are.equal(0, mp.Value(tc).value)
        assert.are.equal("integer", math.type(mp.Value(tc).value))
      end
      assert.are.equal("float", math.type(mp.Value('f').value))
      assert.are.equal(0.0, mp.Value('d').value)
      assert.are.equal("float", math.type(mp.Value('d').value))
      assert.is_false(mp.Value('?').value)
      assert.are.equal("\0", mp.Value('c').value)
      assert.are.equal(0, mp.RawValue('i').value)
    end)

    it("wrap integers as C does", function()
      local cases = {
        {'b', 128, -128}, {'b', -129, 127}, {'b', 255, -1},
        {'B', 300, 44}, {'B', -1, 255}, {'B', 256, 0},
        {'h', 32768, -32768}, {'h', 65535, -1},
        {'H', 65536, 0}, {'H', -1, 65535},
        {'i', 2147483648, -2147483648}, {'i', (1 << 32) + 5, 5},
        {'I', -1, 4294967295}, {'I', 1 << 32, 0},
      }
      for _, c in ipairs(cases) do
        local v = mp.Value(c[1])
        v.value = c[2]
        assert.are.equal(c[3], v.value, "'" .. c[1] .. "' = " .. c[2])
        assert.are.equal(c[3], mp.Value(c[1], c[2]).value)
      end
    end)

    it("store floats in 'f' with C float precision; 'd' keeps them whole",
       function()
      assert.are.equal(as_float(0.1), mp.Value('f', 0.1).value)
      assert.are_not.equal(0.1, mp.Value('f', 0.1).value)
      assert.are.equal(0.1, mp.Value('d', 0.1).value)
      assert.are.equal(FLT_TRUE_MIN, mp.Value('f', FLT_TRUE_MIN).value)
      assert.are.equal(4.9406564584124654e-324,
        mp.Value('d', 4.9406564584124654e-324).value)
      assert.are.equal(math.huge, mp.Value('f', 1e39).value)
      assert.are.equal(-math.huge, mp.Value('d', -math.huge).value)
      local nan = mp.Value('d', 0 / 0).value
      assert.is_true(nan ~= nan)
      local v = mp.Value('d', 3)
      assert.are.equal(3.0, v.value)
      assert.are.equal("float", math.type(v.value))
    end)

    -- After CPython's _TestValue.test_value and test_rawvalue.
    for _, raw in ipairs{false, true} do
      it("set in a child are seen by the parent" .. (raw and " (raw)" or ""),
         function()
        local make = raw and mp.RawValue or mp.Value
        local codes = {
          {'i', 4343, 24234}, {'d', 3.625, -4.25}, {'h', -232, 234},
          {'q', 1 << 33, 1 << 34}, {'c', "x", "y"},
        }
        local values = {}
        for i, c in ipairs(codes) do values[i] = make(c[1], c[2]) end
        for i, c in ipairs(codes) do assert.are.equal(c[2], values[i].value) end
        finish(spawn(function()
          for i, c in ipairs(codes) do values[i].value = c[3] end
        end))
        for i, c in ipairs(codes) do assert.are.equal(c[3], values[i].value) end
      end)
    end
  end)

  describe("errors", function()
    it("reject a float for an integer typecode", function()
      assert.matches("^bad argument #2 to '[%w_.]*Value' %(integer expected "
        .. "for typecode 'i', got float 1%.5%)$", errmsg(mp.Value, 'i', 1.5))
      local v = mp.Value('i', 7)
      assert.are.equal("bad argument #3 to 'newindex' (integer expected for "
        .. "typecode 'i', got float 1.5)",
        errmsg(function() v.value = 1.5 end))
      assert.matches("%(integer expected for typecode 'B', got float "
        .. "%-0%.25%)$", errmsg(mp.Value, 'B', -0.25))
      assert.are.equal(7, v.value)
    end)

    it("reject values of the wrong type for each kind of typecode",
       function()
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "integer expected for typecode 'q', got string%)$",
        errmsg(mp.Value, 'q', "5"))
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "integer expected for typecode 'h', got boolean%)$",
        errmsg(mp.Value, 'h', true))
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "number expected for typecode 'd', got string%)$",
        errmsg(mp.Value, 'd', "1.5"))
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "number expected for typecode 'f', got table%)$",
        errmsg(mp.Value, 'f', {}))
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "boolean expected for typecode '%?', got number%)$",
        errmsg(mp.Value, '?', 1))
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "string of length 1 expected for typecode 'c'%)$",
        errmsg(mp.Value, 'c', "xy"))
      assert.matches("^bad argument #2 to '[%w_.]*Value' %("
        .. "string of length 1 expected for typecode 'c'%)$",
        errmsg(mp.Value, 'c', 65))
    end)

    -- After CPython's _TestValue.test_invalid_typecode.
    it("reject a bad typecode", function()
      for _, tc in ipairs{'x', 'ii', '', 'u'} do
        assert.matches("^bad argument #1 to '[%w_.]*Value' %(bad typecode "
          .. "%(expected one of b B h H i I l L q Q f d c %?%)%)$",
          errmsg(mp.Value, tc))
        assert.matches("^bad argument #1 to '[%w_.]*Value' %(bad typecode ",
          errmsg(mp.RawValue, tc))
      end
      assert.matches("^bad argument #1 to '[%w_.]*Value' %(string expected, "
        .. "got table%)$", errmsg(mp.Value, {}))
    end)

    it("from RawValue and RawArray point at the caller's line", function()
      local ok, e = pcall(function() mp.RawValue('x') end)
      assert.is_false(ok)
      assert.matches("^[^:]*%f[%w_]value_spec%.lua:%d+: bad argument #1 to ",
        e)
      ok, e = pcall(function() mp.RawArray('i', -1) end)
      assert.is_false(ok)
      assert.matches("^[^:]*%f[%w_]value_spec%.lua:%d+: bad argument #2 to ",
        e)
    end)

    it("reject a field other than value", function()
      local v = mp.Value('i')
      assert.are.equal("bad argument #2 to 'newindex' (luamp.Value has no "
        .. "field foo to set)", errmsg(function() v.foo = 1 end))
      assert.is_nil(v.foo)
      assert.is_nil(v[1])
    end)
  end)

  describe("add and cas", function()
    it("add returns the new value, wrapping as C does", function()
      local v = mp.Value('i')
      assert.are.equal(5, v:add(5))
      assert.are.equal(2, v:add(-3))
      assert.are.equal(2, v.value)
      assert.are.equal(-128, mp.Value('b', 127):add(1))
      assert.are.equal(0, mp.Value('B', 255):add(1))
      assert.are.equal(255, mp.Value('B'):add(-1))
      assert.are.equal(65535, mp.Value('H'):add(-1))
      assert.are.equal(-2147483648, mp.Value('i', 2147483647):add(1))
      assert.are.equal(0, mp.Value('I', 4294967295):add(1))
      assert.are.equal(math.mininteger,
        mp.Value('q', math.maxinteger):add(1))
      assert.are.equal(0, mp.Value('Q', 0xFFFFFFFFFFFFFFFF):add(1))
      assert.are.equal(0, mp.RawValue('l', -10):add(10))
    end)

    it("cas swaps only when the value is the expected one", function()
      local v = mp.Value('h', 3)
      assert.is_true(v:cas(3, 10))
      assert.are.equal(10, v.value)
      assert.is_false(v:cas(3, 11))
      assert.are.equal(10, v.value)
      assert.is_true(v:cas(10, -7))
      assert.are.equal(-7, v.value)
      local r = mp.RawValue('Q', 0xFFFFFFFFFFFFFFFF)
      assert.is_true(r:cas(0xFFFFFFFFFFFFFFFF, 1))
      assert.are.equal(1, r.value)
    end)

    it("raise on a non-integer typecode and a non-integer amount",
       function()
      for _, tc in ipairs{'f', 'd', 'c', '?'} do
        local v = mp.Value(tc)
        local want = "add and cas need an integer typecode, not '" .. tc .. "'"
        assert.are.equal(want, errmsg(function() v:add(1) end))
        assert.are.equal(want, errmsg(function() v:cas(v.value, v.value) end))
      end
      local v = mp.Value('i')
      assert.are.equal("bad argument #1 to 'add' (number has no integer "
        .. "representation)", errmsg(function() v:add(1.5) end))
      assert.are.equal("bad argument #2 to 'cas' (integer expected for "
        .. "typecode 'i', got float 1.5)", errmsg(function() v:cas(0, 1.5) end))
      assert.are.equal(0, v.value)
    end)

    it("4 processes x 10,000 add(1) make exactly 40,000", function()
      local v = mp.Value('i')
      in_parallel(4, function()
        for _ = 1, 10000 do v:add(1) end
      end)
      assert.are.equal(40000, v.value)
    end)

    it("4 processes x 2,000 cas loops make exactly 8,000", function()
      local v = mp.RawValue('q')
      in_parallel(4, function()
        for _ = 1, 2000 do
          repeat local old = v.value until v:cas(old, old + 1)
        end
      end)
      assert.are.equal(8000, v.value)
    end)

    it("4 processes x 2,000 increments under get_lock():with make 8,000",
       function()
      local v = mp.Value('i')
      in_parallel(4, function()
        local l = v:get_lock()
        for _ = 1, 2000 do
          l:with(function() v.value = v.value + 1 end)
        end
      end)
      assert.are.equal(8000, v.value)
    end)
  end)

  it("has get and set, as a Manager's ValueProxy in Python", function()
    local v = mp.Value("i", 1)
    assert.are.equal(1, v:get())
    v:set(5)
    assert.are.equal(5, v.value)
    assert.matches("bad argument #1 to 'set' %(integer expected for "
                   .. "typecode 'i', got float 1.5%)",
                   H.errmsg(function() v:set(1.5) end))
    local c = mp.Array("c", 4)
    c:set("ab")
    assert.are.equal("ab", c:get())
    assert.matches("only 'c' arrays have a value field",
                   H.errmsg(function() mp.Array("i", 2):get() end))
  end)

  describe("get_lock", function()
    it("lends the Value its lock's acquire, release and with", function()
      local v = mp.Value("i", 0)
      local l = v:get_lock()
      assert.is_true(v:acquire())
      assert.is_true(l:owned())
      v:release()
      assert.is_false(l:locked())
      local a, b = v:with(function(x, y)
        assert.is_true(l:owned())
        v.value = v.value + x
        return x + y, "two"
      end, 1, 2)
      assert.are.same({3, "two"}, {a, b})
      assert.are.equal(1, v.value)
      local ok, e = pcall(v.with, v, function() error("in fn", 0) end)
      assert.are.same({false, "in fn"}, {ok, e})
      assert.is_false(l:locked())
      local arr = mp.Array("i", 2, mp.Lock())
      assert.is_true(arr:acquire(false))
      assert.is_false(arr:acquire(false))
      arr:release()
      assert.matches("this Value has no lock", H.errmsg(function()
        mp.RawValue("i", 0):acquire()
      end))
    end)

    it("is an RLock by default, the same each time, and usable", function()
      for _, v in ipairs{mp.Value('i'), mp.Value('d', 1, true),
                         mp.Value('i', nil, nil)} do
        local l = v:get_lock()
        assert.matches("^luamp%.RLock ", tostring(l))
        assert.is_true(rawequal(l, v:get_lock()))
        assert.is_true(l:acquire())
        assert.is_true(l:acquire())
        l:release()
        l:release()
        assert.is_false(l:locked())
      end
      assert.are_not.equal(tostring(mp.Value('i'):get_lock()),
        tostring(mp.Value('i'):get_lock()))
    end)

    it("has get_obj, which gives the Value or Array itself", function()
      local v, a = mp.Value('i', 3), mp.Array('d', {1.5, 2.5})
      assert.is_true(rawequal(v, v:get_obj()))
      assert.is_true(rawequal(a, a:get_obj()))
      v:get_obj().value = 4
      assert.are.equal(4, v.value)
      assert.are.equal(2.5, a:get_obj()[2])
      assert.matches("bad argument #1 to 'get_obj'",
                     errmsg(function() return v.get_obj({}) end))
      v:close()
      assert.matches("closed", errmsg(function() return v:get_obj() end))
    end)

    it("raises for a Value made without a lock", function()
      local want = "this Value has no lock (it was made without one)"
      assert.are.equal(want, errmsg(function()
        return mp.Value('i', 1, false):get_lock()
      end))
      assert.are.equal(want, errmsg(function()
        return mp.RawValue('i', 1):get_lock()
      end))
      local v = mp.RawValue('i', 1)
      v.value = 2
      assert.are.equal(2, v.value)
    end)

    it("returns the Lock it was given", function()
      local l = mp.Lock()
      local v = mp.Value('i', 5, l)
      assert.are.equal(tostring(l), tostring(v:get_lock()))
      assert.is_true(v:get_lock() == l, "get_lock() is not the lock given")
    end)

    it("with a given Lock, keeps another process out while this one holds "
       .. "it", function()
      local l = mp.Lock()
      local v = mp.Value('i', 5, l)
      local r = mp.Value('d', -1)
      assert.is_true(l:acquire())
      finish(spawn(function()
        local t0 = mp.monotonic()
        if not v:get_lock():acquire(true, 0.2) then
          r.value = mp.monotonic() - t0
        end
      end))
      assert.is_true(r.value >= 0.19 and r.value < 1.5,
        "the child's acquire: " .. r.value)
      l:release()
      assert.is_true(v:get_lock():acquire(false))
      assert.is_true(l:locked())
      v:get_lock():release()
    end)

    it("with a given RLock shares it between two objects", function()
      local l = mp.RLock()
      local v, a = mp.Value('i', 0, l), mp.Array('i', 3, l)
      assert.are.equal(tostring(l), tostring(v:get_lock()))
      assert.are.equal(tostring(l), tostring(a:get_lock()))
      v:get_lock():acquire()
      assert.is_true(l:owned())
      assert.is_true(a:get_lock():owned())
      v:get_lock():release()
      assert.is_false(l:locked())
    end)

    it("rejects a lock option that is not a boolean, Lock or RLock",
       function()
      for _, bad in ipairs{"x", 1, mp.Semaphore(), {}} do
        assert.matches("^bad argument #3 to '[%w_.]*Value' %(lock must be a "
          .. "boolean, a Lock or an RLock%)$", errmsg(mp.Value, 'i', 0, bad))
        assert.matches("^bad argument #3 to '[%w_.]*Array' %(lock must be a "
          .. "boolean, a Lock or an RLock%)$", errmsg(mp.Array, 'i', 2, bad))
      end
    end)
  end)

  describe("sent to another process", function()
    it("through a queue, made after the child started, is the same Value",
       function()
      local q, back = mp.Queue(), mp.Queue()
      local p = spawn(function()
        local v = q:get(true, 10)
        v.value = 42
        v:get_lock():with(function() v:add(1) end)
        back:put(v.value)
      end)
      local v = mp.Value('i', 1)
      q:put(v)
      assert.are.equal(43, back:get(true, 10))
      finish(p)
      assert.are.equal(43, v.value)
    end)

    it("through a pipe is the same Value with the same lock", function()
      local a, b = mp.Pipe()
      local l = mp.Lock()
      local p = spawn(function()
        local v = b:recv()
        v.value = 2.5
        b:send(v:get_lock():acquire(false))
      end)
      local v = mp.Value('d', 0, l)
      l:acquire()
      a:send(v)
      assert.is_false(a:recv())
      finish(p)
      assert.are.equal(2.5, v.value)
      l:release()
      a:close()
      b:close()
    end)

    it("through a queue in the same process is the same Value", function()
      local q, v = mp.Queue(), mp.Value('b', -5)
      q:put(v)
      local got = q:get()
      assert.are.equal(tostring(v), tostring(got))
      got.value = 9
      assert.are.equal(9, v.value)
      assert.are.equal(tostring(v:get_lock()), tostring(got:get_lock()))
    end)
  end)

  it("has a tostring with its typecode and value", function()
    assert.are.equal("luamp.Value('i', 5)", tostring(mp.Value('i', 5)))
    assert.are.equal("luamp.Value('d', 1.5)", tostring(mp.RawValue('d', 1.5)))
    assert.are.equal("luamp.Value('?', true)", tostring(mp.Value('?', true)))
  end)
end)

describe("Array", function()
  H.leakcheck()

  describe("indexing", function()
    it("is 1-based up to #a; reads outside give nil, writes raise",
       function()
      local a = mp.Array('i', 3)
      assert.are.equal(3, #a)
      assert.are.same({0, 0, 0}, a:totable())
      a[1] = 7
      a[3] = -9
      assert.are.equal(7, a[1])
      assert.are.equal(0, a[2])
      assert.are.equal(-9, a[3])
      for _, i in ipairs{0, -1, 4, 100, math.maxinteger, math.mininteger} do
        assert.is_nil(a[i])
      end
      assert.are.equal("bad argument #2 to 'newindex' (index 0 out of range "
        .. "(array has 3 elements))",
        errmsg(function() a[0] = 1 end))
      assert.are.equal("bad argument #2 to 'newindex' (index 4 out of range "
        .. "(array has 3 elements))",
        errmsg(function() a[4] = 1 end))
      assert.are.equal("bad argument #2 to 'newindex' (index -1 out of range "
        .. "(array has 3 elements))",
        errmsg(function() a[-1] = 1 end))
      assert.are.same({7, 0, -9}, a:totable())
      -- from position i to j, as string.sub counts them (Python's a[i:j])
      assert.are.same({0, -9}, a:totable(2))
      assert.are.same({0}, a:totable(2, 2))
      assert.are.same({0, -9}, a:totable(-2))
      assert.are.same({7, 0}, a:totable(1, -2))
      assert.are.same({}, a:totable(3, 2))
      assert.are.same({7, 0, -9}, a:totable(math.mininteger,
                                            math.maxinteger))
      assert.are.same({}, a:totable(4))
    end)

    it("works with ipairs, pairs and a numeric for, as a table does",
       function()
      local a = mp.Array('h', {5, -6, 7})
      local seen = {}
      for i, x in ipairs(a) do seen[i] = x end
      assert.are.same({5, -6, 7}, seen)
      seen = {}
      for i, x in pairs(a) do seen[#seen + 1] = {i, x} end
      assert.are.same({{1, 5}, {2, -6}, {3, 7}}, seen)
      local sum = 0
      for i = 1, #a do sum = sum + a[i] end
      assert.are.equal(6, sum)
    end)

    it("may be empty", function()
      local a = mp.Array('d', 0)
      assert.are.equal(0, #a)
      assert.are.same({}, a:totable())
      for _ in ipairs(a) do error("an empty array has no elements") end
      assert.is_nil(a[1])
      assert.are.equal("bad argument #2 to 'newindex' (index 1 out of range "
        .. "(array has 0 elements))",
        errmsg(function() a[1] = 1.0 end))
      assert.are.equal(0, #mp.Array('i', {}))
    end)

    it("checks the type of what is written", function()
      local a = mp.Array('i', 2)
      assert.are.equal("bad argument #3 to 'newindex' (integer expected for "
        .. "typecode 'i', got float 1.5)", errmsg(function() a[1] = 1.5 end))
      assert.matches("^bad argument #2 to '[%w_.]*Array' %(integer expected "
        .. "for typecode 'i', got float 2%.5 %(item 2%)%)$",
        errmsg(mp.Array, 'i', {1, 2.5}))
      assert.matches("%(boolean expected for typecode '%?', got string %(item "
        .. "2%)%)$", errmsg(mp.Array, '?', {true, "no"}))
      assert.are.same({0, 0}, a:totable())
    end)
  end)

  describe("typecodes", function()
    for _, t in ipairs(limits) do
      local tc, lo, hi = t[1], t[2], t[3]
      it("'" .. tc .. "' round-trips its limits in every element", function()
        local a = mp.Array(tc, {lo, hi, lo})
        assert.are.same({lo, hi, lo}, a:totable())
        a[1], a[3] = hi, hi
        assert.are.same({hi, hi, hi}, a:totable())
        local r = mp.RawArray(tc, 2)
        r[2] = lo
        r[1] = hi
        assert.are.same({hi, lo}, r:totable())
      end)
    end
  end)

  describe("errors", function()
    -- After CPython's _TestArray.test_invalid_typecode.
    it("reject a bad typecode and a negative size", function()
      assert.matches("^bad argument #1 to '[%w_.]*Array' %(bad typecode ",
        errmsg(mp.Array, 'x', {}))
      assert.matches("^bad argument #1 to '[%w_.]*Array' %(bad typecode ",
        errmsg(mp.RawArray, 'x', {}))
      assert.matches("^bad argument #2 to '[%w_.]*Array' %(size must be "
        .. "non%-negative%)$", errmsg(mp.Array, 'i', -1))
    end)

    it("have no value field unless 'c'", function()
      local a = mp.Array('i', 2)
      assert.are.equal("only 'c' arrays have a value field",
        errmsg(function() return a.value end))
      assert.are.equal("only 'c' arrays have a value field",
        errmsg(function() a.value = 1 end))
      assert.are.equal("calling 'raw' on bad self (only 'c' arrays have raw "
        .. "bytes)", errmsg(function() return a:raw() end))
    end)
  end)

  describe("'c' arrays", function()
    it("read and write value as a string that stops at NUL", function()
      local a = mp.Array('c', 5)
      assert.are.equal("", a.value)
      assert.are.equal("\0\0\0\0\0", a:raw())
      a.value = "hello"
      assert.are.equal("hello", a.value)
      a.value = "hi"
      assert.are.equal("hi", a.value)
      assert.are.equal("hi\0lo", a:raw())
      assert.are.equal("h", a[1])
      assert.are.equal("\0", a[3])
      a[3] = "!"
      assert.are.equal("hi!lo", a.value)
      assert.are.equal("bad argument #3 to 'newindex' (string too long (6 "
        .. "bytes for 5))", errmsg(function() a.value = "sixsix" end))
      assert.are.equal("hi!lo", a:raw())
      assert.are.equal("bad argument #3 to 'newindex' (string of length 1 "
        .. "expected for typecode 'c')", errmsg(function() a[1] = "xy" end))
    end)

    it("read and write value whole under the lock, as Python's do",
       function()
      -- A writer in another process puts two strings by turns; a reader
      -- never sees part of one and part of the other, nor does totable.
      local a = mp.Array("c", 64)
      local A, B = ("a"):rep(64), ("b"):rep(64)
      a.value = A
      local stop = mp.Value("i", 0)
      local p = spawn(function()
        while stop.value == 0 do a.value = A; a.value = B end
      end)
      local torn, reads, t0 = 0, 0, mp.monotonic()
      while mp.monotonic() - t0 < 0.5 do
        local v = reads % 2 == 0 and a.value
          or table.concat(a:totable())
        reads = reads + 1
        if v ~= A and v ~= B then torn = torn + 1 end
      end
      stop.value = 1
      finish(p)
      assert.is_true(reads > 100, reads .. " reads")
      assert.are.equal(0, torn, torn .. " torn of " .. reads)
      -- This process holding the lock already is no deadlock.
      a:get_lock():with(function()
        a.value = "held"
        assert.are.equal("held", a.value)
      end)
    end)

    it("can be made from a string, binary-safe", function()
      local a = mp.Array('c', "a\0b")
      assert.are.equal(3, #a)
      assert.are.equal("a", a.value)
      assert.are.equal("a\0b", a:raw())
      assert.are.same({"a", "\0", "b"}, a:totable())
    end)
  end)

  describe("add and cas", function()
    it("act on element i", function()
      local a = mp.Array('i', 3)
      assert.are.equal(5, a:add(2, 5))
      assert.are.equal(2, a:add(2, -3))
      assert.is_true(a:cas(2, 2, 6))
      assert.is_false(a:cas(2, 2, 7))
      assert.are.same({0, 6, 0}, a:totable())
      assert.are.equal(-128, mp.Array('b', {127}):add(1, 1))
      assert.are.equal("bad argument #1 to 'add' (index 4 out of range "
        .. "(array has 3 elements))",
        errmsg(function() a:add(4, 1) end))
      assert.are.equal("bad argument #1 to 'cas' (index 0 out of range "
        .. "(array has 3 elements))",
        errmsg(function() a:cas(0, 0, 1) end))
      assert.are.equal("add and cas need an integer typecode, not 'd'",
        errmsg(function() mp.Array('d', 2):add(1, 1) end))
      assert.are.equal("add and cas need an integer typecode, not 'f'",
        errmsg(function() mp.Array('f', 2):cas(1, 0, 1) end))
    end)

    it("4 processes x 10,000 add(i, 1) make exactly 10,000 per element",
       function()
      local a = mp.Array('q', 4)
      in_parallel(4, function(k)
        for j = 1, 10000 do a:add((j + k) % 4 + 1, 1) end
      end)
      assert.are.same({10000, 10000, 10000, 10000}, a:totable())
    end)
  end)

  -- After CPython's _TestArray.test_array and test_rawarray.
  for _, raw in ipairs{false, true} do
    it("made from a table is changed by a child" .. (raw and " (raw)" or ""),
       function()
      local seq = {680, 626, 934, 821, 150, 233, 548, 982, 714, 831}
      local a = raw and mp.RawArray('i', seq) or mp.Array('i', seq)
      assert.are.equal(#seq, #a)
      assert.are.equal(seq[4], a[4])
      assert.are.same({table.unpack(seq, 3, 7)},
        {table.unpack(a:totable(), 3, 7)})
      for i = 5, 8 do
        a[i] = i - 4
        seq[i] = i - 4
      end
      assert.are.same(seq, a:totable())
      local function f(s)
        for i = 2, #s do s[i] = s[i] + s[i - 1] end
      end
      f(seq)
      finish(spawn(f, a))
      assert.are.same(seq, a:totable())
    end)
  end

  -- After CPython's _TestArray.test_array_from_size.
  it("made from a size is zeroed, even where a freed array was", function()
    for _ = 1, 3 do
      local a = mp.Array('i', 10)
      assert.are.equal(10, #a)
      assert.are.same({0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, a:totable())
      for i = 1, 10 do a[i] = i - 1 end
      assert.are.same({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, a:totable())
      a:close()
    end
  end)

  describe("get_lock", function()

    it("is an RLock by default and absent with lock = false", function()
      assert.matches("^luamp%.RLock ", tostring(mp.Array('i', 2):get_lock()))
      local want = "this Array has no lock (it was made without one)"
      assert.are.equal(want, errmsg(function()
        return mp.Array('i', 2, false):get_lock()
      end))
      assert.are.equal(want, errmsg(function()
        return mp.RawArray('i', 2):get_lock()
      end))
    end)

    it("returns the Lock it was given", function()
      local l = mp.Lock()
      local a = mp.Array('i', {1, 2}, l)
      assert.are.equal(tostring(l), tostring(a:get_lock()))
      assert.is_true(a:get_lock() == l, "get_lock() is not the lock given")
    end)
  end)

  describe("sent to another process", function()
    it("through a queue and a pipe is the same Array", function()
      local q = mp.Queue()
      local x, y = mp.Pipe()
      local p = spawn(function()
        local a = q:get(true, 10)
        a[1] = 11
        local c = y:recv()
        c.value = "sent"
      end)
      local a, c = mp.Array('i', 2), mp.Array('c', 4)
      q:put(a)
      x:send(c)
      finish(p)
      assert.are.same({11, 0}, a:totable())
      assert.are.equal("sent", c.value)
      x:close()
      y:close()
    end)
  end)

  it("has a tostring with its typecode and length", function()
    assert.are.equal("luamp.Array('d', 3)", tostring(mp.Array('d', 3)))
    assert.are.equal("luamp.Array('c', 2)", tostring(mp.RawArray('c', "ab")))
  end)
end)

-- A handle whose methods are called often gets a metatable of its own, a
-- cache of its methods (see class.c): it must read and write as before,
-- stay one object with the others, check self as before, and go with the
-- collector.
describe("a handle used many times", function()
  local HOT = 100 -- past the lookups that make a handle's cache (64)

  it("reads its fields live and keeps its methods", function()
    local v = mp.Value("q", 0)
    for _ = 1, HOT do v:add(1) end
    assert.are.equal(HOT, v.value)
    v.value = 7
    assert.are.equal(7, v.value)
    assert.are.equal(8, v:add(1))
    assert.are.equal("q", v.typecode)
    assert.are.equal("luamp.Value", getmetatable(v).__name)
    assert.are.equal("luamp.Value('q', 8)", tostring(v))
    assert.is_nil(v[1])
    local a = mp.Array("i", {1, 2, 3})
    for _ = 1, HOT do a:totable() end
    a[2] = 20
    assert.are.same({1, 20, 3}, {a[1], a[2], a[3]})
    assert.is_nil(a[4])
    assert.are.equal(3, #a)
    local seen = {}
    for i, x in pairs(a) do seen[i] = x end
    assert.are.same({1, 20, 3}, seen)
    local d = mp.Dict{x = 1}
    for _ = 1, HOT do d:get("x") end
    d.y = 2
    assert.are.equal(1, d.x)
    assert.are.equal(2, d.y)
    assert.is_nil(d.z)
    d.x = nil
    assert.is_nil(d.x)
    d.get = "a value"  -- a method's name stays the method's, as before
    assert.are.equal("function", type(d.get))
    assert.are.equal("a value", d:get("get"))
    local l = mp.List{1}
    for i = 1, HOT do l:append(i) end
    assert.are.equal(HOT + 1, #l)
    assert.are.equal(HOT, l[HOT + 1])
    local r, w = mp.Pipe()
    for i = 1, HOT do w:send(i); assert.are.equal(i, r:recv()) end
    assert.is_false(w.closed)
    w:close()
    assert.is_true(w.closed)
    r:close()
  end)

  it("is the same object where it is sent, and checks self as before",
     function()
    local v = mp.Value("i", 0)
    for _ = 1, HOT do v:add(1) end
    local q = mp.Queue()
    q:put(v)
    local back = q:get()
    assert.is_true(back == v)
    back:add(1)
    assert.are.equal(HOT + 1, v.value)
    local p = H.spawn(function()
      local u = q:get(true, 10)
      for _ = 1, HOT do u:add(1) end
    end)
    q:put(v)
    H.finish(p)
    assert.are.equal(2 * HOT + 1, v.value)
    -- a method of Value on an Array (its sibling) as before, on another
    -- class's handle a type error
    local a = mp.Array("i", 2)
    assert.are.same({0, 0}, v.totable(a))
    local e = H.errmsg(v.add, mp.Dict(), 1)
    assert.matches("bad argument #1 to .-%(luamp.Value expected, got "
                   .. "luamp.Dict%)", e)
    e = H.errmsg(v.add, "x", 1)
    assert.matches("luamp.Value expected, got string", e)
  end)

  it("gives its class's metatable back once read more than called",
     function()
    local v = mp.Value("q", 0)
    local class = getmetatable(v)
    for _ = 1, HOT do v:add(1) end
    assert.are_not.equal(class, getmetatable(v))
    for _ = 1, 600 do assert.are.equal(HOT, v.value) end
    assert.are.equal(class, getmetatable(v))
    for _ = 1, HOT do v:add(1) end
    assert.are_not.equal(class, getmetatable(v))
    assert.are.equal(2 * HOT, v.value)
  end)

  it("survives its metamethods called with anything", function()
    local v = mp.Value("i", 0)
    local idx = getmetatable(v).__index
    -- a string, a table, a nil as self: no crash, and no method taken on
    assert.are.equal("function", type(idx("0123456789abcdef", "add")))
    assert.are.equal("function",
                     type(idx({1, 2, 3, 4, 5, 6, 7, 8, 9}, "add")))
    for _ = 1, HOT do v:add(1) end
    local cache = getmetatable(v).__index
    local ci = getmetatable(cache).__index
    assert.are.equal("function", type(ci({}, "add")))
    assert.are.equal("function", type(ci("not a table", "add")))
    assert.are.equal(HOT, ci("anything", "value"))
    -- a handle whose metatable debug took away stays without one
    local w = mp.Value("i", 0)
    local widx = getmetatable(w).__index
    debug.setmetatable(w, nil)
    for _ = 1, HOT do widx(w, "add") end
    assert.is_nil(debug.getmetatable(w))
  end)

  it("is collected, with what it holds", function()
    collectgarbage()
    collectgarbage()
    local before = mp.stats().arena_blocks
    do
      local d = mp.Dict{k = ("v"):rep(100)}
      local l = mp.List{1, 2}
      local v = mp.Value("q", 0)
      for _ = 1, HOT do
        d:get("k")
        l:append(3)
        v:add(1)
      end
      assert.is_true(mp.stats().arena_blocks > before)
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(before, mp.stats().arena_blocks)
  end)
end)
