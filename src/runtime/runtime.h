/* runtime.h -- the per-process runtime over the arena: error objects and
 * argument checks (error.c), the libuv loop, signals and the one way every
 * blocking call waits (loop.c), forked processes and their ends
 * (process.c), and the class builder that binds every Lua-visible type
 * (class.c).
 *
 * Functions that take a lua_State may raise Lua errors; their comments say
 * when they do not.  Others return 0 or -errno unless they say otherwise.
 */
#ifndef LUAMP_RUNTIME_H
#define LUAMP_RUNTIME_H

#include <signal.h>
#include <sys/types.h>

#include <lauxlib.h>
#include <lua.h>

#include "arena/arena.h"

struct pollfd;

/* ------------------------------------------------------------- errors */

/* Error objects: tables {type = T, message = M} whose metatable is
 * "luamp.Error" (made here, with __tostring "luamp.T: M"); see the README.
 * lmp_error_open makes the metatable in L's registry (idempotent). */
void lmp_error_open(lua_State *L);
/* Raises an error object of `type` with a formatted message (the format of
 * lua_pushfstring).  Never returns. */
int lmp_throw(lua_State *L, const char *type, const char *fmt, ...);
/* The same, with the value at vidx as the object's field `value`. */
int lmp_throw_value(lua_State *L, const char *type, int vidx,
                    const char *fmt, ...);
/* Is the value at idx an error object of `type`? */
int lmp_is_error(lua_State *L, int idx, const char *type);

/* Raises the arena-exhausted error, naming the options that size it
 * (`want` bytes were asked for, 0 if unknown).  Never returns. */
int lmp_nomem(lua_State *L, size_t want);

/* Raises the Lua error for rc, a -errno from a luamp call: Ctrl-C during
 * a wait (-EINTR) raises KeyboardInterrupt; an error in the Lua work run
 * during a wait (-ECANCELED) raises that error; -ENOMEM the arena error;
 * anything else "<what>: <strerror>".  Never returns. */
int lmp_raise_errno(lua_State *L, int rc, const char *what);

/* -------------------------------------------------------------- waiting */

/*
 * How to write a blocking call.
 *
 *   1. Read the timeout at the edge, before taking anything:
 *      lmp_opt_deadline(L, i) for a timeout argument, lmp_block_deadline
 *      for Python's (block, timeout) pair.  A deadline is lmp_now() seconds;
 *      0 means do not wait, negative means no limit.
 *   2. Write ready(ud): checks the condition without blocking (it may take
 *      and release a guard; it must not hold one when it returns 0), and
 *      when it holds takes what the call wanted (the lock, the unit).
 *   3. Call lmp_wait_on(L, word, ready, ud, deadline), sleeping on a futex
 *      word of the object that whoever changes the condition bumps
 *      (lmp_futex_bump), or lmp_wait_fds for descriptors.  A short
 *      lmp_spin first pays when another core is about to act.  Pass the
 *      caller's L: the process's own Lua work (a Pool's results and
 *      callbacks) runs in it during the wait; NULL runs none.
 *   4. The wait returns 1 (ready), 0 (deadline) or -EINTR (Ctrl-C) /
 *      -ECANCELED (the Lua work raised): release what the call holds, then
 *      lmp_raise_errno.
 *   5. The side that makes the condition true bumps the word, and calls
 *      lmp_notify_watchers(o) if mp.wait may be watching the object.
 *
 * Nothing polls: a waiter with nothing to do sleeps until it is woken or
 * its deadline passes.  (Locks and semaphores, whose holder may die
 * without waking anyone, are the exception: their waiters look every
 * 0.1 s whether the holder is still alive.)
 */

typedef int (*lmp_ready_fn)(void *ud);

/* Monotonic clock in seconds. */
double lmp_now(void);

/* The timeout argument at idx as a deadline: none or nil waits forever
 * (as does math.huge), a number <= 0 does not wait.  Raises for a
 * non-number or NaN. */
double lmp_opt_deadline(lua_State *L, int idx);
/* The (block, timeout) pair at idx, idx + 1: block false does not wait,
 * whatever the timeout. */
double lmp_block_deadline(lua_State *L, int idx);

