-- queue_fault_spec.lua -- a Queue under fire: producers and consumers
-- are killed with SIGKILL at random moments, 200 times, and yet every
-- message that was fully put is received once, whole, and nobody is left
-- blocked or holding arena memory.
--
-- Producers put tables {id, seq, len, payload} on a bounded queue (so that
-- puts block now and then), payloads of random length up to 40 KiB (so
-- that messages are both inline and out of line), and append "id seq" to
-- an acks file only after put has returned.  Consumers check each payload
-- against its regeneration (a full comparison, stronger than a checksum)
-- and append what they got to a results file.  Both files are written
-- with one write(2) per line, so a killed writer leaves whole lines.  A
-- consumer killed between its get and its line loses that one message;
-- such kills are counted.

local mp = require "luamp"
local core = require "luamp.core"
local H = require "spec_helper"

local ROUNDS = 200
local PRODUCERS, CONSUMERS = 2, 2
local MAXLEN = 40 << 10
local INLINE_MAX = 16 << 10

-- The payload of message seq of producer id, len bytes long.
local function payload(id, seq, len)
  return H.payload(id .. "." .. seq, len)
end

local function producer(q, stop, acks_path, id)
  local acks = H.appender(acks_path)
  math.randomseed(id)
  local seq = 0
  while stop:get() == "\0" do
    seq = seq + 1
    local len = math.random(0, MAXLEN)
    q:put({id = id, seq = seq, len = len, payload = payload(id, seq, len)})
    acks:write(id .. " " .. seq .. "\n")
  end
  acks:close()
end

local function consumer(q, results_path)
  local results = H.appender(results_path)
  while true do
    local m = q:get()
    if m == false then break end
    local whole = type(m) == "table" and math.type(m.id) == "integer"
      and math.type(m.seq) == "integer" and math.type(m.len) == "integer"
      and type(m.payload) == "string" and #m.payload == m.len
      and m.payload == payload(m.id, m.seq, m.len)
    if whole then
      results:write(m.id .. " " .. m.seq .. " " .. m.len .. "\n")
    else
      results:write("torn\n")
    end
  end
  results:close()
end

-- Starts a child running target, and returns it once ready() is true.
local function started(target, ready)
  local p = mp.Process{target = target}
  p:start()
  H.wait_for(ready, 10, 0.0005)
  return p
end

-- The end of a round: q, whose messages were all taken, holds no more,
-- takes another, and once closed leaves the arena with `blocks` blocks.
local function drained(q, blocks, why)
  local ok, e = pcall(q.get_nowait, q)
  assert.is_false(ok, "more messages than counted in " .. why)
  assert.are.equal(mp.Empty, e.type)
  q:put("marker")
  assert.are.equal("marker", q:get_nowait())
  q:close()
  collectgarbage() -- the handles of what the messages named
  assert.are.equal(blocks, mp.stats().arena_blocks, "arena blocks leaked "
    .. "in " .. why)
end

