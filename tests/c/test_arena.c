/* test_arena.c -- unit tests of the shared arena: allocation patterns,
 * several processes allocating at once, exhaustion, object references and
 * the release of a killed process's references. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arena/arena.h"

enum { T_TEST = 1, T_BAG }; /* T_TEST: a type of shared object with no hooks */

#include "check.h"

static size_t used(void) {
  lmp_arena_stats st;
  lmp_arena_stats_get(&st);
  return st.used;
}

static size_t reserved(void) {
  lmp_arena_stats st;
  lmp_arena_stats_get(&st);
  return st.reserved;
}

static unsigned long long rng = 88172645463325252ull;
static unsigned long long xorshift(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void test_patterns(void) {
  enum { N = 2000 };
  static char *p[N];
  static size_t sz[N];
  size_t base = used(), base_top = reserved();
  int i, round;
  /* Every size up to a few KiB: aligned, writable, disjoint. */
  for (i = 0; i < N; i++) {
    sz[i] = (size_t)(i * 7 % 3000) + 1;
    p[i] = lmp_alloc(sz[i]);
    ASSERT_TRUE(p[i] != NULL);
    ASSERT_EQ((uintptr_t)p[i] % 16, 0);
    ASSERT_GE(lmp_usable(p[i]), sz[i]);
    memset(p[i], i & 0xff, sz[i]);
  }
  for (i = 0; i < N; i++) {
    size_t k;
    for (k = 0; k < sz[i]; k++)
      if ((unsigned char)p[i][k] != (i & 0xff)) break;
    ASSERT_EQ(k, sz[i]);
  }
  /* Free the odd ones, reallocate, free all: back to where we started. */
  for (i = 1; i < N; i += 2) lmp_free(p[i]);
  for (i = 1; i < N; i += 2) p[i] = lmp_alloc(sz[i]);
  for (i = 0; i < N; i++) lmp_free(p[i]);
  ASSERT_EQ(used(), base);
  ASSERT_EQ(reserved(), base_top);
  /* Random churn with large blocks mixed in. */
  memset(p, 0, sizeof p);
  for (round = 0; round < 200000; round++) {
    int k = (int)(xorshift() % N);
    if (p[k] != NULL) {
      lmp_free(p[k]);
      p[k] = NULL;
    } else {
      unsigned long long r = xorshift();
      sz[k] = (r % 100 == 0) ? (size_t)(r % (1 << 20)) : (size_t)(r % 512);
      p[k] = lmp_alloc(sz[k]);
      ASSERT_TRUE(p[k] != NULL);
      if (p[k] != NULL && sz[k] > 0) p[k][sz[k] - 1] = 1;
    }
  }
  for (i = 0; i < N; i++) lmp_free(p[i]);
  ASSERT_EQ(used(), base);
  ASSERT_EQ(reserved(), base_top);
  lmp_free(NULL);
}

static void test_exhaustion(void) {
  enum { MAXB = 4096 };
  static void *blocks[MAXB];
  lmp_arena_stats st;
  void *p;
  size_t base = used();
  int n = 0, i;
  lmp_arena_stats_get(&st);
  ASSERT_TRUE(lmp_alloc(st.size) == NULL); /* more than there is */
  ASSERT_TRUE(lmp_alloc((size_t)-1) == NULL);
  while (n < MAXB && (blocks[n] = lmp_alloc(1 << 20)) != NULL) n++;
  ASSERT_TRUE(n > 0 && n < MAXB); /* it runs out, and does not crash */
  ASSERT_TRUE(lmp_alloc(1 << 20) == NULL);
  p = lmp_alloc(1000); /* smaller blocks may still fit at the top */
  lmp_free(p);
  lmp_free(blocks[n / 2]); /* and it recovers once memory is freed */
  blocks[n / 2] = lmp_alloc(1 << 20);
  ASSERT_TRUE(blocks[n / 2] != NULL);
  for (i = 0; i < n; i++) lmp_free(blocks[i]);
  ASSERT_EQ(used(), base);
}

/* Several processes allocate and free at once; each checks its blocks
 * were not touched by the others. */
static void test_concurrent(void) {
  enum { PROCS = 4, ROUNDS = 20000, KEEP = 64 };
  size_t base = used();
  int i;
  pid_t pids[PROCS];
  for (i = 0; i < PROCS; i++) {
    pids[i] = fork();
    if (pids[i] == 0) {
      unsigned char *mine[KEEP] = {0};
      size_t len[KEEP] = {0};
      int r, bad = 0;
      rng = 1234567u * (unsigned)(i + 1);
      for (r = 0; r < ROUNDS; r++) {
        int k = (int)(xorshift() % KEEP);
        if (mine[k] != NULL) {
          size_t j;
          for (j = 0; j < len[k]; j++)
            if (mine[k][j] != (unsigned char)(i + 1)) bad++;
          lmp_free(mine[k]);
          mine[k] = NULL;
        } else {
          len[k] = (size_t)(xorshift() % 2000) + 1;
          mine[k] = lmp_alloc(len[k]);
          if (mine[k] == NULL) _exit(3);
          memset(mine[k], i + 1, len[k]);
        }
      }
      for (r = 0; r < KEEP; r++) lmp_free(mine[r]);
      _exit(bad ? 2 : 0);
    }
  }
  for (i = 0; i < PROCS; i++) {
    int status;
    waitpid(pids[i], &status, 0);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
  }
  ASSERT_EQ(used(), base);
}

/* A child holds objects and is killed: its reaper releases them. */
static void test_killed_holder(void) {
  lmp_arena_stats st;
  size_t base;
  lmp_obj *o;
  int slot, status;
  pid_t pid;
  int fds[2];
  char c;
  lmp_arena_stats_get(&st);
  base = st.objects;
  o = lmp_obj_new(T_TEST, 0, 64);
  ASSERT_TRUE(o != NULL);
  ASSERT_EQ(lmp_hold(o), 0);
  ASSERT_EQ(lmp_obj_refs(o), 1);
  ASSERT_EQ(pipe(fds), 0);
  slot = lmp_slot_prepare(1);
  ASSERT_TRUE(slot > 0);
  ASSERT_EQ(lmp_obj_refs(o), 2); /* the child's share */
  pid = fork();
  if (pid == 0) {
    int k;
    lmp_slot_adopt((uint32_t)slot);
    for (k = 0; k < 1000; k++) { /* many objects, held and never freed */
      lmp_obj *x = lmp_obj_new(T_TEST, 0, 100);
      if (x == NULL || lmp_hold(x) < 0) _exit(2);
    }
    if (write(fds[1], "x", 1) != 1) _exit(2);
    pause();
    _exit(0);
  }
  ASSERT_EQ(read(fds[0], &c, 1), 1);
  lmp_arena_stats_get(&st);
  ASSERT_EQ(st.objects, base + 1001);
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  lmp_slot_release((uint32_t)slot);
  lmp_arena_stats_get(&st);
  ASSERT_EQ(st.objects, base + 1);
  ASSERT_EQ(lmp_obj_refs(o), 1);
  lmp_unhold(o);
  lmp_arena_stats_get(&st);
  ASSERT_EQ(st.objects, base);
  ASSERT_TRUE(!lmp_obj_check(LMP_OFF(o), -1));
  close(fds[0]);
  close(fds[1]);
}

static void test_hold_table(void) {
  enum { N = 5000 };
  static lmp_obj *objs[N];
  size_t base = used();
  int i;
  for (i = 0; i < N; i++) {
    objs[i] = lmp_obj_new(T_TEST, 0, 32);
    ASSERT_EQ(lmp_hold(objs[i]), 0);
    ASSERT_EQ(lmp_hold(objs[i]), 0); /* a second handle */
  }
  for (i = 0; i < N; i++) {
    ASSERT_EQ(lmp_obj_refs(objs[i]), 1);
    ASSERT_TRUE(lmp_obj_check(LMP_OFF(objs[i]), T_TEST));
    lmp_unhold(objs[i]);
  }
  for (i = 0; i < N; i++) lmp_unhold(objs[i]);
  /* The table itself may stay; nothing else does. */
  ASSERT_TRUE(used() - base < (size_t)N * 64);
  ASSERT_TRUE(!lmp_obj_check(0, -1));
  ASSERT_TRUE(!lmp_obj_check(12345, -1));
  ASSERT_TRUE(!lmp_obj_check((lmp_off)1 << 62, -1));
}

static void test_parse_size(void) {
  size_t n;
  ASSERT_EQ(lmp_parse_size("64M", &n), 0);
  ASSERT_EQ(n, 64 << 20);
  ASSERT_EQ(lmp_parse_size("2g", &n), 0);
  ASSERT_EQ(n, 2ull << 30);
  ASSERT_EQ(lmp_parse_size("512KiB", &n), 0);
  ASSERT_EQ(n, 512 << 10);
  ASSERT_EQ(lmp_parse_size("12x", &n), -22);
  ASSERT_EQ(lmp_parse_size("", &n), -22);
  /* A unit that would carry the size past 64 bits is refused, not
   * wrapped. */
  ASSERT_EQ(lmp_parse_size("16777215T", &n), 0);
  ASSERT_EQ(n, 16777215ull << 40);
  ASSERT_EQ(lmp_parse_size("16777216T", &n), -22);
  ASSERT_EQ(lmp_parse_size("17179869185G", &n), -22);
  ASSERT_EQ(lmp_parse_size("99999999999G", &n), -22);
}

static void check_heap(const char *when) {
  const char *why = "";
  int rc = lmp_arena_check(&why);
  if (rc != 0) CHECK_FAIL("heap broken %s: %s", when, why);
}

/* Objects mixed with blocks of every size, made and freed at random:
 * each object starts OBJ_PHASE bytes into a cache line (its guard and
 * the field after it in the next line), the heap stays whole and gives
 * back all it took. */
static void test_object_placement(void) {
  enum { N = 400 };
  static void *p[N];
  static int isobj[N];
  size_t base = used();
  int round, i;
  for (round = 0; round < 20000; round++) {
    int k = (int)(xorshift() % N);
    if (p[k] != NULL) {
      if (isobj[k]) lmp_obj_discard(p[k]);
      else lmp_free(p[k]);
      p[k] = NULL;
      continue;
    }
    isobj[k] = (int)(xorshift() % 2);
    if (isobj[k]) {
      lmp_obj *o = lmp_obj_new(T_TEST, 0, 24 + (size_t)(xorshift() % 300));
      ASSERT_TRUE(o != NULL);
      if ((LMP_OFF(o) + 16) % 64 != 0)
        CHECK_FAIL("object at %llu, not 48 bytes into a line",
                   (unsigned long long)LMP_OFF(o));
      p[k] = o;
    } else {
      p[k] = lmp_alloc(1 + (size_t)(xorshift() % 2000));
      ASSERT_TRUE(p[k] != NULL);
    }
  }
  check_heap("after placing objects");
  for (i = 0; i < N; i++) {
    if (p[i] == NULL) continue;
    if (isobj[i]) lmp_obj_discard(p[i]);
    else lmp_free(p[i]);
  }
  check_heap("after freeing them");
  ASSERT_EQ(used(), base);
}

/* What the tests before it did leaves the heap whole. */
static void test_heap_whole(void) {
  check_heap("after the unit tests");
}

/* Processes allocating and freeing as fast as they can are killed at
 * random moments, many times; the heap must stay whole.  Most of the
 * allocations name their block pending (in words of the arena, as a
 * slot's are), which zeroes the block's first words: an allocation undone
 * after a kill must give them back. */
static void test_killed_in_the_middle(void) {
  enum { KILLS = 2000 };
  lmp_off *words = lmp_calloc(2 * sizeof(lmp_off));
  int k;
  ASSERT_TRUE(words != NULL);
  if (words == NULL) return;
  for (k = 0; k < KILLS; k++) {
    pid_t pid = fork();
    if (pid == 0) {
      void *keep[32] = {0};
      unsigned long long r = 0x9e3779b97f4a7c15ull * (unsigned)(k + 1);
      for (;;) {
        int j;
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        j = (int)(r % 32);
        lmp_free(keep[j]);
        if (r % 3 == 0) /* placed as an object is */
          keep[j] = lmp_heap_alloc_obj((size_t)(r >> 40) % 3000, NULL, 0,
                                       NULL);
        else if (r % 7 == 0)
          keep[j] = lmp_alloc((size_t)(r >> 40) % 400000);
        else /* named pending */
          keep[j] = lmp_heap_alloc((size_t)(r >> 40) % 3000, &words[0], 1,
                                   &words[1]);
      }
    }
    usleep((useconds_t)(xorshift() % 1000));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    if (k % 50 == 0) check_heap("during the kills");
  }
  /* The next lock repairs what the last victim left, if anything. */
  lmp_free(lmp_alloc(64));
  check_heap("after the kills");
  lmp_free(words);
}

/* A counted change cut short after each of its steps (see family.c), as
 * a killed process leaves it in its slot: the reaper leaves the count
 * equal to the references it stands for, and the object unmarked. */
static void test_counted_cut_short(void) {
  lmp_obj *o = lmp_obj_new(T_TEST, 0, 64);
  _Atomic uint64_t *count = lmp_alloc(sizeof *count);
  int dir, step;
  ASSERT_TRUE(o != NULL && count != NULL);
  ASSERT_EQ(lmp_hold(o), 0);
  for (dir = 1; dir >= -1; dir -= 2) {
    for (step = 1; step <= 4; step++) {
      int idx = lmp_slot_prepare(0);
      lmp_slot *s;
      uint64_t before = dir > 0 ? 3 : 4, mark;
      if (idx <= 0) CHECK_FAIL("slot_prepare: %d", idx);
      s = lmp_slot_at((uint32_t)idx);
      mark = (uint64_t)(idx + 1) << 32;
      /* refs: ours, and one for each in *count. */
      atomic_store(&o->refs, 1 + before);
      atomic_store(count, before);
      s->count_at = LMP_OFF(count);
      s->count_before = before;
      s->count_dir = dir;
      atomic_store(&s->counting, LMP_OFF(o));
      if (step >= 2) atomic_fetch_add(&o->refs, mark + (dir > 0));
      if (step >= 3) atomic_fetch_add(count, (uint64_t)(int64_t)dir);
      if (step >= 4) atomic_fetch_sub(&o->refs, mark + (dir < 0));
      lmp_slot_release((uint32_t)idx);
      ASSERT_EQ(atomic_load(&o->refs) >> 32, 0);
      ASSERT_EQ(lmp_obj_refs(o), 1 + atomic_load(count));
      ASSERT_EQ(atomic_load(count),
                step <= (dir > 0 ? 1 : 2) ? before : before + dir);
      ASSERT_EQ(atomic_load(&s->counting), 0);
    }
  }
  atomic_store(&o->refs, 1);
  lmp_unhold(o);
  ASSERT_TRUE(!lmp_obj_check(LMP_OFF(o), -1));
  lmp_free((void *)count);
}

/* A counted change that finds the mark of a process that died in the
 * middle of its own (here a slot with no process) settles that change
 * itself, as the reaper would, and then makes its own marked: the dead
 * one's record is cleared before any reaper runs, and the counts agree. */
static void test_counted_dead_marker(void) {
  lmp_obj *o = lmp_obj_new(T_TEST, 0, 64);
  _Atomic uint64_t *dc = lmp_alloc(sizeof *dc), *wc = lmp_alloc(sizeof *wc);
  int dir, step;
  ASSERT_TRUE(o != NULL && dc != NULL && wc != NULL);
  ASSERT_EQ(lmp_hold(o), 0);
  for (dir = 1; dir >= -1; dir -= 2) {
    for (step = 2; step <= 3; step++) {
      int idx = lmp_slot_prepare(0);
      lmp_slot *s;
      uint64_t before = dir > 0 ? 0 : 1, mark, want;
      if (idx <= 0) CHECK_FAIL("slot_prepare: %d", idx);
      s = lmp_slot_at((uint32_t)idx);
      mark = (uint64_t)(idx + 1) << 32;
      /* refs: ours, and one for each in *dc; the dead one's change cut
       * short after `step`. */
      atomic_store(&o->refs, 1 + before);
      atomic_store(dc, before);
      atomic_store(wc, 0);
      s->count_at = LMP_OFF(dc);
      s->count_before = before;
      s->count_dir = dir;
      atomic_store(&s->counting, LMP_OFF(o));
      atomic_fetch_add(&o->refs, mark + (dir > 0));
      if (step >= 3) atomic_fetch_add(dc, (uint64_t)(int64_t)dir);
      lmp_obj_incref_counted(o, wc);
      ASSERT_EQ(atomic_load(&s->counting), 0);
      ASSERT_EQ(atomic_load(&o->refs) >> 32, 0);
      /* An incref's reference is in and counted; a decref's is dropped
       * once its count went, else still counted. */
      want = dir > 0 ? before + 1 : step >= 3 ? before - 1 : before;
      ASSERT_EQ(atomic_load(dc), want);
      ASSERT_EQ(atomic_load(wc), 1);
      ASSERT_EQ(lmp_obj_refs(o), 1 + want + 1);
      lmp_slot_release((uint32_t)idx);
      ASSERT_EQ(lmp_obj_refs(o), 1 + want + 1);
    }
  }
  atomic_store(&o->refs, 1);
  lmp_unhold(o);
  ASSERT_TRUE(!lmp_obj_check(LMP_OFF(o), -1));
  lmp_free((void *)dc);
  lmp_free((void *)wc);
}

/* Runs step(ud) over and over in a child that adopts a slot prepared
 * here, kills it at a random moment within 2 ms, reaps it and releases
 * its slot, as a parent does. */
static void run_killed(void (*step)(void *), void *ud) {
  int slot = lmp_slot_prepare(1);
  pid_t pid;
  if (slot <= 0) {
    CHECK_FAIL("slot_prepare: %d", slot);
    return;
  }
  pid = fork();
  if (pid == 0) {
    lmp_slot_adopt((uint32_t)slot);
    for (;;) step(ud);
  }
  usleep((useconds_t)(xorshift() % 2000));
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  lmp_slot_release((uint32_t)slot);
}

static void rehold(void *ud) {
  lmp_unhold(ud);
  if (lmp_hold(ud) < 0) _exit(2);
}

/* A child takes and drops its only handle to an object as fast as it can
 * (each a counted change of its hold table) and is killed at random
 * moments: every time, its reaper leaves the object with our reference
 * alone. */
static void test_counted_killed(void) {
  enum { KILLS = 300 };
  lmp_obj *o = lmp_obj_new(T_TEST, 0, 64);
  int k;
  ASSERT_TRUE(o != NULL);
  ASSERT_EQ(lmp_hold(o), 0);
  for (k = 0; k < KILLS; k++) {
    run_killed(rehold, o);
    if (lmp_obj_refs(o) != 1 || atomic_load(&o->refs) >> 32 != 0)
      CHECK_FAIL("kill %d left refs %#llx", k,
                 (unsigned long long)atomic_load(&o->refs));
  }
  lmp_unhold(o);
  ASSERT_TRUE(!lmp_obj_check(LMP_OFF(o), -1));
}

/* A bag: a shared object that owns blocks and counts references to
 * another object, and whose dtor lets go of them the way every type's
 * does, so that a run cut short can run again. */
enum { BAG_BLOCKS = 48, BAG_REFS = 16 };
typedef struct bag {
  lmp_obj h;
  lmp_off tag;
  lmp_off blk[BAG_BLOCKS];
  lmp_off other;
  _Atomic uint64_t nrefs;
} bag;

static void bag_dtor(lmp_obj *o) {
  bag *b = (bag *)o;
  int i;
  for (i = 0; i < BAG_BLOCKS; i++)
    if (b->blk[i] != 0) lmp_heap_free(LMP_PTR(b->blk[i]), &b->blk[i]);
  while (atomic_load(&b->nrefs) > 0)
    lmp_obj_decref_counted(LMP_PTR(b->other), &b->nrefs);
}

static const lmp_type bag_type = {.name = "bag", .dtor = bag_dtor};

/* Makes a bag of blocks and references to `other`, and drops it. */
static void bag_cycle(void *other) {
  bag *b = (bag *)lmp_obj_new(T_BAG, 0, sizeof(bag));
  int i;
  if (b == NULL || lmp_hold(&b->h) < 0) _exit(2);
  b->other = LMP_OFF(other);
  for (i = 0; i < BAG_BLOCKS; i++)
    if (lmp_heap_alloc(64, &b->tag, 0, &b->blk[i]) == NULL) _exit(2);
  for (i = 0; i < BAG_REFS; i++) lmp_obj_incref_counted(other, &b->nrefs);
  lmp_unhold(&b->h);
}

/* A child makes bags (each holding blocks and references to `other`) and
 * drops them, as fast as it can, and is killed at random moments, many
 * of them inside a bag's destruction: every time, once its reaper has
 * run, no block, object or reference of its is left. */
static void test_destroy_killed(void) {
  enum { KILLS = 300 };
  lmp_obj *other = lmp_obj_new(T_TEST, 0, 64);
  lmp_arena_stats st;
  size_t blocks, objects;
  int k;
  lmp_type_set(T_BAG, &bag_type);
  ASSERT_TRUE(other != NULL);
  ASSERT_EQ(lmp_hold(other), 0);
  lmp_arena_stats_get(&st);
  blocks = st.blocks;
  objects = st.objects;
  for (k = 0; k < KILLS; k++) {
    run_killed(bag_cycle, other);
    lmp_arena_stats_get(&st);
    if (lmp_obj_refs(other) != 1 || st.blocks != blocks ||
        st.objects != objects)
      CHECK_FAIL("kill %d left %u references, %zu blocks, %zu objects "
                 "(not 1, %zu, %zu)", k, lmp_obj_refs(other), st.blocks,
                 st.objects, blocks, objects);
  }
  lmp_unhold(other);
  ASSERT_TRUE(!lmp_obj_check(LMP_OFF(other), -1));
}

/* Does every page of [p, p+n) have its memory?  (Pages given back to the
 * kernel have none until touched again.) */
static int resident(const char *p, size_t n) {
  uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
  uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)4095;
  static unsigned char vec[(8u << 20) / 4096];
  size_t i, pages = (b - a) / 4096;
  if (pages > sizeof vec || mincore((void *)a, b - a, vec) < 0) return -1;
  for (i = 0; i < pages; i++)
    if (!(vec[i] & 1)) return 0;
  return 1;
}

