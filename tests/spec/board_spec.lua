-- board_spec.lua -- the books a Pool's scheduler keeps in C (core.Board):
-- task ids that never name a slot's old task, batches in the order a
-- worker runs them, the backlog's front and back, the uses of each
-- function, and the outcomes the board settles into an apply's record.

local core = require "luamp.core"
local mp = require "luamp"
local msgs = require "luamp.pool.messages"
local H = require "spec_helper"

local APPLY, CHUNK = msgs.APPLY, msgs.CHUNK

-- An apply's result record, as jobs.new_result makes it (no pool).
local function record(callback)
  return {false, false, false, false, false, 1, 0, callback or false,
          false, nil}
end

local function args(...) return core.message(table.pack(...), "args") end

describe("Board", function()
  H.leakcheck()

  it("gives each task of a slot a new id, and forgets an old one", function()
    local b = core.Board(1)
    local job = record()
    local s = b:add(job, 1, args(1), APPLY)
    local ids = b:take(1, 8)
    assert.are.equal(1, #ids)
    local id = ids[1]
    assert.are.equal(s, b:slot(id))
    local got, at, n, unused, serial = b:done(id)
    assert.are.equal(job, got)
    assert.is_nil(at)
    assert.is_nil(n)
    assert.are.equal(1, unused) -- its function's last use
    assert.is_number(serial) -- its batch's first outcome
    assert.are.equal(0, select("#", b:done(id)))
    local s2 = b:add(record(), 1, args(2), APPLY)
    assert.are.equal(s, s2) -- the slot again, under another id
    assert.are_not.equal(id, b:id(s2))
    assert.are.equal(0, select("#", b:done(id)))
    assert.are.equal(1, b:live())
  end)

  it("closes a task's arguments when it is done or freed", function()
    local b = core.Board(1)
    local a1, a2 = args(1), args(2)
    local s1 = b:add(record(), 1, a1, APPLY)
    local s2 = b:add(record(), 1, a2, APPLY)
    b:free(s1) -- (not sent: it leaves the backlog)
    assert.are.equal(1, b:backlog())
    assert.has_error(function() a1:bytes() end,
                     "attempt to use a closed message")
    assert.are.equal("string", type(a2:bytes()))
    local ids = b:take(1, 8)
    assert.are.equal(b:id(s2), ids[1])
    b:done(ids[1])
    assert.has_error(function() a2:bytes() end,
                     "attempt to use a closed message")
  end)

  it("batches applies together, a chunk alone, in order", function()
    local b = core.Board(2)
    for i = 1, 3 do b:add(record(), 1, args(i), APPLY) end
    local chunk = args(4)
    b:add({}, 2, chunk, CHUNK, 1, 10)
    b:add(record(), 1, args(5), APPLY)
    local ids, fids, as, kinds, serial, used = b:take(1, 64)
    assert.are.equal(3, #ids)
    assert.are.same({1, 1, 1}, fids)
    assert.are.same({APPLY, APPLY, APPLY}, kinds)
    assert.are.same({1}, used)
    -- The arguments travel as one Message: an array of a Message each,
    -- byte for byte what message{m1, m2, m3} makes.
    local ms = {args(1), args(2), args(3)}
    assert.are.equal(core.message(ms):bytes(), as:bytes())
    local am = core.decode(as)
    assert.are.equal(3, #am)
    assert.are.same({2, n = 1}, core.decode(am[2]))
    local ids2, _, as2, kinds2, serial2 = b:take(2, 64)
    assert.are.equal(1, #ids2)
    assert.are.equal(chunk, as2) -- a chunk's arguments go as they are
    assert.are.same({CHUNK}, kinds2)
    assert.is_true(serial2 > serial)
    assert.are.equal(1, b:backlog())
    assert.are.equal(1, b:inflight(1))
    assert.are.equal(1, b:inflight(2))
    -- Worker 1's outcomes count against its batch; the first one says so.
    local _, _, _, _, first = b:done(ids[2])
    assert.are.equal(serial, first)
    _, _, _, _, first = b:done(ids[1])
    assert.is_nil(first)
    b:done(ids[3])
    assert.are.equal(0, b:inflight(1))
    assert.is_false(b:starved())
    local job, at, n = b:done(ids2[1])
    assert.are.same({}, job)
    assert.are.equal(1, at)
    assert.are.equal(10, n)
    assert.is_true(b:starved())
  end)

  it("puts back a batch taken back at the front, in order", function()
    local b = core.Board(2)
    for i = 1, 4 do b:add(record(), 1, args(i), APPLY) end
    local ids = b:take(1, 2)
    local first = b:take(1, 2)
    assert.are.equal(2, b:inflight(1))
    b:add(record(), 1, args(5), APPLY)
    local serial = b:untake(1, first[1])
    assert.is_number(serial)
    assert.is_nil(b:untake(1, first[1]))
    assert.are.equal(1, b:inflight(1))
    b:requeue({b:slot(first[1]), b:slot(first[2])})
    local again = b:take(2, 2)
    assert.are.same(first, again)
    assert.are.equal(1, b:backlog())
    -- A worker that dies: its slots, in slot order; its batches forgotten.
    local s = b:slots(1)
    assert.are.same({b:slot(ids[1]), b:slot(ids[2])}, s)
    assert.are.equal(1, #b:forget(1))
    assert.are.equal(0, b:inflight(1))
  end)

  it("cancels a job's tasks from the back of the backlog", function()
    local b = core.Board(1)
    local other, job = {}, {}
    b:add(other, 1, args(1), CHUNK, 1, 1)
    b:add(job, 2, args(2), CHUNK, 2, 1)
    b:add(job, 2, args(3), CHUNK, 3, 1)
    assert.are.same({2}, b:cancel(job)) -- fid 2 is now unused
    assert.are.equal(1, b:backlog())
    assert.are.equal(1, b:live())
    assert.are.same({}, b:cancel(job))
  end)

  it("says when a function comes into use and falls out of it", function()
    local b = core.Board(1)
    local _, live, first = b:add(record(), 7, args(1), APPLY)
    assert.are.equal(1, live)
    assert.is_true(first)
    _, live, first = b:add(record(), 7, args(2), APPLY)
    assert.are.equal(2, live)
    assert.is_false(first)
    assert.is_false(b:use(7))
    assert.is_true(b:use(8))
    assert.is_true(b:unuse(8))
    assert.is_false(b:unuse(8)) -- not below nothing
    local ids = b:take(1, 64)
    assert.are.equal(false, select(4, b:done(ids[1])))
    assert.are.equal(false, select(4, b:done(ids[2]))) -- b:use(7) holds it
    assert.is_true(b:unuse(7))
  end)

  it("settles an apply's plain results into its record", function()
    local b, q = core.Board(1), core.Queue()
    local plain, holes, called, gone = record(), record(),
      record(print), record()
    for _, r in ipairs{plain, holes, called, gone} do
      b:add(r, 1, args(0), APPLY)
    end
    local ids, _, _, _, serial = b:take(1, 64)
    q:put({ids[1], 2, "x", 4})          -- two plain results
    q:put({ids[2], 3, 1, nil, 3})       -- a nil between: pairs
    q:put({ids[3], 1, "y"})             -- a callback to run
    q:put({ids[1], 1, "late"})          -- its task is gone by now
    q:put({w = 1, ready = true})        -- not an outcome
    local buf, serials, unused = {}, {}, {}
    local n, ns, nu = b:settle(q, buf, serials, unused)
    assert.are.equal(3, n)
    assert.are.equal(ids[2], buf[1][1])
    assert.are.equal(ids[3], buf[2][1])
    assert.is_true(buf[3].ready)
    assert.are.same({1, 0}, {ns, nu})
    assert.are.equal(serial, serials[1])
    assert.is_true(plain[2]) -- ready
    assert.is_true(plain[3]) -- ok
    assert.are.equal(plain, plain[4])
    assert.are.same({"x", 4}, {table.unpack(plain, plain[6], plain[7])})
    assert.is_false(holes[2])
    assert.is_false(called[2])
    assert.are.equal(3, b:live()) -- the rest wait for the scheduler
    assert.are.equal(0, q:qsize())
    b:done(ids[2])
    b:done(ids[3])
    assert.are.equal(1, select(4, b:done(ids[4])))
    q:close()
  end)

  it("keeps an apply's arguments as bytes, holding what they name",
     function()
    local b, mt, pool = core.Board(1), {}, {}
    local q, big = core.Queue(), string.rep("x", 100)
    local r1 = b:apply(mt, pool, 1, {q, 1}, nil, nil, "f", 1)
    local r2, live, first = b:apply(mt, pool, 1, {big}, print, nil, "f", 1)
    assert.are.equal(mt, getmetatable(r1))
    assert.are.equal(pool, r1[1])
    assert.are.equal(print, r2[8]) -- its callback
    assert.are.same({2, false}, {live, first})
    -- An argument that cannot be sent adds nothing.
    assert.has_error(function()
      b:apply(mt, pool, 1, {1, coroutine.create(print)}, nil, nil, "f", 1)
    end, "cannot send args[2]: thread")
    assert.has_error(function() b:apply(mt, pool, 1, 7, nil, nil, "f", 1) end,
                     "bad argument #2 to 'f' (table expected, got number)")
    assert.are.equal(2, b:live())
    q:put("kept")
    q:close() -- the board's hold keeps the queue alive
    collectgarbage()
    local ids, _, as = b:take(1, 8)
    assert.are.equal(2, #ids)
    local am = core.decode(as)
    as:close()
    local a1, a2 = core.decode(am[1]), core.decode(am[2])
    am[1]:close()
    am[2]:close()
    assert.are.equal("kept", a1[1]:get())
    assert.are.equal(1, a1[2])
    assert.are.equal(big, a2[1])
    a1[1]:close()
    b:done(ids[1])
    -- A board closed with tasks on it lets go of their holds too.
    local q2 = core.Queue()
    b:apply(mt, pool, 1, {q2}, nil, nil, "f", 1)
    q2:close()
    b:apply(mt, pool, 1, nil, nil, nil, "f", 1) -- no arguments
    -- A fork's copy of the board is not the pool's: it adds nothing.
    local out = core.Queue()
    local p = mp.Process{target = function()
      out:put(select("#", b:apply(mt, pool, 1, {}, nil, nil, "f", 1)))
      out:put(b:live())
    end}
    p:start()
    p:join()
    assert.are.same({0, 3}, {out:get(), out:get()})
    out:close()
    b:close()
  end)

  it("sends large arguments alone, as their own Message", function()
    local b, mt, pool = core.Board(1), {}, {}
    local q, big = core.Queue(), string.rep("y", 64 << 10)
    b:apply(mt, pool, 1, {1}, nil, nil, "f", 1)
    b:apply(mt, pool, 1, {big, q}, nil, nil, "f", 1)
    b:apply(mt, pool, 1, {3}, nil, nil, "f", 1)
    b:apply(mt, pool, 1, {4}, nil, nil, "f", 1)
    q:close() -- held by the board, as a Message holds it
    local ids1 = b:take(1, 64) -- the first, up to the large one
    local ids2, _, as2 = b:take(1, 64)
    local ids3, _, as3 = b:take(1, 64)
    assert.are.same({1, 1, 2}, {#ids1, #ids2, #ids3})
    local a2 = core.decode(as2)
    assert.are.equal(big, a2[1])
    a2[2]:put("alive")
    assert.are.equal("alive", a2[2]:get())
    a2[2]:close()
    assert.are.equal(2, #core.decode(as3))
    for _, ids in ipairs{ids1, ids2, ids3} do
      for _, id in ipairs(ids) do b:done(id) end
    end
    assert.are.equal(0, b:live())
  end)

  it("rejects what is not a queue, and is closed once", function()
    local b = core.Board(1)
    assert.has_error(function() b:settle({}, {}, {}, {}) end)
    assert.has_error(function() b:take(3, 1) end)
    b:close()
    b:close()
    assert.has_error(function() b:live() end,
                     "attempt to use a closed board")
    assert.matches("closed", tostring(b))
  end)
end)
