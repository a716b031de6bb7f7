/* test_wake.c -- the wake-up protocols between processes.  A process
 * asleep in lmp_wait on its own wake word, and another that changes what
 * it waits for and wakes it with lmp_wake, which makes the futex system
 * call only when the sleeper says it may be in a futex wait: no wake-up
 * may be lost, wherever it falls (before the sleeper reads its word,
 * between its check and its sleep, or while it sleeps).  And processes
 * asleep on a robust mutex, or on a word bumped for one of them (a
 * queue's for its getters): the one woken dies before it takes what it
 * was woken for, and the others still get it. */
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
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
  _Atomic uint32_t word; /* a word to sleep on, for the sleepers of n */
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

typedef struct lockbox {
  lmp_obj h;
  pthread_mutex_t mu;
} lockbox;

/* Waits until process pid sleeps in a futex wait (its system call, in
 * /proc/<pid>/syscall, is futex's); 0 if it did not within PATIENCE. */
static int asleep_in_futex(pid_t pid) {
  char path[64], buf[64];
  double until = lmp_now() + PATIENCE;
  snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
  while (lmp_now() < until) {
    FILE *f = fopen(path, "r");
    size_t n = 0;
    if (f != NULL) {
      n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
    }
    buf[n] = '\0';
    if (strtol(buf, NULL, 10) == SYS_futex) return 1;
    usleep(1000);
  }
  return 0;
}

/* Waits until pid ends (PATIENCE at most); its status, or -1. */
static int ended_within(pid_t pid) {
  double until = lmp_now() + PATIENCE;
  int status;
  while (lmp_now() < until) {
    if (waitpid(pid, &status, WNOHANG) == pid) return status;
    usleep(1000);
  }
  return -1;
}

/* The end of a lost wake-up: the first sleeper p1, woken, ends (well);
 * its reaper's part runs (lmp_slot_release of slot `first`); then the
 * second, p2, must end within PATIENCE.  p2's status, or -1 when it slept
 * on (it is then killed). */
static int second_after_first(pid_t p1, int first, pid_t p2) {
  int status;
  ASSERT_EQ(ended_within(p1), 0);
  lmp_slot_release((uint32_t)first);
  status = ended_within(p2);
  if (status == -1) {
    kill(p2, SIGKILL);
    waitpid(p2, NULL, 0);
  }
  return status;
}

/* The parent holds a robust mutex; two processes sleep on it, the first
 * asleep first.  The unlock wakes that one (a futex wakes its sleepers
 * in order), which ends without taking the mutex, as a process killed
 * just then would.  The mutex is free, its one wake-up spent: the second
 * sleeper sleeps on until the first one's reaper wakes it. */
static void test_lock_wakeup_lost_to_a_death(void) {
  lockbox *b = (lockbox *)lmp_obj_new(T_TEST, 0, sizeof(lockbox));
  _Atomic uint32_t *word;
  int first = lmp_slot_prepare(0), second = lmp_slot_prepare(0);
  pid_t p1, p2;
  ASSERT_TRUE(b != NULL && first > 0 && second > 0);
  if (b == NULL) return;
  ASSERT_EQ(lmp_hold(&b->h), 0);
  lmp_robust_init(&b->mu);
  word = (_Atomic uint32_t *)&b->mu.__data.__lock;
  ASSERT_EQ(lmp_robust_lock(&b->mu), 0);
  p1 = fork();
  if (p1 == 0) { /* asleep on the mutex as glibc's lock sleeps on it */
    uint32_t v;
    lmp_slot_adopt((uint32_t)first);
    atomic_store(&lmp_self->lock_wait, LMP_OFF(word));
    v = atomic_fetch_or(word, FUTEX_WAITERS) | FUTEX_WAITERS;
    while (atomic_load(word) == v)
      syscall(SYS_futex, word, FUTEX_WAIT, v, NULL, NULL, 0);
    _exit(0); /* woken: gone without taking it */
  }
  ASSERT_TRUE(p1 > 0 && asleep_in_futex(p1));
  p2 = fork();
  if (p2 == 0) {
    lmp_slot_adopt((uint32_t)second);
    if (lmp_robust_lock(&b->mu) != 0) _exit(4);
    pthread_mutex_unlock(&b->mu);
    _exit(0);
  }
  ASSERT_TRUE(p2 > 0 && asleep_in_futex(p2));
  pthread_mutex_unlock(&b->mu);
  ASSERT_EQ(second_after_first(p1, first, p2), 0); /* it took the mutex */
  lmp_slot_release((uint32_t)second);
  lmp_unhold(&b->h);
}

