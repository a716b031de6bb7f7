/* arena.c -- the shared arena: one MAP_SHARED mapping that every process
 * of a family sees at the same address, a process-safe allocator inside it,
 * shared object headers with reference counts, and the process slots that
 * let a reaper release what a killed process held.  No Lua in here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/*
 * Layout.  The arena is one anonymous shared mapping, reserved whole with
 * MAP_NORESERVE so that untouched pages cost nothing:
 *
 *   +--------------+------------------------+--------------------------+
 *   | header       | process slots          | heap: blocks ... | top   |
 *   +--------------+------------------------+--------------------------+
 *
 * The heap is a boundary-tag allocator.  Every block starts with a 16-byte
 * tag: the size of the previous block (meaningful only while that block is
 * free) and this block's size with two flag bits (in use, previous in use).
 * A free block keeps the offsets of its neighbours in its free list in its
 * first 16 payload bytes, so the smallest block is 32 bytes.  Free blocks
 * sit in size bins: exact 16-byte classes below 1 KiB, then four bins per
 * power of two; a bitmap finds the first non-empty bin at or above a size.
 * Freeing coalesces with free neighbours and gives back to `top` a block
 * that ends there.  Free blocks of 256 KiB or more keep their pages up to
 * a budget (RETAIN_MAX), so that the next large message does not pay for
 * fresh zeroed pages; past it they return their pages to the kernel
 * (MADV_REMOVE), so freed large messages cost no memory for long.
 *
 * One robust, process-shared mutex guards the heap.  A process killed while
 * holding it leaves it to the next locker (EOWNERDEAD), which marks it
 * consistent: heap operations are short and touch few words, and a killed
 * process cannot be half-way through one for long.
 */

#define ALIGN 16
#define TAG 16 /* bytes of block tag */
#define MINBLOCK 32
#define F_INUSE 1u
#define F_PREV 2u
#define SIZEMASK (~(uint64_t)15)
#define BIG_FREE ((size_t)256 << 10)
#define RETAIN_MAX ((uint64_t)256 << 20)

#define NEXACT 64 /* bins of exact 16-byte classes: sizes < 1024 */
#define NBINS 256
#define ARENA_MAGIC 0x616e6572616d706cull /* "lmparena" */
#define ULOG 96 /* stores one heap operation makes, at most */
enum { OP_ALLOC = 1, OP_FREE };

typedef struct block {
  uint64_t prev_size;
  uint64_t head; /* size | flags */
  lmp_off next, prev; /* only while free */
} block;

typedef struct arena_hdr {
  uint64_t magic;
  uint64_t size;
  uint8_t key[16];
  pthread_mutex_t lock;
  lmp_off heap; /* first block */
  lmp_off top;  /* first byte never handed out */
  uint64_t used, blocks;
  uint64_t retained; /* bytes of large free blocks that kept their pages */
  _Atomic uint64_t objects;
  _Atomic uint32_t nprocs;
  uint32_t slot_hint;
  uint64_t binmap[NBINS / 64];
  lmp_off bins[NBINS];
  /* The undo log of the heap operation under way (see put()). */
  uint32_t ulog_active, ulog_op, ulog_n;
  uint32_t ulog_slot, ulog_which; /* a free that unregisters (which+1) */
  lmp_off ulog_blk;
  struct {
    lmp_off addr;
    uint64_t old;
  } ulog[ULOG];
  pthread_mutex_t watch_lock;
  uint32_t nwatch; /* entries in use, from the start of watch[] */
  struct {
    lmp_off obj;
    uint32_t slot, n;
  } watch[LMP_MAX_WATCH];
} arena_hdr;

char *lmp_base;
static arena_hdr *H;
static int tab_grow(lmp_slot *s);
static lmp_slot *slots;
lmp_slot *lmp_self;
uint32_t lmp_self_index;

#define BLK(off) ((block *)(lmp_base + (off)))
#define BSIZE(b) ((b)->head & SIZEMASK)

static void lock_heap(void);
static void unlock_heap(void);

int lmp_parse_size(const char *s, size_t *out) {
  char *end;
  unsigned long long v;
  if (s == NULL || *s < '0' || *s > '9') return -EINVAL;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0) return -EINVAL;
  switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    case 't': case 'T': v <<= 40; end++; break;
    default: break;
  }
  if (*end == 'i') end++;
  if (*end == 'b' || *end == 'B') end++;
  if (*end != '\0') return -EINVAL;
  *out = (size_t)v;
  return 0;
}

int lmp_arena_ready(void) { return H != NULL; }

