/* queue.c -- the multi-process FIFO behind Queue, JoinableQueue and
 * SimpleQueue: a ring of encoded messages in the shared arena.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>

#include "internal.h"

/*
 * Layout.  A queue object holds a robust mutex, its counters and the offset
 * of its ring.  The ring is one arena block: capacity, head and tail (byte
 * positions that only grow; the index is the position modulo the
 * capacity) and the data.  A message is a record:
 *
 *   u32 length | u32 flags | payload, padded to 8 bytes
 *
 * A record never wraps: where one would not fit before the end of the data
 * a PAD record fills the rest and the message starts again at 0.  Messages
 * larger than INLINE_MAX live out of line in their own block; the record's
 * payload is then that block's offset, and the block starts with the
 * message length.  A full ring grows (a new block, records copied in
 * order, published with one store).
 *
 * Death.  The mutex is robust.  Every change is prepared where no reader
 * looks (beyond tail, or in a block not yet published) and committed with
 * one store (tail for a put, head for a get, the ring offset for a
 * growth), and `count` is recomputed from head and tail by the next
 * locker after a death.  A process killed at any point therefore leaves
 * either the whole message in the queue or none of it.  An out-of-line
 * block in transit is registered as pending (the message in entry 0, a new
 * ring in entry 1; see lmp_alloc_pending), so the reaper of a
 * killed process frees it unless the queue still owns it.
 */

#define QUEUE "luamp.Queue"
#define JQUEUE "luamp.JoinableQueue"
#define SQUEUE "luamp.SimpleQueue"

#define RING_MIN ((uint64_t)16 << 10)
#define INLINE_MAX ((size_t)16 << 10)
#define F_PAD 1u
#define F_OUTLINE 2u
#define SPIN 4000 /* checks of the condition before sleeping */
#define MSG_MAGIC 0x67736d706d6cull /* "lmpmsg": an out-of-line block */

enum { K_QUEUE, K_JOINABLE, K_SIMPLE };

typedef struct ring {
  uint64_t cap; /* a power of two */
  uint64_t head, tail;
  char data[];
} ring;

typedef struct rec {
  uint32_t len, flags;
} rec;

typedef struct queue {
  lmp_obj h;
  pthread_mutex_t mu;
  _Atomic lmp_off ring;
  int64_t maxsize; /* 0: unbounded */
  _Atomic int64_t count;
  int64_t unfinished; /* JoinableQueue: puts not yet task_done */
  uint32_t kind;
  uint32_t holder; /* slot + 1 of the process holding mu, or 0 */
  _Atomic uint32_t get_seq, put_seq, join_seq; /* futex words */
  _Atomic uint32_t getters, putters;
} queue;

typedef struct qhandle {
  lmp_handle h;
  lmp_buf *buf; /* scratch for encoding, owned by the uservalue */
} qhandle;

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static ring *RING(queue *q) { return LMP_PTR(atomic_load(&q->ring)); }

static uint64_t payload_len(const rec *h);
static int owns_locked(lmp_obj *o, lmp_off blk);
static void recount(queue *q);

/* After a process died holding the lock: recount the messages, and settle
 * the blocks the dead holder had registered as pending.  Those the queue
 * owns (a message not yet taken, the current ring) leave its pending
 * entries now, before anyone else can take them; the reaper frees the
 * rest, which were the dead process's alone. */
static void repair(queue *q) {
  lmp_settle_pending(&q->h, q->holder, owns_locked);
  q->holder = 0;
  recount(q);
}

static void recount(queue *q) {
  ring *r = RING(q);
  uint64_t pos = r->head;
  int64_t n = 0;
  while (pos < r->tail) {
    rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
    if (!(h->flags & F_PAD)) n++;
    pos += sizeof(rec) + pad8(payload_len(h));
  }
  atomic_store(&q->count, n);
}

static void qlock(queue *q) {
  int rc = pthread_mutex_lock(&q->mu);
  if (rc == EOWNERDEAD) {
    repair(q);
    pthread_mutex_consistent(&q->mu);
  }
  q->holder = lmp_self_index + 1;
}

static void qunlock(queue *q) {
  q->holder = 0;
  pthread_mutex_unlock(&q->mu);
}

static uint64_t payload_len(const rec *h) {
  return (h->flags & F_OUTLINE) ? sizeof(lmp_off) : h->len;
}

