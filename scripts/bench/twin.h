/* twin.h -- what every raw-C twin of a benchmark needs: the clock the Lua
 * and Python twins read, and an order of doubles for qsort (medians). */
#ifndef LMP_BENCH_TWIN_H
#define LMP_BENCH_TWIN_H

#include <time.h>

/* Seconds on the monotonic clock. */
static inline double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* For qsort of doubles, smallest first. */
static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

#endif
