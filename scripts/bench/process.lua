-- process.lua -- start+join of a trivial child, the cost of one worker's
-- whole life: fork, run an empty target, exit, reap.
-- Prints: start_join <ms per start+join> ms
-- Usage: luamp process.lua [N=500]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 500
local function noop() end

local function once()
  local p = mp.Process{target = noop}
  p:start()
  p:join()
  p:close()
end

for _ = 1, 20 do once() end  -- warm up: page tables, allocator, loop

local t0 = mp.monotonic()
for _ = 1, N do once() end
local dt = mp.monotonic() - t0

print(string.format("start_join %.4f ms", dt * 1e3 / N))
