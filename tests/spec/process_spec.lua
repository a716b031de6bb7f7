-- process_spec.lua -- Process objects and the process-level functions
-- of the module (current_process, active_children, cpu_count, sleep...),
-- run in the test process itself: every child is a fork of it.

local mp = require "luamp"
local H = require "spec_helper"
local timed, readfile, writefile = H.timed, H.readfile, H.writefile
local sleeper = H.sleeper

-- Runs fn(...) in a child and returns what it returned, as a string (the
-- child writes it to a file), after checking that the child exited 0.
local function in_child(fn, ...)
  local path = os.tmpname()
  local p = mp.Process{
    target = function(...) writefile(path, tostring(fn(...))) end,
    args = table.pack(...),
  }
  p:start()
  assert.is_true(p:join())
  local s = readfile(path)
  os.remove(path)
  assert.are.equal(0, p.exitcode, "the child failed")
  return s
end

describe("Process", function()
  H.leakcheck()

  describe("constructor", function()
    it("passes args to the target, nils included when args has n", function()
      local function show(...)
        local t = table.pack(...)
        for i = 1, t.n do t[i] = tostring(t[i]) end
        return t.n .. ":" .. table.concat(t, ",", 1, t.n)
      end
      assert.are.equal("3:1,nil,3", in_child(show, 1, nil, 3))
      assert.are.equal("4:nil,2,nil,nil", in_child(show, nil, 2, nil, nil))
    end)

    it("passes an args array without n up to its length", function()
      local path = os.tmpname()
      local p = mp.Process{target = function(...)
        writefile(path, select("#", ...) .. ":" .. table.concat({...}, ","))
      end, args = {"a", "b", "c"}}
      p:start()
      p:join()
      assert.are.equal("3:a,b,c", readfile(path))
      os.remove(path)
    end)

    it("calls the target with no arguments when args is absent", function()
      local path = os.tmpname()
      local p = mp.Process{target = function(...)
        writefile(path, tostring(select("#", ...)))
      end}
      p:start()
      p:join()
      assert.are.equal("0", readfile(path))
      os.remove(path)
    end)

    it("refuses a read-only field among the fields it is given", function()
      for _, k in ipairs{"exitcode", "pid", "ident", "sentinel"} do
        assert.has_error(function() mp.Process{target = print, [k] = 1} end,
          "bad argument #1 to 'Process' (field '" .. k .. "' is read-only)")
      end
      local p = mp.Process{target = print, payload = "mine"}
      assert.are.equal("mine", p.payload)
      assert.is_nil(p.exitcode)
    end)

    it("keeps the name and daemon flag it is given", function()
      local p = mp.Process{target = print, name = "worker-7", daemon = true}
      assert.are.equal("worker-7", p.name)
      assert.is_true(p.daemon)
      assert.is_false(mp.Process{}.daemon)
    end)

    it("lets daemon be set before start, not after, as Python does",
       function()
      local p = mp.Process{target = function() end}
      p.daemon = true
      assert.is_true(p.daemon)
      p.daemon = nil
      assert.is_false(p.daemon)
      p:start()
      local ok, err = pcall(function() p.daemon = true end)
      assert.is_false(ok)
      assert.matches("%f[%w_]process_spec%.lua:%d+: cannot set daemon of a "
        .. "process that has started$", err)
      assert.is_false(p.daemon)
      p:join()
    end)

    it("refuses to set exitcode, pid and sentinel, and a name that is "
       .. "not a string", function()
      local p = mp.Process{target = function() end}
      for _, k in ipairs{"exitcode", "pid", "ident", "sentinel"} do
        local ok, err = pcall(function() p[k] = 5 end)
        assert.is_false(ok)
        assert.matches("%f[%w_]process_spec%.lua:%d+: cannot set the "
          .. "read%-only field '" .. k .. "' of a Process$", err)
      end
      local ok, err = pcall(function() p.name = 7 end)
      assert.is_false(ok)
      assert.matches("name must be a string, got number$", err)
      p.name = "renamed"
      p.note = "a field of the object's own"
      p:start()
      p:join()
      assert.are.equal(0, p.exitcode)
      assert.are.equal("renamed", p.name)
      assert.are.equal("a field of the object's own", p.note)
    end)

    it("names processes Process-N, counting in the creating process",
       function()
      local a, b = mp.Process{}, mp.Process{}
      local n = tonumber(a.name:match("^Process%-(%d+)$"))
      assert.is_not_nil(n, "unexpected default name " .. a.name)
      assert.are.equal("Process-" .. (n + 1), b.name)
    end)

    it("names a child's own children Process-N:1, Process-N:2...", function()
      local p
      p = mp.Process{target = function()
        local names = {mp.Process{}.name, mp.Process{}.name}
        writefile(p.path, table.concat(names, " "))
      end, path = os.tmpname()}
      p:start()
      p:join()
      assert.are.equal(p.name .. ":1 " .. p.name .. ":2", readfile(p.path))
      os.remove(p.path)
    end)

    it("lets a run field override run, with the object as self", function()
      local p
      p = mp.Process{
        path = os.tmpname(),
        greeting = "hello",
        run = function(self)
          writefile(self.path, tostring(rawequal(self, p)) .. " "
            .. self.greeting .. " " .. self.name)
        end,
        name = "custom",
      }
      p:start()
      p:join()
      assert.are.equal(0, p.exitcode)
      assert.are.equal("true hello custom", readfile(p.path))
      os.remove(p.path)
    end)

    it("rejects a non-table argument", function()
      assert.has_error(function() mp.Process(42) end,
        "bad argument #1 to 'Process' (table expected, got number)")
    end)

    it("rejects a target that is not callable", function()
      assert.has_error(function() mp.Process{target = 1} end,
        "bad argument #1 to 'Process' (field 'target' is not callable "
        .. "(a number value))")
    end)

    it("accepts a callable table as target", function()
      local path = os.tmpname()
      local t = setmetatable({}, {__call = function(_, x)
        writefile(path, x)
      end})
      local p = mp.Process{target = t, args = {"called"}}
      p:start()
      p:join()
      assert.are.equal("called", readfile(path))
      os.remove(path)
    end)

    it("rejects args that are not a table and a name that is not a string",
       function()
      assert.has_error(function() mp.Process{args = "x"} end,
        "bad argument #1 to 'Process' (field 'args' must be a table, "
        .. "got string)")
      assert.has_error(function() mp.Process{name = 3} end,
        "bad argument #1 to 'Process' (field 'name' must be a string, "
        .. "got number)")
    end)
  end)

  describe("start", function()
    -- The first table a process sends makes its cache of the names of
    -- modules and C functions.  In a fork, that must not rewrite what
    -- it shares with its parent: growing the string table rehashed every
    -- string, and made the child its own copy of each page holding one
    -- (some 290 kB here).
    local pending_asan = os.getenv("LUAMP_SANITIZE") and pending or it

    -- Runs in a fresh luamp: prelude, then a child that `new` (a Process
    -- constructor) makes, which runs `setup` and sends its first table;
    -- checks that it wrote less than 150 kB more to send it.
    local function first_table_small(prelude, new, setup)
      local status, out, err = H.luamp_e(([[
        local mp = require "luamp"
        local core = require "luamp.core"
        %s
        -- (It makes no short string, which could be the one that has
        -- Lua's string table grow: a rehash writes to every string.)
        local function dirty()
          local f = assert(io.open("/proc/self/smaps_rollup"))
          local s = f:read("a")
          local _, at = s:find("\nPrivate_Dirty:%%s+")
          local kb = 0
          f:close()
          for i = at + 1, #s do
            local b = s:byte(i)
            if b < 48 or b > 57 then break end
            kb = kb * 10 + b - 48
          end
          return kb
        end
        local q = mp.Queue()
        local p = %s{target = function(q)
          %s
          local before = dirty()
          local m = core.message({string.format, string})
          q:put(dirty() - before)
        end, args = {q}}
        p:start()
        io.write(q:get(true, 10))
        p:join()
      ]]):format(prelude, new, setup))
      assert.are.equal("", err)
      assert.are.equal(0, status)
      local grew = assert(tonumber(out))
      assert.is_true(grew >= 0 and grew < 150, "the child wrote " .. grew ..
                     " kB more to send its first table")
    end

    pending_asan("lets a forked child name modules without copying its "
                 .. "parent's strings", function()
      -- a module of its own: the child makes its names again
      first_table_small("", "mp.Process",
                        'package.loaded["spec.newmod"] = {len = string.len}')
    end)

    pending_asan("gives a forkserver's children the server's names of "
                 .. "modules, made once", function()
      -- 3000 modules make the names cache large: a child that made its
      -- own wrote some 390 kB to send its first table.
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. H.q(dir)))
      writefile(dir .. "/spec_many.lua", [[
        for i = 1, 3000 do package.loaded["spec_many." .. i] = {} end
        return {}
      ]])
      local ok, err = pcall(first_table_small,
        ("package.path = %q .. package.path\n"):format(dir .. "/?.lua;") ..
        'mp.set_forkserver_preload({"spec_many"})',
        'mp.get_context("forkserver").Process',
        'assert(package.loaded["spec_many.3000"], "not preloaded")')
      os.remove(dir .. "/spec_many.lua")
      os.remove(dir)
      assert(ok, err)
    end)

    it("sends a module loaded after the start by name, from the child, and "
       .. "from a parent that forked it", function()
      local q, back = mp.Queue(), mp.Queue()
      local p = mp.Process{target = function(q, back)
        package.loaded["spec.late_child"] = {from = "child"}
        package.loaded["spec.late_parent"] = {}
        q:put(package.loaded["spec.late_child"])
        local t = back:get(true, 10)
        q:put(rawequal(t, package.loaded["spec.late_parent"]))
      end, args = {q, back}}
      p:start()
      local mine = {from = "parent"}
      package.loaded["spec.late_child"] = mine
      package.loaded["spec.late_parent"] = {}
      local got = q:get(true, 10)
      back:put(package.loaded["spec.late_parent"])
      local parents = q:get(true, 10)
      p:join()
      package.loaded["spec.late_child"] = nil
      package.loaded["spec.late_parent"] = nil
      q:close()
      back:close()
      assert.is_true(rawequal(mine, got), "the child's by name")
      -- the parent's names are made again only when it forks
      if mp.get_start_method() == "fork" then
        assert.is_true(parents, "the parent's by name")
      end
      assert.are.equal(0, p.exitcode)
    end)

    it("sends a module replaced or unloaded since as the table it is, never "
       .. "by the name it lost", function()
      -- (A fresh program: its names are read at its first send.)
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local q = mp.Queue()
        local old = {version = 1}
        package.loaded["spec.reloaded"] = old
        q:put(old)
        assert(rawequal(old, q:get()), "not sent by name")
        local new = {version = 2}
        package.loaded["spec.reloaded"] = new
        q:put({old})
        local got = q:get()[1]
        assert(not rawequal(new, got), "the old one came as the new")
        assert(not rawequal(old, got) and got.version == 1)
        q:put(new)
        assert(rawequal(new, q:get()), "the new one not by name")
        package.loaded["spec.reloaded"] = nil
        q:put(new)
        got = q:get()
        assert(not rawequal(new, got) and got.version == 2)
        io.write("ok ", q:qsize())
      ]])
      assert.are.same({0, "ok 0", ""}, {status, out, err})
    end)

    it("gives the child its args and upvalues alive, however the parent "
       .. "drops them", function()
      local q = mp.Queue()
      local go = mp.Event()
      local p
      do
        local v = mp.Value("i", 41)
        p = mp.Process{target = function(d)
          go:wait(10)
          q:put({d.x, v:add(1)})
        end, args = {mp.Dict{x = "from args"}}}
        p:start()
      end
      p.args = nil
      collectgarbage()
      collectgarbage()
      go:set()
      local got = q:get(true, 10)
      p:join()
      assert.are.same({"from args", 42}, got)
      q:close()
      go:close()
    end)

    it("runs the target in another process, whose pid is p.pid", function()
      local path = os.tmpname()
      local p = mp.Process{target = function()
        writefile(path, tostring(mp.current_process().pid))
      end}
      assert.is_nil(p.pid)
      p:start()
      assert.are.equal("integer", math.type(p.pid))
      assert.are_not.equal(mp.current_process().pid, p.pid)
      p:join()
      assert.are.equal(tostring(p.pid), readfile(path))
      os.remove(path)
    end)

    it("cannot start a process twice", function()
      local p = mp.Process{target = function() end}
      p:start()
      assert.has_error(function() p:start() end,
        "cannot start a process twice")
      p:join()
      assert.has_error(function() p:start() end,
        "cannot start a process twice")
    end)

    it("can only start a process object made in the same process",
       function()
      local other = mp.Process{target = function() end}
      local got = in_child(function()
        local ok, e = pcall(other.start, other)
        return tostring(ok) .. "|" .. e
      end)
      assert.are.equal("false|can only start a process object created by "
        .. "current process", got)
    end)

    it("reports misuse at the caller's line", function()
      local p = mp.Process{target = function() end}
      local ok, err = pcall(function() p:join() end)
      assert.is_false(ok)
      assert.matches("%f[%w_]process_spec%.lua:%d+: can only join a started "
        .. "process$", err)
    end)
  end)

  describe("exitcode", function()
    it("is nil before start and while running", function()
      local p = sleeper()
      assert.is_nil(p.exitcode)
      p:start()
      assert.is_nil(p.exitcode)
      assert.is_true(p:is_alive())
      p:kill()
      p:join()
    end)

    it("is 0 when the target returns", function()
      local p = mp.Process{target = function() return 5 end}
      p:start()
      p:join()
      assert.are.equal(0, p.exitcode)
    end)

    it("is n after os.exit(n)", function()
      local p = mp.Process{target = function() os.exit(7) end}
      p:start()
      p:join()
      assert.are.equal(7, p.exitcode)
    end)

    it("is n after os.exit(n, true), which runs none of the parent's "
       .. "clean-up in the child", function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local guard <close> = setmetatable({}, {__close = function()
          io.write("closed in ", mp.current_process().name, " ")
        end})
        local p = mp.Process{target = function() os.exit(3, true) end}
        p:start()
        p:join()
        io.write(p.exitcode, " ")
      ]])
      assert.are.equal(0, status, err)
      assert.are.equal("3 closed in MainProcess ", out)
      assert.are.equal("", err)
    end)

    it("is 1 after an error, with the error under Process <name>: on stderr",
       function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local p = mp.Process{name = "failing", target = function()
          error("boom in child")
        end}
        p:start()
        p:join()
        io.write(p.exitcode)
      ]])
      assert.are.equal(0, status)
      assert.are.equal("1", out)
      assert.matches("Process failing:\n", err, 1, true)
      assert.matches("boom in child", err, 1, true)
      assert.matches("stack traceback", err, 1, true)
    end)

    -- Runs a script that starts a child reading a line, its parent having
    -- read `before` (a Lua expression, as `first`) and reading `after`,
    -- with two lines on stdin: the status, stdout and stderr.
    local function stdin_run(before, after)
      return H.run("printf 'line1\\nline2\\n' | " .. H.q(H.luamp) .. " -e "
        .. H.q([[
        local mp = require "luamp"
        local first = ]] .. before .. [[

        local p = mp.Process{target = function()
          io.write("child ", tostring(io.read("l")), " ")
          io.flush()
        end}
        p:start()
        p:join()
        io.write("parent ", ]] .. after .. [[)
      ]]))
    end

    it("gives a child no input: its stdin is /dev/null, as Python's",
       function()
      -- A child that read its parent's stdin would take, through its
      -- stdio's read-ahead, lines the parent has not read yet.
      local status, out, err = stdin_run("nil",
                                         'io.read("l"), " ", io.read("l")')
      assert.are.same({0, "child nil parent line1 line2", ""},
                      {status, out, err})
    end)

    it("drops the input its parent's stdin had read ahead", function()
      -- The parent's first read takes both lines into stdin's buffer; the
      -- child's copy of that buffer is emptied, not read.
      local status, out, err = stdin_run('io.read("l")',
                                         'first, " ", io.read("l")')
      assert.are.same({0, "child nil parent line1 line2", ""},
                      {status, out, err})
    end)

    it("is 1 after an error that is a number, which is printed as lua's is",
       function()
      local status, out, err = H.luamp_e([[
        local mp = require "luamp"
        local p = mp.Process{name = "n", target = function() error(42) end}
        p:start()
        p:join()
        io.write(p.exitcode)
      ]])
      assert.are.equal(0, status, err)
      assert.are.equal("1", out)
      assert.matches("^Process n:\n42\nstack traceback", err)
    end)

    it("is 1 after an error even if the child had handled a Ctrl-C",
       function()
      -- The parent sends SIGINT once the child has written `ready` and is
      -- asleep (state S in /proc): inside its pcall(mp.sleep, 10).
      local status, out, err = H.luamp_e(H.PROC .. [[
        local mp = require "luamp"
        local ready = os.tmpname()
        os.remove(ready)
        local function exists(path)
          local f = io.open(path)
          if f then f:close() end
          return f ~= nil
        end
        local p = mp.Process{name = "resilient", target = function()
          assert(io.open(ready, "w")):close()
          local ok, e = pcall(mp.sleep, 10)
          print(ok, e)
          error("ordinary failure")
        end}
        p:start()
        local deadline = mp.monotonic() + 10
        while not (exists(ready) and state(p.pid) == "S")
              and mp.monotonic() < deadline do
          mp.sleep(0.002)
        end
        os.execute("kill -INT " .. p.pid)
        p:join()
        os.remove(ready)
        print(p.exitcode)
      ]], "timeout -s KILL 20")
      assert.are.equal(0, status, err)
      assert.matches("^false\t.*interrupted", out)
      assert.matches("Process resilient:\n", err, 1, true)
      assert.matches("ordinary failure", err, 1, true)
      assert.matches("\n1\n$", out)
    end)

    it("is -15 after terminate and -9 after kill", function()
      local a, b = sleeper(), sleeper()
      a:start()
      b:start()
      a:terminate()
      b:kill()
      assert.is_true(a:join(5))
      assert.is_true(b:join(5))
      assert.are.equal(-15, a.exitcode)
      assert.are.equal(-9, b.exitcode)
    end)
  end)

  describe("join", function()
    it("returns false after the timeout and true once the child has ended",
       function()
      local p = sleeper()
      p:start()
      local dt, ended = timed(function() return p:join(0.2) end)
      assert.is_false(ended)
      assert.is_true(dt >= 0.19 and dt < 1.5, "join(0.2) took " .. dt)
      assert.is_true(p:is_alive())
      p:terminate()
      assert.is_true(p:join())
      assert.is_false(p:is_alive())
      assert.are.equal(-15, p.exitcode)
    end)

    it("does not wait with a zero or negative timeout", function()
      local p = sleeper()
      p:start()
      local dt, a, b = timed(function() return p:join(0), p:join(-1) end)
      assert.is_false(a)
      assert.is_false(b)
      assert.is_true(dt < 0.1, "join(0) took " .. dt)
      p:kill()
      p:join()
    end)

    it("returns promptly once the child ends", function()
      local p = mp.Process{target = function() mp.sleep(0.1) end}
      p:start()
      local dt, ended = timed(function() return p:join(10) end)
      assert.is_true(ended)
      assert.is_true(dt >= 0.05 and dt < 1.5, "join took " .. dt)
    end)

    it("cannot join a process that was never started", function()
      assert.has_error(function() mp.Process{}:join() end,
        "can only join a started process")
    end)

    it("rejects a timeout that is not a number", function()
      local p = mp.Process{target = function() end}
      p:start()
      assert.has_error(function() p:join("soon") end,
        "bad argument #1 to 'join' (number expected, got string)")
      p:join()
    end)

    it("rejects a NaN timeout", function()
      local p = mp.Process{target = function() end}
      p:start()
      local ok, e = pcall(p.join, p, 0 / 0)
      p:join()
      assert.is_false(ok)
      assert.are.equal("bad argument #1 to 'join' (timeout must be a number, "
        .. "not NaN)", (e:gsub("^[^:]*:%d+: ", "")))
    end)

    it("can only join a child process: not itself, not its parent",
       function()
      local p
      p = mp.Process{target = function()
        local ok1, e1 = pcall(p.join, p)
        local ok2, e2 = pcall(mp.parent_process().join, mp.parent_process())
        writefile(p.path, table.concat({tostring(p:is_alive()),
          tostring(ok1), e1, tostring(ok2), e2}, "|"))
      end, path = os.tmpname()}
      p:start()
      p:join()
      assert.are.equal(0, p.exitcode)
      assert.are.equal("true|false|can only join a child process|false|"
        .. "can only join a child process", readfile(p.path))
      os.remove(p.path)
    end)

    -- The child sends SIGINT to its parent once the parent is asleep in
    -- join (state S in /proc), so that the signal lands inside join.  The
    -- script catches the error, ends the child, and ends with `ending`.
    local function interrupted_join(ending)
      return H.luamp_e(H.CTRL_C .. [[
        local _, p, ok, e = interrupted(function(p) return p:join() end)
        print(ok, e)
        p:terminate()
        print(p:join(5), p.exitcode)
      ]] .. ending, "timeout -s KILL 20")
    end

    it("raises an interrupted error on Ctrl-C; the script can go on",
       function()
      local status, out, err = interrupted_join("")
      local l1, l2 = out:match("^([^\n]*)\n([^\n]*)\n$")
      assert.is_not_nil(l1, "unexpected output: " .. out .. err)
      assert.matches("^false\t.*interrupted", l1)
      assert.are.equal("true\t-15", l2)
      assert.are.equal(0, status, err)
    end)

    it("leaves the exit status to a script that has handled Ctrl-C",
       function()
      local status, out, err = interrupted_join("os.exit(0)")
      assert.matches("^false\t.*interrupted.*\ntrue\t%-15\n$", out)
      assert.are.equal(0, status, err)
      status, out, err = interrupted_join("os.exit(4)")
      assert.matches("\ntrue\t%-15\n$", out)
      assert.are.equal(4, status, err)
      status, out, err = interrupted_join("error('later failure')")
      assert.matches("\ntrue\t%-15\n$", out)
      assert.matches("later failure", err, 1, true)
      assert.are.equal(1, status, "an ordinary error after a handled "
        .. "Ctrl-C")
    end)

    it("waits without using the CPU when the timeout is huge", function()
      local p = mp.Process{target = function() mp.sleep(0.3) end}
      p:start()
      local c0 = os.clock()
      assert.is_true(p:join(1e300))
      local cpu = os.clock() - c0
      assert.is_true(cpu < 0.05, "join used " .. cpu .. " s of CPU in 0.3 s")
    end)
  end)

  describe("is_alive", function()
    it("is false before start, true while running, false after", function()
      local p = sleeper()
      assert.is_false(p:is_alive())
      p:start()
      assert.is_true(p:is_alive())
      p:kill()
      p:join()
      assert.is_false(p:is_alive())
    end)

    -- (A started sibling's handle is its parent's to use: it is not sent.)
    H.fork_only("can only test a child process", function()
      local sibling = mp.Process{target = function() end}
      sibling:start()
      local got = in_child(function()
        local ok, e = pcall(sibling.is_alive, sibling)
        return tostring(ok) .. "|" .. e
      end)
      sibling:join()
      assert.are.equal("false|can only test a child process", got)
    end)
  end)

  describe("terminate and kill", function()
    -- A sibling's copy cannot know whether the pid is still the process's:
    -- it says so rather than do nothing.
    H.fork_only("can only signal a child process", function()
      local sibling = mp.Process{target = function() mp.sleep(30) end}
      sibling:start()
      local got = in_child(function()
        local out = {}
        for _, m in ipairs{"terminate", "kill"} do
          local ok, e = pcall(sibling[m], sibling)
          out[#out + 1] = tostring(ok) .. "|" .. e
        end
        return table.concat(out, "|")
      end)
      assert.is_true(sibling:is_alive())
      sibling:kill()
      sibling:join()
      assert.are.equal("false|can only terminate a child process|false|"
                       .. "can only kill a child process", got)
    end)

    it("cannot signal a process that was never started", function()
      assert.has_error(function() mp.Process{}:terminate() end,
        "cannot terminate a process that was never started")
      assert.has_error(function() mp.Process{}:kill() end,
        "cannot kill a process that was never started")
    end)

    it("do nothing to a process that has ended", function()
      local p = mp.Process{target = function() end}
      p:start()
      p:join()
      p:terminate()
      p:kill()
      assert.are.equal(0, p.exitcode)
    end)
  end)

  describe("sentinel", function()
    it("exists once started and is an error before", function()
      local p = mp.Process{target = function() end}
      assert.has_error(function() return p.sentinel end,
        "process not started")
      p:start()
      assert.is_not_nil(p.sentinel)
      assert.matches("^luamp%.Sentinel", tostring(p.sentinel))
      p:join()
    end)
  end)

  describe("close", function()
    it("works after join, is idempotent, and closes the object", function()
      local p = mp.Process{target = function() end}
      p:start()
      p:join()
      p:close()
      p:close()
      assert.matches("closed", tostring(p))
      assert.has_error(function() p:start() end, "process object is closed")
      assert.has_error(function() p:join() end, "process object is closed")
      assert.has_error(function() p:is_alive() end,
        "process object is closed")
      assert.has_error(function() return p.sentinel end,
        "process object is closed")
      for _, field in ipairs{"exitcode", "pid", "ident"} do
        assert.has_error(function() return p[field] end,
          "process object is closed")
      end
      assert.are.equal("Process-", p.name:sub(1, 8))
    end)

    it("raises while the process is running", function()
      local p = sleeper()
      p:start()
      assert.has_error(function() p:close() end,
        "cannot close a process while it is still running; "
        .. "call join() or terminate() first")
      p:kill()
      p:join()
      p:close()
    end)

    it("happens at the end of a <close> scope, after a join", function()
      local path, outer = os.tmpname(), nil
      os.remove(path)
      local dt = timed(function()
        local p <close> = mp.Process{target = function()
          mp.sleep(0.2)
          writefile(path, "done")
        end}
        outer = p
        p:start()
      end)
      assert.are.equal("done", readfile(path))
      assert.is_true(dt >= 0.19 and dt < 1.5, "the scope took " .. dt)
      assert.has_error(function() return outer.exitcode end,
        "process object is closed")
      assert.has_error(function() outer:start() end,
        "process object is closed")
      os.remove(path)
    end)
  end)

  describe("many processes", function()
    it("starts 50 and joins them, each with its own exit code", function()
      local ps = {}
      for i = 1, 50 do
        ps[i] = mp.Process{target = function(n) os.exit(n) end, args = {i}}
        ps[i]:start()
      end
      for i = 1, 50 do
        assert.is_true(ps[i]:join(10))
      end
      for i = 1, 50 do
        assert.are.equal(i, ps[i].exitcode)
      end
      assert.are.equal(0, mp.stats().children)
      assert.are.equal(0, #mp.active_children())
    end)

    it("starts a grandchild from a child and sees its exit code", function()
      local p = mp.Process{target = function()
        local g = mp.Process{target = function() os.exit(5) end}
        g:start()
        g:join()
        os.exit(10 + g.exitcode)
      end}
      p:start()
      p:join()
      assert.are.equal(15, p.exitcode)
    end)
  end)
end)

describe("current_process", function()
  H.leakcheck()

  it("is MainProcess in the main process", function()
    assert.are.equal("MainProcess", mp.current_process().name)
    assert.are.equal("integer", math.type(mp.current_process().pid))
  end)

  it("is the Process object itself in the child", function()
    local p
    p = mp.Process{target = function()
      local cur = mp.current_process()
      writefile(p.path, cur.name .. " " .. tostring(rawequal(cur, p)))
    end, name = "me", path = os.tmpname()}
    p:start()
    p:join()
    assert.are.equal("me true", readfile(p.path))
    os.remove(p.path)
  end)
end)

describe("parent_process", function()
  H.leakcheck()

  it("is nil in the main process", function()
    assert.is_nil(mp.parent_process())
  end)

  it("has the parent's pid and name in a child", function()
    local got = in_child(function()
      local pp = mp.parent_process()
      return pp.pid .. " " .. pp.name .. " " .. tostring(pp:is_alive())
    end)
    assert.are.equal(mp.current_process().pid .. " MainProcess true", got)
  end)

  it("is the child in a grandchild", function()
    local got = in_child(function()
      local me = mp.current_process()
      local path = os.tmpname()
      local g = mp.Process{target = function()
        local pp = mp.parent_process()
        writefile(path, pp.pid .. " " .. pp.name)
      end}
      g:start()
      g:join()
      local s = readfile(path)
      os.remove(path)
      return tostring(s == me.pid .. " " .. me.name)
    end)
    assert.are.equal("true", got)
  end)
end)

describe("active_children", function()
  H.leakcheck()

  it("lists the running children in the order they started", function()
    local a, b = sleeper(), sleeper()
    assert.are.same({}, mp.active_children())
    a:start()
    b:start()
    local list = mp.active_children()
    assert.are.equal(2, #list)
    assert.is_true(rawequal(a, list[1]) and rawequal(b, list[2]))
    a:kill()
    a:join()
    list = mp.active_children()
    assert.are.equal(1, #list)
    assert.is_true(rawequal(b, list[1]))
    b:kill()
    b:join()
    assert.are.same({}, mp.active_children())
  end)

  it("drops a child that has ended even if nobody joined it", function()
    local p = mp.Process{target = function() os.exit(4) end}
    p:start()
    local deadline = mp.monotonic() + 5
    while #mp.active_children() > 0 and mp.monotonic() < deadline do
      mp.sleep(0.01)
    end
    assert.are.equal(0, #mp.active_children())
    assert.are.equal(4, p.exitcode)
    assert.is_true(p:join(0))
  end)
end)

describe("cpu_count", function()
  H.leakcheck()

  it("is an integer between 1 and the number of online CPUs", function()
    local n = mp.cpu_count()
    local f = assert(io.popen("nproc"))
    local online = tonumber(f:read("a"))
    f:close()
    assert.are.equal("integer", math.type(n))
    assert.is_true(n >= 1 and n <= online,
      "cpu_count " .. n .. ", nproc " .. online)
  end)
end)

describe("sleep and monotonic", function()
  H.leakcheck()

  it("sleep(0.1) takes at least 0.1 s and much less than 1 s", function()
    local dt = timed(function() mp.sleep(0.1) end)
    assert.is_true(dt >= 0.09 and dt < 1, "sleep(0.1) took " .. dt)
  end)

  it("sleep(math.huge) sleeps without using the CPU", function()
    local p = mp.Process{target = function() mp.sleep(math.huge) end}
    local f = assert(io.popen("getconf CLK_TCK"))
    local hz = tonumber(f:read("a"))
    f:close()
    -- its CPU time so far, in s
    local function cpu()
      local stat = readfile("/proc/" .. p.pid .. "/stat")
      local utime, stime = stat:match("^%d+ %(.*%) %a"
        .. (" %-?%d+"):rep(10) .. " (%d+) (%d+)")
      return (tonumber(utime) + tonumber(stime)) / hz
    end
    p:start()
    -- (counted once it has started: a spawned child's start-up is not
    -- its sleep)
    assert.is_false(p:join(0.3))
    local before = cpu()
    assert.is_false(p:join(0.3))
    local used = cpu() - before
    p:kill()
    p:join()
    assert.is_true(used < 0.03, "the sleeping child used " .. used
      .. " s of CPU in 0.3 s")
    assert.are.equal(-9, p.exitcode)
  end)

  it("sleep rejects a negative time", function()
    assert.has_error(function() mp.sleep(-1) end,
      "bad argument #1 to 'sleep' (seconds must be non-negative)")
  end)

  it("monotonic is a float that only increases", function()
    local a = mp.monotonic()
    mp.sleep(0.02)
    local b = mp.monotonic()
    assert.are.equal("float", math.type(a))
    assert.is_true(b - a >= 0.019 and b - a < 1, "difference " .. (b - a))
  end)
end)

describe("stats", function()
  H.leakcheck()

  it("has integer counts of the arena, objects and processes", function()
    local st = mp.stats()
    for _, k in ipairs{"arena_size", "arena_used", "arena_reserved",
                       "arena_blocks", "objects", "processes", "children"} do
      assert.are.equal("integer", math.type(st[k]), k)
      assert.is_true(st[k] >= 0, k)
    end
    assert.is_true(st.arena_size > 0)
    assert.is_true(st.arena_used <= st.arena_reserved)
    assert.is_true(st.arena_reserved <= st.arena_size)
    assert.is_true(st.processes >= 1)
  end)

  it("counts a running child in children and processes", function()
    local before = mp.stats()
    local p = sleeper()
    p:start()
    local during = mp.stats()
    assert.are.equal(before.children + 1, during.children)
    assert.are.equal(before.processes + 1, during.processes)
    p:kill()
    p:join()
    local after = mp.stats()
    assert.are.equal(before.children, after.children)
    assert.are.equal(before.processes, after.processes)
  end)
end)
