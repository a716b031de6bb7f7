/* listener.c -- Listener and Client: Connections between processes that
 * share nothing, over a Unix socket (a path or an abstract name) or TCP.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "types.h"

#define LISTENER "luamp.Listener"

typedef struct listener {
  int fd;
  char *path; /* the socket file to remove on close, or NULL */
  pid_t owner; /* the process that made it: only it removes the file */
  struct listener *next, *prev; /* in `files`, while it has a path */
} listener;

/* The listeners with a socket file, whose files a process that leaves
 * without closing them (os.exit, a child's end) removes too, as Python's
 * do. */
static listener *files;

static void remove_files(void) {
  listener *l;
  for (l = files; l != NULL; l = l->next)
    if (l->owner == getpid()) unlink(l->path);
}

static void add_file(listener *l) {
  lmp_on_exit(remove_files);
  l->prev = NULL;
  l->next = files;
  if (files != NULL) files->prev = l;
  files = l;
}

/* User values of a Listener: 1 its address, 2 last_accepted, 3 its
 * authkey (a string, or nil). */

static const lmp_class listener_class;

static void listener_free(void *h) {
  listener *l = h;
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (l->path == NULL) return;
  if (l->owner == lmp_pid) unlink(l->path);
  if (l->prev != NULL) l->prev->next = l->next;
  else files = l->next;
  if (l->next != NULL) l->next->prev = l->prev;
  free(l->path);
  l->path = NULL;
}

/* -------------------------------------------------------- authentication */

/*
 * With an authkey, each side of a new connection proves it knows the key
 * before anything else crosses, as Python's multiprocessing.connection
 * does: the side that accepted sends a challenge ("LMPA" and 32 random
 * bytes), the other answers with HMAC-SHA-256(key, challenge), framed as
 * a message is (a length of 32 first), and hears one byte back (1:
 * welcome, 0: failure); then the roles swap.  The key itself never
 * crosses.  A wrong answer raises AuthenticationError on both sides, and
 * the connection is closed.  A peer with no key sends a message where the
 * answer should be: its length is not the answer's (or its bytes are
 * not), so the challenger fails at once rather than wait for 32 bytes.
 */

#define CHALLENGE 32
static const unsigned char AUTH_MAGIC[4] = {'L', 'M', 'P', 'A'};
static const unsigned char ANSWER_LEN[4] = {0, 0, 0, LMP_SHA256_SIZE};

/* Fills buf with n random bytes for a challenge or a nonce: 0, or -1.
 * A fuzzing build makes them fixed, so that a stored transcript of a
 * peer's side can answer them. */
static int nonce(void *buf, size_t n) {
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  memset(buf, 'z', n);
  return 0;
#else
  return getrandom(buf, n, 0) == (ssize_t)n ? 0 : -1;
#endif
}

/* Sends (out) or receives exactly n bytes by the deadline: 0, -EPIPE at
 * the end of the stream, -EAGAIN at the deadline, -EINTR, -errno. */
static int xfer(lua_State *L, int fd, void *buf, size_t n, int out,
                double deadline) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = out ? send(fd, p, n, MSG_NOSIGNAL) : read(fd, p, n);
    int rc;
    if (r > 0) {
      p += r;
      n -= (size_t)r;
      continue;
    }
    if (r == 0) return -EPIPE;
    if (errno == EINTR) continue;
    if (errno == EPIPE || errno == ECONNRESET) return -EPIPE;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    rc = lmp_wait_fd(L, fd, out ? POLLOUT : POLLIN, deadline);
    if (rc == 0) return -EAGAIN;
    if (rc < 0) return rc;
  }
  return 0;
}