/* Moves the records into a ring of at least `need` free bytes; -ENOMEM. */
static int grow(queue *q, uint64_t need) {
  ring *r = RING(q), *nr;
  uint64_t cap = r->cap * 2, used = r->tail - r->head, pos, out = 0;
  while (cap - used < need + sizeof(rec) * 2) cap *= 2;
  nr = lmp_alloc_pending(&q->h, sizeof(ring) + cap, 1);
  if (nr == NULL) return -ENOMEM;
  nr->cap = cap;
  for (pos = r->head; pos < r->tail;) {
    rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
    uint64_t size = sizeof(rec) + pad8(payload_len(h));
    if (!(h->flags & F_PAD)) {
      memcpy(nr->data + out, h, size);
      out += size;
    }
    pos += sizeof(rec) + pad8(payload_len(h));
  }
  nr->head = 0;
  nr->tail = out;
  lmp_pending_set(&q->h, r, 2); /* leaving, once the switch is made */
  atomic_store(&q->ring, LMP_OFF(nr)); /* the commit */
  lmp_pending_clear(1);
  lmp_free_pending(r, 2);
  return 0;
}

/* Appends a record; the caller holds the lock.  `outline` is the offset of
 * an out-of-line block (len is then the message length).  -ENOMEM. */
static int append(queue *q, const char *p, size_t len, lmp_off outline) {
  uint64_t plen = outline ? sizeof(lmp_off) : len;
  uint64_t need = sizeof(rec) + pad8(plen);
  ring *r = RING(q);
  uint64_t idx = r->tail & (r->cap - 1), room = r->cap - idx;
  rec *h;
  if (room < need) need += room; /* a PAD record to the end */
  if (r->cap - (r->tail - r->head) < need) {
    if (grow(q, need) < 0) return -ENOMEM;
    r = RING(q);
    idx = r->tail & (r->cap - 1);
    room = r->cap - idx;
    need = sizeof(rec) + pad8(plen);
  }
  if (room < sizeof(rec) + pad8(plen)) {
    h = (rec *)(r->data + idx);
    h->len = (uint32_t)(room - sizeof(rec));
    h->flags = F_PAD;
    r->tail += room; /* commits only the padding */
    idx = 0;
  }
  h = (rec *)(r->data + idx);
  h->len = (uint32_t)(outline ? (len > UINT32_MAX ? UINT32_MAX : len) : len);
  h->flags = outline ? F_OUTLINE : 0;
  if (outline) memcpy(h + 1, &outline, sizeof outline);
  else memcpy(h + 1, p, len);
  atomic_thread_fence(memory_order_release);
  r->tail += sizeof(rec) + pad8(plen); /* the commit */
  return 0;
}

/* Does the queue own block blk (in a record or as its ring)?  The caller
 * holds the lock. */
static int owns_locked(lmp_obj *o, lmp_off blk) {
  queue *q = (queue *)o;
  ring *r = RING(q);
  uint64_t pos;
  if (LMP_OFF(r) == blk) return 1;
  for (pos = r->head; pos < r->tail;) {
    rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
    if (h->flags & F_OUTLINE) {
      lmp_off off;
      memcpy(&off, h + 1, sizeof off);
      if (off == blk) return 1;
    }
    pos += sizeof(rec) + pad8(payload_len(h));
  }
  return 0;
}

/* A message block freed by a reaper: its references go with it. */
static void queue_release(lmp_obj *o, lmp_off blk) {
  uint64_t *b = LMP_PTR(blk);
  (void)o;
  if (b[0] == MSG_MAGIC) lmp_msg_release((const char *)(b + 2), (size_t)b[1]);
}

static int queue_owns(lmp_obj *o, lmp_off blk) {
  queue *q = (queue *)o;
  int found;
  qlock(q);
  found = owns_locked(o, blk);
  qunlock(q);
  return found;
}

static void queue_dtor(lmp_obj *o) {
  queue *q = (queue *)o;
  ring *r = RING(q);
  uint64_t pos;
  for (pos = r->head; pos < r->tail;) {
    rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
    if (h->flags & F_OUTLINE) {
      lmp_off off;
      uint64_t *blk;
      memcpy(&off, h + 1, sizeof off);
      blk = LMP_PTR(off);
      lmp_msg_release((const char *)(blk + 2), (size_t)blk[1]);
      lmp_free(blk);
    } else if (!(h->flags & F_PAD)) {
      lmp_msg_release((const char *)(h + 1), h->len);
    }
    pos += sizeof(rec) + pad8(payload_len(h));
  }
  lmp_free(r);
  pthread_mutex_destroy(&q->mu);
}

