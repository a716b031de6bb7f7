-- list_fault_spec.lua -- a List under fire: processes that append, set,
-- insert, pop, remove, extend and reverse are killed with SIGKILL at random
-- moments, and yet the list stays consistent (its length is the number of
-- items a walk sees, every item decodes whole), an extend is there whole
-- or not at all, nobody is left blocked, and once everything is closed no
-- arena block is left behind.

local mp = require "luamp"
local core = require "luamp.core"
local H = require "spec_helper"
local spawn, finish = H.spawn, H.finish

local ROUNDS = 120
local WORKERS = 3
local item = H.fault_value

-- The shared objects that the items of H.kill_changes's children name.
local function held_objects()
  return {mp.Dict{note = "held by items"}, mp.Lock(), mp.Event()}
end

-- An index taken from #l may be past the end by the time it is used
-- (other processes popped meanwhile; pop() of an empty list is nil): then,
-- and only then, the call fails, with the range it missed.
local function at_index(ok, err)
  if not ok and not tostring(err):find("out of range", 1, true) then
    error(err, 0)
  end
end

-- One random operation on l; extra goes into the items stored.
local function operate(l, extra)
  local op = math.random(10)
  local n = #l
  if op <= 3 or n < 4 then
    l:append(item(math.random(1000), extra))
  elseif op == 4 then
    l:pop()
  elseif op == 5 then
    at_index(pcall(l.pop, l, 1))
  elseif op == 6 then
    local v = item(math.random(1000), extra)
    at_index(pcall(function() l[math.random(n)] = v end))
  elseif op == 7 then
    at_index(pcall(l.insert, l, math.random(n),
                   item(math.random(1000), extra)))
  elseif op == 8 then
    l:extend{item(math.random(1000), extra), item(math.random(1000), extra)}
  elseif op == 9 then
    pcall(l.remove, l, l[1]) -- another process may have taken it first
  elseif math.random(2) == 1 then
    l:reverse()
  else
    for _ in ipairs(l) do end
  end
end

-- Checks that l is consistent: its length is the number of items, and
-- every item decodes whole.  Returns the length.
local function check_consistent(l, why, extra)
  local n = #l
  local t = l:totable()
  assert.are.equal(n, t.n, "#l and totable() disagree" .. why)
  for i = 1, n do H.assert_whole(t[i], "item " .. i .. why, extra) end
  return n
end

