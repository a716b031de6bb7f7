/* internal.h -- private interfaces that join luamp's C files.
 *
 * Internal non-static names share the prefix lmp_.  Functions return 0 or
 * -errno unless their comment says otherwise; only functions that take a
 * lua_State may raise Lua errors, and their comments say so.
 */
#ifndef LUAMP_INTERNAL_H
#define LUAMP_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/types.h>

#include <lauxlib.h>
#include <lua.h>

/* ---------------------------------------------------------------- arena.c */

/* Offsets from the arena base; 0 is the null offset.  Shared structures
 * store offsets, not pointers, so that a bad offset can be range-checked. */
typedef uint64_t lmp_off;

extern char *lmp_base; /* arena base, the same in every process of a family */

#define LMP_PTR(off) ((void *)(lmp_base + (off)))
#define LMP_OFF(p) ((lmp_off)((const char *)(p)-lmp_base))

#define LMP_ARENA_DEFAULT ((size_t)1 << 30) /* 1 GiB, reserved lazily */
#define LMP_ARENA_MIN ((size_t)1 << 20)

/* Maps the arena once per process; later calls do nothing and return 0.
 * `size` 0 means $LUAMP_ARENA or the default.  -EINVAL for a bad
 * $LUAMP_ARENA, -ENOMEM when the mapping cannot be made. */
int lmp_arena_init(size_t size);
int lmp_arena_ready(void);

/* Parses "64M", "1G", "512k", "1048576" into bytes; -EINVAL when malformed. */
int lmp_parse_size(const char *s, size_t *out);

/* Process-safe allocator.  lmp_alloc returns 16-byte aligned memory or NULL
 * when the arena is exhausted (errno ENOMEM); lmp_free(NULL) does nothing. */
void *lmp_alloc(size_t n);
void *lmp_calloc(size_t n);
void lmp_free(void *p);
size_t lmp_usable(const void *p); /* bytes the block can hold */

/* True if [p, p+n) lies inside the arena. */
int lmp_in_arena(const void *p, size_t n);

typedef struct lmp_arena_stats {
  size_t size;      /* bytes reserved for the arena */
  size_t used;      /* bytes in allocated blocks, headers included */
  size_t reserved;  /* bytes of the arena ever handed out (high water) */
  size_t blocks;    /* allocated blocks */
  size_t objects;   /* live shared objects */
  size_t processes; /* live process slots */
} lmp_arena_stats;

void lmp_arena_stats_get(lmp_arena_stats *st);

/* Checks the heap's consistency: 0, or -EUCLEAN with a reason. */
int lmp_arena_check(const char **why);

/* A 16-byte secret of the family, made at arena creation; the codec keys its
 * message authentication with it. */
const uint8_t *lmp_arena_key(void);

/* Shared objects.  Every object in the arena starts with this header; its
 * memory is reclaimed when `refs` drops to zero.  References are held by
 * processes (see lmp_hold) and by messages in flight. */
typedef struct lmp_obj {
  uint32_t magic; /* LMP_OBJ_MAGIC while live */
  uint16_t type;  /* LMP_T_* */
  uint16_t flags;
  _Atomic int32_t refs;
  _Atomic uint32_t watchers; /* processes watching it (lmp_watch) */
} lmp_obj;

#define LMP_OBJ_MAGIC 0x6f706d6cu /* "lmpo" */

enum {
  LMP_T_NONE = 0,
  LMP_T_BLOB, /* a plain shared object: a header and bytes (tests, stats) */
  LMP_T_VALUE,
  LMP_T_LOCK,
  LMP_T_QUEUE,
  LMP_T_DICT,
  LMP_T_LIST,
  LMP_T_SEM,
  LMP_T_EVENT,
  LMP_T_COND,
  LMP_T_BARRIER,
  LMP_T_ARRAY,
  LMP_T_MAX = 32
};

/* Called with the object when its last reference goes, before its memory is
 * freed; it releases what the object owns.  Must not block or raise. */
typedef void (*lmp_dtor)(lmp_obj *o);
/* Says whether block `blk` is still owned by object o (see lmp_pending). */
typedef int (*lmp_owns_fn)(lmp_obj *o, lmp_off blk);
void lmp_obj_settype(int type, const char *name, lmp_dtor dtor);
void lmp_obj_setowns(int type, lmp_owns_fn owns);
/* Called on a pending block the reaper is about to free, to release the
 * references its message holds (if it is a message block at all). */