/* ------------------------------------------------------------- the core */

static queue *queue_new(int64_t maxsize, uint32_t kind) {
  pthread_mutexattr_t ma;
  queue *q = (queue *)lmp_obj_new(LMP_T_QUEUE, sizeof(queue));
  ring *r;
  if (q == NULL) return NULL;
  r = lmp_alloc(sizeof(ring) + RING_MIN);
  if (r == NULL) {
    lmp_free(q);
    return NULL;
  }
  r->cap = RING_MIN;
  r->head = r->tail = 0;
  q->ring = LMP_OFF(r);
  q->maxsize = maxsize > 0 ? maxsize : 0;
  q->kind = kind;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&q->mu, &ma);
  pthread_mutexattr_destroy(&ma);
  return q;
}

static int has_room(void *ud) {
  queue *q = ud;
  return q->maxsize == 0 || atomic_load(&q->count) < q->maxsize;
}

static int has_item(void *ud) {
  return atomic_load(&((queue *)ud)->count) > 0;
}

static int all_done(void *ud) {
  queue *q = ud;
  int done;
  qlock(q);
  done = q->unfinished == 0;
  qunlock(q);
  return done;
}

/* Spins a little on a condition another core is about to make true:
 * cheaper than a sleep and a wake-up when a peer is busy on the queue. */
static int spin(lmp_ready_fn ready, queue *q) {
  int i;
  for (i = 0; i < SPIN; i++) {
    if (ready(q)) return 1;
    __builtin_ia32_pause();
  }
  return 0;
}

/* Waits until ready(q) or the deadline; `sleepers` counts us while we
 * sleep so that notifiers know to wake.  1, 0 (timeout) or -EINTR. */
static int qwait(queue *q, _Atomic uint32_t *word, _Atomic uint32_t *sleepers,
                 lmp_ready_fn ready, double deadline) {
  int rc;
  if (deadline == 0) return ready(q);
  if (spin(ready, q)) return 1;
  atomic_fetch_add(sleepers, 1);
  rc = lmp_wait_on(word, ready, q, deadline);
  atomic_fetch_sub(sleepers, 1);
  return rc;
}

static void notify_get(queue *q) {
  atomic_fetch_add(&q->get_seq, 1);
  if (atomic_load(&q->getters) > 0) lmp_futex_bump(&q->get_seq, 1);
  lmp_notify_watchers(&q->h);
}

static void notify_put(queue *q) {
  atomic_fetch_add(&q->put_seq, 1);
  if (atomic_load(&q->putters) > 0) lmp_futex_bump(&q->put_seq, 1);
}

/* Puts one encoded message.  0, -EAGAIN (full at the deadline), -EINTR,
 * -ENOMEM (arena exhausted). */
static int qput(queue *q, const char *p, size_t len, double deadline) {
  uint64_t *blk = NULL;
  int rc;
  if (len > INLINE_MAX) {
    blk = lmp_alloc_pending(&q->h, 2 * sizeof(uint64_t) + len, 0);
    if (blk == NULL) return -ENOMEM;
    blk[0] = MSG_MAGIC;
    blk[1] = len;
    memcpy(blk + 2, p, len);
  }
  for (;;) {
    qlock(q);
    if (has_room(q)) break;
    qunlock(q);
    rc = qwait(q, &q->put_seq, &q->putters, has_room, deadline);
    if (rc <= 0) {
      lmp_free_pending(blk, 0);
      return rc < 0 ? rc : -EAGAIN;
    }
  }
  rc = append(q, p, len, blk ? LMP_OFF(blk) : 0);
  if (rc == 0) {
    atomic_fetch_add(&q->count, 1);
    if (q->kind == K_JOINABLE) q->unfinished++;
  }
  /* Still under the lock: once it is released a consumer may take and free
   * the block, so the reaper must not find it registered as ours then. */
  if (blk != NULL && rc == 0) lmp_pending_clear(0);
  qunlock(q);
  if (rc < 0) lmp_free_pending(blk, 0);
  if (rc == 0) notify_get(q);
  return rc;
}

/* Takes the oldest message: inline ones are copied into b, out-of-line
 * ones are handed over in *blk (the caller frees it, then calls
 * with lmp_free_pending(blk, 0)).  0, -EAGAIN (empty at the deadline), -EINTR,
 * -ENOMEM. */
