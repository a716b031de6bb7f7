/* cond.c -- Condition and Barrier: waiting for other processes to say
 * so, in the arena, without hanging when one of them dies.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "types.h"

/*
 * A Condition keeps its waiters in arrival order: pid, a ticket that names
 * the wait, and whether a notify has picked it.  notify(n) picks the n
 * oldest waiters that are still alive (a dead waiter is dropped, so it
 * never swallows a notification) and bumps `seq`, on which the waiters
 * sleep.  A waiter that times out removes itself; a picked waiter returns
 * true, as in Python.
 *
 * A Barrier follows Python's threading.Barrier: `count` processes have
 * arrived; its state is filling, acting (the last one arrived runs the
 * action: as under Python's lock, which the action holds, no one enters,
 * leaves or times out meanwhile, and a reset waits for the round's end),
 * draining (all leave), resetting or broken.  Its waiters are listed
 * too, so that a waiter that dies breaks the barrier for the others
 * instead of leaving them waiting for a departure that cannot come.
 */

#define COND "luamp.Condition"
#define BARRIER "luamp.Barrier"
#define DEATH_CHECK 0.1

typedef struct waiter {
  int32_t pid, picked;
  uint64_t ticket;
} waiter;

/* A growable list of waiters, guarded by its owner's guard. */
typedef struct wlist {
  lmp_off arr;
  uint32_t n, cap;
  uint64_t next_ticket;
} wlist;

static waiter *W(wlist *w) { return LMP_PTR(w->arr); }

/* Adds a waiter; returns its ticket, 0 if the arena is exhausted. */
static uint64_t wl_add(wlist *w, pid_t pid) {
  if (w->n == w->cap) {
    uint32_t cap = w->cap ? w->cap * 2 : 8;
    waiter *na = lmp_alloc(sizeof(waiter) * cap);
    if (na == NULL) return 0;
    if (w->n) memcpy(na, W(w), sizeof(waiter) * w->n);
    lmp_free(w->arr ? W(w) : NULL);
    w->arr = LMP_OFF(na);
    w->cap = cap;
  }
  W(w)[w->n].pid = pid;
  W(w)[w->n].picked = 0;
  W(w)[w->n].ticket = ++w->next_ticket;
  return W(w)[w->n++].ticket;
}

static int wl_find(wlist *w, uint64_t ticket) {
  uint32_t i;
  for (i = 0; i < w->n; i++)
    if (W(w)[i].ticket == ticket) return (int)i;
  return -1;
}

static void wl_remove(wlist *w, int i) {
  memmove(W(w) + i, W(w) + i + 1, sizeof(waiter) * (w->n - (uint32_t)i - 1));
  w->n--;
}

static void wl_free(wlist *w) {
  if (w->arr) lmp_heap_free(W(w), &w->arr); /* one operation: a dtor's */
  w->n = w->cap = 0;
}

/* ------------------------------------------------------------ Condition */

typedef struct cond {
  lmp_obj h;
  lmp_guard g;
  lmp_off lock;               /* a Lock or RLock, referenced */
  _Atomic uint64_t lock_refs; /* 1 while it holds that reference */
  _Atomic uint32_t seq;
  wlist w;
} cond;

static lmp_lock *LOCKOF(cond *c) { return LMP_PTR(c->lock); }

typedef struct cwait {
  cond *c;
  uint64_t ticket;
} cwait;

static int picked(void *ud) {
  cwait *cw = ud;
  int i, p;
  lmp_guard_lock(&cw->c->g, &cw->c->h);
  i = wl_find(&cw->c->w, cw->ticket);
  p = i >= 0 && W(&cw->c->w)[i].picked;
  lmp_guard_unlock(&cw->c->g);
  return p;
}

/* Waits for a notify: 1 (notified), 0 (timeout), -EINTR, -ENOMEM.  The
 * caller holds the lock; it is released while waiting and held again on
 * return, whatever happens. */
