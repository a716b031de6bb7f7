/* family.c -- what the processes of a family share besides memory: the
 * shared objects and their reference counts, each process's slot with its
 * hold table and pending entries, the wake words and the watch table.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "arena.h"

/*
 * The family's tables sit in the arena's front region, before the heap
 * (see heap.c): the process slots, the watch table and a counter.  The
 * first process of the family takes slot 0; every fork reserves one for
 * its child (lmp_slot_prepare) before the child exists, so that the
 * child's references are counted from the start.
 */

typedef struct family {
  _Atomic uint32_t nprocs;  /* live slots */
  uint32_t slot_hint;       /* where the next free slot may be */
  pthread_mutex_t watch_lock;
  /* Held while a dead process's counted change is settled, by its reaper
   * or by a process that found its mark in the way. */
  pthread_mutex_t settle_lock;
  uint32_t nwatch; /* entries in use, from the start of watch[] */
  struct {
    lmp_off obj;
    uint32_t slot, n;
  } watch[LMP_MAX_WATCH];
  lmp_slot slots[LMP_MAX_PROCS];
} family;

static family *F;
lmp_slot *lmp_self;
uint32_t lmp_self_index;

static int tab_grow(lmp_slot *s);

int lmp_arena_init(size_t size) {
  void *front;
  int rc;
  if (lmp_arena_ready()) return 0;
  if ((rc = lmp_heap_map(size, sizeof(family), &front)) < 0) return rc;
  F = front;
  lmp_robust_init(&F->watch_lock);
  lmp_robust_init(&F->settle_lock);
  lmp_self_index = 0;
  lmp_self = &F->slots[0];
  lmp_robust_record(&lmp_self->lock_wait);
  atomic_store(&lmp_self->pid, (int32_t)getpid());
  atomic_store(&lmp_self->state, LMP_SLOT_LIVE);
  lmp_self->gen = 1;
  F->nprocs = 1;
  F->slot_hint = 1;
  /* Every live slot has a hold table from the start, so that the number
   * of arena blocks does not move when a process takes its first handle. */
  return tab_grow(lmp_self);
}

int lmp_arena_fd(void) { return lmp_heap_fd(); }

int lmp_arena_attach(int fd, void *addr) {
  void *front;
  int rc;
  if (lmp_arena_ready()) return -EEXIST;
  if ((rc = lmp_heap_attach(fd, addr, &front)) < 0)
    return rc;
  F = front;
  return 0;
}

void lmp_arena_stats_get(lmp_arena_stats *st) {
  lmp_heap_stats(st);
  /* Counted, not kept: a count kept beside the objects would drift by one
   * whenever a process was killed between the two. */
  st->objects = lmp_heap_count(LMP_OBJ_MAGIC);
  st->processes = atomic_load(&F->nprocs);
}

/* -------------------------------------------------------------- objects */

static const lmp_type *types[LMP_T_MAX];

void lmp_type_set(int type, const lmp_type *t) { types[type] = t; }

const lmp_type *lmp_type_of(const lmp_obj *o) {
  return o->type < LMP_T_MAX ? types[o->type] : NULL;
}

const char *lmp_type_name(int type) {
  if (type <= 0 || type >= LMP_T_MAX || types[type] == NULL ||
      types[type]->name == NULL)
    return "object";
  return types[type]->name;
}

lmp_obj *lmp_obj_new(int type, int kind, size_t size) {
  /* Named in the slot by the allocation's own heap operation. */
  lmp_obj *o = lmp_heap_alloc_obj(size, &lmp_self->creating_tag, 0,
                                  &lmp_self->creating);
  if (o == NULL) return NULL;
  memset(o, 0, size);
  o->type = (uint16_t)type;
  o->kind = (uint16_t)kind;
  o->magic = LMP_OBJ_MAGIC; /* last: from now on it counts as one */
  return o;
}

void lmp_obj_incref(lmp_obj *o) {
  atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed);
  if (lmp_self->creating == LMP_OFF(o)) lmp_self->creating = 0;
}


static void unwatch_obj(lmp_obj *o);

#define MARK_OF(idx) ((uint64_t)((idx) + 1) << 32)