static int qget(queue *q, lmp_buf *b, uint64_t **blk, double deadline) {
  ring *r;
  rec *h;
  int rc;
  *blk = NULL;
  for (;;) {
    qlock(q);
    if (has_item(q)) break;
    qunlock(q);
    rc = qwait(q, &q->get_seq, &q->getters, has_item, deadline);
    if (rc <= 0) return rc < 0 ? rc : -EAGAIN;
  }
  r = RING(q);
  h = (rec *)(r->data + (r->head & (r->cap - 1)));
  if (h->flags & F_PAD) { /* commit skipping the padding */
    r->head += sizeof(rec) + pad8(h->len);
    h = (rec *)(r->data + (r->head & (r->cap - 1)));
  }
  if (h->flags & F_OUTLINE) {
    lmp_off off;
    memcpy(&off, h + 1, sizeof off);
    *blk = LMP_PTR(off);
    lmp_pending_set(&q->h, *blk, 0);
  } else {
    b->len = 0;
    if (lmp_buf_reserve(b, h->len) < 0) {
      qunlock(q);
      return -ENOMEM;
    }
    memcpy(b->data, h + 1, h->len);
    b->len = h->len;
  }
  r->head += sizeof(rec) + pad8(payload_len(h)); /* the commit */
  atomic_fetch_sub(&q->count, 1);
  qunlock(q);
  notify_put(q);
  if (atomic_load(&q->count) > 0 && atomic_load(&q->getters) > 0)
    lmp_futex_bump(&q->get_seq, 1); /* pass the baton */
  return 0;
}

/* ----------------------------------------------------------- Lua binding */

/* decode(p, n): lmp_decode as a Lua function, to run under lua_pcall. */
/* Decodes a message taken from a queue and releases the message's
 * references whether or not decoding succeeds; raises on failure. */
static int push_message(lua_State *L, const char *p, size_t n) {
  int rc;
  rc = lmp_decode_protected(L, p, (size_t)n);
  lmp_msg_release(p, n);
  return rc;
}

static const char *tname(uint32_t kind) {
  return kind == K_JOINABLE ? JQUEUE : kind == K_SIMPLE ? SQUEUE : QUEUE;
}

/* The three queue metatables are the upvalues of every method, so that
 * checking self is two pointer comparisons at most, not a string lookup. */
static qhandle *toq(lua_State *L) {
  qhandle *h = lua_touserdata(L, 1);
  int ok = 0;
  if (h != NULL && lua_getmetatable(L, 1)) {
    ok = lua_rawequal(L, -1, lua_upvalueindex(1)) ||
         lua_rawequal(L, -1, lua_upvalueindex(2)) ||
         lua_rawequal(L, -1, lua_upvalueindex(3));
    lua_pop(L, 1);
  }
  if (!ok) luaL_typeerror(L, 1, QUEUE);
  return h;
}

static queue *checkq(lua_State *L, qhandle **hp) {
  qhandle *h = toq(L);
  if (h->h.obj == NULL) luaL_error(L, "queue is closed");
  if (hp != NULL) *hp = h;
  return (queue *)h->h.obj;
}

static void push_queue(lua_State *L, lmp_obj *o) {
  qhandle *h = (qhandle *)lmp_newhandle(L, sizeof(qhandle),
                                        tname(((queue *)o)->kind));
  h->buf = lmp_buf_new(L);
  lua_setiuservalue(L, -2, 1);
  lmp_bind(L, &h->h, o);
}

static int new_queue(lua_State *L, uint32_t kind) {
  lua_Integer maxsize = 0;
  queue *q;
  if (kind != K_SIMPLE) maxsize = luaL_optinteger(L, 1, 0);
  q = queue_new(maxsize, kind);
  if (q == NULL) return lmp_nomem(L, sizeof(queue) + RING_MIN);
  push_queue(L, &q->h);
  return 1;
}

static int queue_Queue(lua_State *L) { return new_queue(L, K_QUEUE); }
static int queue_JoinableQueue(lua_State *L) {
  return new_queue(L, K_JOINABLE);
}
static int queue_SimpleQueue(lua_State *L) { return new_queue(L, K_SIMPLE); }