static int cond_wait_core(lua_State *L, cond *c, double deadline) {
  lmp_lock *l = LOCKOF(c);
  cwait cw;
  int32_t levels;
  int rc, i, died;
  cw.c = c;
  lmp_guard_lock(&c->g, &c->h);
  cw.ticket = wl_add(&c->w, lmp_pid);
  lmp_guard_unlock(&c->g);
  if (cw.ticket == 0) return -ENOMEM;
  levels = lmp_lock_release_all(l);
  rc = lmp_wait_on(L, &c->seq, picked, &cw, deadline);
  lmp_guard_lock(&c->g, &c->h);
  i = wl_find(&c->w, cw.ticket);
  if (i >= 0) {
    if (W(&c->w)[i].picked && rc == 0) rc = 1; /* picked at the deadline */
    wl_remove(&c->w, i);
  }
  lmp_guard_unlock(&c->g);
  /* The lock comes back whatever ended the wait, even a Ctrl-C (which is
   * kept for the caller to raise once the lock is held again). */
  {
    int pending = lmp_defer_interrupt();
    while (lmp_lock_restore(l, levels, &died) != 1) lmp_defer_interrupt();
    lmp_resume_interrupt(pending);
  }
  return rc;
}

/* Picks up to n living waiters; returns how many. */
static int cond_notify_core(cond *c, int n) {
  uint32_t i = 0;
  int k = 0;
  lmp_owe(&c->seq);
  lmp_guard_lock(&c->g, &c->h);
  while (i < c->w.n && k < n) {
    waiter *x = &W(&c->w)[i];
    if (x->picked) {
      i++;
    } else if (lmp_pid_dead(x->pid)) {
      wl_remove(&c->w, (int)i);
    } else {
      x->picked = 1;
      k++;
      i++;
    }
  }
  lmp_guard_unlock(&c->g);
  if (k > 0) lmp_futex_bump(&c->seq, INT_MAX);
  lmp_paid();
  return k;
}

static void cond_dtor(lmp_obj *o) {
  cond *c = (cond *)o;
  wl_free(&c->w);
  lmp_guard_destroy(&c->g);
  if (atomic_load(&c->lock_refs) > 0)
    lmp_obj_decref_counted(LMP_PTR(c->lock), &c->lock_refs);
}

#define checkcond(L) ((cond *)lmp_checkobj(L, 1))

/* acquire/release go to the lock, whose handle the condition's handle
 * keeps as its user value. */
