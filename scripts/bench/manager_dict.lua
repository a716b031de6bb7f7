-- manager_dict.lua -- a shared dict under two loads: one child process
-- sets N keys, then this process reads them all back (2N operations, each
-- side timed over its own loop); and two processes each incr one key N
-- times at once (timed from the moment both are released to the end of
-- the later one).
-- Prints: set_get <k ops/s> k/s, incr <k ops/s> k/s
-- Usage: luamp manager_dict.lua [N=20000]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 20000

local m <close> = mp.Manager()

-- Sets n keys in a child, reads them back here: ops per second overall.
local function set_get(n)
  local d = m:dict()
  local set_time = mp.Value("d", 0)
  local p = mp.Process{target = function()
    local t0 = mp.monotonic()
    for i = 1, n do d["key" .. i] = i end
    set_time.value = mp.monotonic() - t0
  end}
  p:start()
  p:join()
  assert(p.exitcode == 0, "the setter failed")
  local t0 = mp.monotonic()
  local sum = 0
  for i = 1, n do sum = sum + d["key" .. i] end
  local get_time = mp.monotonic() - t0
  assert(sum == n * (n + 1) // 2, "wrong values read back")
  d:close()
  return 2 * n / (set_time.value + get_time)
end

-- Two processes incr one key n times each, started together.
local function incr(n)
  local d = m:dict()
  d.n = 0
  local go = m:Barrier(3)
  local done = mp.Array("d", 2)
  local procs = {}
  for i = 1, 2 do
    procs[i] = mp.Process{target = function()
      go:wait()
      for _ = 1, n do d:incr("n", 1) end
      done[i] = mp.monotonic()
    end}
    procs[i]:start()
  end
  go:wait()
  local t0 = mp.monotonic()
  for i = 1, 2 do procs[i]:join() end
  local dt = math.max(done[1], done[2]) - t0
  assert(d.n == 2 * n, "lost increments: " .. d.n)
  d:close()
  return 2 * n / dt
end

set_get(N // 10) -- warm up
print(string.format("set_get %.3f k/s", set_get(N) / 1e3))
print(string.format("incr %.3f k/s", incr(N) / 1e3))
