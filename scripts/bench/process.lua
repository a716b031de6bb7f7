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

-- Prints the mean ms of n start+joins by ctx, after `warm` ones (page
-- tables, allocator, loop; a forkserver starts in its own).
local function timed(name, ctx, warm, n)
  for _ = 1, warm do once(ctx) end
  local t0 = mp.monotonic()
  for _ = 1, n do once(ctx) end
  local dt = mp.monotonic() - t0
  print(string.format("%s %.4f ms", name, dt * 1e3 / n))
end

timed("start_join", mp, 20, N)
timed("spawn_start_join", mp.get_context("spawn"), 5, N_SPAWN)
timed("forkserver_start_join", mp.get_context("forkserver"), 20, N)
