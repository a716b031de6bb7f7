-- pool_dict.lua -- a Pool's round trip for tasks whose argument and result
-- are a shared Dict: each task sets a key and returns the Dict, and the
-- owner reads the key through what came back.
-- Prints: dict_apply <k tasks/s> k/s
-- Usage: luamp pool_dict.lua [N=20000] [WORKERS=2]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 20000
local WORKERS = tonumber(arg and arg[2]) or 2

local function touch(d, i)
  d[i] = i
  return d
end

-- Seconds to submit n tasks on d and check every result.
local function run(pool, d, n)
  local t0 = mp.monotonic()
  local rs = {}
  for i = 1, n do rs[i] = pool:apply_async(touch, {d, i}) end
  for i = 1, n do assert(rs[i]:get()[i] == i) end
  return mp.monotonic() - t0
end

local pool = mp.Pool(WORKERS)
local d = mp.Dict()
run(pool, d, N // 10) -- warm up
local dt = run(pool, d, N)
pool:close()
pool:join()

print(string.format("dict_apply %.3f k/s", N / dt / 1e3))
