/* queue.c -- the multi-process FIFO behind Queue, JoinableQueue and
 * SimpleQueue: a ring of encoded messages in the shared arena.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "types.h"

/*
 * Layout.  A queue object holds a robust mutex, its counters and the offset
 * of its ring.  The ring is one arena block: capacity, head and tail (byte
 * positions that only grow; the index is the position modulo the
 * capacity) and the data.  A message is a record:
 *
 *   u32 length | u32 flags | payload, padded to 8 bytes
 *
 * A message that names no shared object is marked PLAIN: a get decodes it
 * without a protected call, as there are no references to drop should the
 * decoding fail.
 *
 * A record never wraps: where one would not fit before the end of the data
 * a PAD record fills the rest and the message starts again at 0.  Messages
 * larger than INLINE_MAX, and those that name shared objects, live out of
 * line in a block of their own (an lmp_cmsg, which counts the references
 * the message holds); the record's payload is then that block's offset.
 * A full ring grows (a new block, records copied in order, published with
 * one store).
 *
 * Death, with the arena's crash-safety kit.  The queue's guard is robust.
 * Every change is prepared where no reader looks (beyond tail, or in a
 * block not yet published) and committed with one store (tail for a put,
 * head for a get, the ring offset for a growth: lmp_publish), and `count`
 * is recomputed from head and tail by the next locker after a death
 * (queue_repair).  A process killed at any point therefore leaves either
 * the whole message in the queue or none of it.  An out-of-line block in
 * transit is pending (LMP_PEND_IN on its way in, LMP_PEND_OUT on its way
 * out, LMP_PEND_NEW for a new ring), so the reaper of a killed process
 * frees it unless the queue owns it.
 */

#define QUEUE "luamp.Queue"
#define JQUEUE "luamp.JoinableQueue"
#define SQUEUE "luamp.SimpleQueue"

#define RING_MIN ((uint64_t)16 << 10)
#define INLINE_MAX ((size_t)16 << 10)
#define F_PAD 1u
#define F_OUTLINE 2u
#define F_PLAIN 4u /* the message names no shared object */

/* A message out of line is an lmp_cmsg, pending while in transit.  A
 * message that names shared objects always is, so that its references
 * are counted in the arena from the first one taken to the last one
 * dropped, wherever a kill falls. */
typedef lmp_cmsg outmsg;

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
  lmp_obj h; /* kind: K_QUEUE, K_JOINABLE or K_SIMPLE */
  lmp_guard g;
  _Atomic int64_t count; /* in the guard's cache line (lmp_obj_new) */
  _Atomic lmp_off ring;
  int64_t maxsize; /* 0: unbounded */
  int64_t unfinished; /* JoinableQueue: puts not yet task_done */
  _Atomic uint32_t get_seq, put_seq, join_seq; /* futex words */
  _Atomic uint32_t getters, putters;
} queue;

_Static_assert(offsetof(queue, count) + sizeof(int64_t) <= LMP_OBJ_LINE_END,
               "a queue's count shares its lock's cache line");

static uint64_t pad8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

static ring *RING(queue *q) { return LMP_PTR(atomic_load(&q->ring)); }

static uint64_t payload_len(const rec *h);

/* After a process died holding the guard: recount the messages. */
static void queue_repair(lmp_obj *o) {
  queue *q = (queue *)o;
  ring *r;
  uint64_t pos;
  int64_t n = 0;
  if (atomic_load(&q->ring) == 0) return;
  r = RING(q);
  pos = r->head;
  while (pos < r->tail) {
    rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
    if (!(h->flags & F_PAD)) n++;
    pos += sizeof(rec) + pad8(payload_len(h));
  }
  atomic_store(&q->count, n);
}

static void qlock(queue *q) { lmp_guard_lock(&q->g, &q->h); }
static void qunlock(queue *q) { lmp_guard_unlock(&q->g); }

static uint64_t payload_len(const rec *h) {
  return (h->flags & F_OUTLINE) ? sizeof(lmp_off) : h->len;
}

/* Moves the records into a ring of at least `need` free bytes; -ENOMEM. */
static int grow(queue *q, uint64_t need) {
  ring *r = RING(q), *nr;
  uint64_t cap = r->cap * 2, used = r->tail - r->head, pos, out = 0;
  while (cap - used < need + sizeof(rec) * 2) cap *= 2;
  nr = lmp_alloc_pending(&q->h, sizeof(ring) + cap, LMP_PEND_NEW);
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
  lmp_publish(&q->h, &q->ring, nr);
  return 0;
}

/* Appends a record; the caller holds the lock.  `outline` is the offset of
 * an out-of-line block (len is then the message length); `plain` adds
 * F_PLAIN.  -ENOMEM. */
