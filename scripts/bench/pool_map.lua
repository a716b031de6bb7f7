-- pool_map.lua -- a Pool's throughput for small items: map of a function
-- that returns its argument, with the default chunksize.  `map` is the
-- first map of the whole list (after a warm-up of a tenth of it), which
-- pays for the pages its tables touch first; `map_again` the median of
-- three more, once the processes have those pages; `imap` the median of
-- three loops over `imap` of the list in chunks of 1000, each result
-- taken in turn.
-- Prints: map <M items/s> M/s, map_again <M items/s> M/s,
--   imap <M items/s> M/s
-- Usage: luamp pool_map.lua [N=200000] [WORKERS=2]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 200000
local WORKERS = tonumber(arg and arg[2]) or 2

local function identity(x) return x end

local items = {}
for i = 1, N do items[i] = i end

-- Seconds for one map over the items.
local function run(pool, list)
  local t0 = mp.monotonic()
  local out = pool:map(identity, list)
  local dt = mp.monotonic() - t0
  assert(out.n == #list and out[#list] == list[#list])
  return dt
end

-- Seconds for one loop over imap of the items.
local function run_imap(pool, list)
  local t0 = mp.monotonic()
  local n, last = 0, nil
  for r in pool:imap(identity, list, 1000) do n, last = n + 1, r end
  local dt = mp.monotonic() - t0
  assert(n == #list and last == list[#list])
  return dt
end

local pool = mp.Pool(WORKERS)
run(pool, table.move(items, 1, N // 10, 1, {})) -- warm up
local dt = run(pool, items)
local again = {}
for i = 1, 3 do again[i] = run(pool, items) end
table.sort(again)
local lazy = {}
for i = 1, 3 do lazy[i] = run_imap(pool, items) end
table.sort(lazy)
pool:close()
pool:join()

print(string.format("map %.3f M/s", N / dt / 1e6))
print(string.format("map_again %.3f M/s", N / again[2] / 1e6))
print(string.format("imap %.3f M/s", N / lazy[2] / 1e6))
