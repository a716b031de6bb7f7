-- arena_spec.lua -- the shared arena as scripts see it: objects are
-- reclaimed when no process holds them, whoever dropped them and however
-- a process ended, and exhaustion is an error a program can recover from.

local mp = require "luamp"
local core = require "luamp.core"
local H = spec_helper

-- How many shared objects exist, after a full collection.
local function objects() return H.snapshot().objects end

describe("The shared arena", function()
  H.leakcheck()

  describe("reclaims objects", function()
    it("when the handles are closed, collected or go out of scope", function()
      local base = objects()
      local a = core.blob(100)
      local b = core.blob(100)
      do
        local c <close> = core.blob(100)
        assert.are.equal(base + 3, mp.stats().objects)
      end
      assert.are.equal(base + 2, mp.stats().objects)
      a:close()
      a:close() -- idempotent
      assert.are.equal(base + 1, mp.stats().objects)
      b = nil -- luacheck: ignore
      assert.are.equal(base, objects())
      assert.has_error(function() a:len() end, "attempt to use a closed blob")
      assert.are.equal("luamp.Blob (closed)", tostring(a))
    end)

    it("after 100,000 objects made and dropped across four children", function()
      local before = mp.stats()
      local procs = {}
      for i = 1, 4 do
        procs[i] = mp.Process{target = function()
          for k = 1, 25000 do
            local b = core.blob(k % 200)
            if k % 2 == 0 then b:close() end -- the rest go by collection
          end
          collectgarbage()
        end}
        procs[i]:start()
      end
      for i = 1, 4 do
        procs[i]:join()
        assert.are.equal(0, procs[i].exitcode)
      end
      collectgarbage()
      local after = mp.stats()
      assert.are.equal(before.objects, after.objects)
      assert.are.equal(before.arena_used, after.arena_used)
    end)

    it("that a child inherited, once both processes have dropped them", function()
      local base = objects()
      local b = core.blob(64)
      b:set("hello")
      assert.are.equal(1, b:refs())
      local p = mp.Process{target = function()
        -- The child holds its own reference to the inherited object.
        os.exit(b:refs() == 2 and b:get():sub(1, 5) == "hello" and 0 or 3)
      end}
      p:start()
      p:join()
      assert.are.equal(0, p.exitcode)
      assert.are.equal(1, b:refs()) -- the child's reference went with it
      b:close()
      assert.are.equal(base, objects())
    end)

    it("that a process killed with SIGKILL was holding", function()
      local base = objects()
      local ready = os.tmpname()
      local p = mp.Process{target = function()
        local keep = {}
        for i = 1, 1000 do keep[i] = core.blob(32) end
        local f = io.open(ready, "w")
        f:write("ok")
        f:close()
        mp.sleep(60)
      end}
      p:start()
      local t0 = mp.monotonic()
      while true do
        local f = io.open(ready)
        local s = f and f:read("a")
        if f then f:close() end
        if s == "ok" then break end
        assert.is_true(mp.monotonic() - t0 < 10, "child never got ready")
        mp.sleep(0.01)
      end
      assert.are.equal(base + 1000, mp.stats().objects)
      p:kill()
      p:join()
      os.remove(ready)
      assert.are.equal(-9, p.exitcode)
      assert.are.equal(base, objects())
    end)
  end)

  describe("after processes killed while they make objects", function()
    -- Each victim makes Dicts, Queues, Lists and Events as fast as it can
    -- (keeping them all) until it is killed: what it was making when the
    -- kill came must not stay behind.
    local function victim(pause)
      local p = H.spawn(function()
        collectgarbage("stop")
        local keep, i = {}, 0
        while true do
          i = i + 1
          local k = i % 4
          keep[i] = k == 0 and mp.Dict{i = i} or k == 1 and mp.Queue()
            or k == 2 and mp.List{i} or mp.Event()
        end
      end)
      mp.sleep(pause)
      H.kill(p)
    end

    it("leaves no object and no arena block", function()
      local why = H.seeded()
      victim(0.005) -- a first reaping may grow the reaper's own tables
      local before = H.snapshot()
      for _ = 1, 40 do victim(math.random() * 0.01) end
      H.settled(before, why)
    end)
  end)

  describe("when exhausted", function()
    -- Runs code in a luamp whose arena is `size`, after blocks of `block`
    -- bytes have filled it: `held` has them, `msg` is the error that the
    -- next one raised.
    local function filled(size, block, code)
      return H.run("LUAMP_ARENA=" .. size .. " " .. H.q(H.luamp) .. " -e "
        .. H.q(([[
        local core = require "luamp.core"
        local held, ok, msg = {}
        repeat
          ok, msg = pcall(core.blob, %d)
          if ok then held[#held + 1] = msg end
        until not ok
        ]]):format(block) .. code))
    end

    it("raises an error naming the option, and recovers once memory is freed",
       function()
      -- A small arena makes exhaustion quick.
      local code, out, err = filled("8M", 1 << 20, [[
        print(#held > 0 and #held < 8, msg)
        held[#held]:close()
        held[#held] = nil
        local again = core.blob(1 << 20)
        print("again", again:len())
      ]])
      assert.are.equal(0, code, err)
      assert.matches("^true\t[^\n]*shared memory exhausted: %d+ bytes wanted",
                     out)
      assert.matches("%-%-arena, LUAMP_ARENA or luamp_config.arena_size", out)
      assert.matches("\nagain\t1048576\n$", out)
    end)

    it("holds what its size says: the family's own tables come on top",
       function()
      -- The smallest arena, 1 MiB: 7 blocks of 128 KiB fit, not 8.
      local code, out, err = filled("1", 128 << 10, [[
        print(require("luamp").stats().arena_size, #held)
        print(msg)
      ]])
      assert.are.equal(0, code, err)
      assert.matches("^1048576\t7\n", out)
      assert.matches("bytes wanted, %d+ of 1048576 in use", out)
    end)

    it("refuses a malformed LUAMP_ARENA with a clear message", function()
      local code, _, err = H.run("LUAMP_ARENA=lots " .. H.q(H.luamp) ..
                                 " -e 'print(1)'")
      assert.are.equal(1, code)
      assert.matches("LUAMP_ARENA", err)
    end)
  end)

  describe("mp.stats", function()
    it("counts bytes, objects and children", function()
      local st = mp.stats()
      for _, k in ipairs{"arena_size", "arena_used", "arena_reserved",
                         "arena_blocks", "objects", "processes", "children"} do
        assert.are.equal("number", math.type(st[k]) and "number", k)
        assert.is_true(st[k] >= 0, k)
      end
      local b = core.blob(1000)
      local st2 = mp.stats()
      assert.is_true(st2.arena_used >= st.arena_used + 1000)
      assert.are.equal(st.objects + 1, st2.objects)
      b:close()
    end)
  end)
end)
