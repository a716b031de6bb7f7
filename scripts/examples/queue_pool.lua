-- queue_pool.lua -- a Pool whose tasks report on a Queue while the owner
-- listens: the shape that Python programs build with Manager().Queue(),
-- since a plain multiprocessing.Queue cannot be passed to pool tasks.  In
-- luamp a plain mp.Queue can: as an argument of apply_async, or as an
-- upvalue of the function given to map.
--
--   scripts/run scripts/examples/queue_pool.lua [tasks] [workers]

local mp = require "luamp"

local TASKS = tonumber(arg[1]) or 12
local WORKERS = tonumber(arg[2]) or mp.cpu_count()

local events = mp.Queue()

-- Runs in a worker: the sum of the squares of 1..n, announced on q when
-- it starts and when it ends.
local function sum_squares(q, task, n)
  local me = mp.current_process().name
  q:put({task = task, event = "start", by = me})
  local s = 0
  for i = 1, n do s = s + i * i end
  mp.sleep(0.01 * (task % 3)) -- uneven tasks, so that the reports interleave
  q:put({task = task, event = "done", by = me, value = s})
  return s
end

local pool <close> = mp.Pool(WORKERS)

-- 1. The queue as an argument: the owner reads the reports as they come,
-- two per task, while the tasks run.
local results = {}
for task = 1, TASKS do
  results[task] = pool:apply_async(sum_squares, {events, task, task * 1000})
end
local started, finished, by, reported = 0, 0, {}, {}
while finished < TASKS do
  local ev = events:get(true, 10) -- a lost report raises Empty, never hangs
  if ev.event == "start" then
    started = started + 1
  else
    finished = finished + 1
    reported[ev.task] = ev.value
    by[ev.by] = (by[ev.by] or 0) + 1
    print(("  task %2d done by %s: %d"):format(ev.task, ev.by, ev.value))
  end
end

-- The pool's own results agree with what the tasks reported.
local agree = 0
for task = 1, TASKS do
  local n = task * 1000
  local value = results[task]:get()
  if value == reported[task] and value == n * (n + 1) * (2 * n + 1) // 6 then
    agree = agree + 1
  end
end

-- 2. The queue as an upvalue: each item of a map reports its square.
local squares = pool:map(function(x)
  events:put({x = x, square = x * x})
  return x * x
end, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
local from_queue = 0
for _ = 1, squares.n do
  from_queue = from_queue + events:get(true, 10).square
end
local from_map = 0
for i = 1, squares.n do from_map = from_map + squares[i] end

pool:close()
pool:join()
events:close()

local workers = {}
for name, n in pairs(by) do
  workers[#workers + 1] = ("%s ran %d"):format(name, n)
end
table.sort(workers)
print(("%d tasks: %d start and %d done reports; %s")
  :format(TASKS, started, finished, table.concat(workers, ", ")))
print(("%d of %d results from get() agree with the reports"):format(agree,
  TASKS))
print(("sum of squares of 1..10: %d through the queue, %d from map")
  :format(from_queue, from_map))
assert(started == TASKS and finished == TASKS and agree == TASKS
  and from_queue == 385 and from_map == 385)
