/* queue.c -- the multi-process FIFO behind Queue, JoinableQueue and
 * SimpleQueue: a ring of encoded messages in the shared arena.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "types.h"

/*
 * Layout.  A queue has two ends, each with its own robust mutex: puts
 * take the tail's, gets the head's, so that a producer and a consumer in
 * two processes do not wait for each other, and each end's lock, position
 * and notes stay in its own cache line.  The ring is one arena block: its
 * capacity and the data.  A position is one 64-bit word, committed with
 * one store: the number of messages that passed that end (high 32 bits)
 * and the byte position (low 32 bits), both counting up modulo 2^32;
 * a byte's index in the data is its position modulo the capacity (a power
 * of two, at most RING_MAX).  The messages waiting are the difference of
 * the two counts, the bytes in use that of the two positions.
 *
 * A message is a record:
 *
 *   u32 length | u32 flags | payload, padded to 8 bytes
 *
 * A message that names no shared object is marked PLAIN: a get decodes it
 * without a protected call, as there are no references to drop should the
 * decoding fail.
 *
 * A record never wraps: where one would not fit before the end of the data
 * a PAD record fills the rest and the message starts again at 0, in the
 * same commit.  Messages larger than INLINE_MAX, and those that name
 * shared objects, live out of line in a block of their own (an lmp_cmsg,
 * which counts the references the message holds); the record's payload is
 * then that block's offset.  A full ring grows, with both locks held: a new
 * block twice as large (or more) gets every record at the same position
 * (no record crosses a multiple of the old capacity, so none crosses one
 * of the new), and is published with one store.  The positions do not
 * change.
 *
 * Each end keeps the other's position as it last read it (seen_head,
 * seen_tail) and reads the other's line only when that copy says the ring
 * is full, or empty: a producer ahead of its consumer, or behind it, does
 * not pull the other's line over for every message.
 *
 * Death, with the arena's crash-safety kit.  Both locks are robust guards.
 * Every change is prepared where no reader looks (beyond the tail, or in a
 * block not yet published) and committed with one store (the tail's word
 * for a put, the head's for a get, the ring's offset for a growth:
 * lmp_publish), so a process killed at any point leaves either the whole
 * message in the queue or none of it, and nothing to recount.  An
 * out-of-line block in transit is pending (LMP_PEND_IN on its way in,
 * LMP_PEND_OUT on its way out, LMP_PEND_NEW for a new ring), so the reaper
 * of a killed process frees it unless the queue owns it.  Whether it does
 * is asked under the tail's lock (the type's guard) or, when a process died
 * holding the head's, under that one: the ring cannot change under either,
 * and the records between the two positions cannot either (only a put
 * writes a record, beyond the tail, and a get moves the head past records
 * it leaves as they were).
 */

#define QUEUE "luamp.Queue"
#define JQUEUE "luamp.JoinableQueue"
#define SQUEUE "luamp.SimpleQueue"

#define RING_MIN ((uint32_t)16 << 10)
#define RING_MAX ((uint32_t)1 << 31)
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
  uint64_t cap; /* a power of two, at most RING_MAX */
  char data[];
} ring;

typedef struct rec {
  uint32_t len, flags;
} rec;

/* A position word: messages that passed (high half), bytes (low half). */
#define W_COUNT(w) ((uint32_t)((w) >> 32))
#define W_POS(w) ((uint32_t)(w))
#define W_MAKE(count, pos)                                                 \
  (((uint64_t)(uint32_t)(count) << 32) | (uint32_t)(pos))
/* Where both start: 1000 messages and 1 MiB short of the wrap, so that
 * every queue crosses it early (and every spec with it). */
#define W_START W_MAKE(-1000, -(1 << 20))

/* The object starts 16 bytes before a cache line (lmp_obj_new), and spans
 * five lines: the tail's lock (bytes 16 to 80), the tail and the producers'
 * notes (80 to 144), the head's lock (144 to 208), the head and the
 * consumers' notes (208 to 272), and what both ends read and seldom write
 * (272 to 336).  A consumer that waits reads the tail, and a producer that
 * checks for room the head, without taking the line of the lock the other
 * side is taking. */
