-- broker_pool.lua -- the broker Pool (mp.Pool{broker = URL}) on a Redis of
-- its own, with one `luamp worker -c 2` on the same machine: owner, Redis
-- and two executor slots share the cores.  Its twin broker_pool.py runs
-- Celery and RQ on a Redis of their own, and measures the server's XADD
-- ceiling.
--
--   apply_async <k/s>  20000 apply_async of a trivial task, then every get
--   map <k/s>          map of 200000 trivial items, default chunks
--   apply_p50 <ms>     one apply on an idle pool, 200 samples: the median
--   apply_p99 <ms>     and the 99th percentile (nearest rank)
--   local_apply_async, local_map <k/s>: the same two on a local Pool(2), in
--                      the same run, for the cost of the broker
local mp = require "luamp"

local N, MAP_N, SAMPLES = 20000, 200000, 200
local luamp = arg[-1] or "luamp"

local function sh(cmd)
  local f = io.popen(cmd)
  local out = f:read("a")
  f:close()
  return out
end

local dir = sh("mktemp -d"):gsub("%s+$", "")
local password = "pw" .. math.random(1000000, 9000000)
local port, redis_pid
for _ = 1, 20 do
  port = math.random(20000, 60000)
  local ok = os.execute(string.format(
    "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
    .. "--requirepass %s --dir %s --daemonize yes --pidfile %s/r.pid "
    .. "--logfile %s/r.log >/dev/null 2>&1", port, password, dir, dir, dir))
  if ok then
    for _ = 1, 250 do
      if sh(string.format("redis-cli -p %d -a %s --no-auth-warning ping "
                          .. "2>/dev/null", port, password)):find("PONG") then
        redis_pid = tonumber(sh("cat " .. dir .. "/r.pid"))
        break
      end
      mp.sleep(0.02)
    end
  end
  if redis_pid then break end
end
if not redis_pid then
  io.stderr:write("broker_pool: cannot start redis-server\n")
  os.exit(1)
end

local url = string.format("redis://:%s@127.0.0.1:%d/0", password, port)
local key = "bench-key-" .. string.rep("k", 16)
local worker_pid = tonumber(sh(string.format(
  "LUAMP_AUTHKEY=%s %s worker %s -c 2 >%s/w.log 2>&1 & echo $!", key, luamp,
  url, dir)))

local function cleanup()
  os.execute("kill " .. worker_pid .. " 2>/dev/null")
  for _ = 1, 200 do
    if not sh("ps -o stat= -p " .. worker_pid):find("%a") then break end
    mp.sleep(0.02)
  end
  os.execute("kill " .. redis_pid .. " 2>/dev/null")
  os.execute("rm -rf " .. dir)
end

local ok, e = pcall(function()
  local function apply_async(pool, n)
    local rs = {}
    local t0 = mp.monotonic()
    for i = 1, n do rs[i] = pool:apply_async(function(x) return x end, {i}) end
    for i = 1, n do assert(rs[i]:get(60) == i) end
    return n / (mp.monotonic() - t0)
  end
  local function map(pool, n)
    local items = {}
    for i = 1, n do items[i] = i end
    local t0 = mp.monotonic()
    local r = pool:map(function(x) return x end, items)
    assert(r[n] == n)
    return n / (mp.monotonic() - t0)
  end

  local pool = mp.Pool{broker = url, authkey = key}
  apply_async(pool, N // 10) -- warm up: the worker's executors start
  print(string.format("apply_async %.3f k/s", apply_async(pool, N) / 1e3))
  print(string.format("map %.3f k/s", map(pool, MAP_N) / 1e3))
  local times = {}
  for i = 1, SAMPLES + SAMPLES // 10 do
    local t0 = mp.monotonic()
    assert(pool:apply(function(x) return x end, {i}) == i)
    if i > SAMPLES // 10 then times[#times + 1] = mp.monotonic() - t0 end
  end
  table.sort(times)
  local function rank(p) return times[math.ceil(p * #times)] end
  print(string.format("apply_p50 %.3f ms", rank(0.50) * 1e3))
  print(string.format("apply_p99 %.3f ms", rank(0.99) * 1e3))
  pool:close()
  pool:join()

  local lp = mp.Pool(2)
  apply_async(lp, N // 10)
  print(string.format("local_apply_async %.3f k/s", apply_async(lp, N) / 1e3))
  print(string.format("local_map %.3f k/s", map(lp, MAP_N) / 1e3))
  lp:close()
  lp:join()
end)
cleanup()
if not ok then
  io.stderr:write("broker_pool: ", tostring(e), "\n")
  os.exit(1)
end