int lmp_arena_init(size_t size) {
  pthread_mutexattr_t ma;
  size_t hdr, off;
  void *m;
  if (H != NULL) return 0;
  if (size == 0) {
    const char *env = getenv("LUAMP_ARENA");
    size = LMP_ARENA_DEFAULT;
    if (env != NULL && *env != '\0' && lmp_parse_size(env, &size) < 0)
      return -EINVAL;
  }
  if (size < LMP_ARENA_MIN) size = LMP_ARENA_MIN;
  size = (size + 4095) & ~(size_t)4095;
  m = mmap(NULL, size, PROT_READ | PROT_WRITE,
           MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return -ENOMEM;
  lmp_base = m;
  H = m;
  H->magic = ARENA_MAGIC;
  H->size = size;
  if (getrandom(H->key, sizeof H->key, 0) != (ssize_t)sizeof H->key) {
    /* No entropy source: fall back to something unguessable enough for a
     * family-local key (the address and the clock). */
    struct timespec ts;
    uint64_t k[2];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    k[0] = (uint64_t)(uintptr_t)m ^ (uint64_t)getpid();
    k[1] = (uint64_t)ts.tv_nsec * 1000003u ^ (uint64_t)ts.tv_sec;
    memcpy(H->key, k, sizeof k);
  }
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&H->lock, &ma);
  pthread_mutex_init(&H->watch_lock, &ma);
  pthread_mutexattr_destroy(&ma);
  hdr = (sizeof(arena_hdr) + 63) & ~(size_t)63;
  slots = (lmp_slot *)(lmp_base + hdr);
  off = hdr + sizeof(lmp_slot) * LMP_MAX_PROCS;
  off = (off + ALIGN - 1) & ~(size_t)(ALIGN - 1);
  if (off + MINBLOCK * 4 > size) {
    munmap(m, size);
    H = NULL;
    lmp_base = NULL;
    return -ENOMEM;
  }
  H->heap = off;
  H->top = off;
  BLK(off)->head = F_PREV; /* nothing before the first block to merge */
  /* The first process of the family takes slot 0. */
  lmp_self_index = 0;
  lmp_self = &slots[0];
  atomic_store(&lmp_self->pid, (int32_t)getpid());
  atomic_store(&lmp_self->state, LMP_SLOT_LIVE);
  lmp_self->gen = 1;
  H->nprocs = 1;
  H->slot_hint = 1;
  /* Every live slot has a hold table from the start, so that the number
   * of arena blocks does not move when a process takes its first handle. */
  if (tab_grow(lmp_self) < 0) return -ENOMEM;
  return 0;
}

const uint8_t *lmp_arena_key(void) { return H->key; }

int lmp_in_arena(const void *p, size_t n) {
  const char *c = p;
  if (H == NULL || c < lmp_base + H->heap) return 0;
  return (size_t)(c - lmp_base) <= H->size && n <= H->size - (size_t)(c - lmp_base);
}

/* ------------------------------------------------------------ allocator */

/*
 * Death in the middle of a heap operation.  The heap mutex is robust, but
 * a process killed half-way through linking a block would leave the lists
 * broken for everyone.  So every store to the heap's structure goes
 * through put(), which first records the old value in an undo log in the
 * header; an operation is marked active while it runs.  The next locker,
 * told by EOWNERDEAD that the owner died, finds the operation active,
 * undoes it in reverse, and, when it was a free, frees the block again
 * itself: no block is ever lost or corrupted by a kill.
 */

static void put(uint64_t *p, uint64_t v) {
  volatile arena_hdr *vh = H;
  uint32_t n = vh->ulog_n;
  if (n >= ULOG) abort(); /* an operation never makes this many stores */
  vh->ulog[n].addr = (lmp_off)((char *)p - lmp_base);
  vh->ulog[n].old = *p;
  vh->ulog_n = n + 1;
  *(volatile uint64_t *)p = v;
}

#define SET(lv, v) put(&(lv), (uint64_t)(v))

static void op_begin(uint32_t op, lmp_off blk, uint32_t slot,
                     uint32_t which) {
  volatile arena_hdr *vh = H;
  vh->ulog_n = 0;
  vh->ulog_op = op;
  vh->ulog_blk = blk;
  vh->ulog_slot = slot;
  vh->ulog_which = which;
  vh->ulog_active = 1; /* from here a death is undone */
}

static void op_end(void) {
  ((volatile arena_hdr *)H)->ulog_active = 0; /* the commit */
}

static void free_locked(lmp_off off, uint32_t slot, uint32_t which);

/* The next locker's repair after a death inside a heap operation. */
static void heap_recover(void) {
  uint32_t i;
  if (!H->ulog_active) return;
  for (i = H->ulog_n; i-- > 0;)
    *(uint64_t *)(lmp_base + H->ulog[i].addr) = H->ulog[i].old;
  H->ulog_n = 0;
  H->ulog_active = 0;
  if (H->ulog_op == OP_FREE)
    free_locked(H->ulog_blk, H->ulog_slot, H->ulog_which);
}