/* Two processes sleep on a word, the first asleep first, waiting for a
 * flag; the parent sets it and bumps the word for one sleeper, as a
 * queue's put does for its getters.  The first, woken, ends without
 * looking (killed just then), and the second must still hear of it. */
static void test_bump_lost_to_a_death(void) {
  turn *t = (turn *)lmp_obj_new(T_TEST, 0, sizeof(turn));
  int first = lmp_slot_prepare(0), second = lmp_slot_prepare(0);
  pid_t p1, p2;
  ASSERT_TRUE(t != NULL && first > 0 && second > 0);
  if (t == NULL) return;
  ASSERT_EQ(lmp_hold(&t->h), 0);
  atomic_store(&t->n, 0);
  atomic_store(&t->word, 0);
  p1 = fork();
  if (p1 == 0) { /* asleep on the word as lmp_wait_on sleeps on it */
    uint32_t v = atomic_load(&t->word);
    lmp_slot_adopt((uint32_t)first);
    atomic_store(&lmp_self->waiting_on, LMP_OFF(&t->word));
    while (atomic_load(&t->word) == v)
      syscall(SYS_futex, &t->word, FUTEX_WAIT, v, NULL, NULL, 0);
    _exit(0); /* woken: gone without looking */
  }
  ASSERT_TRUE(p1 > 0 && asleep_in_futex(p1));
  p2 = fork();
  if (p2 == 0) {
    want w = {t, 1};
    lmp_slot_adopt((uint32_t)second);
    _exit(lmp_wait_on(NULL, &t->word, is_turn, &w,
                      lmp_now() + 2 * PATIENCE) == 1 ? 0 : 5);
  }
  ASSERT_TRUE(p2 > 0 && asleep_in_futex(p2));
  atomic_store(&t->n, 1);
  lmp_futex_bump(&t->word, 1);
  ASSERT_EQ(second_after_first(p1, first, p2), 0); /* it saw the flag */
  lmp_slot_release((uint32_t)second);
  lmp_unhold(&t->h);
}

/* A process sleeps on a word, waiting for a flag; another sets the flag
 * after lmp_owe and ends before its bump (killed just then).  Its reaper
 * owes the sleeper the wake-up, and gives it. */
static void test_owed_wakeup_given_by_the_reaper(void) {
  turn *t = (turn *)lmp_obj_new(T_TEST, 0, sizeof(turn));
  int sleeper = lmp_slot_prepare(0), setter = lmp_slot_prepare(0);
  pid_t p1, p2;
  int status = -1;
  ASSERT_TRUE(t != NULL && sleeper > 0 && setter > 0);
  if (t == NULL) return;
  ASSERT_EQ(lmp_hold(&t->h), 0);
  atomic_store(&t->n, 0);
  atomic_store(&t->word, 0);
  p1 = fork();
  if (p1 == 0) {
    want w = {t, 1};
    lmp_slot_adopt((uint32_t)sleeper);
    _exit(lmp_wait_on(NULL, &t->word, is_turn, &w,
                      lmp_now() + 2 * PATIENCE) == 1 ? 0 : 5);
  }
  ASSERT_TRUE(p1 > 0 && asleep_in_futex(p1));
  p2 = fork();
  if (p2 == 0) {
    lmp_slot_adopt((uint32_t)setter);
    lmp_owe(&t->word);
    atomic_store(&t->n, 1);
    _exit(0); /* gone before its bump */
  }
  ASSERT_TRUE(p2 > 0);
  waitpid(p2, NULL, 0);
  ASSERT_TRUE(asleep_in_futex(p1)); /* nobody woke it */
  lmp_slot_release((uint32_t)setter);
  {
    /* Woken now, not at its deadline (where it would see the flag too). */
    double until = lmp_now() + PATIENCE;
    while (waitpid(p1, &status, WNOHANG) == 0 && lmp_now() < until)
      usleep(1000);
  }
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  if (!WIFEXITED(status)) waitpid(p1, &status, 0);
  lmp_slot_release((uint32_t)sleeper);
  lmp_unhold(&t->h);
}

int main(void) {
  static const check_test tests[] = {
    CHECK(test_handoffs_lose_no_wakeup),
    CHECK(test_lock_wakeup_lost_to_a_death),
    CHECK(test_bump_lost_to_a_death),
    CHECK(test_owed_wakeup_given_by_the_reaper),
  };
  int rc = lmp_arena_init(16u << 20);
  if (rc < 0) {
    fprintf(stderr, "arena init failed: %d\n", rc);
    return 1;
  }
  return check_run(tests, CHECK_COUNT(tests));
}
