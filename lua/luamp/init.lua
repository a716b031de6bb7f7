-- luamp -- Python's multiprocessing for Lua: the module table.  The C core
-- (luamp.core) is mechanism; the files beside this one are policy.

local core = require "luamp.core"
local errors = require "luamp.errors"
local process = require "luamp.process"

local M = {}

M._VERSION = "luamp 0.1.0"

for _, t in ipairs(errors.types) do
  M[t] = t
end
M.Error = errors.Error

M.Process = process.Process
M.current_process = process.current_process
M.parent_process = process.parent_process
M.active_children = process.active_children

M.Queue = core.Queue
M.JoinableQueue = core.JoinableQueue
M.SimpleQueue = core.SimpleQueue

M.cpu_count = core.cpu_count
M.sleep = core.sleep
M.monotonic = core.monotonic
M.stats = core.stats

return M