static int cond_lockcall(lua_State *L, const char *method) {
  int n = lua_gettop(L);
  checkcond(L);
  lua_getiuservalue(L, 1, 1);
  lua_getfield(L, -1, method);
  lua_insert(L, 2);
  lua_insert(L, 3); /* f, lock, args... */
  lua_remove(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

static int cond_acquire(lua_State *L) { return cond_lockcall(L, "acquire"); }
static int cond_release(lua_State *L) { return cond_lockcall(L, "release"); }

static int cond_get_lock(lua_State *L) {
  checkcond(L);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

/* wait([timeout]) -> true if notified, false on timeout */
static int cond_wait(lua_State *L) {
  cond *c = checkcond(L);
  double deadline = lmp_opt_deadline(L, 2);
  int rc;
  if (!lmp_lock_owned(LOCKOF(c)))
    return luaL_error(L, "cannot wait on un-acquired lock");
  rc = cond_wait_core(L, c, deadline);
  if (rc == -ENOMEM) return lmp_nomem(L, sizeof(waiter) * 16);
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot wait");
  lua_pushboolean(L, rc == 1);
  return 1;
}

/* notify([n = 1]) */
static int cond_notify(lua_State *L) {
  cond *c = checkcond(L);
  lua_Integer n = luaL_optinteger(L, 2, 1);
  if (!lmp_lock_owned(LOCKOF(c)))
    return luaL_error(L, "cannot notify on un-acquired lock");
  if (n > 0) cond_notify_core(c, n > INT_MAX ? INT_MAX : (int)n);
  return 0;
}

static int cond_notify_all(lua_State *L) {
  cond *c = checkcond(L);
  if (!lmp_lock_owned(LOCKOF(c)))
    return luaL_error(L, "cannot notify on un-acquired lock");
  cond_notify_core(c, INT_MAX);
  return 0;
}

static void cond_describe(lua_State *L, void *h) {
  lua_pushfstring(L, "%d waiting", (int)((cond *)((lmp_handle *)h)->obj)->w.n);
}

/* A handle keeps a handle of the condition's lock as its user value:
 * acquire and release go there. */
static void cond_bind(lua_State *L, lmp_obj *o) {
  lmp_pushobj(L, LMP_PTR(((cond *)o)->lock));
  lua_setiuservalue(L, -2, 1);
}

/* Condition([lock]): the default lock is a new RLock. */
static int cond_new(lua_State *L) {
  lmp_obj *lk = NULL;
  cond *c;
  if (!lua_isnoneornil(L, 1)) {
    const lmp_class *lc = lmp_classof(L, 1);
    lk = lmp_toobj(L, 1);
    luaL_argcheck(L, lk != NULL || lc == NULL || lc->type != LMP_T_LOCK, 1,
                  "the lock given is closed");
    luaL_argcheck(L, lk != NULL && lk->type == LMP_T_LOCK, 1,
                  "a Lock or RLock expected");
  } else {
    lmp_lock *nl = lmp_lock_new(1);
    if (nl == NULL) return lmp_nomem(L, sizeof(lmp_lock));
    lk = &nl->h;
    /* Held from here (the handle goes with the stack): while the
     * Condition is made, the slot names it, not the lock. */
    lmp_pushnew(L, lk);
  }
  c = (cond *)lmp_obj_new(LMP_T_COND, 0, sizeof(cond));
  if (c == NULL) return lmp_nomem(L, sizeof(cond));
  lmp_guard_init(&c->g);
  c->lock = LMP_OFF(lk);
  lmp_obj_incref_counted(lk, &c->lock_refs);
  lmp_pushnew(L, &c->h);
  return 1;
}

/* -------------------------------------------------------------- Barrier */

enum { FILLING = 0, DRAINING = 1, ACTING = 2, RESETTING = -1, BROKEN = -2 };

/* The previous round is not over: who arrives waits. */
#define CLOSED(st) ((st) == DRAINING || (st) == RESETTING || (st) == ACTING)
/* This round is not over: who arrived waits. */
#define OPEN(st) ((st) == FILLING || (st) == ACTING)

typedef struct barrier {
  lmp_obj h;
  lmp_guard g;
  int32_t parties, count, state;
  _Atomic uint32_t seq;
  double timeout; /* default for wait, < 0: none */
  lmp_off action; /* its action, or 0 */
  wlist w;
} barrier;

/* A Barrier's action: the encoded function in a counted message block,
 * so that a process killed while it makes the Barrier leaves none of the
 * references its upvalues hold behind: the block is pending
 * (LMP_PEND_NEW) until the Barrier holds it. */
typedef lmp_cmsg action;

typedef struct bwait {
  barrier *b;
  int enter; /* waiting to enter (state not draining/resetting) */
  double next_check;
} bwait;

/* Breaks the barrier if a waiter has died; the caller holds the guard. */
static void check_dead(barrier *b) {
  uint32_t i = 0;
  int dead = 0;
  while (i < b->w.n) {
    if (lmp_pid_dead(W(&b->w)[i].pid)) {
      wl_remove(&b->w, (int)i);
      b->count--;
      dead = 1;
    } else {
      i++;
    }
  }
  if (dead) {
    /* A party that died waiting for the others can never be let go with
     * them: the round is broken, for those waiting and those to come. */
    if (OPEN(b->state)) b->state = BROKEN;
    else if (b->count <= 0 && (b->state == DRAINING || b->state == RESETTING))
      b->state = FILLING;
    lmp_futex_bump(&b->seq, INT_MAX);
  }
}

static int bready(void *ud) {
  bwait *bw = ud;
  barrier *b = bw->b;
  int r;
  lmp_guard_lock(&b->g, &b->h);
  if (lmp_now() >= bw->next_check) {
    bw->next_check = lmp_now() + DEATH_CHECK;
    check_dead(b);
  }
  r = bw->enter ? !CLOSED(b->state) : !OPEN(b->state);
  lmp_guard_unlock(&b->g);
  return r;
}

/* Sleeps (the guard released) until bready or the deadline; 1, 0, -EINTR
 * or -ECANCELED. */
static int bsleep(lua_State *L, barrier *b, int enter, double deadline) {
  bwait bw;
  int rc;
  bw.b = b;
  bw.enter = enter;
  bw.next_check = 0;
  lmp_guard_unlock(&b->g);
  for (;;) {
    double until = lmp_now() + DEATH_CHECK;
    if (deadline >= 0 && deadline < until) until = deadline;
    rc = lmp_wait_on(L, &b->seq, bready, &bw, until);
    if (rc != 0 || (deadline >= 0 && lmp_now() >= deadline)) break;
    bw.next_check = 0;
  }
  lmp_guard_lock(&b->g, &b->h);
  return rc;
}

static void bbreak(barrier *b) {
  b->state = BROKEN;
  lmp_futex_bump(&b->seq, INT_MAX);
}

/* The last arrival's exit from wait, and everyone's: the barrier fills
 * again once all have left a draining or reset round. */
static void bexit(barrier *b, uint64_t ticket) {
  int i = wl_find(&b->w, ticket);
  if (i >= 0) wl_remove(&b->w, i);
  b->count--;
  if (b->count == 0 && (b->state == RESETTING || b->state == DRAINING)) {
    b->state = FILLING;
    lmp_futex_bump(&b->seq, INT_MAX);
  }
}

#define checkbarrier(L) ((barrier *)lmp_checkobj(L, 1))

static int broken_error(lua_State *L) {
  return lmp_throw(L, "BrokenBarrierError", "the barrier is broken");
}

static int decode_call(lua_State *L) {
  lmp_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  lua_call(L, 0, 0);
  return 0;
}

/* Runs the action of the barrier whose handle is at 1: the function itself
 * in the process that made the barrier (and its forks), so that what it
 * changes stays, as in Python; elsewhere its copy.  Protected. */
static int run_action(lua_State *L, action *a) {
  if (lua_getiuservalue(L, 1, 1) != LUA_TNIL)
    return lua_pcall(L, 0, 0, 0);
  lua_pop(L, 1);
  lua_pushcfunction(L, decode_call);
  lua_pushlightuserdata(L, a->data);
  lua_pushinteger(L, (lua_Integer)a->len);
  return lua_pcall(L, 2, 0, 0);
}

/* wait([timeout]) -> arrival index 0 .. parties-1 */
static int barrier_wait(lua_State *L) {
  barrier *b = checkbarrier(L);
  double deadline;
  uint64_t ticket;
  int32_t index;
  int rc;
  if (lua_isnoneornil(L, 2))
    deadline = b->timeout < 0 ? -1 : lmp_now() + b->timeout;
  else
    deadline = lmp_opt_deadline(L, 2);
  lmp_guard_lock(&b->g, &b->h);
  /* Wait for the previous round to drain. */
  while (CLOSED(b->state)) {
    rc = bsleep(L, b, 1, -1);
    if (rc < 0) {
      lmp_guard_unlock(&b->g);
      return lmp_raise_errno(L, rc, "cannot wait");
    }
  }
  check_dead(b); /* a party that died before we came */
  if (b->state == BROKEN) {
    lmp_guard_unlock(&b->g);
    return broken_error(L);
  }
  index = b->count++;
  ticket = wl_add(&b->w, lmp_pid);
  if (ticket == 0) {
    b->count--;
    lmp_guard_unlock(&b->g);
    return lmp_nomem(L, sizeof(waiter) * 16);
  }
  if (index + 1 == b->parties) {
    /* The last to arrive runs the action, then lets everyone go. */
    if (b->action != 0) {
      b->state = ACTING;
      lmp_guard_unlock(&b->g);
      rc = run_action(L, LMP_PTR(b->action));
      lmp_guard_lock(&b->g, &b->h);
      if (rc != LUA_OK) {
        bbreak(b);
        bexit(b, ticket);
        lmp_guard_unlock(&b->g);
        return lua_error(L);
      }
    }
    /* (aborted, or a party died, while it acted: broken for the others,
     * as Python's abort after the action) */
    if (b->state != BROKEN) b->state = DRAINING;
    lmp_futex_bump(&b->seq, INT_MAX);
  } else {
    while (OPEN(b->state)) {
      rc = bsleep(L, b, 0, deadline);
      if (rc < 0) {
        bbreak(b);
        bexit(b, ticket);
        lmp_guard_unlock(&b->g);
        return lmp_raise_errno(L, rc, "cannot wait");
      }
      if (rc == 0 && b->state == FILLING) { /* timed out */
        bbreak(b);
        break;
      }
      if (rc == 0) deadline = -1; /* the action runs: it is the round's */
    }
    if (b->state < 0) { /* broken or reset while we waited */
      bexit(b, ticket);
      lmp_guard_unlock(&b->g);
      return broken_error(L);
    }
  }
  bexit(b, ticket);
  lmp_guard_unlock(&b->g);
  lua_pushinteger(L, index);
  return 1;
}

static int barrier_reset(lua_State *L) {
  barrier *b = checkbarrier(L);
  lmp_guard_lock(&b->g, &b->h);
  if (b->count > 0) {
    if (b->state == FILLING || b->state == BROKEN) b->state = RESETTING;
  } else {
    b->state = FILLING;
  }
  lmp_futex_bump(&b->seq, INT_MAX);
  lmp_guard_unlock(&b->g);
  return 0;
}

static int barrier_abort(lua_State *L) {
  barrier *b = checkbarrier(L);
  lmp_guard_lock(&b->g, &b->h);
  bbreak(b);
  lmp_guard_unlock(&b->g);
  return 0;
}

/* Fields: parties, n_waiting, broken. */
static int barrier_parties(lua_State *L) {
  lua_pushinteger(L, checkbarrier(L)->parties);
  return 1;
}

static int barrier_n_waiting(lua_State *L) {
  barrier *b = checkbarrier(L);
  lmp_guard_lock(&b->g, &b->h);
  lua_pushinteger(L, b->state == FILLING ? b->count : 0);
  lmp_guard_unlock(&b->g);
  return 1;
}

static int barrier_broken(lua_State *L) {
  lua_pushboolean(L, checkbarrier(L)->state == BROKEN);
  return 1;
}

static const luaL_Reg barrier_getters[] = {
  {"parties", barrier_parties}, {"n_waiting", barrier_n_waiting},
  {"broken", barrier_broken}, {NULL, NULL}
};

static void barrier_describe(lua_State *L, void *h) {
  barrier *b = (barrier *)((lmp_handle *)h)->obj;
  lua_pushfstring(L, "%d/%d%s", (int)b->count, (int)b->parties,
                  b->state == BROKEN ? ", broken" : "");
}

static void barrier_dtor(lmp_obj *o) {
  barrier *b = (barrier *)o;
  wl_free(&b->w);
  if (b->action) lmp_cmsg_drop(LMP_PTR(b->action), &b->action);
  lmp_guard_destroy(&b->g);
}

static int barrier_owns(lmp_obj *o, lmp_off blk) {
  return ((barrier *)o)->action == blk;
}

/* Barrier(parties, [action], [timeout]) */
static int barrier_new(lua_State *L) {
  lua_Integer parties = luaL_checkinteger(L, 1);
  double timeout = -1;
  barrier *b;
  lmp_buf *buf = NULL;
  size_t nobj = 0;
  luaL_argcheck(L, parties >= 1 && parties <= INT_MAX, 1,
                "parties must be at least 1");
  if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION) {
    if (luaL_getmetafield(L, 2, "__call") == LUA_TNIL)
      luaL_typeerror(L, 2, "function");
    lua_pop(L, 1);
  }
  if (!lua_isnoneornil(L, 3)) {
    lua_Number t = luaL_checknumber(L, 3);
    luaL_argcheck(L, t == t, 3, "timeout must be a number");
    timeout = t > 0 ? t : 0; /* negative: no wait, as in every timeout */
  }
  if (!lua_isnoneornil(L, 2)) { /* encoded first: it may raise */
    buf = lmp_buf_new(L);
    nobj = lmp_encode_bare(L, 2, "action", buf);
  }
  b = (barrier *)lmp_obj_new(LMP_T_BARRIER, 0, sizeof(barrier));
  if (b == NULL) return lmp_nomem(L, sizeof(barrier));
  lmp_guard_init(&b->g);
  b->parties = (int32_t)parties;
  b->timeout = timeout;
  if (buf != NULL) {
    action *a = lmp_cmsg_alloc(&b->h, buf->len, LMP_PEND_NEW);
    if (a == NULL) {
      lmp_obj_discard(&b->h);
      return lmp_nomem(L, buf->len);
    }
    memcpy(a->data, buf->data, buf->len);
    lmp_cmsg_seal(a, nobj);
    b->action = LMP_OFF(a); /* the commit */
    lmp_pending_clear(LMP_PEND_NEW);
    lua_pop(L, 1);
  }
  lmp_pushnew(L, &b->h);
  if (buf != NULL) {
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1);
  }
  return 1;
}

static const luaL_Reg cond_meth[] = {
  {"acquire", cond_acquire}, {"release", cond_release},
  {"wait", cond_wait},       {"notify", cond_notify},
  {"notify_all", cond_notify_all}, {"get_lock", cond_get_lock},
  {NULL, NULL}
};

static const luaL_Reg barrier_meth[] = {
  {"wait", barrier_wait}, {"reset", barrier_reset},
  {"abort", barrier_abort}, {NULL, NULL}
};

static const lmp_type cond_type = {
  .name = "condition", .dtor = cond_dtor, .guard = offsetof(cond, g),
};
static const lmp_type barrier_type = {
  .name = "barrier", .dtor = barrier_dtor, .guard = offsetof(barrier, g),
  .owns = barrier_owns, .release = lmp_cmsg_release,
};

static const lmp_class cond_class = {
  .name = COND, .what = "condition", .type = LMP_T_COND, .group = 1,
  .obj = &cond_type, .size = sizeof(lmp_handle), .nuv = 1, .meth = cond_meth,
  .bind = cond_bind, .describe = cond_describe,
};
static const lmp_class barrier_class = {
  .name = BARRIER, .what = "barrier", .type = LMP_T_BARRIER, .group = 2,
  .obj = &barrier_type, .size = sizeof(lmp_handle), .nuv = 1,
  .meth = barrier_meth,
  .getters = barrier_getters, .describe = barrier_describe,
};

static const lmp_class *const cond_classes[] = {
  &cond_class, &barrier_class, NULL
};

static const luaL_Reg cond_funcs[] = {
  {"Condition", cond_new}, {"Barrier", barrier_new}, {NULL, NULL}
};

const lmp_family lmp_cond_family = {cond_classes, cond_funcs, NULL};