/*
 * Destruction (see arena.h).  An object this process destroys is named in
 * its slot's `dying` entries, a stack (a dtor that drops the last
 * reference of another destroys it inside its own), before the last
 * reference goes; the operation that drops it leaves the process's mark
 * and no count in `refs`, so the reaper tells a destruction begun (that
 * exact word) from one that was only about to be.  The object's block is
 * freed in the heap operation that clears its entry.  Deeper than
 * LMP_DYING_MAX, a destruction goes unnamed.
 */
static int ndying; /* this process's entries in use */

/* Names o in the next entry: its index, or -2 when all are in use. */
static int dying_push(lmp_obj *o) {
  if (ndying == LMP_DYING_MAX) return -2;
  ((volatile lmp_slot *)lmp_self)->dying[ndying] = LMP_OFF(o);
  return ndying++;
}

static void dying_pop(int k) {
  ((volatile lmp_slot *)lmp_self)->dying[k] = 0;
  ndying = k;
}

/* Destroys o, named in entry k (-2: unnamed).  A destruction taken over
 * from a dead process may find the dtor run already (magic cleared). */
static void obj_destroy(lmp_obj *o, int k) {
  if (o->magic == LMP_OBJ_MAGIC) {
    const lmp_type *t = lmp_type_of(o);
    if (t != NULL && t->dtor != NULL) t->dtor(o);
    /* Watches outlive nothing they watch: a new object at this address
     * must not inherit them. */
    if (atomic_load(&o->watchers) > 0) unwatch_obj(o);
    o->magic = 0;
  }
  if (k < 0) {
    lmp_free(o);
  } else {
    lmp_heap_free(o, &lmp_self->dying[k]);
    ndying = k;
  }
}

/* Drops `sub` references and the mark `mark` (0: none) from o->refs in
 * one operation, which marks o dying by this process if no reference is
 * left.  Returns the dying entry to destroy o with (or -2, unnamed), or
 * -1 while references remain.  A mark in the high half left by another
 * process does not stop the count: that process holds one of the
 * references, so this drop is never the last. */
static int drop_refs(lmp_obj *o, uint64_t sub, uint64_t mark) {
  uint64_t w = atomic_load(&o->refs), to;
  int k = -1;
  for (;;) {
    to = w - sub - mark;
    if (to == 0) { /* the last: named before it goes */
      if (k == -1) k = dying_push(o);
      if (k >= 0) to = MARK_OF(lmp_self_index);
    }
    if (atomic_compare_exchange_weak(&o->refs, &w, to)) break;
  }
  if (w - sub - mark == 0) return k;
  if (k >= 0) dying_pop(k); /* it was not the last after all */
  return -1;
}

void lmp_obj_decref(lmp_obj *o) {
  int k = drop_refs(o, 1, 0);
  if (k != -1) obj_destroy(o, k);
}

void lmp_obj_discard(lmp_obj *o) {
  lmp_obj_incref(o);
  lmp_obj_decref(o);
}

void lmp_slot_settle_dying(uint32_t idx) {
  lmp_slot *s = &F->slots[idx];
  int k;
  for (k = LMP_DYING_MAX; k-- > 0;) { /* innermost first */
    lmp_off off = s->dying[k];
    lmp_obj *o;
    int mine;
    if (off == 0) continue;
    o = LMP_PTR(off);
    if (atomic_load(&o->refs) != MARK_OF(idx)) { /* not begun */
      s->dying[k] = 0;
      continue;
    }
    /* Ours from here: named here, marked ours, then no longer its. */
    mine = dying_push(o);
    atomic_store(&o->refs, mine >= 0 ? MARK_OF(lmp_self_index) : 0);
    s->dying[k] = 0;
    obj_destroy(o, mine);
  }
}

/*
 * Counted changes (see arena.h).  The steps of one, each a single store
 * or atomic operation:
 *
 *   1. the slot records the count's address, value and the direction,
 *      then the object (`counting`);
 *   2. o->refs gains the slot's mark, with the reference for an incref;
 *   3. *count changes by one;
 *   4. the mark goes, with the reference for a decref (and if that was
 *      the last, the dying mark comes in the same operation);
 *   5. `counting` is cleared.
 *
 * The reaper reads them back (lmp_slot_settle_counting): o marked by the
 * dead slot, with references, means step 2 happened and step 4 did not,
 * and *count against the value recorded says whether step 3 did.
 * Unmarked, or marked dying, the change either did not start or is whole.
 */

