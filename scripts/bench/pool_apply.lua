-- pool_apply.lua -- a Pool's round trip for single tasks: many apply_async
-- of a function that returns its argument, then every get.
-- Prints: apply_async <k tasks/s> k/s, idle_worker_pss <kB> kB (the mean
--         proportional set size of a worker once the pool is idle)
-- Usage: luamp pool_apply.lua [N=20000] [WORKERS=2]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 20000
local WORKERS = tonumber(arg and arg[2]) or 2

local function identity(x) return x end

-- Seconds to submit n tasks and get every result.
local function run(pool, n)
  local t0 = mp.monotonic()
  local rs = {}
  for i = 1, n do rs[i] = pool:apply_async(identity, {i}) end
  for i = 1, n do assert(rs[i]:get() == i) end
  return mp.monotonic() - t0
end

-- The proportional set size of process pid, in kB (its share of the pages
-- it shares with the owner and the other workers counted in part).
local function pss(pid)
  local f = assert(io.open("/proc/" .. pid .. "/smaps_rollup"))
  local kb = tonumber(f:read("a"):match("\nPss:%s+(%d+)"))
  f:close()
  return kb
end

local pool = mp.Pool(WORKERS)
run(pool, N // 10) -- warm up: the workers are up and know the function
local dt = run(pool, N)
mp.sleep(0.2) -- the workers are idle, their last tasks collected
local kb = 0
local workers = mp.active_children()
for _, p in ipairs(workers) do kb = kb + pss(p.pid) end
pool:close()
pool:join()

print(string.format("apply_async %.3f k/s", N / dt / 1e3))
print(string.format("idle_worker_pss %.0f kB", kb / #workers))