static void lock_heap(void) {
  if (pthread_mutex_lock(&H->lock) == EOWNERDEAD) {
    heap_recover();
    pthread_mutex_consistent(&H->lock);
  }
}

static void unlock_heap(void) { pthread_mutex_unlock(&H->lock); }

static unsigned binof(uint64_t size) {
  unsigned lg;
  if (size < 1024) return (unsigned)(size >> 4);
  lg = 63u - (unsigned)__builtin_clzll(size); /* >= 10 */
  return NEXACT + (lg - 10) * 4 + (unsigned)((size >> (lg - 2)) & 3);
}

static void bin_insert(lmp_off off) {
  block *b = BLK(off);
  unsigned i = binof(BSIZE(b));
  SET(b->prev, 0);
  SET(b->next, H->bins[i]);
  if (b->next) SET(BLK(b->next)->prev, off);
  SET(H->bins[i], off);
  SET(H->binmap[i / 64], H->binmap[i / 64] | (uint64_t)1 << (i % 64));
}

static void bin_remove(lmp_off off) {
  block *b = BLK(off);
  unsigned i = binof(BSIZE(b));
  if (b->prev) SET(BLK(b->prev)->next, b->next);
  else SET(H->bins[i], b->next);
  if (b->next) SET(BLK(b->next)->prev, b->prev);
  if (H->bins[i] == 0)
    SET(H->binmap[i / 64], H->binmap[i / 64] & ~((uint64_t)1 << (i % 64)));
}

/* First non-empty bin at or above i, or NBINS. */
static unsigned bin_next(unsigned i) {
  unsigned w = i / 64;
  uint64_t m;
  if (i >= NBINS) return NBINS;
  m = H->binmap[w] & (~(uint64_t)0 << (i % 64));
  while (m == 0) {
    if (++w == NBINS / 64) return NBINS;
    m = H->binmap[w];
  }
  return w * 64 + (unsigned)__builtin_ctzll(m);
}

/* Marks [off, off+size) as an in-use block and keeps the following
 * block's PREV flag right. */
static void set_inuse(lmp_off off, uint64_t size) {
  block *b = BLK(off);
  SET(b->head, size | F_INUSE | (b->head & F_PREV));
  /* the next tag, maybe the top one */
  SET(BLK(off + size)->head, BLK(off + size)->head | F_PREV);
}

/* Makes [off, off+size) a free block in a bin (no coalescing). */
static void make_free(lmp_off off, uint64_t size) {
  block *b = BLK(off);
  SET(b->head, size | (b->head & F_PREV));
  SET(BLK(off + size)->prev_size, size); /* the footer, in the next tag */
  SET(BLK(off + size)->head, BLK(off + size)->head & ~(uint64_t)F_PREV);
  bin_insert(off);
}

/* A large free block: keep its pages while within budget (the budget is
 * a running estimate: reuse of any large block counts against it), else
 * say which pages to drop once the operation is committed (dropping them
 * earlier could not be undone). */
static int give_back(lmp_off off, uint64_t size, uintptr_t drop[2]) {
  uint64_t budget = H->size / 4 < RETAIN_MAX ? H->size / 4 : RETAIN_MAX;
  if (H->retained + size <= budget) {
    SET(H->retained, H->retained + size);
    return 0;
  }
  /* Keep the tag and list links; drop the pages behind them. */
  drop[0] = ((uintptr_t)(lmp_base + off) + sizeof(block) + 4095) &
            ~(uintptr_t)4095;
  drop[1] = ((uintptr_t)(lmp_base + off + size)) & ~(uintptr_t)4095;
  return drop[1] > drop[0];
}

/* Allocates inside an operation the caller began; 0 when exhausted. */
static lmp_off alloc_locked(uint64_t need) {
  unsigned i;
  lmp_off off = 0;
  i = binof(need);
  if (i < NEXACT) {
    /* Every block in an exact bin fits. */
    i = bin_next(i);
    if (i < NBINS) off = H->bins[i];
  } else {
    /* Blocks in this bin may be smaller than need: first fit in it, else
     * any block of a higher bin. */
    lmp_off o;
    for (o = H->bins[i]; o; o = BLK(o)->next)
      if (BSIZE(BLK(o)) >= need) break;
    off = o;
    if (off == 0) {
      i = bin_next(i + 1);
      if (i < NBINS) off = H->bins[i];
    }
  }
  if (off != 0) {
    uint64_t have = BSIZE(BLK(off));
    bin_remove(off);
    if (have - need >= MINBLOCK) {
      SET(BLK(off + need)->head, F_PREV); /* tag of the remainder */
      make_free(off + need, have - need);
      have = need;
    }
    SET(BLK(off)->head, (BLK(off)->head & F_PREV) | have);
    set_inuse(off, have);
    need = have;
  } else {
    if (H->top + need + TAG > H->size) return 0;
    off = H->top;
    /* The tag at top carries PREV for the block before it. */
    SET(BLK(off)->head, (BLK(off)->head & F_PREV) | need | F_INUSE);
    SET(H->top, H->top + need);
    SET(BLK(H->top)->head, F_PREV);
  }
  SET(H->used, H->used + need);
  SET(H->blocks, H->blocks + 1);
  if (need >= BIG_FREE)
    SET(H->retained, H->retained - (need < H->retained ? need : H->retained));
  return off;
}

