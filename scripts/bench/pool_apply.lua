-- pool_apply.lua -- a Pool's round trip for single tasks: many apply_async
-- of a function that returns its argument, then every get.
-- Prints: apply_async <k tasks/s> k/s, worker_sleeps <n> /1k (the times
--         the workers went to sleep, waiting for work, per 1000 tasks: each
--         costs a wake-up), idle_worker_pss <kB> kB (the mean proportional
--         set size of a worker once the pool is idle)
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

-- A number from /proc/PID/FILE, after `key`.
local function proc(pid, file, key)
  local f = assert(io.open("/proc/" .. pid .. "/" .. file))
  local n = tonumber(f:read("a"):match("\n" .. key .. ":%s+(%d+)"))
  f:close()
  return n
end

-- The workers' voluntary context switches: their sleeps.
local function sleeps(workers)
  local n = 0
  for _, p in ipairs(workers) do
    n = n + proc(p.pid, "status", "voluntary_ctxt_switches")
  end
  return n
end

local pool = mp.Pool(WORKERS)
run(pool, N // 10) -- warm up: the workers are up and know the function
local workers = mp.active_children()
local slept = sleeps(workers)
local dt = run(pool, N)
slept = sleeps(workers) - slept
mp.sleep(0.2) -- the workers are idle, their last tasks collected
local kb = 0
-- The proportional set size: a worker's share of the pages it shares with
-- the owner and the other workers counted in part.
for _, p in ipairs(workers) do kb = kb + proc(p.pid, "smaps_rollup", "Pss") end
pool:close()
pool:join()

print(string.format("apply_async %.3f k/s", N / dt / 1e3))
print(string.format("worker_sleeps %.1f /1k", slept / N * 1e3))
print(string.format("idle_worker_pss %.0f kB", kb / #workers))
