/* process_c.c -- raw-C twin of process.lua: fork, _exit(0) in the child,
 * waitpid in the parent; the floor that any process API sits on.
 * Prints: start_join <ms per start+join> ms
 * Usage: process_c [N=500]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "twin.h"

static void once(void) {
  int status;
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) _exit(0);
  if (waitpid(pid, &status, 0) != pid) {
    perror("waitpid");
    exit(1);
  }
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 500;
  double t0;
  if (n <= 0) n = 500;
  for (int i = 0; i < 20; i++) once();  /* warm up, as the others do */
  t0 = now();
  for (int i = 0; i < n; i++) once();
  printf("start_join %.4f ms\n", (now() - t0) * 1e3 / n);
  return 0;
}