static int append(queue *q, const char *p, size_t len, lmp_off outline,
                  unsigned plain) {
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
  h->flags = (outline ? F_OUTLINE : 0) | plain;
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
  ring *r;
  uint64_t pos;
  if (atomic_load(&q->ring) == 0) return 0; /* still being made */
  r = RING(q);
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

/* Run again after a kill cut it short, it finishes the job: each message
 * is freed with the record's word that names it, then the ring with the
 * queue's. */
static void queue_dtor(lmp_obj *o) {
  queue *q = (queue *)o;
  ring *r;
  uint64_t pos;
  if (atomic_load(&q->ring) != 0) { /* 0: never made whole, or freed */
    r = RING(q);
    for (pos = r->head; pos < r->tail;) {
      rec *h = (rec *)(r->data + (pos & (r->cap - 1)));
      lmp_off *at = (lmp_off *)(void *)(h + 1);
      if ((h->flags & F_OUTLINE) && *at != 0) /* inline: no object */
        lmp_cmsg_drop(LMP_PTR(*at), at);
      pos += sizeof(rec) + pad8(payload_len(h));
    }
    lmp_heap_free(r, (lmp_off *)&q->ring);
  }
  lmp_guard_destroy(&q->g);
}

/* ------------------------------------------------------------- the core */

static queue *queue_new(int64_t maxsize, int kind) {
  queue *q = (queue *)lmp_obj_new(LMP_T_QUEUE, kind, sizeof(queue));
  ring *r;
  if (q == NULL) return NULL;
  lmp_guard_init(&q->g);
  /* Pending until published, so that a kill in between leaks no ring. */
  r = lmp_alloc_pending(&q->h, sizeof(ring) + RING_MIN, LMP_PEND_NEW);
  if (r == NULL) {
    lmp_obj_discard(&q->h);
    return NULL;
  }
  r->cap = RING_MIN;
  r->head = r->tail = 0;
  q->maxsize = maxsize > 0 ? maxsize : 0;
  lmp_publish(&q->h, &q->ring, r);
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

/* Waits until ready(q) or the deadline, spinning a little first (cheaper
 * than a sleep and a wake-up when a peer is busy on the queue);
 * `sleepers` counts us while we sleep so that notifiers know to wake.
 * 1, 0 (timeout), -EINTR or -ECANCELED. */
static int qwait(lua_State *L, queue *q, _Atomic uint32_t *word,
                 _Atomic uint32_t *sleepers, lmp_ready_fn ready,
                 double deadline) {
  int rc;
  if (deadline == 0) return ready(q);
  static lmp_spinner spinner; /* this process's, for every queue */
  if (lmp_spin(ready, q, &spinner, LMP_SPIN_QUEUE)) return 1;
  atomic_fetch_add(sleepers, 1);
  rc = lmp_wait_on(L, word, ready, q, deadline);
  atomic_fetch_sub(sleepers, 1);
  return rc;
}

/* Wakes the getters (putters) a change let go on, if any sleep: a sleeper
 * counts itself before it checks the queue, and the change is made before
 * the count is read (both sequentially consistent), so either the sleeper
 * sees the change or the notifier sees the sleeper.  With nobody asleep a
 * message costs no write to the futex words' line. */
static void notify_get(queue *q) {
  if (atomic_load(&q->getters) > 0) lmp_futex_bump(&q->get_seq, 1);
  lmp_notify_watchers(&q->h);
}

static void notify_put(queue *q) {
  if (atomic_load(&q->putters) > 0) lmp_futex_bump(&q->put_seq, 1);
}

/* Puts one message of len bytes: inline from p, or out of line in blk
 * (pending LMP_PEND_IN; on failure the caller still has it); `plain` is
 * F_PLAIN or 0.  0, -EAGAIN (full at the deadline), -EINTR, -ENOMEM
 * (arena exhausted). */
static int qput(lua_State *L, queue *q, const char *p, size_t len,
                outmsg *blk, unsigned plain, double deadline) {
  int rc;
  for (;;) {
    qlock(q);
    if (has_room(q)) break;
    qunlock(q);
    rc = qwait(L, q, &q->put_seq, &q->putters, has_room, deadline);
    if (rc <= 0) return rc < 0 ? rc : -EAGAIN;
  }
  /* Counted in at once, while the line the lock is in is still this
   * process's (a waiting getter's trylock may take it later); a getter
   * that sees the count first waits for the lock, and so for the record. */
  atomic_fetch_add(&q->count, 1);
  rc = append(q, p, len, blk ? LMP_OFF(blk) : 0, plain);
  if (rc == 0) {
    if (q->h.kind == K_JOINABLE) q->unfinished++;
  } else {
    atomic_fetch_sub(&q->count, 1); /* not put after all */
  }
  /* Still under the lock: once it is released a consumer may take and free
   * the block, so the reaper must not find it registered as ours then. */
  if (blk != NULL && rc == 0) lmp_pending_clear(LMP_PEND_IN);
  qunlock(q);
  if (rc == 0) notify_get(q);
  else notify_put(q); /* the room it held for a moment */
  return rc;
}

/* Takes the oldest message: inline ones are copied into b, out-of-line
 * ones are handed over in *blk, registered as LMP_PEND_OUT (the caller
 * decodes and frees it: lmp_take_decode); *plain says whether it names no
 * object.  0, -EAGAIN (empty at the deadline), -EINTR, -ECANCELED,
 * -ENOMEM. */
static int qget(lua_State *L, queue *q, lmp_buf *b, outmsg **blk,
                int *plain, double deadline) {
  ring *r;
  rec *h;
  int rc;
  *blk = NULL;
  for (;;) {
    qlock(q);
    if (has_item(q)) break;
    qunlock(q);
    rc = qwait(L, q, &q->get_seq, &q->getters, has_item, deadline);
    if (rc <= 0) return rc < 0 ? rc : -EAGAIN;
  }
  /* Counted out at once, while the line the lock is in is still this
   * process's: later, a waiting putter's trylock may have taken it. */
  atomic_fetch_sub(&q->count, 1);
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
    lmp_pending_set(&q->h, *blk, LMP_PEND_OUT);
  } else {
    b->len = 0;
    if (lmp_buf_reserve(b, h->len) < 0) {
      atomic_fetch_add(&q->count, 1); /* it stays */
      qunlock(q);
      notify_get(q);
      return -ENOMEM;
    }
    memcpy(b->data, h + 1, h->len);
    b->len = h->len;
  }
  *plain = (h->flags & F_PLAIN) != 0;
  r->head += sizeof(rec) + pad8(payload_len(h)); /* the commit */
  qunlock(q);
  notify_put(q);
  if (atomic_load(&q->count) > 0 && atomic_load(&q->getters) > 0)
    lmp_futex_bump(&q->get_seq, 1); /* pass the baton */
  return 0;
}

/* ----------------------------------------------------------- Lua binding */

static queue *checkq(lua_State *L, lmp_bufhandle **hp) {
  queue *q = (queue *)lmp_checkobj(L, 1);
  if (hp != NULL) *hp = lua_touserdata(L, 1);
  return q;
}

static int new_queue(lua_State *L, int kind) {
  lua_Integer maxsize = 0;
  queue *q;
  if (kind != K_SIMPLE) maxsize = luaL_optinteger(L, 1, 0);
  q = queue_new(maxsize, kind);
  if (q == NULL) return lmp_nomem(L, sizeof(queue) + RING_MIN);
  lmp_pushnew(L, &q->h);
  return 1;
}

static int queue_Queue(lua_State *L) { return new_queue(L, K_QUEUE); }
static int queue_JoinableQueue(lua_State *L) {
  return new_queue(L, K_JOINABLE);
}
static int queue_SimpleQueue(lua_State *L) { return new_queue(L, K_SIMPLE); }

/* Raises what a put or get that failed with rc raises: `full` (Full or
 * Empty) at its deadline. */
static int fail(lua_State *L, int rc, size_t want, const char *etype,
                const char *msg) {
  if (rc == -EAGAIN) return lmp_throw(L, etype, "%s", msg);
  if (rc == -ENOMEM) return lmp_nomem(L, want);
  return lmp_raise_errno(L, rc, "queue");
}

/* put(v, [block], [timeout]): raises Full when it cannot.  A message
 * too large to sit in the ring is encoded in pieces, its long strings
 * copied once, straight into its own block. */
static int queue_put(lua_State *L) {
  lmp_bufhandle *h;
  queue *q = checkq(L, &h);
  lmp_pieces pc;
  outmsg *blk = NULL;
  const char *p;
  double deadline;
  size_t nobj;
  int rc;
  luaL_checkany(L, 2);
  deadline = lmp_block_deadline(L, 3);
  h->buf->len = 0;
  nobj = lmp_encode_pieces(L, 2, "value", h->buf, &pc);
  p = h->buf->data; /* with no gap: a gap's string alone passes INLINE_MAX */
  if (pc.total > INLINE_MAX || nobj > 0) {
    blk = lmp_cmsg_alloc(&q->h, pc.total, LMP_PEND_IN);
    if (blk == NULL) return fail(L, -ENOMEM, pc.total, "Full", "");
    lmp_pieces_copy(&pc, h->buf, blk->data);
    /* The message owns its objects from here on, counted in its block. */
    lmp_cmsg_seal(blk, nobj);
    p = blk->data;
  }
  lua_pop(L, 1); /* what kept the pieces */
  rc = qput(L, q, p, pc.total, blk, nobj == 0 ? F_PLAIN : 0, deadline);
  if (rc < 0) {
    if (nobj > 0) lmp_msg_unretain_counted(p, pc.total, &blk->refs);
    lmp_free_pending(blk, LMP_PEND_IN);
    return fail(L, rc, pc.total, "Full", "queue is full");
  }
  return 0;
}

static int queue_put_nowait(lua_State *L) {
  lua_settop(L, 2);
  lua_pushboolean(L, 0);
  return queue_put(L);
}

/* Takes one message (at most until the deadline) and pushes its value;
 * returns 0, or rc < 0 with nothing pushed. */
static int take(lua_State *L, queue *q, lmp_bufhandle *h, double deadline) {
  outmsg *blk;
  int plain, rc = qget(L, q, h->buf, &blk, &plain, deadline);
  if (rc < 0) return rc;
  if (blk == NULL) /* inline: it names no object, nothing to let go of */
    lmp_decode(L, h->buf->data, h->buf->len);
  else if (plain) /* decode straight from the block, then free it */
    lmp_take_decode(L, blk->data, blk->len, blk, NULL);
  else
    lmp_take_decode(L, blk->data, blk->len, blk, &blk->refs);
  return 0;
}

/* get([block], [timeout]) -> value: raises Empty when it cannot. */
static int queue_get(lua_State *L) {
  lmp_bufhandle *h;
  queue *q = checkq(L, &h);
  int rc = take(L, q, h, lmp_block_deadline(L, 2));
  if (rc < 0) return fail(L, rc, 0, "Empty", "queue is empty");
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
  lmp_bufhandle *h;
  queue *q = checkq(L, &h);
  lua_Integer n = 0;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  while (atomic_load(&q->count) > 0) {
    int rc = take(L, q, h, 0);
    if (rc == -EAGAIN) break;
    if (rc < 0) return fail(L, rc, 0, "Empty", "queue is empty");
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
  double deadline = lmp_opt_deadline(L, 2);
  int rc = lmp_wait_on(L, &q->join_seq, all_done, q, deadline);
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot join");
  lua_pushboolean(L, rc);
  return 1;
}

/* mp.wait: ready when a get would not block. */
static int queue_ready(void *h, int *fd) {
  (void)fd;
  return atomic_load(&((queue *)((lmp_handle *)h)->obj)->count) > 0;
}

/* ---------------------------------------------------------------- classes */

#define QUEUE_METHODS                                                      \
  {"put", queue_put},       {"put_nowait", queue_put_nowait},              \
  {"get", queue_get},       {"get_nowait", queue_get_nowait},              \
  {"qsize", queue_qsize},   {"empty", queue_empty},                        \
  {"full", queue_full},     {"maxsize", queue_maxsize},                    \
  {"_recount", queue_recount}, {"_drain", queue_drain}

static const luaL_Reg queue_meth[] = {QUEUE_METHODS, {NULL, NULL}};

static const luaL_Reg jqueue_meth[] = {
  QUEUE_METHODS, {"task_done", queue_task_done}, {"join", queue_join},
  {NULL, NULL}
};

static const luaL_Reg squeue_meth[] = {
  {"put", queue_put}, {"get", queue_get}, {"empty", queue_empty},
  {NULL, NULL}
};

static const lmp_type queue_type = {
  .name = "queue", .dtor = queue_dtor, .guard = offsetof(queue, g),
  .owns = owns_locked, .repair = queue_repair, .release = lmp_cmsg_release,
};

#define QUEUECLASS(cname, k, m)                                            \
  {.name = cname, .what = "queue", .type = LMP_T_QUEUE, .kind = k,         \
   .obj = &queue_type, .size = sizeof(lmp_bufhandle), .nuv = 1,            \
   .meth = m, .bind = lmp_bufhandle_bind, .ready = queue_ready}

static const lmp_class queue_class = QUEUECLASS(QUEUE, K_QUEUE, queue_meth);
static const lmp_class jqueue_class =
    QUEUECLASS(JQUEUE, K_JOINABLE, jqueue_meth);
static const lmp_class squeue_class =
    QUEUECLASS(SQUEUE, K_SIMPLE, squeue_meth);

static const lmp_class *const queue_classes[] = {
  &queue_class, &jqueue_class, &squeue_class, NULL
};

static const luaL_Reg queue_funcs[] = {
  {"Queue", queue_Queue}, {"JoinableQueue", queue_JoinableQueue},
  {"SimpleQueue", queue_SimpleQueue}, {NULL, NULL}
};

const lmp_family lmp_queue_family = {queue_classes, queue_funcs, NULL};