/* Reads the optional (block, timeout) pair at idx into a deadline. */
static double blocktimeout(lua_State *L, int idx) {
  if (!lua_isnoneornil(L, idx) && !lua_toboolean(L, idx)) return 0;
  if (!lua_isnoneornil(L, idx + 1)) {
    lua_Number t = luaL_checknumber(L, idx + 1);
    luaL_argcheck(L, t == t, idx + 1, "timeout must be a number, not NaN");
  }
  return lmp_deadline(L, idx + 1);
}

static int fail(lua_State *L, int rc, size_t want, const char *etype,
                const char *msg) {
  if (rc == -EINTR || rc == -ECANCELED) return lmp_wait_fail(L, rc);
  if (rc == -ENOMEM) return lmp_nomem(L, want);
  return lmp_throw(L, etype, "%s", msg);
}

/* put(v, [block], [timeout]): raises Full when it cannot. */
static int queue_put(lua_State *L) {
  qhandle *h;
  queue *q = checkq(L, &h);
  double deadline;
  int rc;
  luaL_checkany(L, 2);
  deadline = blocktimeout(L, 3);
  h->buf->len = 0;
  lmp_encode(L, 2, "value", h->buf);
  rc = qput(q, h->buf->data, h->buf->len, deadline);
  if (rc < 0) lmp_msg_release(h->buf->data, h->buf->len);
  if (rc < 0) return fail(L, rc, h->buf->len, "Full", "queue is full");
  return 0;
}

static int queue_put_nowait(lua_State *L) {
  lua_settop(L, 2);
  lua_pushboolean(L, 0);
  return queue_put(L);
}

/* get([block], [timeout]) -> value: raises Empty when it cannot. */
static int queue_get(lua_State *L) {
  qhandle *h;
  queue *q = checkq(L, &h);
  double deadline = blocktimeout(L, 2);
  uint64_t *blk;
  int rc = qget(q, h->buf, &blk, deadline);
  if (rc < 0) return fail(L, rc, 0, "Empty", "queue is empty");
  if (blk != NULL) { /* decode straight from the block, then free it */
    rc = push_message(L, (const char *)(blk + 2), (size_t)blk[1]);
    lmp_free_pending(blk, 0);
  } else {
    rc = push_message(L, h->buf->data, h->buf->len);
  }
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

static int queue_get_nowait(lua_State *L) {
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  return queue_get(L);
}

/* _drain(t) -> n: takes the messages waiting now, without blocking, into
 * t[1..n], as a loop of get(false) would.  For an owner that collects many
 * small messages: one call, not two per message. */
static int queue_drain(lua_State *L) {
  qhandle *h;
  queue *q = checkq(L, &h);
  lua_Integer n = 0;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  while (atomic_load(&q->count) > 0) {
    uint64_t *blk;
    int rc = qget(q, h->buf, &blk, 0);
    if (rc == -EAGAIN) break;
    if (rc < 0) return fail(L, rc, 0, "Empty", "queue is empty");
    if (blk != NULL) {
      rc = push_message(L, (const char *)(blk + 2), (size_t)blk[1]);
      lmp_free_pending(blk, 0);
    } else {
      rc = push_message(L, h->buf->data, h->buf->len);
    }
    if (rc != LUA_OK) return lua_error(L);
    lua_rawseti(L, 2, ++n);
  }
  lua_pushinteger(L, n);
  return 1;
}

static int queue_qsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)atomic_load(&checkq(L, NULL)->count));
  return 1;
}

static int queue_empty(lua_State *L) {
  lua_pushboolean(L, atomic_load(&checkq(L, NULL)->count) == 0);
  return 1;
}

static int queue_full(lua_State *L) {
  queue *q = checkq(L, NULL);
  lua_pushboolean(L, q->maxsize > 0 && atomic_load(&q->count) >= q->maxsize);
  return 1;
}

/* _recount() -> count, messages found walking the ring (a self-check). */
static int queue_recount(lua_State *L) {
  queue *q = checkq(L, NULL);
  ring *r;
  uint64_t pos;
  lua_Integer n = 0;
  qlock(q);
  r = RING(q);
  for (pos = r->head; pos < r->tail;) {
    rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
    if (!(h->flags & F_PAD)) n++;
    pos += sizeof(rec) + pad8(payload_len(h));
  }
  lua_pushinteger(L, (lua_Integer)atomic_load(&q->count));
  lua_pushinteger(L, n);
  qunlock(q);
  return 2;
}

static int queue_maxsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkq(L, NULL)->maxsize);
  return 1;
}