/* Blocks until ready(ud) holds, the deadline passes or Ctrl-C: 1, 0 or
 * -EINTR (-ECANCELED when L's Lua work raised).  lmp_wait sleeps on the
 * process's own wake word, lmp_wait_on on `word`, a futex word of a
 * shared object; signals and lmp_wake end either sleep. */
int lmp_wait(lua_State *L, lmp_ready_fn ready, void *ud, double deadline);
int lmp_wait_on(lua_State *L, _Atomic uint32_t *word, lmp_ready_fn ready,
                void *ud, double deadline);
/* As lmp_wait, until one of fds is ready (poll events in .revents) or
 * ready(ud) (may be NULL) holds; 1, 0, -EINTR, -ECANCELED or -errno. */
int lmp_wait_fds(lua_State *L, struct pollfd *fds, int nfds,
                 lmp_ready_fn ready, void *ud, double deadline);
/* The same for one descriptor and poll events `ev`. */
int lmp_wait_fd(lua_State *L, int fd, short ev, double deadline);
/* Is fd ready for `ev` now, without waiting?  1, 0 or -errno. */
int lmp_fd_ready(int fd, short ev);

/* Checks ready(ud) a number of times, pausing the core `gap` times
 * between checks (for a condition another core is about to make true): 1
 * once it holds, 0 if it never did.  Never sleeps.  How many times adapts,
 * per process and per kind of wait (an lmp_spinner, zero-initialised, of
 * the caller's): a spin that succeeds lets the next one go on longer, up
 * to `max`; one that fails halves the next, down to a few rounds.  So a
 * peer running on another core is waited for without a sleep, and when
 * the peer cannot run meanwhile (more runnable processes than cores)
 * little time is spent spinning for it.  The gap is what a check costs
 * the peer: a check that reads a cache line the peer writes takes it from
 * the peer's core, and the peer's next write must take it back. */
typedef struct lmp_spinner {
  int rounds; /* the next spin's; 0: not yet set */
} lmp_spinner;
/* A queue's other end mid-message: checks 64 pauses (some 0.7 µs) apart,
 * so that a producer writes several messages for each time a waiting
 * consumer takes the line of the queue's tail from it. */
#define LMP_SPIN_QUEUE 62
#define LMP_SPIN_QUEUE_GAP 64
#define LMP_SPIN_LOCK 200   /* a holder mid-section; gap 1 */
#define LMP_SPIN_PIPE 256   /* a peer answering; each round polls; gap 1 */
int lmp_spin(lmp_ready_fn ready, void *ud, lmp_spinner *s, int max, int gap);

/* The Lua work this process does while it waits: fn(), called in the
 * waiting state after each wake-up (a Pool's result collection).  Kept in
 * L's registry; nil removes it. */
void lmp_set_service(lua_State *L, int idx);
/* Has the service run at the next wait, woken or not (work it has to send
 * that nothing else would wake this process for). */
void lmp_service_soon(void);

/* The process's libuv loop, for layers above that put handles on it (the
 * broker's connections); they wait on it through lmp_wait_fd on
 * uv_backend_fd and run it with UV_RUN_NOWAIT. */
struct uv_loop_s *lmp_uv_loop(void);

/* Has fn run in every child luamp forks, once the child's loop is its
 * own (its inherited handles closed without running): for what must not
 * cross a fork, such as a socket to a server.  At most 8. */
void lmp_on_fork_child(void (*fn)(void));

/* Has fn(L) run in the parent just before each fork, L the forking state
 * (a forkserver's too): for what every child would otherwise make for
 * itself, made once and inherited (the codec's names cache).  fn may
 * raise; then nothing is forked, or, in a forkserver, the child makes
 * it.  At most 8. */
void lmp_on_fork_parent(void (*fn)(lua_State *L));

/* Runs the loop once without blocking (reaps children, fires timers);
 * lmp_service_pending only if a signal has asked for it since. */
void lmp_service(void);
void lmp_service_pending(void);

/* ---------------------------------------------------------- Ctrl-C */

/* Installs the SIGINT handler that interrupts running Lua code in L (a
 * stock lua5.4's module re-checks it before each wait, since lua.c puts
 * its own back around every chunk); lmp_sigint_own makes it the host's
 * for good; lmp_sigint_forget stops interrupting L (L is closing). */
