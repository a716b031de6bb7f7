-- pool_apply.lua -- a Pool's round trip for single tasks: many apply_async
-- of a function that returns its argument, then every get.
-- Prints: apply_async <k tasks/s> k/s, worker_sleeps <n> /1k (the times
--         the workers went to sleep, waiting for work, per 1000 tasks: each
--         costs a wake-up), idle_worker_pss <kB> kB (the mean proportional
--         set size of a worker once the pool is idle), transport_floor <k
--         tasks/s> k/s (the same round trips over the Pool's transport
--         alone, with no scheduler, no AsyncResult and no function cache:
--         what the queues, the codec and the workers' loop cost) and
--         floor_owner_cpu <us> us (the owner's CPU time a task there)
-- Usage: luamp pool_apply.lua [N=20000] [WORKERS=2]

local mp = require "luamp"
local core = require "luamp.core"
local msgs = require "luamp.pool.messages"

local N = tonumber(arg and arg[1]) or 20000
local WORKERS = tonumber(arg and arg[2]) or 2

local function identity(x) return x end

-- Seconds to submit n tasks and get every result.
local function run(pool, n)
  local t0 = mp.monotonic()
  local rs = {}
  for i = 1, n do rs[i] = pool:apply_async(identity, {i}) end
  for i = 1, n do assert(rs[i]:get() == i) end
  return mp.monotonic() - t0
end

-- A number from /proc/PID/FILE, after `key`.
local function proc(pid, file, key)
  local f = assert(io.open("/proc/" .. pid .. "/" .. file))
  local n = tonumber(f:read("a"):match("\n" .. key .. ":%s+(%d+)"))
  f:close()
  return n
end

-- The workers' voluntary context switches: their sleeps.
local function sleeps(workers)
  local n = 0
  for _, p in ipairs(workers) do
    n = n + proc(p.pid, "status", "voluntary_ctxt_switches")
  end
  return n
end

-- This process's CPU time so far, in seconds (to the nanosecond).
local function cpu()
  local f = assert(io.open("/proc/self/schedstat"))
  local ns = tonumber(f:read("a"):match("^%d+"))
  f:close()
  return ns / 1e9
end

-- The transport alone: the owner sends each worker batches of BATCH tasks
-- (their arguments in one Message, as the scheduler's), two batches in
-- flight per worker, and takes the outcomes off one queue; a worker
-- decodes a batch's arguments, calls the function for each task and puts
-- its outcome (a values message) as the Pool's workers do.  Returns
-- tasks/s and the owner's CPU seconds a task.
local function floor(n)
  local BATCH = 64
  local outq, inbox, workers = core.Queue(), {}, {}
  for w = 1, WORKERS do
    inbox[w] = core.Queue()
    workers[w] = mp.Process{daemon = true, target = function()
      while true do
        local b = inbox[w]:get()
        if not b then return end
        local args = core.decode(b.a)
        b.a:close()
        for i = 1, #b.id do
          outq:put(msgs.values(table.pack(b.id[i], true,
                                          identity(args[i][1]))))
        end
      end
    end}
    workers[w]:start()
  end
  local c0, t0 = cpu(), mp.monotonic()
  local sent, got, buf, out, w = 0, 0, {}, {}, 0
  while got < n do
    while sent < n and sent - got < 2 * WORKERS * BATCH do
      local ids, args = {}, {}
      for i = 1, math.min(BATCH, n - sent) do
        ids[i], args[i] = sent + i, {sent + i}
      end
      sent = sent + #ids
      w = w % WORKERS + 1
      local am = core.message(args, "args")
      inbox[w]:put({id = ids, a = am})
      am:close()
    end
    mp.wait({outq})
    local k = outq:_drain(buf)
    for i = 1, k do
      local m = buf[i]
      out[m[1]], buf[i] = m, nil
    end
    got = got + k
  end
  local dt, dc = mp.monotonic() - t0, cpu() - c0
  for i = 1, n do assert(out[i][3] == i) end
  for k = 1, WORKERS do inbox[k]:put(false) end
  for k = 1, WORKERS do workers[k]:join() end
  return n / dt, dc / n
end

local pool = mp.Pool(WORKERS)
run(pool, N // 10) -- warm up: the workers are up and know the function
local workers = mp.active_children()
local slept = sleeps(workers)
local dt = run(pool, N)
slept = sleeps(workers) - slept
mp.sleep(0.2) -- the workers are idle, their last tasks collected
local kb = 0
-- The proportional set size: a worker's share of the pages it shares with
-- the owner and the other workers counted in part.
for _, p in ipairs(workers) do kb = kb + proc(p.pid, "smaps_rollup", "Pss") end
pool:close()
pool:join()

print(string.format("apply_async %.3f k/s", N / dt / 1e3))
print(string.format("worker_sleeps %.1f /1k", slept / N * 1e3))
print(string.format("idle_worker_pss %.0f kB", kb / #workers))

floor(N // 10) -- warm up
local rate, owner = floor(N * 5)
print(string.format("transport_floor %.3f k/s", rate / 1e3))
print(string.format("floor_owner_cpu %.2f us", owner * 1e6))
