-- The broker Pool across a network that fails: Redis, two worker hosts
-- and the owner each in a network namespace of the spec's own, joined by
-- a bridge in a fifth, with addresses from 198.18.0.0/24 (RFC 2544) that
-- exist only inside those namespaces.  A partition is a worker host's
-- link set down.  Needs root (CAP_NET_ADMIN) and `ip`; without them the
-- cases say SKIP and why.

local H = spec_helper

local S = tostring(math.random(100000, 999999))
local NS = {br = "lmpbr" .. S, rd = "lmprd" .. S, h1 = "lmph1" .. S,
            h2 = "lmph2" .. S, ow = "lmpow" .. S}
local ADDR = {rd = "198.18.0.1", h1 = "198.18.0.11", h2 = "198.18.0.12",
              ow = "198.18.0.20"}

local function sh(cmd)
  return os.execute(cmd .. " >/dev/null 2>&1") == true
end

local function can()
  if not sh("command -v ip") then return false, "no `ip` command" end
  if not sh("command -v redis-server") then
    return false, "redis-server is not installed"
  end
  if not sh("ip netns add " .. NS.br) then
    return false, "cannot make network namespaces (not root?)"
  end
  return true
end

local ok, why = can()
if not ok then
  describe("broker pool on a network", function()
    pending("SKIP: " .. why)
  end)
  return
end

local function teardown_net()
  for _, n in pairs(NS) do sh("ip netns del " .. n) end
end

local function setup_net()
  assert(sh("ip -n " .. NS.br .. " link add br0 type bridge"))
  assert(sh("ip -n " .. NS.br .. " link set br0 up"))
  for _, k in ipairs({"rd", "h1", "h2", "ow"}) do
    local v, e = "v" .. k .. S, "e" .. k .. S
    if k ~= "br" and not sh("ip netns list | grep -q " .. NS[k]) then
      assert(sh("ip netns add " .. NS[k]))
    end
    assert(sh(("ip link add %s type veth peer name %s"):format(v, e)))
    assert(sh(("ip link set %s netns %s"):format(v, NS.br)))
    assert(sh(("ip link set %s netns %s"):format(e, NS[k])))
    assert(sh(("ip -n %s link set %s master br0"):format(NS.br, v)))
    assert(sh(("ip -n %s link set %s up"):format(NS.br, v)))
    assert(sh(("ip -n %s link set %s name eth0"):format(NS[k], e)))
    assert(sh(("ip -n %s addr add %s/24 dev eth0"):format(NS[k], ADDR[k])))
    assert(sh(("ip -n %s link set eth0 up"):format(NS[k])))
    assert(sh(("ip -n %s link set lo up"):format(NS[k])))
  end
end

local PW = "pw" .. S
local URL = ("redis://:%s@%s:6379/0"):format(PW, ADDR.rd)

local function in_ns(k, cmd) return "ip netns exec " .. NS[k] .. " " .. cmd end

local function rcli(...)
  local args = {}
  for i, a in ipairs({...}) do args[i] = H.q(a) end
  local f = io.popen(in_ns("rd", ("redis-cli -h %s -a %s --no-auth-warning "
    .. "%s 2>&1"):format(ADDR.rd, PW, table.concat(args, " "))))
  local out = f:read("a")
  f:close()
  return (out:gsub("\n$", ""))
end

describe("broker pool on a network", function()
  local dir, workers = nil, {}

  setup(function()
    setup_net()
    dir = os.tmpname()
    os.remove(dir)
    assert(sh("mkdir -p " .. H.q(dir)))
    assert(sh(in_ns("rd", ("redis-server --port 6379 --bind %s --save '' "
      .. "--appendonly no --requirepass %s --dir %s --daemonize yes "
      .. "--pidfile %s/r.pid --logfile %s/r.log"):format(ADDR.rd, PW,
        H.q(dir), H.q(dir), H.q(dir)))))
    assert(H.wait_for(function() return rcli("PING") == "PONG" end, 5))
    for _, k in ipairs({"h1", "h2"}) do
      local log = dir .. "/" .. k .. ".log"
      local f = io.popen(in_ns(k, ("env LUAMP_AUTHKEY=%s %s worker %s -c 1 "
        .. "--name %s >%s 2>&1 & echo $!"):format(H.q(H.AUTHKEY),
          H.q(H.luamp), H.q(URL), k, H.q(log))))
      workers[k] = tonumber(f:read("l"))
      f:close()
      assert(H.wait_for(function()
        return (H.readfile(log) or ""):find("serving") ~= nil
      end, 10), "worker " .. k .. " did not start")
    end
  end)

  teardown(function()
    for _, pid in pairs(workers) do
      os.execute("pkill -9 -P " .. pid .. "; kill -9 " .. pid
                 .. " 2>/dev/null")
    end
    local pid = H.readfile(dir .. "/r.pid")
    if pid then os.execute("kill -9 " .. pid) end
    teardown_net()
    os.execute("rm -rf " .. H.q(dir))
  end)

  it("takes back the task of a partitioned host; its late result is a "
     .. "duplicate", function()
    local marks = dir .. "/marks"
    assert(sh("mkdir -p " .. H.q(marks)))
    -- The owner, in its namespace: one task that marks where it runs and
    -- sleeps 2 s; it prints who returned it and how long the get took
    -- from the moment the spec cut the link.
    local script = dir .. "/owner.lua"
    H.writefile(script, ([[
      local mp = require "luamp"
      local p = mp.Pool{broker = %q, authkey = %q, lease = 1,
                        broker_timeout = 5, processes = 1}
      local r = p:apply_async(function(d)
        local mp = require "luamp"
        local name = mp.parent_process().pid
        io.open(d .. "/" .. name, "w"):close()
        mp.sleep(2)
        return name
      end, {%q})
      while not io.open(%q) do mp.sleep(0.01) end
      local t0 = mp.monotonic()
      local who = r:get(20)
      print(who, mp.monotonic() - t0, p._sched.t.k.meta)
      io.stdout:flush()
      mp.sleep(12) -- the cut host comes back and completes too
      p:close()
      p:join()
    ]]):format(URL, H.AUTHKEY, marks, dir .. "/cut"))
    local out = dir .. "/owner.out"
    local f = io.popen(in_ns("ow", ("%s %s >%s 2>&1 & echo $!"):format(
      H.q(H.luamp), H.q(script), H.q(out))))
    workers.owner = tonumber(f:read("l"))
    f:close()
    local first = H.first_mark(marks, 10)
    assert.is_not_nil(first, "the task did not start")
    local cut = first == workers.h1 and "h1" or "h2"
    local other = cut == "h1" and "h2" or "h1"
    assert(sh(("ip -n %s link set eth0 down"):format(NS[cut])))
    H.writefile(dir .. "/cut", "")
    assert.is_true(H.wait_for(function()
      return (H.readfile(out) or ""):find("\n") ~= nil
    end, 15), "no result: " .. (H.readfile(out) or ""))
    local who, took, meta = (H.readfile(out)):match("^(%d+)%s+(%S+)%s+(%S+)")
    assert.are.equal(workers[other], tonumber(who), H.readfile(out))
    -- the lease (1 s), a reaper's round (0.5 s), the task again (2 s)
    assert.is_true(tonumber(took) < 1 + 0.5 + 2 + 1.5, "took " .. took)
    assert(sh(("ip -n %s link set eth0 up"):format(NS[cut])))
    assert.is_true(H.wait_for(function()
      return rcli("HGET", meta, "dup") == "1"
    end, 12), "the cut host's result was not counted as a duplicate")
  end)
end)