void lmp_sigint_install(lua_State *L);
void lmp_sigint_own(void);
void lmp_sigint_forget(void);
/* SIGTERM then interrupts as SIGINT does (a daemon's clean stop); not in
 * the children it forks. */
void lmp_sigterm_interrupts(void);

/* Raises the KeyboardInterrupt error object, consuming a pending SIGINT
 * (flag and hook).  Never returns. */
int lmp_raise_interrupt(lua_State *L);
/* Is the value at idx the error a Ctrl-C raised? */
int lmp_is_interrupt(lua_State *L, int idx);
/* Whether SIGINT ever interrupted this process's luamp code. */
int lmp_was_interrupted(void);
/* Whether a Ctrl-C waits to be raised (a blocking system call of one's
 * own, restarted on EINTR, ends on it). */
int lmp_interrupt_pending(void);
/* A Ctrl-C that must wait (a Condition taking its lock back): the first
 * takes and returns the pending SIGINT, the second puts it back. */
int lmp_defer_interrupt(void);
void lmp_resume_interrupt(int pending);
/* Work that a Ctrl-C must not cut (a Pool's step): while a hold lasts,
 * the interrupt is not raised, in Lua code or in a wait (which goes on
 * waiting); once the last hold is released, the next Lua instruction
 * that may raise it does.  Holds nest.  Never raise. */
void lmp_hold_interrupt(void);
void lmp_release_interrupt(void);
/* Whether a Ctrl-C waits to be raised, and no more than `holds` holds
 * keep it back (0: it is raised at the next Lua instruction). */
int lmp_interrupt_due(int holds);
/* A Ctrl-C that was raised, caught, and must come again: it is pending,
 * as if SIGINT had just come. */
void lmp_interrupt_later(void);
/* Lua code that a Ctrl-C waits for: while the innermost Lua function
 * running is of a chunk whose name begins with `defer`, looking through
 * C functions and those of chunks beginning with `through` to the Lua
 * function that called them, the interrupt is raised in no instruction
 * of it, but in the first of any other Lua code that runs (see loop.c).
 * NULL: none.  The strings must outlive their use. */
void lmp_interrupt_defer_in(const char *defer, const char *through);

/* ----------------------------------------------------------- processes */

/* The runtime of this process: its loop (an embedder's libuv loop, or
 * NULL for one of its own), SIGCHLD and SIGURG watched.  Once per
 * process, until lmp_runtime_end; 0 or -errno. */
int lmp_runtime_init(void *loop);

/* Lets go of the loop once no host uses it (no child left): its signal
 * watchers are closed (an embedder's loop finishes those closes when it
 * next runs; the runtime's own loop is run and closed here), and the next
 * lmp_runtime_init starts afresh, on the loop it is given. */
void lmp_runtime_end(void);

extern pid_t lmp_pid; /* getpid(), kept current across forks */

/* Is the process with this pid gone (or a zombie)? */
int lmp_pid_dead(pid_t pid);
int lmp_cpu_count(void);

/* Reaps the children that have ended (waitpid WNOHANG each); how many of
 * this process's children are still running; whether this process was
 * forked by luamp. */
void lmp_reap_children(void);
int lmp_live_children(void);
int lmp_is_child(void);

/* Ends running children (daemon ones only, if asked): SIGTERM, SIGKILL
 * after `grace` seconds.  Returns how many there were. */
int lmp_terminate_children(double grace, int daemons_only);

/* The end of a process's main code, once per Lua state (in a child, once,
 * as it leaves): runs its Lua exit hook (core.on_exit), waits for its
 * non-daemon children and terminates the daemon ones (all of them at
 * once after a Ctrl-C, then -EINTR).
 * Errors in the hook are printed, not raised.  Returns what
 * lmp_terminate_children returned, or -EINTR. */
int lmp_run_atexit(lua_State *L);

/* The registry field that marks a Lua state a luamp host made: the host
 * runs the end of the process itself (a stock lua5.4's state gets a
 * finalizer that does). */
#define LMP_HOSTED "luamp.hosted"

/* Leaves a forked child: its exit (lmp_run_atexit), the functions given
 * to lmp_on_exit, stdio, its arena references, then _exit(status).  Never
 * returns. */
