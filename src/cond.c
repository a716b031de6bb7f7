/* cond.c -- Condition and Barrier: waiting for other processes to say
 * so, in the arena, without hanging when one of them dies.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "internal.h"

/*
 * A Condition keeps its waiters in arrival order: pid, a ticket that names
 * the wait, and whether a notify has picked it.  notify(n) picks the n
 * oldest waiters that are still alive (a dead waiter is dropped, so it
 * never swallows a notification) and bumps `seq`, on which the waiters
 * sleep.  A waiter that times out removes itself; a picked waiter returns
 * true, as in Python.
 *
 * A Barrier follows Python's threading.Barrier: `count` processes have
 * arrived; its state is filling, draining (the last one arrived: all
 * leave), resetting or broken.  Its waiters are listed too, so that a
 * waiter that dies breaks the barrier for the others instead of leaving
 * them waiting for a departure that cannot come.
 */

#define COND "luamp.Condition"
#define BARRIER "luamp.Barrier"
#define DEATH_CHECK 0.1

typedef struct waiter {
  int32_t pid, picked;
  uint64_t ticket;
} waiter;

/* A growable list of waiters, guarded by its owner's mutex. */
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
  if (w->arr) lmp_free(W(w));
  w->arr = 0;
  w->n = w->cap = 0;
}

/* ------------------------------------------------------------ Condition */

typedef struct cond {
  lmp_obj h;
  pthread_mutex_t mu;
  lmp_off lock; /* a Lock or RLock, referenced */
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
  lmp_mutex_lock(&cw->c->mu);
  i = wl_find(&cw->c->w, cw->ticket);
  p = i >= 0 && W(&cw->c->w)[i].picked;
  pthread_mutex_unlock(&cw->c->mu);
  return p;
}

/* Waits for a notify: 1 (notified), 0 (timeout), -EINTR, -ENOMEM.  The
 * caller holds the lock; it is released while waiting and held again on
 * return, whatever happens. */
static int cond_wait_core(cond *c, double deadline) {
  lmp_lock *l = LOCKOF(c);
  cwait cw;
  int32_t levels;
  int rc, i, died;
  cw.c = c;
  lmp_mutex_lock(&c->mu);
  cw.ticket = wl_add(&c->w, lmp_pid);
  pthread_mutex_unlock(&c->mu);
  if (cw.ticket == 0) return -ENOMEM;
  levels = lmp_lock_release_all(l);
  rc = lmp_wait_on(&c->seq, picked, &cw, deadline);
  lmp_mutex_lock(&c->mu);
  i = wl_find(&c->w, cw.ticket);
  if (i >= 0) {
    if (W(&c->w)[i].picked && rc == 0) rc = 1; /* picked at the deadline */
    wl_remove(&c->w, i);
  }
  pthread_mutex_unlock(&c->mu);
  /* The lock comes back whatever ended the wait, even a Ctrl-C (which is
   * kept for the caller to raise once the lock is held again). */
  {
    sig_atomic_t pending = lmp_sigint;
    lmp_sigint = 0;
    while (lmp_lock_restore(l, levels, &died) != 1) lmp_sigint = 0;
    if (pending) lmp_sigint = pending;
  }
  return rc;
}

/* Picks up to n living waiters; returns how many. */
static int cond_notify_core(cond *c, int n) {
  uint32_t i = 0;
  int k = 0;
  lmp_mutex_lock(&c->mu);
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
  pthread_mutex_unlock(&c->mu);
  if (k > 0) lmp_futex_bump(&c->seq, INT_MAX);
  return k;
}

static void cond_dtor(lmp_obj *o) {
  cond *c = (cond *)o;
  wl_free(&c->w);
  pthread_mutex_destroy(&c->mu);
  lmp_obj_decref(LMP_PTR(c->lock));
}

static cond *checkcond(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, COND);
  if (h->obj == NULL) luaL_error(L, "attempt to use a closed condition");
  return (cond *)h->obj;
}

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
  double deadline = lmp_deadline(L, 2);
  int rc;
  if (!lmp_lock_owned(LOCKOF(c)))
    return luaL_error(L, "cannot wait on un-acquired lock");
  rc = cond_wait_core(c, deadline);
  if (rc == -ENOMEM) return lmp_nomem(L, sizeof(waiter) * 16);
  if (rc < 0) return lmp_wait_fail(L, rc);
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

