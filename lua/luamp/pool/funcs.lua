-- luamp.pool.funcs -- a Pool's task functions: each is encoded once (a
-- Message, which keeps the shared objects among its upvalues alive), has
-- an id that the workers know it by, and is sent to each worker once.
-- A function stays while tasks use it; of those no task uses, the most
-- recently used are kept for reuse, up to a number and a size, and the
-- rest are forgotten here and, with their next batch, in the workers.
-- One that names shared objects is forgotten as soon as no task uses it.
-- The uses of each are counted on the scheduler's board, which says when
-- one comes into use (activate) and when it falls out of it (release).

local core = require "luamp.core"

local error, pairs, pcall, setmetatable, type =
  error, pairs, pcall, setmetatable, type
local getupvalue = debug.getupvalue
local message = core.message

local IDLE_FUNCS, IDLE_BYTES = 64, 1 << 20
local WEAK_KEYS = {__mode = "k"}

local C = {}
C.__index = C

local M = {}

function M.new()
  return setmetatable({
    ids = {},        -- id by bytes: the same bytes, the same id
    msgs = {},       -- the Message of each id
    bytes = {},      -- the bytes of each id
    n = 0,
    known = {},      -- per worker: the ids it has
    drops = {},      -- per worker: the ids it may forget, not yet told
    -- id by function identity, for as long as the id is known here; and
    -- the functions cached under each id
    cache = setmetatable({}, {__mode = "k"}),
    cached = {},
    -- The idle ones, oldest first, as a list linked both ways.
    prev = {}, next = {}, head = false, tail = false, nidle = 0,
    idlebytes = 0,
  }, C)
end

-- The id of function f, encoded if it is new.  A function without
-- upvalues always has the same bytes, so it is looked up by identity
-- first.  Raises the encoder's error as it is (no position).
function C:id(f)
  local fid = self.cache[f]
  if fid then return fid end
  local ok, m = pcall(message, f, "func")
  if not ok then error(m, 0) end
  local bytes = m:bytes()
  fid = self.ids[bytes]
  if fid then
    m:close()
  else
    fid = self.n + 1
    self.n = fid
    self.ids[bytes], self.msgs[fid], self.bytes[fid] = fid, m, bytes
  end
  if type(f) == "function" and getupvalue(f, 1) == nil then
    self.cache[f] = fid
    local fs = self.cached[fid] or setmetatable({}, WEAK_KEYS)
    fs[f] = true
    self.cached[fid] = fs
  end
  return fid
end

-- Takes idle function fid off the idle list.
local function unidle(self, fid)
  local prev, nxt = self.prev[fid], self.next[fid]
  if prev then self.next[prev] = nxt else self.head = nxt end
  if nxt then self.prev[nxt] = prev else self.tail = prev end
  self.prev[fid], self.next[fid] = nil, nil
  self.nidle = self.nidle - 1
  self.idlebytes = self.idlebytes - #self.bytes[fid]
end

-- Forgets function fid, which no task uses, here and, with their next
-- batch, in the workers.
local function forget(self, fid)
  local fs = self.cached[fid]
  if fs then
    for f in pairs(fs) do self.cache[f] = nil end
    self.cached[fid] = nil
  end
  self.ids[self.bytes[fid]] = nil
  self.msgs[fid]:close()
  self.msgs[fid], self.bytes[fid] = nil, nil
  for wid, known in pairs(self.known) do
    if known[fid] then
      known[fid] = nil
      local d = self.drops[wid] or {}
      d[#d + 1] = fid
      self.drops[wid] = d
    end
  end
end

-- Forgets idle function fid.
local function evict(self, fid)
  unidle(self, fid)
  forget(self, fid)
end

-- Function fid, unused, comes into use (by a task, a map or an imap).
function C:activate(fid)
  if self.prev[fid] or self.head == fid then unidle(self, fid) end
end

-- Function fid falls out of use: it joins the idle list, the oldest of
-- which are forgotten beyond the limits.  One whose upvalues name shared
-- objects is forgotten at once, so that it keeps them alive no longer
-- than its tasks need them.
function C:release(fid)
  if self.msgs[fid]:objects() > 0 then return forget(self, fid) end
  local tail = self.tail
  if tail then self.next[tail] = fid else self.head = fid end
  self.prev[fid], self.tail = tail or nil, fid
  self.nidle = self.nidle + 1
  self.idlebytes = self.idlebytes + #self.bytes[fid]
  while self.nidle > IDLE_FUNCS or self.idlebytes > IDLE_BYTES do
    evict(self, self.head)
  end
end

-- For a batch to worker wid: the Message of fid if wid does not have it
-- (yet: a batch in flight may carry it), else nil.
function C:for_worker(wid, fid)
  local known = self.known[wid]
  if known and known[fid] then return nil end
  return self.msgs[fid]
end

-- Worker wid has read a batch that carried these functions.
function C:known_by(wid, funcs)
  local known = self.known[wid] or {}
  for fid in pairs(funcs) do known[fid] = true end
  self.known[wid] = known
end

-- The ids worker wid may forget, to send with its next batch (taken).
function C:take_drops(wid)
  local d = self.drops[wid]
  self.drops[wid] = nil
  return d
end

-- Gives back drops that a batch taken back from wid carried.
function C:untake_drops(wid, d)
  if not d then return end
  local mine = self.drops[wid] or {}
  for i = 1, #d do mine[#mine + 1] = d[i] end
  self.drops[wid] = mine
end

-- Worker wid is gone: it knows nothing now.
function C:forget_worker(wid)
  self.known[wid], self.drops[wid] = nil, nil
end

-- Lets go of every function.
function C:close()
  for fid, m in pairs(self.msgs) do
    m:close()
    self.msgs[fid] = nil
  end
  for f in pairs(self.cache) do self.cache[f] = nil end
  self.cached = {}
end

return M
