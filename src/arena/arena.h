/* arena.h -- the shared arena: memory that every process of a family sees
 * at the same address, the objects that live in it, the slots of the
 * processes that hold them, and the kit that keeps them whole when a
 * process dies at any instruction.  Nothing here knows Lua.
 *
 * Functions return 0 or -errno unless their comment says otherwise.  None
 * raises; none blocks except where it says it sleeps.
 */
#ifndef LUAMP_ARENA_H
#define LUAMP_ARENA_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* ------------------------------------------------------------- memory */

/* Offsets from the arena base; 0 is the null offset.  Shared structures
 * store offsets, not pointers, so that a bad offset can be range-checked. */
typedef uint64_t lmp_off;

extern char *lmp_base; /* arena base, the same in every process of a family */

#define LMP_PTR(off) ((void *)(lmp_base + (off)))
#define LMP_OFF(p) ((lmp_off)((const char *)(p)-lmp_base))

#define LMP_ARENA_DEFAULT ((size_t)1 << 30) /* 1 GiB, reserved lazily */
#define LMP_ARENA_MIN ((size_t)1 << 20)

/* Maps the arena and makes the calling process the first of its family,
 * once per process; later calls do nothing and return 0.  `size` 0 means
 * $LUAMP_ARENA or the default.  -EINVAL for a bad $LUAMP_ARENA, -ENOMEM
 * when the mapping cannot be made. */
int lmp_arena_init(size_t size);
int lmp_arena_ready(void);

/* The descriptor of the arena's memory (close-on-exec), for a process
 * started by exec to map; -1 when it has none (it is then anonymous
 * memory, which only forks share). */
int lmp_arena_fd(void);
/* In a process started by exec: maps the arena of descriptor fd at addr,
 * the address it has in the rest of its family (which offsets in shared
 * structures rely on).  The process then adopts its slot (lmp_slot_adopt).
 * -EADDRINUSE when that address is taken here, -EINVAL when fd holds no
 * arena, -errno. */
int lmp_arena_attach(int fd, void *addr);

/* Parses "64M", "1G", "512k", "1048576" into bytes; -EINVAL when
 * malformed. */
int lmp_parse_size(const char *s, size_t *out);

/* The process-safe allocator.  lmp_alloc returns 16-byte aligned memory,
 * or NULL when the arena is exhausted (errno ENOMEM); lmp_free(NULL) does
 * nothing.  Each call is one heap operation: a process killed inside it
 * leaves the heap as if the call had not begun (see heap.c). */
void *lmp_alloc(size_t n);
void *lmp_calloc(size_t n);
void lmp_free(void *p);
size_t lmp_usable(const void *p); /* bytes the block can hold */

/* Faults in, for writing, the pages that hold [p, p + n), in one system
 * call rather than a trap for each page at its first write: for fresh
 * memory about to be written.  0, or -errno (-EINVAL: a kernel before
 * 5.14, which lacks MADV_POPULATE_WRITE; it is not asked again).  A page
 * that is already the process's is walked for nothing, and on a virtual
 * machine that walk costs more than writing the page: hence
 * lmp_populate_grown, which asks only for pages that are surely fresh. */
int lmp_populate(void *p, size_t n);

/* For a block of the process's heap that realloc grew from osize to n
 * bytes (p its address now, brk the heap's break before the call, from
 * lmp_brk): faults in the pages that are surely fresh, and only those,
 * the heap's growth during the call, or the grown part of a block that
 * glibc gave a mapping of its own (as it does a large block: the block
 * starts two words into a page, outside the heap).  For a growth of
 * LMP_POPULATE_MIN bytes or more: lmp_realloc_fresh asks no less. */
#define LMP_POPULATE_MIN ((size_t)16 << 10)
void *lmp_brk(void);
void lmp_populate_grown(void *p, size_t osize, size_t n, void *brk);

/* f(ud, ptr, osize, n), a realloc in the shape of a lua_Alloc, for a block
 * that held `had` bytes (0 for a new one): when it grows by
 * LMP_POPULATE_MIN or more, its fresh pages are faulted in at once
 * (lmp_populate_grown).  A smaller one costs a compare. */
