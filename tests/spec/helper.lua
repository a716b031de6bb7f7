-- helper.lua -- loaded by busted before the specs (--helper).  It makes
-- `require "luamp"` work under a stock lua5.4 and inside the host alike,
-- and gives every spec the same leak check: after each test no child is
-- left, no shared object or arena block is leaked and no fd is left open.

local mp = require "luamp"
local lfs = require "lfs"
local busted = require "busted"
local assert = require "luassert"

local H = {}

H.luamp = os.getenv("LUAMP") or "build/luamp"
H.build = os.getenv("LUAMP_BUILD") or "build"

local function fdcount()
  local n = 0
  for name in lfs.dir("/proc/self/fd") do
    if name ~= "." and name ~= ".." then n = n + 1 end
  end
  return n
end

function H.snapshot()
  collectgarbage()
  collectgarbage()
  local st = mp.stats()
  return {objects = st.objects, blocks = st.arena_blocks, fds = fdcount()}
end

-- Installs before_each/after_each in the calling describe block.
function H.leakcheck()
  local before
  busted.before_each(function()
    before = H.snapshot()
  end)
  busted.after_each(function()
    local left = mp.active_children()
    for _, p in ipairs(left) do
      p:kill()
      p:join()
    end
    assert.are.equal(0, #left, "children left running by the test")
    assert.are.equal(0, mp.stats().children, "children not reaped")
    local now = H.snapshot()
    assert.are.same(before, now, "shared objects, arena blocks or fds leaked")
  end)
end

-- Runs a shell command; returns its exit status, stdout and stderr.
function H.run(cmd)
  local out, err = os.tmpname(), os.tmpname()
  local ok, how, code = os.execute(cmd .. " >" .. out .. " 2>" .. err)
  local function slurp(f)
    local fh = assert(io.open(f, "rb"))
    local s = fh:read("a")
    fh:close()
    os.remove(f)
    return s
  end
  local o, e = slurp(out), slurp(err)
  if how == "signal" then code = 128 + code end
  return code, o, e
end

-- Quotes a string for the shell.
function H.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Runs a Lua chunk in a fresh `luamp -e` and returns status, stdout, stderr.
function H.luamp_e(code, opts)
  return H.run((opts or "") .. " " .. H.q(H.luamp) .. " -e " .. H.q(code))
end


-- Shared by the specs.

-- Times fn(): seconds taken, then what fn returned.
function H.timed(fn)
  local t0 = mp.monotonic()
  local r = table.pack(fn())
  return mp.monotonic() - t0, table.unpack(r, 1, r.n)
end

-- The state letter of process pid (R, S, D...) from /proc.
function H.state(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %(.*%) (%a)")
end

-- Waits (10 s at most) until process pid is asleep.
function H.until_asleep(pid)
  local deadline = mp.monotonic() + 10
  while H.state(pid) ~= "S" do
    assert(mp.monotonic() < deadline, "process " .. pid .. " never slept")
    mp.sleep(0.001)
  end
end

-- Starts a child running fn(...) and returns its Process object.
function H.spawn(fn, ...)
  local p = mp.Process{target = fn, args = table.pack(...)}
  p:start()
  return p
end

-- Joins p (10 s at most) and checks that it ended with status 0.
function H.finish(p)
  assert.is_true(p:join(10), "the child did not end")
  assert.are.equal(0, p.exitcode, "the child failed")
end

-- Checks that a time is between lo and hi seconds.
function H.took(dt, lo, hi, what)
  assert.is_true(dt >= lo and dt < hi,
    what .. " took " .. dt .. " s, expected [" .. lo .. ", " .. hi .. ")")
end

-- The message of the error fn(...) raises, without its position.
function H.errmsg(fn, ...)
  local ok, e = pcall(fn, ...)
  assert.is_false(ok, "no error was raised")
  assert.are.equal("string", type(e))
  return (e:gsub("^[^:]*:%d+: ", "", 1))
end

package.loaded["spec_helper"] = H
_G.spec_helper = H
return H