static int cond_close(lua_State *L) {
  lmp_unbind(luaL_checkudata(L, 1, COND));
  return 0;
}

static int cond_tostring(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, COND);
  if (h->obj == NULL) lua_pushliteral(L, COND " (closed)");
  else lua_pushfstring(L, COND " (%p, %d waiting)", (void *)h->obj,
                       (int)((cond *)h->obj)->w.n);
  return 1;
}

static void push_cond(lua_State *L, lmp_obj *o) {
  lmp_handle *h = lmp_newhandle(L, sizeof *h, COND);
  lmp_bind(L, h, o);
  lmp_pushobj(L, LMP_PTR(((cond *)o)->lock));
  lua_setiuservalue(L, -2, 1);
}

/* Condition([lock]): the default lock is a new RLock. */
static int cond_new(lua_State *L) {
  lmp_obj *lk = NULL;
  cond *c;
  if (!lua_isnoneornil(L, 1)) {
    lk = lmp_toobj(L, 1);
    luaL_argcheck(L, lk != NULL && lk->type == LMP_T_LOCK, 1,
                  "a Lock or RLock expected");
  } else {
    lmp_lock *nl = lmp_lock_new(1);
    if (nl == NULL) return lmp_nomem(L, sizeof(lmp_lock));
    lk = &nl->h;
  }
  c = (cond *)lmp_obj_new(LMP_T_COND, sizeof(cond));
  if (c == NULL) {
    if (lua_isnoneornil(L, 1)) { /* free the lock made here */
      lmp_obj_incref(lk);
      lmp_obj_decref(lk);
    }
    return lmp_nomem(L, sizeof(cond));
  }
  lmp_mutex_init(&c->mu);
  lmp_obj_incref(lk);
  c->lock = LMP_OFF(lk);
  push_cond(L, &c->h);
  return 1;
}

/* -------------------------------------------------------------- Barrier */

enum { FILLING = 0, DRAINING = 1, RESETTING = -1, BROKEN = -2 };

typedef struct barrier {
  lmp_obj h;
  pthread_mutex_t mu;
  int32_t parties, count, state;
  _Atomic uint32_t seq;
  double timeout; /* default for wait, < 0: none */
  lmp_off action; /* encoded function, or 0 */
  uint64_t action_len;
  wlist w;
} barrier;

typedef struct bwait {
  barrier *b;
  int enter; /* waiting to enter (state not draining/resetting) */
  double next_check;
} bwait;

/* Breaks the barrier if a waiter has died; the caller holds mu. */
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
    if (b->state == FILLING) b->state = BROKEN;
    else if (b->count <= 0 && (b->state == DRAINING || b->state == RESETTING))
      b->state = FILLING;
    lmp_futex_bump(&b->seq, INT_MAX);
  }
}

static int bready(void *ud) {
  bwait *bw = ud;
  barrier *b = bw->b;
  int r;
  lmp_mutex_lock(&b->mu);
  if (lmp_now() >= bw->next_check) {
    bw->next_check = lmp_now() + DEATH_CHECK;
    check_dead(b);
  }
  r = bw->enter ? (b->state != DRAINING && b->state != RESETTING)
                : b->state != FILLING;
  pthread_mutex_unlock(&b->mu);
  return r;
}

/* Sleeps (mu released) until bready or the deadline; 1, 0, -EINTR. */
static int bsleep(barrier *b, int enter, double deadline) {
  bwait bw;
  int rc;
  bw.b = b;
  bw.enter = enter;
  bw.next_check = 0;
  pthread_mutex_unlock(&b->mu);
  for (;;) {
    double until = lmp_now() + DEATH_CHECK;
    if (deadline >= 0 && deadline < until) until = deadline;
    rc = lmp_wait_on(&b->seq, bready, &bw, until);
    if (rc != 0 || (deadline >= 0 && lmp_now() >= deadline)) break;
    bw.next_check = 0;
  }
  lmp_mutex_lock(&b->mu);
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

static barrier *checkbarrier(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, BARRIER);
  if (h->obj == NULL) luaL_error(L, "attempt to use a closed barrier");
  return (barrier *)h->obj;
}

