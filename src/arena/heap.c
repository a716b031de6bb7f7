/* heap.c -- the arena's memory: one MAP_SHARED mapping that every process
 * of a family sees at the same address, and a process-safe allocator in it
 * that a process killed inside any of its operations cannot break.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"

/*
 * Layout.  The arena is one anonymous shared mapping, reserved whole with
 * MAP_NORESERVE so that untouched pages cost nothing:
 *
 *   +--------------+------------------------+--------------------------+
 *   | heap header  | front: the family's    | heap: blocks ... | top   |
 *   |              | tables (family.c)      |                          |
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
  uint64_t binmap[NBINS / 64];
  lmp_off bins[NBINS];
  /* The undo log of the heap operation under way (see put()). */
  uint32_t ulog_active, ulog_op, ulog_n;
  lmp_off ulog_blk;
  lmp_off ulog_clear; /* a free that clears this word too (a pending entry) */
  struct {
    lmp_off addr;
    uint64_t old;
  } ulog[ULOG];
} arena_hdr;

char *lmp_base;
static arena_hdr *H;
static int arena_fd = -1; /* the memfd behind it, or -1 */

/* The header's bytes, rounded up to a cache line: the family's tables
 * start there. */
#define HDR_SIZE ((sizeof(arena_hdr) + 63) & ~(size_t)63)

/* A block handed out begins TAG bytes in, where a free block's list
 * links were: heap_alloc zeroes them through the undo log. */
_Static_assert(offsetof(block, next) == TAG &&
                   offsetof(block, prev) + sizeof(lmp_off) == MINBLOCK,
               "a block's first words are its links");

#define BLK(off) ((block *)(lmp_base + (off)))
#define BSIZE(b) ((b)->head & SIZEMASK)

static void lock_heap(void);
static void unlock_heap(void);

int lmp_parse_size(const char *s, size_t *out) {
  char *end;
  unsigned long long v;
  int shift = 0;
  if (s == NULL || *s < '0' || *s > '9') return -EINVAL;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0) return -EINVAL;
  switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
  }
  if (v > (SIZE_MAX >> shift)) return -EINVAL; /* it would wrap */
  v <<= shift;
  if (*end == 'i') end++;
  if (*end == 'b' || *end == 'B') end++;
  if (*end != '\0') return -EINVAL;
  *out = (size_t)v;
  return 0;
}

int lmp_arena_ready(void) { return H != NULL; }

void lmp_robust_init(pthread_mutex_t *mu) {
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(mu, &ma);
  pthread_mutexattr_destroy(&ma);
}

#define LOCK_TRIES 8 /* trylocks before sleeping */

static _Atomic lmp_off *lock_wait_at; /* this process's slot's lock_wait */

void lmp_robust_record(_Atomic lmp_off *at) { lock_wait_at = at; }

/* The futex word of a glibc mutex: its lock word, which a sleeper waits
 * on and an unlock wakes. */
static uint32_t *mutex_word(pthread_mutex_t *mu) {
  return (uint32_t *)&mu->__data.__lock;
}

/* Takes mu, asleep in the kernel if it must: then the slot names the
 * word it sleeps on for the reaper (see lmp_robust_record).  The sleep's
 * rc: 0 or EOWNERDEAD. */
static int robust_sleep(pthread_mutex_t *mu) {
  int rc;
  if (lock_wait_at == NULL) return pthread_mutex_lock(mu);
  atomic_store(lock_wait_at, LMP_OFF(mutex_word(mu)));
  rc = pthread_mutex_lock(mu);
  atomic_store(lock_wait_at, 0);
  return rc;
}

int lmp_robust_lock(pthread_mutex_t *mu) {
  int i, rc;
  /* Between two trylocks a pause that doubles (4 to 512 cpu pauses,
   * about 1000 in all): each trylock takes the lock's cache line from its
   * holder, who needs it back to unlock, so a spinner that tries less
   * often lets the holder finish sooner.  Two processes that take turns
   * at a queue ran 2.3 times as many messages a second as with a try
   * after every pause. */
  for (i = 0; (rc = pthread_mutex_trylock(mu)) == EBUSY && i < LOCK_TRIES;
       i++) {
    int k;
    for (k = 0; k < 4 << i; k++) lmp_cpu_relax();
  }
  if (rc == EBUSY) rc = robust_sleep(mu);
  if (rc == EOWNERDEAD) {
    pthread_mutex_consistent(mu);
    return 1;
  }
  return 0;
}

