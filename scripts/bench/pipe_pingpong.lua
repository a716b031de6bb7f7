-- pipe_pingpong.lua -- round trip of a small message between two processes over a
-- duplex Pipe: send, the echo process receives and sends it back, receive.
-- Prints: pingpong_rtt <us per round trip> us
-- Usage: luamp pipe_pingpong.lua [N=20000]

local mp = require "luamp"

local N = tonumber(arg and arg[1]) or 20000

local a, b = mp.Pipe()
local echo = mp.Process{target = function()
  a:close()
  while true do
    local v = b:recv()
    if v == nil then break end
    b:send(v)
  end
end}
echo:start()
b:close()

for i = 1, N // 10 do a:send(i); a:recv() end -- warm up
local t0 = mp.monotonic()
for i = 1, N do
  a:send(i)
  a:recv()
end
local dt = mp.monotonic() - t0
a:send(nil)
echo:join()
print(string.format("pingpong_rtt %.3f us", dt / N * 1e6))
