/* sync.c -- Lock, RLock, Semaphore, BoundedSemaphore and Event: shared
 * objects in the arena that survive the death of a process holding them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "types.h"

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
#define MAX_HOLDERS 64

/* ---------------------------------------------------------------- locks */

/* lmp_lock is declared in types.h: Condition and Value use it too. */

#define self_pid() lmp_pid
#define RECURSIVE(l) ((l)->h.kind == LMP_LOCK_RECURSIVE)

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
static int free_and_taken(void *ud) {
  acq *a = ud;
  return atomic_load(&a->l->owner) == 0 && try_take(a);
}

int lmp_lock_acquire(lua_State *L, lmp_lock *l, double deadline, int *died) {
  static lmp_spinner spinner; /* this process's, for every lock */
  acq a;
  int rc = 0;
  *died = 0;
  a.l = l;
  a.me = self_pid();
  a.died = 0;
  a.next_check = 0;
  {
    int32_t z = 0;
    if (atomic_compare_exchange_strong(&l->owner, &z, a.me)) goto got;
    if (z == a.me && RECURSIVE(l)) {
      l->count++;
      return 1;
    }
  }
  if (deadline == 0) {
    if (!try_take(&a)) return 0;
    goto got;
  }
  if (lmp_spin(free_and_taken, &a, &spinner, LMP_SPIN_LOCK, 1)) goto got;
  atomic_fetch_add(&l->nwait, 1);
  for (;;) {
    double until = lmp_now() + DEATH_CHECK;
    if (deadline >= 0 && deadline < until) until = deadline;
    a.next_check = 0; /* check the owner on each round */
    rc = lmp_wait_on(L, &l->seq, try_take, &a, until);
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
  if (RECURSIVE(l)) {
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
  int32_t n = RECURSIVE(l) ? l->count : 1;
  l->count = 1;
  lmp_lock_release(l);
  return n;
}

int lmp_lock_restore(lmp_lock *l, int32_t levels, int *died) {
  int rc = lmp_lock_acquire(NULL, l, -1, died);
  if (rc == 1) l->count = levels;
  return rc;
}

lmp_lock *lmp_lock_new(int recursive) {
  return (lmp_lock *)lmp_obj_new(
      LMP_T_LOCK, recursive ? LMP_LOCK_RECURSIVE : LMP_LOCK_PLAIN,
      sizeof(lmp_lock));
}

/* ----------------------------------------------------------- semaphores */

enum { K_SEM, K_BSEM };

typedef struct holder {
  int32_t pid, n;
} holder;

typedef struct sem {
  lmp_obj h; /* kind: K_SEM or K_BSEM */
  lmp_guard g;
  int32_t value, maxvalue;
  _Atomic uint32_t seq, nwait;
  /* The holders' records in use lie below `top`; every one above it is
   * free (pid 0, n 0), so a search stops there. */
  int32_t top;
  holder holders[MAX_HOLDERS];
  /* The journal of a change under the guard (the count and the holders'
   * records change in several steps): what they were, and whether a
   * change is under way.  A process killed in the middle leaves `open`
   * set, and the next locker puts them back (sem_repair), as if the
   * change had never begun.  Only the records below `top` are kept: a
   * change writes no other but the one at `top`, which it may take. */
  int32_t was_value, was_top;
  _Atomic int32_t open;
  holder was[MAX_HOLDERS];
} sem;

/* Opens and closes the journal around a change, the guard held. */
static void begin(sem *s) {
  s->was_value = s->value;
  s->was_top = s->top;
  memcpy(s->was, s->holders, (size_t)s->top * sizeof(holder));
  atomic_store(&s->open, 1); /* (a full fence: no step of the change
                              * comes before it) */
}

/* Lowers `top` past the records a change freed, and closes the journal. */
static void commit(sem *s) {
  while (s->top > 0 && s->holders[s->top - 1].pid == 0) s->top--;
  atomic_store(&s->open, 0);
}

static void sem_repair(lmp_obj *o) {
  sem *s = (sem *)o;
  int32_t i;
  if (!atomic_load(&s->open)) return;
  s->value = s->was_value;
  memcpy(s->holders, s->was, (size_t)s->was_top * sizeof(holder));
  for (i = s->was_top; i < MAX_HOLDERS; i++)
    s->holders[i].pid = s->holders[i].n = 0;
  s->top = s->was_top;
  atomic_store(&s->open, 0);
}

/* Gives back the units of holders that died holding them (a process that
 * exits cleanly drops its records: see sem_exit); returns how many.  A
 * bounded semaphore never goes above its start value. */
static int32_t reclaim(sem *s) {
  int64_t back = 0, most = s->h.kind == K_BSEM ? s->maxvalue : INT32_MAX;
  int i;
  begin(s);
  for (i = 0; i < s->top; i++) {
    if (s->holders[i].pid != 0 && lmp_pid_dead(s->holders[i].pid)) {
      back += s->holders[i].n;
      s->holders[i].pid = 0;
      s->holders[i].n = 0;
    }
  }
  if (s->value + back > most) back = most - s->value;
  if (back < 0) back = 0;
  s->value += (int32_t)back;
  commit(s);
  return (int32_t)back;
}

/* Records that `me` took (delta > 0) or gave back (delta < 0) units.  A
 * release by a process that holds none gives back someone else's unit
 * (the signal pattern: one process acquires, another releases), so the
 * records never count more units than are out. */
static void note_holder(sem *s, pid_t me, int delta) {
  int i, free_i = -1;
  for (i = 0; i < s->top; i++) {
    if (s->holders[i].pid == me) {
      s->holders[i].n += delta;
      if (s->holders[i].n <= 0) s->holders[i].pid = s->holders[i].n = 0;
      return;
    }
    if (s->holders[i].pid == 0 && free_i < 0) free_i = i;
  }
  if (free_i < 0 && s->top < MAX_HOLDERS) free_i = s->top;
  if (delta > 0 && free_i >= 0) { /* else untracked: more holders than fit */
    if (free_i == s->top) s->top++;
    s->holders[free_i].n = delta;
    s->holders[free_i].pid = me;
    return;
  }
  for (i = 0; i < s->top && delta < 0; i++) {
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
  lmp_guard_lock(&s->g, &s->h);
  begin(s);
  for (i = 0; i < s->top; i++)
    if (s->holders[i].pid == lmp_pid) s->holders[i].pid = s->holders[i].n = 0;
  commit(s);
  lmp_guard_unlock(&s->g);
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
  lmp_guard_lock(&s->g, &s->h);
  if (s->value <= 0 && lmp_now() >= a->next_check) {
    a->next_check = lmp_now() + DEATH_CHECK;
    if (reclaim(s) > 0) a->died = 1;
  }
  if (s->value > 0) {
    begin(s);
    s->value--;
    note_holder(s, a->me, 1);
    commit(s);
    ok = 1;
  }
  lmp_guard_unlock(&s->g);
  return ok;
}

static int sem_acquire(lua_State *L, sem *s, double deadline, int *died) {
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
    rc = lmp_wait_on(L, &s->seq, sem_try, &a, until);
    if (rc != 0 || (deadline >= 0 && lmp_now() >= deadline)) break;
  }
  atomic_fetch_sub(&s->nwait, 1);
  if (rc <= 0 && atomic_load(&s->nwait) > 0) lmp_futex_bump(&s->seq, 1);
  *died = a.died && rc == 1;
  return rc;
}

/* 0, or -ERANGE for a bounded semaphore released above its start, or any
 * released above the largest count it can hold (INT32_MAX). */
static int sem_release(sem *s, int32_t n) {
  int64_t most = s->h.kind == K_BSEM ? s->maxvalue : INT32_MAX;
  lmp_guard_lock(&s->g, &s->h);
  if ((int64_t)s->value + n > most) {
    lmp_guard_unlock(&s->g);
    return -ERANGE;
  }
  begin(s);
  s->value += n;
  note_holder(s, self_pid(), -n);
  commit(s);
  lmp_guard_unlock(&s->g);
  if (atomic_load(&s->nwait) > 0) lmp_futex_bump(&s->seq, n);
  return 0;
}

static void sem_dtor(lmp_obj *o) { lmp_guard_destroy(&((sem *)o)->g); }

/* ---------------------------------------------------------------- event */

typedef struct event {
  lmp_obj h;
  _Atomic uint32_t flag;
  _Atomic uint32_t sets; /* how many sets there have been */
  _Atomic uint32_t seq;  /* the futex word, which any wake-up bumps */
} event;

/* --------------------------------------------------------- Lua bindings */

static int push_acquired(lua_State *L, int rc, int died) {
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot acquire");
  lua_pushboolean(L, rc);
  if (rc == 1 && died) {
    lua_pushliteral(L, "owner died");
    return 2;
  }
  return 1;
}

/* acquire([block], [timeout]) -> true [, "owner died"] | false */
static int lock_acquire(lua_State *L) {
  lmp_lock *l = (lmp_lock *)lmp_checkobj(L, 1);
  int died, rc;
  if (lua_gettop(L) == 1) { /* the common case: no arguments */
    int32_t z = 0;
    if (atomic_compare_exchange_strong(&l->owner, &z, self_pid())) {
      l->count = 1;
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  rc = lmp_lock_acquire(L, l, lmp_block_deadline(L, 2), &died);
  return push_acquired(L, rc, died);
}

static int lock_release(lua_State *L) {
  int rc = lmp_lock_release((lmp_lock *)lmp_checkobj(L, 1));
  if (rc == -EPERM) return luaL_error(L, "cannot release un-acquired lock");
  if (rc == -EINVAL) return luaL_error(L, "release unlocked lock");
  return 0;
}

/* locked() -> whether any process holds it (a snapshot). */
static int lock_locked(lua_State *L) {
  lmp_lock *l = (lmp_lock *)lmp_checkobj(L, 1);
  lua_pushboolean(L, atomic_load(&l->owner) != 0);
  return 1;
}

/* owned() -> whether this process holds it. */
static int lock_owned(lua_State *L) {
  lua_pushboolean(L, lmp_lock_owned((lmp_lock *)lmp_checkobj(L, 1)));
  return 1;
}

static void lock_describe(lua_State *L, void *h) {
  lmp_lock *l = (lmp_lock *)((lmp_handle *)h)->obj;
  int32_t owner = atomic_load(&l->owner);
  if (owner == 0) lua_pushliteral(L, "unlocked");
  else lua_pushfstring(L, "locked by pid %d", (int)owner);
}

static int new_lock(lua_State *L, int recursive) {
  lmp_lock *l = lmp_lock_new(recursive);
  if (l == NULL) return lmp_nomem(L, sizeof *l);
  lmp_pushnew(L, &l->h);
  return 1;
}

static int sync_Lock(lua_State *L) { return new_lock(L, 0); }
static int sync_RLock(lua_State *L) { return new_lock(L, 1); }

/* Semaphores */

static int sem_acquire_l(lua_State *L) {
  sem *s = (sem *)lmp_checkobj(L, 1);
  int died, rc = sem_acquire(L, s, lmp_block_deadline(L, 2), &died);
  return push_acquired(L, rc, died);
}

/* release([n]) */
static int sem_release_l(lua_State *L) {
  sem *s = (sem *)lmp_checkobj(L, 1);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  luaL_argcheck(L, n >= 1, 2, "n must be at least 1");
  if (n > INT32_MAX || sem_release(s, (int32_t)n) < 0)
    return luaL_error(L, "semaphore or lock released too many times");
  return 0;
}

static int sem_get_value(lua_State *L) {
  sem *s = (sem *)lmp_checkobj(L, 1);
  int32_t v;
  lmp_guard_lock(&s->g, &s->h);
  v = s->value;
  lmp_guard_unlock(&s->g);
  lua_pushinteger(L, v);
  return 1;
}

static void sem_describe(lua_State *L, void *h) {
  lua_pushfstring(L, "value=%d", (int)((sem *)((lmp_handle *)h)->obj)->value);
}

static int new_sem(lua_State *L, int bounded) {
  lua_Integer v = luaL_optinteger(L, 1, 1);
  sem *s;
  luaL_argcheck(L, v >= 0, 1, "semaphore initial value must be >= 0");
  luaL_argcheck(L, v <= INT_MAX, 1, "semaphore initial value is too large");
  s = (sem *)lmp_obj_new(LMP_T_SEM, bounded ? K_BSEM : K_SEM, sizeof(sem));
  if (s == NULL) return lmp_nomem(L, sizeof(sem));
  lmp_guard_init(&s->g);
  s->value = s->maxvalue = (int32_t)v;
  lmp_pushnew(L, &s->h);
  return 1;
}

static int sync_Semaphore(lua_State *L) { return new_sem(L, 0); }
static int sync_BoundedSemaphore(lua_State *L) { return new_sem(L, 1); }

/* Events */

static int event_is_set(lua_State *L) {
  lua_pushboolean(L, atomic_load(&((event *)lmp_checkobj(L, 1))->flag));
  return 1;
}

static int event_set(lua_State *L) {
  event *e = (event *)lmp_checkobj(L, 1);
  lmp_owe(&e->seq);
  atomic_store(&e->flag, 1);
  atomic_fetch_add(&e->sets, 1);
  lmp_futex_bump(&e->seq, INT_MAX);
  lmp_paid();
  lmp_notify_watchers(&e->h);
  return 0;
}

static int event_clear(lua_State *L) {
  atomic_store(&((event *)lmp_checkobj(L, 1))->flag, 0);
  return 0;
}

/* A waiter's view of an event: it wakes once the flag is set, or once a
 * set came since it began (the flag may be cleared again by then).  Sets
 * are counted apart from the futex word, which a wake-up of this process
 * for anything else (a signal, a child's end) bumps too. */
typedef struct event_wait_ud {
  event *e;
  uint32_t sets; /* e->sets when the wait began */
} event_wait_ud;

static int event_set_since(void *ud) {
  event_wait_ud *w = ud;
  return atomic_load(&w->e->flag) || atomic_load(&w->e->sets) != w->sets;
}

/* wait([timeout]) -> the flag at the end, as Python's: a set followed at
 * once by a clear wakes every waiter, and they answer false. */
static int event_wait(lua_State *L) {
  event_wait_ud w;
  int rc;
  w.e = (event *)lmp_checkobj(L, 1);
  w.sets = atomic_load(&w.e->sets);
  rc = lmp_wait_on(L, &w.e->seq, event_set_since, &w,
                   lmp_opt_deadline(L, 2));
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot wait");
  lua_pushboolean(L, atomic_load(&w.e->flag));
  return 1;
}

static void event_describe(lua_State *L, void *h) {
  event *e = (event *)((lmp_handle *)h)->obj;
  lua_pushstring(L, atomic_load(&e->flag) ? "set" : "unset");
}

static int sync_Event(lua_State *L) {
  event *e = (event *)lmp_obj_new(LMP_T_EVENT, 0, sizeof(event));
  if (e == NULL) return lmp_nomem(L, sizeof(event));
  lmp_pushnew(L, &e->h);
  return 1;
}

/* -------------------------------------------------------------------- with */

/* with(obj, fn, ...) -> true and what fn returned, or false and what it
 * raised: fn runs holding obj (by its acquire and release methods: a
 * lock, a semaphore, a condition), which is released however fn ends.
 * What acquire or release raise is raised.  No Lua code runs between the
 * acquire and the call of fn, nor between fn's end and the release, and
 * a Ctrl-C that comes then waits for the release: once acquired, obj is
 * released, whenever the interrupt comes. */
static int sync_with(lua_State *L) {
  int n = lua_gettop(L), status, pending, released;
  luaL_checkany(L, 2);
  lua_getfield(L, 1, "acquire");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  lua_pushboolean(L, 1); /* at n + 1: true, or false after an error */
  for (int i = 2; i <= n; i++) lua_pushvalue(L, i);
  status = lua_pcall(L, n - 2, LUA_MULTRET, 0);
  pending = lmp_defer_interrupt();
  lua_getfield(L, 1, "release");
  lua_pushvalue(L, 1);
  released = lua_pcall(L, 1, 0, 0);
  lmp_resume_interrupt(pending);
  if (released != LUA_OK) return lua_error(L);
  if (status != LUA_OK) {
    lua_pushboolean(L, 0);
    lua_replace(L, n + 1);
  }
  return lua_gettop(L) - n;
}

/* ---------------------------------------------------------------- classes */

static const luaL_Reg lock_meth[] = {
  {"acquire", lock_acquire}, {"release", lock_release},
  {"locked", lock_locked},   {"owned", lock_owned}, {NULL, NULL}
};

static const luaL_Reg sem_meth[] = {
  {"acquire", sem_acquire_l}, {"release", sem_release_l},
  {"get_value", sem_get_value}, {NULL, NULL}
};

static const luaL_Reg event_meth[] = {
  {"is_set", event_is_set}, {"set", event_set}, {"clear", event_clear},
  {"wait", event_wait}, {NULL, NULL}
};

static const lmp_type lock_type = {.name = "lock"};
static const lmp_type sem_type = {
  .name = "semaphore", .dtor = sem_dtor, .guard = offsetof(sem, g),
  .on_exit = sem_exit, .repair = sem_repair,
};
static const lmp_type event_type = {.name = "event"};

#define LOCKCLASS(cname, k)                                                \
  {.name = cname, .what = "lock", .type = LMP_T_LOCK, .kind = k, .group = 1,\
   .obj = &lock_type, .size = sizeof(lmp_handle), .meth = lock_meth,       \
   .describe = lock_describe}
#define SEMCLASS(cname, k)                                                 \
  {.name = cname, .what = "semaphore", .type = LMP_T_SEM, .kind = k,       \
   .group = 2,                                                             \
   .obj = &sem_type, .size = sizeof(lmp_handle), .meth = sem_meth,         \
   .describe = sem_describe}

static const lmp_class lock_class = LOCKCLASS(LOCK, LMP_LOCK_PLAIN);
static const lmp_class rlock_class = LOCKCLASS(RLOCK, LMP_LOCK_RECURSIVE);
static const lmp_class sem_class = SEMCLASS(SEM, K_SEM);
static const lmp_class bsem_class = SEMCLASS(BSEM, K_BSEM);
static const lmp_class event_class = {
  .name = EVENT, .what = "event", .type = LMP_T_EVENT, .group = 3,
  .obj = &event_type,
  .size = sizeof(lmp_handle), .meth = event_meth, .describe = event_describe,
};

static const lmp_class *const sync_classes[] = {
  &lock_class, &rlock_class, &sem_class, &bsem_class, &event_class, NULL
};

static const luaL_Reg sync_funcs[] = {
  {"Lock", sync_Lock}, {"RLock", sync_RLock},
  {"Semaphore", sync_Semaphore}, {"BoundedSemaphore", sync_BoundedSemaphore},
  {"Event", sync_Event}, {"with", sync_with}, {NULL, NULL}
};

const lmp_family lmp_sync_family = {sync_classes, sync_funcs, NULL};