#define MS 1000000 /* in nanoseconds */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Has the process of slot idx died?  2: it has (a zombie counts: its
 * reaper may be the very process that asks); 1: it is taken for dead,
 * with no /proc to tell a zombie, after `waited` ns beyond 2 ms; 0: it
 * lives. */
static int slot_dead(uint32_t idx, int64_t waited) {
  lmp_slot *s = &F->slots[idx % LMP_MAX_PROCS];
  int32_t pid = atomic_load(&s->pid);
  char path[32], buf[512], *paren;
  ssize_t n;
  int fd;
  if (atomic_load(&s->state) != LMP_SLOT_LIVE || pid <= 0) return 2;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (kill(pid, 0) < 0 && errno == ESRCH) return 2;
    return waited > 2 * MS;
  }
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 2;
  buf[n] = '\0';
  paren = strrchr(buf, ')'); /* the name before it may hold anything */
  return paren == NULL || paren[1] == '\0' || paren[2] == 'Z' ||
                 paren[2] == 'X'
             ? 2
             : 0;
}

/* Step 2: marks o, adding `add` references.  Another process's mark is
 * waited for (spinning, then yielding, its holder checked each
 * millisecond).  If that process has died, this one settles the change
 * it left, as its reaper would (lmp_slot_settle_counting), and marks o
 * after all; only if it cannot tell (no /proc) does it return 0, and the
 * change goes unmarked, the mark left to the reaper. */
static int mark(lmp_obj *o, uint64_t add) {
  uint64_t w = atomic_load(&o->refs), mine = MARK_OF(lmp_self_index);
  int64_t since = 0, check = 0;
  unsigned spins = 0;
  uint32_t settled = 0; /* the slot + 1 whose change this one settled */
  for (;;) {
    if ((w >> 32) == 0) {
      if (atomic_compare_exchange_weak(&o->refs, &w, w + add + mine))
        return 1;
      continue;
    }
    if (++spins < 1000) {
      lmp_cpu_relax();
    } else {
      int64_t t = now_ns();
      if (since == 0) {
        since = t;
        check = t + MS;
      } else if (t >= check) {
        uint32_t holder = (uint32_t)(w >> 32);
        int dead = slot_dead(holder - 1, t - since);
        if (dead == 2 && settled != holder) {
          /* Its change is on o, of which this process holds a reference
           * besides: the settling drops none that is the last, so no dtor
           * runs inside this change (whose record it would reuse). */
          lmp_slot_settle_counting(holder - 1);
          settled = holder;
          since = 0;
          spins = 0;
          w = atomic_load(&o->refs);
          continue;
        }
        if (dead != 0) return 0;
        check = t + MS;
      }
      sched_yield();
    }
    w = atomic_load(&o->refs);
  }
}

/* Step 4 of an incref, or of a change that keeps its reference, for slot
 * idx: removes its mark (a decref's step 4 is drop_refs). */
static void unmark(lmp_obj *o, uint32_t idx) {
  atomic_fetch_sub(&o->refs, MARK_OF(idx));
}

static void record(lmp_obj *o, _Atomic uint64_t *count, int64_t dir) {
  volatile lmp_slot *s = lmp_self;
  s->count_at = LMP_OFF(count);
  s->count_before = atomic_load(count);
  s->count_dir = dir;
  atomic_store(&lmp_self->counting, LMP_OFF(o));
}

void lmp_obj_incref_counted(lmp_obj *o, _Atomic uint64_t *count) {
  record(o, count, 1);
  if (mark(o, 1)) {
    atomic_fetch_add(count, 1);
    unmark(o, lmp_self_index);
  } else {
    atomic_fetch_add(&o->refs, 1);
    atomic_fetch_add(count, 1);
  }
  atomic_store(&lmp_self->counting, 0);
  if (lmp_self->creating == LMP_OFF(o)) lmp_self->creating = 0;
}

void lmp_obj_decref_counted(lmp_obj *o, _Atomic uint64_t *count) {
  int k;
  record(o, count, -1);
  if (mark(o, 0)) {
    atomic_fetch_sub(count, 1);
    k = drop_refs(o, 1, MARK_OF(lmp_self_index));
  } else {
    atomic_fetch_sub(count, 1);
    k = drop_refs(o, 1, 0);
  }
  atomic_store(&lmp_self->counting, 0);
  if (k != -1) obj_destroy(o, k);
}

