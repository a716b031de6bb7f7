/* process.c -- forking, tracking and reaping child processes, and the end
 * of a process: the mechanism under lua/luamp/process.lua.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <spawn.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lualib.h>
#include <uv.h>

#include "runtime.h"

#define SENTINEL "luamp.Sentinel"
/* Registry keys, light userdata: a string key is made (allocated and
 * interned) again by each child that looks it up after its parent's
 * collector took it. */
static const char atexit_key;  /* the Lua exit hook */
static const char atexit_done; /* its result, once run */

/*
 * A child record lives in C memory, not in the arena: only the process
 * that forked a child can wait for it.  The record is on the `children`
 * list from fork until it is reaped, and is also pointed to by the Lua
 * handle (a luamp.Sentinel userdata, which is what `p.sentinel` is); it is
 * freed when both are done with it.  After a fork the child forgets its
 * parent's list: records it inherited through Lua handles stay readable
 * but belong to another process (`owner`).
 */
typedef struct lmp_child lmp_child;

struct lmp_child {
  pid_t pid;
  pid_t owner;    /* the pid that forked it */
  uint32_t slot;  /* the child's arena slot */
  int status;     /* wait status, once ended */
  int ended;      /* reaped */
  int daemon;
  int handles;    /* Lua handles pointing here */
  int listed;     /* on the children list */
  lmp_child *next, *prev;
};

pid_t lmp_pid; /* set at start and in each child: getpid() is a syscall */

static lmp_child *children;
static int nchildren; /* listed and not reaped */
static lua_Integer nreaped; /* children reaped so far, ever */
static int in_child;  /* this process was forked by luamp */
static uv_signal_t chld_h;

static const lmp_class sentinel_class;

typedef struct child_ud {
  lmp_child *c;
} child_ud;

static void unlist(lmp_child *c) {
  if (!c->listed) return;
  if (c->prev) c->prev->next = c->next;
  else children = c->next;
  if (c->next) c->next->prev = c->prev;
  c->listed = 0;
  c->next = c->prev = NULL;
}

static void maybe_free(lmp_child *c) {
  if (!c->listed && c->handles == 0) free(c);
}

/* Records the end of c: its status, and releases what its slot held. */
static void ended(lmp_child *c, int status) {
  c->status = status;
  c->ended = 1;
  nchildren--;
  nreaped++;
  lmp_slot_release(c->slot);
  unlist(c);
}

/* Reaps c if it has ended; returns 1 if it has. */
static int reap(lmp_child *c) {
  int status;
  pid_t r;
  if (c->ended) return 1;
  if (c->owner != getpid()) return 0;
  do r = waitpid(c->pid, &status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == c->pid) {
    ended(c, status);
    return 1;
  }
  if (r < 0 && errno == ECHILD) { /* reaped by someone else: report lost */
    ended(c, W_EXITCODE(255, 0));
    return 1;
  }
  return 0;
}

static void reap_server(int block);
static void forget_server(void);

void lmp_reap_children(void) {
  lmp_child *c = children, *next;
  reap_server(0);
  while (c != NULL) {
    next = c->next;
    if (reap(c)) maybe_free(c);
    c = next;
  }
}

static void on_chld(uv_signal_t *h, int sig) {
  (void)h;
  (void)sig;
  lmp_reap_children();
}

static pid_t runtime_pid; /* the process whose runtime is up */

int lmp_runtime_init(void *loop) {
  int rc;
  if (runtime_pid == getpid()) return 0;
  if ((rc = lmp_loop_init(loop, lmp_reap_children)) < 0) return rc;
  if ((rc = lmp_loop_signal(&chld_h, SIGCHLD, on_chld)) < 0) return rc;
  lmp_pid = runtime_pid = getpid();
  return 0;
}

void lmp_runtime_end(void) {
  if (runtime_pid != getpid() || nchildren > 0) return;
  lmp_loop_end();
  runtime_pid = 0;
}

int lmp_pid_dead(pid_t pid) {
  char path[64], buf[256], *p;
  int fd;
  ssize_t n;
  if (pid <= 0) return 1;
  if (kill(pid, 0) < 0 && errno == ESRCH) return 1;
  /* A zombie still answers kill: look at its state. */
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  p = strrchr(buf, ')');
  return p != NULL && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X');
}

int lmp_live_children(void) { return nchildren; }

int lmp_is_child(void) { return in_child; }

static int exitcode(const lmp_child *c) {
  if (WIFEXITED(c->status)) return WEXITSTATUS(c->status);
  if (WIFSIGNALED(c->status)) return -WTERMSIG(c->status);
  return 255;
}

/* ------------------------------------------------------------ fork path */

/*
 * After fork, in the child, before any Lua code runs, in this order:
 *   1. ask to die with the parent (PR_SET_PDEATHSIG), then check the parent
 *      did not die before we asked;
 *   2. adopt the arena slot the parent prepared (it already holds a
 *      reference on every object the parent held, for us);
 *   3. forget the parent's children: they are not ours to wait for;
 *   4. get our own loop state and signal handlers;
 * The child then runs its target and leaves through lmp_exit_child, never
 * returning into the code that called fork.
 */
/* A child reads no input, as Python's: its stdin is /dev/null, so that its
 * stdio cannot read ahead (and take from its parent) what the input
 * holds, and what stdin's buffer held of it when the parent forked is
 * dropped.  Not by freopen: its walk of stdio's list of streams and its
 * parsing of the mode are first touches of code and data pages, each a
 * page fault in a new child (some 4 of its 50). */
static void child_stdin(void) {
  int fd = open("/dev/null", O_RDONLY);
  if (fd < 0) {
    close(STDIN_FILENO);
  } else if (fd != STDIN_FILENO) {
    dup2(fd, STDIN_FILENO);
    close(fd);
  }
  __fpurge(stdin);
  clearerr_unlocked(stdin); /* (no lock to write: the child is alone) */
}

