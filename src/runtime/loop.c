/* loop.c -- the per-process libuv loop, the signals luamp watches (SIGCHLD,
 * SIGURG, SIGINT), and lmp_wait, the one way every blocking call sleeps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <stdlib.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "runtime.h"

/*
 * Waking up.  Every process has a wake word in its arena slot.  A blocked
 * luamp call sleeps on its own word with FUTEX_WAIT, having read the word
 * before it last checked its condition; anything that may make the
 * condition true bumps the word and wakes it:
 *
 *   - a shared object changed by another process (lmp_wake on our slot);
 *   - a signal we watch: our handlers run libuv's (which queues the signal
 *     for the loop) and then bump our own word, so a SIGCHLD that lands
 *     between the check and the sleep still ends the sleep.
 *
 * After each wake the waiter runs the loop once without blocking
 * (lmp_service), which reaps children and runs whatever else the process
 * owes, then checks its condition again.  There is no polling: a waiter
 * with nothing to do sleeps until its deadline.
 */

static uv_loop_t own_loop;
static uv_loop_t *loop;
static uv_signal_t urg_h;
static pid_t loop_pid;
static void (*service_hook)(void); /* process.c's reaper */
static void (*fork_hooks[8])(void); /* lmp_on_fork_child's */
static int nfork_hooks;
static int sigterm_taken; /* lmp_sigterm_interrupts was called */

static volatile sig_atomic_t sigint_pending; /* set by SIGINT */
static volatile sig_atomic_t interrupted;    /* ever interrupted */
static lua_State *int_L;
static int int_held; /* lmp_hold_interrupt's holds */
/* lmp_interrupt_defer_in's chunk-name prefixes, and their lengths */
static const char *defer_src, *through_src;
static size_t defer_len, through_len;

/* The signals watched, each with the handler libuv installed, which ours
 * chains to. */
#define MAXSIG 4
static struct {
  int sig;
  uv_signal_t *h;
  struct sigaction uv;
} watched[MAXSIG];
static int nwatched;

double lmp_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile sig_atomic_t sig_pending; /* the loop has signals to run */

/* While a process sleeps in poll (lmp_wait_fds) its signal handlers also
 * write to this eventfd, which is in the poll set: a signal that lands
 * between the last check and the poll still ends the poll. */
static int wake_fd = -1;
static volatile sig_atomic_t polling;

static void bump_self(void) {
  if (lmp_self != NULL) lmp_wake(lmp_self_index);
  if (polling && wake_fd >= 0) {
    uint64_t one = 1;
    ssize_t r = write(wake_fd, &one, sizeof one);
    (void)r;
  }
}

static void call_prev(const struct sigaction *sa, int sig, siginfo_t *si,
                      void *uc) {
  if (sa->sa_flags & SA_SIGINFO) {
    if (sa->sa_sigaction != NULL) sa->sa_sigaction(sig, si, uc);
  } else if (sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN &&
             sa->sa_handler != NULL) {
    sa->sa_handler(sig);
  }
}

static void on_signal(int sig, siginfo_t *si, void *uc) {
  int saved = errno, i;
  for (i = 0; i < nwatched; i++)
    if (watched[i].sig == sig) call_prev(&watched[i].uv, sig, si, uc);
  sig_pending = 1;
  bump_self();
  errno = saved;
}

int lmp_loop_signal(uv_signal_t *h, int sig, uv_signal_cb cb) {
  struct sigaction sa;
  int rc;
  if (nwatched == MAXSIG) return -ENOSPC;
  if ((rc = uv_signal_init(loop, h)) < 0) return rc;
  if ((rc = uv_signal_start(h, cb, sig)) < 0) return rc;
  /* A watched signal must not keep uv_run(UV_RUN_DEFAULT) alive. */
  uv_unref((uv_handle_t *)h);
  /* Our handler goes in front of the one libuv just installed. */
  watched[nwatched].sig = sig;
  watched[nwatched].h = h;
  sigaction(sig, NULL, &watched[nwatched].uv);
  nwatched++;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
  return 0;
}

static void on_urg(uv_signal_t *h, int sig) {
  (void)h;
  (void)sig; /* only here to end a sleep in the loop */
}

int lmp_loop_init(void *userloop, void (*hook)(void)) {
  int rc;
  if (loop != NULL && loop_pid == getpid()) return 0;
  if (userloop != NULL) {
    loop = userloop;
  } else {
    if ((rc = uv_loop_init(&own_loop)) < 0) return rc;
    loop = &own_loop;
  }
  loop_pid = getpid();
  service_hook = hook;
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) return -errno;
  return lmp_loop_signal(&urg_h, SIGURG, on_urg);
}

