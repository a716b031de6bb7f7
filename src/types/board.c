/* board.c -- Board: the books a Pool's scheduler keeps of its tasks, in C:
 * the slots, the backlog of tasks not sent yet, and each worker's batches
 * in flight.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "types.h"

#define BOARD "luamp.Board"

/*
 * The scheduler (lua/luamp/pool/scheduler.lua) decides what goes where;
 * the board records it.  Every task of the pool passes here three times
 * (added, taken into a batch, done), and each is one call, not the
 * hundred VM instructions and the dozen table writes it took in Lua.
 *
 * A task lives in a slot, a small number that is reused; it travels as
 * its id, the slot plus SLOTS times the slot's generation, so that an
 * outcome for a slot's old task is never taken for its new one.  A
 * task's job is in the board's first user value, a table indexed by
 * slot.  Its arguments are either bytes the board keeps in the task
 * itself (an apply submitted by b:apply), holding for this process the
 * shared objects they name as a Message would, or a Message, in the
 * second user value (a chunk's, and large arguments); either is let go of
 * when the task is done.  A batch of several tasks takes their arguments
 * with it as one Message, an array of a Message each, copied from either;
 * a task alone in its batch, its own Message.
 *
 * The backlog is a ring of task ids: added at the back, taken from the
 * front, put back at the front (a batch taken back, a dead worker's
 * tasks) and cancelled from the back; a task freed while in it leaves an
 * id that names nothing, which is skipped.  Each worker has a ring of its
 * batches in flight, oldest first: a worker runs its batches in order and
 * sends the outcome of each task as it ends, so an outcome always counts
 * against the oldest.  A batch has a serial number, which the scheduler
 * keys what it carried by (the functions the worker learns once it reads
 * it).
 *
 * Outcomes.  The scheduler hears of most outcomes through b:done, once
 * they are decoded.  The commonest, an apply's plain results, the board
 * settles itself as it takes them off the workers' queue (b:settle), with
 * no table of their own: the job of an apply (kind 0) is a result record
 * (lua/luamp/pool/jobs.lua), an array whose fields are at fixed places,
 * and the results go into it.  A record already settled, or with a
 * callback to run, goes the scheduler's way.  An apply of a function the
 * workers can be sent by id is submitted in one call too (b:apply): its
 * arguments' bytes, its record and its task.
 *
 * The board also counts the uses of each function id (its tasks, and the
 * maps and lazy jobs that hold it): the function cache
 * (lua/luamp/pool/funcs.lua) hears only when a function comes into use
 * and when it falls out of it.
 */

#define SLOTS ((lua_Integer)1 << 24)
#define GENS 1024 /* generations of a slot, before its ids come again */

/* A result record's fields (jobs.lua: READY... ERRBACK, VALUES). */
enum {
  R_POOL = 1, R_READY, R_OK, R_VALUE, R_MAP, R_FIRST, R_LAST, R_CALLBACK,
  R_ERRBACK, R_VALUES
};

/* The first items of a worker's outcome: the task's id, then the count of
 * its results (plain values, which follow) or a negative kind. */
enum { O_ID, O_COUNT, O_HEAD };

#define INLINE_ARGS 24 /* arguments' bytes kept in the task itself */
/* Arguments of this many bytes or more are a Message of their own, and go
 * in a batch alone: not copied again into a batch's array, but straight
 * into the transport, as a chunk's are. */
#define BIG_ARGS LMP_PIECES_MIN

typedef struct task {
  lua_Integer at, n; /* a chunk's position and size; 0 for an apply */
  union {
    char *p;                /* when alen > INLINE_ARGS */
    char in[INLINE_ARGS];
  } args;            /* the arguments' bytes, when the board keeps them */
  size_t alen;       /* their length; 0: they are a Message (user value 2) */
  size_t nobj;       /* the holds they take */
  int32_t fid;       /* its function's id */
  int32_t wid;       /* the worker it was sent to; 0: not sent */
  uint16_t gen;
  uint8_t kind;
  uint8_t live;
} task;

typedef struct batch {
  lua_Integer first; /* the id of its first task */
  lua_Integer serial;
  int left;          /* outcomes still to come */
  int seen;          /* one has come */
} batch;

typedef struct ring {  /* a ring of batches, or (in board.bq) of task ids */
  void *v;
  int head, n, cap;
} ring;

