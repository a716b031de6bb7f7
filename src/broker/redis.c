/* redis.c -- a Redis connection: hiredis as the protocol (a RESP parser
 * with a queue of requests), driven by luamp's own libuv loop through an
 * adapter of this file, with a deadline on every request.
 *
 * Why an adapter of our own: the libuv adapter of hiredis 0.14 drops the
 * errors its poll reports, so a connect to a broker that is down is never
 * answered; here a poll error is handed to hiredis as the events the poll
 * was watching for, and hiredis finds the socket's error.  hiredis has no
 * timeouts either: each request carries a deadline, and one timer per
 * connection, armed for the oldest request's, ends the connection with
 * "no reply for N s" when it passes.
 *
 * Nothing here runs Lua from a hiredis callback: a callback copies the
 * reply (which hiredis frees when the callback returns) into C memory and
 * marks its request done.  Lua takes replies afterwards, in the order of
 * its requests.  The memory of a connection is C's: the uv handles in it
 * must outlive their uv_close, and a Lua handle may be collected at any
 * time, so the handle only points to it.
 *
 * A fork leaves the parent's connections to the parent: the child closes
 * their sockets (an inherited socket would keep the server's side of the
 * connection alive after the parent is gone) and forgets them, without
 * hiredis, whose freeing would run the parent's callbacks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "broker.h"

#define CONNECTION "luamp.RedisConnection"

/* A reply, copied out of hiredis. */
typedef struct rnode {
  int type; /* REDIS_REPLY_* */
  long long integer;
  char *str;
  size_t len, n;
  struct rnode **el;
} rnode;

/* A request: done once its reply (or the connection's end) is in. */
typedef struct req {
  struct req *next;
  struct rconn *c;
  lua_Integer id;
  int done;     /* 0 pending, 1 a reply, 2 failed */
  int keep;     /* whether Lua takes the reply (else it is dropped) */
  double deadline, timeout;
  rnode *reply;
  char *err;    /* failed: why (malloc'd) */
} req;

typedef struct rconn {
  redisAsyncContext *ac; /* NULL once hiredis let go of it */
  uv_poll_t poll;
  uv_timer_t timer;
  int events;       /* UV_READABLE | UV_WRITABLE watched */
  int nopen;        /* uv handles not closed yet */
  int connecting;   /* until the connect callback */
  int freed;        /* the Lua handle let go of it */
  int forgotten;    /* a forked child's copy */
  int fd;
  lua_Integer next_id;
  req *head, *tail; /* in the order sent, which is the order of replies */
  req *dropped;     /* requests hiredis still holds after the handle went */
  char why[256];    /* why the connection ended, "" while it lives */
  size_t nerr;      /* replies dropped unread that were errors */
  size_t ndeadline; /* pending requests that have a deadline */
  int unsent;       /* commands sent since the last write */
  char lasterr[256];
  struct rconn *prev_live, *next_live;
} rconn;

typedef struct rhandle {
  rconn *c;
} rhandle;

/* ------------------------------------------------------------- replies */

static void rnode_free(rnode *r) {
  size_t i;
  if (r == NULL) return;
  for (i = 0; i < r->n; i++) rnode_free(r->el[i]);
  free(r->el);
  free(r->str);
  free(r);
}

static rnode *rnode_copy(const redisReply *r) {
  rnode *c = calloc(1, sizeof *c);
  size_t i;
  if (c == NULL) return NULL;
  c->type = r->type;
  c->integer = r->integer;
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
      r->type == REDIS_REPLY_ERROR) {
    c->str = malloc(r->len + 1);
    if (c->str == NULL) goto fail;
    memcpy(c->str, r->str, r->len);
    c->str[r->len] = '\0';
    c->len = r->len;
  } else if (r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
    c->el = calloc(r->elements, sizeof *c->el);
    if (c->el == NULL) goto fail;
    for (i = 0; i < r->elements; i++) {
      c->n = i + 1;
      if ((c->el[i] = rnode_copy(r->element[i])) == NULL) goto fail;
    }
  }
  return c;
fail:
  rnode_free(c);
  return NULL;
}

/* Pushes a reply as Lua sees it: a string, an integer, nil, a table of
 * replies (with n), or for a status its text. */
