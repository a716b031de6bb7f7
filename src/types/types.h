/* types.h -- the Lua-visible families of shared objects, one file each:
 * their type numbers, the list core.c opens them from, and the lock that
 * several of them build on.
 *
 * Adding a type: its file here (its classes and an lmp_family), a type
 * number below, its entry in LMP_FAMILIES, and its names in
 * lua/luamp/init.lua.
 */
#ifndef LUAMP_TYPES_H
#define LUAMP_TYPES_H

#include "arena/arena.h"
#include "codec/codec.h"
#include "runtime/runtime.h"

/* Type numbers of shared objects (lmp_obj.type), below LMP_T_MAX.  Every
 * process of a family is a fork of one program, so they agree. */
enum {
  LMP_T_BLOB = 1, /* a plain shared object: a header and bytes (tests) */
  LMP_T_VALUE,
  LMP_T_LOCK,
  LMP_T_QUEUE,
  LMP_T_DICT,
  LMP_T_LIST,
  LMP_T_SEM,
  LMP_T_EVENT,
  LMP_T_COND,
  LMP_T_BARRIER,
  LMP_T_ARRAY,
  LMP_T_CHANNEL /* the messages in flight on a Pipe (pipe.c) */
};

/* The families, in the order core.c opens them into luamp.core. */
#define LMP_FAMILIES(X) \
  X(blob) X(queue) X(pipe) X(wait) X(sync) X(cond) X(value) X(dict) X(list) \
  X(listener) X(board)

#define LMP_DECLARE_FAMILY(name) extern const lmp_family lmp_##name##_family;
LMP_FAMILIES(LMP_DECLARE_FAMILY)
#undef LMP_DECLARE_FAMILY

/* The bytes of the shared Array at idx (value.c) and their number, or
 * NULL if it is none; raises if it is closed. */
char *lmp_array_bytes(lua_State *L, int idx, size_t *size);
/* Takes the messages waiting now in the Queue at idx (queue.c), without
 * blocking, as its _drain does: each that sits whole in the ring (it
 * names no object) is first offered to offer(L, p, n, ud), which returns
 * 1 if it took it (it must not keep p), 0 if not; the rest are decoded
 * into the table at tidx, from 1 on.  Returns how many went to the table.
 * Raises as _drain does (a message it could not decode is lost). */
typedef int (*lmp_offer)(lua_State *L, const char *p, size_t n, void *ud);
lua_Integer lmp_queue_drain(lua_State *L, int idx, int tidx,
                            lmp_offer offer, void *ud);

/* A duplex Connection (pipe.c), on the top of L, of a connected stream
 * socket, which the Connection owns once this returns.  With chan (a
 * channel of lmp_channel_new, which the peer shares) the peer is of this
 * family and anything a Pipe carries crosses; else it is outside: an
 * authenticated peer (trusted) may send functions, which are re-signed on
 * arrival, any other plain data only, and no shared object crosses. */
void lmp_conn_push(lua_State *L, int fd, int trusted, lmp_off chan);
/* A new channel (the record of a connection's messages in flight), named
 * in this process's creating slot until a Connection holds it; 0 when the
 * arena is exhausted.  lmp_channel_check: is off a live channel? */
lmp_off lmp_channel_new(void);
int lmp_channel_check(lmp_off off);

/* ------------------------------------------------------------------ lock */

/* A Lock or RLock (sync.c), which a Condition waits with and a Value
 * guards with: the owner's pid in one word (0: free).  The words that
 * contending processes write get a cache line of their own, whatever the
 * 16-byte alignment of the object: sharing one with a neighbour (the
 * Value the lock guards, say) would make every access to that neighbour
 * wait for the line too. */
typedef struct lmp_lock {
  lmp_obj h; /* kind: LMP_LOCK_PLAIN or LMP_LOCK_RECURSIVE */
  char before[48];
  _Atomic int32_t owner;
  int32_t count; /* levels held, RLock */
  _Atomic uint32_t seq, nwait;
  char after[48];
} lmp_lock;

enum { LMP_LOCK_PLAIN, LMP_LOCK_RECURSIVE };

/* A new lock nothing holds yet, NULL when the arena is exhausted. */
lmp_lock *lmp_lock_new(int recursive);
/* Takes l by the deadline (0: don't wait, < 0: no limit), running L's Lua
 * work meanwhile: 1 (taken; *died says whether from a dead owner), 0 (not
 * taken), -EINTR or -ECANCELED.  An RLock this process holds counts one
 * more level. */
int lmp_lock_acquire(lua_State *L, lmp_lock *l, double deadline, int *died);
/* 0, -EPERM (an RLock not ours) or -EINVAL (not locked). */
int lmp_lock_release(lmp_lock *l);
int lmp_lock_owned(lmp_lock *l);
/* For Condition.wait: releases every level and says how many there
 * were; lmp_lock_restore takes them all back (waiting as long as it
 * takes). */
int32_t lmp_lock_release_all(lmp_lock *l);
int lmp_lock_restore(lmp_lock *l, int32_t levels, int *died);

/* Positions i and j of a sequence of n items (1-based, negative from the
 * end, as string.sub counts them) as the 0-based bounds [from, to) of the
 * items from i to j, clamped to the sequence (List:index, Array:totable). */
static inline uint64_t lmp_pos_from(lua_Integer i, uint64_t n) {
  uint64_t back = (uint64_t)0 - (uint64_t)i; /* -i, for i < 0 */
  if (i < 0) return back >= n ? 0 : n - back;
  return i == 0 ? 0 : (uint64_t)i - 1 > n ? n : (uint64_t)i - 1;
}

static inline uint64_t lmp_pos_to(lua_Integer j, uint64_t n) {
  uint64_t back = (uint64_t)0 - (uint64_t)j;
  if (j < 0) return back > n ? 0 : n - back + 1;
  return (uint64_t)j > n ? n : (uint64_t)j;
}

#endif
