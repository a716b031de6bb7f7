-- luamp.pool.messages -- what a Pool's owner and its workers say to each
-- other, whatever carries it (a transport): named constructors and
-- predicates, so that no other module reads a message's fields by number.
--
-- Owner to worker:
--   batch{ids, fids, args, kinds, funcs, drop}  tasks to run, in order: the
--       task ids, their function ids, their arguments (of several tasks,
--       one Message of an array of a Message each; of one, its Message),
--       their kinds (APPLY, CHUNK, STARCHUNK); the functions the worker
--       does not have yet ({[fid] = Message}) and the ids of those it may
--       forget
--   STOP  leave once the work sent is done
-- Worker to owner:
--   values(r)               an apply's results (r: table.pack(id, true,
--                           results...), of plain values: nil, booleans,
--                           numbers, strings); a transport's worker may
--                           put the same message from its parts, with no
--                           table: put_values(id, count, results...)
--   result(id, msg)         a task's results in a Message (table.pack of
--                           an apply's results, or a chunk's first results)
--   failure(id, err, k)     the task failed: err = {message, traceback,
--                           value (a Message, when it could be sent)}; k,
--                           the item of a chunk that failed, if known
--   ready(wid)              the worker's initializer let it live
--   init_failed(wid, text, tb)  its initializer raised

local M = {}

-- Task kinds.  The scheduler's board (src/types/board.c) knows APPLY as 0:
-- applies share a batch, and their plain results it settles itself.
M.APPLY, M.CHUNK, M.STARCHUNK = 0, 1, 2

M.STOP = false

-- A task's message back is an array: the task's id at ID, its kind at
-- KIND, then what the kind says.  A values message has at KIND the count
-- of its results (0 or more), which follow from VALUES_FIRST on: so it
-- needs no field `n`, and is decoded without a hash part (a third less
-- time).  The other kinds are negative.
local ID, KIND = 1, 2
M.ID, M.KIND, M.VALUES_FIRST = ID, KIND, 3
local RESULT, FAILURE = -1, -2
M.FAILURE = FAILURE

function M.batch(ids, fids, args, kinds, funcs, drop)
  return {id = ids, f = fids, a = args, k = kinds, funcs = funcs,
          drop = drop}
end

function M.is_stop(m) return m == M.STOP end

-- r is table.pack(id, true, results...): it becomes the message itself.
function M.values(r)
  r[KIND], r.n = r.n - 2, nil
  return r
end

function M.result(id, msg) return {id, RESULT, msg} end

function M.failure(id, err, k) return {id, FAILURE, err, k} end

function M.ready(wid) return {w = wid, ready = true} end

function M.init_failed(wid, text, tb)
  return {w = wid, init_error = text, traceback = tb}
end

-- Predicates and readers of what a worker sends.
function M.is_outcome(m) return m[ID] ~= nil end
function M.task_id(m) return m[ID] end
function M.is_failure(m) return m[KIND] == FAILURE end
function M.is_values(m) return m[KIND] >= 0 end
-- The Message of a result.
function M.result_message(m) return m[3] end
-- The error of a failure, and the item of a chunk that failed.
function M.failure_error(m) return m[3], m[4] end
function M.is_init_failure(m) return m.init_error ~= nil end
function M.worker_of(m) return m.w end

return M