/* Large freed blocks keep their pages within the budget (a quarter of a
 * 64 MiB arena): three neighbours freed one after another merge into one
 * free block, and the budget counts each once, not the merged block
 * again at every merge. */
static void test_large_keep_pages(void) {
  enum { MB4 = 4u << 20 };
  char *a = lmp_alloc(MB4), *b = lmp_alloc(MB4), *c = lmp_alloc(MB4);
  char *fence = lmp_alloc(64); /* so that c does not end at the top */
  ASSERT_TRUE(a != NULL && b != NULL && c != NULL && fence != NULL);
  memset(a, 1, MB4);
  memset(b, 2, MB4);
  memset(c, 3, MB4);
  lmp_free(a);
  lmp_free(b);
  lmp_free(c);
  ASSERT_EQ(resident(a + 4096, MB4 - 8192), 1);
  ASSERT_EQ(resident(c + 4096, MB4 - 8192), 1);
  lmp_free(fence);
  check_heap("after the large blocks");
}

/* A realloc that returns the block ud names, wherever it is. */
static void *at(void *ud, void *ptr, size_t osize, size_t n) {
  (void)ptr;
  (void)osize;
  (void)n;
  return ud;
}

/* lmp_populate_grown faults in the fresh pages of a grown block: the
 * grown part of glibc's mapping of one block (which starts two words into
 * a page), or the heap's growth during the call; not a growth below
 * LMP_POPULATE_MIN (lmp_realloc_fresh asks for none), nor another
 * allocator's block, nor the heap's pages when the break did not move. */