static uint64_t block_need(size_t n) {
  uint64_t need = ((uint64_t)n + TAG + ALIGN - 1) & SIZEMASK;
  return need < MINBLOCK ? MINBLOCK : need;
}

/* Allocates n bytes; with o, registers the block as pending entry `which`
 * of this process (see lmp_alloc_pending) in the same heap operation. */
static void *alloc(lmp_obj *o, size_t n, int which) {
  lmp_off off;
  if (n > H->size) {
    errno = ENOMEM;
    return NULL;
  }
  lock_heap();
  op_begin(OP_ALLOC, 0, 0, 0);
  off = alloc_locked(block_need(n));
  if (off != 0 && o != NULL) {
    SET(lmp_self->pending_obj, LMP_OFF(o));
    SET(lmp_self->pending_blk[which], off + TAG);
  }
  op_end();
  unlock_heap();
  if (off == 0) {
    errno = ENOMEM;
    return NULL;
  }
  return lmp_base + off + TAG;
}

void *lmp_alloc(size_t n) { return alloc(NULL, n, 0); }

void *lmp_alloc_pending(lmp_obj *o, size_t n, int which) {
  return alloc(o, n, which);
}

void *lmp_calloc(size_t n) {
  void *p = lmp_alloc(n);
  if (p != NULL) memset(p, 0, n);
  return p;
}

/* Frees the block whose tag is at off and, when which > 0, clears the
 * pending entry which-1 of slot `slot`, as one operation; the caller holds
 * the heap lock and has begun no operation. */
static void free_locked(lmp_off off, uint32_t slot, uint32_t which) {
  uint64_t size;
  uintptr_t drop[2];
  int dropping = 0;
  block *b;
  op_begin(OP_FREE, off, slot, which);
  if (which > 0) SET(slots[slot].pending_blk[which - 1], 0);
  b = BLK(off);
  size = BSIZE(b);
  SET(H->used, H->used - size);
  SET(H->blocks, H->blocks - 1);
  if (!(b->head & F_PREV)) { /* merge with the free block before */
    uint64_t psize = b->prev_size;
    off -= psize;
    bin_remove(off);
    size += psize;
    b = BLK(off);
  }
  if (off + size != H->top) {
    block *nb = BLK(off + size);
    if (!(nb->head & F_INUSE)) { /* merge with the free block after */
      bin_remove(off + size);
      size += BSIZE(nb);
    }
  }
  if (size >= BIG_FREE) dropping = give_back(off, size, drop);
  if (off + size == H->top) { /* the block ends at top: lower top */
    SET(H->top, off);
    SET(b->head, b->head & F_PREV);
  } else {
    make_free(off, size);
  }
  op_end();
  if (dropping) madvise((void *)drop[0], drop[1] - drop[0], MADV_REMOVE);
}

void lmp_free(void *p) {
  if (p == NULL) return;
  lock_heap();
  free_locked(LMP_OFF(p) - TAG, 0, 0);
  unlock_heap();
}

void lmp_free_pending(void *p, int which) {
  if (p == NULL) return;
  lock_heap();
  free_locked(LMP_OFF(p) - TAG, lmp_self_index, (uint32_t)which + 1);
  unlock_heap();
}

/* Walks the whole heap and checks that its tags, flags, free lists and
 * counters agree.  0, or -EUCLEAN with a reason in *why.  For tests. */
