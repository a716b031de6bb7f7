-- queue_throughput.lua -- one producer process, one consumer (this process), through
-- a Queue: small integers, the 5-field record, and a 64 MiB string.
-- Prints: ints <M msg/s> M/s, records <M msg/s> M/s, arena_per_int <bytes>
--         B, big <GB/s> GB/s, and rtt <us> us: the round trip of a small
--         message to an echoing child and back, through two queues
-- Usage: luamp queue_throughput.lua [N_INTS=200000] [N_RECORDS=100000]
--                                   [BIG_ROUNDS=32]

local mp = require "luamp"

local N_INTS = tonumber(arg and arg[1]) or 200000
local N_RECS = tonumber(arg and arg[2]) or 100000
local BIG_ROUNDS = tonumber(arg and arg[3]) or 32

-- Times `n` items from a producer child to this process, through a
-- queue of at most `maxsize` items, after `warm` items that start the
-- producer and bring in the memory the stream uses (the first touch of
-- a page costs more than copying it, and far more on a virtual machine).
local function run(n, item, maxsize, warm)
  local q = mp.Queue(maxsize)
  local p = mp.Process{target = function()
    for _ = 1, warm + n do q:put(item) end
  end}
  p:start()
  for _ = 1, warm do q:get() end
  local t0 = mp.monotonic()
  for _ = 1, n do q:get() end
  local dt = mp.monotonic() - t0
  p:join()
  q:close()
  return dt
end

local rec = {id = 12345, name = "alpha", score = 3.5,
             tags = {"a", "b", "c"}, ok = true}

local WARM = 1000
print(string.format("ints %.3f M/s", N_INTS / run(N_INTS, 12345, nil, WARM)
                    / 1e6))
print(string.format("records %.3f M/s", N_RECS / run(N_RECS, rec, nil, WARM)
                    / 1e6))

-- The arena's bytes for each small message waiting in a queue (its record
-- and its share of the ring, which grows by doubling).
do
  local q = mp.Queue()
  local used = mp.stats().arena_used
  for _ = 1, 10000 do q:put(12345) end
  print(string.format("arena_per_int %.1f B",
                      (mp.stats().arena_used - used) / 10000))
  q:close()
end

-- Round trips: a small integer to a child that puts it back on another
-- queue, the next one sent once the last is back.
do
  local there, back = mp.Queue(), mp.Queue()
  local p = mp.Process{target = function()
    while true do
      local v = there:get()
      if not v then return end
      back:put(v)
    end
  end}
  p:start()
  local n = N_INTS // 10
  for i = 1, WARM do there:put(i); back:get() end
  local t0 = mp.monotonic()
  for i = 1, n do there:put(i); back:get() end
  print(string.format("rtt %.3f us", (mp.monotonic() - t0) / n * 1e6))
  there:put(false)
  p:join()
end

-- A stream of large messages through a queue of two: the steady state of a
-- pipeline that hands big results on.
local big = string.rep("x", 64 << 20)
local dt = run(BIG_ROUNDS, big, 2, 4)
print(string.format("big %.3f GB/s", BIG_ROUNDS * #big / dt / 1e9))
