/* queue_throughput_c.c -- the floor of the 64 MiB row of
 * queue_throughput.lua: one memcpy of the payload between two buffers
 * whose pages are already there, the least any carrier must do.
 * Prints: big <GB/s> GB/s (the median of ROUNDS copies)
 * Usage: queue_throughput_c [ROUNDS=16] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  size_t n = (size_t)64 << 20;
  int i, rounds = argc > 1 ? atoi(argv[1]) : 16;
  char *src = malloc(n), *dst = malloc(n);
  double *dt;
  if (rounds < 1) rounds = 16;
  dt = malloc(sizeof *dt * (size_t)rounds);
  if (src == NULL || dst == NULL || dt == NULL) return 1;
  memset(src, 'x', n);
  memset(dst, 0, n);
  for (i = 0; i < rounds; i++) {
    double t0 = now();
    memcpy(dst, src, n);
    dt[i] = now() - t0;
    src[i] = dst[n - 1 - (size_t)i]; /* keep each copy observable */
  }
  qsort(dt, (size_t)rounds, sizeof *dt, cmp);
  printf("big %.3f GB/s\n", (double)n / dt[rounds / 2] / 1e9);
  return dst[0] == 0;
}
