-- codec.lua -- the codec's cost on a typical small message: encode+decode
-- round trips of one record, as every queue put/get and pipe send/recv
-- pays it.  From Lua the encoder is reached through core.message, which
-- also makes the Message value (one userdata) that holds the bytes.
-- Prints: roundtrip <M round trips/s> M/s, roundtrip_ns <ns> ns, and the
-- two halves, encode_ns and decode_ns.
-- Usage: luamp codec.lua [N=1000000]

require "luamp"
local core = require "luamp.core"
local clock = require("luamp").monotonic

local encode, decode = core.message, core.decode
local N = tonumber(arg and arg[1]) or 1000000
local rec = {id = 12345, name = "alpha", score = 3.5,
             tags = {"a", "b", "c"}, ok = true}

-- Check once that the round trip is faithful, so that a broken codec is
-- not timed as a fast one.
local back = decode(encode(rec))
assert(back.id == 12345 and back.name == "alpha" and back.score == 3.5
       and back.tags[3] == "c" and #back.tags == 3 and back.ok == true,
       "round trip changed the record")

for _ = 1, N // 10 do decode(encode(rec)) end  -- warm up

local t0 = clock()
for _ = 1, N do decode(encode(rec)) end
local rt = (clock() - t0) / N

local s = encode(rec)
t0 = clock()
for _ = 1, N do encode(rec) end
local enc = (clock() - t0) / N

t0 = clock()
for _ = 1, N do decode(s) end
local dec = (clock() - t0) / N

print(string.format("roundtrip %.3f M/s", 1e-6 / rt))
print(string.format("roundtrip_ns %.1f ns", rt * 1e9))
print(string.format("encode_ns %.1f ns", enc * 1e9))
print(string.format("decode_ns %.1f ns", dec * 1e9))
