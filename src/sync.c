/* sync.c -- Lock, RLock, Semaphore, BoundedSemaphore and Event: shared
 * objects in the arena that survive the death of a process holding them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/*
 * Locks.  The state word holds the pid of the owner (0: free), so that
 * taking a free lock is one compare-and-swap and releasing it one
 * exchange.  Waiters count themselves in `nwait` and sleep on `seq`, which
 * a release bumps when someone waits.  A waiter wakes at least every
 * DEATH_CHECK seconds (and at once on SIGCHLD, when the owner is its
 * child) to ask whether the owner is still alive; if it is not, the waiter
 * takes the lock over and its acquire says "owner died".
 *
 * Semaphores count units in `value` under a robust mutex, and remember
 * which processes hold units, so that the units of a dead holder return
 * to the semaphore.  A release by a process that holds no unit is a plain
 * signal, as Python allows.  Events are a flag and a sequence word.
 */

#define LOCK "luamp.Lock"
#define RLOCK "luamp.RLock"
#define SEM "luamp.Semaphore"
#define BSEM "luamp.BoundedSemaphore"
#define EVENT "luamp.Event"

#define DEATH_CHECK 0.1
#define SPIN 200
#define MAX_HOLDERS 64

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

void lmp_mutex_init(pthread_mutex_t *mu) {
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(mu, &ma);
  pthread_mutexattr_destroy(&ma);
}