static void after_fork_child(uint32_t slot, pid_t ppid_then) {
  lmp_child *c = children, *next;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != ppid_then) _exit(1);
  child_stdin();
  lmp_pid = getpid();
  lmp_slot_adopt(slot);
  while (c != NULL) {
    next = c->next;
    c->listed = 0;
    c->next = c->prev = NULL;
    if (c->handles == 0) free(c);
    c = next;
  }
  children = NULL;
  nchildren = 0;
  forget_server();
  in_child = 1;
  lmp_loop_after_fork();
}

static void (*exit_hooks[8])(void); /* lmp_on_exit's */
static int nexit_hooks;

void lmp_on_exit(void (*fn)(void)) {
  int i;
  for (i = 0; i < nexit_hooks; i++)
    if (exit_hooks[i] == fn) return;
  if (nexit_hooks < 8 && atexit(fn) == 0) exit_hooks[nexit_hooks++] = fn;
}

/* Leaves a child process: the Lua exit hook (join its own children), the
 * exit hooks, stdio, the arena references, then _exit.  Never returns. */
void lmp_exit_child(lua_State *L, int status) {
  int i;
  if (L != NULL) lmp_run_atexit(L);
  for (i = 0; i < nexit_hooks; i++) exit_hooks[i]();
  fflush(NULL);
  lmp_slot_retire();
  _exit(status & 0xff);
}

/* Lists child c, started with pid in slot, held by handle u. */
static void track(child_ud *u, lmp_child *c, pid_t pid, uint32_t slot,
                  int daemon) {
  c->pid = pid;
  c->owner = getpid();
  c->slot = slot;
  c->daemon = daemon;
  c->handles = 1;
  c->listed = 1;
  c->next = children;
  if (children) children->prev = c;
  children = c;
  nchildren++;
  u->c = c;
}

/* Pushes the handle of a child about to start and returns its record,
 * with an arena slot prepared for it in *slot (holding a reference on
 * every object this process holds, for the child); raises on failure. */
static lmp_child *new_child(lua_State *L, int *slot) {
  lmp_child *c;
  lmp_newhandle(L, &sentinel_class, sizeof(child_ud), 0);
  c = calloc(1, sizeof *c);
  if (c == NULL) luaL_error(L, "not enough memory");
  *slot = lmp_slot_prepare(1);
  if (*slot < 0) {
    free(c);
    if (*slot == -EAGAIN)
      luaL_error(L, "cannot start a process: all %d process slots of the "
                 "family are in use", LMP_MAX_PROCS);
    lmp_nomem(L, 0);
  }
  return c;
}

/* A child that did not start: its slot and record go. */
static void drop_child(lmp_child *c, int slot) {
  lmp_slot_release((uint32_t)slot);
  free(c);
}

void lmp_end_child(lua_State *L, int rc) {
  if (rc != LUA_OK) {
    if (lmp_is_interrupt(L, -1)) { /* Ctrl-C: die of it, quietly */
      lmp_run_atexit(L);
      fflush(NULL);
      lmp_slot_retire();
      signal(SIGINT, SIG_DFL);
      raise(SIGINT);
    }
    fprintf(stderr, "%s\n", luaL_tolstring(L, -1, NULL));
    lmp_exit_child(L, 1);
  }
  lmp_exit_child(L, (int)lua_tointeger(L, -1));
}

/* glibc's fastbins hold small freed chunks unmerged until a large request
 * merges them all.  A child that inherited them would merge them on its
 * first large allocation, writing to each across the heap it shares with
 * its parent: a copy-on-write fault for every page they lie on (some 50
 * a child here, a fifth of a start+join).  So the parent merges them
 * just before it forks: mallopt merges them before it sets its
 * parameter, here the fastbins' limit, set to glibc's default. */
static void merge_fastbins(void) {
#ifdef M_MXFAST
  mallopt(M_MXFAST, 64 * (int)sizeof(size_t) / 4);
#endif
}

static void (*parent_hooks[8])(lua_State *L);
static int nparent_hooks;

void lmp_on_fork_parent(void (*fn)(lua_State *L)) {
  int i;
  for (i = 0; i < nparent_hooks; i++)
    if (parent_hooks[i] == fn) return;
  if (nparent_hooks < 8) parent_hooks[nparent_hooks++] = fn;
}

/* Runs the hooks of lmp_on_fork_parent; a lua_CFunction, so that the
 * forkserver, which runs unprotected, can call it protected. */
static int run_parent_hooks(lua_State *L) {
  int i;
  for (i = 0; i < nparent_hooks; i++) parent_hooks[i](L);
  return 0;
}

/* fork(fn, daemon, ...) -> Child.  In the child, calls fn(...) and exits
 * with the integer it returns (or 1 if it raises); never returns there. */
static int proc_fork(lua_State *L) {
  int daemon = lua_toboolean(L, 2), nargs = lua_gettop(L) - 2, i;
  lmp_child *c;
  int slot;
  pid_t pid;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checkstack(L, nargs + 2, "too many arguments"); /* for the child */
  run_parent_hooks(L);
  c = new_child(L, &slot);
  fflush(NULL); /* nothing buffered is printed twice */
  merge_fastbins();
  pid = fork();
  if (pid < 0) {
    int e = errno;
    drop_child(c, slot);
    return luaL_error(L, "cannot start a process: %s", strerror(e));
  }
  if (pid == 0) {
    after_fork_child((uint32_t)slot, lmp_pid);
    for (i = 1; i <= nargs + 2; i++)
      if (i != 2) lua_pushvalue(L, i);
    lmp_end_child(L, lua_pcall(L, nargs < 0 ? 0 : nargs, 1, 0));
  }
  /* (the child writes it too, but a reaper of this process may need it
   * before the child has run) */
  atomic_store(&lmp_slot_at((uint32_t)slot)->pid, (int32_t)pid);
  track(lua_touserdata(L, -1), c, pid, (uint32_t)slot, daemon);
  return 1;
}

/* ----------------------------------------------------------- spawn path */