typedef struct queue {
  lmp_obj h; /* kind: K_QUEUE, K_JOINABLE or K_SIMPLE */
  lmp_guard g; /* the tail's lock, and the type's guard */
  char pad0[80 - 24 - sizeof(lmp_guard)];
  _Atomic uint64_t tail;
  _Atomic uint64_t seen_head; /* the head as a put last read it */
  /* JoinableQueue: task_done calls so far.  The puts are counted by the
   * tail itself (its count, from W_START's), so a put's task is counted by
   * the commit of its message, with nothing for a kill to split. */
  uint32_t done;
  uint32_t pad_done;
  char pad1[144 - 104];
  lmp_guard hg; /* the head's lock */
  char pad2[208 - 144 - sizeof(lmp_guard)];
  _Atomic uint64_t head;
  _Atomic uint64_t seen_tail; /* the tail as a get last read it */
  char pad3[272 - 224];
  _Atomic lmp_off ring;
  int64_t maxsize; /* 0: unbounded */
  _Atomic uint32_t get_seq, put_seq, join_seq; /* futex words */
  _Atomic uint32_t getters, putters;
  char pad4[336 - 308];
} queue;

#define LINE_OF(field) ((offsetof(queue, field) + 48) / 64)
_Static_assert(LMP_OBJ_LINE_END == 80, "the object's lines are as drawn");
_Static_assert(LINE_OF(g) == 1 && LINE_OF(tail) == 2 &&
               LINE_OF(done) == 2 && LINE_OF(hg) == 3 &&
               LINE_OF(head) == 4 && LINE_OF(seen_tail) == 4 &&
               LINE_OF(ring) == 5 && LINE_OF(putters) == 5 &&
               sizeof(queue) == 336,
               "each end's lock, and each end's notes, have a line of "
               "their own");

static uint32_t pad8(uint32_t n) { return (n + 7) & ~(uint32_t)7; }

static ring *RING(queue *q) { return LMP_PTR(atomic_load(&q->ring)); }

static rec *REC(ring *r, uint32_t pos) {
  return (rec *)(r->data + (pos & (r->cap - 1)));
}

/* The messages waiting: the head is read first, so that the tail read
 * after it is never behind it. */
static uint32_t waiting(queue *q) {
  uint64_t h = atomic_load(&q->head);
  return W_COUNT(atomic_load(&q->tail)) - W_COUNT(h);
}

static void tlock(queue *q) { lmp_guard_lock(&q->g, &q->h); }
static void tunlock(queue *q) { lmp_guard_unlock(&q->g); }
static void hlock(queue *q) { lmp_guard_lock(&q->hg, &q->h); }
static void hunlock(queue *q) { lmp_guard_unlock(&q->hg); }

static uint32_t payload_len(const rec *h) {
  return (h->flags & F_OUTLINE) ? sizeof(lmp_off) : h->len;
}

static uint32_t rec_size(const rec *h) {
  return sizeof(rec) + pad8(payload_len(h));
}

/* Moves the records, at the same positions, into a ring with room for a
 * record of `need` bytes after the tail (and a PAD before it); the caller
 * holds the tail's lock and takes the head's here.  -ENOMEM. */
static int grow(queue *q, uint32_t need) {
  ring *r, *nr;
  uint32_t head, tail, pos;
  uint64_t cap;
  hlock(q);
  r = RING(q);
  head = W_POS(atomic_load(&q->head));
  tail = W_POS(atomic_load(&q->tail));
  cap = r->cap * 2;
  /* Room for the record, and for a PAD before it if it falls at the end. */
  while (cap - (uint32_t)(tail - head) < (uint64_t)need * 2) cap *= 2;
  nr = cap > RING_MAX ? NULL
                      : lmp_alloc_pending(&q->h, sizeof(ring) + cap,
                                          LMP_PEND_NEW);
  if (nr == NULL) {
    hunlock(q);
    return -ENOMEM;
  }
  nr->cap = cap;
  for (pos = head; pos != tail; pos += rec_size(REC(r, pos))) {
    rec *h = REC(r, pos);
    memcpy(REC(nr, pos), h,
           (h->flags & F_PAD) ? sizeof(rec) : rec_size(h));
  }
  lmp_publish(&q->h, &q->ring, nr);
  hunlock(q);
  return 0;
}

/* The bytes free after the tail, by the head as a put last saw it. */
static uint32_t free_bytes(queue *q, ring *r, uint32_t tail) {
  return r->cap - (tail - W_POS(atomic_load(&q->seen_head)));
}

/* Appends a record and commits it; the caller holds the tail's lock.
 * `outline` is the offset of an out-of-line block (len is then the
 * message length); `plain` adds F_PLAIN.  -ENOMEM. */
