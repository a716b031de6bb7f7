/* pipe.c -- Pipe connections: length-prefixed messages over a socketpair
 * (duplex) or a pipe (one way), the codec for send/recv.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "types.h"

#define CONN "luamp.Connection"

/*
 * Framing.  A message is a 4-byte big-endian length and that many bytes;
 * a length of 0xffffffff is followed by the real length in 8 bytes, so
 * messages over 4 GiB work.  The descriptors are non-blocking: a read
 * takes what is there into the connection's buffer (often several
 * messages at once), and a call that must wait sleeps in lmp_wait_fds,
 * where Ctrl-C and child reaping still reach it.
 */

typedef struct conn {
  int fd;
  int readable, writable;
  int sock; /* a socket (duplex): MSG_NOSIGNAL works */
  char *buf; /* bytes read and not yet returned: [pos, len) */
  size_t pos, len, cap;
  lmp_buf *enc; /* for send, owned by the uservalue */
} conn;

static const lmp_class conn_class;

static conn *checkconn(lua_State *L) {
  conn *c = lmp_checkhandle(L, 1);
  if (c->fd < 0) luaL_error(L, "attempt to use a closed connection");
  return c;
}

static void conn_free(void *h) {
  conn *c = h;
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  free(c->buf);
  c->buf = NULL;
  c->pos = c->len = c->cap = 0;
}

static conn *newconn(lua_State *L, int fd, int readable, int writable) {
  conn *c = lua_newuserdatauv(L, sizeof *c, 1);
  memset(c, 0, sizeof *c);
  c->fd = -1;
  lmp_setclass(L, &conn_class);
  c->enc = lmp_buf_new(L);
  lua_setiuservalue(L, -2, 1);
  c->fd = fd;
  c->readable = readable;
  c->writable = writable;
  return c;
}

static int nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Pipe([duplex]) -> a, b */
static int pipe_new(lua_State *L) {
  int duplex = lua_isnoneornil(L, 1) || lua_toboolean(L, 1);
  int fds[2];
  if (duplex) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
      return luaL_error(L, "cannot make a pipe: %s", strerror(errno));
  } else if (pipe2(fds, O_CLOEXEC) < 0) {
    return luaL_error(L, "cannot make a pipe: %s", strerror(errno));
  }
  nonblock(fds[0]);
  nonblock(fds[1]);
  /* Make both handles before anything can fail, so the fds are owned. */
  newconn(L, fds[0], 1, duplex)->sock = duplex;
  newconn(L, fds[1], duplex, 1)->sock = duplex;
  return 2;
}

/* A duplex Connection, on the top of L, of fd: a connected stream
 * socket, which the Connection owns once this returns. */
void lmp_conn_push(lua_State *L, int fd) {
  nonblock(fd);
  newconn(L, fd, 1, 1)->sock = 1;
}

/* ------------------------------------------------------------- writing */

static int wait_io(lua_State *L, int fd, short ev, double deadline) {
  struct pollfd p;
  p.fd = fd;
  p.events = ev;
  p.revents = 0;
  return lmp_wait_fds(L, &p, 1, NULL, NULL, deadline);
}

/* One write that cannot raise SIGPIPE: sockets say so per call; for a
 * pipe SIGPIPE is blocked around the write and a pending one consumed. */
