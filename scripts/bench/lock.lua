-- lock.lua -- an uncontended Lock: acquire+release pairs in one process.
-- Prints: acquire_release <ns per pair> ns, and call_floor <ns>: two
-- method calls of the cheapest C function there is (s:len()), the cost of
-- reaching C from Lua that no binding can go below.
-- Usage: luamp lock.lua [N=2000000]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 2000000
local lock = mp.Lock()

for _ = 1, N // 10 do lock:acquire(); lock:release() end -- warm up
local t0 = mp.monotonic()
for _ = 1, N do
  lock:acquire()
  lock:release()
end
local dt = mp.monotonic() - t0
print(string.format("acquire_release %.1f ns", dt / N * 1e9))

local str = ""
t0 = mp.monotonic()
for _ = 1, N do
  str:len()
  str:len()
end
dt = mp.monotonic() - t0
print(string.format("call_floor %.1f ns", dt / N * 1e9))