/* Locks a robust mutex; returns 1 if its last owner died holding it. */
int lmp_mutex_lock(pthread_mutex_t *mu) {
  if (pthread_mutex_lock(mu) == EOWNERDEAD) {
    pthread_mutex_consistent(mu);
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------- locks */

enum { K_LOCK, K_RLOCK };

/* lmp_lock is declared in internal.h: Condition and Value use it too. */

#define self_pid() lmp_pid

typedef struct acq {
  lmp_lock *l;
  pid_t me;
  int died;
  double next_check;
} acq;

/* One attempt: take the lock if it is free, or if its owner is dead. */
static int try_take(void *ud) {
  acq *a = ud;
  lmp_lock *l = a->l;
  int32_t owner = atomic_load(&l->owner);
  if (owner == 0) {
    int32_t z = 0;
    return atomic_compare_exchange_strong(&l->owner, &z, a->me);
  }
  if (lmp_now() >= a->next_check) {
    a->next_check = lmp_now() + DEATH_CHECK;
    if (lmp_pid_dead(owner) &&
        atomic_compare_exchange_strong(&l->owner, &owner, a->me)) {
      a->died = 1;
      return 1;
    }
  }
  return 0;
}

/* Acquires l until the deadline (0: don't wait, < 0: no limit).  Returns
 * 1 (taken; *died says whether from a dead owner), 0 (not taken) or
 * -EINTR.  An RLock already held by this process counts one more level. */
int lmp_lock_acquire(lmp_lock *l, double deadline, int *died) {
  acq a;
  int i, rc = 0;
  *died = 0;
  a.l = l;
  a.me = self_pid();
  a.died = 0;
  a.next_check = 0;
  {
    int32_t z = 0;
    if (atomic_compare_exchange_strong(&l->owner, &z, a.me)) goto got;
    if (z == a.me && l->kind == K_RLOCK) {
      l->count++;
      return 1;
    }
  }
  if (deadline == 0) {
    if (!try_take(&a)) return 0;
    goto got;
  }
  for (i = 0; i < SPIN; i++) {
    if (atomic_load(&l->owner) == 0 && try_take(&a)) goto got;
    __builtin_ia32_pause();
  }
  atomic_fetch_add(&l->nwait, 1);
  for (;;) {
    double until = lmp_now() + DEATH_CHECK;
    if (deadline >= 0 && deadline < until) until = deadline;
    a.next_check = 0; /* check the owner on each round */
    rc = lmp_wait_on(&l->seq, try_take, &a, until);
    if (rc != 0 || (deadline >= 0 && lmp_now() >= deadline)) break;
  }
  atomic_fetch_sub(&l->nwait, 1);
  if (rc <= 0) {
    /* Leaving without it: if it is free, pass the wake-up on. */
    if (atomic_load(&l->owner) == 0 && atomic_load(&l->nwait) > 0)
      lmp_futex_bump(&l->seq, 1);
    return rc;
  }
got:
  l->count = 1;
  *died = a.died;
  return 1;
}

/* Releases l: 0, -EPERM (an RLock this process does not own) or -EINVAL
 * (not locked).  A Lock may be released by any process. */
int lmp_lock_release(lmp_lock *l) {
  int32_t owner = atomic_load(&l->owner);
  if (l->kind == K_RLOCK) {
    if (owner != self_pid()) return -EPERM;
    if (--l->count > 0) return 0;
  } else if (owner == 0) {
    return -EINVAL;
  }
  atomic_store(&l->owner, 0);
  if (atomic_load(&l->nwait) > 0) lmp_futex_bump(&l->seq, 1);
  return 0;
}

int lmp_lock_owned(lmp_lock *l) {
  return atomic_load(&l->owner) == self_pid();
}

/* For Condition.wait: releases every level, returning how many there
 * were; lmp_lock_restore takes them all back. */
int32_t lmp_lock_release_all(lmp_lock *l) {
  int32_t n = l->kind == K_RLOCK ? l->count : 1;
  l->count = 1;
  lmp_lock_release(l);
  return n;
}

int lmp_lock_restore(lmp_lock *l, int32_t levels, int *died) {
  int rc = lmp_lock_acquire(l, -1, died);
  if (rc == 1) l->count = levels;
  return rc;
}

lmp_lock *lmp_lock_new(int recursive) {
  lmp_lock *l = (lmp_lock *)lmp_obj_new(LMP_T_LOCK, sizeof(lmp_lock));
  if (l != NULL) l->kind = recursive ? K_RLOCK : K_LOCK;
  return l;
}

/* ----------------------------------------------------------- semaphores */

enum { K_SEM, K_BSEM };

typedef struct sem {
  lmp_obj h;
  pthread_mutex_t mu;
  uint32_t kind;
  int32_t value, maxvalue;
  _Atomic uint32_t seq, nwait;
  struct {
    int32_t pid, n;
  } holders[MAX_HOLDERS];
} sem;

/* Gives back the units of holders that died holding them (a process that
 * exits cleanly drops its records: see sem_exit); returns how many.  A
 * bounded semaphore never goes above its start value. */
static int32_t reclaim(sem *s) {
  int32_t back = 0;
  int i;
  for (i = 0; i < MAX_HOLDERS; i++) {
    if (s->holders[i].pid != 0 && lmp_pid_dead(s->holders[i].pid)) {
      back += s->holders[i].n;
      s->holders[i].pid = 0;
      s->holders[i].n = 0;
    }
  }
  if (s->kind == K_BSEM && s->value + back > s->maxvalue)
    back = s->maxvalue - s->value;
  if (back < 0) back = 0;
  s->value += back;
  return back;
}

/* Records that `me` took (delta > 0) or gave back (delta < 0) units.  A
 * release by a process that holds none gives back someone else's unit
 * (the signal pattern: one process acquires, another releases), so the
 * records never count more units than are out. */
static void note_holder(sem *s, pid_t me, int delta) {
  int i, free_i = -1;
  for (i = 0; i < MAX_HOLDERS; i++) {
    if (s->holders[i].pid == me) {
      s->holders[i].n += delta;
      if (s->holders[i].n <= 0) s->holders[i].pid = s->holders[i].n = 0;
      return;
    }
    if (s->holders[i].pid == 0 && free_i < 0) free_i = i;
  }
  if (delta > 0 && free_i >= 0) { /* else untracked: more holders than fit */
    s->holders[free_i].n = delta;
    s->holders[free_i].pid = me;
    return;
  }
  for (i = 0; i < MAX_HOLDERS && delta < 0; i++) {
    if (s->holders[i].pid != 0) {
      int32_t take = -delta < s->holders[i].n ? -delta : s->holders[i].n;
      s->holders[i].n -= take;
      delta += take;
      if (s->holders[i].n == 0) s->holders[i].pid = 0;
    }
  }
}

/* A process exiting cleanly keeps the units it took (as in Python): its
 * records go, so that its death is not mistaken for a loss. */
static void sem_exit(lmp_obj *o) {
  sem *s = (sem *)o;
  int i;
  lmp_mutex_lock(&s->mu);
  for (i = 0; i < MAX_HOLDERS; i++)
    if (s->holders[i].pid == lmp_pid) s->holders[i].pid = s->holders[i].n = 0;
  pthread_mutex_unlock(&s->mu);
}

typedef struct sacq {
  sem *s;
  pid_t me;
  int died;
  double next_check;
} sacq;

static int sem_try(void *ud) {
  sacq *a = ud;
  sem *s = a->s;
  int ok = 0;
  lmp_mutex_lock(&s->mu);
  if (s->value <= 0 && lmp_now() >= a->next_check) {
    a->next_check = lmp_now() + DEATH_CHECK;
    if (reclaim(s) > 0) a->died = 1;
  }
  if (s->value > 0) {
    s->value--;
    note_holder(s, a->me, 1);
    ok = 1;
  }
  pthread_mutex_unlock(&s->mu);
  return ok;
}

static int sem_acquire(sem *s, double deadline, int *died) {
  sacq a;
  int rc = 0;
  *died = 0;
  a.s = s;
  a.me = self_pid();
  a.died = 0;
  a.next_check = lmp_now() + DEATH_CHECK;
  if (sem_try(&a)) return 1;
  if (deadline == 0) {
    a.next_check = 0;
    rc = sem_try(&a);
    *died = a.died && rc;
    return rc;
  }
  atomic_fetch_add(&s->nwait, 1);
  for (;;) {
    double until = lmp_now() + DEATH_CHECK;
    if (deadline >= 0 && deadline < until) until = deadline;
    a.next_check = 0;
    rc = lmp_wait_on(&s->seq, sem_try, &a, until);
    if (rc != 0 || (deadline >= 0 && lmp_now() >= deadline)) break;
  }
  atomic_fetch_sub(&s->nwait, 1);
  if (rc <= 0 && atomic_load(&s->nwait) > 0) lmp_futex_bump(&s->seq, 1);
  *died = a.died && rc == 1;
  return rc;
}

/* 0, or -ERANGE for a bounded semaphore released above its start. */
static int sem_release(sem *s, int32_t n) {
  lmp_mutex_lock(&s->mu);
  if (s->kind == K_BSEM && s->value + n > s->maxvalue) {
    pthread_mutex_unlock(&s->mu);
    return -ERANGE;
  }
  s->value += n;
  note_holder(s, self_pid(), -n);
  pthread_mutex_unlock(&s->mu);
  if (atomic_load(&s->nwait) > 0) lmp_futex_bump(&s->seq, n);
  return 0;
}

static void sem_dtor(lmp_obj *o) { pthread_mutex_destroy(&((sem *)o)->mu); }

/* ---------------------------------------------------------------- event */

typedef struct event {
  lmp_obj h;
  _Atomic uint32_t flag, seq;
} event;

static int event_is(void *ud) { return atomic_load(&((event *)ud)->flag); }

/* --------------------------------------------------------- Lua bindings */

/* The metatables of Lock and RLock are upvalues 1 and 2 of their methods;
 * checking self is then a pointer comparison. */
static lmp_lock *checklock(lua_State *L) {
  lmp_handle *h = lua_touserdata(L, 1);
  int ok = 0;
  if (h != NULL && lua_getmetatable(L, 1)) {
    ok = lua_rawequal(L, -1, lua_upvalueindex(1)) ||
         lua_rawequal(L, -1, lua_upvalueindex(2));
    lua_pop(L, 1);
  }
  if (!ok) luaL_typeerror(L, 1, LOCK);
  if (h->obj == NULL) luaL_error(L, "attempt to use a closed lock");
  return (lmp_lock *)h->obj;
}

/* (block, timeout) at idx -> deadline; the Python convention. */
double lmp_block_timeout(lua_State *L, int idx) {
  lmp_waiter(L);
  if (!lua_isnoneornil(L, idx) && !lua_toboolean(L, idx)) return 0;
  return lmp_deadline(L, idx + 1);
}

static int push_acquired(lua_State *L, int rc, int died) {
  if (rc < 0) return lmp_wait_fail(L, rc);
  lua_pushboolean(L, rc);
  if (rc == 1 && died) {
    lua_pushliteral(L, "owner died");
    return 2;
  }
  return 1;
}

/* acquire([block], [timeout]) -> true [, "owner died"] | false */
static int lock_acquire(lua_State *L) {
  lmp_lock *l = checklock(L);
  int died, rc;
  if (lua_gettop(L) == 1) { /* the common case: no arguments */
    int32_t z = 0;
    if (atomic_compare_exchange_strong(&l->owner, &z, self_pid())) {
      l->count = 1;
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  rc = lmp_lock_acquire(l, lmp_block_timeout(L, 2), &died);
  return push_acquired(L, rc, died);
}

static int lock_release(lua_State *L) {
  lmp_lock *l = checklock(L);
  int rc = lmp_lock_release(l);
  if (rc == -EPERM) return luaL_error(L, "cannot release un-acquired lock");
  if (rc == -EINVAL) return luaL_error(L, "release unlocked lock");
  return 0;
}

/* locked() -> whether any process holds it (a snapshot). */
static int lock_locked(lua_State *L) {
  lua_pushboolean(L, atomic_load(&checklock(L)->owner) != 0);
  return 1;
}

/* owned() -> whether this process holds it. */
static int lock_owned(lua_State *L) {
  lua_pushboolean(L, lmp_lock_owned(checklock(L)));
  return 1;
}

static int lock_close(lua_State *L) {
  lmp_handle *h = lua_touserdata(L, 1);
  if (h != NULL) lmp_unbind(h);
  return 0;
}

static int lock_tostring(lua_State *L) {
  lmp_handle *h = lua_touserdata(L, 1);
  lmp_lock *l = h ? (lmp_lock *)h->obj : NULL;
  const char *name = l && l->kind == K_RLOCK ? RLOCK : LOCK;
  if (lua_getmetatable(L, 1)) {
    lua_getfield(L, -1, "__name");
    if (lua_isstring(L, -1)) name = lua_tostring(L, -1);
  }
  if (l == NULL) lua_pushfstring(L, "%s (closed)", name);
  else if (atomic_load(&l->owner) == 0)
    lua_pushfstring(L, "%s (%p, unlocked)", name, (void *)l);
  else
    lua_pushfstring(L, "%s (%p, locked by pid %d)", name, (void *)l,
                    (int)atomic_load(&l->owner));
  return 1;
}

static void push_lock(lua_State *L, lmp_obj *o) {
  lmp_handle *h = lmp_newhandle(L, sizeof *h,
                                ((lmp_lock *)o)->kind == K_RLOCK ? RLOCK
                                                                 : LOCK);
  lmp_bind(L, h, o);
}

static int new_lock(lua_State *L, int recursive) {
  lmp_lock *l = lmp_lock_new(recursive);
  if (l == NULL) return lmp_nomem(L, sizeof *l);
  push_lock(L, &l->h);
  return 1;
}

static int sync_Lock(lua_State *L) { return new_lock(L, 0); }
static int sync_RLock(lua_State *L) { return new_lock(L, 1); }

/* Semaphores */

static sem *checksem(lua_State *L) {
  lmp_handle *h = luaL_testudata(L, 1, SEM);
  if (h == NULL) h = luaL_checkudata(L, 1, BSEM);
  if (h->obj == NULL) luaL_error(L, "attempt to use a closed semaphore");
  return (sem *)h->obj;
}

static int sem_acquire_l(lua_State *L) {
  sem *s = checksem(L);
  int died, rc = sem_acquire(s, lmp_block_timeout(L, 2), &died);
  return push_acquired(L, rc, died);
}

/* release([n]) */
static int sem_release_l(lua_State *L) {
  sem *s = checksem(L);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1 && n <= INT_MAX, 2, "n must be at least 1");
  if (sem_release(s, (int32_t)n) < 0)
    return luaL_error(L, "semaphore or lock released too many times");
  return 0;
}

static int sem_get_value(lua_State *L) {
  sem *s = checksem(L);
  int32_t v;
  lmp_mutex_lock(&s->mu);
  v = s->value;
  pthread_mutex_unlock(&s->mu);
  lua_pushinteger(L, v);
  return 1;
}

static int sem_tostring(lua_State *L) {
  lmp_handle *h = lua_touserdata(L, 1);
  const char *name = SEM;
  if (lua_getmetatable(L, 1)) {
    lua_getfield(L, -1, "__name");
    if (lua_isstring(L, -1)) name = lua_tostring(L, -1);
  }
  if (h == NULL || h->obj == NULL) lua_pushfstring(L, "%s (closed)", name);
  else lua_pushfstring(L, "%s (%p, value=%d)", name, (void *)h->obj,
                       (int)((sem *)h->obj)->value);
  return 1;
}

static void push_sem(lua_State *L, lmp_obj *o) {
  lmp_handle *h = lmp_newhandle(L, sizeof *h,
                                ((sem *)o)->kind == K_BSEM ? BSEM : SEM);
  lmp_bind(L, h, o);
}

static int new_sem(lua_State *L, int bounded) {
  lua_Integer v = luaL_optinteger(L, 1, 1);
  sem *s;
  luaL_argcheck(L, v >= 0, 1, "semaphore initial value must be >= 0");
  luaL_argcheck(L, v <= INT_MAX, 1, "semaphore initial value is too large");
  s = (sem *)lmp_obj_new(LMP_T_SEM, sizeof(sem));
  if (s == NULL) return lmp_nomem(L, sizeof(sem));
  lmp_mutex_init(&s->mu);
  s->kind = bounded ? K_BSEM : K_SEM;
  s->value = s->maxvalue = (int32_t)v;
  push_sem(L, &s->h);
  return 1;
}

static int sync_Semaphore(lua_State *L) { return new_sem(L, 0); }
static int sync_BoundedSemaphore(lua_State *L) { return new_sem(L, 1); }

/* Events */

static event *checkevent(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, EVENT);
  if (h->obj == NULL) luaL_error(L, "attempt to use a closed event");
  return (event *)h->obj;
}

static int event_is_set(lua_State *L) {
  lua_pushboolean(L, atomic_load(&checkevent(L)->flag));
  return 1;
}

static int event_set(lua_State *L) {
  event *e = checkevent(L);
  atomic_store(&e->flag, 1);
  lmp_futex_bump(&e->seq, INT_MAX);
  lmp_notify_watchers(&e->h);
  return 0;
}

static int event_clear(lua_State *L) {
  atomic_store(&checkevent(L)->flag, 0);
  return 0;
}

/* wait([timeout]) -> the flag at the end */
static int event_wait(lua_State *L) {
  event *e = checkevent(L);
  int rc = lmp_wait_on(&e->seq, event_is, e, lmp_deadline(L, 2));
  if (rc < 0) return lmp_wait_fail(L, rc);
  lua_pushboolean(L, rc);
  return 1;
}

static int event_tostring(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, EVENT);
  if (h->obj == NULL) lua_pushliteral(L, EVENT " (closed)");
  else lua_pushfstring(L, EVENT " (%p, %s)", (void *)h->obj,
                       atomic_load(&((event *)h->obj)->flag) ? "set" : "unset");
  return 1;
}

static void push_event(lua_State *L, lmp_obj *o) {
  lmp_handle *h = lmp_newhandle(L, sizeof *h, EVENT);
  lmp_bind(L, h, o);
}

static int sync_Event(lua_State *L) {
  event *e = (event *)lmp_obj_new(LMP_T_EVENT, sizeof(event));
  if (e == NULL) return lmp_nomem(L, sizeof(event));
  push_event(L, &e->h);
  return 1;
}

/* ------------------------------------------------------------- register */

static const luaL_Reg lock_meth[] = {
  {"acquire", lock_acquire}, {"release", lock_release},
  {"locked", lock_locked},   {"owned", lock_owned},
  {"close", lock_close},     {NULL, NULL}
};

static const luaL_Reg lock_metameth[] = {
  {"__gc", lock_close}, {"__close", lock_close}, {"__eq", lmp_handle_eq},
  {"__tostring", lock_tostring}, {NULL, NULL}
};

static const luaL_Reg sem_meth[] = {
  {"acquire", sem_acquire_l}, {"release", sem_release_l},
  {"get_value", sem_get_value}, {"close", lock_close}, {NULL, NULL}
};

static const luaL_Reg event_meth[] = {
  {"is_set", event_is_set}, {"set", event_set}, {"clear", event_clear},
  {"wait", event_wait},     {"close", lock_close}, {NULL, NULL}
};

/* Makes metatable `name` with methods `m` (each closing over `nup`
 * values pushed by the caller, which this pops), __name, __luamp, and
 * the standard metamethods with __tostring `ts`. */
void lmp_newclass(lua_State *L, const char *name, const luaL_Reg *m,
                  int nup, lua_CFunction ts) {
  int i;
  luaL_newmetatable(L, name);
  lua_insert(L, -(nup + 1));
  lua_newtable(L);
  lua_insert(L, -(nup + 1));
  luaL_setfuncs(L, m, nup); /* the methods table, below the metatable */
  lua_setfield(L, -2, "__index");
  for (i = 0; lock_metameth[i].name != NULL; i++) {
    lua_pushcfunction(L, lock_metameth[i].func);
    lua_setfield(L, -2, lock_metameth[i].name);
  }
  lua_pushcfunction(L, ts);
  lua_setfield(L, -2, "__tostring");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "__luamp");
  lua_pop(L, 1);
}