/* Challenges the peer: 0, or -EACCES when its answer is wrong. */
static int challenge(lua_State *L, int fd, const char *key, size_t klen,
                     double deadline) {
  unsigned char msg[4 + CHALLENGE], want[LMP_SHA256_SIZE];
  unsigned char got[4 + LMP_SHA256_SIZE], ok = 0, diff = 0;
  int rc, i;
  memcpy(msg, AUTH_MAGIC, 4);
  if (nonce(msg + 4, CHALLENGE) < 0) return -EIO;
  if ((rc = xfer(L, fd, msg, sizeof msg, 1, deadline)) < 0) return rc;
  if ((rc = xfer(L, fd, got, 4, 0, deadline)) < 0) return rc;
  if (memcmp(got, ANSWER_LEN, 4) == 0) {
    if ((rc = xfer(L, fd, got + 4, LMP_SHA256_SIZE, 0, deadline)) < 0)
      return rc;
    lmp_hmac_sha256(key, klen, msg + 4, CHALLENGE, want);
    for (i = 0; i < LMP_SHA256_SIZE; i++) diff |= want[i] ^ got[4 + i];
    ok = diff == 0;
  }
  if ((rc = xfer(L, fd, &ok, 1, 1, deadline)) < 0 && ok) return rc;
  return ok ? 0 : -EACCES;
}

/* Answers the peer's challenge: 0, -EPERM when it rejects the answer,
 * -EPROTO when what came is no challenge. */
static int answer(lua_State *L, int fd, const char *key, size_t klen,
                  double deadline) {
  unsigned char msg[4 + CHALLENGE], dig[4 + LMP_SHA256_SIZE], ok = 0;
  int rc;
  /* The magic first: a peer without a key sends its kin hello, shorter
   * than a challenge. */
  if ((rc = xfer(L, fd, msg, 4, 0, deadline)) < 0) return rc;
  if (memcmp(msg, AUTH_MAGIC, 4) != 0) return -EPROTO;
  if ((rc = xfer(L, fd, msg + 4, CHALLENGE, 0, deadline)) < 0) return rc;
  memcpy(dig, ANSWER_LEN, 4);
  lmp_hmac_sha256(key, klen, msg + 4, CHALLENGE, dig + 4);
  if ((rc = xfer(L, fd, dig, sizeof dig, 1, deadline)) < 0) return rc;
  if ((rc = xfer(L, fd, &ok, 1, 0, deadline)) < 0) return rc;
  return ok == 1 ? 0 : -EPERM;
}

/* Runs both rounds on fd (server: the side that accepted); on failure
 * closes fd and raises. */
static void authenticate(lua_State *L, int fd, const char *key, size_t klen,
                         int server, double deadline) {
  int rc = server ? challenge(L, fd, key, klen, deadline)
                  : answer(L, fd, key, klen, deadline);
  if (rc == 0)
    rc = server ? answer(L, fd, key, klen, deadline)
                : challenge(L, fd, key, klen, deadline);
  if (rc == 0) return;
  close(fd);
  switch (rc) {
    case -EACCES:
      lmp_throw(L, "AuthenticationError", "digest received was wrong");
      break;
    case -EPERM:
      lmp_throw(L, "AuthenticationError", "digest sent was rejected");
      break;
    case -EPROTO:
      lmp_throw(L, "AuthenticationError", "the peer sent no challenge");
      break;
    case -EPIPE:
      lmp_throw(L, "AuthenticationError",
                "the connection closed during authentication");
      break;
    case -EAGAIN:
      lmp_throw(L, "TimeoutError", "authentication did not end in time");
      break;
    default:
      lmp_raise_errno(L, rc, "cannot authenticate");
  }
}

/*
 * Kin: whether an authenticated peer is a process of this family, which
 * may then send anything a Pipe carries, shared objects included.  Each side sends a
 * nonce, then proves that it knows the family's secret (the arena's key)
 * with an HMAC of the other's nonce, labelled with its role so that a
 * proof cannot be reflected; each checks the other's proof.  The side
 * that connected then makes the channel that both ends share (the record
 * of messages in flight) and sends its offset.  A peer of another family
 * (or of none) fails the proof, and the connection carries what may
 * leave a family.
 */
#define NONCE 16
static const unsigned char KIN_MAGIC[4] = {'L', 'M', 'P', 'K'};

static void kin_proof(const unsigned char *nonce, int server,
                      unsigned char out[LMP_SHA256_SIZE]) {
  unsigned char msg[1 + NONCE];
  msg[0] = server ? 's' : 'c';
  memcpy(msg + 1, nonce, NONCE);
  lmp_hmac_sha256(lmp_arena_key(), 16, msg, sizeof msg, out);
}