typedef struct board {
  task *t;
  int nslot, cap;    /* slots made, and room for */
  int *free;         /* freed slots, a stack (room for cap) */
  int nfree, live;
  ring bq;           /* the backlog: task ids */
  int nback;         /* the tasks in it (it may hold the ids of tasks
                      * freed since, which are skipped) */
  ring *w;           /* per worker (1..nw): batches */
  lua_Integer *uses; /* per function id */
  int nuses;         /* room for ids 0..nuses-1 */
  int nw;
  lua_Integer serial;
  pid_t pid;         /* the process that made it, whose books these are */
  lmp_buf scratch;   /* where an apply's arguments are encoded */
  unsigned applies;  /* b:apply calls begun, nested ones too */
  lmp_span *spans;   /* a batch's arguments, as take picks them */
  int *picks;        /* ... and its tasks' slots */
  int nspans;        /* room there */
  int closed;
} board;

static const lmp_class board_class;

/* ------------------------------------------------------------ the books */

/* Room for one more item in r (of items of `size` bytes); -1 when out of
 * memory, r unchanged. */
static int ring_reserve(ring *r, size_t size) {
  int cap, i;
  char *v;
  if (r->n < r->cap) return 0;
  cap = r->cap ? r->cap * 2 : 16;
  v = malloc((size_t)cap * size);
  if (v == NULL) return -1;
  for (i = 0; i < r->n; i++)
    memcpy(v + (size_t)i * size,
           (char *)r->v + (size_t)((r->head + i) % r->cap) * size, size);
  free(r->v);
  r->v = v;
  r->head = 0;
  r->cap = cap;
  return 0;
}

#define AT(r, type, i) (((type *)(r)->v)[((r)->head + (i)) % (r)->cap])

static lua_Integer *id_at(ring *r, int i) { return &AT(r, lua_Integer, i); }
static batch *batch_at(ring *r, int i) { return &AT(r, batch, i); }

static void ring_push_back(ring *r) { r->n++; }

static void ring_push_front(ring *r) {
  r->head = (r->head + r->cap - 1) % r->cap;
  r->n++;
}

static void ring_pop_front(ring *r) {
  r->head = (r->head + 1) % r->cap;
  r->n--;
}

static lua_Integer task_id(const board *b, int s) {
  return s + SLOTS * b->t[s].gen;
}

static const char *args_of(const task *t) {
  return t->alen > INLINE_ARGS ? t->args.p : t->args.in;
}

/* Keeps the message in b->scratch as the arguments of t, holding the
 * nobj objects it names: 0, or -1 when out of memory, -2 when the arena
 * is, with nothing kept or held. */
static int args_keep(board *b, task *t, size_t nobj) {
  const char *p = b->scratch.data;
  size_t n = b->scratch.len, held = 0;
  char *to = t->args.in;
  if (nobj > 0 && lmp_msg_hold(p, n, &held) < 0) return -2;
  if (n > INLINE_ARGS && (to = t->args.p = malloc(n)) == NULL) {
    lmp_msg_unhold(p, n, held);
    return -1;
  }
  memcpy(to, p, n);
  t->alen = n;
  t->nobj = held;
  return 0;
}

/* Lets go of task t's arguments' bytes, if the board keeps them. */
static void args_drop(task *t) {
  if (t->alen == 0) return;
  lmp_msg_unhold(args_of(t), t->alen, t->nobj);
  if (t->alen > INLINE_ARGS) free(t->args.p);
  t->alen = t->nobj = 0;
}

/* A free slot; -1 when out of memory. */
static int slot_new(board *b) {
  int s;
  if (b->nfree > 0) return b->free[--b->nfree];
  if (b->nslot == b->cap) {
    int cap = b->cap ? b->cap * 2 : 64;
    task *t = realloc(b->t, (size_t)(cap + 1) * sizeof *t);
    int *f;
    if (t == NULL) return -1;
    b->t = t;
    f = realloc(b->free, (size_t)cap * sizeof *f);
    if (f == NULL) return -1;
    b->free = f;
    b->cap = cap;
  }
  s = ++b->nslot;
  b->t[s].gen = 0;
  return s;
}

/* Empties slot s (its Lua values are the caller's to let go of).  A task
 * not sent leaves the backlog: its id there names nothing now. */
static void slot_free(board *b, int s) {
  task *t = &b->t[s];
  if (t->wid == 0) b->nback--;
  t->live = 0;
  t->gen = (uint16_t)((t->gen + 1) % GENS);
  b->free[b->nfree++] = s;
  b->live--;
}

/* The live slot of task id, or 0 (an outcome of a task no longer here). */
static int slot_of(const board *b, lua_Integer id) {
  lua_Integer s = id % SLOTS;
  if (id < 0 || s < 1 || s > b->nslot || !b->t[s].live
      || b->t[s].gen != id / SLOTS) return 0;
  return (int)s;
}

/* The slot of the task at the back of the backlog, 0 if there is none;
 * the ids of tasks freed since they were added are dropped. */