static void close_cb(uv_handle_t *h) { (void)h; }

void lmp_loop_end(void) {
  int i;
  if (loop == NULL || loop_pid != getpid()) return;
  for (i = 0; i < nwatched; i++) /* (libuv then sets SIG_DFL back) */
    if (!uv_is_closing((uv_handle_t *)watched[i].h))
      uv_close((uv_handle_t *)watched[i].h, close_cb);
  nwatched = 0;
  if (wake_fd >= 0) close(wake_fd);
  wake_fd = -1;
  if (loop == &own_loop) {
    uv_run(loop, UV_RUN_NOWAIT); /* the closes */
    uv_loop_close(loop);
  }
  loop = NULL;
  loop_pid = 0;
  service_hook = NULL;
}

static void close_all(uv_handle_t *h, void *arg) {
  int *closed = arg;
  if (h->type == UV_SIGNAL) {
    /* A signal the parent caught but had not dispatched at the fork would
     * keep the handle from ever closing (or firing) here: its message was
     * in the parent's signal pipe, which is not ours any more. */
    uv_signal_t *s = (uv_signal_t *)h;
    s->dispatched_signals = s->caught_signals;
  }
  for (int i = 0; i < nwatched; i++)
    if (h == (uv_handle_t *)watched[i].h) return;
  if (!uv_is_closing(h)) {
    uv_close(h, close_cb);
    (*closed)++;
  }
}

/*
 * The child's loop.  The parent's loop comes across the fork with its
 * handles and its kernel state (epoll set, signal pipe) shared with the
 * parent.  uv_loop_fork gives the child its own kernel state; then every
 * inherited handle but our own signal watchers (which carry on, with the
 * same handlers) is closed without running.
 */
static int in_service; /* the service does not run inside itself */
static double service_due = -1; /* when it must run again; -1: on wake-ups */

void lmp_loop_after_fork(void) {
  int closed = 0;
  /* A child forked from inside the service (a Pool's callback) runs its
   * own from the start. */
  in_service = 0;
  service_due = -1;
  int_held = 0; /* (a child forked inside a hold of its parent's) */
  if (loop == NULL) return;
  uv_loop_fork(loop);
  uv_walk(loop, close_all, &closed);
  if (closed > 0) uv_run(loop, UV_RUN_NOWAIT);
  loop_pid = getpid();
  sigint_pending = 0;
  interrupted = 0;
  sig_pending = 0;
  polling = 0;
  /* The parent's eventfd is shared with it: get our own. */
  if (wake_fd >= 0) close(wake_fd);
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  for (int i = 0; i < nfork_hooks; i++) fork_hooks[i]();
  /* A child is ended by SIGTERM as ever, whatever its parent made of it. */
  if (sigterm_taken) {
    signal(SIGTERM, SIG_DFL);
    sigterm_taken = 0;
  }
}

void lmp_on_fork_child(void (*fn)(void)) {
  int i;
  for (i = 0; i < nfork_hooks; i++)
    if (fork_hooks[i] == fn) return;
  if (nfork_hooks < 8) fork_hooks[nfork_hooks++] = fn;
}

uv_loop_t *lmp_uv_loop(void) { return loop; }

void lmp_service_pending(void) {
  if (sig_pending) lmp_service();
}

void lmp_service(void) {
  sig_pending = 0;
  if (loop != NULL) uv_run(loop, UV_RUN_NOWAIT);
  if (service_hook != NULL) service_hook();
}

/* ---------------------------------------------------------------- SIGINT */

/* The interrupt is raised at a call or at the next instruction of Lua
 * code, never at a return: a return hook runs before the results are
 * moved, and a luamp call that has done its work (a message taken, a
 * lock acquired) would lose them.  So it comes after that call, as
 * Python's handler runs after the C call that returned its result.  A
 * deferred one (lmp_defer_interrupt) is not raised; a held one
 * (lmp_hold_interrupt) is raised when the hold ends.
 *
 * Nor is it raised in the code of the chunks that lmp_interrupt_defer_in
 * names (a Pool's bookkeeping, whose steps must not stop half-way): the
 * hook then runs at every instruction and call until the innermost Lua
 * function is another's, and raises it there, at its first instruction
 * after the call into luamp returned, or at its entry when that code
 * calls it (a callback).  A luamp call of that code that waits still ends
 * with the interrupt, unless it is held. */