describe("List under SIGKILL", function()
  H.leakcheck()

  it("stays consistent and blocks nobody", function()
    local why, seed = H.seeded()
    local before = H.snapshot()
    local l = mp.List()
    local stop = core.blob(1)
    stop:set("\0")
    local next_id = 0
    local function start()
      next_id = next_id + 1
      return spawn(function(id)
        math.randomseed(seed + id)
        while stop:get() == "\0" do operate(l) end
      end, next_id)
    end
    local workers = {}
    for i = 1, WORKERS do workers[i] = start() end
    local t0 = mp.monotonic()
    local i
    H.kill_rounds{rounds = ROUNDS, pause = 0.004, why = why,
      victim = function()
        i = math.random(WORKERS)
        return workers[i]
      end,
      after = function() workers[i] = start() end}
    stop:set("\1")
    for _, p in ipairs(workers) do finish(p, why) end
    local elapsed = mp.monotonic() - t0
    assert.is_true(check_consistent(l, why) > 0, "nothing was stored" .. why)

    -- Nobody is blocked: a new process and this one use every operation.
    local after = spawn(function()
      math.randomseed(seed)
      for _ = 1, 500 do operate(l) end
    end)
    finish(after, why)
    for _ = 1, 500 do operate(l) end
    check_consistent(l, why)
    assert.is_true(elapsed < 60, "the test took " .. elapsed .. " s")

    l:close()
    stop:close()
    H.settled(before, why)
  end)

  -- A child moves one tagged item from the front to the back, over and
  -- over, and is killed at a random moment: the list then holds each tag
  -- exactly once, none lost and none doubled.
  it("leaves each move done or not done, never half", function()
    local why = H.seeded()
    local before = H.snapshot()
    local l = mp.List{1, 2, 3, 4, 5, 6, 7, 8}
    H.kill_rounds{rounds = 60, pause = 0.003, why = why,
      start = function()
        return spawn(function()
          while true do l:append(l:pop(1)) end
        end)
      end,
      after = function(round)
        local t = l:totable()
        local seen = {}
        for k = 1, t.n do
          assert.is_nil(seen[t[k]], "tag " .. tostring(t[k])
            .. " twice in round " .. round .. why)
          seen[t[k]] = true
        end
        -- A kill between the pop and the append loses that one item: put
        -- it back, so that each round starts whole.
        assert.is_true(t.n == 8 or t.n == 7, "length " .. t.n
          .. " in round " .. round .. why)
        for tag = 1, 8 do
          if not seen[tag] then l:append(tag) end
        end
      end}
    l:close()
    H.settled(before, why)
  end)

  it("gives back the items of pops and replacements killed halfway",
     function()
    local why = H.seeded()
    local before = H.snapshot()
    local l = mp.List{"x"}
    local big = ("p"):rep(60000)
    H.kill_rounds{rounds = 100, pause = 0.003, why = why,
      start = function()
        return spawn(function()
          while true do
            l:append(big)
            l[1] = big
            l:pop()
          end
        end)
      end,
      after = function(round)
        for k, v in ipairs(l) do
          assert.is_true(v == big or (k == 1 and v == "x"),
            "a torn item at " .. k .. " in round " .. round .. why)
        end
      end}
    l:close()
    H.settled(before, why)
  end)
  -- A child extends the list by runs of N items, each run tagged (its
  -- first few items naming shared objects), and is killed at a random
  -- moment (encoding, making the items, linking them in): the list then
  -- holds whole runs only, every item with its references, and nothing
  -- is leaked.
  it("leaves each extend done or not done, never half", function()
    local N, REFS = 1000, 4
    H.kill_changes{make = mp.List, held = held_objects,
      values = function(held)
        local ts = {{}, {}} -- two runs, made once, added in turn
        for r = 1, 2 do
          for k = 1, N do
            ts[r][k] = k <= REFS and H.fault_refs(r, held) or r
          end
        end
        return ts
      end,
      step = function(l, ts)
        l:extend(ts[1])
        l:extend(ts[2])
      end,
      check = function(l, round, why, held)
        local t = l:totable()
        assert.are.equal(0, t.n % N, t.n .. " items, not runs of " .. N
          .. ", in round " .. round .. why)
        for at = 1, t.n, N do
          for k = at, at + N - 1 do
            local v = t[k]
            if k - at < REFS then
              H.assert_refs(v, "item " .. k .. why, held)
              v = v.r
            end
            assert.are.equal(t[at].r, v, "runs mixed at item " .. k
              .. " in round " .. round .. why)
          end
        end
      end}
  end)

  -- A child fills the list with a run of N items (its first few naming
  -- shared objects) and clears it, over and over, and is killed at a
  -- random moment: the list is then empty or whole, and nothing leaks.
  it("leaves each clear done or not done, never half", function()
    local N, REFS = 1000, 4
    H.kill_changes{make = mp.List, held = held_objects,
      values = function(held)
        local t = {}
        for k = 1, N do t[k] = k <= REFS and H.fault_refs(k, held) or k end
        return t
      end,
      step = function(l, t)
        l:extend(t)
        l:clear()
      end,
      check = function(l, round, why, held)
        local t = l:totable()
        assert.is_true(t.n == 0 or t.n == N, t.n .. " items, not 0 or "
          .. N .. ", in round " .. round .. why)
        for k = 1, t.n do
          if k <= REFS then
            H.assert_refs(t[k], "item " .. k .. why, held)
          else
            assert.are.equal(k, t[k], "item " .. k .. why)
          end
        end
      end}
  end)

  -- Items that hold a shared object: a killed writer must not leave the
  -- object with a reference nobody will drop, not even when it is killed
  -- between taking a reference for an item and counting it, or between
  -- uncounting one and dropping it.
  it("leaks no shared object held in items written by killed processes",
     function()
    local why, seed = H.seeded()
    local before = H.snapshot()
    local l = mp.List()
    local held = {mp.Dict{note = "held by items"}, mp.Lock(),
                  mp.Event()}
    H.kill_busy{workers = WORKERS, rounds = 100, pause = 0.004, why = why,
      seed = seed, step = function()
        local n, op = #l, math.random(5)
        if op == 1 and n > 0 then pcall(l.pop, l) -- others pop too
        elseif op == 2 and n > 0 then pcall(l.pop, l, 1)
        elseif op == 3 and n > 0 then
          local v = H.fault_refs(n, held)
          pcall(function() l[math.random(n)] = v end)
        else l:append(H.fault_refs(n, held)) end
      end}
    do -- the items' handles go with t
      local t = l:totable()
      assert.are.equal(#l, t.n, "#l and totable() disagree" .. why)
      for k = 1, t.n do H.assert_refs(t[k], "item " .. k .. why, held) end
    end
    l:close()
    for _, o in ipairs(held) do o:close() end
    H.settled(before, why)
  end)

  -- A process killed as it destroys a List (its last handle closed) leaves
  -- its reaper to finish: the items, their references and the array.
  it("leaks nothing of Lists whose destroyers were killed", function()
    H.destroy_killed{workers = WORKERS, held = function()
      return {mp.Dict{note = "held by items"}, mp.Lock(), mp.Event()}
    end, step = function(held)
      local l = mp.List()
      for k = 1, 4 do l:append(H.fault_refs(k, held)) end
      l:close()
    end}
  end)
end)