int lmp_arena_check(const char **why) {
  lmp_off off;
  uint64_t used = 0, blocks = 0, nfree = 0, inbins = 0;
  int prev_inuse = 1;
  unsigned i;
  int rc = 0;
  lock_heap();
  for (off = H->heap; off < H->top;) {
    block *b = BLK(off);
    uint64_t size = BSIZE(b);
    if (size < MINBLOCK || off + size > H->top) {
      *why = "a block's size runs past the top";
      rc = -EUCLEAN;
      goto out;
    }
    if (!!(b->head & F_PREV) != prev_inuse) {
      *why = "a PREV flag disagrees with the block before";
      rc = -EUCLEAN;
      goto out;
    }
    if (b->head & F_INUSE) {
      used += size;
      blocks++;
      prev_inuse = 1;
    } else {
      if (!prev_inuse) {
        *why = "two free blocks next to each other";
        rc = -EUCLEAN;
        goto out;
      }
      if (BLK(off + size)->prev_size != size) {
        *why = "a free block's footer is wrong";
        rc = -EUCLEAN;
        goto out;
      }
      nfree++;
      prev_inuse = 0;
    }
    off += size;
  }
  if (!!(BLK(H->top)->head & F_PREV) != prev_inuse) {
    *why = "the top tag's PREV flag is wrong";
    rc = -EUCLEAN;
    goto out;
  }
  for (i = 0; i < NBINS; i++) {
    lmp_off o, prev = 0;
    if (!!H->bins[i] != !!(H->binmap[i / 64] & ((uint64_t)1 << (i % 64)))) {
      *why = "the bin map disagrees with a bin";
      rc = -EUCLEAN;
      goto out;
    }
    for (o = H->bins[i]; o; prev = o, o = BLK(o)->next) {
      if (BLK(o)->head & F_INUSE || binof(BSIZE(BLK(o))) != i ||
          BLK(o)->prev != prev || ++inbins > nfree) {
        *why = "a free list is broken";
        rc = -EUCLEAN;
        goto out;
      }
    }
  }
  if (inbins != nfree) {
    *why = "a free block is in no bin";
    rc = -EUCLEAN;
  } else if (used != H->used || blocks != H->blocks) {
    *why = "the used or blocks counter is off";
    rc = -EUCLEAN;
  }
out:
  unlock_heap();
  return rc;
}

size_t lmp_usable(const void *p) {
  const block *b = (const block *)((const char *)p - TAG);
  return (size_t)(BSIZE(b) - TAG);
}

void lmp_arena_stats_get(lmp_arena_stats *st) {
  lock_heap();
  st->size = H->size;
  st->used = H->used;
  st->reserved = H->top - H->heap;
  st->blocks = H->blocks;
  unlock_heap();
  st->objects = atomic_load(&H->objects);
  st->processes = atomic_load(&H->nprocs);
}

/* -------------------------------------------------------------- objects */

static struct {
  const char *name;
  lmp_dtor dtor;
  lmp_owns_fn owns;
  lmp_exit_fn on_exit;
  lmp_release_fn release;
} types[LMP_T_MAX];

void lmp_obj_settype(int type, const char *name, lmp_dtor dtor) {
  types[type].name = name;
  types[type].dtor = dtor;
}

void lmp_obj_setowns(int type, lmp_owns_fn owns) { types[type].owns = owns; }

void lmp_obj_setrelease(int type, lmp_release_fn release) {
  types[type].release = release;
}

void lmp_obj_setexit(int type, lmp_exit_fn on_exit) {
  types[type].on_exit = on_exit;
}

const char *lmp_obj_typename(int type) {
  if (type <= 0 || type >= LMP_T_MAX || types[type].name == NULL)
    return "object";
  return types[type].name;
}

lmp_obj *lmp_obj_new(int type, size_t size) {
  lmp_obj *o = lmp_calloc(size);
  if (o == NULL) return NULL;
  o->magic = LMP_OBJ_MAGIC;
  o->type = (uint16_t)type;
  atomic_fetch_add(&H->objects, 1);
  return o;
}

void lmp_obj_incref(lmp_obj *o) {
  atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
}

static void unwatch_obj(lmp_obj *o);

void lmp_obj_decref(lmp_obj *o) {
  if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (o->type < LMP_T_MAX && types[o->type].dtor != NULL)
    types[o->type].dtor(o);
  /* Watches outlive nothing they watch: a new object at this address
   * must not inherit them. */
  if (atomic_load(&o->watchers) > 0) unwatch_obj(o);
  o->magic = 0;
  atomic_fetch_sub(&H->objects, 1);
  lmp_free(o);
}

int lmp_obj_check(lmp_off off, int type) {
  const lmp_obj *o;
  const block *b;
  if (H == NULL || off % ALIGN != 0 || off < H->heap + TAG ||
      off > H->size - sizeof(lmp_obj))
    return 0;
  b = (const block *)(lmp_base + off - TAG);
  if (!(b->head & F_INUSE)) return 0;
  o = LMP_PTR(off);
  if (o->magic != LMP_OBJ_MAGIC || atomic_load(&o->refs) <= 0) return 0;
  return type < 0 || o->type == type;
}

/* ---------------------------------------------------------- hold tables */

/*
 * A process's hold table records the objects it holds handles to: an
 * open-addressing hash from object offset to a handle count.  The process
 * holds one reference on each object whose count is non-zero.  Only the
 * process itself writes its table, and its reaper reads it once it is dead,
 * so each change is ordered to leave the table readable if the process is
 * killed between any two stores: a count drops to zero (a tombstone) before
 * the reference goes, a new table is filled before it is published.  The
 * worst a kill can do is leak one reference.
 */
typedef struct hold_ent {
  lmp_off obj;
  _Atomic uint32_t n;
  uint32_t pad;
} hold_ent;

