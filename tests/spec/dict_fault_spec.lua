-- dict_fault_spec.lua -- a Dict under fire: processes that set, delete,
-- pop, add, update, incr and walk keys are killed with SIGKILL at random
-- moments, 200 times, and yet the dict stays consistent (its count is the
-- number of keys a walk sees, every value decodes whole), no increment is
-- counted twice, an update is there whole or not at all, nobody is left
-- blocked, and once everything is closed no arena block, and no shared
-- object held in a value, is left behind.
--
-- Workers append a line to an acks file after each incr of "total" has
-- returned (one write(2) per line, so a killed writer leaves whole lines):
-- the final total is at least the acks and at most one more per kill.

local mp = require "luamp"
local core = require "luamp.core"
local H = require "spec_helper"
local spawn, finish = H.spawn, H.finish

local ROUNDS = 200
local WORKERS = 3
local NKEYS = 64

local value = H.fault_value -- the value for key r

-- The shared objects that the values of H.kill_changes's children name.
local function held_objects()
  return {mp.List{"held by values"}, mp.Lock(), mp.Event()}
end

-- After a kill: n keys seen of N (none or all), and #d (count) is n.
local function whole_or_none(n, count, N, round, why)
  assert.is_true(n == 0 or n == N, n .. " keys of " .. N .. " in round "
    .. round .. why)
  assert.are.equal(n, count, "the count is off in round " .. round .. why)
end

-- One random operation on d; extra goes into the values stored.
local function operate(d, acks, extra)
  local r = math.random(NKEYS)
  local k = "k" .. r
  local op = math.random(10)
  if op <= 3 then
    d[k] = value(r, extra)
  elseif op == 4 then
    d[k] = nil
  elseif op == 5 then
    d:pop(k, nil)
  elseif op == 6 then
    d:add(k, value(r, extra))
  elseif op == 7 then
    local r2 = r % NKEYS + 1
    d:update{[k] = value(r, extra), ["k" .. r2] = value(r2, extra)}
  elseif op == 8 then
    d:incr("total", 1, 0)
    if acks then acks:write("+\n") end
  elseif op == 9 then
    d:incr("n" .. r, 1, 0)
  else
    for _ in pairs(d) do end
  end
end