/*
 * spawn: the child is a fresh image of an executable that hands control to
 * luamp_child_main (the luamp command does; an embedding application's
 * main must), started with posix_spawn, so that nothing of a threaded
 * parent's state (a mutex another thread held, an allocator's lock) comes
 * along.  It inherits, as descriptors 3 and 4, the arena's memfd and one
 * holding its bootstrap message, from 5 those of the Connections its
 * message names, and in argv the arena's address, its prepared slot
 * (holding what the parent held, as a fork's does), the parent's pid and
 * the number of Connections.  It is the parent's child like a fork:
 * reaped, waited for and signalled the same way.
 */
#define SPAWN_FLAG "--luamp-spawned"
#define SERVER_FLAG "--luamp-forkserver"

/* A close-on-exec memfd holding n bytes of p, at offset 0; -errno. */
static int payload_fd(const char *p, size_t n) {
  int fd = memfd_create("luamp-spawn", MFD_CLOEXEC);
  if (fd < 0) return -errno;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    p += w;
    n -= (size_t)w;
  }
  if (lseek(fd, 0, SEEK_SET) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

extern char **environ;

/* argv words after the family's: a server's module paths and preloads */
#define MAX_EXTRA 66

/* The descriptors of the handles (Connections) listed in the table at idx,
 * which a message that starts a process names (see lmp_codec_message):
 * their number, at most LMP_MAX_HANDED.  The handles keep them open. */
static int handed_fds(lua_State *L, int idx, int *fds) {
  int n = 0;
  if (!lua_istable(L, idx)) return 0;
  while (n < LMP_MAX_HANDED && lua_rawgeti(L, idx, n + 1) != LUA_TNIL) {
    const lmp_class *c = lmp_classof(L, -1);
    unsigned flags;
    lmp_obj *chan;
    if (c == NULL || c->handed == NULL ||
        c->handed(lua_touserdata(L, -1), &fds[n], &flags, &chan) != NULL)
      luaL_error(L, "cannot start a process: a connection it is handed "
                 "was closed");
    lua_pop(L, 1);
    n++;
  }
  lua_pop(L, 1);
  return n;
}

#define FIRST_HANDED 5 /* where a spawned child finds what it is handed */

static int handed[LMP_MAX_HANDED]; /* what this process was handed */
static int nhanded;

static void set_handed(const int *fds, int n) {
  int i;
  for (i = 0; i < n && i < LMP_MAX_HANDED; i++) handed[i] = fds[i];
  nhanded = i;
}

int lmp_handed_take(uint64_t k) {
  int fd;
  if (k >= (uint64_t)nhanded) return -1;
  if ((fd = handed[k]) < 0) return -2;
  handed[k] = -2;
  return fd;
}

/* Starts exe as `exe flag ADDR SLOT PPID NHANDED extra...` with the arena
 * at 3, fd4 at 4 and the nh descriptors of hfds from 5: the pid, or
 * -errno. */
static pid_t spawn_exe(const char *exe, const char *flag, uint32_t slot,
                       int fd4, const int *hfds, int nh,
                       const char *const *extra) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  sigset_t none, all;
  char addr[32], slotstr[16], ppid[16], nhstr[16];
  char *argv[7 + MAX_EXTRA] = {(char *)exe, (char *)flag, addr, slotstr,
                               ppid, nhstr};
  /* Above every place they go, so that placing one cannot overwrite
   * another. */
  int a = fcntl(lmp_arena_fd(), F_DUPFD_CLOEXEC, 100);
  int b = fcntl(fd4, F_DUPFD_CLOEXEC, 100);
  int moved[LMP_MAX_HANDED];
  pid_t pid = -1;
  int rc = 0, i;
  for (i = 0; extra != NULL && extra[i] != NULL && i < MAX_EXTRA; i++)
    argv[6 + i] = (char *)extra[i];
  for (i = 0; i < nh; i++)
    if ((moved[i] = fcntl(hfds[i], F_DUPFD_CLOEXEC, 100)) < 0) rc = errno;
  if (a < 0 || b < 0) rc = errno;
  snprintf(addr, sizeof addr, "%p", (void *)lmp_base);
  snprintf(slotstr, sizeof slotstr, "%u", (unsigned)slot);
  snprintf(ppid, sizeof ppid, "%d", (int)getpid());
  snprintf(nhstr, sizeof nhstr, "%d", nh);
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&at);
  if (rc == 0) {
    posix_spawn_file_actions_adddup2(&fa, a, 3);
    posix_spawn_file_actions_adddup2(&fa, b, 4);
    for (i = 0; i < nh; i++)
      posix_spawn_file_actions_adddup2(&fa, moved[i], FIRST_HANDED + i);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    rc = posix_spawn(&pid, exe, &fa, &at, argv, environ);
  }
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (a >= 0) close(a);
  if (b >= 0) close(b);
  for (i = 0; i < nh; i++)
    if (moved[i] >= 0) close(moved[i]);
  return rc != 0 ? -rc : pid;
}

static int no_memfd(lua_State *L, const char *what) {
  return luaL_error(L, "cannot %s: the arena is not in a memfd here "
                    "(memfd_create failed), so only a fork can share it",
                    what);
}

/* spawn(payload, daemon, exe, preload, handed) -> Child: exe started as a
 * spawned child of this family, whose luamp_child_main runs `payload` (the
 * bytes of a message the caller keeps until this returns), handed the
 * descriptors of the Connections listed in `handed`. */
static int proc_spawn(lua_State *L) {
  size_t n;
  const char *payload = luaL_checklstring(L, 1, &n);
  int daemon = lua_toboolean(L, 2);
  const char *exe = luaL_checkstring(L, 3);
  int hfds[LMP_MAX_HANDED], nh = handed_fds(L, 5, hfds);
  lmp_child *c;
  int slot, pfd;
  pid_t pid;
  if (lmp_arena_fd() < 0) return no_memfd(L, "spawn a process");
  c = new_child(L, &slot);
  if ((pfd = payload_fd(payload, n)) < 0) {
    drop_child(c, slot);
    return luaL_error(L, "cannot spawn a process: %s", strerror(-pfd));
  }
  fflush(NULL);
  pid = spawn_exe(exe, SPAWN_FLAG, (uint32_t)slot, pfd, hfds, nh, NULL);
  close(pfd);
  if (pid < 0) {
    drop_child(c, slot);
    return luaL_error(L, "cannot spawn a process: %s: %s", exe,
                      strerror((int)-pid));
  }
  track(lua_touserdata(L, -1), c, pid, (uint32_t)slot, daemon);
  return 1;
}