typedef void (*lmp_release_fn)(lmp_obj *o, lmp_off blk);
void lmp_obj_setrelease(int type, lmp_release_fn release);
/* Called for each object a process holds when it exits cleanly. */
typedef void (*lmp_exit_fn)(lmp_obj *o);
void lmp_obj_setexit(int type, lmp_exit_fn on_exit);
const char *lmp_obj_typename(int type);

/* Allocates a zeroed object of `size` bytes (header included) with no
 * references; NULL when the arena is exhausted.  The caller holds it with
 * lmp_hold or frees it with lmp_obj_incref/lmp_obj_decref. */
lmp_obj *lmp_obj_new(int type, size_t size);
void lmp_obj_incref(lmp_obj *o);
void lmp_obj_decref(lmp_obj *o); /* destroys at zero */

/* Checks an untrusted offset: 1 if it names a live object of `type` (or of
 * any type when type < 0). */
int lmp_obj_check(lmp_off off, int type);

/* Process slots.  Each process of the family has one: its pid, its wake
 * word and the table of objects it holds, so that the references of a
 * process killed with SIGKILL can be released by its reaper. */
#define LMP_MAX_PROCS 4096

typedef struct lmp_slot {
  _Atomic uint32_t wake; /* futex word: bumped to wake the process */
  _Atomic uint32_t state; /* LMP_SLOT_* */
  _Atomic int32_t pid;
  uint32_t parent;         /* parent's slot index */
  _Atomic uint32_t sleeping; /* 1 while blocked in the event loop */
  uint32_t gen;
  lmp_off refs; /* the hold table: see arena.c */
  _Atomic lmp_off waiting_on; /* futex word it sleeps on, 0 for `wake` */
  lmp_off pending_obj; /* see lmp_pending */
  lmp_off pending_blk[3];
} lmp_slot;

enum { LMP_SLOT_FREE = 0, LMP_SLOT_RESERVED, LMP_SLOT_LIVE, LMP_SLOT_DEAD };

extern lmp_slot *lmp_self; /* this process's slot */
extern uint32_t lmp_self_index;

lmp_slot *lmp_slot_at(uint32_t idx);

/* Reserves a slot for a child about to be forked, copying this process's
 * hold table into it (each object gains a reference for the child).
 * Returns the slot index, or -ENOMEM/-EAGAIN. */
int lmp_slot_prepare_child(void);
/* In the child right after fork: adopt the prepared slot. */
void lmp_slot_adopt(uint32_t idx);
/* Releases every reference the slot holds and frees it; called by the
 * reaper of the process that had it.  Idempotent. */
void lmp_slot_release(uint32_t idx);
/* At a clean exit: releases this process's references (its reaper frees
 * the slot). */
void lmp_slot_retire(void);

/* Blocks in transit between this process and object o (a message being
 * put or taken, a queue's new ring): while one is registered in one of the
 * process's three pending entries, the reaper of the process frees it
 * (releasing what it refers to, through the type's release hook) unless
 * o says it owns it.  By convention entry 0 holds what comes in, 1 a new
 * table or ring, and 2 what is leaving (registered before the store that
 * removes it).  lmp_alloc_pending and lmp_free_pending allocate and
 * register, or free and unregister, as one heap operation, so no kill can
 * fall between the two; lmp_pending_set and lmp_pending_clear register a
 * block that exists (one store each).  So a kill at any moment neither
 * leaks a block nor frees one the object still uses. */
void *lmp_alloc_pending(lmp_obj *o, size_t n, int which);
void lmp_free_pending(void *p, int which);
void lmp_pending_set(lmp_obj *o, void *blk, int which);
void lmp_pending_clear(int which);

/* After the process in slot holder-1 died holding o's lock (holder 0: no
 * one known): unregisters the blocks it had pending for o that o owns
 * (owns_locked asks, under that lock), before anyone else can take them;
 * the reaper frees the rest, which were the dead process's alone. */
void lmp_settle_pending(lmp_obj *o, uint32_t holder,
                        int (*owns_locked)(lmp_obj *o, lmp_off blk));

/* mp.wait support: this process watches o, and whoever changes o calls
 * lmp_notify_watchers(o), which wakes every watcher.  -EAGAIN when the
 * family's watch table is full. */
