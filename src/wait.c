/* wait.c -- mp.wait: sleep until any of a set of connections, process
 * sentinels and queues is ready.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>

#include "internal.h"

/*
 * Each object is checked in its own way: a queue is ready when a get
 * would not block, a sentinel when its child has ended, a connection when
 * a message (or the end of the stream) can be read.  The caller sleeps in
 * lmp_wait_fds on the connections' descriptors; it watches the queues, so
 * a put anywhere in the family wakes it, and the SIGCHLD watcher wakes it
 * for the sentinels.
 */

enum { W_QUEUE, W_CHILD, W_CONN };

typedef struct witem {
  int kind, fd;
  lmp_obj *q;
} witem;

typedef struct wctx {
  lua_State *L;
  int n, base; /* items; stack index of the list */
  witem *it;
  struct pollfd *fds;
} wctx;

/* Is item i ready now?  (Connections: buffered message or poll revents.) */
static int item_ready(wctx *w, int i, struct pollfd *pfd) {
  witem *it = &w->it[i];
  int r, fd;
  switch (it->kind) {
    case W_QUEUE:
      return lmp_queue_ready(it->q);
    case W_CHILD:
      lua_rawgeti(w->L, w->base, i + 1);
      r = lmp_child_ended(w->L, -1);
      lua_pop(w->L, 1);
      return r == 1;
    default:
      lua_rawgeti(w->L, w->base, i + 1);
      r = lmp_conn_buffered(w->L, -1, &fd);
      lua_pop(w->L, 1);
      if (r != 0) return 1; /* buffered, or closed meanwhile */
      return pfd != NULL && (pfd->revents & (POLLIN | POLLHUP | POLLERR));
  }
}

static int any_ready(void *ud) {
  wctx *w = ud;
  int i;
  for (i = 0; i < w->n; i++)
    if (w->it[i].kind != W_CONN && item_ready(w, i, NULL)) return 1;
  for (i = 0; i < w->n; i++)
    if (w->it[i].kind == W_CONN && item_ready(w, i, NULL)) return 1;
  return 0;
}

/* wait(list, [timeout]) -> the positions in list of the ready ones, in
 * order. */
static int core_wait(lua_State *L) {
  wctx w;
  int i, nfd = 0, rc, out = 0;
  double deadline;
  luaL_checktype(L, 1, LUA_TTABLE);
  deadline = lmp_deadline(L, 2);
  w.L = L;
  w.base = 1;
  w.n = (int)luaL_len(L, 1);
  w.it = lua_newuserdatauv(L, sizeof(witem) * (size_t)(w.n + 1), 0);
  w.fds = lua_newuserdatauv(L, sizeof(struct pollfd) * (size_t)(w.n + 1), 0);
  for (i = 0; i < w.n; i++) {
    witem *it = &w.it[i];
    lmp_obj *o;
    int fd;
    lua_rawgeti(L, 1, i + 1);
    if ((o = lmp_toobj(L, -1)) != NULL && o->type == LMP_T_QUEUE) {
      it->kind = W_QUEUE;
      it->q = o;
    } else if (lmp_child_ended(L, -1) >= 0) {
      it->kind = W_CHILD;
    } else if (lmp_conn_buffered(L, -1, &fd) >= 0) {
      it->kind = W_CONN;
      it->fd = fd;
      w.fds[nfd].fd = fd;
      w.fds[nfd].events = POLLIN;
      w.fds[nfd].revents = 0;
      nfd++;
    } else {
      /* No position: the Lua front adds the caller's. */
      lua_pushfstring(L, "bad argument #1 to 'wait' (item %d is not a "
                      "connection, sentinel or queue of this process)", i + 1);
      return lua_error(L);
    }
    lua_pop(L, 1);
  }
  for (i = 0; i < w.n; i++) {
    if (w.it[i].kind == W_QUEUE && lmp_watch(w.it[i].q) < 0) {
      while (--i >= 0)
        if (w.it[i].kind == W_QUEUE) lmp_unwatch(w.it[i].q);
      return luaL_error(L, "too many processes are waiting at once");
    }
  }
  rc = lmp_wait_fds(w.fds, nfd, any_ready, &w, deadline);
  for (i = 0; i < w.n; i++)
    if (w.it[i].kind == W_QUEUE) lmp_unwatch(w.it[i].q);
  if (rc == -EINTR || rc == -ECANCELED) return lmp_wait_fail(L, rc);
  if (rc < 0) return luaL_error(L, "cannot wait: %s", strerror(-rc));
  /* Which are ready: poll the descriptors once more without waiting. */
  if (nfd > 0) poll(w.fds, (nfds_t)nfd, 0);
  lua_newtable(L);
  for (i = 0, nfd = 0; i < w.n; i++) {
    struct pollfd *p = NULL;
    if (w.it[i].kind == W_CONN) p = &w.fds[nfd++];
    if (item_ready(&w, i, p)) {
      lua_pushinteger(L, i + 1);
      lua_rawseti(L, -2, ++out);
    }
  }
  return 1;
}

int lmp_open_wait(lua_State *L) {
  lua_pushcfunction(L, core_wait);
  lua_setfield(L, -2, "wait");
  return 0;
}