typedef void *(*lmp_realloc_fn)(void *ud, void *ptr, size_t osize, size_t n);
static inline void *lmp_realloc_plain(void *ud, void *ptr, size_t osize,
                                      size_t n) {
  (void)ud;
  (void)osize;
  return realloc(ptr, n);
}
static inline void *lmp_realloc_fresh(lmp_realloc_fn f, void *ud, void *ptr,
                                      size_t osize, size_t had, size_t n) {
  void *brk, *p;
  if (n < had + LMP_POPULATE_MIN) return f(ud, ptr, osize, n);
  brk = lmp_brk();
  p = f(ud, ptr, osize, n);
  if (p != NULL) lmp_populate_grown(p, had, n, brk);
  return p;
}

typedef struct lmp_arena_stats {
  size_t size;      /* bytes reserved for the arena */
  size_t used;      /* bytes in allocated blocks, headers included */
  size_t reserved;  /* bytes of the arena ever handed out (high water) */
  size_t blocks;    /* allocated blocks */
  size_t objects;   /* live shared objects */
  size_t processes; /* live process slots */
} lmp_arena_stats;

void lmp_arena_stats_get(lmp_arena_stats *st);

/* Checks the heap's consistency: 0, or -EUCLEAN with a reason. */
int lmp_arena_check(const char **why);

/* A 16-byte secret of the family, made at arena creation; the codec keys
 * its message authentication with it. */
const uint8_t *lmp_arena_key(void);

/* ------------------------------------------------------------ objects */

/* Every shared object starts with this header; its memory is reclaimed
 * when its references drop to zero.  References are held by processes
 * (lmp_hold) and by messages in flight.  `refs` holds their number in its
 * low 32 bits and, in its high 32, the slot + 1 of a process in the middle
 * of a counted change (lmp_obj_incref_counted), or 0: read the number with
 * lmp_obj_refs. */
typedef struct lmp_obj {
  uint32_t magic; /* LMP_OBJ_MAGIC while live */
  uint16_t type;  /* its type: an index into the registered lmp_types */
  uint16_t kind;  /* which of its type's classes (Queue, JoinableQueue...) */
  _Atomic uint32_t watchers; /* processes watching it (lmp_watch) */
  uint32_t pad;
  _Atomic uint64_t refs;
} lmp_obj;

static inline uint32_t lmp_obj_refs(lmp_obj *o) {
  return (uint32_t)atomic_load(&o->refs);
}

#define LMP_OBJ_MAGIC 0x6f706d6cu /* "lmpo" */
#define LMP_T_MAX 32              /* type numbers are 1 .. LMP_T_MAX - 1 */

/* What the arena must know of a type of object: how to destroy one, and
 * how to settle the blocks a dead process left in transit to or from one
 * (see "The crash-safety kit" below).  Every hook is optional; none may
 * block or raise. */
typedef struct lmp_type {
  const char *name; /* "queue": for messages */
  /* The last reference went: release what the object owns (not the
   * object's own memory). */
  void (*dtor)(lmp_obj *o);
  /* The offset of the object's lmp_guard, 0 if it has none. */
  size_t guard;
  /* With the guard held: does the object own block blk (it is in the
   * object's structure, or is that structure)? */
  int (*owns)(lmp_obj *o, lmp_off blk);
  /* With the guard held, after a process died holding it and its pending
   * blocks were settled: recompute what may be stale (a count). */
  void (*repair)(lmp_obj *o);
  /* The reaper is about to free block blk, which a dead process had in
   * transit and the object does not own: drop the references its message
   * holds (for a batch, see lmp_alloc_at, free the blocks it names that
   * the object does not own). */
  void (*release)(lmp_obj *o, lmp_off blk);
  /* A process that holds the object exits cleanly. */
  void (*on_exit)(lmp_obj *o);
} lmp_type;

/* Registers the hooks of type number `type` (1 .. LMP_T_MAX - 1), once
 * per process, before its first object is made. */