/* Maps the arena: the heap header, `front` bytes for the family's tables
 * (zeroed, returned in *front_at), then the heap, of `size` bytes (the
 * arena's size as the user gives it: the header and the tables come on
 * top).  -EINVAL for a bad $LUAMP_ARENA, -ENOMEM when the mapping cannot
 * be made. */
int lmp_heap_map(size_t size, size_t front, void **front_at) {
  size_t off;
  void *m;
  if (size == 0) {
    const char *env = getenv("LUAMP_ARENA");
    size = LMP_ARENA_DEFAULT;
    if (env != NULL && *env != '\0' && lmp_parse_size(env, &size) < 0)
      return -EINVAL;
  }
  if (size < LMP_ARENA_MIN) size = LMP_ARENA_MIN;
  size = (size + 4095) & ~(size_t)4095;
  off = (HDR_SIZE + front + ALIGN - 1) & ~(size_t)(ALIGN - 1);
  off = (off + 4095) & ~(size_t)4095; /* the heap's pages its own */
  if (size > SIZE_MAX - off) return -ENOMEM;
  size += off;
  /* A memfd, so that a process started by exec (spawn) can map it too;
   * anonymous shared memory where there is none (forks only). */
  arena_fd = memfd_create("luamp-arena", MFD_CLOEXEC);
  if (arena_fd >= 0 && ftruncate(arena_fd, (off_t)size) < 0) {
    close(arena_fd);
    arena_fd = -1;
  }
  m = mmap(NULL, size, PROT_READ | PROT_WRITE,
           MAP_SHARED | MAP_NORESERVE | (arena_fd < 0 ? MAP_ANONYMOUS : 0),
           arena_fd, 0);
  if (m == MAP_FAILED) {
    if (arena_fd >= 0) close(arena_fd);
    arena_fd = -1;
    return -ENOMEM;
  }
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
  lmp_robust_init(&H->lock);
  H->heap = off;
  H->top = off;
  BLK(off)->head = F_PREV; /* nothing before the first block to merge */
  *front_at = lmp_base + HDR_SIZE;
  return 0;
}

const uint8_t *lmp_arena_key(void) { return H->key; }

int lmp_heap_fd(void) { return arena_fd; }

/* Maps the arena of descriptor fd at addr, where every process of its
 * family has it: -EADDRINUSE when something else is there, -EINVAL when
 * fd holds no arena, -errno. */
