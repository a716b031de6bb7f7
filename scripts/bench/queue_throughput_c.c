/* queue_throughput_c.c -- the floors of queue_throughput.lua.
 *
 * ints: what luamp's queue does for a small message, in C alone: one
 * producer process and one consumer process share a ring of records
 * (a length, flags, an 8-byte integer) with two ends, each with a robust
 * process-shared mutex taken as luamp takes it (trylocks with pauses that
 * double between them, then a sleep in the kernel), and each end's lock,
 * and its position with what it last saw of the other's, on lines of
 * their own; a put appends under the tail's lock and wakes the consumer
 * with a futex only if it sleeps; a get takes the oldest under the head's
 * lock, and on an empty ring spins (4000 pauses) before it sleeps on the
 * futex.  No Lua, no codec, no arena: the locks, the copy, the commit and
 * the hand-over of cache lines between cores.
 *
 * big: one memcpy of the payload between two buffers whose pages are
 * already there, the least any carrier must do.
 *
 * Prints: ints <M msg/s> M/s (the median of ROUNDS streams of N_INTS),
 *         big <GB/s> GB/s (the median of ROUNDS copies)
 * Usage: queue_throughput_c [ROUNDS=16] [N_INTS=200000] */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "twin.h"

#if defined(__x86_64__) || defined(__i386__)
#define relax() __builtin_ia32_pause()
#else
#define relax() __asm__ __volatile__("" ::: "memory")
#endif

enum { RING = 1 << 23, WARM = 1000 };

typedef struct rec {
  uint32_t len, flags;
  int64_t v;
} rec;

typedef struct shq {
  _Alignas(64) pthread_mutex_t tmu;
  _Alignas(64) _Atomic uint64_t tail;
  uint64_t seen_head;
  _Alignas(64) pthread_mutex_t hmu;
  _Alignas(64) _Atomic uint64_t head;
  uint64_t seen_tail;
  _Alignas(64) _Atomic uint32_t get_seq, getters;
  _Alignas(64) char data[RING];
} shq;

/* As lmp_robust_lock: 8 trylocks, 4 to 512 pauses between them. */
static void qlock(pthread_mutex_t *mu) {
  int i, rc, k;
  for (i = 0; (rc = pthread_mutex_trylock(mu)) == EBUSY && i < 8; i++)
    for (k = 0; k < 4 << i; k++) relax();
  if (rc == EBUSY) rc = pthread_mutex_lock(mu);
  if (rc == EOWNERDEAD) pthread_mutex_consistent(mu);
}

/* The ring holds every message of a stream: room is never short, and the
 * head is not read (luamp's put reads it only when its copy says full). */
static void put(shq *q, int64_t v) {
  rec *r;
  uint64_t t;
  qlock(&q->tmu);
  t = atomic_load_explicit(&q->tail, memory_order_relaxed);
  r = (rec *)(q->data + (t & (RING - 1)));
  r->len = sizeof r->v;
  r->flags = 0;
  r->v = v;
  atomic_store_explicit(&q->tail, t + sizeof *r, memory_order_release);
  pthread_mutex_unlock(&q->tmu);
  if (atomic_load(&q->getters) > 0) {
    atomic_fetch_add(&q->get_seq, 1);
    syscall(SYS_futex, &q->get_seq, FUTEX_WAKE, 1, NULL, NULL, 0);
  }
}

static int has_item(shq *q) {
  return atomic_load(&q->tail) != atomic_load(&q->head);
}

static int64_t get(shq *q) {
  int64_t v;
  uint64_t h;
  for (;;) {
    uint32_t seen;
    int k;
    qlock(&q->hmu);
    h = atomic_load_explicit(&q->head, memory_order_relaxed);
    if (q->seen_tail != h) break;
    q->seen_tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    if (q->seen_tail != h) break;
    pthread_mutex_unlock(&q->hmu);
    for (k = 0; k < 4000 && !has_item(q); k++) relax();
    if (has_item(q)) continue;
    seen = atomic_load(&q->get_seq);
    atomic_fetch_add(&q->getters, 1);
    if (!has_item(q))
      syscall(SYS_futex, &q->get_seq, FUTEX_WAIT, seen, NULL, NULL, 0);
    atomic_fetch_sub(&q->getters, 1);
  }
  v = ((rec *)(q->data + (h & (RING - 1))))->v;
  atomic_store(&q->head, h + sizeof(rec)); /* the commit */
  pthread_mutex_unlock(&q->hmu);
  return v;
}

/* One stream of n small messages after WARM ones: messages per second. */
static double stream(shq *q, long n) {
  pthread_mutexattr_t a;
  pid_t pid;
  long i;
  int64_t sum = 0;
  double t0, dt;
  memset(q, 0, offsetof(shq, data));
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&q->tmu, &a);
  pthread_mutex_init(&q->hmu, &a);
  pid = fork();
  if (pid == 0) {
    for (i = 0; i < WARM + n; i++) put(q, 12345);
    _exit(0);
  }
  for (i = 0; i < WARM; i++) sum += get(q);
  t0 = now();
  for (i = 0; i < n; i++) sum += get(q);
  dt = now() - t0;
  waitpid(pid, NULL, 0);
  if (sum != (int64_t)(WARM + n) * 12345) abort();
  return (double)n / dt;
}

int main(int argc, char **argv) {
  size_t n = (size_t)64 << 20;
  int i, rounds = argc > 1 ? atoi(argv[1]) : 16;
  long n_ints = argc > 2 ? atol(argv[2]) : 200000;
  shq *q = mmap(NULL, sizeof *q, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  char *src = malloc(n), *dst = malloc(n);
  double *dt;
  if (rounds < 1) rounds = 16;
  if (n_ints < 1 || n_ints + WARM > RING / (long)sizeof(rec))
    n_ints = 200000;
  dt = malloc(sizeof *dt * (size_t)rounds);
  if (src == NULL || dst == NULL || dt == NULL || q == MAP_FAILED) return 1;
  for (i = 0; i < rounds; i++) dt[i] = stream(q, n_ints);
  qsort(dt, (size_t)rounds, sizeof *dt, cmp_double);
  printf("ints %.3f M/s\n", dt[rounds / 2] / 1e6);
  memset(src, 'x', n);
  memset(dst, 0, n);
  for (i = 0; i < rounds; i++) {
    double t0 = now();
    memcpy(dst, src, n);
    dt[i] = now() - t0;
    src[i] = dst[n - 1 - (size_t)i]; /* keep each copy observable */
  }
  qsort(dt, (size_t)rounds, sizeof *dt, cmp_double);
  printf("big %.3f GB/s\n", (double)n / dt[rounds / 2] / 1e9);
  return dst[0] == 0;
}
