-- pool_big.lua -- a Pool's round trip for large values: apply_async of a
-- function that returns its argument, a 1 MiB string, there and back.
-- Each way the value is encoded once into a message and copied into
-- shared memory, where Python pickles it and writes it through a pipe.
-- Prints: apply_1mib <tasks/s> /s (the median of ROUNDS rounds of N
--         tasks, after a warm-up), and the same as bytes one way,
--         apply_1mib_bytes <GB/s> GB/s
-- Usage: luamp pool_big.lua [N=100] [ROUNDS=5] [WORKERS=2]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 100
local ROUNDS = tonumber(arg and arg[2]) or 5
local WORKERS = tonumber(arg and arg[3]) or 2
local SIZE = 1 << 20

local function identity(x) return x end

-- Built before the clock starts, and different from its neighbours' in
-- its first byte, so that a result that is not its own argument shows.
local payload = {}
for i = 1, 8 do
  payload[i] = string.char(64 + i) .. string.rep("x", SIZE - 1)
end

-- Tasks/s of one round of n.
local function run(pool, n)
  local t0 = mp.monotonic()
  local rs = {}
  for i = 1, n do rs[i] = pool:apply_async(identity, {payload[i % 8 + 1]}) end
  for i = 1, n do assert(rs[i]:get() == payload[i % 8 + 1]) end
  return n / (mp.monotonic() - t0)
end

local pool = mp.Pool(WORKERS)
run(pool, N // 4) -- warm up: the workers are up, the pages touched
local rates = {}
for r = 1, ROUNDS do rates[r] = run(pool, N) end
pool:close()
pool:join()
table.sort(rates)
local rate = rates[(ROUNDS + 1) // 2]
print(string.format("apply_1mib %.1f /s", rate))
print(string.format("apply_1mib_bytes %.3f GB/s", rate * SIZE / 1e9))
