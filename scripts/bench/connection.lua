-- connection.lua -- round trip of a small message over a Client
-- connection on a Unix socket, with an authkey: send, the echo process
-- receives and sends it back, receive.
-- Prints: roundtrip <us per round trip> us
-- Usage: luamp connection.lua [N=20000]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 20000
local path = os.tmpname()
os.remove(path)

local l = mp.Listener(path, {authkey = "bench"})
local echo = mp.Process{target = function()
  local c = mp.Client(path, {authkey = "bench", timeout = 10})
  while true do
    local v = c:recv()
    if v == nil then break end
    c:send(v)
  end
  c:close()
end}
echo:start()
local c = l:accept(10)

for i = 1, N // 10 do c:send(i); c:recv() end -- warm up
local t0 = mp.monotonic()
for i = 1, N do
  c:send(i)
  c:recv()
end
local dt = mp.monotonic() - t0
c:send(nil)
echo:join()
c:close()
l:close()
print(string.format("roundtrip %.3f us", dt / N * 1e6))