static int backlog_back(board *b) {
  while (b->bq.n > 0) {
    int s = slot_of(b, *id_at(&b->bq, b->bq.n - 1));
    if (s != 0 && b->t[s].wid == 0) return s;
    b->bq.n--;
  }
  return 0;
}

/* Counts one more use of function id fid: 1 if it was unused, 0 if not,
 * -1 when out of memory. */
static int fid_use(board *b, int32_t fid) {
  if (fid >= b->nuses) {
    int n = b->nuses ? b->nuses : 16, i;
    lua_Integer *u;
    while (n <= fid) n *= 2;
    u = realloc(b->uses, (size_t)n * sizeof *u);
    if (u == NULL) return -1;
    for (i = b->nuses; i < n; i++) u[i] = 0;
    b->uses = u;
    b->nuses = n;
  }
  return b->uses[fid]++ == 0;
}

/* Counts one use less of fid: 1 if it is now unused. */
static int fid_unuse(board *b, int32_t fid) {
  if (fid < 0 || fid >= b->nuses || b->uses[fid] == 0) return 0;
  return --b->uses[fid] == 0;
}

/* One outcome of worker wid's oldest batch has come: the serial of that
 * batch if it is the first (0 if not, or if wid has none in flight). */
static lua_Integer batch_outcome(board *b, int wid) {
  ring *r;
  batch *bt;
  lua_Integer first = 0;
  if (wid < 1 || wid > b->nw || b->w[wid].n == 0) return 0;
  r = &b->w[wid];
  bt = batch_at(r, 0);
  if (!bt->seen) {
    bt->seen = 1;
    first = bt->serial;
  }
  if (--bt->left == 0) ring_pop_front(r);
  return first;
}

/* ------------------------------------------------------------- bindings */

static board *checkboard(lua_State *L) {
  board *b = lmp_checkhandle(L, 1);
  if (b->closed) luaL_error(L, "attempt to use a closed board");
  return b;
}

static int nomemory(lua_State *L) {
  return luaL_error(L, "not enough memory");
}

/* Frees slot s: its arguments let go of (their bytes, or their Message
 * closed), and its job.  Returns its function id if that is now unused,
 * else -1. */
static lua_Integer release(lua_State *L, board *b, int s) {
  task *t = &b->t[s];
  int32_t fid = t->fid;
  if (t->alen > 0) {
    args_drop(t);
  } else {
    lua_getiuservalue(L, 1, 2);
    if (lua_rawgeti(L, -1, s) == LUA_TUSERDATA
        && lmp_classof(L, -1) == &lmp_message_class)
      lmp_message_class.close(lua_touserdata(L, -1));
    lua_pushnil(L);
    lua_rawseti(L, -3, s);
    lua_pop(L, 2);
  }
  lua_getiuservalue(L, 1, 1);
  lua_pushnil(L);
  lua_rawseti(L, -2, s);
  lua_pop(L, 1);
  slot_free(b, s);
  return fid_unuse(b, fid) ? fid : -1;
}

/* Frees slot s (release) and pushes its job, position and size, and its
 * function id if that is now unused (else false). */
static int pushfreed(lua_State *L, board *b, int s) {
  task *t = &b->t[s];
  lua_Integer unused;
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, s);
  lua_remove(L, -2);
  if (t->at > 0) {
    lua_pushinteger(L, t->at);
    lua_pushinteger(L, t->n);
  } else {
    lua_pushnil(L);
    lua_pushnil(L);
  }
  if ((unused = release(L, b, s)) >= 0) lua_pushinteger(L, unused);
  else lua_pushboolean(L, 0);
  return 4;
}

/* Board(nworkers) -> a board for workers 1..nworkers */
static int board_new(lua_State *L) {
  lua_Integer nw = luaL_checkinteger(L, 1);
  board *b;
  luaL_argcheck(L, nw >= 1 && nw <= 1 << 16, 1, "out of range");
  b = lmp_newhandle(L, &board_class, sizeof *b, 2);
  b->w = calloc((size_t)nw + 1, sizeof *b->w);
  if (b->w == NULL) return nomemory(L);
  b->nw = (int)nw;
  b->pid = lmp_pid;
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 2);
  return 1;
}

/* Adds a task at the back of the backlog: its job at stack index job,
 * its arguments the bytes in `a` (args_keep), or a Message at stack index
 * args when a is NULL; pushes its slot, the tasks on the board and
 * whether its function was unused. */
