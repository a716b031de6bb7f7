/* value_c.c -- the floor of value.lua's atomic_add row: two processes
 * each add 1 to one 64-bit word of shared memory N times with an atomic
 * add (the instruction luamp's v:add ends in), timed as value.lua times
 * it, from a barrier both pass to the last one's end of its loop.
 * Prints: atomic_add <M/s> M/s (the median of ROUNDS races)
 * Usage: value_c [N=100000] [ROUNDS=9] */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "twin.h"

typedef struct shared {
  _Atomic long word;
  _Atomic int arrived;
  double t[4];
} shared;

static double race(shared *sh, long n) {
  pid_t pid[2];
  int i;
  atomic_store(&sh->word, 0);
  atomic_store(&sh->arrived, 0);
  for (i = 0; i < 2; i++) {
    pid[i] = fork();
    if (pid[i] == 0) {
      long k;
      atomic_fetch_add(&sh->arrived, 1);
      while (atomic_load(&sh->arrived) < 2) {
      }
      sh->t[2 * i] = now();
      for (k = 0; k < n; k++) atomic_fetch_add(&sh->word, 1);
      sh->t[2 * i + 1] = now();
      _exit(0);
    }
  }
  for (i = 0; i < 2; i++) waitpid(pid[i], NULL, 0);
  if (atomic_load(&sh->word) != 2 * n) abort();
  return 2.0 * (double)n /
         ((sh->t[1] > sh->t[3] ? sh->t[1] : sh->t[3]) -
          (sh->t[0] < sh->t[2] ? sh->t[0] : sh->t[2]));
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 100000;
  int i, rounds = argc > 2 ? atoi(argv[2]) : 9;
  double *r;
  shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (n < 1) n = 100000;
  if (rounds < 1) rounds = 9;
  r = malloc(sizeof *r * (size_t)rounds);
  if (sh == MAP_FAILED || r == NULL) return 1;
  for (i = 0; i < rounds; i++) r[i] = race(sh, n);
  qsort(r, (size_t)rounds, sizeof *r, cmp_double);
  printf("atomic_add %.3f M/s\n", r[rounds / 2] / 1e6);
  return 0;
}