static void test_populate(void) {
  enum { PAGE = 4096, PAGES = 256, GROW = 64 * PAGE };
  const size_t head = 2 * sizeof(size_t); /* glibc's block header */
  char *m = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char *brk0, *brk1;
  ASSERT_TRUE(m != MAP_FAILED);
  if (lmp_populate(m, PAGE) == -EINVAL) { /* a kernel before 5.14 */
    fprintf(stderr, "  (MADV_POPULATE_WRITE unsupported: not checked)\n");
    munmap(m, PAGES * PAGE);
    return;
  }
  ASSERT_TRUE(lmp_realloc_fresh(at, m + 4 * PAGE + head, NULL, 0, 0,
                                LMP_POPULATE_MIN - 1) == m + 4 * PAGE + head);
  ASSERT_EQ(resident(m + 4 * PAGE, PAGE), 0);
  lmp_populate_grown(m + 4 * PAGE + 100, 0, GROW, lmp_brk());
  ASSERT_EQ(resident(m + 4 * PAGE, PAGE), 0); /* not glibc's mapping */
  ASSERT_TRUE(lmp_realloc_fresh(at, m + 4 * PAGE + head, NULL, 0, 0,
                                GROW) == m + 4 * PAGE + head);
  ASSERT_EQ(resident(m + 4 * PAGE, 65 * PAGE), 1); /* a few bytes into 68 */
  ASSERT_EQ(resident(m + 3 * PAGE, PAGE), 0);
  ASSERT_EQ(resident(m + 69 * PAGE, PAGE), 0);
  ASSERT_EQ(m[4 * PAGE + head], 0); /* nothing written */
  lmp_populate_grown(m + 100 * PAGE + head, 32 * PAGE, 96 * PAGE,
                     lmp_brk());
  ASSERT_EQ(resident(m + 133 * PAGE, 63 * PAGE), 1);
  ASSERT_EQ(resident(m + 131 * PAGE, PAGE), 0); /* the old part: not asked */
  munmap(m, PAGES * PAGE);
  /* The heap: its growth, only when the break moved during the call. */
  brk0 = lmp_brk();
  ASSERT_TRUE(sbrk(GROW) != (void *)-1);
  brk1 = lmp_brk();
  lmp_populate_grown(brk0, 0, GROW, brk1);
  ASSERT_EQ(resident(brk0, (size_t)(brk1 - brk0)), 0);
  lmp_populate_grown(brk0, 0, GROW, brk0);
  ASSERT_EQ(resident(brk0, (size_t)(brk1 - brk0)), 1);
  ASSERT_TRUE(sbrk(-(intptr_t)GROW) != (void *)-1);
}

int main(void) {
  static const check_test tests[] = {
    CHECK(test_parse_size),    CHECK(test_patterns),
    CHECK(test_exhaustion),    CHECK(test_concurrent),
    CHECK(test_killed_holder), CHECK(test_hold_table),
    CHECK(test_object_placement), CHECK(test_heap_whole),
    CHECK(test_large_keep_pages), CHECK(test_counted_cut_short),
    CHECK(test_counted_killed),   CHECK(test_counted_dead_marker),
    CHECK(test_destroy_killed),
    CHECK(test_killed_in_the_middle), CHECK(test_populate),
  };
  int rc = lmp_arena_init(64u << 20);
  if (rc < 0) {
    fprintf(stderr, "arena init failed: %d\n", rc);
    return 1;
  }
  return check_run(tests, CHECK_COUNT(tests));
}