/* Settles the dead slot's change under the settle lock: its reaper and a
 * process that found its mark may both try, one after the other, and one
 * killed on the way leaves it to the next (a settling is whole once its
 * mark is gone, and then not done again). */
void lmp_slot_settle_counting(uint32_t idx) {
  lmp_slot *s = &F->slots[idx];
  lmp_off off;
  _Atomic uint64_t *count;
  lmp_obj *o;
  uint64_t now, w;
  int k = -1;
  if (atomic_load(&s->counting) == 0) return;
  lmp_robust_lock(&F->settle_lock);
  off = atomic_load(&s->counting);
  if (off == 0) {
    pthread_mutex_unlock(&F->settle_lock);
    return;
  }
  o = LMP_PTR(off);
  count = LMP_PTR(s->count_at);
  w = atomic_load(&o->refs);
  /* Marked, with references: steps 2 to 4 (marked without any is a
   * destruction begun, the change whole). */
  if ((w >> 32) == idx + 1 && (uint32_t)w != 0) {
    now = atomic_load(count);
    if (s->count_dir > 0) { /* the reference is in: count it */
      if (now == s->count_before) atomic_store(count, now + 1);
      unmark(o, idx);
    } else if (now + 1 == s->count_before) { /* uncounted: drop it */
      k = drop_refs(o, 1, MARK_OF(idx));
      if (k != -1) { /* the last: o is this process's to destroy */
        int j;
        /* It may have named o dying, its last drop still to come. */
        for (j = 0; j < LMP_DYING_MAX; j++)
          if (s->dying[j] == off) s->dying[j] = 0;
      }
    } else { /* still counted: whoever drops the count drops it */
      unmark(o, idx);
    }
  }
  atomic_store(&s->counting, 0);
  pthread_mutex_unlock(&F->settle_lock);
  /* Outside the lock: a dtor's counted changes may settle others. */
  if (k != -1) obj_destroy(o, k);
}

int lmp_obj_check(lmp_off off, int type) {
  const lmp_obj *o;
  if (!lmp_heap_live(off, sizeof(lmp_obj))) return 0;
  o = LMP_PTR(off);
  if (o->magic != LMP_OBJ_MAGIC || lmp_obj_refs((lmp_obj *)o) == 0) return 0;
  return type < 0 || o->type == type;
}

/* ---------------------------------------------------------- hold tables */

/*
 * A process's hold table records the objects it holds handles to: an
 * open-addressing hash from object offset to a handle count.  The process
 * holds one reference on each object whose count is non-zero.  Only the
 * process itself writes its table, and its reaper reads it once it is dead,
 * so each change is ordered to leave the table readable if the process is
 * killed between any two stores: a count goes from zero to one (an entry
 * written at zero first) and back to zero (a tombstone) with the reference
 * itself, as one counted change (lmp_obj_incref_counted), and a new table
 * is filled before it is published.  So a kill leaks no reference.
 */
typedef struct hold_ent {
  lmp_off obj;
  _Atomic uint64_t n;
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
  /* Named in the slot by its allocation, then the old one by a store,
   * and each forgotten with the free or the store that settles it, so
   * that the reaper of a process killed on the way frees the table that
   * is not in place (settle_growth). */
  t = lmp_heap_alloc(sizeof(hold_tab) + cap * sizeof(hold_ent),
                     &s->grow_tag, 0, &s->grow_new);
  if (t == NULL) return -ENOMEM;
  memset(t, 0, sizeof(hold_tab) + cap * sizeof(hold_ent));
  t->cap = cap;
  if (old != NULL) {
    for (i = 0; i < old->cap; i++) {
      uint64_t n = atomic_load(&old->e[i].n);
      uint32_t j;
      if (n == 0) continue;
      j = hashoff(old->e[i].obj, cap);
      while (t->e[j].obj != 0) j = (j + 1) & (cap - 1);
      t->e[j].obj = old->e[i].obj;
      atomic_store(&t->e[j].n, n);
      t->used++;
    }
  }
  atomic_thread_fence(memory_order_release);
  if (old != NULL) s->grow_old = LMP_OFF(old);
  s->refs = LMP_OFF(t); /* the commit */
  if (old != NULL) lmp_heap_free(old, &s->grow_old);
  s->grow_new = 0;
  return 0;
}

