/* pipe_pingpong_c.c -- the physical limit for pipe_pingpong.lua: the same ping-pong in raw
 * C over a socketpair, a 4-byte length and a small payload each way.  A
 * reader with nothing to read polls the socket a few hundred times before
 * it sleeps in poll, as luamp's recv does (pingpong_rtt); blocking_rtt is
 * the same with blocking reads alone, where every message wakes a
 * sleeping process. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "twin.h"

/* A message: 4-byte length, then 8 bytes of payload. */
static void sendmsg8(int fd, uint64_t v) {
  unsigned char m[12] = {0, 0, 0, 8};
  size_t off = 0;
  int i;
  for (i = 0; i < 8; i++) m[4 + i] = (unsigned char)(v >> (8 * i));
  while (off < sizeof m) {
    ssize_t w = write(fd, m + off, sizeof m - off);
    if (w <= 0) exit(1);
    off += (size_t)w;
  }
}

static int spin; /* poll before sleeping */

/* Waits until fd has something to read. */
static void wait_readable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  int i;
  for (i = 0; spin && i < 256; i++) {
    if (poll(&p, 1, 0) > 0) return;
    __builtin_ia32_pause();
  }
  poll(&p, 1, -1);
}

static uint64_t recvmsg8(int fd) {
  unsigned char m[12];
  size_t off = 0;
  uint64_t v = 0;
  int i;
  while (off < sizeof m) {
    ssize_t r = read(fd, m + off, sizeof m - off);
    if (r < 0 && errno == EAGAIN) {
      wait_readable(fd);
      continue;
    }
    if (r <= 0) exit(0);
    off += (size_t)r;
  }
  for (i = 7; i >= 0; i--) v = (v << 8) | m[4 + i];
  return v;
}

/* Seconds per round trip of n messages, the reads spinning or not. */
static double run(int n, int spinning) {
  int i, sv[2];
  double t0, dt;
  pid_t pid;
  fflush(stdout); /* the child must not print what is buffered */
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) exit(1);
  spin = spinning;
  if (spinning) {
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    fcntl(sv[1], F_SETFL, O_NONBLOCK);
  }
  pid = fork();
  if (pid == 0) {
    close(sv[0]);
    for (;;) sendmsg8(sv[1], recvmsg8(sv[1]));
  }
  close(sv[1]);
  for (i = 0; i < n / 10; i++) {
    sendmsg8(sv[0], (uint64_t)i);
    recvmsg8(sv[0]);
  }
  t0 = now();
  for (i = 0; i < n; i++) {
    sendmsg8(sv[0], (uint64_t)i);
    recvmsg8(sv[0]);
  }
  dt = now() - t0;
  close(sv[0]);
  waitpid(pid, NULL, 0);
  return dt / n;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 20000;
  printf("pingpong_rtt %.3f us\n", run(n, 1) * 1e6);
  printf("blocking_rtt %.3f us\n", run(n, 0) * 1e6);
  return 0;
}