static int broken_error(lua_State *L) {
  return lmp_throw(L, "BrokenBarrierError", "the barrier is broken");
}

static int decode_call(lua_State *L) {
  lmp_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  lua_call(L, 0, 0);
  return 0;
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
    deadline = lmp_deadline(L, 2);
  lmp_mutex_lock(&b->mu);
  /* Wait for the previous round to drain. */
  while (b->state == DRAINING || b->state == RESETTING) {
    lmp_waiter(L);
    rc = bsleep(b, 1, -1);
    if (rc < 0) {
      pthread_mutex_unlock(&b->mu);
      return lmp_wait_fail(L, rc);
    }
  }
  check_dead(b); /* a party that died before we came */
  if (b->state == BROKEN) {
    pthread_mutex_unlock(&b->mu);
    return broken_error(L);
  }
  index = b->count++;
  ticket = wl_add(&b->w, lmp_pid);
  if (ticket == 0) {
    b->count--;
    pthread_mutex_unlock(&b->mu);
    return lmp_nomem(L, sizeof(waiter) * 16);
  }
  if (index + 1 == b->parties) {
    /* The last to arrive runs the action, then lets everyone go. */
    if (b->action != 0) {
      pthread_mutex_unlock(&b->mu);
      lua_pushcfunction(L, decode_call);
      lua_pushlightuserdata(L, LMP_PTR(b->action));
      lua_pushinteger(L, (lua_Integer)b->action_len);
      rc = lua_pcall(L, 2, 0, 0);
      lmp_mutex_lock(&b->mu);
      if (rc != LUA_OK) {
        bbreak(b);
        bexit(b, ticket);
        pthread_mutex_unlock(&b->mu);
        return lua_error(L);
      }
    }
    b->state = DRAINING;
    lmp_futex_bump(&b->seq, INT_MAX);
  } else {
    while (b->state == FILLING) {
      lmp_waiter(L);
      rc = bsleep(b, 0, deadline);
      if (rc < 0) {
        bbreak(b);
        bexit(b, ticket);
        pthread_mutex_unlock(&b->mu);
        return lmp_wait_fail(L, rc);
      }
      if (rc == 0 && b->state == FILLING) { /* timed out */
        bbreak(b);
        break;
      }
    }
    if (b->state < 0) { /* broken or reset while we waited */
      bexit(b, ticket);
      pthread_mutex_unlock(&b->mu);
      return broken_error(L);
    }
  }
  bexit(b, ticket);
  pthread_mutex_unlock(&b->mu);
  lua_pushinteger(L, index);
  return 1;
}

static int barrier_reset(lua_State *L) {
  barrier *b = checkbarrier(L);
  lmp_mutex_lock(&b->mu);
  if (b->count > 0) {
    if (b->state == FILLING || b->state == BROKEN) b->state = RESETTING;
  } else {
    b->state = FILLING;
  }
  lmp_futex_bump(&b->seq, INT_MAX);
  pthread_mutex_unlock(&b->mu);
  return 0;
}

static int barrier_abort(lua_State *L) {
  barrier *b = checkbarrier(L);
  lmp_mutex_lock(&b->mu);
  bbreak(b);
  pthread_mutex_unlock(&b->mu);
  return 0;
}

static int barrier_close(lua_State *L) {
  lmp_unbind(luaL_checkudata(L, 1, BARRIER));
  return 0;
}