typedef struct hold_tab {
  uint32_t cap;  /* power of two */
  uint32_t used; /* entries with obj != 0, tombstones included */
  hold_ent e[];
} hold_tab;

static uint32_t hashoff(lmp_off off, uint32_t cap) {
  uint64_t h = (off >> 4) * 0x9e3779b97f4a7c15ull;
  return (uint32_t)(h >> 32) & (cap - 1);
}

static hold_tab *tab_new(uint32_t cap) {
  hold_tab *t = lmp_calloc(sizeof(hold_tab) + cap * sizeof(hold_ent));
  if (t != NULL) t->cap = cap;
  return t;
}

/* Rebuilds the table at twice the live size (or more); -ENOMEM. */
static int tab_grow(lmp_slot *s) {
  hold_tab *old = s->refs ? LMP_PTR(s->refs) : NULL, *t;
  uint32_t live = 0, cap = 16, i;
  if (old != NULL)
    for (i = 0; i < old->cap; i++)
      if (atomic_load(&old->e[i].n) > 0) live++;
  while (cap < (live + 1) * 4) cap *= 2;
  t = tab_new(cap);
  if (t == NULL) return -ENOMEM;
  if (old != NULL) {
    for (i = 0; i < old->cap; i++) {
      uint32_t n = atomic_load(&old->e[i].n), j;
      if (n == 0) continue;
      j = hashoff(old->e[i].obj, cap);
      while (t->e[j].obj != 0) j = (j + 1) & (cap - 1);
      t->e[j].obj = old->e[i].obj;
      atomic_store(&t->e[j].n, n);
      t->used++;
    }
  }
  atomic_thread_fence(memory_order_release);
  s->refs = LMP_OFF(t);
  lmp_free(old);
  return 0;
}

static hold_ent *tab_find(hold_tab *t, lmp_off off, hold_ent **freeslot) {
  uint32_t j = hashoff(off, t->cap);
  *freeslot = NULL;
  for (;;) {
    hold_ent *e = &t->e[j];
    if (e->obj == off) return e;
    if (e->obj == 0) {
      if (*freeslot == NULL) *freeslot = e;
      return NULL;
    }
    if (*freeslot == NULL && atomic_load(&e->n) == 0) *freeslot = e;
    j = (j + 1) & (t->cap - 1);
  }
}

int lmp_hold(lmp_obj *o) {
  lmp_slot *s = lmp_self;
  lmp_off off = LMP_OFF(o);
  hold_tab *t;
  hold_ent *e, *fs;
  if (s->refs == 0 && tab_grow(s) < 0) return -ENOMEM;
  t = LMP_PTR(s->refs);
  e = tab_find(t, off, &fs);
  if (e != NULL && atomic_load(&e->n) > 0) {
    atomic_fetch_add(&e->n, 1);
    return 0;
  }
  if (e == NULL && fs != NULL && fs->obj == 0 && (t->used + 1) * 4 > t->cap * 3) {
    if (tab_grow(s) < 0) return -ENOMEM;
    t = LMP_PTR(s->refs);
    e = tab_find(t, off, &fs);
  }
  lmp_obj_incref(o);
  if (e == NULL) {
    e = fs;
    if (e->obj == 0) t->used++;
    atomic_store(&e->n, 0);
    e->obj = off;
  }
  atomic_store(&e->n, 1);
  return 0;
}

void lmp_unhold(lmp_obj *o) {
  lmp_slot *s = lmp_self;
  hold_ent *e, *fs;
  if (s == NULL || s->refs == 0) return;
  e = tab_find(LMP_PTR(s->refs), LMP_OFF(o), &fs);
  if (e == NULL || atomic_load(&e->n) == 0) return;
  if (atomic_fetch_sub(&e->n, 1) == 1) lmp_obj_decref(o);
}

/* --------------------------------------------------------- process slots */

lmp_slot *lmp_slot_at(uint32_t idx) { return &slots[idx]; }