static int add(lua_State *L, board *b, int job, int args, task *a,
               lua_Integer fid, lua_Integer kind, lua_Integer at,
               lua_Integer n) {
  task *t;
  int s, first;
  if (ring_reserve(&b->bq, sizeof(lua_Integer)) < 0 || (s = slot_new(b)) < 0
      || (first = fid_use(b, (int32_t)fid)) < 0) {
    if (a != NULL) args_drop(a);
    return nomemory(L);
  }
  t = &b->t[s];
  if (a != NULL) {
    t->args = a->args;
    t->alen = a->alen;
    t->nobj = a->nobj;
  } else {
    t->alen = t->nobj = 0;
  }
  t->at = at;
  t->n = n;
  t->fid = (int32_t)fid;
  t->wid = 0;
  t->kind = (uint8_t)kind;
  t->live = 1;
  b->live++;
  *id_at(&b->bq, b->bq.n) = task_id(b, s);
  ring_push_back(&b->bq);
  b->nback++;
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, job);
  lua_rawseti(L, -2, s);
  lua_pop(L, 1);
  if (a == NULL) {
    lua_getiuservalue(L, 1, 2);
    lua_pushvalue(L, args);
    lua_rawseti(L, -2, s);
    lua_pop(L, 1);
  }
  lua_pushinteger(L, s);
  lua_pushinteger(L, b->live);
  lua_pushboolean(L, first);
  return 3;
}

static lua_Integer checkfid(lua_State *L, int arg) {
  lua_Integer fid = luaL_checkinteger(L, arg);
  luaL_argcheck(L, fid >= 0 && fid < INT32_MAX, arg, "out of range");
  return fid;
}

/* b:add(job, fid, args, kind, [at, n]) -> slot, live, first: a task at
 * the back of the backlog; live counts the tasks on the board, and first
 * says whether the task's function was unused. */
static int board_add(lua_State *L) {
  board *b = checkboard(L);
  lua_Integer fid = checkfid(L, 3);
  lua_Integer kind = luaL_checkinteger(L, 5);
  lua_Integer at = luaL_optinteger(L, 6, 0), n = luaL_optinteger(L, 7, 0);
  luaL_checkany(L, 2);
  return add(L, b, 2, 4, NULL, fid, kind, at, n);
}

/* Sets field k of the table on the top to the value at idx, unless that
 * is false or nil. */
static void setif(lua_State *L, int k, int idx) {
  if (!lua_toboolean(L, idx)) return;
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, k);
}

/* b:apply(mt, pool, fid, args, callback, errback, fname, level) ->
 * record, live, first: an apply submitted in one call.  Its arguments (a
 * table, or nil for none) are encoded into bytes the board keeps; an error
 * (arguments that are not a table, or that cannot be sent) is raised at
 * `level`, as error(msg, level) in the caller would raise it, the
 * arguments named as argument 2 of fname.  Its result record is made, as
 * jobs.lua's new_result makes one, with metatable mt; and the task is
 * added as add adds it.  Nothing, and no task, in another process than
 * the board's (a fork of it), or when another apply ran while the
 * arguments were encoded. */
static int board_apply(lua_State *L) {
  board *b = checkboard(L);
  lua_Integer fid = checkfid(L, 4);
  const char *fname = luaL_checkstring(L, 8);
  lua_Integer level = luaL_checkinteger(L, 9);
  int where = level < 0 || level > 100 ? 0 : (int)level, rc;
  unsigned seq;
  size_t nobj;
  lmp_pieces pc;
  task a;
  luaL_checktype(L, 2, LUA_TTABLE);
  if (b->pid != lmp_pid) return 0;
  if (lua_isnoneornil(L, 5)) {
    lua_newtable(L);
    lua_replace(L, 5);
  } else if (!lua_istable(L, 5)) {
    luaL_where(L, where);
    lua_pushfstring(L, "bad argument #2 to '%s' (table expected, got %s)",
                    fname, luaL_typename(L, 5));
    lua_concat(L, 2);
    return lua_error(L);
  }
  lua_settop(L, 7);
  /* Its places all made, so that it never grows; those false are left nil,
   * which reads the same. */
  lua_createtable(L, R_VALUES, 0); /* 8 */
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, R_POOL);
  lua_pushinteger(L, 1);
  lua_rawseti(L, -2, R_FIRST);
  lua_pushinteger(L, 0);
  lua_rawseti(L, -2, R_LAST);
  setif(L, R_CALLBACK, 6);
  setif(L, R_ERRBACK, 7);
  lua_pushvalue(L, 2);
  lua_setmetatable(L, 8);
  /* The encoder may run Lua (a metamethod it reads, a finalizer when it
   * allocates), which may apply again, in the same scratch buffer: then
   * these bytes are lost, and nothing is done here (the caller encodes
   * the arguments again, its own way). */
  seq = ++b->applies;
  b->scratch.len = 0;
  nobj = lmp_encode_pieces_at(L, 5, "args", &b->scratch, &pc, where); /* 9 */
  if (pc.total >= BIG_ARGS) { /* a Message, which goes alone (pick) */
    char *to = lmp_msg_new(L, pc.total, nobj); /* 10 */
    if (b->applies != seq) return 0;
    lmp_pieces_copy(&pc, &b->scratch, to);
    lmp_msg_open(L, nobj);
    add(L, b, 8, 10, NULL, fid, 0, 0, 0);
  } else { /* (no pieces: in the scratch buffer alone) */
    if (b->applies != seq) return 0;
    if ((rc = args_keep(b, &a, nobj)) < 0)
      return rc == -1 ? nomemory(L) : lmp_nomem(L, 0);
    add(L, b, 8, 0, &a, fid, 0, 0, 0);
  }
  lua_pushvalue(L, 8);
  lua_replace(L, -4); /* the record for the slot */
  return 3;
}