static void int_hook(lua_State *L, lua_Debug *ar);

static int deferring(lua_State *L) {
  lua_Debug ar;
  int level;
  if (defer_src == NULL) return 0;
  for (level = 0; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "S", &ar)) return 0;
    if (ar.what[0] == 'C') continue; /* to the Lua code that called it */
    if (strncmp(ar.source, defer_src, defer_len) == 0) return 1;
    if (strncmp(ar.source, through_src, through_len) != 0) return 0;
  }
  return 0;
}

static void set_int_hook(lua_State *L) {
  lua_sethook(L, int_hook, LUA_MASKCALL | LUA_MASKCOUNT, 1);
}

static void int_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!sigint_pending || int_held) return; /* (the release sets it again) */
  if (deferring(L)) {
    set_int_hook(L);
    return;
  }
  lmp_raise_interrupt(L);
}

static void on_sigint(int sig) {
  int saved = errno;
  (void)sig;
  if (sigint_pending && int_L != NULL) {
    /* as lua.c: a second Ctrl-C before the first was seen (code that
     * never reaches the hook, e.g. a long string.find) kills */
    signal(SIGINT, SIG_DFL);
    raise(SIGINT);
  }
  sigint_pending = 1;
  sig_pending = 1;
  if (int_L != NULL) /* as lua.c does: the hook raises at the next step */
    set_int_hook(int_L);
  bump_self();
  errno = saved;
}

static int sigint_owned; /* a host's: nobody else installs handlers */

/* Installs the handler; unless `always`, not over an ignored SIGINT (as a
 * background job has). */
static void install_sigint(int always) {
  struct sigaction sa, cur;
  if (sigint_owned) return;
  sigaction(SIGINT, NULL, &cur);
  if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == on_sigint) return;
  if (cur.sa_handler == SIG_IGN && !always) return;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0; /* no SA_RESTART: let blocking reads end */
  sigaction(SIGINT, &sa, NULL);
}

void lmp_sigint_install(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  int_L = lua_tothread(L, -1);
  lua_pop(L, 1);
  install_sigint(0);
}

void lmp_sigint_forget(void) { int_L = NULL; }

void lmp_sigterm_interrupts(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigterm_taken = 1;
}

/* A host owns SIGINT, as lua.c does even in a background job: its
 * handler, once installed, stays; a module in a stock lua5.4 re-checks
 * before each wait, since lua.c installs its own around every chunk it
 * runs. */
void lmp_sigint_own(void) {
  sigint_owned = 0;
  install_sigint(1);
  sigint_owned = 1;
}

static void take_interrupt(void) {
  sigint_pending = 0;
  if (int_L != NULL) lua_sethook(int_L, NULL, 0, 0);
  interrupted = 1;
}

/* The interruption is an error object of type KeyboardInterrupt, so that
 * whoever catches an error can tell it from any other. */
int lmp_raise_interrupt(lua_State *L) {
  take_interrupt();
  return lmp_throw(L, "KeyboardInterrupt", "interrupted");
}

int lmp_is_interrupt(lua_State *L, int idx) {
  return lmp_is_error(L, idx, "KeyboardInterrupt");
}

int lmp_was_interrupted(void) { return interrupted; }

int lmp_interrupt_pending(void) { return sigint_pending; }

int lmp_defer_interrupt(void) {
  int pending = sigint_pending;
  sigint_pending = 0;
  return pending;
}

void lmp_resume_interrupt(int pending) {
  if (!pending) return;
  sigint_pending = pending;
  if (int_L != NULL) set_int_hook(int_L);
}

void lmp_take_interrupt(void) { take_interrupt(); }

void lmp_hold_interrupt(void) { int_held++; }

void lmp_release_interrupt(void) {
  if (int_held > 0 && --int_held == 0 && sigint_pending && int_L != NULL)
    set_int_hook(int_L);
}

int lmp_interrupt_due(int holds) {
  return sigint_pending && int_held <= holds;
}

void lmp_interrupt_later(void) { lmp_resume_interrupt(1); }

void lmp_interrupt_defer_in(const char *defer, const char *through) {
  defer_src = defer;
  defer_len = defer != NULL ? strlen(defer) : 0;
  through_src = through != NULL ? through : defer;
  through_len = through_src != NULL ? strlen(through_src) : 0;
}

/* ------------------------------------------------------------------ wait */

