-- producer_consumer.lua -- the classic shape: producers put work on a
-- queue, consumers take it off and put results on another, the main
-- process collects.  A sentinel (nil would be a value: use false) tells a
-- consumer to stop.
--
--   scripts/run scripts/examples/producer_consumer.lua [items] [consumers]

local mp = require "luamp"

local ITEMS = tonumber(arg[1]) or 1000
local CONSUMERS = tonumber(arg[2]) or mp.cpu_count()

local tasks = mp.Queue(64)   -- bounded: producers wait when it is full
local results = mp.Queue()

local function produce(first, last)
  for i = first, last do
    tasks:put({n = i, text = ("item %d"):format(i)})
  end
end

local function consume()
  local name = mp.current_process().name
  while true do
    local task = tasks:get()
    if not task then break end
    results:put({n = task.n, square = task.n * task.n, by = name})
  end
end

local producers = {
  mp.Process{target = produce, args = {1, ITEMS // 2}},
  mp.Process{target = produce, args = {ITEMS // 2 + 1, ITEMS}},
}
local consumers = {}
for i = 1, CONSUMERS do
  consumers[i] = mp.Process{target = consume, name = "consumer-" .. i}
end

for _, p in ipairs(producers) do p:start() end
for _, c in ipairs(consumers) do c:start() end

local sum, by = 0, {}
for _ = 1, ITEMS do
  local r = results:get()
  sum = sum + r.square
  by[r.by] = (by[r.by] or 0) + 1
end

for _, p in ipairs(producers) do p:join() end
for _ = 1, CONSUMERS do tasks:put(false) end
for _, c in ipairs(consumers) do c:join() end

print(("sum of squares of 1..%d = %d"):format(ITEMS, sum))
for _, c in ipairs(consumers) do
  print(("  %s handled %d"):format(c.name, by[c.name] or 0))
end
assert(sum == ITEMS * (ITEMS + 1) * (2 * ITEMS + 1) // 6)
