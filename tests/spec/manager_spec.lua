-- manager_spec.lua -- Manager and Namespace: every factory of Python's
-- SyncManager, shutdown and <close>, a Namespace's fields seen by every
-- process, code written for Python's managers kept in its shape, and the
-- exact values of CPython's own manager container tests (dict, list,
-- namespace, nested proxies and queues) in Lua's terms: 1-based indexes,
-- totable() where Python slices with [:], nil where Python deletes.

local mp = require "luamp"
local H = require "spec_helper"
local spawn, finish = H.spawn, H.finish
local errmsg, range = H.errmsg, H.range

-- The items of list l as a table with n, as Python's l[:] gives them.
local function items(l) return l:totable() end

-- The metatable name of a shared object.
local function kind(o) return getmetatable(o).__name end

local FACTORIES = {"dict", "list", "Namespace", "Queue", "JoinableQueue",
                   "Lock", "RLock", "Semaphore", "BoundedSemaphore",
                   "Condition", "Event", "Barrier", "Value", "Array"}

describe("Manager", function()
  H.leakcheck()

  it("shows whether it runs", function()
    local m = mp.Manager()
    assert.are.equal("luamp.Manager (running)", tostring(m))
    m:shutdown()
    assert.are.equal("luamp.Manager (shut down)", tostring(m))
  end)

  it("start() returns the manager, for code that calls it", function()
    local m = mp.Manager()
    assert.is_true(rawequal(m, m:start()))
    m:shutdown()
  end)

  describe("factories", function()
    it("make the shared objects of the same names", function()
      local m <close> = mp.Manager()
      local made = {
        dict = m:dict(), list = m:list(), Namespace = m:Namespace(),
        Queue = m:Queue(), JoinableQueue = m:JoinableQueue(),
        Lock = m:Lock(), RLock = m:RLock(), Semaphore = m:Semaphore(),
        BoundedSemaphore = m:BoundedSemaphore(), Condition = m:Condition(),
        Event = m:Event(), Barrier = m:Barrier(2), Value = m:Value("i"),
        Array = m:Array("d", 3),
      }
      local want = {dict = "luamp.Dict", list = "luamp.List",
                    Namespace = "luamp.Namespace"}
      for _, name in ipairs(FACTORIES) do
        assert.are.equal(want[name] or "luamp." .. name, kind(made[name]),
          "m:" .. name .. "()")
      end
    end)

    it("make a Pool that runs tasks, with its argument errors named",
       function()
      local m <close> = mp.Manager()
      do
        local pool <close> = m:Pool(2)
        assert.are.equal("luamp.Pool", kind(pool))
        assert.are.same({2, 4, 6, n = 3},
                        pool:map(function(x) return 2 * x end, {1, 2, 3}))
      end
      local ok, err = pcall(function() m:Pool(1.5) end)
      assert.is_false(ok)
      assert.matches("%f[%w_]manager_spec%.lua:%d+: bad argument #1 to "
        .. "'Pool' %(processes must be an integer, got 1.5%)$", err)
      m:shutdown()
      ok, err = pcall(m.Pool, m, 1)
      assert.is_false(ok)
      assert.matches("the manager is shut down$", err)
    end)

    it("pass their arguments on", function()
      local m <close> = mp.Manager()
      assert.are.same({a = 1}, m:dict{a = 1}:totable())
      assert.are.same({1, 2, n = 2}, m:list{1, 2}:totable())
      assert.are.equal(1, m:Namespace{a = 1}.a)
      local q = m:Queue(1)
      q:put(1)
      assert.is_true(q:full())
      assert.are.equal(3, m:Semaphore(3):get_value())
      local bs = m:BoundedSemaphore(1)
      assert.is_true(bs:acquire())
      bs:release()
      assert.has_error(function() bs:release() end,
        "semaphore or lock released too many times")
      local b = m:Barrier(1)
      assert.are.equal(0, b:wait(1))
      assert.are.equal(1, b.parties)
      local v = m:Value("q", -5)
      assert.are.equal(-5, v.value)
      assert.are.equal(-4, v:add(1))
      local a = m:Array("i", {4, 5, 6})
      assert.are.same({4, 5, 6}, a:totable())
      local r = m:RLock()
      assert.is_true(r:acquire())
      assert.is_true(r:acquire())
      r:release()
      r:release()
    end)

    it("make objects that every process shares", function()
      local m <close> = mp.Manager()
      local d, l, ns = m:dict(), m:list(), m:Namespace()
      local q, jq, ev = m:Queue(), m:JoinableQueue(), m:Event()
      local v, a, lock = m:Value("i", 0), m:Array("i", 2), m:Lock()
      finish(spawn(function()
        d.k = "from child"
        l:append("from child")
        ns.x = 1
        q:put("from child")
        jq:put("job")
        ev:set()
        lock:with(function() v.value = 7 end)
        a[2] = 9
      end))
      assert.are.equal("from child", d.k)
      assert.are.equal("from child", l[1])
      assert.are.equal(1, ns.x)
      assert.are.equal("from child", q:get(true, 1))
      assert.are.equal("job", jq:get(true, 1))
      jq:task_done()
      jq:join()
      assert.is_true(ev:is_set())
      assert.are.equal(7, v.value)
      assert.are.same({0, 9}, a:totable())
    end)

    it("raise argument errors at the caller", function()
      local m <close> = mp.Manager()
      assert.matches("bad typecode", errmsg(function() m:Value("x") end))
      assert.matches("number expected, got no value",
        errmsg(function() m:Barrier() end))
      assert.has_error(function() m:Namespace(5) end,
        "bad argument #1 to 'Namespace' (table expected, got number)")
    end)
  end)

  describe("shutdown", function()
    it("makes every factory raise \"the manager is shut down\"", function()
      local m = mp.Manager()
      m:shutdown()
      for _, name in ipairs(FACTORIES) do
        local args = {Barrier = {2}, Value = {"i"}, Array = {"i", 1}}
        local ok, e = pcall(m[name], m, table.unpack(args[name] or {}))
        assert.is_false(ok, "m:" .. name .. "() after shutdown")
        assert.matches("the manager is shut down$", e)
      end
      assert.has_error(function() m:dict() end, "the manager is shut down")
    end)

    it("leaves the objects made before it working", function()
      local m = mp.Manager()
      local d, q = m:dict(), m:Queue()
      m:shutdown()
      d.k = 1
      q:put("still")
      assert.are.equal(1, d.k)
      assert.are.equal("still", q:get(true, 1))
    end)

    it("may be called again", function()
      local m = mp.Manager()
      m:shutdown()
      assert.has_no_error(function() m:shutdown() end)
      assert.are.equal("luamp.Manager (shut down)", tostring(m))
    end)

    it("happens at the end of a <close> scope", function()
      local outer
      do
        local m <close> = mp.Manager()
        outer = m
        assert.are.equal("luamp.Dict", kind(m:dict()))
      end
      assert.are.equal("luamp.Manager (shut down)", tostring(outer))
      assert.has_error(function() outer:list() end,
        "the manager is shut down")
    end)
  end)

  describe("in code written for Python's managers", function()
    it("hands a manager queue to pool tasks", function()
      local m <close> = mp.Manager()
      local q = m:Queue()
      local pool <close> = mp.Pool(2)
      local r = pool:map(function(x)
        q:put(x * x)
        return x
      end, range(1, 20))
      assert.are.same(range(1, 20), r)
      local got = {}
      for _ = 1, 20 do got[#got + 1] = q:get(true, 1) end
      table.sort(got)
      for i = 1, 20 do assert.are.equal(i * i, got[i]) end
      assert.is_true(q:empty())
    end)

    it("fills a manager dict and list from a process", function()
      local m <close> = mp.Manager()
      local d = m:dict()
      local l = m:list(range(0, 9))
      finish(spawn(function(dd, ll)
        dd[1] = "1"
        dd["2"] = 2
        dd[0.25] = false
        for i = 1, #ll // 2 do
          ll[i], ll[#ll + 1 - i] = ll[#ll + 1 - i], ll[i]
        end
      end, d, l))
      assert.are.same({[1] = "1", ["2"] = 2, [0.25] = false}, d:totable())
      assert.are.same({9, 8, 7, 6, 5, 4, 3, 2, 1, 0, n = 10}, items(l))
    end)

    it("collects results from pool tasks in a manager dict", function()
      local m <close> = mp.Manager()
      local d = m:dict()
      local lock = m:Lock()
      local pool <close> = mp.Pool(2)
      pool:map(function(x)
        d[x] = x * x
        lock:with(function() d.total = (d.total or 0) + x end)
      end, range(1, 50))
      assert.are.equal(51, #d)
      assert.are.equal(1275, d.total)
      for i = 1, 50 do assert.are.equal(i * i, d[i]) end
    end)
  end)
end)

describe("Namespace", function()
  H.leakcheck()

  it("reads and writes fields by name; nil deletes", function()
    local ns = mp.Namespace()
    assert.is_nil(ns.x)
    ns.x = 1
    ns.name = "Bob"
    ns.t = {1, 2}
    assert.are.equal(1, ns.x)
    assert.are.equal("Bob", ns.name)
    assert.are.same({1, 2}, ns.t)
    ns.x = nil
    assert.is_nil(ns.x)
    assert.are.equal(2, #ns)
  end)

  it("has no methods: every name is a field", function()
    local ns = mp.Namespace()
    for _, name in ipairs{"get", "keys", "pop", "close", "incr", "update"} do
      assert.is_nil(ns[name], name)
      ns[name] = name .. "!"
    end
    for _, name in ipairs{"get", "keys", "pop", "close", "incr", "update"} do
      assert.are.equal(name .. "!", ns[name])
    end
    local seen = {}
    for k, v in pairs(ns) do seen[k] = v end
    assert.are.same({get = "get!", keys = "keys!", pop = "pop!",
                     close = "close!", incr = "incr!", update = "update!"},
                    seen)
  end)

  it("is seen by every process: a field set in one is read in another",
     function()
    local ns = mp.Namespace()
    local up, down = mp.Queue(), mp.Queue()
    local p = spawn(function()
      ns.x = 1
      up:put("set")
      assert(down:get(true, 10) == "look")
      up:put(ns.y)
    end)
    assert.are.equal("set", up:get(true, 10))
    assert.are.equal(1, ns.x)
    ns.y = "from the parent"
    down:put("look")
    assert.are.equal("from the parent", up:get(true, 10))
    finish(p)
    up:close()
    down:close()
  end)

  it("values are copied in and out", function()
    local ns = mp.Namespace()
    local t = {1}
    ns.t = t
    t[1] = 2
    assert.are.same({1}, ns.t)
    local r = ns.t
    r[1] = 3
    assert.are.same({1}, ns.t)
  end)

  it("shows its fields sorted by name", function()
    local ns = mp.Namespace()
    assert.are.equal("Namespace()", tostring(ns))
    for _, k in ipairs{"kilo", "alpha", "juliet", "echo", "bravo", "india",
                       "charlie", "hotel", "delta", "golf", "foxtrot"} do
      ns[k] = #k
    end
    assert.are.equal("Namespace(alpha=5, bravo=5, charlie=7, delta=5, "
      .. "echo=4, foxtrot=7, golf=4, hotel=5, india=5, juliet=6, kilo=4)",
      tostring(ns))
  end)

  it("shows (closed) once closed", function()
    local ns = mp.Namespace()
    getmetatable(ns).__close(ns)
    assert.are.equal("luamp.Namespace (closed)", tostring(ns))
  end)
end)

-- CPython's Lib/test/_test_multiprocessing.py, class _TestContainers: the
-- same operations and the same expected values, said in Lua.
describe("CPython's manager container cases", function()
  H.leakcheck()

  local m
  before_each(function() m = mp.Manager() end)
  after_each(function() m:shutdown() end)

  it("test_list", function()
    local a = m:list(range(0, 9))
    assert.are.same(range(0, 9), items(a))
    local b = m:list()
    assert.are.same({n = 0}, items(b))
    b:extend(range(0, 4))
    assert.are.same(range(0, 4), items(b))
    assert.are.equal(2, b[3])
    local slice = table.pack(table.unpack(items(b), 3, 10))
    assert.are.same({2, 3, 4}, {table.unpack(slice)})
    b:extend(b:totable()) -- b *= 2
    assert.are.same({0, 1, 2, 3, 4, 0, 1, 2, 3, 4, n = 10}, items(b))
    local sum = b:totable() -- b + [5, 6]
    sum[11], sum[12], sum.n = 5, 6, 12
    assert.are.same({0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, n = 12}, sum)
    assert.are.same(range(0, 9), items(a))
    local e = m:list{a, b}
    assert.are.same(range(0, 9), items(e[1]))
    assert.are.same({0, 1, 2, 3, 4, 0, 1, 2, 3, 4, n = 10}, items(e[2]))
    local f = m:list{a}
    a:append("hello")
    assert.are.same({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "hello", n = 11},
                    items(f[1]))
  end)

  it("test_list_iter", function()
    local a = m:list(range(0, 9))
    local got = {}
    local f, s, i = ipairs(a)
    for k, v in f, s, i do got[k] = v end
    assert.are.same({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, got)
    assert.is_nil(f(s, 10)) -- exhausted
    f, s, i = ipairs(a)
    a[1] = 100
    assert.are.same({1, 100}, {f(s, i)})
  end)

  it("test_list_proxy_in_list", function()
    local a = m:list{m:list(range(0, 2)), m:list(range(0, 2)),
                     m:list(range(0, 2))}
    for i = 1, 3 do assert.are.same({0, 1, 2, n = 3}, items(a[i])) end
    a[1][#a[1]] = 55
    assert.are.same({0, 1, 55, n = 3}, items(a[1]))
    for i = 2, 3 do assert.are.same({0, 1, 2, n = 3}, items(a[i])) end
    assert.are.equal(2, a[2]:pop())
    assert.are.equal(2, #a[2])
    for _, i in ipairs{1, 3} do assert.are.equal(3, #a[i]) end
    a:close()
    local b = m:list()
    b:append(b)
    assert.is_true(b[1] == b)
    b:pop() -- a list holding itself lives as long as it does
    b:close()
  end)

  it("test_dict", function()
    local d = m:dict()
    local indices = range(65, 69)
    for _, i in ipairs(indices) do d[i] = string.char(i) end
    local want = {}
    for _, i in ipairs(indices) do want[i] = string.char(i) end
    assert.are.same(want, d:totable())
    local ks = d:keys()
    table.sort(ks)
    assert.are.same({65, 66, 67, 68, 69}, ks)
    local vs = d:values()
    table.sort(vs)
    assert.are.same({"A", "B", "C", "D", "E"}, vs)
    local its = d:items()
    table.sort(its, function(x, y) return x[1] < y[1] end)
    assert.are.same({{65, "A"}, {66, "B"}, {67, "C"}, {68, "D"}, {69, "E"}},
                    its)
  end)

  it("test_dict_iter", function()
    local d = m:dict()
    for i = 65, 69 do d[i] = string.char(i) end
    local f, s, k = pairs(d)
    local got = {}
    for key in f, s, k do got[#got + 1] = key end
    table.sort(got)
    assert.are.same({65, 66, 67, 68, 69}, got)
    assert.is_nil(f(s, got[5])) -- exhausted
    -- Python raises when the dict changes size under an iterator; a Lua
    -- walk over a snapshot of the keys skips those deleted meanwhile.
    f, s, k = pairs(d)
    d:clear()
    assert.is_nil(f(s, k))
  end)

  it("test_dict_proxy_nested", function()
    local pets = m:dict{ferrets = 2, hamsters = 4}
    local supplies = m:dict{water = 10, feed = 3}
    local d = m:dict{pets = pets, supplies = supplies}

    assert.are.equal(10, supplies.water)
    assert.are.equal(10, d.supplies.water)

    d.supplies.blankets = 5
    assert.are.equal(5, supplies.blankets)
    assert.are.equal(5, d.supplies.blankets)

    d.supplies.water = 7
    assert.are.equal(7, supplies.water)
    assert.are.equal(7, d.supplies.water)

    pets:close()
    supplies:close()
    assert.are.equal(2, d.pets.ferrets)
    d.supplies.blankets = 11
    assert.are.equal(11, d.supplies.blankets)

    pets = d.pets
    supplies = d.supplies
    supplies.water = 7
    assert.are.equal(7, supplies.water)
    assert.are.equal(7, d.supplies.water)

    d:clear()
    assert.are.equal(0, #d)
    assert.are.equal(7, supplies.water)
    assert.are.equal(4, pets.hamsters)

    local l = m:list{pets, supplies}
    l[1].marmots = 1
    assert.are.equal(1, pets.marmots)
    assert.are.equal(1, l[1].marmots)

    pets:close()
    supplies:close()
    assert.are.equal(1, l[1].marmots)

    local outer = m:list{{88, 99}, l}
    assert.are.equal("table", type(outer[1])) -- a plain table, not a List
    assert.are.same({88, 99}, outer[1])
    local last = outer[#outer]
    assert.are.equal(3, last[#last].feed)
  end)

  it("test_nested_queue", function()
    local a = m:list()
    a:append(m:Queue())
    a[1]:put(123)
    assert.are.equal(123, a[1]:get(true, 1))
    local b = m:dict()
    b[0] = m:Queue()
    b[0]:put(456)
    assert.are.equal(456, b[0]:get(true, 1))
  end)

  it("test_namespace", function()
    local n = m:Namespace()
    n.name = "Bob"
    n.job = "Builder"
    n._hidden = "hidden"
    assert.are.same({"Bob", "Builder"}, {n.name, n.job})
    n.job = nil
    assert.are.equal("Namespace(name=Bob)", tostring(n))
    assert.is_not_nil(n.name)
    assert.is_nil(n.job)
  end)
end)