static int append(queue *q, const char *p, size_t len, lmp_off outline,
                  unsigned plain) {
  uint32_t plen = outline ? sizeof(lmp_off) : (uint32_t)len;
  uint32_t size = sizeof(rec) + pad8(plen), need, room;
  uint64_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
  uint32_t tail = W_POS(t), pos;
  ring *r = RING(q);
  rec *h;
  room = r->cap - (tail & (r->cap - 1));
  need = room < size ? room + size : size; /* a PAD record to the end */
  if (free_bytes(q, r, tail) < need) {
    atomic_store(&q->seen_head, atomic_load(&q->head));
    if (free_bytes(q, r, tail) < need) {
      if (grow(q, size) < 0) return -ENOMEM;
      r = RING(q);
      room = r->cap - (tail & (r->cap - 1));
    }
  }
  pos = tail;
  if (room < size) {
    h = REC(r, pos);
    h->len = room - sizeof(rec);
    h->flags = F_PAD;
    pos += room;
  }
  h = REC(r, pos);
  h->len = (uint32_t)(outline ? (len > UINT32_MAX ? UINT32_MAX : len) : len);
  h->flags = (outline ? F_OUTLINE : 0) | plain;
  if (outline) memcpy(h + 1, &outline, sizeof outline);
  else memcpy(h + 1, p, len);
  /* The commit, released: a get that sees the word sees the record. */
  atomic_store_explicit(&q->tail, W_MAKE(W_COUNT(t) + 1, pos + size),
                        memory_order_release);
  return 0;
}

/* Does the queue own block blk (in a record or as its ring)?  The caller
 * holds one of the two locks (see Layout). */
static int owns_locked(lmp_obj *o, lmp_off blk) {
  queue *q = (queue *)o;
  ring *r;
  uint32_t pos, tail;
  if (atomic_load(&q->ring) == 0) return 0; /* still being made */
  r = RING(q);
  if (LMP_OFF(r) == blk) return 1;
  tail = W_POS(atomic_load(&q->tail));
  for (pos = W_POS(atomic_load(&q->head)); pos != tail;
       pos += rec_size(REC(r, pos))) {
    rec *h = REC(r, pos);
    if (h->flags & F_OUTLINE) {
      lmp_off off;
      memcpy(&off, h + 1, sizeof off);
      if (off == blk) return 1;
    }
  }
  return 0;
}

/* Run again after a kill cut it short, it finishes the job: each message
 * is freed with the record's word that names it, then the ring with the
 * queue's. */
static void queue_dtor(lmp_obj *o) {
  queue *q = (queue *)o;
  ring *r;
  uint32_t pos, tail;
  if (atomic_load(&q->ring) != 0) { /* 0: never made whole, or freed */
    r = RING(q);
    tail = W_POS(atomic_load(&q->tail));
    for (pos = W_POS(atomic_load(&q->head)); pos != tail;
         pos += rec_size(REC(r, pos))) {
      rec *h = REC(r, pos);
      lmp_off *at = (lmp_off *)(void *)(h + 1);
      if ((h->flags & F_OUTLINE) && *at != 0) /* inline: no object */
        lmp_cmsg_drop(LMP_PTR(*at), at);
    }
    lmp_heap_free(r, (lmp_off *)&q->ring);
  }
  lmp_guard_destroy(&q->hg);
  lmp_guard_destroy(&q->g);
}

/* ------------------------------------------------------------- the core */

static queue *queue_new(int64_t maxsize, int kind) {
  queue *q = (queue *)lmp_obj_new(LMP_T_QUEUE, kind, sizeof(queue));
  ring *r;
  if (q == NULL) return NULL;
  lmp_guard_init(&q->g);
  lmp_guard_init(&q->hg);
  /* Pending until published, so that a kill in between leaks no ring. */
  r = lmp_alloc_pending(&q->h, sizeof(ring) + RING_MIN, LMP_PEND_NEW);
  if (r == NULL) {
    lmp_obj_discard(&q->h);
    return NULL;
  }
  r->cap = RING_MIN;
  q->tail = q->seen_head = q->head = q->seen_tail = W_START;
  q->maxsize = maxsize > 0 ? maxsize : 0;
  lmp_publish(&q->h, &q->ring, r);
  return q;
}

