-- wordfreq.lua -- word frequencies over a corpus, the pool's classic job:
-- the lines are cut into chunks, each worker counts the words of a chunk,
-- and the owner merges the partial counts as they come back, in whatever
-- order they finish.  The corpus is generated here from a fixed vocabulary
-- with a seeded generator, so the expected counts are known exactly.
--
--   scripts/run scripts/examples/wordfreq.lua [lines] [lines per chunk]

local mp = require "luamp"

local LINES = tonumber(arg[1]) or 20000
local PER_CHUNK = tonumber(arg[2]) or 500

local VOCAB = {
  "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as",
  "was", "with", "be", "by", "on", "not", "he", "this", "are", "or",
  "his", "from", "at", "which", "but", "have", "an", "had", "they", "you",
  "were", "their", "one", "all", "we", "can", "her", "has", "there",
  "been", "if", "more", "when", "will", "would", "who", "so", "no",
  "process", "queue", "worker", "pool", "fork", "lua",
}

-- The corpus: LINES lines of 4 to 15 words.  Squaring a uniform number skews
-- the choice towards the front of the vocabulary, as in real text.
math.randomseed(20240601)
local lines, expected, generated = {}, {}, 0
for i = 1, LINES do
  local words = {}
  for k = 1, math.random(4, 15) do
    local w = VOCAB[math.floor(#VOCAB * math.random() ^ 2) + 1]
    words[k] = w
    expected[w] = (expected[w] or 0) + 1
  end
  generated = generated + #words
  lines[i] = table.concat(words, " ")
end

local chunks = {}
for first = 1, LINES, PER_CHUNK do
  chunks[#chunks + 1] = table.move(lines, first,
    math.min(first + PER_CHUNK - 1, LINES), 1, {})
end

-- Runs in a worker: the counts of the words of some lines.
local function count_chunk(chunk)
  local counts = {}
  for _, line in ipairs(chunk) do
    for w in line:gmatch("%a+") do
      w = w:lower()
      counts[w] = (counts[w] or 0) + 1
    end
  end
  return counts
end

local t0 = mp.monotonic()
local pool = mp.Pool(mp.cpu_count())
local totals, parts = {}, 0
for counts in pool:imap_unordered(count_chunk, chunks, {progress = true}) do
  for w, n in pairs(counts) do totals[w] = (totals[w] or 0) + n end
  parts = parts + 1
end
pool:close()
pool:join()
local elapsed = mp.monotonic() - t0

local ranked, counted = {}, 0
for w, n in pairs(totals) do
  ranked[#ranked + 1] = w
  counted = counted + n
end
table.sort(ranked, function(a, b)
  if totals[a] ~= totals[b] then return totals[a] > totals[b] end
  return a < b
end)

print(("%d words in %d lines, %d chunks counted by %d workers in %.2f s")
  :format(counted, LINES, parts, mp.cpu_count(), elapsed))
print("top 10:")
for i = 1, math.min(10, #ranked) do
  local w = ranked[i]
  print(("  %2d. %-8s %6d  %5.2f%%"):format(i, w, totals[w],
    100 * totals[w] / counted))
end

-- Every count is what the generator produced, word by word.
local mismatches = 0
for w, n in pairs(expected) do
  if totals[w] ~= n then mismatches = mismatches + 1 end
end
for w in pairs(totals) do
  if expected[w] == nil then mismatches = mismatches + 1 end
end
assert(parts == #chunks and counted == generated and mismatches == 0,
  ("counted %d words in %d chunks, generated %d in %d; %d words differ")
    :format(counted, parts, generated, #chunks, mismatches))
