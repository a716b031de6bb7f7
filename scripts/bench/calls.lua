-- calls.lua -- the cost of one call on each kind of handle, in one
-- process, beside the floor of an empty method call on a string
-- (`s:len()`: a table lookup and one C call).
-- Prints: <what> <ns per call> ns, for each line of the table below.
-- Usage: luamp calls.lua [N=1000000] [NAME]   (NAME: only that case)

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 1000000
local only = arg and arg[2]
local clock = mp.monotonic

local v = mp.Value("q", 0)
local a = mp.Array("q", 8)
local d = mp.Dict{k = 1}
local l = mp.List{1, 2, 3}
local lock = mp.Lock()
local sem = mp.Semaphore(2)
local q = mp.Queue()
local r, w = mp.Pipe()
local s = "abc"

-- Each case is called N times in a loop of its own (the loop's cost, some
-- 2 ns, is part of every figure).
local cases = {
  {"floor_len", function(n) for _ = 1, n do s:len() end end},
  {"value_read", function(n) for _ = 1, n do local _ = v.value end end},
  {"value_write", function(n) for i = 1, n do v.value = i end end},
  {"value_add", function(n) for _ = 1, n do v:add(1) end end},
  {"array_read", function(n) for _ = 1, n do local _ = a[3] end end},
  {"array_write", function(n) for i = 1, n do a[3] = i end end},
  {"dict_read", function(n) for _ = 1, n do local _ = d.k end end},
  {"dict_write", function(n) for i = 1, n do d.k = i end end},
  {"list_read", function(n) for _ = 1, n do local _ = l[2] end end},
  {"list_len", function(n) for _ = 1, n do local _ = #l end end},
  {"conn_poll", function(n) for _ = 1, n do r:poll() end end},
  {"conn_closed", function(n) for _ = 1, n do local _ = w.closed end end},
  {"lock_pair", function(n)
    for _ = 1, n do lock:acquire(); lock:release() end
  end},
  {"sem_pair", function(n)
    for _ = 1, n do sem:acquire(); sem:release() end
  end},
  {"locked_incr", function(n)
    local vl = v:get_lock()
    for _ = 1, n do
      vl:acquire()
      v.value = v.value + 1
      vl:release()
    end
  end},
  {"queue_pair", function(n)
    for i = 1, n do q:put(i); q:get() end
  end},
}

for _, c in ipairs(cases) do
  local name, f = c[1], c[2]
  if only and name ~= only then goto next end
  local n = name:match("^queue") and N // 10 or N
  f(n // 10) -- warm up
  local t0 = clock()
  f(n)
  print(string.format("%s %.1f ns", name, (clock() - t0) / n * 1e9))
  ::next::
end