static void rnode_push(lua_State *L, const rnode *r, int depth) {
  size_t i;
  if (depth > 64) luaL_error(L, "reply nested too deep");
  luaL_checkstack(L, 3, "reply");
  switch (r->type) {
    case REDIS_REPLY_STRING: case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      lua_pushlstring(L, r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      lua_pushinteger(L, (lua_Integer)r->integer);
      break;
    case REDIS_REPLY_ARRAY:
      lua_createtable(L, (int)r->n, 1);
      for (i = 0; i < r->n; i++) {
        rnode_push(L, r->el[i], depth + 1);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      lua_pushinteger(L, (lua_Integer)r->n);
      lua_setfield(L, -2, "n");
      break;
    default:
      lua_pushnil(L);
  }
}

static void req_free(req *q) {
  rnode_free(q->reply);
  free(q->err);
  free(q);
}

static void req_fail(req *q, const char *why) {
  q->done = 2;
  q->err = strdup(why);
}

/* ------------------------------------------------------------ the loop */

static uv_loop_t *loop(void) { return lmp_uv_loop(); }

static void arm(rconn *c);
static rconn *live; /* this process's connections, for forks */
static pid_t live_pid;

static void maybe_free(rconn *c) {
  if (c->freed && c->nopen == 0 && c->ac == NULL) {
    req *q;
    while ((q = c->head) != NULL) {
      c->head = q->next;
      req_free(q);
    }
    free(c);
  }
}

static void on_closed(uv_handle_t *h) {
  rconn *c = h->data;
  c->nopen--;
  maybe_free(c);
}

static void unlink_live(rconn *c) {
  if (c->prev_live) c->prev_live->next_live = c->next_live;
  else if (live == c) live = c->next_live;
  if (c->next_live) c->next_live->prev_live = c->prev_live;
  c->prev_live = c->next_live = NULL;
}

/* The adapter: hiredis asks for events, the poll watches for them. */
static void on_poll(uv_poll_t *p, int status, int events) {
  rconn *c = p->data;
  int ev = status < 0 ? c->events : events;
  if (c->ac != NULL && (ev & UV_READABLE)) redisAsyncHandleRead(c->ac);
  if (c->ac != NULL && (ev & UV_WRITABLE)) redisAsyncHandleWrite(c->ac);
}

static void watch(rconn *c, int add, int del) {
  int ev = (c->events | add) & ~del;
  if (ev == c->events || c->nopen == 0) return;
  c->events = ev;
  if (ev) uv_poll_start(&c->poll, ev, on_poll);
  else uv_poll_stop(&c->poll);
}

static void add_read(void *d) { watch(d, UV_READABLE, 0); }
static void del_read(void *d) { watch(d, 0, UV_READABLE); }
static void add_write(void *d) { watch(d, UV_WRITABLE, 0); }
static void del_write(void *d) { watch(d, 0, UV_WRITABLE); }
static void cleanup(void *d) { watch(d, 0, UV_READABLE | UV_WRITABLE); }

/* hiredis has let go of the context (an error, or our redisAsyncFree):
 * every request still pending has been failed by now. */
static void on_disconnect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  if (c->why[0] == '\0')
    snprintf(c->why, sizeof c->why, "%s",
             status == REDIS_OK ? "the connection was closed"
                                : (ac->errstr ? ac->errstr : "lost"));
  c->ac = NULL;
  c->connecting = 0;
  if (c->nopen > 0 && !uv_is_closing((uv_handle_t *)&c->timer))
    uv_timer_stop(&c->timer);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  rconn *c = ac->data;
  c->connecting = 0;
  if (status != REDIS_OK) {
    if (c->why[0] == '\0')
      snprintf(c->why, sizeof c->why, "%s",
               ac->errstr ? ac->errstr : "failed");
    /* hiredis frees the context on return, without on_disconnect (it
     * never connected). */
    c->ac = NULL;
  }
}

static void on_reply(redisAsyncContext *ac, void *r, void *priv) {
  req *q = priv;
  rconn *c = q->c;
  int timed = q->deadline >= 0;
  if (r == NULL) {
    req_fail(q, c->why[0] ? c->why
                          : (ac->errstr && ac->c.err ? ac->errstr : "lost"));
  } else {
    redisReply *rep = r;
    if (!q->keep) {
      if (rep->type == REDIS_REPLY_ERROR) {
        c->nerr++;
        snprintf(c->lasterr, sizeof c->lasterr, "%s", rep->str);
      }
      q->done = 1;
    } else if ((q->reply = rnode_copy(rep)) == NULL) {
      req_fail(q, "out of memory for a reply");
    } else {
      q->done = 1;
    }
  }
  if (!q->keep) {
    /* Nobody takes it: unlink it now. */
    req **pp = &c->head, *prev = NULL;
    while (*pp != NULL && *pp != q) prev = *pp, pp = &(*pp)->next;
    if (*pp == q) {
      *pp = q->next;
      if (c->tail == q) c->tail = prev;
    }
    if (q->done == 2) {
      c->nerr++;
      snprintf(c->lasterr, sizeof c->lasterr, "%s", q->err);
    }
    req_free(q);
  }
  if (timed) {
    c->ndeadline--;
    if (c->ac != NULL && c->nopen > 0) arm(c);
  }
}

/* Ends the connection with the reason why (not inside a hiredis
 * callback): hiredis fails every pending request and lets go. */
static void end_conn(rconn *c, const char *why) {
  if (c->why[0] == '\0') snprintf(c->why, sizeof c->why, "%s", why);
  if (c->ac != NULL) redisAsyncFree(c->ac); /* calls on_disconnect */
  c->ac = NULL;
}

/* The oldest pending request's deadline, or -1. */
static double first_deadline(rconn *c) {
  req *q;
  if (c->ndeadline == 0) return -1;
  for (q = c->head; q != NULL; q = q->next)
    if (!q->done && q->deadline >= 0) return q->deadline;
  return -1;
}

static void on_timer(uv_timer_t *t) {
  rconn *c = t->data;
  req *q;
  double now = lmp_now();
  /* A deadline measures the server, not this process: replies that came
   * while it ran other code are read before any deadline is judged (the
   * loop runs its timers before it polls). */
  if (c->ac != NULL && !c->connecting) redisAsyncHandleRead(c->ac);
  if (c->ac == NULL) return;
  for (q = c->head; q != NULL; q = q->next) {
    if (!q->done && q->deadline >= 0 && q->deadline <= now) {
      char why[64];
      snprintf(why, sizeof why, "no reply for %.3g s", q->timeout);
      end_conn(c, why);
      return;
    }
  }
  arm(c);
}

static void arm(rconn *c) {
  double d = first_deadline(c);
  if (c->nopen == 0 || uv_is_closing((uv_handle_t *)&c->timer)) return;
  if (d < 0) {
    uv_timer_stop(&c->timer);
  } else {
    double left = d - lmp_now();
    uint64_t ms = left <= 0 ? 0 : (uint64_t)(left * 1000) + 1;
    uv_timer_start(&c->timer, on_timer, ms, 0);
  }
}

/* Writes the commands sent since the last write, as far as the socket
 * takes them now: a wait on the loop's descriptor would not see that
 * there is something to write until the loop had run once.  Their
 * deadlines start now: a request is timed from when it goes out, not
 * from when Lua code, busy with other work since, sent it. */
static int flush(rconn *c) {
  req *q;
  int timed = 0;
  if (!c->unsent || c->ac == NULL) return 0;
  c->unsent = 0;
  redisAsyncHandleWrite(c->ac);
  for (q = c->head; q != NULL; q = q->next)
    if (!q->done && q->timeout >= 0 && q->deadline < 0) {
      q->deadline = lmp_now() + q->timeout;
      c->ndeadline++;
      timed = 1;
    }
  if (timed && c->ac != NULL && c->nopen > 0) arm(c);
  return 1;
}

/* Flushes every connection of the process: a command sent on one that
 * nobody waits on (fire and forget) must not wait for the next wait on
 * it.  libuv applies what the writes changed in the poll (writable no
 * longer wanted) when it next runs: until then a descriptor is out of the
 * loop's set, and a wait would not see its reply. */
static void flush_all(void) {
  rconn *c;
  int wrote = 0;
  if (live_pid != lmp_pid) return;
  for (c = live; c != NULL; c = c->next_live) wrote |= flush(c);
  if (wrote) uv_run(loop(), UV_RUN_NOWAIT);
}

/* What loop_wait waits for.  The sleep checks it at each of its own
 * wake-ups too: the loop may run inside the sleep (for SIGURG, which a
 * reply's arrival sends, or in the Pools' service) and read the reply
 * there, after which the loop's descriptor has nothing to say, and the
 * sleep would last until the next timer. */
typedef struct lwait {
  int (*ready)(void *);
  void *ud;
} lwait;

static int lwait_ready(void *p) {
  lwait *w = p;
  flush_all(); /* what the service sent meanwhile */
  return w->ready(w->ud);
}

/* Waits, running the loop, until ready(ud) or the deadline: 1, 0 or a
 * -errno of lmp_wait_fds (-EINTR: Ctrl-C). */
static int loop_wait(lua_State *L, int (*ready)(void *), void *ud,
                     double deadline) {
  uv_loop_t *lp = loop();
  lwait w;
  w.ready = ready;
  w.ud = ud;
  for (;;) {
    struct pollfd p;
    int rc, t;
    double d = deadline;
    flush_all();
    uv_run(lp, UV_RUN_NOWAIT);
    if (ready(ud)) return 1;
    if (deadline >= 0 && lmp_now() >= deadline) return 0;
    uv_update_time(lp);
    t = uv_backend_timeout(lp);
    if (t >= 0 && (d < 0 || lmp_now() + t / 1000.0 < d))
      d = lmp_now() + t / 1000.0;
    p.fd = uv_backend_fd(lp);
    p.events = POLLIN;
    p.revents = 0;
    rc = lmp_wait_fds(L, &p, 1, lwait_ready, &w, d);
    if (rc < 0) return rc;
  }
}

/* ---------------------------------------------------------------- forks */

static void forget_all(void) {
  rconn *c, *next;
  if (live == NULL || live_pid == lmp_pid) return;
  for (c = live; c != NULL; c = next) {
    next = c->next_live;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->forgotten = 1;
    snprintf(c->why, sizeof c->why, "the connection belongs to the process "
             "that made it (pid %d)", (int)live_pid);
    c->ac = NULL;   /* the parent's; its memory stays as it is */
    c->nopen = 0;   /* the child's loop has closed the handles */
    c->prev_live = c->next_live = NULL;
  }
  live = NULL;
  live_pid = lmp_pid;
}

/* ------------------------------------------------------------ Lua side */

static rconn *checkconn(lua_State *L, int idx) {
  rhandle *h = lmp_checkhandle(L, idx);
  if (h->c == NULL) luaL_error(L, "attempt to use a closed connection");
  forget_all();
  return h->c;
}

static void close_conn(void *hp) {
  rhandle *h = hp;
  rconn *c = h->c;
  if (c == NULL) return;
  h->c = NULL;
  forget_all();
  c->freed = 1;
  if (c->forgotten) return; /* a fork's copy: the parent's memory */
  unlink_live(c);
  if (c->ac != NULL) end_conn(c, "the connection was closed");
  if (c->nopen > 0) {
    uv_close((uv_handle_t *)&c->poll, on_closed);
    uv_close((uv_handle_t *)&c->timer, on_closed);
  }
  maybe_free(c);
}

static int conn_closed(void *hp) { return ((rhandle *)hp)->c == NULL; }

/* For mp.wait: ready when a reply waits to be taken; the loop's
 * descriptor is polled meanwhile. */
static int conn_ready(void *hp, int *fd) {
  rhandle *h = hp;
  req *q;
  if (h->c == NULL) return -1;
  flush_all();
  *fd = uv_backend_fd(loop());
  for (q = h->c->head; q != NULL; q = q->next)
    if (q->done) return 1;
  return h->c->ac == NULL;
}

typedef struct connwait {
  rconn *c;
} connwait;

static int connected(void *ud) {
  rconn *c = ud;
  return !c->connecting;
}

static void tune_socket(int fd, double timeout) {
  int on = 1, idle = 5, intvl = 2, cnt = 3;
  unsigned ms = timeout > 0 ? (unsigned)(timeout * 1000) : 0;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  if (ms > 0)
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof ms);
}