int lmp_watch(lmp_obj *o);
void lmp_unwatch(lmp_obj *o);
void lmp_notify_watchers(lmp_obj *o);
#define LMP_MAX_WATCH 4096

/* This process takes (hold) or gives up (unhold) one reference to `o`.
 * Returns 0 or -ENOMEM when the hold table cannot grow. */
int lmp_hold(lmp_obj *o);
void lmp_unhold(lmp_obj *o);

/* Wakes the process in slot `idx`: bumps its wake word and the word it
 * sleeps on, and signals it (SIGURG) if it sleeps in the event loop.
 * Async-signal-safe. */
void lmp_wake(uint32_t idx);

/* Bumps a futex word in the arena and wakes `n` of its sleepers (INT_MAX
 * for all). */
void lmp_futex_bump(_Atomic uint32_t *word, int n);
/* Sleeps on word while it holds `seen`, at most until deadline (lmp_now
 * scale; negative = no limit).  Returns when woken, on a signal or at the
 * deadline; callers re-check their condition. */
void lmp_futex_wait(_Atomic uint32_t *word, uint32_t seen, double deadline);

/* ------------------------------------------------------- codec.c, decode.c */

/* A growable byte buffer.  lmp_buf_new pushes it as a userdata whose __gc
 * and __close free the bytes, so that an error raised while encoding
 * leaks nothing. */
typedef struct lmp_buf {
  char *data;
  size_t len, cap;
} lmp_buf;

lmp_buf *lmp_buf_new(lua_State *L);
int lmp_buf_reserve(lmp_buf *b, size_t extra); /* 0 or -ENOMEM */
void lmp_buf_free(lmp_buf *b);

/* Appends the encoding of the value at `idx` to b.  Raises
 * "cannot send <root><path>: <reason>" when the value (or anything it
 * reaches) cannot cross a process boundary; `root` names the value in that
 * message ("value", "args").  Each luamp object reached gains a reference
 * owned by the message (see lmp_msg_release). */
void lmp_encode(lua_State *L, int idx, const char *root, lmp_buf *b);

/* Decodes one value from [p, p+n) and pushes it.  The input is untrusted:
 * raises "malformed message: ..." on anything it cannot read, never
 * crashes.  Objects decoded get new handles held by this process; the
 * message keeps its own references. */
void lmp_decode(lua_State *L, const char *p, size_t n);

/* lmp_decode under lua_pcall: pushes the value (LUA_OK) or the error, and
 * returns the status, so a caller can free what holds the message either
 * way before it raises. */
int lmp_decode_protected(lua_State *L, const char *p, size_t n);

/* One number as a whole message, for Dict.incr: lmp_msg_number returns
 * 1 (integer in *i), 2 (float in *f) or 0 (not just a number);
 * lmp_msg_put_number writes one into out (16 bytes) and returns its
 * length. */
int lmp_msg_number(const char *p, size_t n, lua_Integer *i, lua_Number *f);
size_t lmp_msg_put_number(char *out, int isint, lua_Integer i, lua_Number f);

/* As lmp_encode, but the message takes no references: returns how many
 * objects it names.  lmp_msg_retain_counted then takes them, counting each
 * in *count as it goes, once the message sits where a reaper can find it;
 * lmp_msg_release_counted drops the first `count` of them. */
size_t lmp_encode_bare(lua_State *L, int idx, const char *root, lmp_buf *b);
void lmp_msg_retain_counted(const char *p, size_t n, _Atomic uint64_t *count);
void lmp_msg_release_counted(const char *p, size_t n, uint64_t count);
void lmp_msg_unretain_counted(const char *p, size_t n,
                              _Atomic uint64_t *count);

/* Drops the references a message holds on luamp objects.  Call once per
 * encoded message that is consumed or discarded.  Never raises. */
void lmp_msg_release(const char *p, size_t n);

/* Lua bindings: encode(v) -> string, decode(s) -> v. */
int lmp_codec_encode(lua_State *L);
int lmp_codec_encode_slice(lua_State *L);
int lmp_codec_decode(lua_State *L);
int lmp_codec_decode_into(lua_State *L);

/* -------------------------------------------------------------- handle.c */

/* Every Lua handle to a shared object begins with this.  The metatable of
 * each handle type has __name "luamp.<Type>" and the field __luamp = true. */
typedef struct lmp_handle {
  lmp_obj *obj; /* NULL once closed */
} lmp_handle;