/*
 * The process's own Lua work while it waits.  A Pool registers a service
 * function (core.set_service) in its state's registry; each wake-up of a
 * wait that was given that state calls it, so results are collected and
 * callbacks run while the owner is blocked in any luamp call.  A wait
 * given no state runs no Lua.  An error in the service ends the wait with
 * -ECANCELED, the error kept for lmp_raise_errno to raise.  A service that
 * returns a number must run again within that many seconds (a broker
 * pool renewing its keys), wake-up or not: the waits sleep no longer.
 */
#define SERVICE_KEY "luamp.service"
#define SERVICE_ERR "luamp.service_error"


static int run_service(lua_State *L) {
  int rc;
  if (L == NULL || in_service) return 0;
  if (lua_getfield(L, LUA_REGISTRYINDEX, SERVICE_KEY) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    service_due = -1;
    return 0;
  }
  in_service = 1;
  rc = lua_pcall(L, 0, 1, 0);
  in_service = 0;
  if (rc != LUA_OK) {
    lua_setfield(L, LUA_REGISTRYINDEX, SERVICE_ERR);
    return -ECANCELED;
  }
  service_due = -1;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    double in = lua_tonumber(L, -1);
    service_due = lmp_now() + (in > 0 ? in : 0);
  }
  lua_pop(L, 1);
  return 0;
}

/* The earlier of deadline and the service's next run, for a wait given
 * state L (-1: no limit). */
static double wake_by(lua_State *L, double deadline) {
  if (L == NULL || in_service || service_due < 0) return deadline;
  return deadline < 0 || service_due < deadline ? service_due : deadline;
}

void lmp_set_service(lua_State *L, int idx) {
  lua_pushvalue(L, idx);
  lua_setfield(L, LUA_REGISTRYINDEX, SERVICE_KEY);
}

void lmp_service_soon(void) { service_due = lmp_now(); }

int lmp_raise_errno(lua_State *L, int rc, const char *what) {
  if (rc == -ECANCELED) {
    lua_getfield(L, LUA_REGISTRYINDEX, SERVICE_ERR);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, SERVICE_ERR);
    return lua_error(L);
  }
  if (rc == -EINTR) return lmp_raise_interrupt(L);
  if (rc == -ENOMEM) return lmp_nomem(L, 0);
  return luaL_error(L, "%s: %s", what, strerror(-rc));
}

/* However often spins fail, the next one keeps this many pauses' worth of
 * rounds, and at least 4 rounds. */
#define SPIN_MIN 16

int lmp_spin(lmp_ready_fn ready, void *ud, lmp_spinner *s, int max, int gap) {
  int i, k, rounds = s->rounds > 0 ? s->rounds : max;
  int least = SPIN_MIN / gap > 4 ? SPIN_MIN / gap : 4;
  if (rounds > max) rounds = max;
  for (i = 0; i < rounds; i++) {
    if (ready(ud)) {
      s->rounds = rounds < max / 2 ? 2 * rounds : max;
      return 1;
    }
    for (k = 0; k < gap; k++) lmp_cpu_relax();
  }
  s->rounds = rounds / 2 > least ? rounds / 2 : least;
  return 0;
}

int lmp_wait_on(lua_State *L, _Atomic uint32_t *word, lmp_ready_fn ready,
                void *ud, double deadline) {
  _Atomic uint32_t *w = word != NULL ? word : &lmp_self->wake;
  /* With a service whose next run is due at a time, it runs first, so
   * that the sleep ends by then (after its own work). */
  int rc, woken = L != NULL && service_due >= 0;
  /* A wait inside another's service leaves the outer one as it was. */
  lmp_off was_on = atomic_load(&lmp_self->waiting_on);
  uint32_t was_in;
  install_sigint(0); /* lua.c may have put its own back between calls */
  if (word != NULL) atomic_store(&lmp_self->waiting_on, LMP_OFF(word));
  /* Before the word is read: see lmp_wake. */
  was_in = atomic_exchange(&lmp_self->in_futex, 1);
  for (;;) {
    uint32_t seq = atomic_load(w);
    /* The loop runs when a signal asked for it; a plain wake-up costs no
     * syscall. */
    if (sig_pending) lmp_service();
    if (woken && (rc = run_service(L)) < 0) break;
    if (ready(ud)) { rc = 1; break; }
    if (sigint_pending && !int_held) { rc = -EINTR; break; }
    if (deadline >= 0 && lmp_now() >= deadline) { rc = 0; break; }
    lmp_futex_wait(w, seq, wake_by(L, deadline));
    woken = 1;
  }
  atomic_store(&lmp_self->in_futex, was_in);
  atomic_store(&lmp_self->waiting_on, was_on);
  return rc;
}