/* The reaper's part for a hold table a dead process was growing. */
static void settle_growth(lmp_slot *s) {
  if (s->grow_new != 0 && s->grow_new != s->refs)
    lmp_free(LMP_PTR(s->grow_new));
  if (s->grow_old != 0 && s->grow_old != s->refs)
    lmp_free(LMP_PTR(s->grow_old));
  s->grow_new = s->grow_old = 0;
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
  if (e == NULL && fs != NULL && fs->obj == 0 &&
      (t->used + 1) * 4 > t->cap * 3) {
    if (tab_grow(s) < 0) return -ENOMEM;
    t = LMP_PTR(s->refs);
    e = tab_find(t, off, &fs);
  }
  /* The entry first, at zero; then the reference, counted in it. */
  if (e == NULL) {
    e = fs;
    if (e->obj == 0) t->used++;
    atomic_store(&e->n, 0);
    e->obj = off;
  }
  lmp_obj_incref_counted(o, &e->n);
  return 0;
}

void lmp_unhold(lmp_obj *o) {
  lmp_slot *s = lmp_self;
  hold_ent *e, *fs;
  if (s == NULL || s->refs == 0) return;
  e = tab_find(LMP_PTR(s->refs), LMP_OFF(o), &fs);
  if (e == NULL || atomic_load(&e->n) == 0) return;
  if (atomic_load(&e->n) > 1) atomic_fetch_sub(&e->n, 1);
  else lmp_obj_decref_counted(o, &e->n);
}

/* --------------------------------------------------------- process slots */

lmp_slot *lmp_slot_at(uint32_t idx) { return &F->slots[idx]; }

int lmp_slot_prepare(int inherit) {
  uint32_t i, k;
  lmp_slot *c = NULL;
  for (k = 0; k < LMP_MAX_PROCS; k++) {
    uint32_t expect = LMP_SLOT_FREE;
    i = (F->slot_hint + k) % LMP_MAX_PROCS;
    if (atomic_compare_exchange_strong(&F->slots[i].state, &expect,
                                       LMP_SLOT_RESERVED)) {
      c = &F->slots[i];
      break;
    }
  }
  if (c == NULL) return -EAGAIN;
  F->slot_hint = i + 1;
  c->gen++;
  c->parent = lmp_self_index;
  atomic_store(&c->nkids, 0);
  if (lmp_self != NULL) atomic_fetch_add(&lmp_self->nkids, 1);
  atomic_store(&c->pid, 0);
  atomic_store(&c->sleeping, 0);
  atomic_store(&c->waiting_on, 0);
  atomic_store(&c->owed, 0);
  atomic_store(&c->in_futex, 0);
  atomic_store(&c->lock_wait, 0);
  c->pending_obj = 0;
  memset(c->pending_blk, 0, sizeof c->pending_blk);
  memset(c->dying, 0, sizeof c->dying);
  c->creating = c->grow_new = c->grow_old = 0;
  atomic_store(&c->counting, 0);
  c->refs = 0;
  atomic_fetch_add(&F->nprocs, 1);
  {
    hold_tab *mine = LMP_PTR(lmp_self->refs), *t;
    uint32_t j;
    t = tab_new(mine->cap);
    if (t == NULL) {
      atomic_fetch_sub(&F->nprocs, 1);
      atomic_store(&c->state, LMP_SLOT_FREE);
      return -ENOMEM;
    }
    /* The same hash layout; tombstones are dropped but probes still end at
     * the same empty entries, so copying positions is safe. */
    for (j = 0; inherit && j < mine->cap; j++) {
      uint64_t n = atomic_load(&mine->e[j].n);
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
  lmp_self = &F->slots[idx];
  lmp_robust_record(&lmp_self->lock_wait);
  atomic_store(&lmp_self->pid, (int32_t)getpid());
  atomic_store(&lmp_self->state, LMP_SLOT_LIVE);
}

/* Drops every reference in the slot's table.  A process killed on the
 * way (a clean exit cut short) leaves its reaper the rest to drop, the
 * entries dropped already at zero. */
static void drop_held(lmp_slot *s) {
  hold_tab *t;
  uint32_t j;
  if (s->refs == 0) return;
  t = LMP_PTR(s->refs);
  for (j = 0; j < t->cap; j++) {
    if (t->e[j].obj == 0 || atomic_load(&t->e[j].n) == 0) continue;
    atomic_store(&t->e[j].n, 1); /* handles: one reference for them all */
    lmp_obj_decref_counted(LMP_PTR(t->e[j].obj), &t->e[j].n);
  }
}

/* Drops every reference in the slot's table and frees the table, which
 * stays named until it is freed, in the same heap operation. */
static void release_refs(lmp_slot *s) {
  if (s->refs == 0) return;
  drop_held(s);
  lmp_heap_free(LMP_PTR(s->refs), &s->refs);
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
      if (types[o->type] != NULL && types[o->type]->on_exit != NULL)
        types[o->type]->on_exit(o);
    }
  }
  /* The table itself is freed by the reaper (lmp_slot_free), whose heap
   * pages are mapped already: here the heap's lock and lists would be the
   * first touch of their pages, a page fault each. */
  drop_held(lmp_self);
  atomic_store(&lmp_self->state, LMP_SLOT_DEAD);
}