/* Resolves host to a numeric address, waiting in the loop (the resolver
 * runs on libuv's threads).  Pushes nothing; raises on failure. */
typedef struct resolve {
  uv_getaddrinfo_t r;
  int done, status;
  char ip[INET6_ADDRSTRLEN];
} resolve;

static void on_resolved(uv_getaddrinfo_t *r, int status, struct addrinfo *ai) {
  resolve *rs = r->data;
  rs->status = status;
  if (status == 0 && ai != NULL) {
    if (ai->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, rs->ip, sizeof rs->ip);
    else
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, rs->ip, sizeof rs->ip);
  } else if (status == 0) {
    rs->status = UV_EAI_NONAME;
  }
  uv_freeaddrinfo(ai);
  rs->done = 1;
}

static int resolved(void *ud) { return ((resolve *)ud)->done; }

/* Raises "cannot connect to <where>: <why>", why on the top. */
static int cannot_connect(lua_State *L, const char *path, const char *host,
                          lua_Integer port) {
  if (path != NULL)
    return luaL_error(L, "cannot connect to %s: %s", path,
                      lua_tostring(L, -1));
  return luaL_error(L, "cannot connect to %s:%d: %s", host, (int)port,
                    lua_tostring(L, -1));
}

/* redis_connect{host=, port=, path=, timeout=} -> a connection.  Raises
 * "cannot connect to <where>: <why>" (a string) on failure. */