/* Returns the object of a handle at idx, or NULL if the value is not a
 * luamp handle (or is closed). */
lmp_obj *lmp_toobj(lua_State *L, int idx);
int lmp_handle_eq(lua_State *L); /* __eq: the same shared object */

/* Pushes a new handle for `o`, holding a reference for this process.
 * Raises when the type has no Lua binding or memory is short. */
void lmp_pushobj(lua_State *L, lmp_obj *o);

/* Pushes a new, empty handle userdata of metatable `tname` (size bytes,
 * header included). */
lmp_handle *lmp_newhandle(lua_State *L, size_t size, const char *tname);

/* Makes the handle h a holder of o for this process (raises when the
 * arena is exhausted); lmp_unbind lets go of it, idempotently. */
void lmp_bind(lua_State *L, lmp_handle *h, lmp_obj *o);
void lmp_unbind(lmp_handle *h);

/* Registers the function that pushes a handle for an object of `type`. */
typedef void (*lmp_pusher)(lua_State *L, lmp_obj *o);
void lmp_settypepusher(int type, lmp_pusher f);

/* Raises the arena-exhausted error, naming the options that size it. */
int lmp_nomem(lua_State *L, size_t want);

/* ---------------------------------------------------------------- loop.c */

/* The per-process runtime: libuv loop, SIGCHLD watcher, SIGINT flag. */
int lmp_runtime_init(void *loop); /* once per process; 0 or -errno */
void *lmp_loop(void);

/* Monotonic clock in seconds. */
double lmp_now(void);

extern volatile sig_atomic_t lmp_sigint; /* set by SIGINT, cleared by raise */
extern volatile sig_atomic_t lmp_interrupted_flag; /* ever interrupted */

/* Runs pending loop work without blocking: reaps children, fires timers. */
void lmp_service(void);
/* The same, only if a signal has asked for it since (no syscall if not). */
void lmp_service_pending(void);

/* Blocks until `ready(ud)` returns non-zero, the deadline (lmp_now() scale;
 * negative means forever) passes, or SIGINT arrives.  Returns 1 when
 * ready, 0 on timeout, -EINTR on SIGINT.  `ready` is called after each
 * wake-up and after each lmp_service. */
typedef int (*lmp_ready_fn)(void *ud);
int lmp_wait(lmp_ready_fn ready, void *ud, double deadline);

/* As lmp_wait, but sleeping on `word`, a futex word of a shared object
 * that whoever changes the condition bumps (lmp_futex_bump).  Signals and
 * lmp_wake bump it too, so they end the sleep. */
int lmp_wait_on(_Atomic uint32_t *word, lmp_ready_fn ready, void *ud,
                double deadline);

/* Waits until one of fds is ready (poll events in .revents), ready(ud)
 * (may be NULL) holds, the deadline passes or SIGINT arrives, while
 * children are reaped and lmp_wake can end the sleep (the process is
 * marked sleeping, so wakers signal it).  Returns 1 when something is
 * ready, 0 on timeout, -EINTR or -errno. */
struct pollfd;
int lmp_wait_fds(struct pollfd *fds, int nfds, lmp_ready_fn ready, void *ud,
                 double deadline);

/* Names L as the state whose Lua service (see loop.c) runs during the next
 * wait of this process; the wait consumes the name. */
void lmp_waiter(lua_State *L);
int lmp_set_service(lua_State *L, int idx);
/* Raises what ended a wait: the interruption, or the service's error. */
int lmp_wait_fail(lua_State *L, int rc);

/* Converts a Lua timeout argument at idx (nil = forever, <= 0 = now) to a
 * deadline for lmp_wait. */
double lmp_deadline(lua_State *L, int idx);

/* Raises the interruption error ("interrupted!") after
 * lmp_take_interrupt, which consumes a pending SIGINT (flag and hook). */
int lmp_raise_interrupt(lua_State *L);
void lmp_take_interrupt(void);
/* Is the value at idx the error a Ctrl-C raised? */
int lmp_is_interrupt(lua_State *L, int idx);
extern int lmp_error_was_interrupt; /* the host's last uncaught error */

/* Installs the SIGINT handler that interrupts running Lua code in L. */
void lmp_sigint_install(lua_State *L);
void lmp_sigint_forget(void);
void lmp_sigint_own(void); /* the host's: installed once, for good */

/* In a forked child: own kernel state for the loop, signals re-watched. */
void lmp_runtime_after_fork(void);