int lmp_slot_prepare_child(void) {
  uint32_t i, k;
  lmp_slot *c = NULL;
  for (k = 0; k < LMP_MAX_PROCS; k++) {
    uint32_t expect = LMP_SLOT_FREE;
    i = (H->slot_hint + k) % LMP_MAX_PROCS;
    if (atomic_compare_exchange_strong(&slots[i].state, &expect,
                                       LMP_SLOT_RESERVED)) {
      c = &slots[i];
      break;
    }
  }
  if (c == NULL) return -EAGAIN;
  H->slot_hint = i + 1;
  c->gen++;
  c->parent = lmp_self_index;
  atomic_store(&c->pid, 0);
  atomic_store(&c->sleeping, 0);
  atomic_store(&c->waiting_on, 0);
  c->pending_obj = 0;
  c->pending_blk[0] = c->pending_blk[1] = c->pending_blk[2] = 0;
  c->refs = 0;
  atomic_fetch_add(&H->nprocs, 1);
  {
    hold_tab *mine = LMP_PTR(lmp_self->refs), *t;
    uint32_t j;
    t = tab_new(mine->cap);
    if (t == NULL) {
      atomic_fetch_sub(&H->nprocs, 1);
      atomic_store(&c->state, LMP_SLOT_FREE);
      return -ENOMEM;
    }
    /* The same hash layout; tombstones are dropped but probes still end at
     * the same empty entries, so copying positions is safe. */
    for (j = 0; j < mine->cap; j++) {
      uint32_t n = atomic_load(&mine->e[j].n);
      if (mine->e[j].obj == 0) continue;
      t->e[j].obj = mine->e[j].obj;
      t->used++;
      if (n > 0) {
        lmp_obj_incref(LMP_PTR(mine->e[j].obj));
        atomic_store(&t->e[j].n, n);
      }
    }
    c->refs = LMP_OFF(t);
  }
  return (int)i;
}

void lmp_slot_adopt(uint32_t idx) {
  lmp_self_index = idx;
  lmp_self = &slots[idx];
  atomic_store(&lmp_self->pid, (int32_t)getpid());
  atomic_store(&lmp_self->state, LMP_SLOT_LIVE);
}

/* Drops every reference in the slot's table and frees the table. */
static void release_refs(lmp_slot *s) {
  hold_tab *t;
  uint32_t j;
  if (s->refs == 0) return;
  t = LMP_PTR(s->refs);
  s->refs = 0;
  for (j = 0; j < t->cap; j++) {
    if (t->e[j].obj != 0 && atomic_exchange(&t->e[j].n, 0) > 0)
      lmp_obj_decref(LMP_PTR(t->e[j].obj));
  }
  lmp_free(t);
}

void lmp_slot_retire(void) {
  if (lmp_self == NULL) return;
  if (lmp_self->refs != 0) { /* a clean exit: tell what it held */
    hold_tab *t = LMP_PTR(lmp_self->refs);
    uint32_t j;
    for (j = 0; j < t->cap; j++) {
      lmp_obj *o;
      if (t->e[j].obj == 0 || atomic_load(&t->e[j].n) == 0) continue;
      o = LMP_PTR(t->e[j].obj);
      if (o->type < LMP_T_MAX && types[o->type].on_exit != NULL)
        types[o->type].on_exit(o);
    }
  }
  release_refs(lmp_self);
  atomic_store(&lmp_self->state, LMP_SLOT_DEAD);
}

static void unwatch_slot(uint32_t idx);

void lmp_slot_release(uint32_t idx) {
  lmp_slot *s = &slots[idx];
  uint32_t st = atomic_load(&s->state);
  int k;
  if (st == LMP_SLOT_FREE) return;
  /* Blocks it had in transit: the object they were going to or coming
   * from is still alive (the dead process held it), so ask it.  First let
   * the heap recover, if the process died inside a heap operation. */
  lock_heap();
  unlock_heap();
  for (k = 0; k < 3; k++) {
    lmp_off blk = s->pending_blk[k];
    lmp_obj *o = s->pending_obj ? LMP_PTR(s->pending_obj) : NULL;
    int owned = 0, typed;
    if (blk == 0) continue;
    typed = o != NULL && o->type < LMP_T_MAX;
    /* Asking takes the object's lock; if the process died holding it,
     * the repair there settles (and unregisters) what the object owns. */
    if (typed && types[o->type].owns != NULL) owned = types[o->type].owns(o, blk);
    if (s->pending_blk[k] == blk && !owned) {
      if (typed && types[o->type].release != NULL)
        types[o->type].release(o, blk);
      lmp_free(LMP_PTR(blk));
    }
    s->pending_blk[k] = 0;
  }
  s->pending_obj = 0;
  unwatch_slot(idx);
  release_refs(s);
  atomic_store(&s->pid, 0);
  atomic_fetch_sub(&H->nprocs, 1);
  atomic_store(&s->state, LMP_SLOT_FREE);
}

/* ----------------------------------------------------------------- wake */