static int redis_connect(lua_State *L) {
  const char *host, *path;
  lua_Integer port;
  double timeout, deadline;
  redisAsyncContext *ac;
  rconn *c;
  rhandle *h;
  int rc;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "host");
  lua_getfield(L, 1, "port");
  lua_getfield(L, 1, "path");
  lua_getfield(L, 1, "timeout");
  host = luaL_optstring(L, 2, "127.0.0.1");
  port = luaL_optinteger(L, 3, 6379);
  path = luaL_optstring(L, 4, NULL);
  timeout = luaL_optnumber(L, 5, 10);
  deadline = lmp_now() + timeout;
  forget_all();
  h = lmp_newhandle(L, lmp_redis_family.classes[0], sizeof *h, 0); /* 6 */
  if (path != NULL) {
    ac = redisAsyncConnectUnix(path);
  } else {
    struct in6_addr a6;
    struct in_addr a4;
    resolve *rs = NULL;
    if (inet_pton(AF_INET, host, &a4) != 1 &&
        inet_pton(AF_INET6, host, &a6) != 1) {
      rs = lua_newuserdatauv(L, sizeof *rs, 0); /* 7, until resolved */
      memset(rs, 0, sizeof *rs);
      rs->r.data = rs;
      rc = uv_getaddrinfo(loop(), &rs->r, on_resolved, host, NULL, NULL);
      if (rc == 0) {
        /* The resolver writes into rs: wait for it even past the
         * deadline, unless it is interrupted (then it is leaked: the
         * userdata must not be collected under it). */
        rc = loop_wait(L, resolved, rs, -1);
        if (rc < 0) {
          luaL_ref(L, LUA_REGISTRYINDEX);
          return lmp_raise_errno(L, rc, "cannot connect");
        }
        rc = rs->status;
      }
      if (rc != 0)
        return luaL_error(L, "cannot connect to %s:%d: %s", host, (int)port,
                          uv_strerror(rc));
      host = lua_pushstring(L, rs->ip);
    }
    ac = redisAsyncConnect(host, (int)port);
  }
  if (ac == NULL) return luaL_error(L, "cannot connect: out of memory");
  if (ac->err) {
    lua_pushstring(L, ac->errstr);
    redisAsyncFree(ac);
    return cannot_connect(L, path, host, port);
  }
  c = calloc(1, sizeof *c);
  if (c == NULL) {
    redisAsyncFree(ac);
    return luaL_error(L, "cannot connect: out of memory");
  }
  c->ac = ac;
  c->fd = ac->c.fd;
  /* Not into a program a child runs (hiredis makes it without). */
  fcntl(c->fd, F_SETFD, fcntl(c->fd, F_GETFD) | FD_CLOEXEC);
  /* What comes on it wakes this process wherever it waits (a queue's get,
   * mp.sleep), as the runtime's SIGURG does: the wait then runs the loop,
   * which reads it, and the pools' work (a broker pool's callbacks). */
  fcntl(c->fd, F_SETOWN, getpid());
  fcntl(c->fd, F_SETSIG, SIGURG);
  fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_ASYNC);
  c->connecting = 1;
  c->next_id = 1;
  ac->data = c;
  ac->ev.data = c;
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  ac->ev.cleanup = cleanup;
  uv_poll_init(loop(), &c->poll, c->fd);
  uv_timer_init(loop(), &c->timer);
  c->poll.data = c->timer.data = c;
  uv_unref((uv_handle_t *)&c->timer);
  c->nopen = 2;
  if (path == NULL) tune_socket(c->fd, timeout);
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  h->c = c;
  c->next_live = live;
  if (live) live->prev_live = c;
  live = c;
  live_pid = lmp_pid;
  /* hiredis watches for writable until the connect completes. */
  rc = loop_wait(L, connected, c, deadline);
  if (rc < 0) {
    close_conn(h);
    return lmp_raise_errno(L, rc, "cannot connect");
  }
  if (c->connecting || c->ac == NULL || c->why[0]) {
    const char *why = c->connecting ? "no answer in time" : c->why;
    lua_pushstring(L, why);
    close_conn(h);
    return cannot_connect(L, path, host, port);
  }
  lua_pushvalue(L, 6);
  return 1;
}