static int has_room(void *ud) {
  queue *q = ud;
  return q->maxsize == 0 || waiting(q) < q->maxsize;
}

static int has_item(void *ud) { return waiting(ud) > 0; }

/* With the tail's lock held: room for one more message, by the head as
 * last seen, else as it is now. */
static int has_room_locked(queue *q) {
  uint32_t tc;
  if (q->maxsize == 0) return 1;
  tc = W_COUNT(atomic_load_explicit(&q->tail, memory_order_relaxed));
  if (tc - W_COUNT(atomic_load(&q->seen_head)) < q->maxsize) return 1;
  atomic_store(&q->seen_head, atomic_load(&q->head));
  return tc - W_COUNT(atomic_load(&q->seen_head)) < q->maxsize;
}

/* With the head's lock held: a message to take, by the tail as last seen,
 * else as it is now (acquired: its record is there). */
static int has_item_locked(queue *q) {
  uint32_t hc = W_COUNT(atomic_load_explicit(&q->head, memory_order_relaxed));
  if (W_COUNT(atomic_load_explicit(&q->seen_tail, memory_order_relaxed)) !=
      hc)
    return 1;
  atomic_store_explicit(&q->seen_tail, atomic_load(&q->tail),
                        memory_order_relaxed);
  return W_COUNT(atomic_load_explicit(&q->seen_tail,
                                      memory_order_relaxed)) != hc;
}

/* A JoinableQueue's puts not yet task_done; the tail's lock held, or the
 * tail read once. */
static uint32_t unfinished(queue *q) {
  return W_COUNT(atomic_load(&q->tail)) - W_COUNT(W_START) - q->done;
}

static int all_done(void *ud) {
  queue *q = ud;
  int done;
  tlock(q);
  done = unfinished(q) == 0;
  tunlock(q);
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
  if (lmp_spin(ready, q, &spinner, LMP_SPIN_QUEUE,
                LMP_SPIN_QUEUE_GAP)) return 1;
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
    tlock(q);
    if (has_room_locked(q)) break;
    tunlock(q);
    rc = qwait(L, q, &q->put_seq, &q->putters, has_room, deadline);
    if (rc <= 0) return rc < 0 ? rc : -EAGAIN;
  }
  lmp_owe(&q->get_seq);
  rc = append(q, p, len, blk ? LMP_OFF(blk) : 0, plain);
  /* Still under the lock: once it is released a consumer may take and free
   * the block, so the reaper must not find it registered as ours then. */
  if (blk != NULL && rc == 0) lmp_pending_clear(LMP_PEND_IN);
  tunlock(q);
  if (rc == 0) notify_get(q);
  lmp_paid();
  return rc;
}

/* Takes the oldest message: inline ones are copied into b, out-of-line
 * ones are handed over in *blk, registered as LMP_PEND_OUT (the caller
 * decodes and frees it: lmp_take_decode); *plain says whether it names no
 * object.  0, -EAGAIN (empty at the deadline), -EINTR, -ECANCELED,
 * -ENOMEM. */
