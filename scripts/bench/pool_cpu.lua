-- pool_cpu.lua -- a Pool's speedup on CPU-bound work: a naive prime count
-- over blocks of integers, done once serially in this process and once by
-- map on the pool's workers.
-- Prints: serial <s> s, parallel <s> s, parallel_over_serial <ratio> x
--   (the last is a cost, parallel time over serial time: 0.5 is a perfect
--   speedup on 2 workers; the speedup is its inverse)
-- Usage: luamp pool_cpu.lua [BLOCKS=64] [BLOCK=12000] [WORKERS=2]
--                           [CHUNKSIZE=1]
-- One block a task: with few items of uneven cost, a larger chunk leaves
-- one worker alone with the last, dearest chunk.

local mp = require "luamp"

local BLOCKS = tonumber(arg and arg[1]) or 64
local BLOCK = tonumber(arg and arg[2]) or 12000
local WORKERS = tonumber(arg and arg[3]) or 2
local CHUNKSIZE = tonumber(arg and arg[4]) or 1

-- The number of primes in block k: [(k-1)*BLOCK, k*BLOCK), by trial
-- division.  Later blocks cost more, so the chunks are uneven, as in life.
local function count_primes(k)
  local count = 0
  for n = math.max(2, (k - 1) * BLOCK), k * BLOCK - 1 do
    local prime, d = true, 2
    while d * d <= n do
      if n % d == 0 then prime = false; break end
      d = d + 1
    end
    if prime then count = count + 1 end
  end
  return count
end

local blocks = {}
for k = 1, BLOCKS do blocks[k] = k end

local function total(counts)
  local s = 0
  for k = 1, BLOCKS do s = s + counts[k] end
  return s
end

local pool = mp.Pool(WORKERS)
pool:map(count_primes, {1, 2}) -- warm up: the workers are up

local t0 = mp.monotonic()
local serial = {}
for k = 1, BLOCKS do serial[k] = count_primes(k) end
local t_serial = mp.monotonic() - t0

t0 = mp.monotonic()
local parallel = pool:map(count_primes, blocks, CHUNKSIZE)
local t_parallel = mp.monotonic() - t0
pool:close()
pool:join()

assert(total(parallel) == total(serial))
print(string.format("serial %.3f s", t_serial))
print(string.format("parallel %.3f s", t_parallel))
print(string.format("parallel_over_serial %.3f x", t_parallel / t_serial))
print(string.format("# speedup %.2fx, %d primes", t_serial / t_parallel,
                    total(serial)))