#define MAXARGS 4096

/* c:send(argv, [timeout], [keep = true]) -> the request's id.  argv: a
 * table of strings and numbers; timeout: seconds for its reply (nil: no
 * limit, for a blocking read give its block time plus a margin).  A
 * request not kept has its reply dropped; its error counted (c:errors). */
static int conn_send(lua_State *L) {
  rconn *c = checkconn(L, 1);
  const char *argv[64], **av = argv;
  size_t lens[64], *lv = lens;
  int n, i, keep;
  double timeout;
  req *q;
  luaL_checktype(L, 2, LUA_TTABLE);
  timeout = luaL_optnumber(L, 3, -1);
  keep = lua_isnoneornil(L, 4) || lua_toboolean(L, 4);
  if (c->ac == NULL) {
    lua_pushstring(L, c->why);
    return lua_error(L);
  }
  n = (int)luaL_len(L, 2);
  if (n < 1 || n > MAXARGS) return luaL_argerror(L, 2, "1 to 4096 words");
  if (n > 64) {
    av = lua_newuserdatauv(L, sizeof(char *) * (size_t)n, 0);
    lv = lua_newuserdatauv(L, sizeof(size_t) * (size_t)n, 0);
  }
  if (!lua_checkstack(L, n + 2)) return luaL_error(L, "too many words");
  for (i = 0; i < n; i++) {
    int t = lua_rawgeti(L, 2, i + 1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      return luaL_error(L, "bad argument #2 to 'send' (word %d is a %s)",
                        i + 1, lua_typename(L, t));
    av[i] = lua_tolstring(L, -1, &lv[i]); /* kept on the stack */
  }
  q = calloc(1, sizeof *q);
  if (q == NULL) return luaL_error(L, "out of memory");
  q->c = c;
  q->id = c->next_id++;
  q->keep = keep;
  q->deadline = -1; /* set when it is written (flush) */
  q->timeout = timeout;
  if (redisAsyncCommandArgv(c->ac, on_reply, q, n, av, lv) != REDIS_OK) {
    free(q);
    return luaL_error(L, "%s", c->why[0] ? c->why : "cannot send");
  }
  if (c->tail) c->tail->next = q;
  else c->head = q;
  c->tail = q;
  c->unsent = 1;
  lua_pushinteger(L, q->id);
  return 1;
}

static req *findreq(rconn *c, lua_Integer id, req **prev) {
  req *q, *p = NULL;
  for (q = c->head; q != NULL; p = q, q = q->next)
    if (q->id == id) break;
  if (prev) *prev = p;
  return q;
}

/* Pushes the outcome of a done request (true, value or false, error) and
 * frees it. */
static int take(lua_State *L, rconn *c, req *q, req *prev) {
  if (prev) prev->next = q->next;
  else c->head = q->next;
  if (c->tail == q) c->tail = prev;
  q->next = c->dropped; /* freed below, after the push (which may raise) */
  c->dropped = q;
  if (q->done == 2) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, q->err);
  } else if (q->reply->type == REDIS_REPLY_ERROR) {
    lua_pushboolean(L, 0);
    lua_pushlstring(L, q->reply->str, q->reply->len);
  } else {
    lua_pushboolean(L, 1);
    rnode_push(L, q->reply, 0);
  }
  c->dropped = q->next;
  req_free(q);
  return 2;
}