/* Runs the exchange on fd, after an authkey's handshake (trusted); pushes
 * the Connection, kin or not.  Without an authkey there is no exchange
 * (a Client returns before its Listener accepts, as Python's does, so
 * both may be in one process) and the peer is taken to be outside.  On
 * failure closes fd and raises. */
static void kin_push(lua_State *L, int fd, int trusted, int server,
                     double deadline) {
  unsigned char mine[4 + NONCE], theirs[4 + NONCE];
  unsigned char proof[LMP_SHA256_SIZE], got[LMP_SHA256_SIZE], diff = 0;
  uint64_t off = 0;
  int rc, i, kin;
  if (!trusted) {
    lmp_conn_push(L, fd, 0, 0);
    return;
  }
  memcpy(mine, KIN_MAGIC, 4);
  if (nonce(mine + 4, NONCE) < 0) {
    close(fd);
    luaL_error(L, "cannot connect: no random bytes");
  }
  if ((rc = xfer(L, fd, mine, sizeof mine, 1, deadline)) < 0 ||
      (rc = xfer(L, fd, theirs, 4, 0, deadline)) < 0)
    goto fail;
  if (memcmp(theirs, KIN_MAGIC, 4) != 0) {
    rc = -EPROTO;
    goto fail;
  }
  if ((rc = xfer(L, fd, theirs + 4, NONCE, 0, deadline)) < 0) goto fail;
  kin_proof(theirs + 4, server, proof);
  if ((rc = xfer(L, fd, proof, sizeof proof, 1, deadline)) < 0 ||
      (rc = xfer(L, fd, got, sizeof got, 0, deadline)) < 0)
    goto fail;
  kin_proof(mine + 4, !server, proof);
  for (i = 0; i < LMP_SHA256_SIZE; i++) diff |= proof[i] ^ got[i];
  kin = diff == 0;
  if (!server) {
    if (kin && (off = lmp_channel_new()) == 0) kin = 0;
    lmp_conn_push(L, fd, trusted, kin ? off : 0); /* owns fd from here */
    rc = xfer(L, fd, &off, sizeof off, 1, deadline);
    if (rc < 0) luaL_error(L, "cannot connect: %s", strerror(-rc));
    return;
  }
  if ((rc = xfer(L, fd, &off, sizeof off, 0, deadline)) < 0) goto fail;
  if (!kin || !lmp_channel_check(off)) off = 0;
  lmp_conn_push(L, fd, trusted, off);
  return;
fail:
  close(fd);
  if (rc == -EAGAIN) lmp_throw(L, "TimeoutError", "the connection's "
                               "handshake did not end in time");
  if (rc == -EPROTO) luaL_error(L, "the peer is not a luamp connection");
  if (rc == -EPIPE) lmp_throw(L, "EOFError", "the connection closed during "
                              "its handshake");
  lmp_raise_errno(L, rc, "cannot connect");
}

/* Raises Lua's argument error for a key of the options table at idx that
 * is not one of `known` (NULL-ended), naming the options there are. */
static void checkopts(lua_State *L, int idx, const char *const known[]) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (; known[i] != NULL; i++)
        if (strcmp(lua_tostring(L, -1), known[i]) == 0) break;
    if (lua_type(L, -1) != LUA_TSTRING || known[i] == NULL) {
      int n = 1;
      lua_pushfstring(L, "unknown option '%s' (the options are ",
                      luaL_tolstring(L, -1, NULL));
      for (i = 0; known[i] != NULL; i++, n += 2) {
        lua_pushstring(L, i == 0 ? "" : known[i + 1] ? ", " : " and ");
        lua_pushstring(L, known[i]);
      }
      lua_pushliteral(L, ")");
      lua_concat(L, n + 1);
      luaL_argerror(L, idx, lua_tostring(L, -1));
    }
  }
}

/* The authkey in the options table at idx (a string), or NULL. */
static const char *optkey(lua_State *L, int idx, size_t *klen) {
  const char *k = NULL;
  if (lua_getfield(L, idx, "authkey") != LUA_TNIL) {
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      luaL_argerror(L, idx, "authkey must be a non-empty string");
    k = lua_tolstring(L, -1, klen);
  }
  lua_pop(L, 1); /* the options table keeps it */
  return k;
}

