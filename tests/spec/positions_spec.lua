-- positions_spec.lua -- where misuse is reported: every error that a wrong
-- call of a luamp function raises names the line of that call, as Lua's
-- own functions do, and never a line of luamp's own Lua files.  Argument
-- errors read as Lua's: "bad argument #1 to 'join' (number expected, got
-- string)".
--
-- Each case is a function written on one line that makes one call; the
-- error must be "<this file>:<that line>: <message>".

local mp = require "luamp"
local H = require "spec_helper"

local SRC = debug.getinfo(1, "S").short_src

-- The line fn was written on, which must be a single one.
local function line_of(fn)
  local info = debug.getinfo(fn, "S")
  assert(info.linedefined == info.lastlinedefined,
         "a case must be written on one line")
  return info.linedefined
end

-- Checks that e is the error "<this file>:<line>: msg"; msg may also be
-- {pattern = p} for a message with varying parts.
local function check_at(line, msg, e)
  assert.are.equal("string", type(e), "not an error string: " .. tostring(e))
  local where = SRC .. ":" .. line .. ": "
  assert.are.equal(where, e:sub(1, #where),
                   "not raised at the caller's line: " .. e)
  local text = e:sub(#where + 1)
  if type(msg) == "table" then
    assert.matches(msg.pattern, text)
  else
    assert.are.equal(msg, text)
  end
end

-- Calls fn (a case: one line, one call) and checks that it raised msg at
-- its line.
local function raises_here(msg, fn)
  local ok, e = pcall(fn)
  assert.is_false(ok, "no error was raised")
  check_at(line_of(fn), msg, e)
end

-- Runs fn (a case) in a child and checks that it raised msg there, at its
-- line.
local function raises_here_in_child(msg, fn)
  local q = mp.Queue()
  local p = H.spawn(function()
    local ok, e = pcall(fn)
    q:put(ok and "no error was raised" or e)
  end)
  local e = q:get(true, 10)
  H.finish(p)
  q:close()
  check_at(line_of(fn), msg, e)
end

-- Runs a chunk in a fresh luamp in which no process can be forked;
-- returns its status and output.  nil when this machine cannot do that.
local function without_fork(code)
  local _, uid = H.run("id -u")
  local root = uid == "0\n"
  if H.run("command -v prlimit") ~= 0
     or (root and H.run("command -v setpriv") ~= 0) then
    return nil
  end
  -- Under a limit of one process a user forks none (it runs one already);
  -- root is exempt from limits, so it runs the chunk as nobody.
  local limit = (root and "setpriv --reuid=65534 --regid=65534 "
                 .. "--clear-groups " or "") .. "prlimit --nproc=1"
  -- LeakSanitizer checks from a thread of its own, which the limit forbids.
  local asan = os.getenv("ASAN_OPTIONS")
  if asan then
    limit = "env ASAN_OPTIONS=" .. asan .. ":detect_leaks=0 " .. limit
  end
  return H.luamp_e(code, limit)
end

local never_started = "process not started"

describe("Error positions", function()
  H.leakcheck()

  it("are checked against this file's own name", function()
    assert.matches("positions_spec%.lua$", SRC)
    raises_here("positions", function() error("positions") end)
  end)

  describe("Process", function()
    it("mp.Process with bad options", function()
      raises_here("bad argument #1 to 'Process' (table expected, got number)",
        function() mp.Process(5) end)
      raises_here("bad argument #1 to 'Process' (field 'target' is not "
        .. "callable (a number value))",
        function() mp.Process{target = 5} end)
      raises_here("bad argument #1 to 'Process' (field 'args' must be a "
        .. "table, got string)",
        function() mp.Process{args = "x"} end)
      raises_here("bad argument #1 to 'Process' (field 'name' must be a "
        .. "string, got number)",
        function() mp.Process{name = 5} end)
    end)

    it("join with a timeout that is not a number", function()
      local p = mp.Process{}
      raises_here("bad argument #1 to 'join' (number expected, got string)",
        function() p:join("x") end)
      raises_here("bad argument #1 to 'join' (timeout must be a number, not "
        .. "NaN)",
        function() p:join(0/0) end)
    end)

    it("methods called without the process", function()
      local p = mp.Process{}
      for _, name in ipairs{"start", "join", "is_alive", "terminate", "kill",
                            "close", "run"} do
        local want = "bad argument #1 to '" .. name .. "' (luamp.Process "
        raises_here(want .. "expected, got no value)",
          function() p[name]() end)
        raises_here(want .. "expected, got number)",
          function() p[name](5) end)
      end
    end)

    it("methods and fields of a process never started", function()
      local p = mp.Process{}
      raises_here("can only join a started process",
        function() p:join() end)
      raises_here("cannot terminate a process that was never started",
        function() p:terminate() end)
      raises_here("cannot kill a process that was never started",
        function() p:kill() end)
      raises_here(never_started, function() return p.sentinel end)
    end)

    it("methods and fields of a closed process", function()
      local p = mp.Process{}
      p:close()
      local closed = "process object is closed"
      raises_here(closed, function() p:start() end)
      raises_here(closed, function() p:join() end)
      raises_here(closed, function() p:is_alive() end)
      raises_here(closed, function() p:terminate() end)
      raises_here(closed, function() p:kill() end)
      raises_here(closed, function() return p.sentinel end)
    end)

    it("start twice, close while running", function()
      local p = H.spawn(mp.sleep, 60)
      raises_here("cannot start a process twice", function() p:start() end)
      raises_here("cannot close a process while it is still running; call "
        .. "join() or terminate() first",
        function() p:close() end)
      p:kill()
      p:join()
    end)

    it("start and mp.Pool when no process can be forked", function()
      local status, out, err = without_fork([[
local mp = require "luamp"
local p = mp.Process{target = print}
print(select(2, pcall(function() p:start() end)))
print(select(2, pcall(function() mp.Pool(1) end)))
]])
      if status == nil then
        pending("needs prlimit, and setpriv when run as root")
        return
      end
      assert.are.equal(0, status, err)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(2, #lines, out)
      assert.matches("^%(command line%):3: cannot start a process: ",
                     lines[1])
      assert.matches("^%(command line%):4: cannot start a process: ",
                     lines[2])
    end)
  end)

  describe("ParentProcess", function()
    it("methods called without it, and join", function()
      raises_here_in_child("bad argument #1 to 'is_alive' "
        .. "(luamp.ParentProcess expected, got no value)",
        function() mp.parent_process().is_alive() end)
      raises_here_in_child("can only join a child process",
        function() mp.parent_process():join() end)
    end)
  end)

  describe("values that cannot be sent", function()
    it("are refused at the line of the put or send", function()
      local q = mp.Queue()
      local a, b = mp.Pipe()
      raises_here("cannot send value[2]: userdata (FILE*)",
        function() q:put({1, io.stdout}) end)
      raises_here("cannot send value[2]: userdata (FILE*)",
        function() q:put_nowait({1, io.stdout}) end)
      raises_here("cannot send value: thread",
        function() a:send(coroutine.create(print)) end)
      a:close()
      b:close()
      q:close()
    end)
  end)

  describe("start methods", function()
    it("of the wrong type", function()
      raises_here("bad argument #1 to 'set_start_method' (string expected, "
        .. "got number)", function() mp.set_start_method(42, true) end)
      raises_here("bad argument #1 to 'get_context' (string expected, got "
        .. "boolean)", function() mp.get_context(true) end)
      raises_here("bad argument #1 to 'Pool' (string expected, got number)",
        function() mp.Pool{context = 5} end)
      raises_here('cannot find context for "bogus"',
        function() mp.set_start_method("bogus", true) end)
    end)
  end)

  describe("timeouts", function()
    it("take a numeric string, as luaL_checknumber does", function()
      local p = mp.Process{target = mp.sleep, args = {5}}
      p:start()
      local a, b = mp.Pipe()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(mp.sleep, {5})
      local c = mp.Condition()
      local t0 = mp.monotonic()
      assert.is_false(p:join("0.05"))
      assert.are.same({}, mp.wait({a, p}, "0.05"))
      assert.is_false(r:wait("0.05"))
      H.raises(mp.TimeoutError, "the result is not ready after 0.05 s",
        r.get, r, "0.05")
      c:acquire()
      assert.is_false(c:wait_for(function() return false end, "0.05"))
      c:release()
      local dt = mp.monotonic() - t0
      assert.is_true(dt >= 0.2 and dt < 3, "took " .. dt)
      p:kill()
      p:join()
      pool:terminate()
      a:close()
      b:close()
    end)
  end)

  describe("mp.wait", function()
    it("with arguments of the wrong type", function()
      raises_here("bad argument #1 to 'wait' (table expected, got number)",
        function() mp.wait(5) end)
      raises_here("bad argument #2 to 'wait' (number expected, got string)",
        function() mp.wait({}, "x") end)
      raises_here("bad argument #2 to 'wait' (timeout must be a number, not "
        .. "NaN)",
        function() mp.wait({}, 0/0) end)
      raises_here("bad argument #1 to 'wait' (item 1 is not a connection, "
        .. "listener, process, sentinel or queue of this process)",
        function() mp.wait{5} end)
    end)

    it("on a process never started, or closed", function()
      local p = mp.Process{}
      raises_here(never_started, function() mp.wait{p} end)
      p:close()
      raises_here("process object is closed", function() mp.wait{p} end)
    end)
  end)

  describe("RawValue and RawArray", function()
    it("with a bad typecode, size or initial value", function()
      local codes = "bad typecode (expected one of b B h H i I l L q Q f d "
        .. "c ?)"
      raises_here("bad argument #1 to 'RawValue' (" .. codes .. ")",
        function() mp.RawValue("z") end)
      raises_here("bad argument #1 to 'RawValue' (string expected, got nil)",
        function() mp.RawValue() end)
      raises_here("bad argument #2 to 'RawValue' (integer expected for "
        .. "typecode 'i', got string)", function() mp.RawValue("i", "x") end)
      raises_here("bad argument #1 to 'RawArray' (" .. codes .. ")",
        function() mp.RawArray("z", 3) end)
      raises_here("bad argument #2 to 'RawArray' (number expected, got "
        .. "string)",
        function() mp.RawArray("i", "x") end)
    end)
  end)

  describe("lock:with", function()
    it("with something not callable, or without the lock", function()
      for _, name in ipairs{"Lock", "RLock", "Semaphore", "BoundedSemaphore",
                            "Condition"} do
        local l = mp[name]()
        raises_here("bad argument #1 to 'with' (function expected, got "
          .. "number)",
          function() l:with(5) end)
        raises_here("bad argument #1 to 'with' (function expected, got nil)",
          function() l:with() end)
        raises_here("bad argument #1 to 'with' (luamp." .. name
          .. " expected, got function)",
          function() l.with(print) end)
        assert.is_true(l:acquire(false), name .. " was left held")
        l:release()
        l:close()
      end
    end)

    it("on a closed lock", function()
      for name, what in pairs{Lock = "lock", RLock = "lock",
                              Semaphore = "semaphore",
                              BoundedSemaphore = "semaphore",
                              Condition = "condition"} do
        local l = mp[name]()
        l:close()
        raises_here("attempt to use a closed " .. what,
          function() l:with(print) end)
      end
      -- Given closed to what takes a lock: said so.
      for _, name in ipairs{"Lock", "RLock"} do
        local l = mp[name]()
        l:close()
        for _, make in ipairs{
          function() return mp.Condition(l) end,
          function() return mp.Value("i", 0, l) end,
          function() return mp.Array("i", 3, l) end,
        } do
          local ok, e = pcall(make)
          assert.is_false(ok)
          assert.matches("bad argument #%d to '[%w_.]+' %(the lock given "
            .. "is closed%)$", e)
        end
      end
    end)

    it("when the release fails", function()
      local l, rl = mp.Lock(), mp.RLock()
      local bs, c = mp.BoundedSemaphore(), mp.Condition()
      raises_here("release unlocked lock",
        function() l:with(l.release, l) end)
      raises_here("cannot release un-acquired lock",
        function() rl:with(rl.release, rl) end)
      raises_here("semaphore or lock released too many times",
        function() bs:with(bs.release, bs) end)
      raises_here("cannot release un-acquired lock",
        function() c:with(c.release, c) end)
      l:close()
      rl:close()
      bs:close()
      c:close()
    end)

    it("leaves the function's own error as it was", function()
      local l = mp.Lock()
      local function boom() error("boom") end
      local ok, e = pcall(l.with, l, boom)
      assert.is_false(ok)
      check_at(line_of(boom), "boom", e)
      assert.is_true(l:acquire(false), "the lock was left held")
      l:close()
    end)
  end)

  describe("cond:wait_for", function()
    local function no() return false end

    it("with a bad predicate or timeout, or without the condition",
       function()
      local c = mp.Condition()
      raises_here("bad argument #1 to 'wait_for' (function expected, got "
        .. "nil)",
        function() c:wait_for() end)
      raises_here("bad argument #1 to 'wait_for' (function expected, got "
        .. "number)",
        function() c:wait_for(5) end)
      raises_here("bad argument #2 to 'wait_for' (number expected, got "
        .. "table)",
        function() c:wait_for(no, {}) end)
      raises_here("bad argument #2 to 'wait_for' (number expected, got "
        .. "string)",
        function() c:wait_for(no, "soon") end)
      raises_here("bad argument #2 to 'wait_for' (timeout must be a number, "
        .. "not NaN)",
        function() c:wait_for(no, 0/0) end)
      raises_here("bad argument #1 to 'wait_for' (luamp.Condition expected, "
        .. "got function)",
        function() c.wait_for(no) end)
      c:close()
    end)

    it("without holding the lock", function()
      local c = mp.Condition()
      raises_here("cannot wait on un-acquired lock",
        function() c:wait_for(no, 0.01) end)
      raises_here("cannot wait on un-acquired lock",
        function() c:wait_for(no, "0.01") end)
      c:close()
    end)
  end)

  describe("Manager", function()
    it("factories with bad arguments", function()
      local m <close> = mp.Manager()
      raises_here("bad argument #1 to 'dict' (table or Dict expected, got "
        .. "number)",
        function() m:dict(5) end)
      raises_here("bad argument #1 to 'list' (table or List expected, got "
        .. "number)",
        function() m:list(5) end)
      raises_here("bad argument #1 to 'Queue' (number expected, got string)",
        function() m:Queue("x") end)
      raises_here("bad argument #1 to 'JoinableQueue' (number expected, got "
        .. "string)",
        function() m:JoinableQueue("x") end)
      raises_here("bad argument #1 to 'Semaphore' (number expected, got "
        .. "string)",
        function() m:Semaphore("x") end)
      raises_here("bad argument #1 to 'BoundedSemaphore' (semaphore initial "
        .. "value must be >= 0)",
        function() m:BoundedSemaphore(-1) end)
      raises_here("bad argument #1 to 'Condition' (a Lock or RLock "
        .. "expected)",
        function() m:Condition(5) end)
      raises_here("bad argument #1 to 'Barrier' (number expected, got "
        .. "string)",
        function() m:Barrier("x") end)
      raises_here({pattern = "^bad argument #1 to 'Value' %(bad typecode"},
        function() m:Value("z") end)
      raises_here("bad argument #2 to 'Array' (number expected, got no "
        .. "value)",
        function() m:Array("i") end)
      raises_here("bad argument #1 to 'Namespace' (table expected, got "
        .. "number)",
        function() m:Namespace(5) end)
    end)

    it("Namespace with fields it cannot hold", function()
      local m <close> = mp.Manager()
      raises_here("cannot send value.f: userdata (FILE*)",
        function() m:Namespace{f = io.stdout} end)
      raises_here("bad argument #1 to 'Namespace' (key string, number or "
        .. "boolean expected, got table)",
        function() m:Namespace{[{}] = 1} end)
    end)

    it("methods called without the manager", function()
      local m <close> = mp.Manager()
      for _, name in ipairs{"dict", "list", "Queue", "Lock", "Value",
                            "Namespace", "shutdown"} do
        raises_here("bad argument #1 to '" .. name .. "' (luamp.Manager "
          .. "expected, got no value)",
          function() m[name]() end)
      end
    end)

    it("factories of a manager shut down", function()
      local m = mp.Manager()
      m:shutdown()
      raises_here("the manager is shut down", function() m:Queue() end)
      raises_here("the manager is shut down", function() m:dict() end)
      raises_here("the manager is shut down", function() m:Namespace() end)
    end)
  end)

  describe("Pool", function()
    it("mp.Pool with bad options", function()
      raises_here("bad argument #1 to 'Pool' (number or table expected, got "
        .. "string)",
        function() mp.Pool("x") end)
      raises_here("bad argument #1 to 'Pool' (processes must be at least 1)",
        function() mp.Pool(0) end)
      raises_here("bad argument #1 to 'Pool' (initializer must be callable)",
        function() mp.Pool{initializer = 5} end)
      raises_here("bad argument #1 to 'Pool' (initargs must be a table)",
        function() mp.Pool{initargs = 5} end)
      raises_here("bad argument #1 to 'Pool' (maxtasksperchild must be a "
        .. "positive integer)",
        function() mp.Pool{maxtasksperchild = 0} end)
      raises_here({pattern = "^shared memory exhausted: "},
        function() mp.Pool(1 << 40) end)
    end)

    it("methods with bad arguments", function()
      local pool <close> = mp.Pool(1)
      local fd = io.stdout
      raises_here("bad argument #1 to 'apply' (function expected, got "
        .. "number)",
        function() pool:apply(5) end)
      raises_here("bad argument #2 to 'apply' (table expected, got number)",
        function() pool:apply(tostring, 5) end)
      raises_here("cannot send args[1]: userdata (FILE*)",
        function() pool:apply(tostring, {fd}) end)
      -- Once the function is known, a task is submitted in one call to the
      -- board, which encodes the arguments itself: the same error, here.
      assert.are.equal("1", pool:apply(tostring, {1}))
      raises_here("cannot send args[1]: userdata (FILE*)",
        function() pool:apply(tostring, {fd}) end)
      raises_here("cannot send args[2].x: userdata (FILE*)",
        function() pool:apply_async(tostring, {1, {x = fd}}) end)
      raises_here("cannot send func<upvalue fd>: userdata (FILE*)",
        function() pool:apply(function() return fd end) end)
      raises_here("cannot send func<upvalue fd>: userdata (FILE*)",
        function() pool:map(function() return fd end, {1}) end)
      raises_here("cannot send func<upvalue fd>: userdata (FILE*)",
        function() pool:imap(function() return fd end, {1}) end)
      raises_here("bad argument #3 to 'apply_async' (callback must be "
        .. "callable)",
        function() pool:apply_async(tostring, {}, 5) end)
      raises_here("bad argument #4 to 'apply_async' (error_callback must be "
        .. "callable)",
        function() pool:apply_async(tostring, {}, nil, 5) end)
      raises_here("bad argument #1 to 'map' (function expected, got number)",
        function() pool:map(5, {}) end)
      raises_here("bad argument #2 to 'map' (table or function expected, "
        .. "got number)",
        function() pool:map(tostring, 5) end)
      raises_here("bad argument #3 to 'map' (chunksize must be a positive "
        .. "integer)",
        function() pool:map(tostring, {1}, 0) end)
      raises_here("bad argument #3 to 'map' (chunksize must be a positive "
        .. "integer)",
        function() pool:map(tostring, {1}, {chunksize = "x"}) end)
      raises_here("cannot send iterable[2]: userdata (FILE*)",
        function() pool:map(tostring, {1, fd}) end)
      raises_here("bad argument #4 to 'map_async' (callback must be "
        .. "callable)",
        function() pool:map_async(tostring, {}, nil, 5) end)
      raises_here("bad argument #5 to 'map_async' (error_callback must be "
        .. "callable)",
        function() pool:map_async(tostring, {}, nil, nil, 5) end)
      raises_here("bad argument #2 to 'starmap' (item 1 is not a table of "
        .. "arguments)",
        function() pool:starmap(tostring, {1}) end)
      raises_here("bad argument #4 to 'starmap_async' (callback must be "
        .. "callable)",
        function() pool:starmap_async(tostring, {}, nil, {}) end)
      raises_here("bad argument #1 to 'imap' (function expected, got number)",
        function() pool:imap(5, {}) end)
      raises_here("bad argument #2 to 'imap_unordered' (table or function "
        .. "expected, got number)",
        function() pool:imap_unordered(tostring, 5) end)
      raises_here("Pool is still running", function() pool:join() end)
      assert.are.same({n = 2, 1, 4}, pool:map(function(x) return x * x end,
                                              {1, 2}))
    end)

    it("methods called without the pool", function()
      local pool <close> = mp.Pool(1)
      for _, name in ipairs{"apply", "apply_async", "map", "map_async",
                            "starmap", "starmap_async", "imap",
                            "imap_unordered", "close", "terminate",
                            "join"} do
        raises_here("bad argument #1 to '" .. name .. "' (luamp.Pool "
          .. "expected, got no value)",
          function() pool[name]() end)
        raises_here("bad argument #1 to '" .. name .. "' (luamp.Pool "
          .. "expected, got function)",
          function() pool[name](tostring, {}) end)
      end
    end)

    it("methods of a pool no longer running", function()
      local pool = mp.Pool(1)
      pool:close()
      for _, name in ipairs{"apply", "apply_async", "map", "map_async",
                            "starmap", "starmap_async", "imap",
                            "imap_unordered"} do
        raises_here("Pool not running",
          function() pool[name](pool, tostring, {}) end)
      end
      pool:join()
    end)
  end)

  describe("AsyncResult", function()
    it("get and wait with a timeout that is not a number", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(mp.sleep, {0.05})
      raises_here("bad argument #1 to 'get' (number expected, got string)",
        function() r:get("x") end)
      raises_here("bad argument #1 to 'wait' (number expected, got string)",
        function() r:wait("x") end)
      raises_here("bad argument #1 to 'get' (timeout must be a number, not "
        .. "NaN)",
        function() r:get(0/0) end)
      raises_here("bad argument #1 to 'wait' (timeout must be a number, not "
        .. "NaN)",
        function() r:wait(0/0) end)
      raises_here("AsyncResult not ready", function() r:successful() end)
      assert.are.equal(0, select("#", r:get(10)))
    end)

    it("methods called without the result", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(tostring, {1})
      for _, name in ipairs{"get", "wait", "ready", "successful"} do
        raises_here("bad argument #1 to '" .. name .. "' (luamp.AsyncResult "
          .. "expected, got no value)",
          function() r[name]() end)
      end
      assert.are.equal("1", r:get(10))
    end)

    it("from a process that does not own the pool", function()
      local pool <close> = mp.Pool(1)
      local r = pool:apply_async(mp.sleep, {0.5})
      local foreign = "the pool belongs to another process"
      raises_here_in_child(foreign, function() r:get() end)
      raises_here_in_child(foreign, function() r:wait(5) end)
      raises_here_in_child(foreign, function() pool:apply(print) end)
      raises_here_in_child(foreign,
        function() pool:close(); pool:join() end)
      raises_here_in_child(foreign, function() pool:terminate() end)
      raises_here_in_child(foreign, function() pool:join() end)
      assert.are.equal(2, pool:apply(math.abs, {-2}))
    end)
  end)

  describe("imap iterators", function()
    it("an item that cannot be sent, at the line of the loop", function()
      local pool <close> = mp.Pool(1)
      local it = pool:imap(tostring, {1, io.stdout})
      assert.are.equal("1", it())
      raises_here("cannot send iterable[2]: userdata (FILE*)",
        function() for _ in it do end end)
    end)

    it("the input's own error, as it was raised", function()
      local pool <close> = mp.Pool(1)
      local i, at = 0, nil
      local function input()
        i = i + 1
        if i < 3 then return i end
        at = debug.getinfo(1, "l").currentline; error("boom")
      end
      local it = pool:imap_unordered(tostring, input)
      local got = {}
      local ok, e = pcall(function() for v in it do got[#got + 1] = v end end)
      assert.is_false(ok)
      check_at(at, "boom", e)
      table.sort(got)
      assert.are.same({"1", "2"}, got)
    end)
  end)
end)