describe("Queue under SIGKILL", function()
  H.leakcheck()

  it("loses no message that was put, duplicates none, tears none, and "
     .. "blocks nobody", function()
    local why = H.seeded()
    local acks_path, results_path = os.tmpname(), os.tmpname()
    finally(function()
      os.remove(acks_path)
      os.remove(results_path)
    end)
    collectgarbage()
    local blocks = mp.stats().arena_blocks
    local q = mp.Queue(64)
    local stop = core.blob(1)
    stop:set("\0")
    local next_id = 0

    local function start(kind)
      local p
      if kind == "producer" then
        next_id = next_id + 1
        p = mp.Process{target = producer,
          args = {q, stop, acks_path, next_id}}
      else
        p = mp.Process{target = consumer, args = {q, results_path}}
      end
      p:start()
      return {kind = kind, proc = p, id = next_id}
    end

    local slots = {}
    for _ = 1, PRODUCERS do slots[#slots + 1] = start("producer") end
    for _ = 1, CONSUMERS do slots[#slots + 1] = start("consumer") end

    local killed_producers, consumer_kills = {}, 0
    local t0 = mp.monotonic()
    local k -- the slot of this round's victim
    H.kill_rounds{rounds = ROUNDS, pause = 0.005, why = why,
      victim = function()
        k = math.random(#slots)
        return slots[k].proc
      end,
      after = function()
        local s = slots[k]
        if s.kind == "producer" then
          killed_producers[s.id] = true
        else
          consumer_kills = consumer_kills + 1
        end
        slots[k] = start(s.kind)
      end}

    -- Stop the producers; the consumers drain the queue, waiting without
    -- a timeout, so that a lost wake-up would leave messages behind.
    stop:set("\1")
    for _, s in ipairs(slots) do
      if s.kind == "producer" then
        assert.is_true(s.proc:join(10), "a producer is blocked" .. why)
        assert.are.equal(0, s.proc.exitcode, "a producer failed" .. why)
      end
    end
    local deadline = mp.monotonic() + 10
    while q:qsize() > 0 and mp.monotonic() < deadline do mp.sleep(0.005) end
    assert.are.equal(0, q:qsize(), "the consumers left messages behind"
      .. why)
    for _ = 1, CONSUMERS do q:put(false) end
    for _, s in ipairs(slots) do
      if s.kind == "consumer" then
        assert.is_true(s.proc:join(10), "a consumer is blocked" .. why)
        assert.are.equal(0, s.proc.exitcode, "a consumer failed" .. why)
      end
    end
    assert.is_true(q:empty())
    assert.are.same({0, 0}, {q:_recount()}, "count and records disagree"
      .. why)
    local elapsed = mp.monotonic() - t0

    -- What was acked, and what was received.
    local acked, last_ack, nacked = {}, {}, 0
    for id, seq in H.readfile(acks_path):gmatch("(%d+) (%d+)\n") do
      id, seq = tonumber(id), tonumber(seq)
      acked[id .. "." .. seq] = true
      nacked = nacked + 1
      assert(seq == (last_ack[id] or 0) + 1, "producer " .. id .. " acked "
        .. seq .. " after " .. tostring(last_ack[id]) .. why)
      last_ack[id] = seq
    end
    local received, nreceived, inline, outline = {}, 0, 0, 0
    local text = H.readfile(results_path)
    assert.is_nil(text:find("torn", 1, true), "a torn message" .. why)
    for id, seq, len in text:gmatch("(%d+) (%d+) (%d+)\n") do
      id, seq, len = tonumber(id), tonumber(seq), tonumber(len)
      local key = id .. "." .. seq
      assert(not received[key], "message " .. key .. " received twice" .. why)
      received[key] = true
      nreceived = nreceived + 1
      if len > INLINE_MAX then
        outline = outline + 1
      elseif len < INLINE_MAX - 100 then -- with room for the encoding
        inline = inline + 1
      end
      if not acked[key] then
        -- Only the put a producer was killed in may be got unacked.
        assert(killed_producers[id] and seq == (last_ack[id] or 0) + 1,
          "message " .. key .. " received but never put" .. why)
      end
    end
    local lost = 0
    for key in pairs(acked) do
      if not received[key] then lost = lost + 1 end
    end
    assert(lost <= consumer_kills, lost .. " acked messages lost, but only "
      .. consumer_kills .. " consumers were killed" .. why)
    assert(nacked >= 200 and inline > 0 and outline > 0, "too little "
      .. "traffic: " .. nacked .. " acked, " .. nreceived .. " received ("
      .. inline .. " inline, " .. outline .. " out of line)" .. why)
    assert(elapsed < 60, "the test took " .. elapsed .. " s")

    q:close()
    stop:close()
    assert.are.equal(blocks, mp.stats().arena_blocks, "arena blocks leaked"
      .. why)
  end)

  -- A child puts in a loop, out-of-line messages wait at the head, and the
  -- child is killed at a random moment, often inside a put, holding the
  -- tail's lock: the count the two ends' words give is exactly what is
  -- there.
  it("keeps an exact count when a process dies holding the tail's lock",
     function()
    local why = H.seeded()
    local body = ("x"):rep(12000) .. "|"
    collectgarbage()
    local blocks = mp.stats().arena_blocks
    local q -- this round's queue
    H.kill_rounds{rounds = 40, pause = 0.003, why = why,
      start = function()
        q = mp.Queue()
        for i = 1, 3 do q:put(("o"):rep(20000 + i)) end
        return started(function()
          local seq = 0
          while true do
            seq = seq + 1
            q:put(body .. seq)
          end
        end, function() return q:qsize() >= 4 end)
      end,
      after = function(round)
        local count, found = q:_recount()
        assert.are.equal(found, count, "the count is off" .. why)
        for i = 1, 3 do assert.are.equal(20000 + i, #q:get_nowait()) end
        for seq = 1, count - 3 do
          assert.are.equal(body .. seq, q:get_nowait())
        end
        drained(q, blocks, "round " .. round .. why)
      end}
  end)

  -- A child gets in a loop from a queue of inline and out-of-line
  -- messages and is killed at a random moment, often inside a get,
  -- holding the head's lock: the next getter takes the lock over, and
  -- the messages left are the ones the child had not taken, in order.
  it("gives the rest, in order, after a getter dies holding the head's "
     .. "lock", function()
    local why = H.seeded()
    local function msg(i)
      return i % 5 == 0 and i .. ("o"):rep(INLINE_MAX + 100) or i .. "|"
    end
    collectgarbage()
    local blocks = mp.stats().arena_blocks
    local q -- this round's queue
    local N = 1500
    H.kill_rounds{rounds = 30, pause = 0.003, why = why,
      start = function()
        q = mp.Queue()
        for i = 1, N do q:put(msg(i)) end
        return started(function()
          while true do q:get() end
        end, function() return q:qsize() < N end)
      end,
      after = function(round)
        local count, found = q:_recount()
        assert.are.equal(found, count, "the count is off" .. why)
        assert(count < N, "the getter took nothing" .. why)
        for i = N - count + 1, N do
          assert.are.equal(msg(i), q:get_nowait(), "message " .. i .. why)
        end
        drained(q, blocks, "round " .. round .. why)
      end}
  end)

  -- A child puts into a queue nobody reads, so that its ring grows again
  -- and again (a growth holds both ends' locks and moves every record),
  -- and is killed at a random moment: the queue holds the messages the
  -- child put, in order, and takes more.
  it("holds what was put, in order, after a putter dies growing its ring",
     function()
    local why = H.seeded()
    local body = ("g"):rep(200)
    collectgarbage()
    local blocks = mp.stats().arena_blocks
    local q -- this round's queue
    H.kill_rounds{rounds = 30, pause = 0.01, why = why,
      start = function()
        q = mp.Queue()
        q:put(1 .. body)
        assert.are.equal(1 .. body, q:get()) -- the positions move on
        return started(function()
          local i = 0
          while true do
            i = i + 1
            q:put(i % 50 == 0 and {i, body, mp.Value("i", i)} or i .. body)
          end
        end, function() return q:qsize() > 0 end)
      end,
      after = function(round)
        local count, found = q:_recount()
        assert.are.equal(found, count, "the count is off" .. why)
        for i = 1, count do
          local m = q:get_nowait()
          if i % 50 == 0 then
            assert.are.equal(i, m[1], "message " .. i .. why)
            assert.are.equal(i, m[3].value, "message " .. i .. why)
          else
            assert.are.equal(i .. body, m, "message " .. i .. why)
          end
        end
        drained(q, blocks, "round " .. round .. why)
      end}
  end)

  -- Messages that name shared objects: producers killed as they take the
  -- references of a message, blocked on a full queue or putting it, and
  -- consumers killed as they take one out, decode it or let it go, leave
  -- no reference behind.
  it("leaks no shared object named by messages of killed processes",
     function()
    local why, seed = H.seeded()
    local before = H.snapshot()
    local q = mp.Queue(16)
    local held = {mp.Dict{note = "named by messages"}, mp.Lock(),
                  mp.Event()}
    H.kill_busy{workers = 4, rounds = 100, pause = 0.004, why = why,
      seed = seed, step = function()
        if math.random(2) == 1 then
          pcall(q.put, q, H.fault_refs(0, held), true, 0.01)
        else
          local ok, v = pcall(q.get, q, true, 0.01)
          if ok then H.assert_refs(v, "a message" .. why, held) end
        end
      end}
    while true do
      local ok, v = pcall(q.get_nowait, q)
      if not ok then break end
      H.assert_refs(v, "a message left" .. why, held)
    end
    q:close()
    for _, o in ipairs(held) do o:close() end
    H.settled(before, why)
  end)

  -- A process killed as it destroys a Queue (its last handle closed) with
  -- messages in it leaves its reaper to finish: the messages, their
  -- references and the ring.
  it("leaks nothing of Queues whose destroyers were killed", function()
    H.destroy_killed{held = function()
      return {mp.Dict{note = "named by messages"}, mp.Lock(), mp.Event()}
    end, step = function(held)
      local q = mp.Queue()
      for k = 1, 4 do q:put(H.fault_refs(k, held)) end
      q:close()
    end}
  end)
end)