/* ------------------------------------------------------ forkserver path */

/*
 * forkserver: a server started like a spawned child (so it is as clean of
 * the parent's threads), with the modules of set_forkserver_preload loaded
 * once, that forks every further child on request.  Each process that
 * uses the method has its own server, on a SOCK_SEQPACKET socket: the
 * request is the child's prepared slot with, as SCM_RIGHTS, a memfd
 * holding its bootstrap message and the descriptors it is handed; the
 * answer, its pid (or -errno).
 *
 * The server forks with CLONE_PARENT: the child is the requester's own,
 * not the server's.  So it is reaped, waited for, signalled and cleaned up
 * exactly as a fork's is (SIGCHLD, waitpid, PR_SET_PDEATHSIG on the
 * requester), the server reports no ends, and killing the server loses no
 * child: the next start makes a new server.  A raw clone does not do what
 * glibc's fork does for the child's thread, so the server does it: it
 * asks the kernel to write the child's thread id where glibc keeps it
 * (robust and error-checking mutexes are owned by that id) and the child
 * registers its robust-mutex list again.  Where that place cannot be
 * found (another C library), the server says so at start and the method
 * is not available.
 */
struct robust_head { /* the kernel's struct robust_list_head */
  void *list;
  long futex_offset;
  void *pending;
};

static struct {
  pid_t pid;   /* the server, or 0 */
  pid_t owner; /* the process whose server it is */
  int sock;    /* our end, or -1 */
  uint32_t slot;
} server = {0, 0, -1, 0};

/* The server's end, reaped or known dead: its slot and socket go. */
static void server_gone(void) {
  lmp_slot_release(server.slot);
  close(server.sock);
  server.sock = -1;
  server.pid = 0;
}

/* Reaps the server if it has ended; with `block`, waits until it has. */
static void reap_server(int block) {
  int status;
  pid_t r;
  if (server.pid == 0 || server.owner != getpid()) return;
  do r = waitpid(server.pid, &status, block ? 0 : WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == server.pid || (r < 0 && errno == ECHILD)) server_gone();
}

/* A forked child forgets its parent's server: the socket is not its own. */
static void forget_server(void) {
  if (server.sock >= 0 && server.owner != getpid()) close(server.sock);
  server.sock = -1;
  server.pid = 0;
}

/* Stops this process's server, at its exit: it holds nothing. */
static void stop_server(void) {
  if (server.pid == 0 || server.owner != getpid()) return;
  kill(server.pid, SIGKILL);
  reap_server(1);
}

#define MAX_FDS (1 + LMP_MAX_HANDED) /* a request's: payload, handed */

/* One message of the server's socket: an int and, if fds is given, up to
 * MAX_FDS descriptors (their number in *nfds).  Its size, 0 at the end,
 * or -errno (-EPROTO: not an int). */
static ssize_t recv_int(int sock, int32_t *v, int *fds, int *nfds,
                        int intr) {
  union {
    char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec io = {v, sizeof *v};
  struct msghdr m;
  ssize_t n;
  memset(&m, 0, sizeof m);
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  if (fds != NULL) {
    *nfds = 0;
    m.msg_control = ctl.buf;
    m.msg_controllen = sizeof ctl.buf;
  }
  while ((n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
    if (intr && lmp_interrupt_pending()) return -EINTR;
  if (n > 0 && fds != NULL) {
    struct cmsghdr *c;
    for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        memcpy(fds, CMSG_DATA(c), (size_t)k * sizeof(int));
        *nfds = k;
      }
    }
  }
  return n < 0 ? -errno : n == (ssize_t)sizeof *v ? n : n == 0 ? 0 : -EPROTO;
}

/* Sends an int with the nfds descriptors of fds: 0 or -errno. */
static int send_int(int sock, int32_t v, const int *fds, int nfds) {
  union {
    char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec io = {&v, sizeof v};
  struct msghdr m;
  ssize_t n;
  memset(&m, 0, sizeof m);
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  if (nfds > 0) {
    struct cmsghdr *c;
    memset(ctl.buf, 0, sizeof ctl.buf);
    m.msg_control = ctl.buf;
    m.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
  }
  do n = sendmsg(sock, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : 0;
}

/* Starts this process's server, the modules named in the table at index
 * `preload` loaded in it: 0, or -1 with why in `why`, or -EINTR if Ctrl-C
 * came before it answered (it is then ended). */
static int start_server(lua_State *L, const char *exe, int preload,
                        char *why, size_t size) {
  const char *extra[MAX_EXTRA + 1];
  int sv[2], slot, n = 2;
  int32_t hello;
  ssize_t r;
  pid_t pid;
  /* Our module paths first, then the names (the Lua values keep them). */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, LUA_LOADLIBNAME);
  lua_getfield(L, -1, "path");
  lua_getfield(L, -2, "cpath");
  extra[0] = lua_isstring(L, -2) ? lua_tostring(L, -2) : "";
  extra[1] = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
  lua_pop(L, 2); /* still referenced by package */
  lua_pop(L, 2);
  if (lua_istable(L, preload)) {
    for (; n < MAX_EXTRA; n++) {
      lua_rawgeti(L, preload, n - 1);
      extra[n] = lua_tostring(L, -1); /* the table keeps it */
      lua_pop(L, 1);
      if (extra[n] == NULL) break;
    }
  }
  extra[n] = NULL;
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    snprintf(why, size, "%s", strerror(errno));
    return -1;
  }
  if ((slot = lmp_slot_prepare(0)) < 0) {
    close(sv[0]);
    close(sv[1]);
    snprintf(why, size, "%s", slot == -EAGAIN ? "all process slots of the "
             "family are in use" : "the shared arena is full");
    return -1;
  }
  pid = spawn_exe(exe, SERVER_FLAG, (uint32_t)slot, sv[1], NULL, 0, extra);
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    lmp_slot_release((uint32_t)slot);
    snprintf(why, size, "%s: %s", exe, strerror((int)-pid));
    return -1;
  }
  server.pid = pid;
  server.owner = getpid();
  server.sock = sv[0];
  server.slot = (uint32_t)slot;
  /* It says it is ready, or why it cannot serve; or it dies saying why
   * on its standard error. */
  if ((r = recv_int(server.sock, &hello, NULL, NULL, 1)) <= 0 || hello < 0) {
    kill(pid, SIGKILL);
    reap_server(1);
    if (r == -EINTR) return -EINTR;
    snprintf(why, size, "%s: %s", exe, r < 0 ? strerror((int)-r) :
             r == 0 ? "it exited at start (its standard error says why)" :
             hello == -ENOTSUP ? "this C library's threads are not known "
             "to it" : strerror(-hello));
    return -1;
  }
  return 0;
}