static int queue_task_done(lua_State *L) {
  queue *q = checkq(L, NULL);
  int zero;
  qlock(q);
  if (q->unfinished <= 0) {
    qunlock(q);
    return luaL_error(L, "task_done() called too many times");
  }
  zero = --q->unfinished == 0;
  qunlock(q);
  if (zero) lmp_futex_bump(&q->join_seq, INT_MAX);
  return 0;
}

/* join([timeout]) -> true when every item put has been task_done. */
static int queue_join(lua_State *L) {
  queue *q = checkq(L, NULL);
  double deadline = lmp_deadline(L, 2);
  int rc = lmp_wait_on(&q->join_seq, all_done, q, deadline);
  if (rc < 0) return lmp_wait_fail(L, rc);
  lua_pushboolean(L, rc);
  return 1;
}

static int queue_close(lua_State *L) {
  lmp_unbind(&toq(L)->h);
  return 0;
}

static int queue_tostring(lua_State *L) {
  qhandle *h = toq(L);
  const char *name;
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "__name");
  name = lua_tostring(L, -1);
  if (h->h.obj == NULL) lua_pushfstring(L, "%s (closed)", name);
  else lua_pushfstring(L, "%s (%p)", name, (void *)h->h.obj);
  return 1;
}

/* ready(q) -> whether a get would not block (for mp.wait). */
int lmp_queue_ready(lmp_obj *o) { return atomic_load(&((queue *)o)->count) > 0; }

static const luaL_Reg queue_meth[] = {
  {"put", queue_put},       {"put_nowait", queue_put_nowait},
  {"get", queue_get},       {"get_nowait", queue_get_nowait},
  {"qsize", queue_qsize},   {"empty", queue_empty},
  {"full", queue_full},     {"maxsize", queue_maxsize},
  {"_recount", queue_recount}, {"_drain", queue_drain},
  {"close", queue_close},   {NULL, NULL}
};

static const luaL_Reg jqueue_meth[] = {
  {"task_done", queue_task_done}, {"join", queue_join}, {NULL, NULL}
};

static const luaL_Reg squeue_meth[] = {
  {"put", queue_put},     {"get", queue_get},
  {"empty", queue_empty}, {"close", queue_close}, {NULL, NULL}
};

static const luaL_Reg queue_metameth[] = {
  {"__index", NULL},  {"__gc", queue_close}, {"__close", queue_close},
  {"__eq", lmp_handle_eq},
  {"__tostring", queue_tostring}, {NULL, NULL}
};

static void newmeta(lua_State *L, const char *name) {
  luaL_newmetatable(L, name);
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "__luamp");
  lua_pop(L, 1);
}

/* Fills the metatable `name` with its methods, each closing over the
 * three metatables. */
static void setmeta(lua_State *L, const char *name, const luaL_Reg *m1,
                    const luaL_Reg *m2) {
  int i;
  luaL_getmetatable(L, name);
  for (i = 0; i < 3; i++) luaL_getmetatable(L, tname((uint32_t)i));
  luaL_setfuncs(L, queue_metameth, 3); /* pops the upvalues */
  lua_newtable(L);
  for (i = 0; i < 3; i++) luaL_getmetatable(L, tname((uint32_t)i));
  luaL_setfuncs(L, m1, 3);
  if (m2 != NULL) {
    for (i = 0; i < 3; i++) luaL_getmetatable(L, tname((uint32_t)i));
    luaL_setfuncs(L, m2, 3);
  }
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int lmp_open_queue(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"Queue", queue_Queue}, {"JoinableQueue", queue_JoinableQueue},
    {"SimpleQueue", queue_SimpleQueue}, {NULL, NULL}
  };
  newmeta(L, QUEUE);
  newmeta(L, JQUEUE);
  newmeta(L, SQUEUE);
  setmeta(L, QUEUE, queue_meth, NULL);
  setmeta(L, JQUEUE, queue_meth, jqueue_meth);
  setmeta(L, SQUEUE, squeue_meth, NULL);
  lmp_obj_settype(LMP_T_QUEUE, "queue", queue_dtor);
  lmp_obj_setowns(LMP_T_QUEUE, queue_owns);
  lmp_obj_setrelease(LMP_T_QUEUE, queue_release);
  lmp_settypepusher(LMP_T_QUEUE, push_queue);
  luaL_setfuncs(L, funcs, 0);
  return 0;
}
