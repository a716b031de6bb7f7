-- value.lua -- two processes each add 1 to a shared Value 100k times:
-- under the Value's lock (read, add, write), and with the atomic add; then
-- one v:add(1) in one process beside the floor of one method call of the
-- cheapest C function there is (s:len()).  The race is timed from the
-- moment both processes have started (a Barrier) to the last one's end of
-- its loop, so that process start-up is not part of it.
-- Prints: locked_incr <M increments/s> M/s, atomic_add <M/s> M/s,
--         add_call <ns> ns, call_floor <ns> ns
-- Usage: luamp value.lua [N=100000]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 100000

local function race(work)
  local v = mp.Value("q", 0)
  local times = mp.Array("d", 4) -- each process's start and end
  local start = mp.Barrier(2)
  local procs = {}
  for i = 1, 2 do
    procs[i] = mp.Process{target = function()
      start:wait()
      times[2 * i - 1] = mp.monotonic()
      work(v)
      times[2 * i] = mp.monotonic()
    end}
    procs[i]:start()
  end
  for i = 1, 2 do procs[i]:join() end
  local dt = math.max(times[2], times[4]) - math.min(times[1], times[3])
  assert(v.value == 2 * N, "lost increments: " .. v.value)
  return 2 * N / dt / 1e6
end

print(string.format("locked_incr %.3f M/s", race(function(v)
  local lock = v:get_lock()
  for _ = 1, N do
    lock:acquire()
    v.value = v.value + 1
    lock:release()
  end
end)))

print(string.format("atomic_add %.3f M/s", race(function(v)
  for _ = 1, N do v:add(1) end
end)))

local v, str = mp.Value("q", 0), ""
local M = 20 * N
for _ = 1, M // 10 do v:add(1) end -- warm up
local t0 = mp.monotonic()
for _ = 1, M do v:add(1) end
print(string.format("add_call %.1f ns", (mp.monotonic() - t0) / M * 1e9))
t0 = mp.monotonic()
for _ = 1, M do str:len() end
print(string.format("call_floor %.1f ns", (mp.monotonic() - t0) / M * 1e9))