static int listener_closed(void *h) { return ((listener *)h)->fd < 0; }

/* ------------------------------------------------------------ addresses */

typedef struct addr {
  struct sockaddr_storage ss;
  socklen_t len;
} addr;

/* Pushes the address a as Lua gives it back: a path, "\0name", or
 * "host:port" ("[host]:port" for IPv6); nil for an unnamed socket. */
static void pushaddr(lua_State *L, const struct sockaddr *sa, socklen_t len) {
  char host[INET6_ADDRSTRLEN], port[8];
  if (sa->sa_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
    size_t n = len > offsetof(struct sockaddr_un, sun_path)
                 ? len - offsetof(struct sockaddr_un, sun_path)
                 : 0;
    if (n == 0) {
      lua_pushnil(L);
    } else if (un->sun_path[0] == '\0') {
      lua_pushlstring(L, un->sun_path, n);
    } else {
      lua_pushstring(L, un->sun_path);
    }
    return;
  }
  if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    lua_pushnil(L);
    return;
  }
  lua_pushfstring(L, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host,
                  port);
}

/* Reads the address at idx into *a: a string with no ':' outside brackets
 * or that starts with "\0" or has a '/' is a Unix socket; "host:port",
 * "[v6]:port" or {host, port} is TCP, an empty host being every IPv4
 * address for a listener (`passive`) and this host for a client, as in
 * Python.
 * Raises the argument error of `fname` when it is none of these. */
static void checkaddr(lua_State *L, int idx, addr *a, int passive) {
  char host[256], port[16];
  const char *s;
  size_t n;
  struct addrinfo hints, *res;
  int rc;
  memset(a, 0, sizeof *a);
  if (lua_istable(L, idx)) {
    size_t hn;
    const char *h;
    lua_rawgeti(L, idx, 1);
    lua_rawgeti(L, idx, 2);
    h = lua_tolstring(L, -2, &hn);
    if (!h || hn >= sizeof host || !lua_isinteger(L, -1) ||
        lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > 65535)
      luaL_argerror(L, idx, "{host, port} with a port from 0 to 65535 "
                            "expected");
    memcpy(host, h, hn + 1);
    snprintf(port, sizeof port, "%d", (int)lua_tointeger(L, -1));
    lua_pop(L, 2);
  } else {
    const char *colon;
    if (lua_type(L, idx) != LUA_TSTRING)
      luaL_typeerror(L, idx, "string or {host, port}");
    s = lua_tolstring(L, idx, &n);
    colon = strrchr(s, ':');
    if (n == 0) luaL_argerror(L, idx, "empty address");
    if (s[0] == '\0' || strchr(s, '/') || !colon) {
      struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
      if (n >= sizeof un->sun_path) luaL_argerror(L, idx, "path too long");
      un->sun_family = AF_UNIX;
      memcpy(un->sun_path, s, n);
      a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                           (s[0] != '\0'));
      return;
    }
    if (s[0] == '[' && colon > s && colon[-1] == ']') {
      n = (size_t)(colon - s - 2);
      s++;
    } else {
      n = (size_t)(colon - s);
    }
    if (n >= sizeof host || strlen(colon + 1) >= sizeof port ||
        colon[1] == '\0')
      luaL_argerror(L, idx, "\"host:port\" expected");
    memcpy(host, s, n);
    host[n] = '\0';
    strcpy(port, colon + 1);
    if (strspn(port, "0123456789") != strlen(port) || atol(port) > 65535)
      luaL_argerror(L, idx, "\"host:port\" with a port from 0 to 65535 "
                            "expected");
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_family = host[0] ? AF_UNSPEC : AF_INET; /* as Python's '' */
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
  if (rc != 0) {
    lua_pushfstring(L, "cannot resolve '%s': %s", host, gai_strerror(rc));
    luaL_argerror(L, idx, lua_tostring(L, -1));
  }
  memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
  a->len = res->ai_addrlen;
  freeaddrinfo(res);
}

/* ------------------------------------------------------------- Listener */

/* An address of this process's own for a Listener given none, as
 * Python's arbitrary_address: a Unix socket in $TMPDIR (or /tmp). */