void lmp_type_set(int type, const lmp_type *t);
const char *lmp_type_name(int type); /* "object" when unregistered */

/* Allocates a zeroed object of `size` bytes (header included) with no
 * references; NULL when the arena is exhausted.  The caller holds it with
 * lmp_hold, or gives it a reference (lmp_obj_incref) from another object;
 * lmp_obj_discard frees one that nothing holds yet.  Until it has its
 * first reference the process's slot names it, so that a process killed
 * while it makes an object does not leave it behind: the type's hooks
 * must then cope with an object whose fields are still zero. */
lmp_obj *lmp_obj_new(int type, int kind, size_t size);
void lmp_obj_incref(lmp_obj *o);
void lmp_obj_decref(lmp_obj *o); /* destroys at zero */
void lmp_obj_discard(lmp_obj *o);

/* Destruction survives a kill.  The last reference goes in the same
 * atomic operation that marks the object as dying by this process, once
 * its slot names it; the reaper of a process killed before the object's
 * block is freed runs the type's dtor again, which must therefore finish
 * what a run cut short at any instruction began: each block it frees is
 * unlinked in the same heap operation (lmp_heap_free with the word that
 * names the block), each reference it drops is counted
 * (lmp_obj_decref_counted, lmp_msg_unretain_counted).  A dtor takes no
 * pending entry: it may run inside a change that holds some. */

/* Counted references: a reference that a structure in the arena holds and
 * counts in *count, a word of the arena that only this process changes
 * meanwhile (an entry in transit, its own hold table).  incref_counted
 * takes one reference and adds 1 to *count; decref_counted subtracts 1
 * from *count and drops one reference (destroying o at zero).  A process
 * killed at any instruction of either leaves *count equal to the
 * references the structure holds once its reaper has run: the change
 * marks o's `refs` with the process's slot in the same atomic operation
 * as the reference itself, and records the count's value before in the
 * slot, which together tell the reaper how far it went.  A change that
 * finds o marked by another process waits for it (a few instructions,
 * unless that process is preempted); if that process has died and is not
 * yet reaped, it settles the dead one's change itself, as the reaper
 * would, and goes on marked.  Only where /proc cannot tell a dead process
 * from a slow one does it go on unmarked after 2 ms, and so unprotected. */
void lmp_obj_incref_counted(lmp_obj *o, _Atomic uint64_t *count);
void lmp_obj_decref_counted(lmp_obj *o, _Atomic uint64_t *count);

/* Checks an untrusted offset: 1 if it names a live object of `type` (or
 * of any type when type < 0). */
int lmp_obj_check(lmp_off off, int type);

/* ---------------------------------------------------------- processes */

/* Each process of the family has a slot: its pid, its wake word, the
 * table of objects it holds and its pending entries, so that the
 * references and blocks of a process killed with SIGKILL can be released
 * by its reaper. */
#define LMP_MAX_PROCS 4096
#define LMP_DYING_MAX 8 /* destructions a process names, one inside another */

/* The pending entries of a slot: blocks in transit between the process
 * and one object (see "The crash-safety kit"). */
enum {
  LMP_PEND_IN,  /* a message coming into the object */
  LMP_PEND_NEW, /* a new table or ring, not yet published */
  LMP_PEND_OLD, /* the table or ring a publication retires */
  LMP_PEND_OUT, /* a message taken out of the object */
  LMP_PEND_MAX
};