void lmp_exit_child(lua_State *L, int status);

/* Has fn run when this process leaves: by exit() (atexit) and, in a
 * child, which leaves by _exit, by lmp_exit_child.  For what the process
 * made outside itself, such as a socket file.  At most 8. */
void lmp_on_exit(void (*fn)(void));

/* The end of a child whose body was called with lua_pcall, which returned
 * rc with the body's result or error on the top of L: Ctrl-C kills it with
 * SIGINT, quietly; another error is printed and it exits 1; otherwise it
 * exits with the integer returned.  Never returns. */
void lmp_end_child(lua_State *L, int rc);

/* The start of a process made by exec for the family (core.spawn's child,
 * or the forkserver of core.forkserver): when argv says it is one, dies
 * with its parent, maps the family's arena, adopts its slot, makes its
 * host with open(ud) (NULL: it could not, having said why) and runs: a
 * spawned child its bootstrap message, the server its requests; then
 * exits.  Otherwise returns 0 at once.  lmp_spawn_fail prints why such a
 * process cannot start and returns its exit status. */
typedef lua_State *(*lmp_child_open)(void *ud);

/* The descriptors a process started from a message was handed with it
 * (the Connections it names), at most LMP_MAX_HANDED: lmp_handed_take
 * gives the k-th (from 0) once, -1 if there is no such, -2 if taken. */
#define LMP_MAX_HANDED 64
int lmp_handed_take(uint64_t k);
int lmp_child_main(int argc, char **argv, lmp_child_open open, void *ud);
int lmp_spawn_fail(const char *why);

/* --------------------------------------------------------------- classes */

/* Every Lua handle to a shared object begins with this. */
typedef struct lmp_handle {
  lmp_obj *obj; /* NULL once closed */
} lmp_handle;

/*
 * A class is declared once and bound by lmp_family_open, in one
 * metatable shape (and every handle is made by lmp_newhandle, which marks
 * its last bytes with its class, sealed with a key of the process, so that
 * a method checks self with two calls into Lua and no lookup):
 *
 *   __name    the class's name ("luamp.Queue")
 *   __index   its methods table, or, for a class with fields, a function
 *             that looks the key up in the methods table, where its named
 *             fields are too (v.value: a getter), and only then hands it
 *             to the class's field function (a[i], d[k]); a handle of
 *             such a class whose methods have been looked up 64 times
 *             gets a metatable of its own, whose __index is a table that
 *             keeps its methods (class.c: hot handles)
 *   __gc, __close   the one idempotent close, also the method `close`
 *   __tostring "luamp.Queue (0x...)", "luamp.Queue (closed)", or with the
 *             class's words: "luamp.Lock (0x..., unlocked)"
 *   __eq      for shared objects: two handles of the same object
 *
 * Every method and metamethod is a closure over the same upvalues: the
 * class's methods table, the class, and the metatables of its group (the
 * classes of its family whose methods take each other's handles as self:
 * Queue, JoinableQueue and SimpleQueue), so that checking self is a
 * pointer comparison.
 */
typedef struct lmp_class {
  const char *name; /* metatable name: "luamp.Queue" */
  const char *what; /* in "attempt to use a closed queue" */
  int type;         /* LMP_T_* of its objects; 0 for a process-local handle */
  int kind;         /* lmp_obj.kind of its objects */
  int group;        /* its group in its family: at most 3 classes each */
  const lmp_type *obj;  /* the arena hooks of `type` (registered by the
                         * builder), or NULL */
  size_t size;          /* bytes of a handle */
  int nuv;              /* user values of a handle */
  const luaL_Reg *meth; /* methods; NULL: no methods, every key a field */
  const luaL_Reg *metameth; /* more metamethods: __len, __newindex... */
  /* Named fields, each read by a function of the handle at 1 (v.value,
   * c.closed); a name is a method's or a field's, never both. */
  const luaL_Reg *getters;
  lua_CFunction field;  /* reads any other key, or NULL: nil */
  /* Fills the user values of a new handle of object o (on the top). */
  void (*bind)(lua_State *L, lmp_obj *o);
  /* Pushes what __tostring shows after the address ("unlocked"). */
  void (*describe)(lua_State *L, void *h);
  /* Replaces the whole of __tostring, for an open handle. */
  lua_CFunction tostring;
  /* A process-local handle (type 0): closes it (idempotently), and says
   * whether it is closed. */
  void (*close)(void *h);
  int (*closed)(void *h);
  /* Its handles may be made without a finalizer (lmp_newhandle_plain),
   * for those that own nothing close would release. */
  int plain;
  /* mp.wait: 1 if a wait on the handle would not block now, 0 if not
   * yet, -1 if this process cannot wait on it; *fd (preset to -1) names a
   * descriptor to poll meanwhile. */
  int (*ready)(void *h, int *fd);
  /* A handle that can be handed to a process started from a message (a
   * Connection): its descriptor, the flags to make it again with, and its
   * channel (NULL: none); NULL, or why it cannot be handed now. */
  const char *(*handed)(void *h, int *fd, unsigned *flags, lmp_obj **chan);
} lmp_class;

