/* lock_c.c -- the physical limit for lock.lua: a process-shared pthread
 * mutex in shared memory, locked and unlocked in a loop. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "twin.h"

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 2000000, i;
  pthread_mutexattr_t ma;
  pthread_mutex_t *mu = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  double t0, dt;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(mu, &ma);
  for (i = 0; i < n / 10; i++) {
    pthread_mutex_lock(mu);
    pthread_mutex_unlock(mu);
  }
  t0 = now();
  for (i = 0; i < n; i++) {
    pthread_mutex_lock(mu);
    pthread_mutex_unlock(mu);
  }
  dt = now() - t0;
  printf("acquire_release %.1f ns\n", dt / (double)n * 1e9);
  return 0;
}