typedef struct lmp_slot {
  _Atomic uint32_t wake;     /* futex word: bumped to wake the process */
  _Atomic uint32_t state;    /* LMP_SLOT_* */
  _Atomic int32_t pid;
  uint32_t parent;           /* parent's slot index */
  _Atomic uint32_t nkids;    /* slots it prepared and has not released */
  _Atomic uint32_t sleeping; /* 1 while blocked in the event loop */
  /* 1 while in lmp_wait_on, which may sleep in a futex wait on `wake` or
   * `waiting_on`: only then does a wake-up make the system call. */
  _Atomic uint32_t in_futex;
  uint32_t gen;
  lmp_off refs;                /* the hold table: see family.c */
  _Atomic lmp_off waiting_on;  /* futex word it sleeps on, 0 for `wake` */
  _Atomic lmp_off owed;        /* futex word it owes a wake-up (lmp_owe) */
  lmp_off pending_obj;         /* the object the pending blocks go with */
  lmp_off pending_blk[LMP_PEND_MAX];
  /* An object being made, until its first reference is taken: its
   * reaper destroys one that no one took (creating_tag is unused). */
  lmp_off creating, creating_tag;
  /* The hold table being grown: the new one until it is in place, the
   * old one until it is freed (see family.c). */
  lmp_off grow_new, grow_old, grow_tag;
  /* A counted reference change in progress: its object (0: none), its
   * count, the count's value before and the direction (+1 or -1). */
  _Atomic lmp_off counting;
  lmp_off count_at;
  uint64_t count_before;
  int64_t count_dir;
  /* Objects being destroyed, innermost last (see family.c). */
  lmp_off dying[LMP_DYING_MAX];
  /* The futex word of the robust mutex it sleeps on, 0 for none (see
   * lmp_robust_record). */
  _Atomic lmp_off lock_wait;
} lmp_slot;

enum { LMP_SLOT_FREE = 0, LMP_SLOT_RESERVED, LMP_SLOT_LIVE, LMP_SLOT_DEAD };

extern lmp_slot *lmp_self; /* this process's slot */
extern uint32_t lmp_self_index;

lmp_slot *lmp_slot_at(uint32_t idx);

/* Reserves a slot for a child about to be started; if `inherit`, copies
 * this process's hold table into it (each object gains a reference for
 * the child), as a fork needs; else it starts empty.  Returns the slot
 * index, or -ENOMEM/-EAGAIN. */
int lmp_slot_prepare(int inherit);
/* In the child right after fork: adopt the prepared slot. */
void lmp_slot_adopt(uint32_t idx);
/* Releases every block and reference the slot holds and frees it; called
 * by the reaper of the process that had it.  Idempotent.  The slots of its
 * children still there (orphans, which the kernel kills with it: no
 * parent of theirs will reap them) are released too, once each has ended
 * (lmp_slot_wait_end). */
void lmp_slot_release(uint32_t idx);
/* Waits up to ms milliseconds for the process of slot idx, which has been
 * told to end, to end; 1 if it has.  Never raises. */
int lmp_slot_wait_end(uint32_t idx, int ms);
/* At a clean exit: releases this process's references (its reaper frees
 * the slot and its table of them). */
void lmp_slot_retire(void);

/* This process takes (hold) or gives up (unhold) one reference to `o`.
 * Returns 0 or -ENOMEM when the hold table cannot grow. */
int lmp_hold(lmp_obj *o);
void lmp_unhold(lmp_obj *o);

/* ------------------------------------------------------------- waking */

/* Bumps a futex word in the arena and wakes `n` of its sleepers (INT_MAX
 * for all). */
void lmp_futex_bump(_Atomic uint32_t *word, int n);
/* A wake-up owed: a change that sleepers on `word` wait for is made after
 * lmp_owe and before lmp_paid, which comes once they are woken.  The
 * reaper of a process killed in between wakes them all (a spurious
 * wake-up at worst: a sleeper looks again), so no change is left unseen
 * by a sleeper that a kill kept from being woken. */
static inline void lmp_owe(_Atomic uint32_t *word) {
  atomic_store_explicit(&lmp_self->owed, LMP_OFF(word), memory_order_relaxed);
}
static inline void lmp_paid(void) {
  atomic_store_explicit(&lmp_self->owed, 0, memory_order_release);
}
/* Wakes every sleeper on the word at offset `word` (0: none) without
 * changing it: each looks again.  Harmless on a word no one sleeps on. */
void lmp_futex_wake_all(lmp_off word);
/* Sleeps on word while it holds `seen`, at most until deadline (monotonic
 * seconds; negative = no limit).  Returns when woken, on a signal or at
 * the deadline; callers re-check their condition. */
