-- pipe_fault_spec.lua -- messages on a Pipe that name shared objects:
-- the objects live while the message is in flight, whatever the sender
-- does once it is sent, and go when it is received or never will be
-- (its connection is gone); senders and receivers killed with SIGKILL at
-- random moments leave no object and no arena block behind.

local mp = require "luamp"
local H = require "spec_helper"
local spawn, finish = H.spawn, H.finish

-- Receives everything left on a (whose writers are all closed), counting
-- the messages; a message its sender was killed in the middle of ends it.
local function drain(a, why)
  local n = 0
  while true do
    local ok, v = pcall(a.recv, a)
    if not ok then
      assert.are.equal("EOFError", type(v) == "table" and v.type,
        tostring(v) .. why)
      return n
    end
    assert.are.equal("table", type(v), "a message came torn" .. why)
    assert.are.equal(v.i, v.d.i, "a message's Dict is not its own" .. why)
    n = n + 1
  end
end

describe("Pipe messages naming shared objects", function()
  H.leakcheck()

  it("keep them alive while in flight, the sender gone", function()
    local before = H.snapshot()
    local a, b = mp.Pipe()
    local p = spawn(function()
      for i = 1, 50 do
        b:send({i = i, d = mp.Dict{i = i}, q = mp.Queue(), l = mp.List{i}})
      end
      collectgarbage()
    end)
    finish(p)
    collectgarbage()
    for i = 1, 50 do
      assert.is_true(a:poll(10))
      local m = a:recv()
      assert.are.equal(i, m.i)
      assert.are.equal(i, m.d.i)
      assert.are.same({i, n = 1}, m.l:totable())
      m.q:put(i)
      assert.are.equal(i, m.q:get())
    end
    a:close()
    b:close()
    H.settled(before)
  end)

  it("let them go when the message is never received", function()
    local before = H.snapshot()
    local a, b = mp.Pipe()
    local kept = mp.Dict{k = "kept"}
    for i = 1, 10 do b:send({i = i, d = mp.Dict{i = i}, kept = kept}) end
    local p = spawn(function() b:send({mp.List{"from a child"}, kept}) end)
    finish(p)
    a:close()
    b:close()
    assert.are.equal("kept", kept.k)
    kept:close()
    H.settled(before)
  end)

  it("let them go when they are read as bytes", function()
    local before = H.snapshot()
    local a, b = mp.Pipe()
    b:send({mp.Dict{k = 1}})
    b:send({mp.Dict{k = 2}})
    assert.is_string(a:recv_bytes())
    local arr = mp.Array("B", 2)
    local ok, e = pcall(a.recv_bytes_into, a, arr)
    assert.is_false(ok)
    assert.are.equal("BufferTooShort", e.type)
    arr:close()
    arr = nil -- its lock goes with its last reference
    a:close()
    b:close()
    H.settled(before)
  end)

  it("leave nothing behind when senders are killed at random moments",
     function()
    local why = H.seeded()
    local before = H.snapshot()
    -- The objects are made here: a process killed while it makes one is
    -- another matter (see the README on what a kill can leak).
    local dicts = {}
    for k = 1, 5 do dicts[k] = mp.Dict{i = k} end
    local a, b
    local received, sent = 0, mp.Event()
    H.kill_rounds{rounds = 30, pause = 0.01, why = why,
      start = function()
        a, b = mp.Pipe()
        sent:clear()
        local p = spawn(function()
          local i = 0
          while true do
            i = i % 5 + 1
            b:send({i = i, d = dicts[i], pad = ("x"):rep(i * 100)})
            if i == 1 then sent:set() end
          end
        end)
        -- (one message whole at least, in every round)
        assert.is_true(sent:wait(10), "the sender did not start" .. why)
        return p
      end,
      after = function()
        -- Every whole message is read; one the victim was cut off in the
        -- middle of ends the stream.
        b:close()
        received = received + drain(a, why)
        a:close()
      end}
    assert.is_true(received > 0, "no message came through" .. why)
    sent:close()
    for k = 1, 5 do dicts[k]:close() end
    H.settled(before, why)
  end)

  it("leave nothing behind when the receiver is killed", function()
    local why = H.seeded()
    local before = H.snapshot()
    for _ = 1, 10 do
      local a, b = mp.Pipe()
      local reading = mp.Queue()
      local p = spawn(function()
        reading:put(true)
        while true do
          local m = a:recv()
          assert(m.d.i == m.i)
        end
      end)
      reading:get(true, 10)
      for i = 1, 20 do b:send({i = i, d = mp.Dict{i = i}}) end
      mp.sleep(math.random() * 0.005)
      H.kill(p, why)
      a:close()
      b:close()
      reading:close()
    end
    H.settled(before, why)
  end)

  -- A Pipe whose both ends a process closes, messages naming objects
  -- unread in it, is destroyed by that process: one killed as it does
  -- leaves its reaper to drop those messages' records and references.
  it("leave nothing behind when their Pipe's destroyer is killed",
     function()
    H.destroy_killed{rounds = 60, held = function()
      return {mp.Dict{note = "named by messages"}, mp.Lock()}
    end, step = function(held)
      local a, b = mp.Pipe()
      for k = 1, 4 do a:send(H.fault_refs(k, held)) end
      a:close()
      b:close()
    end}
  end)
end)