/* forkserver(payload, daemon, exe, preload, handed) -> Child: a child of
 * this process forked by its forkserver (started with exe and the modules
 * of the list preload when there is none), running `payload` as a spawned
 * child does, handed the Connections listed in `handed`. */
static int proc_forkserver(lua_State *L) {
  size_t n;
  const char *payload = luaL_checklstring(L, 1, &n);
  int daemon = lua_toboolean(L, 2);
  const char *exe = luaL_checkstring(L, 3);
  char why[256];
  int fds[MAX_FDS], nh = handed_fds(L, 5, fds + 1);
  lmp_child *c;
  int slot, pfd, tries;
  int32_t pid = 0;
  pid_t asked = 0;
  ssize_t r = 0;
  if (lmp_arena_fd() < 0) return no_memfd(L, "start a forkserver");
  if (server.pid != 0) reap_server(0);
  c = new_child(L, &slot);
  if ((pfd = payload_fd(payload, n)) < 0) {
    drop_child(c, slot);
    return luaL_error(L, "cannot start a process: %s", strerror(-pfd));
  }
  fflush(NULL);
  for (tries = 0; tries < 2; tries++) {
    int rc = server.pid == 0 ? start_server(L, exe, 4, why, sizeof why) : 0;
    if (rc < 0) {
      close(pfd);
      drop_child(c, slot);
      if (rc == -EINTR) return lmp_raise_interrupt(L);
      return luaL_error(L, "cannot start a forkserver: %s", why);
    }
    /* A server that died since its last start is found here: the request
     * cannot be sent, and a new one is started once. */
    asked = server.pid;
    fds[0] = pfd;
    if (send_int(server.sock, (int32_t)slot, fds, 1 + nh) < 0) {
      reap_server(1);
      continue;
    }
    r = recv_int(server.sock, &pid, NULL, NULL, 1);
    break;
  }
  close(pfd);
  if (tries == 2 || r <= 0) {
    /* Ctrl-C while the server did not answer (it may be stopped) ends it
     * too, as a server that died with the request. */
    if (server.pid != 0) kill(server.pid, SIGKILL); /* if it still lives */
    reap_server(1);
    /* It died with our request.  Whether it forked first, the slot says:
     * the server writes the pid there as the fork returns, and the child
     * as it starts.  One that did is this start's, and an interrupt is
     * raised at the next step of the caller. */
    pid = atomic_load(&lmp_slot_at((uint32_t)slot)->pid);
    if (pid <= 0) {
      drop_child(c, slot);
      if (r == -EINTR) return lmp_raise_interrupt(L);
      return luaL_error(L, "cannot start a process: the forkserver (pid %d) "
                        "died while starting it", (int)asked);
    }
  } else if (pid < 0) {
    drop_child(c, slot);
    return luaL_error(L, "cannot start a process: the forkserver cannot "
                      "fork: %s", strerror(-pid));
  }
  track(lua_touserdata(L, -1), c, (pid_t)pid, (uint32_t)slot, daemon);
  return 1;
}

/* forkserver_pid() -> the pid of this process's forkserver, or nil. */
static int proc_forkserver_pid(lua_State *L) {
  if (server.pid != 0) reap_server(0);
  if (server.pid == 0 || server.owner != getpid()) lua_pushnil(L);
  else lua_pushinteger(L, server.pid);
  return 1;
}

/* Where this thread's id is for glibc (in its thread descriptor, just
 * before the robust list head the kernel knows), checked against the id. */
static pid_t *thread_id_word(struct robust_head **head, size_t *len) {
  pid_t *tid;
  if (syscall(SYS_get_robust_list, 0, head, len) < 0 || *head == NULL)
    return NULL;
  tid = (pid_t *)((char *)*head - 2 * sizeof(pid_t) - sizeof(void *));
  if (*tid != (pid_t)syscall(SYS_gettid)) return NULL;
  /* An empty list points at itself, as does the descriptor's last entry. */
  if ((*head)->list != *head || *(void **)((char *)*head - sizeof(void *))
      != *head)
    return NULL;
  return tid;
}

static void run_payload(lua_State *L, int fd);

