-- process.lua -- start+join of a trivial child, the cost of one worker's
-- whole life: fork, run an empty target, exit, reap; and the same with the
-- spawn start method (a fresh run of the luamp command) and with the
-- forkserver (a fork of a server started once, before the clock).
-- Prints: start_join <ms per start+join> ms, spawn_start_join <ms> ms,
-- forkserver_start_join <ms> ms
-- Usage: luamp process.lua [N=500] [N_SPAWN=50]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 500
local N_SPAWN = tonumber(arg and arg[2]) or 50
local function noop() end

local function once(ctx)
  local p = (ctx or mp).Process{target = noop}
  p:start()
  p:join()
  p:close()
end

for _ = 1, 20 do once() end  -- warm up: page tables, allocator, loop

local t0 = mp.monotonic()
for _ = 1, N do once() end
local dt = mp.monotonic() - t0

print(string.format("start_join %.4f ms", dt * 1e3 / N))

local spawn = mp.get_context("spawn")
for _ = 1, 5 do once(spawn) end
t0 = mp.monotonic()
for _ = 1, N_SPAWN do once(spawn) end
dt = mp.monotonic() - t0
print(string.format("spawn_start_join %.4f ms", dt * 1e3 / N_SPAWN))

local forkserver = mp.get_context("forkserver")
for _ = 1, 20 do once(forkserver) end -- the server starts here
t0 = mp.monotonic()
for _ = 1, N do once(forkserver) end
dt = mp.monotonic() - t0
print(string.format("forkserver_start_join %.4f ms", dt * 1e3 / N))