typedef struct reqwait {
  rconn *c;
  lua_Integer id;
} reqwait;

static int req_done(void *ud) {
  reqwait *w = ud;
  req *q = findreq(w->c, w->id, NULL);
  return q == NULL || q->done;
}

/* c:take(id) -> nil while pending; else true, value or false, message */
static int conn_take(lua_State *L) {
  rconn *c = checkconn(L, 1);
  lua_Integer id = luaL_checkinteger(L, 2);
  req *prev, *q = findreq(c, id, &prev);
  if (q == NULL) return luaL_error(L, "no request %d", (int)id);
  if (!q->done) return 0;
  return take(L, c, q, prev);
}

/* c:wait(id, [timeout]) -> as take, waiting for it (nil at the timeout) */
static int conn_wait(lua_State *L) {
  rconn *c = checkconn(L, 1);
  reqwait w;
  req *prev, *q;
  double deadline = lmp_opt_deadline(L, 3);
  int rc;
  w.c = c;
  w.id = luaL_checkinteger(L, 2);
  if (findreq(c, w.id, NULL) == NULL)
    return luaL_error(L, "no request %d", (int)w.id);
  rc = loop_wait(L, req_done, &w, deadline);
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot wait");
  q = findreq(c, w.id, &prev);
  if (q == NULL || !q->done) return 0;
  return take(L, c, q, prev);
}

