-- pool_cpu.lua -- a Pool's speedup on CPU-bound work: a naive prime count
-- over blocks of integers, done serially in this process, by map on the
-- pool's workers, and by as many plain processes that take the blocks in
-- the same order from a shared counter: what the machine's cores give to
-- any program that hands out the blocks in order, with no scheduler and no
-- messages.  Each round does
-- the three in a rotating order, so that a change in the machine's speed
-- falls on each in turn; each ratio is taken within a round, and the
-- median over the rounds is printed.
-- Prints: serial <s> s, parallel <s> s, parallel_over_serial <ratio> x
--   (a cost, parallel time over serial time: 0.5 is a perfect speedup on
--   2 workers; the speedup is its inverse), processes_over_serial <ratio> x
--   (the same for the plain processes: the machine's own limit) and
--   parallel_over_processes <ratio> x (the Pool's time over theirs)
-- Usage: luamp pool_cpu.lua [BLOCKS=64] [BLOCK=12000] [WORKERS=2]
--                           [CHUNKSIZE=1] [ROUNDS=3]
-- One block a task: with few items of uneven cost, a larger chunk leaves
-- one worker alone with the last, dearest chunk.

local mp = require "luamp"

local BLOCKS = tonumber(arg and arg[1]) or 64
local BLOCK = tonumber(arg and arg[2]) or 12000
local WORKERS = tonumber(arg and arg[3]) or 2
local CHUNKSIZE = tonumber(arg and arg[4]) or 1
local ROUNDS = tonumber(arg and arg[5]) or 3

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

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
end

local pool = mp.Pool(WORKERS)
pool:map(count_primes, {1, 2}) -- warm up: the workers are up

local expected
local function serial()
  local counts = {}
  for k = 1, BLOCKS do counts[k] = count_primes(k) end
  expected = expected or total(counts)
end

local function parallel()
  assert(total(pool:map(count_primes, blocks, CHUNKSIZE)) == expected)
end

-- The plain processes: started before the clock, each waits on the event,
-- then takes the blocks in order, as the Pool hands them out, from one
-- shared counter, and sends its sum; the clock stops when the last has.
local function processes()
  local go, q, ps = mp.Event(), mp.Queue(), {}
  local next_block = mp.RawValue("i", 0)
  for w = 1, WORKERS do
    ps[w] = mp.Process{target = function()
      go:wait()
      local s, k = 0, next_block:add(1)
      while k <= BLOCKS do
        s = s + count_primes(k)
        k = next_block:add(1)
      end
      q:put(s)
    end}
    ps[w]:start()
  end
  local t0 = mp.monotonic()
  go:set()
  local s = 0
  for _ = 1, #ps do s = s + q:get() end
  local dt = mp.monotonic() - t0
  for _, p in ipairs(ps) do p:join() end
  assert(s == expected)
  return dt
end

local function timed(f)
  local t0 = mp.monotonic()
  local dt = f()
  return dt or mp.monotonic() - t0
end

serial() -- warm up: the count to check
local steps = {serial, parallel, processes}
local t = {[serial] = {}, [parallel] = {}, [processes] = {}}
local p_s, q_s, p_q = {}, {}, {}
for r = 1, ROUNDS do
  local dt = {}
  for i = 0, #steps - 1 do
    local f = steps[(r - 1 + i) % #steps + 1]
    dt[f] = timed(f)
    table.insert(t[f], dt[f])
  end
  p_s[r] = dt[parallel] / dt[serial]
  q_s[r] = dt[processes] / dt[serial]
  p_q[r] = dt[parallel] / dt[processes]
end
pool:close()
pool:join()

print(string.format("serial %.3f s", median(t[serial])))
print(string.format("parallel %.3f s", median(t[parallel])))
print(string.format("parallel_over_serial %.3f x", median(p_s)))
print(string.format("processes_over_serial %.3f x", median(q_s)))
print(string.format("parallel_over_processes %.3f x", median(p_q)))
print(string.format("# speedup %.2fx (plain processes %.2fx), %d primes",
                    1 / median(p_s), 1 / median(q_s), expected))
