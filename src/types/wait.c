/* wait.c -- mp.wait: sleep until any of a set of connections, process
 * sentinels and queues is ready.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <string.h>

#include "types.h"

/*
 * Each object says in its own way whether it is ready, through its
 * class's `ready` hook: a queue when a get would not block, a sentinel
 * when its child has ended, a connection when a message (or the end of
 * the stream) can be read.  The caller sleeps in lmp_wait_fds on the
 * descriptors the hooks name; it watches the shared objects among them,
 * so a put anywhere in the family wakes it, and the SIGCHLD watcher wakes
 * it for the sentinels.
 */

typedef struct witem {
  const lmp_class *cls;
  void *h;
  int fd;     /* the descriptor polled for it, or -1 */
  int pollix; /* its entry in fds, or -1 */
} witem;

typedef struct wctx {
  int n;
  witem *it;
  struct pollfd *fds;
} wctx;

/* Is item i ready now (by its hook, or by what poll said of its fd)? */
static int item_ready(wctx *w, int i, int polled) {
  witem *it = &w->it[i];
  int fd = -1, r = it->cls->ready(it->h, &fd);
  if (r != 0) return 1; /* ready, or closed meanwhile: a recv will say */
  return polled && it->pollix >= 0 &&
         (w->fds[it->pollix].revents & (POLLIN | POLLHUP | POLLERR));
}

static int any_ready(void *ud) {
  wctx *w = ud;
  int i;
  for (i = 0; i < w->n; i++)
    if (item_ready(w, i, 0)) return 1;
  return 0;
}

/* Stops watching the shared objects among the first n items. */
static void unwatch(wctx *w, int n) {
  int i;
  for (i = 0; i < n; i++)
    if (w->it[i].cls->type != 0) lmp_unwatch(((lmp_handle *)w->it[i].h)->obj);
}

/* wait(list, [timeout]) -> the positions in list of the ready ones, in
 * order. */
static int core_wait(lua_State *L) {
  wctx w;
  int i, nfd = 0, rc, out = 0;
  double deadline;
  luaL_checktype(L, 1, LUA_TTABLE);
  deadline = lmp_opt_deadline(L, 2);
  w.n = (int)luaL_len(L, 1);
  w.it = lua_newuserdatauv(L, sizeof(witem) * (size_t)(w.n + 1), 0);
  w.fds = lua_newuserdatauv(L, sizeof(struct pollfd) * (size_t)(w.n + 1), 0);
  for (i = 0; i < w.n; i++) {
    witem *it = &w.it[i];
    lua_rawgeti(L, 1, i + 1); /* kept alive by the list */
    it->cls = lmp_classof(L, -1);
    it->h = lua_touserdata(L, -1);
    it->fd = -1;
    it->pollix = -1;
    /* No position in these errors: the Lua front adds the caller's. */
    if (it->cls == NULL || it->cls->ready == NULL) {
      lua_pushfstring(L, "bad argument #1 to 'wait' (item %d is not a "
                      "connection, listener, process, sentinel or queue of "
                      "this process)", i + 1);
      return lua_error(L);
    }
    if ((it->cls->type != 0 && ((lmp_handle *)it->h)->obj == NULL) ||
        (it->cls->closed != NULL && it->cls->closed(it->h))) {
      lua_pushfstring(L, "bad argument #1 to 'wait' (item %d is a closed "
                      "%s)", i + 1, it->cls->what);
      return lua_error(L);
    }
    if (it->cls->ready(it->h, &it->fd) < 0) {
      lua_pushfstring(L, "bad argument #1 to 'wait' (item %d is a %s "
                      "that this process cannot read or wait for)", i + 1,
                      it->cls->what);
      return lua_error(L);
    }
    if (it->fd >= 0) {
      it->pollix = nfd;
      w.fds[nfd].fd = it->fd;
      w.fds[nfd].events = POLLIN;
      w.fds[nfd].revents = 0;
      nfd++;
    }
    lua_pop(L, 1);
  }
  for (i = 0; i < w.n; i++) {
    if (w.it[i].cls->type != 0 &&
        lmp_watch(((lmp_handle *)w.it[i].h)->obj) < 0) {
      unwatch(&w, i);
      return luaL_error(L, "too many processes are waiting at once");
    }
  }
  rc = lmp_wait_fds(L, w.fds, nfd, any_ready, &w, deadline);
  unwatch(&w, w.n);
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot wait");
  /* Which are ready: poll the descriptors once more without waiting. */
  if (nfd > 0) poll(w.fds, (nfds_t)nfd, 0);
  lua_newtable(L);
  for (i = 0; i < w.n; i++) {
    if (item_ready(&w, i, nfd > 0)) {
      lua_pushinteger(L, i + 1);
      lua_rawseti(L, -2, ++out);
    }
  }
  return 1;
}

static const luaL_Reg wait_funcs[] = {{"wait", core_wait}, {NULL, NULL}};

const lmp_family lmp_wait_family = {NULL, wait_funcs, NULL};