void lmp_futex_bump(_Atomic uint32_t *word, int n) {
  atomic_fetch_add(word, 1);
  syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

void lmp_futex_wait(_Atomic uint32_t *word, uint32_t seen, double deadline) {
  if (deadline < 0) {
    syscall(SYS_futex, word, FUTEX_WAIT, seen, NULL, NULL, 0);
  } else {
    struct timespec now, ts;
    double left;
    clock_gettime(CLOCK_MONOTONIC, &now);
    left = deadline - ((double)now.tv_sec + (double)now.tv_nsec * 1e-9);
    if (left <= 0) return;
    if (left > 1e6) left = 1e6; /* the caller loops; keep tv_sec sane */
    ts.tv_sec = (time_t)left;
    ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
    syscall(SYS_futex, word, FUTEX_WAIT, seen, &ts, NULL, 0);
  }
}

/*
 * A sleeping process sleeps either on its own wake word or on a word of
 * the object it waits for (`waiting_on`).  Waking it bumps both, so a
 * wake-up is never lost whichever it chose: its futex wait compares the
 * word it sleeps on with the value it read before checking its condition.
 */
void lmp_wake(uint32_t idx) {
  lmp_slot *s = &slots[idx];
  lmp_off w = atomic_load(&s->waiting_on);
  lmp_futex_bump(&s->wake, INT_MAX);
  if (w != 0) lmp_futex_bump((_Atomic uint32_t *)LMP_PTR(w), INT_MAX);
  if (atomic_load(&s->sleeping) && s != lmp_self) {
    pid_t pid = atomic_load(&s->pid);
    if (pid > 0) kill(pid, SIGURG);
  }
}

void lmp_pending_set(lmp_obj *o, void *blk, int which) {
  volatile lmp_slot *s = lmp_self;
  s->pending_obj = LMP_OFF(o);
  s->pending_blk[which] = LMP_OFF(blk);
}

void lmp_settle_pending(lmp_obj *o, uint32_t holder,
                        int (*owns_locked)(lmp_obj *o, lmp_off blk)) {
  lmp_slot *s;
  int k;
  if (holder == 0) return;
  s = &slots[holder - 1];
  for (k = 0; k < 3; k++) {
    lmp_off blk = s->pending_blk[k];
    if (blk != 0 && s->pending_obj == LMP_OFF(o) && owns_locked(o, blk))
      s->pending_blk[k] = 0;
  }
}

void lmp_pending_clear(int which) {
  ((volatile lmp_slot *)lmp_self)->pending_blk[which] = 0;
}

/* ---------------------------------------------------------------- watch */

/*
 * The watch table: which process watches which object, for mp.wait and
 * for owners that must hear of changes while they wait for something
 * else.  It is small and shared by the family; a notifier touches it only
 * when the object's `watchers` count says someone is there.
 */

static void lock_watch(void) {
  if (pthread_mutex_lock(&H->watch_lock) == EOWNERDEAD)
    pthread_mutex_consistent(&H->watch_lock);
}

int lmp_watch(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i, fr = UINT32_MAX;
  lock_watch();
  for (i = 0; i < H->nwatch; i++) {
    if (H->watch[i].obj == off && H->watch[i].slot == lmp_self_index) {
      H->watch[i].n++;
      pthread_mutex_unlock(&H->watch_lock);
      return 0;
    }
    if (H->watch[i].obj == 0 && fr == UINT32_MAX) fr = i;
  }
  if (fr == UINT32_MAX) {
    if (H->nwatch == LMP_MAX_WATCH) {
      pthread_mutex_unlock(&H->watch_lock);
      return -EAGAIN;
    }
    fr = H->nwatch++;
  }
  H->watch[fr].slot = lmp_self_index;
  H->watch[fr].n = 1;
  H->watch[fr].obj = off;
  atomic_fetch_add(&o->watchers, 1);
  pthread_mutex_unlock(&H->watch_lock);
  return 0;
}

static void drop_watch(uint32_t i) {
  lmp_obj *o = LMP_PTR(H->watch[i].obj);
  atomic_fetch_sub(&o->watchers, 1);
  H->watch[i].obj = 0;
  while (H->nwatch > 0 && H->watch[H->nwatch - 1].obj == 0) H->nwatch--;
}

void lmp_unwatch(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i;
  lock_watch();
  for (i = 0; i < H->nwatch; i++) {
    if (H->watch[i].obj == off && H->watch[i].slot == lmp_self_index) {
      if (--H->watch[i].n == 0) drop_watch(i);
      break;
    }
  }
  pthread_mutex_unlock(&H->watch_lock);
}

static void unwatch_obj(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i;
  lock_watch();
  for (i = 0; i < H->nwatch; i++)
    if (H->watch[i].obj == off) drop_watch(i);
  pthread_mutex_unlock(&H->watch_lock);
}

static void unwatch_slot(uint32_t idx) {
  uint32_t i;
  lock_watch();
  for (i = 0; i < H->nwatch; i++)
    if (H->watch[i].obj != 0 && H->watch[i].slot == idx) drop_watch(i);
  pthread_mutex_unlock(&H->watch_lock);
}

void lmp_notify_watchers(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i;
  if (atomic_load(&o->watchers) == 0) return;
  lock_watch();
  for (i = 0; i < H->nwatch; i++)
    if (H->watch[i].obj == off) lmp_wake(H->watch[i].slot);
  pthread_mutex_unlock(&H->watch_lock);
}