static int all_done(void *ud) {
  rconn *c = ud;
  req *q;
  if (c->ac == NULL) return 1;
  for (q = c->head; q != NULL; q = q->next)
    if (!q->done) return 0;
  return 1;
}

/* c:settle(timeout) -> whether every request sent on c has its reply:
 * writes what was sent and waits for the replies, running no Lua (a
 * finalizer's last words: a pool dropped without close). */
static int conn_settle(lua_State *L) {
  rconn *c = checkconn(L, 1);
  int rc = loop_wait(NULL, all_done, c, lmp_now() + luaL_checknumber(L, 2));
  lua_pushboolean(L, rc == 1);
  return 1;
}

/* c:flush(): writes what every connection was sent, now. */
static int conn_flush(lua_State *L) {
  checkconn(L, 1);
  flush_all();
  return 0;
}

/* c:dispatch(): runs the loop once, without waiting, so replies that came
 * are in. */
static int conn_dispatch(lua_State *L) {
  checkconn(L, 1);
  uv_run(loop(), UV_RUN_NOWAIT);
  return 0;
}

/* c:alive() -> false, why once the connection has ended */
static int conn_alive(lua_State *L) {
  rconn *c = checkconn(L, 1);
  if (c->ac != NULL) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushboolean(L, 0);
  lua_pushstring(L, c->why);
  return 2;
}

/* c:errors() -> how many replies dropped unread were errors, the last */
static int conn_errors(lua_State *L) {
  rconn *c = checkconn(L, 1);
  lua_pushinteger(L, (lua_Integer)c->nerr);
  if (c->nerr == 0) return 1;
  lua_pushstring(L, c->lasterr);
  return 2;
}

/* c:pending() -> requests whose replies have not come */
static int conn_pending(lua_State *L) {
  rconn *c = checkconn(L, 1);
  lua_Integer n = 0;
  req *q;
  for (q = c->head; q != NULL; q = q->next) n += !q->done;
  lua_pushinteger(L, n);
  return 1;
}

static int conn_fd(lua_State *L) {
  rconn *c = checkconn(L, 1);
  lua_pushinteger(L, c->fd);
  return 1;
}

static const luaL_Reg conn_meth[] = {
  {"send", conn_send}, {"take", conn_take}, {"wait", conn_wait},
  {"dispatch", conn_dispatch}, {"flush", conn_flush},
  {"settle", conn_settle},
  {"alive", conn_alive},
  {"errors", conn_errors}, {"pending", conn_pending}, {"fd", conn_fd},
  {NULL, NULL}
};

static const lmp_class conn_class = {
  .name = CONNECTION, .what = "connection", .size = sizeof(rhandle),
  .meth = conn_meth, .close = close_conn, .closed = conn_closed,
  .ready = conn_ready,
};

static const lmp_class *const redis_classes[] = {&conn_class, NULL};

static const luaL_Reg redis_funcs[] = {
  {"redis_connect", redis_connect}, {NULL, NULL}
};

static void redis_open(void) { lmp_on_fork_child(forget_all); }

const lmp_family lmp_redis_family = {redis_classes, redis_funcs,
                                     redis_open};