static int qget(lua_State *L, queue *q, lmp_buf *b, outmsg **blk,
                int *plain, double deadline) {
  uint64_t hw;
  uint32_t pos;
  ring *r;
  rec *h;
  int rc;
  *blk = NULL;
  for (;;) {
    hlock(q);
    if (has_item_locked(q)) break;
    hunlock(q);
    rc = qwait(L, q, &q->get_seq, &q->getters, has_item, deadline);
    if (rc <= 0) return rc < 0 ? rc : -EAGAIN;
  }
  hw = atomic_load_explicit(&q->head, memory_order_relaxed);
  pos = W_POS(hw);
  r = RING(q);
  h = REC(r, pos);
  if (h->flags & F_PAD) { /* skipped in the same commit */
    pos += rec_size(h);
    h = REC(r, pos);
  }
  if (h->flags & F_OUTLINE) {
    lmp_off off;
    memcpy(&off, h + 1, sizeof off);
    *blk = LMP_PTR(off);
    lmp_pending_set(&q->h, *blk, LMP_PEND_OUT);
  } else {
    b->len = 0;
    if (lmp_buf_reserve(b, h->len) < 0) { /* it stays */
      hunlock(q);
      return -ENOMEM;
    }
    memcpy(b->data, h + 1, h->len);
    b->len = h->len;
  }
  *plain = (h->flags & F_PLAIN) != 0;
  lmp_owe(&q->put_seq);
  atomic_store(&q->head, W_MAKE(W_COUNT(hw) + 1, pos + rec_size(h)));
  hunlock(q);
  notify_put(q);
  lmp_paid();
  if (atomic_load(&q->getters) > 0 && waiting(q) > 0)
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

/* Puts the message encoded in pieces pc (in b, claimed, which it lets go
 * of, and in what the top of the stack keeps alive, which it pops), which
 * names nobj objects; raises Full when it cannot by the deadline. */
static int put_encoded(lua_State *L, queue *q, lmp_buf *b,
                       const lmp_pieces *pc, size_t nobj, double deadline) {
  outmsg *blk = NULL;
  const char *p = b->data; /* with no gap: a gap's string alone passes
                            * INLINE_MAX */
  int rc;
  if (pc->total > INLINE_MAX || nobj > 0) {
    blk = lmp_cmsg_alloc(&q->h, pc->total, LMP_PEND_IN);
    if (blk == NULL) {
      lmp_buf_unclaim(b);
      return fail(L, -ENOMEM, pc->total, "Full", "");
    }
    lmp_pieces_copy(pc, b, blk->data);
    /* The message owns its objects from here on, counted in its block. */
    lmp_cmsg_seal(blk, nobj);
    p = blk->data;
  }
  lua_pop(L, 1); /* what kept the pieces */
  rc = qput(L, q, p, pc->total, blk, nobj == 0 ? F_PLAIN : 0, deadline);
  lmp_buf_unclaim(b);
  if (rc < 0) {
    if (nobj > 0) lmp_msg_unretain_counted(p, pc->total, &blk->refs);
    lmp_free_pending(blk, LMP_PEND_IN);
    return fail(L, rc, pc->total, "Full", "queue is full");
  }
  return 0;
}

/* put(v, [block], [timeout]): raises Full when it cannot.  A message
 * too large to sit in the ring is encoded in pieces, its long strings
 * copied once, straight into its own block. */
static int queue_put(lua_State *L) {
  lmp_bufhandle *h;
  queue *q = checkq(L, &h);
  lmp_pieces pc;
  double deadline;
  size_t nobj;
  lmp_buf *b;
  luaL_checkany(L, 2);
  deadline = lmp_block_deadline(L, 3);
  b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  /* (what cannot be sent is raised at the caller's line) */
  nobj = lmp_encode_pieces_at(L, 2, "value", b, &pc, 1);
  return put_encoded(L, q, b, &pc, nobj, deadline);
}

/* _put_values(...): puts the array of its arguments, the message of
 * {...} with its nils kept and no field n, without making the table;
 * blocks while the queue is full. */
static int queue_put_values(lua_State *L) {
  lmp_bufhandle *h;
  queue *q = checkq(L, &h);
  lmp_pieces pc;
  size_t nobj;
  lmp_buf *b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  nobj = lmp_encode_array_pieces(L, 2, lua_gettop(L) - 1, "value", b, &pc);
  return put_encoded(L, q, b, &pc, nobj, -1);
}

static int queue_put_nowait(lua_State *L) {
  lua_settop(L, 2);
  lua_pushboolean(L, 0);
  return queue_put(L);
}

/* Pushes the value of the message qget took: in b, or in blk. */
static void give(lua_State *L, lmp_buf *b, outmsg *blk, int plain) {
  if (blk == NULL) /* inline: it names no object, nothing to let go of */
    lmp_decode(L, b->data, b->len);
  else if (plain) /* decode straight from the block, then free it */
    lmp_take_decode(L, blk->data, blk->len, blk, NULL);
  else
    lmp_take_decode(L, blk->data, blk->len, blk, &blk->refs);
}

/* Takes one message (at most until the deadline) and pushes its value;
 * returns 0, or rc < 0 with nothing pushed.  b is claimed. */
static int take(lua_State *L, queue *q, lmp_buf *b, double deadline) {
  outmsg *blk;
  int plain, rc = qget(L, q, b, &blk, &plain, deadline);
  if (rc < 0) return rc;
  give(L, b, blk, plain);
  return 0;
}

/* Takes the messages waiting now, without blocking: each inline one is
 * offered first (when offer is not NULL), and those not taken by the offer
 * are decoded into the table at tidx, from 1 on; returns how many. */
static lua_Integer drain(lua_State *L, queue *q, lmp_buf *b, int tidx,
                         lmp_offer offer, void *ud) {
  lua_Integer n = 0;
  while (waiting(q) > 0) {
    outmsg *blk;
    int plain, rc = qget(L, q, b, &blk, &plain, 0);
    if (rc == -EAGAIN) break;
    if (rc < 0) {
      lmp_buf_unclaim(b);
      return fail(L, rc, 0, "Empty", "queue is empty");
    }
    if (blk == NULL && offer != NULL && offer(L, b->data, b->len, ud))
      continue;
    give(L, b, blk, plain);
    lua_rawseti(L, tidx, ++n);
  }
  lmp_buf_unclaim(b);
  return n;
}

lua_Integer lmp_queue_drain(lua_State *L, int idx, int tidx,
                            lmp_offer offer, void *ud) {
  const lmp_class *c = lmp_classof(L, idx);
  lmp_obj *o;
  if (c == NULL || c->type != LMP_T_QUEUE)
    luaL_typeerror(L, idx, "luamp.Queue");
  if ((o = lmp_toobj(L, idx)) == NULL)
    luaL_error(L, "attempt to use a closed queue");
  luaL_checktype(L, tidx, LUA_TTABLE);
  return drain(L, (queue *)o,
               lmp_buf_claim(L, ((lmp_bufhandle *)lua_touserdata(L, idx))->buf,
                             LMP_FRAME()),
               lua_absindex(L, tidx), offer, ud);
}

/* get([block], [timeout]) -> value: raises Empty when it cannot. */
static int queue_get(lua_State *L) {
  lmp_bufhandle *h;
  queue *q = checkq(L, &h);
  double deadline = lmp_block_deadline(L, 2);
  lmp_buf *b = lmp_buf_claim(L, h->buf, LMP_FRAME());
  int rc = take(L, q, b, deadline);
  lmp_buf_unclaim(b);
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
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushinteger(L, drain(L, q, lmp_buf_claim(L, h->buf, LMP_FRAME()), 2,
                          NULL, NULL));
  return 1;
}

static int queue_qsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)waiting(checkq(L, NULL)));
  return 1;
}