static void unwatch_slot(uint32_t idx);

/* The reaper's part for an object a dead process was making: one that no
 * reference reached is destroyed; one that has a reference is someone's
 * (or leaks, if the process died as it took the first). */
static void settle_creating(lmp_slot *s) {
  lmp_off off = s->creating;
  lmp_obj *o;
  if (off == 0) return;
  o = LMP_PTR(off);
  s->creating = 0;
  if (o->magic != LMP_OBJ_MAGIC) { /* not made whole */
    lmp_free(o);
  } else if (lmp_obj_refs(o) == 0) {
    if (s->refs != 0) { /* a hold recorded, its reference not taken */
      hold_ent *fs, *e = tab_find(LMP_PTR(s->refs), off, &fs);
      if (e != NULL) atomic_store(&e->n, 0);
    }
    lmp_obj_discard(o);
  }
}

/* The end of a slot whose blocks the reaper has settled (safe.c). */
void lmp_slot_free(uint32_t idx) {
  lmp_slot *s = &F->slots[idx];
  unwatch_slot(idx);
  settle_growth(s);
  settle_creating(s);
  release_refs(s);
  atomic_store(&s->pid, 0);
  atomic_fetch_sub(&F->nprocs, 1);
  atomic_store(&s->state, LMP_SLOT_FREE);
}

int lmp_slot_wait_end(uint32_t idx, int ms) {
  lmp_slot *s = &F->slots[idx % LMP_MAX_PROCS];
  int32_t pid = atomic_load(&s->pid);
  struct pollfd p;
  int fd, r;
  if (pid <= 0) return 0;
  /* A pidfd is readable once the process has ended (a zombie too). */
  fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0) return errno == ESRCH || slot_dead(idx, 0) == 2;
  p.fd = fd;
  p.events = POLLIN;
  do r = poll(&p, 1, ms);
  while (r < 0 && errno == EINTR);
  close(fd);
  return r > 0 || slot_dead(idx, 0) == 2;
}

/* -------------------------------------------------------------- pending */

void *lmp_alloc_pending(lmp_obj *o, size_t n, int which) {
  return lmp_heap_alloc(n, &lmp_self->pending_obj, LMP_OFF(o),
                        &lmp_self->pending_blk[which]);
}

void *lmp_alloc_at(size_t n, lmp_off *where) {
  return lmp_heap_alloc(n, where, 0, where);
}

void lmp_free_pending(void *p, int which) {
  lmp_heap_free(p, &lmp_self->pending_blk[which]);
}

void lmp_pending_set(lmp_obj *o, void *blk, int which) {
  volatile lmp_slot *s = lmp_self;
  s->pending_obj = LMP_OFF(o);
  s->pending_blk[which] = LMP_OFF(blk);
}

void lmp_pending_clear(int which) {
  ((volatile lmp_slot *)lmp_self)->pending_blk[which] = 0;
}

/* ----------------------------------------------------------------- wake */