/* ------------------------------------------------------------- process.c */

/* Children of this process: forked, tracked and reaped here. */
typedef struct lmp_child lmp_child;

/* The child path after fork, before any Lua runs in it. */
void lmp_after_fork_child(uint32_t slot);

/* Reaps any children that have ended (waitpid WNOHANG each). */
void lmp_reap_children(void);
int lmp_live_children(void);

/* Ends this process: runs the Lua exit hook, flushes stdio, releases the
 * slot and calls _exit (children) or returns (main, for exit()). */
void lmp_exit_child(lua_State *L, int status);
int lmp_is_child(void);

/* Ends running children (daemon ones only, if asked): SIGTERM, SIGKILL
 * after `grace` seconds.  Returns how many there were. */
int lmp_terminate_children(double grace, int daemons_only);
/* Waits for non-daemon children, then terminates daemon ones; -EINTR if
 * Ctrl-C came first (then every child has been ended). */
int lmp_shutdown_children(void);
int lmp_cpu_count(void);

/* Runs the Lua exit hook of this process (registry "luamp.atexit") and
 * waits for its children, once; errors in the hook are printed, not
 * raised.  Returns what lmp_shutdown_children returned. */
int lmp_run_atexit(lua_State *L);

int lmp_open_process(lua_State *L); /* adds process functions to core */

/* ---------------------------------------------------------------- queue.c */

int lmp_open_queue(lua_State *L);   /* adds Queue & co. to core */
int lmp_queue_ready(lmp_obj *o);    /* would a get not block? */

/* --------------------------------------------------------------- sync.c */

#include <pthread.h>

/* A Lock or RLock: the owner's pid in one word (0: free). */
typedef struct lmp_lock {
  lmp_obj h;
  uint32_t kind; /* 0 Lock, 1 RLock */
  _Atomic int32_t owner;
  int32_t count; /* levels held, RLock */
  _Atomic uint32_t seq, nwait;
} lmp_lock;

extern pid_t lmp_pid; /* getpid(), kept current across forks */

lmp_lock *lmp_lock_new(int recursive);
/* 1 (taken, *died if from a dead owner), 0 (deadline passed), -EINTR. */
int lmp_lock_acquire(lmp_lock *l, double deadline, int *died);
/* 0, -EPERM (an RLock not ours), -EINVAL (not locked). */
int lmp_lock_release(lmp_lock *l);
int lmp_lock_owned(lmp_lock *l);
int32_t lmp_lock_release_all(lmp_lock *l);
int lmp_lock_restore(lmp_lock *l, int32_t levels, int *died);

/* Is the process with this pid gone (or a zombie)? */
int lmp_pid_dead(pid_t pid);
void lmp_mutex_init(pthread_mutex_t *mu);  /* robust, process-shared */
int lmp_mutex_lock(pthread_mutex_t *mu);   /* 1 if the last owner died */
double lmp_block_timeout(lua_State *L, int idx);
void lmp_newclass(lua_State *L, const char *name, const luaL_Reg *m,
                  int nup, lua_CFunction ts);
int lmp_open_sync(lua_State *L);
int lmp_open_cond(lua_State *L);
int lmp_open_shared(lua_State *L);
int lmp_open_dict(lua_State *L);
int lmp_open_list(lua_State *L);

/* ---------------------------------------------------------- pipe.c, wait.c */

int lmp_open_pipe(lua_State *L);
int lmp_open_wait(lua_State *L);
int lmp_conn_buffered(lua_State *L, int idx, int *fd);
int lmp_child_ended(lua_State *L, int idx);
int lmp_open_blob(lua_State *L);

/* ------------------------------------------------------------------ core */

int lmp_open_core(lua_State *L); /* pushes the luamp.core table */

/* Raises an error object (see lua/luamp/errors.lua) of `type` with a
 * formatted message.  Never returns. */
int lmp_throw(lua_State *L, const char *type, const char *fmt, ...);

/* Marks L as a host's state (no exit sentinel: the host waits itself). */
void lmp_mark_hosted(lua_State *L);
/* lua_pcall with a traceback handler, as the host runs chunks. */
int lmp_host_docall(lua_State *L, int narg, int nres);
/* In a new child: its exit hook has not run yet. */
void lmp_reset_atexit(void);
int lmp_open_embedded(lua_State *L); /* preloads the Lua front */

#endif