static int queue_empty(lua_State *L) {
  lua_pushboolean(L, waiting(checkq(L, NULL)) == 0);
  return 1;
}

static int queue_full(lua_State *L) {
  queue *q = checkq(L, NULL);
  lua_pushboolean(L, q->maxsize > 0 && waiting(q) >= q->maxsize);
  return 1;
}

/* _recount() -> count, messages found walking the ring (a self-check). */
static int queue_recount(lua_State *L) {
  queue *q = checkq(L, NULL);
  ring *r;
  uint32_t pos, tail;
  lua_Integer n = 0;
  tlock(q);
  hlock(q);
  r = RING(q);
  tail = W_POS(atomic_load(&q->tail));
  for (pos = W_POS(atomic_load(&q->head)); pos != tail;
       pos += rec_size(REC(r, pos)))
    if (!(REC(r, pos)->flags & F_PAD)) n++;
  lua_pushinteger(L, (lua_Integer)waiting(q));
  lua_pushinteger(L, n);
  hunlock(q);
  tunlock(q);
  return 2;
}

static int queue_maxsize(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkq(L, NULL)->maxsize);
  return 1;
}

static int queue_task_done(lua_State *L) {
  queue *q = checkq(L, NULL);
  int zero;
  tlock(q);
  if (unfinished(q) == 0) {
    tunlock(q);
    return luaL_error(L, "task_done() called too many times");
  }
  lmp_owe(&q->join_seq);
  q->done++;
  zero = unfinished(q) == 0;
  tunlock(q);
  if (zero) lmp_futex_bump(&q->join_seq, INT_MAX);
  lmp_paid();
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
  return waiting((queue *)((lmp_handle *)h)->obj) > 0;
}

/* ---------------------------------------------------------------- classes */

#define QUEUE_METHODS                                                      \
  {"put", queue_put},       {"put_nowait", queue_put_nowait},              \
  {"get", queue_get},       {"get_nowait", queue_get_nowait},              \
  {"qsize", queue_qsize},   {"empty", queue_empty},                        \
  {"full", queue_full},     {"maxsize", queue_maxsize},                    \
  {"_recount", queue_recount}, {"_drain", queue_drain},                     \
  {"_put_values", queue_put_values}

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
  .owns = owns_locked, .release = lmp_cmsg_release,
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
