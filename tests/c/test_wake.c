/* test_wake.c -- the wake-up protocol between processes: a process asleep
 * in lmp_wait on its own wake word, and another that changes what it waits
 * for and wakes it with lmp_wake, which makes the futex system call only
 * when the sleeper says it may be in a futex wait.  No wake-up may be
 * lost, wherever it falls: before the sleeper reads its word, between its
 * check and its sleep, or while it sleeps. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/runtime.h"

enum { T_TEST = 1 }; /* a type of shared object with no hooks */

#include "check.h"

#define HANDOFFS 20000
#define PATIENCE 5.0 /* seconds: far beyond any wake-up's latency */

typedef struct turn {
  lmp_obj h;
  _Atomic uint32_t n; /* whose turn: odd the child's, even the parent's */
} turn;

typedef struct want {
  turn *t;
  uint32_t n;
} want;

static int is_turn(void *ud) {
  want *w = ud;
  return atomic_load(&w->t->n) == w->n;
}

/* Busy for a while before move k: not at all, a microsecond or 50, so
 * that the other process is still running, on its way to sleep, or
 * asleep when it is woken. */
static void pause_before(uint32_t k) {
  double until = lmp_now() + (k % 3 == 0 ? 0 : k % 3 == 1 ? 1e-6 : 50e-6);
  while (lmp_now() < until) continue;
}

/* Waits, asleep, for turn n; 0 if it did not come within PATIENCE. */
static int wait_turn(turn *t, uint32_t n) {
  want w = {t, n};
  return lmp_wait(NULL, is_turn, &w, lmp_now() + PATIENCE) == 1;
}

/* The two processes hand the turn to each other HANDOFFS times, each
 * waking the other after its move and going to sleep until its next
 * turn: most wake-ups land while the other is on its way to sleep. */
static void test_handoffs_lose_no_wakeup(void) {
  turn *t = (turn *)lmp_obj_new(T_TEST, 0, sizeof(turn));
  uint32_t parent = lmp_self_index, k;
  int slot, status, lost = 0;
  pid_t pid;
  ASSERT_TRUE(t != NULL);
  if (t == NULL) return;
  ASSERT_EQ(lmp_hold(&t->h), 0);
  atomic_store(&t->n, 0);
  slot = lmp_slot_prepare(0);
  ASSERT_TRUE(slot > 0);
  pid = fork();
  if (pid == 0) {
    lmp_slot_adopt((uint32_t)slot);
    for (k = 1; k < HANDOFFS; k += 2) {
      if (!wait_turn(t, k)) _exit(3); /* a wake-up was lost */
      pause_before(k);
      atomic_store(&t->n, k + 1);
      lmp_wake(parent);
    }
    _exit(0);
  }
  ASSERT_TRUE(pid > 0);
  for (k = 0; k + 2 <= HANDOFFS; k += 2) {
    pause_before(k / 2);
    atomic_store(&t->n, k + 1);
    lmp_wake((uint32_t)slot);
    if (!wait_turn(t, k + 2)) {
      lost = 1;
      break;
    }
  }
  if (lost) kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  ASSERT_EQ(lost, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  lmp_slot_release((uint32_t)slot);
  lmp_unhold(&t->h);
}

int main(void) {
  static const check_test tests[] = {
    CHECK(test_handoffs_lose_no_wakeup),
  };
  int rc = lmp_arena_init(16u << 20);
  if (rc < 0) {
    fprintf(stderr, "arena init failed: %d\n", rc);
    return 1;
  }
  return check_run(tests, CHECK_COUNT(tests));
}