static void own_address(lua_State *L, int idx) {
  static unsigned n;
  const char *dir = getenv("TMPDIR");
  unsigned r = 0;
  if (dir == NULL || dir[0] == '\0' ||
      strlen(dir) > sizeof(((struct sockaddr_un *)0)->sun_path) - 40)
    dir = "/tmp";
  if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
    r = (unsigned)lmp_now();
  lua_pushfstring(L, "%s/luamp-listener-%d-%d-", dir, (int)lmp_pid,
                  (int)++n);
  lua_pushfstring(L, "%I", (lua_Integer)r);
  lua_concat(L, 2);
  lua_replace(L, idx);
}

/* Listener([address], [{backlog = n, authkey = k}]) */
static int listener_new(lua_State *L) {
  addr a;
  listener *l;
  int backlog = SOMAXCONN, one = 1;
  const char *key = NULL;
  size_t klen = 0;
  struct sockaddr_storage got;
  socklen_t glen = sizeof got;
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 2);
    own_address(L, 1);
  }
  checkaddr(L, 1, &a, 1);
  if (!lua_isnoneornil(L, 2)) {
    static const char *const known[] = {"backlog", "authkey", NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    checkopts(L, 2, known);
    if (lua_getfield(L, 2, "backlog") != LUA_TNIL) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
          lua_tointeger(L, -1) > 65535)
        return luaL_argerror(L, 2, "backlog must be an integer from 1 to "
                                   "65535");
      backlog = (int)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);
    key = optkey(L, 2, &klen);
  }
  l = lmp_newhandle(L, &listener_class, sizeof *l, 3);
  l->fd = -1;
  l->path = NULL;
  if (key != NULL) {
    lua_pushlstring(L, key, klen);
    lua_setiuservalue(L, -2, 3);
  }
  l->fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                 0);
  if (l->fd < 0)
    return luaL_error(L, "cannot make a socket: %s", strerror(errno));
  if (a.ss.ss_family != AF_UNIX)
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(l->fd, (struct sockaddr *)&a.ss, a.len) < 0 ||
      listen(l->fd, backlog) < 0) {
    int e = errno;
    listener_free(l);
    lua_pushvalue(L, 1);
    return luaL_error(L, "cannot listen on %s: %s",
                      lua_istable(L, 1) ? "that address"
                                        : luaL_tolstring(L, 1, NULL),
                      strerror(e));
  }
  if (a.ss.ss_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)&a.ss;
    l->owner = lmp_pid;
    if (un->sun_path[0] != '\0') {
      if ((l->path = strdup(un->sun_path)) == NULL) {
        unlink(un->sun_path);
        return lmp_nomem(L, 0);
      }
      add_file(l);
    }
    pushaddr(L, (struct sockaddr *)&a.ss, a.len);
  } else {
    getsockname(l->fd, (struct sockaddr *)&got, &glen);
    pushaddr(L, (struct sockaddr *)&got, glen);
  }
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static listener *checklistener(lua_State *L) {
  listener *l = lmp_checkhandle(L, 1);
  if (l->fd < 0) luaL_error(L, "attempt to use a closed listener");
  return l;
}

/* accept([timeout]) -> a Connection; TimeoutError when none came. */
static int listener_accept(lua_State *L) {
  listener *l = checklistener(L);
  double deadline = lmp_opt_deadline(L, 2);
  struct sockaddr_storage peer;
  socklen_t plen;
  int fd, rc, trusted;
  for (;;) {
    plen = sizeof peer;
    fd = accept4(l->fd, (struct sockaddr *)&peer, &plen,
                 SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) break;
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return luaL_error(L, "cannot accept: %s", strerror(errno));
    rc = lmp_wait_fd(L, l->fd, POLLIN, deadline);
    if (rc == 0) return lmp_throw(L, "TimeoutError", "no connection came");
    if (rc < 0) return lmp_raise_errno(L, rc, "cannot accept");
    if (l->fd < 0) luaL_error(L, "attempt to use a closed listener");
  }
  trusted = lua_getiuservalue(L, 1, 3) == LUA_TSTRING;
  if (trusted) { /* the key is kept on the stack */
    size_t klen;
    const char *key = lua_tolstring(L, -1, &klen);
    authenticate(L, fd, key, klen, 1, deadline);
  }
  lua_pop(L, 1);
  kin_push(L, fd, trusted, 1, deadline);
  pushaddr(L, (struct sockaddr *)&peer, plen);
  lua_setiuservalue(L, 1, 2);
  return 1;
}