-- Checks that d is consistent: #d (read first, before any operation that
-- locks) is the number of keys, every value decodes and is whole.
local function check_consistent(d, why, extra)
  local count = #d
  local keys = d:keys()
  assert.are.equal(count, #keys, "#d and keys() disagree" .. why)
  local walked = 0
  for k, v in pairs(d) do
    walked = walked + 1
    local r = k:match("^k(%d+)$")
    if r then
      H.assert_whole(v, k .. why, extra)
      assert.are.equal(tonumber(r), v.r, k .. why)
    elseif k == "total" or k:match("^n%d+$") then
      assert.are.equal("integer", math.type(v), k .. why)
      assert.is_true(v >= 1, k .. why)
    else
      error("a key that was never stored: " .. tostring(k) .. why)
    end
  end
  assert.are.equal(count, walked, "#d and pairs() disagree" .. why)
  assert.are.equal(count, #d:values())
  assert.are.equal(count, #d:items())
  return count
end

describe("Dict under SIGKILL", function()
  H.leakcheck()

  it("stays consistent, counts no increment twice and blocks nobody",
     function()
    local why, seed = H.seeded()
    local acks_path = os.tmpname()
    finally(function() os.remove(acks_path) end)
    local before = H.snapshot()
    local d = mp.Dict()
    local stop = core.blob(1)
    stop:set("\0")
    local next_id = 0

    local function start()
      next_id = next_id + 1
      return spawn(function(id)
        math.randomseed(seed + id)
        local acks = H.appender(acks_path)
        while stop:get() == "\0" do operate(d, acks) end
        acks:close()
      end, next_id)
    end

    local workers = {}
    for i = 1, WORKERS do workers[i] = start() end
    local t0 = mp.monotonic()
    local i -- the victim's place in workers
    H.kill_rounds{rounds = ROUNDS, pause = 0.004, why = why,
      victim = function()
        i = math.random(WORKERS)
        return workers[i]
      end,
      after = function() workers[i] = start() end}
    stop:set("\1")
    for _, p in ipairs(workers) do finish(p, why) end
    local elapsed = mp.monotonic() - t0

    local count = check_consistent(d, why)
    assert.is_true(count > 0, "nothing was stored" .. why)
    local acked = #H.readfile(acks_path) // 2
    local total = d.total or 0
    assert.is_true(total >= acked and total <= acked + ROUNDS,
      "total " .. total .. " for " .. acked .. " acked increments" .. why)
    assert.is_true(acked >= H.rounds(100), "too little traffic: " .. acked
      .. " increments" .. why)

    -- Nobody is blocked: a new process and this one use every operation.
    local after = spawn(function()
      math.randomseed(seed)
      for _ = 1, 1000 do operate(d) end
    end)
    finish(after, why)
    for _ = 1, 1000 do operate(d) end
    check_consistent(d, why)
    assert.is_true(elapsed < 60, "the test took " .. elapsed .. " s")

    d:clear()
    assert.are.equal(0, #d)
    d:close()
    stop:close()
    H.settled(before, why)
  end)

  -- A child counts and moves one key along with the count, and is killed
  -- at a random moment, often holding the dict's lock: what is left is one
  -- of the three states the loop passes through, exactly.
  it("leaves each operation done or not done, never half", function()
    local why = H.seeded()
    local before = H.snapshot()
    local d = mp.Dict{n = 0, k0 = 0}
    H.kill_rounds{rounds = 40, pause = 0.002, why = why,
      start = function()
        local start = d.n
        local p = spawn(function()
          while true do
            local v = d:incr("n", 1)
            d["k" .. v] = v
            d["k" .. (v - 1)] = nil
          end
        end)
        H.wait_for(function() return d.n >= start + 50 end, 10, 0.0005)
        return p
      end,
      after = function(round)
        local count = #d
        local n = d.n
        local ks = {}
        for k, v in pairs(d) do
          if k ~= "n" then
            assert.are.equal("k" .. v, k, "round " .. round .. why)
            ks[#ks + 1] = v
          end
        end
        table.sort(ks)
        local state = table.concat(ks, ",")
        assert.is_true(state == (n - 1) .. "" or state == n .. ""
          or state == (n - 1) .. "," .. n,
          "n = " .. n .. " with keys {" .. state .. "} in round " .. round
          .. why)
        assert.are.equal(1 + #ks, count, "the count is off in round "
          .. round .. why)
        -- Settle the state for the next round: only k<n> left.
        d["k" .. (n - 1)] = nil
        d["k" .. n] = n
      end}
    d:close()
    H.settled(before, why)
  end)

  -- A child updates N keys at once, over and over, each update's values
  -- tagged (the first few naming shared objects), and is killed at a
  -- random moment (encoding, making the entries, putting them in, freeing
  -- those they replaced): every key then has the value of one update,
  -- every value its references, and nothing is leaked.
  it("leaves each update done or not done, never half", function()
    local N, REFS = 1000, 4
    H.kill_changes{make = mp.Dict, held = held_objects,
      values = function(held)
        local ts = {{}, {}} -- two updates, made once, done in turn
        for r = 1, 2 do
          for k = 1, N do
            ts[r]["k" .. k] = k <= REFS and H.fault_refs(r, held) or r
          end
        end
        return ts
      end,
      step = function(d, ts)
        d:update(ts[1])
        d:update(ts[2])
      end,
      check = function(d, round, why, held)
        local count, r, n = #d, nil, 0
        for k, v in pairs(d:totable()) do
          n = n + 1
          if tonumber(k:sub(2)) <= REFS then
            H.assert_refs(v, k .. why, held)
            v = v.r
          end
          r = r or v
          assert.are.equal(r, v, "two updates mixed at " .. k
            .. " in round " .. round .. why)
        end
        whole_or_none(n, count, N, round, why)
      end}
  end)

  -- A child fills the dict with N keys at once (the first few values
  -- naming shared objects) and clears it, over and over, and is killed
  -- at a random moment: the dict is then empty or whole, its count
  -- right, and nothing leaks.
  it("leaves each clear done or not done, never half", function()
    local N, REFS = 1000, 4
    H.kill_changes{make = mp.Dict, held = held_objects,
      values = function(held)
        local t = {}
        for k = 1, N do
          t["k" .. k] = k <= REFS and H.fault_refs(k, held) or k
        end
        return t
      end,
      step = function(d, t)
        d:update(t)
        d:clear()
      end,
      check = function(d, round, why, held)
        local count, n = #d, 0
        for k, v in pairs(d:totable()) do
          n = n + 1
          local i = tonumber(k:sub(2))
          if i <= REFS then
            H.assert_refs(v, k .. why, held)
          else
            assert.are.equal(i, v, k .. why)
          end
        end
        whole_or_none(n, count, N, round, why)
      end}
  end)

  -- pop copies the value out before it lets the entry go: a child killed
  -- then must not take the entry's memory with it.
  it("gives back the entries of pops killed halfway", function()
    local why = H.seeded()
    local before = H.snapshot()
    local d = mp.Dict()
    local big = ("p"):rep(60000)
    H.kill_rounds{rounds = 150, pause = 0.003, why = why,
      start = function()
        return spawn(function()
          while true do
            local r = math.random(8)
            d[r] = big
            d:pop(r, nil)
          end
        end)
      end,
      after = function(round)
        for k, v in pairs(d) do
          assert.is_true(v == big, "a torn value under " .. k
            .. " in round " .. round .. why)
        end
      end}
    d:clear()
    d:close()
    H.settled(before, why)
  end)

  -- Values that hold a shared object: a killed writer must not leave the
  -- object with a reference nobody will drop, not even when it is killed
  -- between taking a reference for a value and counting it in the entry,
  -- or between uncounting one and dropping it.
  it("leaks no shared object held in values written by killed processes",
     function()
    local why, seed = H.seeded()
    local before = H.snapshot()
    local d = mp.Dict()
    local held = {mp.List{"held by values"}, mp.Lock(),
                  mp.Event()}
    H.kill_busy{workers = WORKERS, rounds = 100, pause = 0.004, why = why,
      seed = seed, step = function()
        local r = math.random(NKEYS)
        local op = math.random(4)
        if op == 1 then d["k" .. r] = nil
        elseif op == 2 then d:pop("k" .. r, nil)
        else d["k" .. r] = H.fault_refs(r, held) end
      end}
    for k, v in pairs(d) do H.assert_refs(v, k .. why, held) end
    d:clear()
    d:close()
    for _, o in ipairs(held) do o:close() end
    H.settled(before, why)
  end)

  -- A process killed as it destroys a Dict (its last handle closed) leaves
  -- its reaper to finish: the entries, their references and the table.
  it("leaks nothing of Dicts whose destroyers were killed", function()
    H.destroy_killed{workers = WORKERS, held = function()
      return {mp.List{"held by values"}, mp.Lock(), mp.Event()}
    end, step = function(held)
      local d = mp.Dict()
      for k = 1, 4 do d["k" .. k] = H.fault_refs(k, held) end
      d:close()
    end}
  end)
end)
