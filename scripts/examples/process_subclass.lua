-- process_subclass.lua -- a Process with its own `run`, as a Python
-- programmer subclasses multiprocessing.Process: any field given to
-- mp.Process becomes a field of the object, and `run` replaces the default.
-- The result comes back through a Pipe; the exit code says how it went.
--
--   scripts/run scripts/examples/process_subclass.lua [n]

local mp = require "luamp"

local N = tonumber(arg[1]) or 30

-- A "class": a constructor that fills in the fields and the run method.
local function Fibonacci(n, conn)
  return mp.Process{
    name = "fib-" .. n,
    n = n,
    conn = conn,
    run = function(self)
      local a, b = 0, 1
      for _ = 1, self.n do a, b = b, a + b end
      self.conn:send({n = self.n, value = a, pid = mp.current_process().pid})
      os.exit(0)
    end,
  }
end

local reader, writer = mp.Pipe(false)
local procs = {}
for i = 1, 4 do
  procs[i] = Fibonacci(N + i, writer)
  procs[i]:start()
end

for _ = 1, #procs do
  local r = reader:recv()
  print(("fib(%d) = %d  (computed by pid %d)"):format(r.n, r.value, r.pid))
end
for _, p in ipairs(procs) do
  p:join()
  print(("%s exited with %d"):format(p.name, p.exitcode))
end