/* b:use(fid) -> whether fid was unused: a use of it other than a task's
 * (a map while it adds its chunks, a lazy job while its input lasts). */
static int board_use(lua_State *L) {
  board *b = checkboard(L);
  int first = fid_use(b, (int32_t)checkfid(L, 2));
  if (first < 0) return nomemory(L);
  lua_pushboolean(L, first);
  return 1;
}

/* b:unuse(fid) -> whether fid is now unused: the end of such a use. */
static int board_unuse(lua_State *L) {
  board *b = checkboard(L);
  lua_pushboolean(L, fid_unuse(b, (int32_t)checkfid(L, 2)));
  return 1;
}

/* Room for n tasks in a batch (b->spans, b->picks); -1 when out of
 * memory. */
static int batch_reserve(board *b, int n) {
  lmp_span *sp;
  int *pk;
  if (n <= b->nspans) return 0;
  if ((sp = realloc(b->spans, (size_t)n * sizeof *sp)) == NULL) return -1;
  b->spans = sp;
  if ((pk = realloc(b->picks, (size_t)n * sizeof *pk)) == NULL) return -1;
  b->picks = pk;
  b->nspans = n;
  return 0;
}

/* Picks up to `want` tasks from the front of the backlog for a batch, into
 * b->picks (their slots) and b->spans (their arguments), changing
 * nothing: applies (kind 0) share a batch; a task of another kind, or
 * with BIG_ARGS of arguments, goes alone.  Returns how many, and in *used
 * how many ids of the backlog they take from its front (those of freed
 * tasks among them). */
static int pick(lua_State *L, board *b, int want, int *used) {
  int n = 0, i, alone = 0;
  for (i = 0; i < b->bq.n && n < want && !alone; i++) {
    int s = slot_of(b, *id_at(&b->bq, i));
    task *t = &b->t[s];
    lmp_span *sp = &b->spans[n];
    if (s == 0 || t->wid != 0) continue; /* freed since */
    if (t->alen > 0) {
      sp->p = args_of(t);
      sp->n = t->alen;
      sp->nobj = t->nobj;
    } else { /* a Message, which user value 2 (at 4) keeps alive */
      lua_rawgeti(L, 4, s);
      sp->p = lmp_tomsg(L, -1, &sp->n, &sp->nobj);
      lua_pop(L, 1);
      if (sp->p == NULL) luaL_error(L, "a task without arguments");
    }
    alone = t->kind != 0 || sp->n >= BIG_ARGS;
    if (alone && n > 0) break; /* (for the next batch) */
    b->picks[n++] = s;
  }
  *used = i;
  return n;
}

/* b:take(wid, want) -> ids, fids, args, kinds, serial, used: up to `want`
 * tasks from the front of the backlog, in a batch sent to worker wid
 * (pick): their ids, function ids, arguments and kinds; the batch's
 * serial; the function ids it uses (each once, unless they alternate).
 * The arguments of several tasks are one Message of an array of a Message
 * each; those of a task alone (a chunk, large arguments: what may be
 * large goes alone) its own Message, as it is.  Nothing when the backlog
 * is empty. */