/* The server's loop: a fork per request until the socket closes. */
static int serve(lua_State *L, int sock, pid_t owner, char **preload) {
  struct robust_head *head;
  size_t len;
  pid_t *tid;
  /* A Ctrl-C at the terminal reaches the whole group: the server is not
   * the one to stop, and its children get the handler back. */
  signal(SIGINT, SIG_IGN);
  if (preload[0] == NULL || preload[1] == NULL) return 1;
  lua_getglobal(L, LUA_LOADLIBNAME);
  if (lua_istable(L, -1)) {
    lua_pushstring(L, preload[0]);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, preload[1]);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
  for (preload += 2; *preload != NULL; preload++) {
    lua_getglobal(L, "require");
    lua_pushstring(L, *preload);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
      const char *msg = luaL_tolstring(L, -1, NULL);
      /* Its first line: require's lists every path it tried. */
      fprintf(stderr, "luamp: the forkserver cannot preload '%s': %.*s\n",
              *preload, (int)strcspn(msg, "\n"), msg);
      lua_pop(L, 2);
    }
  }
  if ((tid = thread_id_word(&head, &len)) == NULL) {
    send_int(sock, -ENOTSUP, NULL, 0);
    return 1;
  }
  if (send_int(sock, 0, NULL, 0) < 0) return 1;
  for (;;) {
    int32_t slot;
    int fds[MAX_FDS], nfds = 0, i;
    long pid;
    ssize_t r = recv_int(sock, &slot, fds, &nfds, 0);
    if (r == 0) return 0; /* the owner closed it, or ended */
    if (r < 0 || nfds < 1 || slot < 0 || slot >= LMP_MAX_PROCS) {
      for (i = 0; i < nfds; i++) close(fds[i]);
      if (r < 0 && r != -EPROTO) return 1;
      send_int(sock, -EPROTO, NULL, 0);
      continue;
    }
    /* As before a fork of proc_fork's; a hook that fails (for want of
     * memory) leaves its work to the child. */
    lua_pushcfunction(L, run_parent_hooks);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
    fflush(NULL);
    pid = syscall(SYS_clone, CLONE_PARENT | CLONE_CHILD_SETTID |
                  CLONE_CHILD_CLEARTID | SIGCHLD, NULL, NULL, tid, 0);
    if (pid == 0) {
      close(sock);
      syscall(SYS_set_robust_list, head, len);
      after_fork_child((uint32_t)slot, owner);
      signal(SIGINT, SIG_DFL);
      lmp_sigint_own();
      set_handed(fds + 1, nfds - 1);
      run_payload(L, fds[0]); /* never returns */
    }
    if (pid > 0) atomic_store(&lmp_slot_at((uint32_t)slot)->pid, (int32_t)pid);
    for (i = 0; i < nfds; i++) close(fds[i]);
    if (send_int(sock, pid > 0 ? (int32_t)pid : -errno, NULL, 0) < 0)
      return 1;
  }
}

/* Puts the first executable `luamp` on $PATH in path: 1, or 0. */
static int luamp_on_path(char *path, size_t size) {
  const char *dirs = getenv("PATH"), *end;
  if (dirs == NULL) return 0;
  for (;; dirs = end + 1) {
    size_t len;
    end = strchr(dirs, ':');
    len = end != NULL ? (size_t)(end - dirs) : strlen(dirs);
    if (snprintf(path, size, "%.*s/luamp", (int)(len ? len : 1),
                 len ? dirs : ".") < (int)size &&
        access(path, X_OK) == 0)
      return 1;
    if (end == NULL) return 0;
  }
}

/* executable() -> the program a spawned child runs unless told another:
 * this process's own when a luamp host runs it (the luamp command, or an
 * application embedding one), else the installed luamp command, else the
 * luamp command on $PATH (a module installed under another prefix than
 * the one it was built for); nil when none can be found. */
static int proc_executable(lua_State *L) {
  char path[4096];
  ssize_t n;
  lua_getfield(L, LUA_REGISTRYINDEX, LMP_HOSTED);
  if (lua_toboolean(L, -1) &&
      (n = readlink("/proc/self/exe", path, sizeof path - 1)) > 0) {
    lua_pushlstring(L, path, (size_t)n);
    return 1;
  }
#ifdef LUAMP_INSTALLED_EXE
  if (access(LUAMP_INSTALLED_EXE, X_OK) == 0) {
    lua_pushstring(L, LUAMP_INSTALLED_EXE);
    return 1;
  }
#endif
  if (luamp_on_path(path, sizeof path)) {
    lua_pushstring(L, path);
    return 1;
  }
  lua_pushnil(L);
  return 1;
}

/* ------------------------------------------------ the exec'd processes */

int lmp_spawn_fail(const char *why) {
  fprintf(stderr, "luamp: a spawned process cannot start: %s\n", why);
  return 1;
}

/* A child's bootstrap message, read from fd, run by luamp.process's
 * `spawned`; then the end a forked child has.  Never returns. */
static void run_payload(lua_State *L, int fd) {
  luaL_Buffer b;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luamp.process");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "spawned");
  luaL_buffinit(L, &b);
  for (;;) {
    char *p = luaL_prepbuffer(&b);
    ssize_t r = read(fd, p, LUAL_BUFFERSIZE);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) _exit(lmp_spawn_fail(strerror(errno)));
    if (r == 0) break;
    luaL_addsize(&b, (size_t)r);
  }
  close(fd);
  luaL_pushresult(&b);
  lmp_end_child(L, lua_pcall(L, 1, 1, 0));
}

#define RETRY_ENV "LUAMP_SPAWN_RETRY"
#define MAX_RETRIES 8

int lmp_child_main(int argc, char **argv, lmp_child_open open, void *ud) {
  void *addr = NULL;
  unsigned long slot;
  long ppid, nh, i;
  char *end;
  int rc, serving, hfds[LMP_MAX_HANDED];
  lua_State *L;
  if (argc < 2) return 0;
  if (strcmp(argv[1], SPAWN_FLAG) == 0) serving = 0;
  else if (strcmp(argv[1], SERVER_FLAG) == 0) serving = 1;
  else return 0;
  if ((serving ? argc < 8 : argc != 6) ||
      sscanf(argv[2], "%p", &addr) != 1 ||
      (slot = strtoul(argv[3], &end, 10), *end != '\0') ||
      slot >= LMP_MAX_PROCS || (ppid = strtol(argv[4], &end, 10), *end) ||
      (nh = strtol(argv[5], &end, 10), *end) || nh < 0 ||
      nh > LMP_MAX_HANDED)
    _exit(lmp_spawn_fail("bad arguments"));
  /* As a fork's: die with the parent, and not after it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != (pid_t)ppid) _exit(1);
  child_stdin();
  /* The address may be taken here by chance (this run's own layout, which
   * address space randomisation draws anew): another run of the same
   * program, with the same descriptors, draws another.  A few times. */
  rc = lmp_arena_attach(3, addr);
  if (rc == -EADDRINUSE) {
    const char *tries = getenv(RETRY_ENV);
    int n = tries != NULL ? atoi(tries) : 0;
    if (n < MAX_RETRIES) {
      char next[16];
      snprintf(next, sizeof next, "%d", n + 1);
      setenv(RETRY_ENV, next, 1);
      execv("/proc/self/exe", argv);
    }
  }
  unsetenv(RETRY_ENV);
  if (rc < 0) {
    char why[160];
    snprintf(why, sizeof why, "cannot map the family's arena at %p: %s",
             addr, rc == -EADDRINUSE ? "the address is taken in this "
             "process" : strerror(-rc));
    _exit(lmp_spawn_fail(why));
  }
  lmp_pid = getpid();
  lmp_slot_adopt((uint32_t)slot);
  in_child = 1;
  if ((L = open(ud)) == NULL) _exit(1);
  if (serving) _exit(serve(L, 4, (pid_t)ppid, argv + 6));
  for (i = 0; i < nh; i++) {
    hfds[i] = FIRST_HANDED + (int)i;
    fcntl(hfds[i], F_SETFD, FD_CLOEXEC);
  }
  set_handed(hfds, (int)nh);
  run_payload(L, 4);
  return 1; /* not reached */
}