void lmp_futex_bump(_Atomic uint32_t *word, int n) {
  atomic_fetch_add(word, 1);
  syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

void lmp_futex_wake_all(lmp_off word) {
  if (word != 0)
    syscall(SYS_futex, LMP_PTR(word), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
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
  lmp_slot *s = &F->slots[idx];
  lmp_off w = atomic_load(&s->waiting_on);
  _Atomic uint32_t *ow = w != 0 ? (_Atomic uint32_t *)LMP_PTR(w) : NULL;
  /* The words are bumped first, and `in_futex` read after (both
   * sequentially consistent); a waiter sets it before it reads the word it
   * will sleep on.  So a waker that finds it 0 bumped before the waiter
   * read its word, and the waiter, which then checks its condition, sees
   * the change: no wait can miss this wake-up, and a process that is not
   * in a futex wait (most often, one busy running Lua) costs no syscall. */
  atomic_fetch_add(&s->wake, 1);
  if (ow != NULL) atomic_fetch_add(ow, 1);
  if (atomic_load(&s->in_futex)) {
    syscall(SYS_futex, &s->wake, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    if (ow != NULL) syscall(SYS_futex, ow, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
  }
  if (atomic_load(&s->sleeping) && s != lmp_self) {
    pid_t pid = atomic_load(&s->pid);
    if (pid > 0) kill(pid, SIGURG);
  }
}

/* ---------------------------------------------------------------- watch */

/*
 * The watch table: which process watches which object, for mp.wait and
 * for owners that must hear of changes while they wait for something
 * else.  It is small and shared by the family; a notifier touches it only
 * when the object's `watchers` count says someone is there.
 */

static void lock_watch(void) { lmp_robust_lock(&F->watch_lock); }

int lmp_watch(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i, fr = UINT32_MAX;
  lock_watch();
  for (i = 0; i < F->nwatch; i++) {
    if (F->watch[i].obj == off && F->watch[i].slot == lmp_self_index) {
      F->watch[i].n++;
      pthread_mutex_unlock(&F->watch_lock);
      return 0;
    }
    if (F->watch[i].obj == 0 && fr == UINT32_MAX) fr = i;
  }
  if (fr == UINT32_MAX) {
    if (F->nwatch == LMP_MAX_WATCH) {
      pthread_mutex_unlock(&F->watch_lock);
      return -EAGAIN;
    }
    fr = F->nwatch++;
  }
  F->watch[fr].slot = lmp_self_index;
  F->watch[fr].n = 1;
  F->watch[fr].obj = off;
  atomic_fetch_add(&o->watchers, 1);
  pthread_mutex_unlock(&F->watch_lock);
  return 0;
}

static void drop_watch(uint32_t i) {
  lmp_obj *o = LMP_PTR(F->watch[i].obj);
  atomic_fetch_sub(&o->watchers, 1);
  F->watch[i].obj = 0;
  while (F->nwatch > 0 && F->watch[F->nwatch - 1].obj == 0) F->nwatch--;
}

void lmp_unwatch(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i;
  lock_watch();
  for (i = 0; i < F->nwatch; i++) {
    if (F->watch[i].obj == off && F->watch[i].slot == lmp_self_index) {
      if (--F->watch[i].n == 0) drop_watch(i);
      break;
    }
  }
  pthread_mutex_unlock(&F->watch_lock);
}

static void unwatch_obj(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i;
  lock_watch();
  for (i = 0; i < F->nwatch; i++)
    if (F->watch[i].obj == off) drop_watch(i);
  pthread_mutex_unlock(&F->watch_lock);
}

static void unwatch_slot(uint32_t idx) {
  uint32_t i;
  lock_watch();
  for (i = 0; i < F->nwatch; i++)
    if (F->watch[i].obj != 0 && F->watch[i].slot == idx) drop_watch(i);
  pthread_mutex_unlock(&F->watch_lock);
}

void lmp_notify_watchers(lmp_obj *o) {
  lmp_off off = LMP_OFF(o);
  uint32_t i;
  if (atomic_load(&o->watchers) == 0) return;
  lock_watch();
  for (i = 0; i < F->nwatch; i++)
    if (F->watch[i].obj == off) lmp_wake(F->watch[i].slot);
  pthread_mutex_unlock(&F->watch_lock);
}