void lmp_futex_wait(_Atomic uint32_t *word, uint32_t seen, double deadline);

/* Wakes the process in slot `idx`: bumps its wake word and the word it
 * sleeps on, and signals it (SIGURG) if it sleeps in the event loop.
 * Async-signal-safe. */
void lmp_wake(uint32_t idx);

/* mp.wait support: this process watches o, and whoever changes o calls
 * lmp_notify_watchers(o), which wakes every watcher.  -EAGAIN when the
 * family's watch table is full. */
#define LMP_MAX_WATCH 4096
int lmp_watch(lmp_obj *o);
void lmp_unwatch(lmp_obj *o);
void lmp_notify_watchers(lmp_obj *o);

/* ------------------------------------------------- the crash-safety kit */

/*
 * A process may be killed at any instruction, holding a lock, half-way
 * through a change.  Objects that keep structure in the arena (a queue's
 * ring, a dict's table, a list's array, the messages in them) survive it
 * with four tools:
 *
 *   - a guard: a robust, process-shared mutex that knows its holder.  The
 *     next locker after a death settles what the dead holder left (below)
 *     and lets the type repair what may be stale;
 *   - one store per change: a change is prepared where no reader looks and
 *     committed with one store (a length, a position, an offset), so the
 *     object holds the whole change or none of it;
 *   - pending entries: a block in transit between a process and an object
 *     (a message coming in or going out, a new table, a retired one) is
 *     registered in the process's slot under one of the LMP_PEND_* names,
 *     from its allocation (lmp_alloc_pending, one heap operation) until
 *     the object owns it, or until it is freed (lmp_free_pending).  When
 *     the process dies, its reaper frees each such block unless the object
 *     owns it (the type's `owns` hook, asked under the guard), and first
 *     lets the type drop the references the block's message holds;
 *   - publish and retire: a grown table replaces the old one with one
 *     store (lmp_publish), the new one registered as LMP_PEND_NEW until
 *     then and the old as LMP_PEND_OLD from then until it is freed.
 *
 * So a kill at any moment neither leaks a block nor frees one the object
 * still uses, and leaves no lock wedged.
 */

typedef struct lmp_guard {
  pthread_mutex_t mu;
  uint32_t holder; /* slot + 1 of the process holding mu, or 0 */
} lmp_guard;

void lmp_guard_init(lmp_guard *g);
void lmp_guard_destroy(lmp_guard *g);
/* Locks the guard of object o.  If its last holder died holding it, first
 * settles the blocks that process had pending for o (those o owns leave
 * its entries, so that its reaper will not free them; the reaper frees
 * the rest) and calls the type's `repair`.  Returns 1 after such a
 * repair, else 0.  Blocks while another process holds it. */
int lmp_guard_lock(lmp_guard *g, lmp_obj *o);
void lmp_guard_unlock(lmp_guard *g);

/* Allocates n bytes registered as this process's pending entry `which`
 * for object o, or frees such a block and clears the entry, each as one
 * heap operation.  lmp_pending_set registers a block that exists and
 * lmp_pending_clear forgets one (one store each). */
void *lmp_alloc_pending(lmp_obj *o, size_t n, int which);
void lmp_free_pending(void *p, int which);
void lmp_pending_set(lmp_obj *o, void *blk, int which);
void lmp_pending_clear(int which);

/* Publishes `fresh` (allocated with lmp_alloc_pending(o, n,
 * LMP_PEND_NEW) and filled) in *where, o's pointer to its table, with one
 * store, and frees the table it replaces (if any): after a kill at any
 * instant o owns exactly one of the two and the reaper frees the other.
 * The caller holds o's guard. */
void lmp_publish(lmp_obj *o, _Atomic lmp_off *where, void *fresh);

