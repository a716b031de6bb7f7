-- cli_spec.lua -- the `luamp` command: lua(1)'s interface, exit
-- statuses, the shared arena options, Ctrl-C, and what happens to children
-- when the script ends or the host dies.

local mp = require "luamp"
local lfs = require "lfs"
local H = require "spec_helper"

local q, readfile, writefile = H.q, H.readfile, H.writefile
local state, alive, wait_for = H.state, H.alive, H.wait_for
local luamp = q(H.luamp)
-- As lua(1), the command names itself in messages as it was invoked.
local prog = H.luamp
local P = prog:gsub("%p", "%%%0")

-- Every run of the command is bounded, so that a host that hangs fails
-- its test (status 137) instead of stopping the suite.
local limit = "timeout -s KILL 20 "

-- Files made by a test, removed after it, and processes it started,
-- killed after it if they are still there.
local made, started = {}, {}

local function tmpfile(content)
  local path = os.tmpname()
  made[#made + 1] = path
  if content then writefile(path, content) else os.remove(path) end
  return path
end

local function remove_files()
  for i = #made, 1, -1 do
    local path = made[i]
    if lfs.attributes(path, "mode") == "directory" then
      for name in lfs.dir(path) do
        if name ~= "." and name ~= ".." then os.remove(path .. "/" .. name) end
      end
      lfs.rmdir(path)
    else
      os.remove(path)
    end
    made[i] = nil
  end
end

-- Runs `luamp <args>`; returns status, stdout, stderr.
local function run(args, env)
  return H.run((env or "") .. " " .. limit .. luamp .. " " .. args)
end

-- Runs a script file with the given source and arguments.
local function run_script(source, args, env)
  local path = tmpfile(source)
  local status, out, err = run(q(path) .. " " .. (args or ""), env)
  return status, out, err, path
end

local function cleanup()
  remove_files()
  for i = #started, 1, -1 do
    if alive(started[i]) then os.execute("kill -9 " .. started[i]) end
    started[i] = nil
  end
end

local function lines(s)
  local n = 0
  for _ in s:gmatch("\n") do n = n + 1 end
  return n
end

-- Starts `luamp script` in the background with SIGINT at its default
-- disposition (a test runner may have it ignored).  The script writes
-- "<host pid> <child pid>" to `ready` once its child has started, then
-- joins it (or, with `nojoin`, ends and leaves the host to wait for it).
-- Returns the popen handle and the two pids.
local function start_host(ready, nojoin)
  local script = tmpfile(([[
    local mp = require "luamp"
    local p = mp.Process{target = function() mp.sleep(60) end}
    p:start()
    local f = assert(io.open(%q, "w"))
    f:write(mp.current_process().pid, " ", p.pid)
    f:close()
    os.rename(%q, %q)
    if not %s then p:join() end
  ]]):format(ready .. ".tmp", ready .. ".tmp", ready, tostring(nojoin)))
  -- Its output goes elsewhere than the pipe: a child that outlived it
  -- would keep the pipe open, and fh:close() would wait for that child.
  local fh = assert(io.popen("exec env --default-signal=INT " .. luamp
    .. " " .. q(script) .. " >/dev/null 2>&1"))
  assert.is_true(wait_for(function() return readfile(ready) end, 5),
    "the script did not start its child")
  local host, child = readfile(ready):match("^(%d+) (%d+)$")
  host, child = tonumber(host), tonumber(child)
  started[#started + 1] = host
  started[#started + 1] = child
  return fh, host, child
end

-- Waits (5 s at most) for the host started by start_host to end, then
-- returns how it ended, as io.close does: "exit"/"signal" and a number.
local function finish_host(fh, host)
  if not wait_for(function() return not alive(host) end, 5) then
    os.execute("kill -9 " .. host)
  end
  local _, how, status = fh:close()
  return how, status
end

describe("the luamp command", function()
  H.leakcheck()
  after_each(cleanup)

  describe("running a script", function()
    it("gives the script its arguments in arg and as ...", function()
      local status, out, err, path = run_script([[
        io.write(arg[-1], "|", arg[0], "|", arg[1], "|", arg[2], "|", #arg,
                 "|", select("#", ...), "|", table.concat({...}, ","))
      ]], "a 'b c'")
      assert.are.equal("", err)
      assert.are.equal(0, status)
      assert.are.equal(H.luamp .. "|" .. path .. "|a|b c|2|2|a,b c", out)
    end)

    it("exits 0 when the script succeeds", function()
      local status, out, err = run_script("io.write('ok')")
      assert.are.same({0, "ok", ""}, {status, out, err})
    end)

    it("exits 1 with a traceback on stderr after an uncaught error",
       function()
      local status, out, err, path = run_script([[
        local function fail() error("boom") end
        fail()
      ]])
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.are.equal(prog .. ": " .. path .. ":1: boom\n",
        err:match("^[^\n]*\n"))
      assert.matches("\nstack traceback:\n", err, 1, true)
    end)

    it("prints an uncaught error object through its __tostring", function()
      local status, _, err = run_script([[
        error(setmetatable({}, {__tostring = function()
          return "custom error"
        end}))
      ]])
      assert.are.equal(1, status)
      assert.are.equal(prog .. ": custom error\n", err)
    end)

    it("reports a missing script in one line and exits 1", function()
      local path = tmpfile()
      local status, out, err = run(q(path))
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.are.equal(1, lines(err), err)
      assert.are.equal(prog .. ": cannot open " .. path,
        err:sub(1, #(prog .. ": cannot open " .. path)))
    end)

    it("reports a syntax error in one line and exits 1", function()
      local status, out, err, path = run_script("x = = 1\n")
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.are.equal(prog .. ": " .. path .. ":1: unexpected symbol near '='\n",
        err)
    end)

    it("runs stdin when given no script and stdin is not a terminal",
       function()
      local status, out, err = H.run("echo 'io.write(\"from stdin\")' | "
        .. limit .. luamp)
      assert.are.same({0, "from stdin", ""}, {status, out, err})
    end)

    it("reads the script from stdin after -", function()
      local status, out, err = H.run("echo 'io.write(table.concat({arg[0], "
        .. "...}, \" \"))' | " .. limit .. luamp .. " - a b")
      assert.are.same({0, "- a b", ""}, {status, out, err})
    end)
  end)

  describe("os.exit", function()
    it("exits with the status it is given", function()
      assert.are.equal(3, (run("-e 'os.exit(3)'")))
      assert.are.equal(0, (run("-e 'os.exit(0)'")))
    end)

    it("exits 0 for true and 1 for false", function()
      assert.are.equal(0, (run("-e 'os.exit(true)'")))
      assert.are.equal(1, (run("-e 'os.exit(false)'")))
    end)

    it("first waits for the children that are not daemons", function()
      local done = tmpfile()
      local status, out, err = run_script(([[
        local mp = require "luamp"
        mp.Process{target = function()
          mp.sleep(0.2)
          local f = assert(io.open(%q, "w"))
          f:write("done")
          f:close()
        end}:start()
        os.exit(3)
      ]]):format(done))
      assert.are.same({3, "", ""}, {status, out, err})
      assert.are.equal("done", readfile(done))
    end)

    it("flushes what the script has written, closing the state or not",
       function()
      assert.are.same({2, "kept", ""},
        {run("-e 'io.write(\"kept\") os.exit(2)'")})
      assert.are.same({2, "kept", ""},
        {run("-e 'io.write(\"kept\") os.exit(2, true)'")})
    end)
  end)

  describe("options", function()
    it("-e runs each chunk in order", function()
      local status, out, err = run("-e 'x = 20' -e 'io.write(x + 22)'")
      assert.are.same({0, "42", ""}, {status, out, err})
    end)

    it("-l requires a module into a global of its name, or g=mod", function()
      local dir = tmpfile()
      assert.is_true(lfs.mkdir(dir))
      writefile(dir .. "/mymod.lua", "return {answer = 42}\n")
      local env = "LUA_PATH=" .. q(dir .. "/?.lua;;")
      local status, out, err = run("-l mymod -e 'io.write(mymod.answer)'",
        env)
      assert.are.same({0, "42", ""}, {status, out, err})
      status, out, err = run("-l m=mymod -e 'io.write(m.answer, "
        .. "tostring(mymod))'", env)
      assert.are.same({0, "42nil", ""}, {status, out, err})
    end)

    it("-l of a missing module is an error, status 1", function()
      local status, out, err = run("-l no_such_module_xyz -e 'print(1)'")
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.matches("^" .. P .. ": module 'no_such_module_xyz' not found", err)
    end)

    it("-v prints lua5.4's copyright line; -h ends with luamp's version",
       function()
      local status, out, err = run("-v")
      assert.are.equal(0, status)
      assert.are.equal("", err)
      assert.are.equal(1, lines(out), out)
      assert.matches("^Lua 5%.4%.%d+  Copyright %(C%) .*PUC%-Rio\n$", out)
      status, out = run("-h")
      assert.are.equal(0, status)
      assert.matches("\nluamp %d+%.%d+%.%d+ %(Lua 5%.4%.%d+%)\n$", out)
    end)

    it("-h prints the usage and exits 0", function()
      local status, out, err = run("-h")
      assert.are.equal(0, status)
      assert.are.equal("", err)
      assert.matches("^usage: " .. P .. " ", out)
      assert.matches("--arena", out, 1, true)
    end)

    it("rejects an unknown option with the usage, status 1", function()
      local status, out, err = run("--bogus")
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.matches("^" .. P .. ": unrecognized option '%-%-bogus'\n", err)
      assert.matches("\nusage: " .. P .. " ", err)
    end)

    it("-i reads statements and prints the values of expressions",
       function()
      local status, out, err = H.run("printf 'return 1+1\\nx = 40\\n"
        .. "return x + 2\\n' | " .. limit .. luamp .. " -i")
      assert.are.equal(0, status)
      assert.are.equal("", err)
      assert.matches("%f[%S]2\n", out)
      assert.matches("%f[%S]42\n", out)
    end)
  end)

  describe("-i and Ctrl-C", function()
    it("drops the statement being typed and reads on", function()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir " .. q(dir) .. " && mkfifo " .. q(dir)
                        .. "/in"))
      local status, out = H.run(limit .. "sh -c " .. q(string.format([[
        cd %s
        %s -i <in >out 2>&1 & pid=$!
        exec 3>in
        echo 'x = {' >&3
        until grep -q '>> ' out &&
              [ "$(cut -d' ' -f3 /proc/$pid/stat)" = S ]; do
          sleep 0.01
        done
        kill -INT $pid
        until grep -q '>> $' out && [ "$(tail -c 2 out)" = '> ' ]; do
          sleep 0.01
        done
        echo 'print("after", x)' >&3
        exec 3>&-
        wait $pid
        echo "status $?"
        cat out]], q(dir), luamp)))
      os.execute("rm -rf " .. q(dir))
      assert.are.equal(0, status)
      assert.are.equal("status 0\n", out:match("^status %d+\n"), out)
      assert.matches("> x = {\n>> \n> print%(\"after\", x%)\nafter\tnil\n",
                     out)
      assert.is_nil(out:find("error object", 1, true), out)
    end)
  end)

  describe("--arena", function()
    local size = "-e 'io.write(require(\"luamp\").stats().arena_size)'"

    it("sizes the shared arena", function()
      assert.are.same({0, "67108864", ""}, {run("--arena 64M " .. size)})
      assert.are.same({0, "67108864", ""}, {run("--arena=64M " .. size)})
    end)

    it("rejects a size it cannot read, status 1", function()
      local status, out, err = run("--arena bogus " .. size)
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.are.equal(prog .. ": --arena needs a size such as 256M or 4G\n",
        err)
    end)

    it("refuses 0, a negative size and garbage, naming the option",
       function()
      for _, v in ipairs{" 0", "=0", " -1", "=-64M", " 12Q", "=", ""} do
        local args = "--arena" .. v .. " " .. size
        local status, out, err = run(args)
        assert.are.same({1, "", prog .. ": --arena needs a size such as " ..
                         "256M or 4G\n"}, {status, out, err}, args)
      end
    end)

    it("is taken from LUAMP_ARENA too, the option winning", function()
      assert.are.same({0, "33554432", ""},
        {run(size, "LUAMP_ARENA=32M")})
      assert.are.same({0, "67108864", ""},
        {run("--arena 64M " .. size, "LUAMP_ARENA=32M")})
    end)

    it("rejects a LUAMP_ARENA it cannot read, status 1", function()
      local status, out, err = run(size, "LUAMP_ARENA=bogus")
      assert.are.equal(1, status)
      assert.are.equal("", out)
      assert.are.equal(1, lines(err), err)
      assert.matches("^" .. P .. ": .*LUAMP_ARENA", err)
    end)
  end)

  describe("Ctrl-C", function()
    it("exits 130 with every child gone", function()
      local ready = tmpfile()
      local fh, host, child = start_host(ready)
      -- Asleep in join: the signal lands there.
      assert.is_true(wait_for(function() return state(host) == "S" end, 5),
        "the host did not block in join")
      assert.is_true(alive(child))
      local t0 = mp.monotonic()
      os.execute("kill -INT " .. host)
      assert.are.same({"exit", 130}, {finish_host(fh, host)})
      assert.is_true(wait_for(function() return not alive(child) end, 1),
        "the child outlived the host")
      assert.is_true(mp.monotonic() - t0 < 2, "the host took long to end")
    end)

    it("exits 130 when it comes while the host waits for its children at "
       .. "the end", function()
      local ready = tmpfile()
      local fh, host, child = start_host(ready, true)
      assert.is_true(wait_for(function() return state(host) == "S" end, 5),
        "the host did not block waiting for its child")
      os.execute("kill -INT " .. host)
      assert.are.same({"exit", 130}, {finish_host(fh, host)})
      assert.is_true(wait_for(function() return not alive(child) end, 1),
        "the child outlived the host")
    end)

    it("exits 130 when it comes with the end of the last child", function()
      -- As a Ctrl-C to the whole group can: the host, stopped, is sent
      -- SIGINT, its child ends, and it wakes to both at once.
      local ready = tmpfile()
      local fh, host, child = start_host(ready, true)
      assert.is_true(wait_for(function() return state(host) == "S" end, 5),
        "the host did not block waiting for its child")
      os.execute("kill -STOP " .. host)
      assert.is_true(wait_for(function() return state(host) == "T" end, 5))
      os.execute("kill -INT " .. host .. "; kill -9 " .. child)
      assert.is_true(wait_for(function() return state(child) == "Z" end, 5),
        "the child did not end")
      os.execute("kill -CONT " .. host)
      assert.are.same({"exit", 130}, {finish_host(fh, host)})
    end)
  end)

  describe("when the host is killed", function()
    it("takes its children with it", function()
      local ready = tmpfile()
      local fh, host, child = start_host(ready)
      assert.is_true(alive(child))
      os.execute("kill -9 " .. host)
      assert.are.same({"signal", 9}, {finish_host(fh, host)})
      assert.is_true(wait_for(function() return not alive(child) end, 1),
        "the child outlived the host")
    end)
  end)

  describe("output", function()
    it("is not printed twice by a child", function()
      local status, out, err = run_script([[
        local mp = require "luamp"
        io.write("x")
        local p = mp.Process{target = function() end}
        p:start()
        p:join()
      ]])
      assert.are.same({0, "x", ""}, {status, out, err})
    end)

    it("of the parent and the child both appear, once each", function()
      local status, out, err = run_script([[
        local mp = require "luamp"
        io.write("a")
        local p = mp.Process{target = function() io.write("b") end}
        p:start()
        p:join()
        io.write("c")
      ]])
      assert.are.same({0, "abc", ""}, {status, out, err})
    end)
  end)

  describe("at the end of the script", function()
    it("waits for the children that are not daemons", function()
      local done = tmpfile()
      local t0 = mp.monotonic()
      local status, out, err = run_script(([[
        local mp = require "luamp"
        mp.Process{target = function()
          mp.sleep(0.3)
          local f = assert(io.open(%q, "w"))
          f:write("done")
          f:close()
        end}:start()
      ]]):format(done))
      local dt = mp.monotonic() - t0
      assert.are.same({0, "", ""}, {status, out, err})
      assert.are.equal("done", readfile(done))
      assert.is_true(dt >= 0.29 and dt < 5, "luamp returned after " .. dt
        .. " s")
    end)

    it("terminates the daemon children", function()
      local pidfile = tmpfile()
      local t0 = mp.monotonic()
      local status, out, err = run_script(([[
        local mp = require "luamp"
        local p = mp.Process{daemon = true, target = function()
          mp.sleep(30)
        end}
        p:start()
        local f = assert(io.open(%q, "w"))
        f:write(p.pid)
        f:close()
      ]]):format(pidfile))
      local dt = mp.monotonic() - t0
      local pid = tonumber(readfile(pidfile))
      assert.is_not_nil(pid, "the script did not start its daemon")
      started[#started + 1] = pid
      assert.are.same({0, "", ""}, {status, out, err})
      assert.is_true(dt < 1.5, "luamp returned after " .. dt .. " s")
      assert.is_false(alive(pid), "the daemon is still running")
    end)

    it("terminates the daemons first, then waits for the others, as "
       .. "Python does", function()
      -- The daemon would print after 0.3 s, while the other runs on.
      local status, out, err = run_script([[
        local mp = require "luamp"
        mp.Process{target = function() mp.sleep(1) end}:start()
        mp.Process{daemon = true, target = function()
          mp.sleep(0.3)
          print("the daemon ran on")
        end}:start()
        print("main end")
      ]])
      assert.are.same({0, "main end\n", ""}, {status, out, err})
    end)
  end)
end)

-- A sanitizer build's module cannot be loaded into a stock lua5.4 (the
-- sanitizer runtime must come first), so the sanitizer pass skips these.
-- The same command line given to lua5.4 and to luamp: the same status,
-- output and errors, each interpreter naming itself as it was invoked.
describe("the luamp command beside lua5.4", function()
  after_each(cleanup)

  -- Runs `<env> <interpreter> <args>` for both; stdin from `input` if
  -- given.  Returns lua5.4's and luamp's {status, stdout, stderr}, each
  -- stderr with the interpreter's name made "PROG".
  local function both(args, env, input)
    local from = input and (" <" .. q(tmpfile(input))) or ""
    local function one(cmd, name)
      local status, out, err = H.run((env or "") .. " " .. limit .. cmd ..
                                     " " .. args .. from)
      local n = name:gsub("%p", "%%%0")
      return {status, out, (err:gsub(n, "PROG"))}
    end
    return one("lua5.4", "lua5.4"), one(luamp, prog)
  end

  local function same(args, env, input)
    local want, got = both(args, env, input)
    assert.are.same(want, got)
    return got
  end

  it("-E ignores LUA_PATH, LUA_CPATH, LUA_INIT and their _5_4 forms",
     function()
    local env = "LUA_PATH=xp LUA_CPATH=xc LUA_INIT='error(1)' " ..
                "LUA_PATH_5_4=yp LUA_CPATH_5_4=yc LUA_INIT_5_4='error(2)'"
    local r = same("-E -e 'print(package.path) print(package.cpath)'", env)
    assert.are.equal(0, r[1])
    for _, v in ipairs{"xp", "xc", "yp", "yc"} do
      assert.is_nil(r[2]:find(v, 1, true))
    end
    r = same("-e 'print(package.path, package.cpath)'", env)
    assert.are.equal(1, r[1])
    assert.matches("^PROG: 2\n.*\n\tLUA_INIT_5_4:1: in main chunk\n", r[3])
  end)

  it("-E ignores LUAMP_ARENA", function()
    local status, out, err = run("-E -e 'io.write(1)'", "LUAMP_ARENA=bogus")
    assert.are.same({0, "1", ""}, {status, out, err})
    status = run("-e 'io.write(1)'", "LUAMP_ARENA=bogus")
    assert.are.equal(1, status)
  end)

  it("expands ;; in LUA_PATH and LUA_CPATH to the default", function()
    for _, p in ipairs{";;", "a;;b", ";;b", "a;;", "a;b;;c", ";"} do
      same("-e 'print(package.path) print(package.cpath)'",
           "LUA_PATH='" .. p .. "' LUA_CPATH='" .. p .. "'")
    end
    same("-e 'print(package.path)'", "LUA_INIT='X=1' LUA_PATH_5_4='q;;'")
  end)

  it("runs an empty chunk for -e '' and '-e '; a missing -e is an error",
     function()
    assert.are.same({0, "", ""}, same("-e ''"))
    assert.are.same({0, "1", ""}, same("'-e ' -e 'io.write(1)'"))
    local r = same("'-e ' -- /dev/null a b")
    assert.are.equal(0, r[1])
    local want, got = both("-e")
    assert.are.equal(1, got[1])
    assert.are.same({want[1], want[2]}, {got[1], got[2]})
    assert.are.equal(want[3]:match("^[^\n]*\n"), got[3]:match("^[^\n]*\n"))
    assert.are.equal("PROG: '-e' needs argument\n", got[3]:match("^[^\n]*\n"))
  end)

  it("-l mod and -l g=mod load through package.path", function()
    local dir = tmpfile()
    lfs.mkdir(dir)
    writefile(dir .. "/pmod.lua", "print('loading', ...) return {x = 15}")
    local env = "LUA_PATH='" .. dir .. "/?.lua'"
    local r = same("-l pmod -e 'print(pmod.x)'", env)
    assert.are.equal(0, r[1])
    assert.matches("\n15\n$", r[2])
    r = same("-l g=pmod -lm=math -e 'print(g.x, pmod, m.max(1, 2))'", env)
    assert.matches("\n15\tnil\t2\n$", r[2])
    r = same("-l nosuchmod", env)
    assert.are.equal(1, r[1])
    assert.matches("^PROG: module 'nosuchmod' not found", r[3])
  end)

  it("-l alone runs stdin when it is not a terminal", function()
    assert.are.same({0, "7\n", ""}, same("-l string", nil, "print(7)\n"))
  end)

  it("-i uses _PROMPT and _PROMPT2, echoes expressions, reads '='",
     function()
    local input = "1 + 1\n=2 * 3\nx = {\n}\nprint(type(x))\nerror('e')\n"
    same("-i", nil, input)
    same([[-e "_PROMPT='P:' _PROMPT2='Q:'" -i]], nil, input)
    local r = same(
      [[-e "_PROMPT=setmetatable({}, {__tostring = function() return 'T' end})"]]
      .. " -i", nil, input)
    assert.matches("T1 %+ 1\n2\nT=2 %* 3\n6\n", r[2])
    assert.matches("^stdin:1: e\n", r[3])
  end)

  it("reports \"error calling 'print'\" with print = nil", function()
    local r = same("-e 'print = nil' -i", nil, "10\n")
    assert.matches("error calling 'print' %(attempt to call a nil value%)",
                   r[3])
  end)

  it("-v prints lua5.4's copyright line first, then runs -e", function()
    local r = same("-v")
    assert.matches("^Lua 5%.4", r[2])
    r = same([[-v -e "print'hello'"]])
    assert.matches("PUC%-Rio\nhello\n$", r[2])
  end)

  it("collects garbage in generational mode, as lua5.4 does", function()
    -- collectgarbage(mode) returns the mode it leaves
    local r = same([[-e 'print(collectgarbage("incremental"))']])
    assert.are.equal("generational\n", r[2])
    r = same([[-e 'collectgarbage("incremental")' ]] ..
             [[-e 'print(collectgarbage("generational"))']])
    assert.are.equal("incremental\n", r[2])
  end)

  it("starts its children in generational mode, forked or spawned",
     function()
    for _, how in ipairs{"fork", "spawn", "forkserver"} do
      local status, out, err = run_script(([[
        local mp = require "luamp"
        mp.set_start_method("%s")
        local q = mp.Queue()
        local p = mp.Process{target = function(q)
          q:put(collectgarbage("incremental"))
        end, args = {q}}
        p:start()
        print(q:get(10))
        p:join()
      ]]):format(how))
      assert.are.equal("", err, how)
      assert.are.equal(0, status, how)
      assert.are.equal("generational\n", out, how)
    end
  end)

  it("handles -- and - as lua5.4 does", function()
    local path = tmpfile("print(arg[0], ...)")
    same("-- " .. q(path) .. " -x y")
    same("- a b", nil, "print(...)")
    same("-- - a", nil, "print(arg[0], ...)")
    same("--", nil, "print(1)")
    same("-e 'print(#arg, arg[-1])' --")
    same("-e 'print(#arg)' -- " .. q(path) .. " z")
    assert.are.same({0, path .. "\tz\n", ""},
      {run("--arena 64M -e '' -- " .. q(path) .. " z")})
  end)

  it("has lua5.4's exit statuses and messages", function()
    same("-e 'error(\"boom\")'")
    same("-e 'error(setmetatable({}, {__tostring = function() " ..
         "return \"obj\" end}))'")
    same("-e 'error({})'")
    same("-e 'x = = 1'")
    same("-e 'os.exit(3)'")
    same("-e 'os.exit(false)'")
    same("-e 'arg = 1' -", nil, "")
    same("/nonexistent/script.lua")
    for _, bad in ipairs{"-x", "---", "-Ex", "-vv", "-iv", "-l"} do
      local want, got = both(bad)
      assert.are.same({want[1], want[2]}, {got[1], got[2]})
      assert.are.equal(want[3]:match("^[^\n]*\n"), got[3]:match("^[^\n]*\n"))
    end
  end)

  -- Runs `interp -e code` as a background job (whose SIGINT the shell
  -- ignores: lua(1) takes it back), waits for its first line, sends
  -- SIGINT, and returns its status and whole output.
  local function interrupt(interp, code, signals)
    local pidfile, outfile = tmpfile(), tmpfile()
    local f = io.popen("sh -c '" .. interp .. " -e \"$0\" >" .. outfile ..
                       " 2>&1 & echo $! >" .. pidfile .. "; wait $!; echo $?' " ..
                       q(code), "r")
    assert.is_true(wait_for(function()
      local s = readfile(outfile)
      return s and s:find("\n") and tonumber(readfile(pidfile) or "")
    end, 10), "no first line")
    local pid = assert(tonumber(readfile(pidfile)))
    for _ = 1, signals or 1 do
      os.execute("kill -INT " .. pid)
      os.execute("sleep 0.2")
    end
    local status = tonumber(f:read("l"))
    f:close()
    return status, readfile(outfile)
  end

  it("Ctrl-C stops a loop inside pcall, which catches it, as lua5.4's does",
     function()
    local code = "local ok, e = pcall(function() print(12) io.flush() " ..
                 "while true do end end) print(42, ok)"
    local want = {interrupt("lua5.4", code)}
    assert.are.same({0, "12\n42\tfalse\n"}, want)
    assert.are.same(want, {interrupt(prog, code)})
  end)

  it("Ctrl-C stops a loop inside pcall with pool workers and a child",
     function()
    local code = "local mp = require 'luamp' " ..
      "local pool = mp.Pool(2) " ..
      "local p = mp.Process{target = function() mp.sleep(30) end} p:start() " ..
      "local ok, e = pcall(function() print(pool:map(function(x) " ..
      "return x * 2 end, {1, 2, 3})[3]) io.flush() while true do end end) " ..
      "print(42, ok, e.type == mp.KeyboardInterrupt) p:terminate() p:join() " ..
      "pool:terminate()"
    assert.are.same({0, "6\n42\tfalse\ttrue\n"}, {interrupt(prog, code)})
  end)

  it("a second Ctrl-C kills code that never reaches the hook", function()
    local code = "print(15) io.flush() " ..
                 "string.find(string.rep('a', 100000), '.*b')"
    local status, out = interrupt(prog, code, 2)
    assert.are.equal(130, status)
    assert.are.equal("15\n", out)
  end)
end)

local describe_stock = os.getenv("LUAMP_SANITIZE") and pending or describe

describe_stock("the luamp module in a stock lua5.4", function()
  H.leakcheck()
  after_each(cleanup)

  local env = "LUA_CPATH=" .. q(H.build .. "/lib/lua/5.4/?.so;;")

  local function lua(code)
    return H.run(env .. " " .. limit .. "lua5.4 -e " .. q(code))
  end

  it("finds the luamp command on PATH for a spawned child", function()
    -- The module as installed under another prefix than the one it was
    -- built for: the command is not where it looks first.
    local bin = tmpfile()
    local cmd = prog:sub(1, 1) == "/" and prog or os.getenv("PWD") .. "/"
      .. prog
    assert(os.execute("mkdir " .. q(bin) .. " && ln -s " .. q(cmd) .. " "
                      .. q(bin .. "/luamp")))
    local status, out, err = H.run("env PATH=" .. q(bin) .. ":/usr/bin:/bin "
      .. env .. " " .. limit .. "lua5.4 -e " .. q([[
        local mp = require "luamp"
        local exe = mp.get_executable()
        local p = mp.get_context("spawn").Process{target = os.exit,
                                                 args = {7}}
        p:start()
        p:join()
        io.write(tostring(exe), " ", p.exitcode)
      ]]))
    assert.are.equal(0, status, err)
    -- (the installed command, where there is one, comes first)
    local exe = out:match("^(%S+) 7$")
    assert.is_not_nil(exe, out .. err)
    assert.is_truthy(exe == bin .. "/luamp" or exe:match("/bin/luamp$"), out)
  end)

  it("waits for the children that are not daemons when the state closes, "
     .. "and terminates the daemons", function()
    local done, pidfile = tmpfile(), tmpfile()
    local t0 = mp.monotonic()
    local status, out, err = lua(([[
      local mp = require "luamp"
      mp.Process{target = function()
        mp.sleep(0.3)
        local f = assert(io.open(%q, "w"))
        f:write("done")
        f:close()
      end}:start()
      local d = mp.Process{daemon = true, target = function() mp.sleep(30) end}
      d:start()
      local f = assert(io.open(%q, "w"))
      f:write(d.pid)
      f:close()
    ]]):format(done, pidfile))
    local dt = mp.monotonic() - t0
    local pid = tonumber(readfile(pidfile))
    assert.is_not_nil(pid, "the script did not start its daemon")
    started[#started + 1] = pid
    assert.are.same({0, "", ""}, {status, out, err})
    assert.are.equal("done", readfile(done))
    assert.is_false(alive(pid), "the daemon is still running")
    assert.is_true(dt >= 0.29 and dt < 1.5, "lua5.4 returned after " .. dt)
  end)

  it("exits with the status of os.exit(n, true), output intact", function()
    local status, out, err = lua([[
      require "luamp"
      io.write("kept")
      os.exit(3, true)
    ]])
    assert.are.same({3, "kept", ""}, {status, out, err})
  end)
end)