int lmp_wait(lua_State *L, lmp_ready_fn ready, void *ud, double deadline) {
  return lmp_wait_on(L, NULL, ready, ud, deadline);
}

/*
 * Waiting on descriptors.  The process is marked as polling (so its signal
 * handlers write to wake_fd) and sleeping (so lmp_wake from other
 * processes signals it) before the conditions are checked; wake_fd is in
 * the poll set, so nothing that happens after the check is missed.
 */
int lmp_wait_fds(lua_State *L, struct pollfd *fds, int nfds,
                 lmp_ready_fn ready, void *ud, double deadline) {
  struct pollfd stack[8], *all = stack;
  /* The service runs before the first poll too: a wake-up that came
   * while this process was not asleep (its message was put while it ran
   * Lua) left no trace here, unlike a futex word's. */
  int rc, woken = 1, was_polling = polling, was_sleeping;
  install_sigint(0);
  if (nfds + 1 > 8) {
    all = malloc(sizeof(struct pollfd) * (size_t)(nfds + 1));
    if (all == NULL) return -ENOMEM;
  }
  memcpy(all, fds, sizeof(struct pollfd) * (size_t)nfds);
  all[nfds].fd = wake_fd;
  all[nfds].events = POLLIN;
  polling = 1;
  was_sleeping = atomic_exchange(&lmp_self->sleeping, 1);
  for (;;) {
    struct timespec ts, *tsp = NULL;
    double wake;
    int n, i;
    if (sig_pending) lmp_service();
    if (woken && (rc = run_service(L)) < 0) break;
    if (ready != NULL && ready(ud)) { rc = 1; break; }
    if (sigint_pending && !int_held) { rc = -EINTR; break; }
    wake = wake_by(L, deadline);
    if (wake >= 0) {
      double left = wake - lmp_now();
      if (left < 0) left = 0;
      if (left > 1e6) left = 1e6; /* we loop; keep tv_sec sane */
      ts.tv_sec = (time_t)left;
      ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
      tsp = &ts;
    }
    for (i = 0; i <= nfds; i++) all[i].revents = 0;
    n = ppoll(all, (nfds_t)nfds + 1, tsp, NULL);
    woken = 1;
    if (n < 0 && errno != EINTR) { rc = -errno; break; }
    if (n > 0 && all[nfds].revents) { /* drain; then re-check */
      uint64_t v;
      ssize_t r = read(wake_fd, &v, sizeof v);
      (void)r;
      n--;
    }
    if (n > 0) { rc = 1; break; }
    if (n == 0 && deadline >= 0 && lmp_now() >= deadline) {
      rc = ready != NULL ? ready(ud) : 0;
      break;
    }
  }
  /* A wait inside another's service leaves the outer one as it was. */
  polling = was_polling;
  atomic_store(&lmp_self->sleeping, was_sleeping);
  for (int i = 0; i < nfds; i++) fds[i].revents = all[i].revents;
  if (all != stack) free(all);
  return rc;
}

int lmp_wait_fd(lua_State *L, int fd, short ev, double deadline) {
  struct pollfd p;
  p.fd = fd;
  p.events = ev;
  p.revents = 0;
  return lmp_wait_fds(L, &p, 1, NULL, NULL, deadline);
}

int lmp_fd_ready(int fd, short ev) {
  struct pollfd p;
  int rc;
  p.fd = fd;
  p.events = ev;
  p.revents = 0;
  do rc = poll(&p, 1, 0); while (rc < 0 && errno == EINTR);
  if (rc < 0) return -errno;
  return rc > 0;
}

/* ------------------------------------------------------------- deadlines */

double lmp_opt_deadline(lua_State *L, int idx) {
  lua_Number t;
  if (lua_isnoneornil(L, idx)) return -1;
  t = luaL_checknumber(L, idx);
  if (t != t) luaL_argerror(L, idx, "timeout must be a number, not NaN");
  if (t >= 1e15) return -1; /* math.huge and friends: no limit */
  if (t <= 0) return 0;
  return lmp_now() + t;
}

double lmp_block_deadline(lua_State *L, int idx) {
  double deadline = lmp_opt_deadline(L, idx + 1); /* checked either way */
  if (!lua_isnoneornil(L, idx) && !lua_toboolean(L, idx)) return 0;
  return deadline;
}
