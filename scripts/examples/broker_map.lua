-- broker_map.lua -- a job whose Pool runs on `luamp worker` processes
-- through Redis: word lengths of a text, mapped on whatever workers serve
-- the broker.  Run it with scripts/examples/broker_map.sh, which starts a
-- Redis and two workers, or point it at your own:
--
--   LUAMP_BROKER=redis://:PW@host:6379/0 LUAMP_AUTHKEY_FILE=key \
--     luamp scripts/examples/broker_map.lua
local mp = require "luamp"

local text = [[
When a job outgrows one machine its users should not have to rewrite it:
the same Pool runs its workers on other hosts through Redis.]]

local words = {}
for w in text:gmatch("%a+") do words[#words + 1] = w:lower() end

-- Upvalues travel with the task; globals are the worker's own.
local vowels = "[aeiou]"
local function score(word)
  local _, n = word:gsub(vowels, "")
  return {word = word, length = #word, vowels = n,
          host = require("luamp").parent_process().pid}
end

local pool <close> = mp.Pool{lease = 5}
local results = pool:map(score, words, 4)
local hosts, total = {}, 0
for _, r in ipairs(results) do
  total = total + r.length
  hosts[r.host] = (hosts[r.host] or 0) + 1
end
local n = 0
for _ in pairs(hosts) do n = n + 1 end
print(("%d words, %d letters, mapped by %d worker%s"):format(#results, total,
      n, n == 1 and "" or "s"))
pool:close()
pool:join()