static int board_take(lua_State *L) {
  board *b = checkboard(L);
  lua_Integer wid = luaL_checkinteger(L, 2);
  lua_Integer want = luaL_checkinteger(L, 3);
  int n, nused = 0, used, i;
  int32_t last = -1;
  batch *bt;
  luaL_argcheck(L, wid >= 1 && wid <= b->nw, 2, "no such worker");
  if (b->nback == 0 || want < 1) return 0;
  if (want > b->nback) want = b->nback;
  if (ring_reserve(&b->w[wid], sizeof(batch)) < 0
      || batch_reserve(b, (int)want) < 0)
    return nomemory(L);
  lua_settop(L, 3);
  lua_getiuservalue(L, 1, 2); /* 4 */
  if ((n = pick(L, b, (int)want, &used)) == 0) return 0;
  /* What may raise comes first, so that an error leaves the books as they
   * were. */
  for (i = 0; i < 3; i++) lua_createtable(L, n, 0); /* 5..7 */
  lua_createtable(L, 1, 0); /* 8: the functions used */
  if (n > 1) /* 9: the arguments */
    lmp_msg_push_array(L, b->spans, n);
  else if (b->t[b->picks[0]].alen == 0)
    lua_rawgeti(L, 4, b->picks[0]); /* its Message, not copied */
  else
    lmp_msg_push(L, b->spans[0].p, b->spans[0].n, b->spans[0].nobj);
  for (i = 0; i < used; i++) ring_pop_front(&b->bq);
  b->nback -= n;
  for (i = 0; i < n; i++) {
    int s = b->picks[i];
    task *t = &b->t[s];
    t->wid = (int32_t)wid;
    lua_pushinteger(L, task_id(b, s));
    lua_rawseti(L, 5, i + 1);
    lua_pushinteger(L, t->fid);
    lua_rawseti(L, 6, i + 1);
    lua_pushinteger(L, t->kind);
    lua_rawseti(L, 7, i + 1);
    if (t->fid != last) {
      last = t->fid;
      lua_pushinteger(L, last);
      lua_rawseti(L, 8, ++nused);
    }
  }
  bt = batch_at(&b->w[wid], b->w[wid].n);
  ring_push_back(&b->w[wid]);
  bt->first = task_id(b, b->picks[0]);
  bt->serial = ++b->serial;
  bt->left = n;
  bt->seen = 0;
  lua_insert(L, 7); /* the arguments after the function ids */
  lua_pushinteger(L, bt->serial);
  lua_insert(L, 9);
  return 6;
}

/* b:done(id) -> job, at, n, fid, serial: task id's outcome has come; its
 * slot is freed (its arguments closed) and its job, position and size (nil
 * for an apply) returned, its function id if that is now unused (else
 * false), and the serial of its batch when this is the batch's first
 * outcome.  Nothing if the task is no longer on the board. */
static int board_done(lua_State *L) {
  board *b = checkboard(L);
  int s = slot_of(b, luaL_checkinteger(L, 2));
  lua_Integer serial;
  if (s == 0) return 0;
  serial = batch_outcome(b, b->t[s].wid);
  pushfreed(L, b, s);
  if (serial == 0) return 4;
  lua_pushinteger(L, serial);
  return 5;
}

static int checkslot(lua_State *L, board *b, int arg) {
  lua_Integer s = luaL_checkinteger(L, arg);
  luaL_argcheck(L, s >= 1 && s <= b->nslot && b->t[s].live, arg,
                "no such task");
  return (int)s;
}

typedef struct settling {
  board *b;
  int jobs;            /* stack index of the jobs table */
  int serials, unused; /* ... of the tables these go to */
  lua_Integer ns, nu;  /* how many are there */
} settling;

/* Whether field k of the table at idx is false or nil. */
static int unset(lua_State *L, int idx, int k) {
  int set;
  lua_rawgeti(L, idx, k);
  set = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return !set;
}

/* Whether the value on the top is a record the board can settle: one not
 * settled yet, without callbacks. */
static int settleable(lua_State *L) {
  return lua_type(L, -1) == LUA_TTABLE && unset(L, -1, R_READY)
         && unset(L, -1, R_CALLBACK) && unset(L, -1, R_ERRBACK);
}

/* An outcome offered by the queue: taken (1) if it is an apply's plain
 * results, all in its array part (none after a nil), and its record can
 * be settled here; or if its task is gone. */
static int settle_one(lua_State *L, const char *p, size_t n, void *ud) {
  settling *st = ud;
  board *b = st->b;
  lua_Integer head[O_HEAD], serial, count, unused;
  lua_Integer narr = lmp_decode_head(p, n, head, O_HEAD);
  int s, top = lua_gettop(L);
  if (narr < 0 || head[O_COUNT] < 0) return 0;
  if ((s = slot_of(b, head[O_ID])) == 0) return 1; /* its task is gone */
  if (b->t[s].kind != 0 || narr != O_HEAD + head[O_COUNT]) return 0;
  lua_rawgeti(L, st->jobs, s);
  if (!settleable(L)) {
    lua_settop(L, top);
    return 0;
  }
  count = lmp_decode_into(L, p, n, -1, R_VALUES, O_HEAD);
  lua_pushinteger(L, R_VALUES);
  lua_rawseti(L, -2, R_FIRST);
  lua_pushinteger(L, R_VALUES + count - 1);
  lua_rawseti(L, -2, R_LAST);
  lua_pushvalue(L, -1);
  lua_rawseti(L, -2, R_VALUE);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, R_OK);
  lua_pushboolean(L, 1);
  lua_rawseti(L, -2, R_READY);
  if ((serial = batch_outcome(b, b->t[s].wid)) != 0) {
    lua_pushinteger(L, serial);
    lua_rawseti(L, st->serials, ++st->ns);
  }
  if ((unused = release(L, b, s)) >= 0) {
    lua_pushinteger(L, unused);
    lua_rawseti(L, st->unused, ++st->nu);
  }
  lua_settop(L, top);
  return 1;
}