int lmp_heap_attach(int fd, void *addr, void **front_at) {
  struct stat st;
  void *m;
  if (fstat(fd, &st) < 0) return -errno;
  if ((size_t)st.st_size < LMP_ARENA_MIN) return -EINVAL;
  m = mmap(addr, (size_t)st.st_size, PROT_READ | PROT_WRITE,
           MAP_SHARED | MAP_NORESERVE | MAP_FIXED_NOREPLACE, fd, 0);
  if (m == MAP_FAILED) return errno == EEXIST ? -EADDRINUSE : -errno;
  if (m != addr) { /* a kernel that does not know MAP_FIXED_NOREPLACE */
    munmap(m, (size_t)st.st_size);
    return -EADDRINUSE;
  }
  if (((arena_hdr *)m)->magic != ARENA_MAGIC ||
      ((arena_hdr *)m)->size != (uint64_t)st.st_size) {
    munmap(m, (size_t)st.st_size);
    return -EINVAL;
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  arena_fd = fd;
  lmp_base = m;
  H = m;
  *front_at = lmp_base + HDR_SIZE;
  return 0;
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

static void op_begin(uint32_t op, lmp_off blk, lmp_off clear) {
  volatile arena_hdr *vh = H;
  vh->ulog_n = 0;
  vh->ulog_op = op;
  vh->ulog_blk = blk;
  vh->ulog_clear = clear;
  vh->ulog_active = 1; /* from here a death is undone */
}

static void op_end(void) {
  ((volatile arena_hdr *)H)->ulog_active = 0; /* the commit */
}

static void free_locked(lmp_off off, lmp_off clear);

/* The next locker's repair after a death inside a heap operation. */
static void heap_recover(void) {
  uint32_t i;
  if (!H->ulog_active) return;
  for (i = H->ulog_n; i-- > 0;)
    *(uint64_t *)(lmp_base + H->ulog[i].addr) = H->ulog[i].old;
  H->ulog_n = 0;
  H->ulog_active = 0;
  if (H->ulog_op == OP_FREE)
    free_locked(H->ulog_blk, H->ulog_clear);
}

static void lock_heap(void) {
  if (robust_sleep(&H->lock) == EOWNERDEAD) {
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

/* A large free block of `size` bytes, `own` of them just freed and the
 * rest its free neighbours': keep its pages while within budget (the
 * budget is a running estimate: reuse of any large block counts against
 * it; the neighbours were counted when they were freed), else say which
 * pages to drop once the operation is committed (dropping them earlier
 * could not be undone), the neighbours' kept pages with them. */
static int give_back(lmp_off off, uint64_t size, uint64_t own,
                     uintptr_t drop[2]) {
  uint64_t budget = H->size / 4 < RETAIN_MAX ? H->size / 4 : RETAIN_MAX;
  if (H->retained + own <= budget) {
    SET(H->retained, H->retained + own);
    return 0;
  }
  SET(H->retained, H->retained - (size - own < H->retained ? size - own
                                                            : H->retained));
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

/*
 * Shared objects start 48 bytes into a cache line, so that the 40 bytes
 * after their 24-byte header (a type's guard, whose mutex is the word
 * every process takes in turn) sit in the next line whole, with the
 * field after the guard beside them: a line of 64 bytes holds the header's
 * reference count, the mutex, its holder and that field.  A mutex that
 * straddled two lines made a queue between two processes a quarter
 * slower.  The block is taken larger and what is before and after the
 * placed one goes back, in the same operation.
 */
#define LINE 64
#define OBJ_PHASE 48

static lmp_off alloc_phased_locked(uint64_t need) {
  lmp_off off = alloc_locked(need + LINE + MINBLOCK), next;
  uint64_t have, lead, rest;
  if (off == 0) return 0;
  have = BSIZE(BLK(off));
  lead = (OBJ_PHASE + LINE - (off + TAG) % LINE) % LINE;
  if (lead != 0 && lead < MINBLOCK) lead += LINE;
  if (lead != 0) { /* the head goes back; its block before is in use */
    SET(BLK(off + lead)->head, (have - lead) | F_INUSE);
    make_free(off, lead);
    SET(H->used, H->used - lead);
    off += lead;
    have -= lead;
  }
  rest = have - need;
  if (rest < MINBLOCK) return off;
  next = off + have;
  if (next == H->top) { /* the tail goes back to the top */
    SET(H->top, off + need);
    SET(BLK(H->top)->head, F_PREV);
  } else { /* as a free block, with the free one after it, if any */
    if (!(BLK(next)->head & F_INUSE)) {
      rest += BSIZE(BLK(next));
      bin_remove(next);
    }
    SET(BLK(off + need)->head, F_PREV);
    make_free(off + need, rest);
  }
  SET(BLK(off)->head, (BLK(off)->head & F_PREV) | need | F_INUSE);
  SET(H->used, H->used - (have - need));
  return off;
}

static void *heap_alloc(size_t n, int phased, lmp_off *tag, lmp_off v,
                        lmp_off *blk) {
  lmp_off off;
  if (n > H->size) {
    errno = ENOMEM;
    return NULL;
  }
  lock_heap();
  op_begin(OP_ALLOC, 0, 0);
  off = phased ? alloc_phased_locked(block_need(n))
               : alloc_locked(block_need(n));
  if (off != 0 && blk != NULL) {
    /* A block named pending is read by a reaper's hooks, which look for
     * their magic in its first words: whatever a former block left there
     * must not pass for it.  Those words were the free block's list
     * links: zeroed through the undo log, so that an allocation undone
     * after a kill gives them back (zeroed in place, they left the block
     * in its bin with its links cut, and a later allocation could hand
     * out a block still in use). */
    SET(BLK(off)->next, 0);
    SET(BLK(off)->prev, 0);
    SET(*tag, v);
    SET(*blk, off + TAG);
  }
  op_end();
  unlock_heap();
  if (off == 0) {
    errno = ENOMEM;
    return NULL;
  }
  return lmp_base + off + TAG;
}

void *lmp_heap_alloc(size_t n, lmp_off *tag, lmp_off v, lmp_off *blk) {
  return heap_alloc(n, 0, tag, v, blk);
}

void *lmp_heap_alloc_obj(size_t n, lmp_off *tag, lmp_off v, lmp_off *blk) {
  return heap_alloc(n, 1, tag, v, blk);
}

void *lmp_alloc(size_t n) { return lmp_heap_alloc(n, NULL, 0, NULL); }

void *lmp_calloc(size_t n) {
  void *p = lmp_alloc(n);
  if (p != NULL) memset(p, 0, n);
  return p;
}

/* Frees the block whose tag is at off and, when clear is not 0, zeroes
 * the word at offset clear (a pending entry), as one operation; the caller
 * holds the heap lock and has begun no operation. */
static void free_locked(lmp_off off, lmp_off clear) {
  uint64_t size, own;
  uintptr_t drop[2];
  int dropping = 0;
  block *b;
  op_begin(OP_FREE, off, clear);
  if (clear != 0) SET(*(uint64_t *)LMP_PTR(clear), 0);
  b = BLK(off);
  size = own = BSIZE(b);
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
  if (size >= BIG_FREE) dropping = give_back(off, size, own, drop);
  if (off + size == H->top) { /* the block ends at top: lower top */
    SET(H->top, off);
    SET(b->head, b->head & F_PREV);
  } else {
    make_free(off, size);
  }
  op_end();
  if (dropping) madvise((void *)drop[0], drop[1] - drop[0], MADV_REMOVE);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

int lmp_populate(void *p, size_t n) {
  static int unsupported;
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), from, to;
  if (unsupported) return -EINVAL;
  from = (uintptr_t)p & ~(page - 1);
  to = ((uintptr_t)p + n + page - 1) & ~(page - 1);
  if (from == to || madvise((void *)from, to - from, MADV_POPULATE_WRITE) == 0)
    return 0;
  if (errno == EINVAL) unsupported = 1;
  return -errno;
}

void *lmp_brk(void) { return sbrk(0); }

void lmp_populate_grown(void *p, size_t osize, size_t n, void *brk) {
  extern char end; /* the heap begins past it */
  char *now = sbrk(0);
  if ((char *)p >= &end && (char *)p < now) { /* in the heap */
    if (now > (char *)brk) lmp_populate(brk, (size_t)(now - (char *)brk));
  } else if (((uintptr_t)p & ((uintptr_t)getpagesize() - 1)) ==
             2 * sizeof(size_t)) {
    /* glibc's mapping of one large block: a page-aligned mapping whose
     * first two words are the block's header.  (Another allocator's
     * block, or one of another thread's arena, is not taken for one.) */
    lmp_populate((char *)p + osize, n - osize);
  }
}

void lmp_heap_free(void *p, lmp_off *clear) {
  if (p == NULL) return;
  lock_heap();
  free_locked(LMP_OFF(p) - TAG, clear != NULL ? LMP_OFF(clear) : 0);
  unlock_heap();
}

void lmp_free(void *p) { lmp_heap_free(p, NULL); }

/* Taking the lock and letting it go is enough: the locker repairs. */
void lmp_heap_recover(void) {
  lock_heap();
  unlock_heap();
}

int lmp_heap_live(lmp_off off, size_t n) {
  const block *b;
  if (H == NULL || off % ALIGN != 0 || off < H->heap + TAG ||
      off > H->size - n)
    return 0;
  b = (const block *)(lmp_base + off - TAG);
  return (b->head & F_INUSE) != 0;
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

size_t lmp_heap_count(uint32_t magic) {
  lmp_off off;
  size_t n = 0;
  lock_heap();
  for (off = H->heap; off < H->top; off += BSIZE(BLK(off))) {
    uint32_t first;
    if (!(BLK(off)->head & F_INUSE)) continue;
    memcpy(&first, lmp_base + off + TAG, sizeof first);
    if (first == magic) n++;
  }
  unlock_heap();
  return n;
}

void lmp_heap_stats(lmp_arena_stats *st) {
  lock_heap();
  st->size = H->size - H->heap; /* the heap's: what may be allocated */
  st->used = H->used;
  st->reserved = H->top - H->heap;
  st->blocks = H->blocks;
  unlock_heap();
}