/* ----------------------------------------------------- Sentinel methods */

static lmp_child *checkchild(lua_State *L) {
  child_ud *u = lmp_checkhandle(L, 1);
  if (u->c == NULL) luaL_error(L, "attempt to use a closed process handle");
  return u->c;
}

static int child_pid(lua_State *L) {
  lua_pushinteger(L, checkchild(L)->pid);
  return 1;
}

/* exitcode() -> integer or nil while running; reaps without waiting. */
static int child_exitcode(lua_State *L) {
  lmp_child *c = checkchild(L);
  if (!reap(c)) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, exitcode(c));
  return 1;
}

static int child_ours(lua_State *L) {
  lua_pushboolean(L, checkchild(L)->owner == getpid());
  return 1;
}

static int ready_child(void *ud) { return reap(ud); }

/* wait([timeout]) -> true once ended, false on timeout; raises on Ctrl-C. */
static int child_wait(lua_State *L) {
  lmp_child *c = checkchild(L);
  double deadline = lmp_opt_deadline(L, 2);
  int rc;
  if (c->owner != getpid())
    return luaL_error(L, "can only join a child process");
  rc = lmp_wait(L, ready_child, c, deadline);
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot wait");
  lua_pushboolean(L, rc);
  return 1;
}

/* signal(signum) -> true if sent; false if the child has ended. */
static int child_signal(lua_State *L) {
  lmp_child *c = checkchild(L);
  int sig = (int)luaL_checkinteger(L, 2);
  if (c->owner != getpid() || reap(c)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, kill(c->pid, sig) == 0);
  return 1;
}

static void child_close(void *h) {
  child_ud *u = h;
  if (u->c != NULL) {
    lmp_child *c = u->c;
    u->c = NULL;
    c->handles--;
    maybe_free(c);
  }
}

static int child_closed(void *h) { return ((child_ud *)h)->c == NULL; }

static int child_tostring(lua_State *L) {
  child_ud *u = lua_touserdata(L, 1);
  lua_pushfstring(L, SENTINEL " (pid %d)", (int)u->c->pid);
  return 1;
}

/* For mp.wait: ready once the child has ended; -1 for a child of
 * another process. */
static int child_ready(void *h, int *fd) {
  child_ud *u = h;
  (void)fd;
  if (u->c == NULL || u->c->owner != getpid()) return -1;
  return reap(u->c);
}

/* --------------------------------------------------------- shutdown */

/* Whether none is left running of the children *ud names: NOT_DAEMONS,
 * ALL or DAEMONS. */
enum { NOT_DAEMONS, ALL, DAEMONS };

static int ready_none(void *ud) {
  int which = *(int *)ud, left = 0;
  lmp_child *c;
  lmp_reap_children();
  for (c = children; c != NULL; c = c->next)
    if (!c->ended && (which == ALL || (which == DAEMONS) == (c->daemon != 0)))
      left++;
  return left == 0;
}

static void signal_all(int sig, int daemons_only) {
  lmp_child *c;
  for (c = children; c != NULL; c = c->next)
    if (!c->ended && (!daemons_only || c->daemon)) kill(c->pid, sig);
}

/* Ends every child still running: SIGTERM, then SIGKILL after `grace`
 * seconds, then waits for them all.  Returns how many had to be ended. */
int lmp_terminate_children(double grace, int daemons_only) {
  int n = 0, which = daemons_only ? DAEMONS : ALL;
  lmp_child *c, *next;
  lmp_reap_children();
  for (c = children; c != NULL; c = c->next)
    if (!c->ended && (!daemons_only || c->daemon)) n++;
  if (n == 0) return 0;
  signal_all(SIGTERM, daemons_only);
  if (lmp_wait(NULL, ready_none, &which, lmp_now() + grace) != 1) {
    signal_all(SIGKILL, daemons_only);
    for (c = children; c != NULL; c = next) {
      int status;
      pid_t r;
      next = c->next;
      if (c->ended || (daemons_only && !c->daemon)) continue;
      do r = waitpid(c->pid, &status, 0);
      while (r < 0 && errno == EINTR);
      ended(c, r == c->pid ? status : W_EXITCODE(255, 0));
      maybe_free(c);
    }
  }
  return n;
}

/*
 * The end of a process's main code, as Python's atexit handler does it:
 * terminate the daemon children, then wait for the others.  A Ctrl-C
 * during the wait ends every child at once.  Returns -EINTR when it was
 * interrupted, else the number of children that had to be terminated.
 */
static int shutdown_children(void) {
  int which = NOT_DAEMONS, rc, n = lmp_terminate_children(0.5, 1);
  rc = lmp_wait(NULL, ready_none, &which, -1); /* no Lua runs here */
  /* A Ctrl-C that came with the children's ends (the same one, sent to
   * the whole group) is one all the same. */
  if (rc < 0 || lmp_defer_interrupt()) {
    lmp_take_interrupt();
    lmp_terminate_children(0.5, 0);
    return -EINTR;
  }
  return n;
}