/* Allocates n bytes and stores the new block's offset in *where, a word
 * of the arena, in the same heap operation (which zeroes the block's first
 * 16 bytes, as for a pending block): a kill leaves no block, or one that
 * *where names.  This is how a batch is filled: one pending block that
 * names many blocks in transit to its object (a List's extend, a Dict's
 * update), which a pending entry each could not hold; the type's
 * `release` frees those that the object does not own.  NULL when the
 * arena is exhausted. */
void *lmp_alloc_at(size_t n, lmp_off *where);

/* ---------------------------------------------- within the arena layer */

/* heap.c serves family.c and safe.c with these; nothing above uses them.
 * lmp_heap_map maps the arena with `front` bytes before the heap (returned
 * in *front_at, zeroed) for the family's tables; lmp_heap_alloc stores v
 * into *tag and the new block's offset into *blk in the same heap
 * operation, and lmp_heap_free zeroes *clear in the same operation as the
 * free, so that no kill can fall between the two; lmp_heap_recover
 * finishes the repair of an operation a dead process left half done; and
 * lmp_heap_live says whether off is the start of an allocated block. */
int lmp_heap_map(size_t size, size_t front, void **front_at);
int lmp_heap_attach(int fd, void *addr, void **front_at);
int lmp_heap_fd(void);
void *lmp_heap_alloc(size_t n, lmp_off *tag, lmp_off v, lmp_off *blk);
/* The same for a shared object: placed so that its bytes from offset 16
 * (the reference count) to LMP_OBJ_LINE_END share one cache line: the
 * guard that follows the header, and the field after it (heap.c). */
#define LMP_OBJ_LINE_END 80
void *lmp_heap_alloc_obj(size_t n, lmp_off *tag, lmp_off v, lmp_off *blk);
void lmp_heap_free(void *p, lmp_off *clear);
void lmp_heap_recover(void);
int lmp_heap_live(lmp_off off, size_t n);
void lmp_heap_stats(lmp_arena_stats *st);
/* The allocated blocks whose first 4 bytes are `magic` (a walk of the
 * whole heap: for statistics). */
size_t lmp_heap_count(uint32_t magic);

/* A robust, process-shared mutex, and locking one: 1 if its last owner
 * died holding it (it is then consistent again, and the caller repairs
 * what it guards), else 0.  A lock held by another process is spun on
 * for some microseconds (trylocks spaced by a pause that doubles) before
 * the caller sleeps in the kernel: the sections these mutexes guard are
 * that short, and a sleep costs a futex wait here and a futex wake in the
 * holder's unlock. */
void lmp_robust_init(pthread_mutex_t *mu);
int lmp_robust_lock(pthread_mutex_t *mu);
/* A sleeper that was woken to take a robust mutex and died before it
 * took it consumed the one wake-up its unlocker made: the mutex is free,
 * and the other sleepers on it sleep on.  So a process says in its slot
 * which mutex it sleeps on (lmp_robust_record tells the arena where:
 * its slot's `lock_wait`, the mutex's futex word), and its reaper wakes
 * every sleeper of that word (lmp_futex_wake_all), each of which looks
 * again.  A word that a change bumps for one sleeper (a queue's, for its
 * getters) is the same case: the reaper wakes every sleeper on the
 * slot's `waiting_on`. */
void lmp_robust_record(_Atomic lmp_off *at);

/* The pause of a spin loop: tells the core a spin is what it runs. */
#if defined(__x86_64__) || defined(__i386__)
#define lmp_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__) || defined(__arm__)
#define lmp_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define lmp_cpu_relax() __asm__ __volatile__("" ::: "memory")
#endif

/* family.c serves safe.c: the hooks of an object's type (NULL when none
 * are registered), the end of a dead process's slot once its pending
 * blocks are settled, and the repair of its counted change. */
const lmp_type *lmp_type_of(const lmp_obj *o);
void lmp_slot_free(uint32_t idx);
/* Finishes or undoes the counted reference change a dead process left
 * half done: first of all its reaper does, before any count is read. */
void lmp_slot_settle_counting(uint32_t idx);
/* Finishes the destructions a dead process began: next, once its
 * counted change is settled. */
void lmp_slot_settle_dying(uint32_t idx);

#endif