static ssize_t write_nosig(conn *c, struct iovec *iov, int n) {
  sigset_t pipe_set, old;
  ssize_t w;
  int e;
  if (c->sock) {
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = (size_t)n;
    return sendmsg(c->fd, &m, MSG_NOSIGNAL);
  }
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  sigprocmask(SIG_BLOCK, &pipe_set, &old);
  w = writev(c->fd, iov, n);
  e = errno;
  if (w < 0 && e == EPIPE && !sigismember(&old, SIGPIPE)) {
    struct timespec zero = {0, 0};
    sigtimedwait(&pipe_set, NULL, &zero);
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  errno = e;
  return w;
}

/* Writes the whole of the iovecs; 0, -EPIPE, -EINTR (Ctrl-C) or -errno;
 * *sent counts the bytes written. */
static int writeall(lua_State *L, conn *c, struct iovec *iov, int n,
                    size_t *sent) {
  *sent = 0;
  while (n > 0) {
    ssize_t w = write_nosig(c, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        int rc = wait_io(L, c->fd, POLLOUT, -1);
        if (rc < 0) return rc;
        continue;
      }
      return -errno;
    }
    *sent += (size_t)w;
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Sends one frame: 0 or -errno (nothing raised).  A frame cut short by
 * Ctrl-C would leave the stream out of step, so then the connection is
 * closed: the other end sees it end in the middle of a message. */
static int send_frame(lua_State *L, conn *c, const char *p, size_t n) {
  unsigned char hdr[12];
  struct iovec iov[2];
  size_t h = 4, sent;
  int rc;
  if (n < 0xffffffffu) {
    hdr[0] = (unsigned char)(n >> 24);
    hdr[1] = (unsigned char)(n >> 16);
    hdr[2] = (unsigned char)(n >> 8);
    hdr[3] = (unsigned char)n;
  } else {
    int i;
    memset(hdr, 0xff, 4);
    for (i = 0; i < 8; i++)
      hdr[4 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
    h = 12;
  }
  iov[0].iov_base = hdr;
  iov[0].iov_len = h;
  iov[1].iov_base = (void *)p;
  iov[1].iov_len = n;
  rc = writeall(L, c, iov, 2, &sent);
  if (rc < 0 && sent > 0) conn_free(c);
  return rc;
}

static int send_failed(lua_State *L, int rc) {
  if (rc == -EPIPE)
    return lmp_throw(L, "EOFError",
                     "the other end of the connection is closed");
  return lmp_raise_errno(L, rc, "cannot send");
}

static conn *checkwritable(lua_State *L) {
  conn *c = checkconn(L);
  if (!c->writable) luaL_error(L, "connection is read-only");
  return c;
}

/* send_bytes(s, [i], [j]): sends s:sub(i, j) as one message. */
static int conn_send_bytes(lua_State *L) {
  conn *c = checkwritable(L);
  int rc;
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  lua_Integer i = luaL_optinteger(L, 3, 1), j = luaL_optinteger(L, 4, -1);
  if (i < 0) i = (lua_Integer)n + i + 1;
  if (j < 0) j = (lua_Integer)n + j + 1;
  if (i < 1) i = 1;
  if (j > (lua_Integer)n) j = (lua_Integer)n;
  rc = i > j ? send_frame(L, c, s, 0)
             : send_frame(L, c, s + i - 1, (size_t)(j - i + 1));
  if (rc < 0) return send_failed(L, rc);
  return 0;
}

/* send(v): sends v through the codec. */
static int conn_send(lua_State *L) {
  conn *c = checkwritable(L);
  int rc;
  luaL_checkany(L, 2);
  c->enc->len = 0;
  lmp_encode(L, 2, "value", c->enc);
  rc = send_frame(L, c, c->enc->data, c->enc->len);
  if (rc < 0) { /* the message never left: its references go */
    lmp_msg_release(c->enc->data, c->enc->len);
    return send_failed(L, rc);
  }
  return 0;
}

/* ------------------------------------------------------------- reading */

/* Reads more into the buffer, waiting until the deadline.  1 when bytes
 * came, 0 at end of file, -EAGAIN at the deadline, -EINTR, -errno. */
static int fill(lua_State *L, conn *c, double deadline, size_t want) {
  for (;;) {
    ssize_t r;
    if (c->pos > 0 && c->pos == c->len) c->pos = c->len = 0;
    if (c->cap - c->len < want) {
      size_t cap = c->cap ? c->cap : 65536;
      char *nb;
      if (c->pos > 0) { /* compact first */
        memmove(c->buf, c->buf + c->pos, c->len - c->pos);
        c->len -= c->pos;
        c->pos = 0;
      }
      while (cap - c->len < want) cap *= 2;
      if (cap != c->cap) {
        nb = realloc(c->buf, cap);
        if (nb == NULL) return -ENOMEM;
        c->buf = nb;
        c->cap = cap;
      }
    }
    r = read(c->fd, c->buf + c->len, c->cap - c->len);
    if (r > 0) {
      c->len += (size_t)r;
      return 1;
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return -errno;
    if (deadline == 0) return -EAGAIN;
    {
      int rc = wait_io(L, c->fd, POLLIN, deadline);
      if (rc < 0) return rc;
      if (rc == 0) return -EAGAIN;
    }
  }
}

/* Parses a frame header in the buffer: 1 with *n set, 0 if incomplete. */
static int header(conn *c, uint64_t *n, size_t *hlen) {
  const unsigned char *p = (const unsigned char *)c->buf + c->pos;
  size_t have = c->len - c->pos;
  uint64_t v;
  int i;
  if (have < 4) return 0;
  v = ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) |
      p[3];
  if (v != 0xffffffffu) {
    *n = v;
    *hlen = 4;
    return 1;
  }
  if (have < 12) return 0;
  for (v = 0, i = 0; i < 8; i++) v = (v << 8) | p[4 + i];
  *n = v;
  *hlen = 12;
  return 1;
}

/* Waits for a whole message in the buffer; on success its bytes are at
 * buf + pos + *hlen, *n long.  0, or an error raised. */
static void frame(lua_State *L, conn *c, uint64_t *n, size_t *hlen) {
  for (;;) {
    int rc;
    size_t have = c->len - c->pos;
    if (header(c, n, hlen) && have - *hlen >= *n) return;
    rc = fill(L, c, -1, header(c, n, hlen) ? (size_t)(*n + *hlen - have) : 12);
    if (rc == 0) {
      if (c->len - c->pos == 0)
        lmp_throw(L, "EOFError", "the other end of the connection is closed");
      lmp_throw(L, "EOFError", "connection closed in the middle of a message");
    }
    if (rc == -ENOMEM) luaL_error(L, "not enough memory");
    if (rc < 0) lmp_raise_errno(L, rc, "cannot receive");
  }
}

static conn *checkreadable(lua_State *L) {
  conn *c = checkconn(L);
  if (!c->readable) luaL_error(L, "connection is write-only");
  return c;
}

/* recv_bytes([maxlength]) -> string. */
static int conn_recv_bytes(lua_State *L) {
  conn *c = checkreadable(L);
  lua_Integer maxlen = luaL_optinteger(L, 2, -1);
  uint64_t n;
  size_t h;
  luaL_argcheck(L, lua_isnoneornil(L, 2) || maxlen >= 0, 2,
                "maxlength must be non-negative");
  frame(L, c, &n, &h);
  if (maxlen >= 0 && n > (uint64_t)maxlen) {
    c->pos += h + n; /* drop it: the stream stays in step */
    return luaL_error(L, "message too long (%I bytes; maxlength is %I)",
                      (lua_Integer)n, maxlen);
  }
  lua_pushlstring(L, c->buf + c->pos + h, (size_t)n);
  c->pos += h + n;
  return 1;
}

/* recv() -> value. */
static int conn_recv(lua_State *L) {
  conn *c = checkreadable(L);
  uint64_t n;
  size_t h;
  const char *p;
  frame(L, c, &n, &h);
  p = c->buf + c->pos + h;
  c->pos += h + n;
  lmp_take_decode(L, p, (size_t)n, NULL, NULL);
  return 1;
}

/* poll([timeout]) -> whether a recv would not block (a message, or the
 * end of the stream, is there).  No argument: don't wait. */
static int conn_poll(lua_State *L) {
  conn *c = checkreadable(L);
  double deadline = lua_isnone(L, 2) ? 0 : lmp_opt_deadline(L, 2);
  for (;;) {
    uint64_t n;
    size_t h;
    int rc;
    if (header(c, &n, &h) && c->len - c->pos - h >= n) break;
    rc = fill(L, c, deadline, 65536);
    if (rc == 0) break; /* end of file: recv would raise at once */
    if (rc == -EAGAIN) {
      lua_pushboolean(L, 0);
      return 1;
    }
    if (rc < 0) return lmp_raise_errno(L, rc, "cannot poll");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* For mp.wait: 1 when a whole message is buffered, else 0 with the
 * descriptor to poll; -1 if it cannot be read from. */
static int conn_ready(void *h, int *fd) {
  conn *c = h;
  uint64_t n;
  size_t hl;
  if (c->fd < 0 || !c->readable) return -1;
  *fd = c->fd;
  return header(c, &n, &hl) && c->len - c->pos - hl >= n;
}

static int conn_fileno(lua_State *L) {
  lua_pushinteger(L, checkconn(L)->fd);
  return 1;
}

static int conn_closed(void *h) { return ((conn *)h)->fd < 0; }

/* Fields: closed, readable, writable. */
static int conn_closed_field(lua_State *L) {
  lua_pushboolean(L, ((conn *)lmp_checkhandle(L, 1))->fd < 0);
  return 1;
}

static int conn_readable(lua_State *L) {
  lua_pushboolean(L, ((conn *)lmp_checkhandle(L, 1))->readable);
  return 1;
}

static int conn_writable(lua_State *L) {
  lua_pushboolean(L, ((conn *)lmp_checkhandle(L, 1))->writable);
  return 1;
}

static const luaL_Reg conn_getters[] = {
  {"closed", conn_closed_field}, {"readable", conn_readable},
  {"writable", conn_writable}, {NULL, NULL}
};

static int conn_tostring(lua_State *L) {
  lua_pushfstring(L, CONN " (fd %d)", ((conn *)lua_touserdata(L, 1))->fd);
  return 1;
}

static const luaL_Reg conn_meth[] = {
  {"send", conn_send},           {"recv", conn_recv},
  {"send_bytes", conn_send_bytes}, {"recv_bytes", conn_recv_bytes},
  {"poll", conn_poll},           {"fileno", conn_fileno},
  {NULL, NULL}
};

static const lmp_class conn_class = {
  .name = CONN, .what = "connection", .size = sizeof(conn), .nuv = 1,
  .meth = conn_meth, .getters = conn_getters, .tostring = conn_tostring,
  .close = conn_free, .closed = conn_closed, .ready = conn_ready,
};

static const lmp_class *const pipe_classes[] = {&conn_class, NULL};

static const luaL_Reg pipe_funcs[] = {{"Pipe", pipe_new}, {NULL, NULL}};

const lmp_family lmp_pipe_family = {pipe_classes, pipe_funcs};