/* b:settle(q, buf, serials, unused) -> n, ns, nu: takes the outcomes
 * waiting in Queue q, without blocking: those of applies whose records it
 * can settle, it settles (as b:done and the record's _done would); the
 * rest go to buf[1..n], decoded, for the scheduler to deliver.  The
 * serials of the batches whose first outcome it took go to
 * serials[1..ns], and the function ids no longer in use to
 * unused[1..nu]. */
static int board_settle(lua_State *L) {
  settling st;
  lua_Integer n;
  st.b = checkboard(L);
  luaL_checktype(L, 4, LUA_TTABLE);
  luaL_checktype(L, 5, LUA_TTABLE);
  lua_settop(L, 5);
  lua_getiuservalue(L, 1, 1);
  st.jobs = 6;
  st.serials = 4;
  st.unused = 5;
  st.ns = st.nu = 0;
  n = lmp_queue_drain(L, 2, 3, settle_one, &st);
  lua_pushinteger(L, n);
  lua_pushinteger(L, st.ns);
  lua_pushinteger(L, st.nu);
  return 3;
}

/* b:free(slot) -> job, at, n, fid: as done (fid if now unused), for a
 * task that will have no outcome (its worker died, the pool failed, its
 * job was cancelled). */
static int board_free(lua_State *L) {
  board *b = checkboard(L);
  return pushfreed(L, b, checkslot(L, b, 2));
}

/* b:id(slot) -> the id of the slot's task */
static int board_id(lua_State *L) {
  board *b = checkboard(L);
  lua_pushinteger(L, task_id(b, checkslot(L, b, 2)));
  return 1;
}

/* b:slot(id) -> the slot of task id, which is on the board */
static int board_slot(lua_State *L) {
  board *b = checkboard(L);
  int s = slot_of(b, luaL_checkinteger(L, 2));
  luaL_argcheck(L, s != 0, 2, "no such task");
  lua_pushinteger(L, s);
  return 1;
}

/* b:slots([wid]) -> the slots of every task, or of those sent to worker
 * wid, in the order of their slots. */
static int board_slots(lua_State *L) {
  board *b = checkboard(L);
  lua_Integer wid = luaL_optinteger(L, 2, -1);
  int s, n = 0;
  lua_createtable(L, wid < 0 ? b->live : 0, 0);
  for (s = 1; s <= b->nslot; s++) {
    if (b->t[s].live && (wid < 0 || b->t[s].wid == wid)) {
      lua_pushinteger(L, s);
      lua_rawseti(L, -2, ++n);
    }
  }
  return 1;
}

/* b:requeue(slots) -> tasks taken back (never run) go to the front of the
 * backlog, in the order given. */
static int board_requeue(lua_State *L) {
  board *b = checkboard(L);
  lua_Integer i, n;
  luaL_checktype(L, 2, LUA_TTABLE);
  n = (lua_Integer)lua_rawlen(L, 2);
  for (i = n; i >= 1; i--) {
    int s;
    lua_rawgeti(L, 2, i);
    s = checkslot(L, b, -1);
    lua_pop(L, 1);
    if (b->t[s].wid == 0) continue; /* in the backlog already */
    if (ring_reserve(&b->bq, sizeof(lua_Integer)) < 0) return nomemory(L);
    b->t[s].wid = 0;
    ring_push_front(&b->bq);
    *id_at(&b->bq, 0) = task_id(b, s);
    b->nback++;
  }
  return 0;
}

/* b:cancel(job) -> fids: frees the tasks of job at the back of the
 * backlog (the last ones added, not sent); the function ids that are now
 * unused. */
static int board_cancel(lua_State *L) {
  board *b = checkboard(L);
  int n = 0;
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  lua_newtable(L); /* 3 */
  lua_getiuservalue(L, 1, 1); /* 4 */
  for (;;) {
    int s = backlog_back(b), same;
    if (s == 0) break;
    lua_rawgeti(L, 4, s);
    same = lua_rawequal(L, -1, 2);
    lua_pop(L, 1);
    if (!same) break;
    b->bq.n--;
    pushfreed(L, b, s); /* (nback too) */
    if (lua_toboolean(L, -1)) lua_rawseti(L, 3, ++n); /* an unused fid */
    else lua_pop(L, 1);
    lua_pop(L, 3);
  }
  lua_settop(L, 3);
  return 1;
}