int lmp_open_sync(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"Lock", sync_Lock}, {"RLock", sync_RLock},
    {"Semaphore", sync_Semaphore}, {"BoundedSemaphore", sync_BoundedSemaphore},
    {"Event", sync_Event}, {NULL, NULL}
  };
  /* Lock and RLock share methods that know both metatables. */
  luaL_newmetatable(L, LOCK);
  luaL_newmetatable(L, RLOCK);
  lua_pop(L, 2);
  luaL_getmetatable(L, LOCK);
  luaL_getmetatable(L, RLOCK);
  lmp_newclass(L, LOCK, lock_meth, 2, lock_tostring);
  luaL_getmetatable(L, LOCK);
  luaL_getmetatable(L, RLOCK);
  lmp_newclass(L, RLOCK, lock_meth, 2, lock_tostring);
  lmp_newclass(L, SEM, sem_meth, 0, sem_tostring);
  lmp_newclass(L, BSEM, sem_meth, 0, sem_tostring);
  lmp_newclass(L, EVENT, event_meth, 0, event_tostring);
  lmp_obj_settype(LMP_T_LOCK, "lock", NULL);
  lmp_obj_settype(LMP_T_SEM, "semaphore", sem_dtor);
  lmp_obj_setexit(LMP_T_SEM, sem_exit);
  lmp_obj_settype(LMP_T_EVENT, "event", NULL);
  lmp_settypepusher(LMP_T_LOCK, push_lock);
  lmp_settypepusher(LMP_T_SEM, push_sem);
  lmp_settypepusher(LMP_T_EVENT, push_event);
  luaL_setfuncs(L, funcs, 0);
  return 0;
}