/* The hook, the children and the server: lmp_run_atexit's work. */
static int run_exit(lua_State *L) {
  int rc;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &atexit_key) == LUA_TFUNCTION) {
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
      fprintf(stderr, "luamp: error at exit: %s\n", lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  } else {
    lua_pop(L, 1);
  }
  rc = shutdown_children();
  stop_server();
  return rc;
}

/* A child, forked or spawned, has one end, where it leaves; its state is
 * a copy of its parent's (registry and all) or one of its own.  Its end
 * is marked here, once begun, rather than in its registry: a write there
 * would be one more page copied from its parent's, and the mark would
 * have to be cleared first, at the fork, at the cost of another. */
static pid_t ended_pid; /* a child: its pid, once its end has begun */
static int ended_rc;

int lmp_run_atexit(lua_State *L) {
  int rc;
  if (in_child) {
    if (ended_pid == lmp_pid) return ended_rc;
    ended_pid = lmp_pid; /* once, even if the hook raises */
    ended_rc = 0;
    return ended_rc = run_exit(L);
  }
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &atexit_done) == LUA_TNUMBER) {
    rc = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return rc;
  }
  lua_pop(L, 1);
  lua_pushinteger(L, 0); /* once, even if the hook raises */
  lua_rawsetp(L, LUA_REGISTRYINDEX, &atexit_done);
  rc = run_exit(L);
  lua_pushinteger(L, rc);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &atexit_done);
  return rc;
}

/* --------------------------------------------------------- cpu_count */

static int cgroup_quota(void) {
  char path[512], line[512], mnt[256] = "";
  FILE *f;
  int best = 0;
  /* Where cgroup v2 is mounted. */
  if ((f = fopen("/proc/self/mountinfo", "r")) == NULL) return 0;
  while (fgets(line, sizeof line, f) != NULL) {
    char *sep = strstr(line, " - cgroup2 ");
    if (sep != NULL) {
      char m[256];
      if (sscanf(line, "%*s %*s %*s %*s %255s", m) == 1) {
        snprintf(mnt, sizeof mnt, "%s", m);
        break;
      }
    }
  }
  fclose(f);
  if (mnt[0] == '\0') return 0;
  /* Our group in it, then each ancestor: the smallest quota binds. */
  if ((f = fopen("/proc/self/cgroup", "r")) == NULL) return 0;
  path[0] = '\0';
  while (fgets(line, sizeof line, f) != NULL) {
    if (strncmp(line, "0::", 3) == 0) {
      line[strcspn(line, "\n")] = '\0';
      snprintf(path, sizeof path, "%s", line + 3);
      break;
    }
  }
  fclose(f);
  for (;;) {
    char file[1024], quota[64];
    long long q, period;
    snprintf(file, sizeof file, "%s%s/cpu.max", mnt,
             strcmp(path, "/") == 0 ? "" : path);
    if ((f = fopen(file, "r")) != NULL) {
      if (fscanf(f, "%63s %lld", quota, &period) == 2 &&
          strcmp(quota, "max") != 0 && period > 0) {
        q = atoll(quota);
        int n = (int)((q + period - 1) / period);
        if (n < 1) n = 1;
        if (best == 0 || n < best) best = n;
      }
      fclose(f);
    }
    if (path[0] == '\0' || strcmp(path, "/") == 0) break;
    {
      char *slash = strrchr(path, '/');
      if (slash == NULL) break;
      if (slash == path) strcpy(path, "/");
      else *slash = '\0';
    }
  }
  return best;
}

int lmp_cpu_count(void) {
  cpu_set_t set;
  int n = 0, q;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
  if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0) n = 1;
  q = cgroup_quota();
  if (q > 0 && q < n) n = q;
  return n;
}

static int proc_cpu_count(lua_State *L) {
  lua_pushinteger(L, lmp_cpu_count());
  return 1;
}

/* reaped() -> how many children this process has reaped: a cheap way to
 * ask "did any child end since I last looked?". */
static int proc_reaped(lua_State *L) {
  lmp_service_pending();
  lua_pushinteger(L, nreaped);
  return 1;
}

/* getpid() -> this process's pid, kept since its fork: no system call. */
static int proc_getpid(lua_State *L) {
  lua_pushinteger(L, lmp_pid);
  return 1;
}

static int proc_getppid(lua_State *L) {
  lua_pushinteger(L, getppid());
  return 1;
}

/* alive(pid) -> whether a process with that pid exists. */
static int proc_alive(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  lua_pushboolean(L, kill(pid, 0) == 0 || errno == EPERM);
  return 1;
}

/* on_exit(fn): the Lua part of this process's exit (see lmp_run_atexit). */
static int proc_on_exit(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &atexit_key);
  return 0;
}

static int proc_is_child(lua_State *L) {
  lua_pushboolean(L, in_child);
  return 1;
}

static const luaL_Reg child_meth[] = {
  {"pid", child_pid},       {"exitcode", child_exitcode},
  {"wait", child_wait},     {"signal", child_signal},
  {"ours", child_ours},     {NULL, NULL}
};

static const lmp_class sentinel_class = {
  .name = SENTINEL, .what = "process handle", .size = sizeof(child_ud),
  .meth = child_meth, .tostring = child_tostring, .close = child_close,
  .closed = child_closed, .ready = child_ready,
};

static const lmp_class *const process_classes[] = {&sentinel_class, NULL};

static const luaL_Reg proc_funcs[] = {
  {"fork", proc_fork},         {"spawn", proc_spawn},
  {"forkserver", proc_forkserver}, {"forkserver_pid", proc_forkserver_pid},
  {"executable", proc_executable}, {"cpu_count", proc_cpu_count},
  {"getpid", proc_getpid},     {"getppid", proc_getppid},
  {"alive", proc_alive},       {"reaped", proc_reaped},
  {"on_exit", proc_on_exit},   {"is_child", proc_is_child},
  {NULL, NULL}
};

const lmp_family lmp_process_family = {process_classes, proc_funcs, NULL};