/* b:clear_backlog(): forgets the backlog (its tasks freed already). */
static int board_clear_backlog(lua_State *L) {
  board *b = checkboard(L);
  b->bq.n = 0;
  b->bq.head = 0;
  b->nback = 0;
  return 0;
}

/* b:backlog() -> tasks not sent */
static int board_backlog(lua_State *L) {
  lua_pushinteger(L, checkboard(L)->nback);
  return 1;
}

/* b:live() -> tasks on the board */
static int board_live(lua_State *L) {
  lua_pushinteger(L, checkboard(L)->live);
  return 1;
}

static int checkwid(lua_State *L, board *b) {
  lua_Integer wid = luaL_checkinteger(L, 2);
  luaL_argcheck(L, wid >= 1 && wid <= b->nw, 2, "no such worker");
  return (int)wid;
}

/* b:inflight(wid) -> worker wid's batches whose outcomes are not all in */
static int board_inflight(lua_State *L) {
  board *b = checkboard(L);
  lua_pushinteger(L, b->w[checkwid(L, b)].n);
  return 1;
}

/* b:starved() -> whether no worker has a batch in flight */
static int board_starved(lua_State *L) {
  board *b = checkboard(L);
  int wid;
  for (wid = 1; wid <= b->nw; wid++)
    if (b->w[wid].n > 0) break;
  lua_pushboolean(L, wid > b->nw);
  return 1;
}

/* b:untake(wid, first) -> serial: worker wid's batch whose first task is
 * `first` was taken back before the worker read it; nothing if there is
 * no such batch. */
static int board_untake(lua_State *L) {
  board *b = checkboard(L);
  ring *r = &b->w[checkwid(L, b)];
  lua_Integer first = luaL_checkinteger(L, 3), serial;
  int i;
  for (i = 0; i < r->n; i++)
    if (batch_at(r, i)->first == first) break;
  if (i == r->n) return 0;
  serial = batch_at(r, i)->serial;
  for (; i < r->n - 1; i++) *batch_at(r, i) = *batch_at(r, i + 1);
  r->n--;
  lua_pushinteger(L, serial);
  return 1;
}

/* b:forget(wid) -> serials: worker wid is gone, with its batches in
 * flight; their serials. */
static int board_forget(lua_State *L) {
  board *b = checkboard(L);
  ring *r = &b->w[checkwid(L, b)];
  int i;
  lua_createtable(L, r->n, 0);
  for (i = 0; i < r->n; i++) {
    lua_pushinteger(L, batch_at(r, i)->serial);
    lua_rawseti(L, -2, i + 1);
  }
  r->n = 0;
  r->head = 0;
  return 1;
}

/* Lets go of the books; the tasks' Lua values go with the user values. */
static void board_free_all(void *h) {
  board *b = h;
  int wid, s;
  if (b->closed) return;
  b->closed = 1;
  for (s = 1; s <= b->nslot; s++)
    if (b->t[s].live) args_drop(&b->t[s]);
  free(b->t);
  free(b->free);
  free(b->bq.v);
  if (b->w != NULL)
    for (wid = 0; wid <= b->nw; wid++) free(b->w[wid].v);
  free(b->w);
  free(b->uses);
  lmp_buf_free(&b->scratch);
  free(b->spans);
  free(b->picks);
}

static int board_closed(void *h) { return ((board *)h)->closed; }

static const luaL_Reg board_meth[] = {
  {"add", board_add}, {"apply", board_apply}, {"take", board_take},
  {"done", board_done}, {"free", board_free}, {"id", board_id},
  {"slot", board_slot}, {"slots", board_slots},
  {"requeue", board_requeue}, {"cancel", board_cancel},
  {"clear_backlog", board_clear_backlog}, {"backlog", board_backlog},
  {"live", board_live}, {"inflight", board_inflight},
  {"starved", board_starved}, {"untake", board_untake},
  {"forget", board_forget}, {"settle", board_settle},
  {"use", board_use}, {"unuse", board_unuse},
  {NULL, NULL}
};

static const lmp_class board_class = {
  .name = BOARD, .what = "board", .size = sizeof(board), .nuv = 2,
  .meth = board_meth, .close = board_free_all, .closed = board_closed,
};

static const lmp_class *const board_classes[] = {&board_class, NULL};

static const luaL_Reg board_funcs[] = {{"Board", board_new}, {NULL, NULL}};

const lmp_family lmp_board_family = {board_classes, board_funcs, NULL};