/* A family: the classes of one file, and the functions it adds to
 * luamp.core (constructors). */
typedef struct lmp_family {
  const lmp_class *const *classes; /* NULL-terminated */
  const luaL_Reg *funcs;
  void (*open)(void); /* registers arena types no class names and fork
                       * hooks, or NULL */
} lmp_family;

/* Binds a family into L and adds its funcs to the table on the top. */
void lmp_family_open(lua_State *L, const lmp_family *f);

/* In a method or metamethod: the handle at idx if its class is of the
 * method's group, else NULL (lmp_tohandle) or a raised "luamp.Queue
 * expected" (lmp_checkhandle).  lmp_checkobj also raises "attempt to use
 * a closed queue" for a closed handle and returns its object. */
void *lmp_tohandle(lua_State *L, int idx);
void *lmp_checkhandle(lua_State *L, int idx);
lmp_obj *lmp_checkobj(lua_State *L, int idx);

/* Pushes a new handle of class c: a zeroed userdata of `size` bytes (and
 * nuv user values) with c's metatable and mark.  Raises only when out of
 * memory. */
void *lmp_newhandle(lua_State *L, const lmp_class *c, size_t size, int nuv);
/* The same for a class with `plain` set, without __gc: a handle that owns
 * nothing but its own bytes, which the collector then frees without a
 * finalizer to call (one call per handle, and a cycle's delay). */
void *lmp_newhandle_plain(lua_State *L, const lmp_class *c, size_t size);

/* Replaces a handle of class c at idx with what its totable method gives
 * (a snapshot of a Dict's or List's items); anything else stays. */
void lmp_snapshot(lua_State *L, int idx, const lmp_class *c);

/* The class of the value at idx, or NULL if it is no luamp handle.  Never
 * raises. */
const lmp_class *lmp_classof(lua_State *L, int idx);
/* The shared object of the value at idx, or NULL if it is not a handle of
 * one (or is closed).  Never raises. */
lmp_obj *lmp_toobj(lua_State *L, int idx);
/* Pushes a new handle of o, held by this process.  Raises when o's type
 * has no class in L or the arena is exhausted. */
void lmp_pushobj(lua_State *L, lmp_obj *o);

/* lmp_pushobj for an object nothing holds yet (just made): on an error
 * the object is freed. */
void lmp_pushnew(lua_State *L, lmp_obj *o);

/* The Sentinel class (p.sentinel) and the process functions of
 * luamp.core: fork, cpu_count, getpid, getppid, alive, reaped, on_exit,
 * is_child. */
extern const lmp_family lmp_process_family;

/* ------------------------------------------------- within the runtime */

/* loop.c serves process.c with these; nothing above uses them.  The loop
 * of this process (hook runs at each lmp_service: the reaper); a signal
 * watched on it, whose arrival also ends any wait; the child's own loop
 * after a fork; a Ctrl-C that a wait ended, consumed. */
struct uv_signal_s;
int lmp_loop_init(void *loop, void (*hook)(void));
int lmp_loop_signal(struct uv_signal_s *h, int sig,
                    void (*cb)(struct uv_signal_s *, int));
void lmp_loop_after_fork(void);
void lmp_loop_end(void);
void lmp_take_interrupt(void);

#endif