/* Fields: parties, n_waiting, broken. */
static int barrier_index(lua_State *L) {
  barrier *b = checkbarrier(L);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "parties") == 0) {
    lua_pushinteger(L, b->parties);
  } else if (strcmp(k, "n_waiting") == 0) {
    lmp_mutex_lock(&b->mu);
    lua_pushinteger(L, b->state == FILLING ? b->count : 0);
    pthread_mutex_unlock(&b->mu);
  } else if (strcmp(k, "broken") == 0) {
    lua_pushboolean(L, b->state == BROKEN);
  } else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static int barrier_tostring(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, BARRIER);
  barrier *b = (barrier *)h->obj;
  if (b == NULL) lua_pushliteral(L, BARRIER " (closed)");
  else lua_pushfstring(L, BARRIER " (%p, %d/%d%s)", (void *)b, (int)b->count,
                       (int)b->parties, b->state == BROKEN ? ", broken" : "");
  return 1;
}

static void barrier_dtor(lmp_obj *o) {
  barrier *b = (barrier *)o;
  wl_free(&b->w);
  if (b->action) {
    lmp_msg_release(LMP_PTR(b->action), (size_t)b->action_len);
    lmp_free(LMP_PTR(b->action));
  }
  pthread_mutex_destroy(&b->mu);
}

static void push_barrier(lua_State *L, lmp_obj *o) {
  lmp_handle *h = lmp_newhandle(L, sizeof *h, BARRIER);
  lmp_bind(L, h, o);
}

/* Barrier(parties, [action], [timeout]) */
static int barrier_new(lua_State *L) {
  lua_Integer parties = luaL_checkinteger(L, 1);
  double timeout = -1;
  barrier *b;
  char *act = NULL;
  size_t alen = 0;
  luaL_argcheck(L, parties >= 1 && parties <= INT_MAX, 1,
                "parties must be at least 1");
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!lua_isnoneornil(L, 3)) {
    lua_Number t = luaL_checknumber(L, 3);
    luaL_argcheck(L, t == t && t >= 0, 3, "timeout must be non-negative");
    timeout = t;
  }
  if (!lua_isnoneornil(L, 2)) {
    lmp_buf *buf = lmp_buf_new(L);
    lmp_encode(L, 2, "action", buf);
    act = lmp_alloc(buf->len);
    if (act == NULL) {
      lmp_msg_release(buf->data, buf->len);
      return lmp_nomem(L, buf->len);
    }
    memcpy(act, buf->data, buf->len);
    alen = buf->len;
    lua_pop(L, 1);
  }
  b = (barrier *)lmp_obj_new(LMP_T_BARRIER, sizeof(barrier));
  if (b == NULL) {
    if (act) {
      lmp_msg_release(act, alen);
      lmp_free(act);
    }
    return lmp_nomem(L, sizeof(barrier));
  }
  lmp_mutex_init(&b->mu);
  b->parties = (int32_t)parties;
  b->timeout = timeout;
  b->action = act ? LMP_OFF(act) : 0;
  b->action_len = alen;
  push_barrier(L, &b->h);
  return 1;
}

static const luaL_Reg cond_meth[] = {
  {"acquire", cond_acquire}, {"release", cond_release},
  {"wait", cond_wait},       {"notify", cond_notify},
  {"notify_all", cond_notify_all}, {"get_lock", cond_get_lock},
  {"close", cond_close},     {NULL, NULL}
};

static const luaL_Reg barrier_meth[] = {
  {"wait", barrier_wait}, {"reset", barrier_reset},
  {"abort", barrier_abort}, {"close", barrier_close}, {NULL, NULL}
};

int lmp_open_cond(lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"Condition", cond_new}, {"Barrier", barrier_new}, {NULL, NULL}
  };
  lmp_newclass(L, COND, cond_meth, 0, cond_tostring);
  lmp_newclass(L, BARRIER, barrier_meth, 0, barrier_tostring);
  /* Barrier has fields: its __index is a function over the methods. */
  luaL_getmetatable(L, BARRIER);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -2, "methods");
  lua_pushcfunction(L, barrier_index);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  lmp_obj_settype(LMP_T_COND, "condition", cond_dtor);
  lmp_obj_settype(LMP_T_BARRIER, "barrier", barrier_dtor);
  lmp_settypepusher(LMP_T_COND, push_cond);
  lmp_settypepusher(LMP_T_BARRIER, push_barrier);
  luaL_setfuncs(L, funcs, 0);
  return 0;
}
