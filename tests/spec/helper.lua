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

package.loaded["spec_helper"] = H
_G.spec_helper = H
return H
