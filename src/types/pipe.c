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
 * messages over 4 GiB work.  A receive reads one frame and nothing beyond
 * it: the header's bytes, then the body's, so whatever follows stays in
 * the descriptor for any process that holds it.  The descriptors are
 * non-blocking; a call that must wait sleeps in lmp_wait_fds, where Ctrl-C
 * and child reaping still reach it.  A frame begun and cut short by Ctrl-C
 * stays in the connection, and the next receive finishes it.
 */

typedef struct conn {
  int fd;
  int readable, writable;
  int sock; /* a socket (duplex): MSG_NOSIGNAL works */
  unsigned char hdr[12]; /* the frame being read: hgot bytes of header, */
  size_t hgot, bgot;     /* bgot of its body in buf */
  char *buf;
  size_t cap;
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
  c->cap = c->hgot = c->bgot = 0;
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

/* Reads into dst until *got reaches want, waiting as long as it takes:
 * 0, 1 at end of file, -EINTR or -errno.  What came before an error stays
 * counted in *got, so a later call goes on from there. */
static int readall(lua_State *L, conn *c, char *dst, size_t want,
                   size_t *got) {
  while (*got < want) {
    ssize_t r = read(c->fd, dst + *got, want - *got);
    if (r > 0) {
      *got += (size_t)r;
      continue;
    }
    if (r == 0) return 1;
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return -errno;
    {
      int rc = wait_io(L, c->fd, POLLIN, -1);
      if (rc < 0) return rc;
    }
  }
  return 0;
}

static void read_failed(lua_State *L, conn *c, int rc) {
  if (rc == 1) {
    if (c->hgot == 0)
      lmp_throw(L, "EOFError", "the other end of the connection is closed");
    c->hgot = c->bgot = 0;
    lmp_throw(L, "EOFError", "connection closed in the middle of a message");
  }
  if (rc == -ENOMEM) luaL_error(L, "not enough memory");
  lmp_raise_errno(L, rc, "cannot receive");
}

/* Reads the header of the next frame, nothing beyond it: its length. */
static uint64_t header(lua_State *L, conn *c) {
  uint64_t v;
  int i, rc = readall(L, c, (char *)c->hdr, 4, &c->hgot);
  if (rc != 0) read_failed(L, c, rc);
  v = ((uint64_t)c->hdr[0] << 24) | ((uint64_t)c->hdr[1] << 16) |
      ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
  if (v != 0xffffffffu) return v;
  rc = readall(L, c, (char *)c->hdr, 12, &c->hgot);
  if (rc != 0) read_failed(L, c, rc);
  for (v = 0, i = 0; i < 8; i++) v = (v << 8) | c->hdr[4 + i];
  return v;
}

/* Reads the rest of the frame begun by header() into c->buf.  A wait cut
 * short leaves what came in the connection, for the next call to finish. */
static void body(lua_State *L, conn *c, uint64_t n) {
  int rc;
  if (n > (uint64_t)(SIZE_MAX / 2)) luaL_error(L, "message too long");
  if (c->cap < n) {
    char *nb = realloc(c->buf, (size_t)n);
    if (nb == NULL) luaL_error(L, "not enough memory");
    c->buf = nb;
    c->cap = (size_t)n;
  }
  rc = readall(L, c, c->buf, (size_t)n, &c->bgot);
  if (rc != 0) read_failed(L, c, rc);
}

/* The frame is consumed: a large buffer is not kept. */
static void done(conn *c) {
  c->hgot = c->bgot = 0;
  if (c->cap > 65536) {
    free(c->buf);
    c->buf = NULL;
    c->cap = 0;
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
  luaL_argcheck(L, lua_isnoneornil(L, 2) || maxlen >= 0, 2,
                "maxlength must be non-negative");
  n = header(L, c);
  body(L, c, n);
  if (maxlen >= 0 && n > (uint64_t)maxlen) {
    done(c); /* drop it: the stream stays in step */
    return luaL_error(L, "message too long (%I bytes; maxlength is %I)",
                      (lua_Integer)n, maxlen);
  }
  lua_pushlstring(L, c->buf, (size_t)n);
  done(c);
  return 1;
}

/* recv_bytes_into(buf, [offset]) -> n: one message into a shared Array
 * of typecode b, B or c, from byte offset (0: its start), as Python's.  A
 * message longer than the room raises BufferTooShort, the message in its
 * field `bytes`. */
static int conn_recv_bytes_into(lua_State *L) {
  conn *c = checkreadable(L);
  size_t size = 0;
  char *dst = lmp_array_bytes(L, 2, &size);
  lua_Integer off = luaL_optinteger(L, 3, 0);
  uint64_t n;
  luaL_argexpected(L, dst != NULL, 2,
                   "luamp.Array of typecode 'b', 'B' or 'c'");
  luaL_argcheck(L, off >= 0, 3, "negative offset");
  luaL_argcheck(L, (uint64_t)off <= size, 3, "offset too large");
  n = header(L, c);
  body(L, c, n);
  if (n > size - (size_t)off) {
    lua_pushlstring(L, c->buf, (size_t)n);
    done(c);
    return lmp_throw_with(L, "BufferTooShort", "bytes",
                          "the message is longer than the buffer");
  }
  memcpy(dst + off, c->buf, (size_t)n);
  done(c);
  lua_pushinteger(L, (lua_Integer)n);
  return 1;
}

/* recv() -> value. */
static int conn_recv(lua_State *L) {
  conn *c = checkreadable(L);
  uint64_t n = header(L, c);
  body(L, c, n);
  c->hgot = c->bgot = 0; /* the decoder owns the frame now */
  lmp_take_decode(L, c->buf, (size_t)n, NULL, NULL);
  done(c);
  return 1;
}

/* poll([timeout]) -> whether there is something to read (part of a
 * message at least, or the end of the stream).  Takes nothing.  No
 * argument: don't wait. */
static int conn_poll(lua_State *L) {
  conn *c = checkreadable(L);
  double deadline = lua_isnone(L, 2) ? 0 : lmp_opt_deadline(L, 2);
  struct pollfd p;
  int rc;
  if (c->hgot > 0) { /* a frame begun: the rest is on its way */
    lua_pushboolean(L, 1);
    return 1;
  }
  p.fd = c->fd;
  p.events = POLLIN;
  p.revents = 0;
  do rc = poll(&p, 1, 0);
  while (rc < 0 && errno == EINTR);
  if (rc == 0 && deadline != 0) rc = wait_io(L, c->fd, POLLIN, deadline);
  if (rc < 0) return lmp_raise_errno(L, rc < -1 ? rc : -errno, "cannot poll");
  lua_pushboolean(L, rc > 0);
  return 1;
}

/* For mp.wait: 0 with the descriptor to poll (readable is ready), 1 if a
 * frame is begun, -1 if it cannot be read from. */
static int conn_ready(void *h, int *fd) {
  conn *c = h;
  if (c->fd < 0 || !c->readable) return -1;
  *fd = c->fd;
  return c->hgot > 0;
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
  {"recv_bytes_into", conn_recv_bytes_into},
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