static int listener_close(lua_State *L) {
  listener_free(lmp_checkhandle(L, 1));
  return 0;
}

static int listener_address(lua_State *L) {
  lmp_checkhandle(L, 1);
  lua_getiuservalue(L, 1, 1);
  return 1;
}

static int listener_last(lua_State *L) {
  lmp_checkhandle(L, 1);
  lua_getiuservalue(L, 1, 2);
  return 1;
}

/* For mp.wait: ready when accept would not block. */
static int listener_ready(void *h, int *fd) {
  listener *l = h;
  if (l->fd < 0) return -1;
  *fd = l->fd;
  return lmp_fd_ready(l->fd, POLLIN) > 0;
}

static int listener_tostring(lua_State *L) {
  lua_getiuservalue(L, 1, 1);
  lua_pushfstring(L, LISTENER " (%s)",
                  lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
  return 1;
}

/* --------------------------------------------------------------- Client */

/* Connects fd to a by the deadline: 0, or -errno (-EAGAIN at the
 * deadline, -EINTR). */
static int connect_by(lua_State *L, int fd, const addr *a, double deadline) {
  int rc, err;
  socklen_t elen = sizeof err;
  for (;;) {
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EINPROGRESS) return -errno;
    rc = lmp_wait_fd(L, fd, POLLOUT, deadline);
    if (rc == 0) return -EAGAIN;
    if (rc < 0) return rc;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0) return -errno;
    return -err;
  }
}

/* Client(address, [{timeout = t, authkey = k}]) -> a Connection */
static int client_new(lua_State *L) {
  addr a;
  double deadline = -1;
  const char *key = NULL;
  size_t klen = 0;
  int fd, rc;
  checkaddr(L, 1, &a, 0);
  if (!lua_isnoneornil(L, 2)) {
    static const char *const known[] = {"timeout", "authkey", NULL};
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    checkopts(L, 2, known);
    key = optkey(L, 2, &klen); /* kept alive by the options, at 2 */
    lua_getfield(L, 2, "timeout");
    deadline = lmp_opt_deadline(L, 3);
  }
  fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return luaL_error(L, "cannot make a socket: %s", strerror(errno));
  rc = connect_by(L, fd, &a, deadline);
  if (rc == 0) {
    if (key != NULL) authenticate(L, fd, key, klen, 0, deadline);
    kin_push(L, fd, key != NULL, 0, deadline);
    return 1;
  }
  close(fd);
  if (rc == -EAGAIN) return lmp_throw(L, "TimeoutError", "cannot connect in time");
  if (rc == -EINTR) return lmp_raise_errno(L, rc, "cannot connect");
  lua_pushvalue(L, 1);
  return luaL_error(L, "cannot connect to %s: %s",
                    lua_istable(L, 1) ? "that address"
                                      : luaL_tolstring(L, 1, NULL),
                    strerror(-rc));
}

static const luaL_Reg listener_getters[] = {
  {"address", listener_address}, {"last_accepted", listener_last},
  {NULL, NULL}
};

static const luaL_Reg listener_meth[] = {
  {"accept", listener_accept}, {"close", listener_close}, {NULL, NULL}
};

static const lmp_class listener_class = {
  .name = LISTENER, .what = "listener", .size = sizeof(listener), .nuv = 3,
  .meth = listener_meth, .getters = listener_getters,
  .tostring = listener_tostring, .close = listener_free,
  .closed = listener_closed, .ready = listener_ready,
};

static const lmp_class *const listener_classes[] = {&listener_class, NULL};

static const luaL_Reg listener_funcs[] = {
  {"Listener", listener_new}, {"Client", client_new}, {NULL, NULL}
};

const lmp_family lmp_listener_family = {listener_classes, listener_funcs,
                                         NULL};
