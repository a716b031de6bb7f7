/* pipe.c -- Pipe connections: length-prefixed messages over a socketpair
 * (duplex) or a pipe (one way), the codec for send/recv.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
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
 * messages over 4 GiB work.
 *
 * Reading takes one message from the descriptor and nothing beyond it:
 * the header's bytes, then the body's, straight into the buffer the
 * message is made from.  Nothing read ahead is kept where another process
 * holding the same descriptor could not see it, so a connection can be
 * read by one process and then another (a child, the parent), or polled by
 * one and read by another, and no message is lost or read twice; `poll`
 * asks the kernel and takes nothing.  The descriptors are non-blocking: a
 * reader with nothing to read spins a little first (header_now,
 * readable_now), then sleeps in lmp_wait_fds, where Ctrl-C and child
 * reaping still reach it.  A message whose reading was cut short (Ctrl-C
 * in the middle of a large one) stays begun in this process, and its next
 * recv finishes it.
 */

/*
 * Flights.  A message that names shared objects keeps them alive until it
 * is received, whatever its sender does once it is sent (drops every
 * handle, exits, is killed), and lets them go if it never is.  Its bytes
 * in the kernel are out of the arena's sight, so each Pipe has a channel
 * in the arena, held by every handle of either end (and so by every
 * process that inherits one), with a record of each such message in
 * flight: an id, which its frame carries (a header of 0xfffffffe, the
 * length in 8 bytes, the id in 8), and the objects it names, each
 * reference counted in the record as it is taken.  The receiver drops the
 * record of the message it read; the channel drops those never read when
 * its last holder goes.  A record is made pending, linked with one store,
 * unlinked with one store while pending again, and freed pending: the
 * reaper of a process killed on the way frees it with the references its
 * count says it holds, as a dict does its entries.
 */

#define FLIGHT_MAGIC 0x74686769u /* "ight" */

typedef struct flight {
  uint32_t magic, n;     /* n: the objects named */
  lmp_off next;
  uint64_t id;
  _Atomic uint64_t refs; /* references taken so far, of obj[0..] */
  lmp_off obj[];
} flight;

typedef struct channel {
  lmp_obj h;
  lmp_guard g;
  lmp_off head; /* the records, newest first */
  uint64_t last_id;
  lmp_off freeing; /* a record the dtor unlinked and is freeing */
} channel;

static void release_flight(flight *f) {
  uint64_t k;
  while ((k = atomic_load(&f->refs)) > 0)
    lmp_obj_decref_counted(LMP_PTR(f->obj[k - 1]), &f->refs);
}

/* Run again after a kill cut it short, it finishes the job: a record's
 * references go (counted), then it is unlinked, named in `freeing`, and
 * freed with that word. */
static void chan_dtor(lmp_obj *o) {
  channel *ch = (channel *)o;
  if (ch->freeing != 0) lmp_heap_free(LMP_PTR(ch->freeing), &ch->freeing);
  while (ch->head != 0) {
    flight *f = LMP_PTR(ch->head);
    release_flight(f);
    ((volatile channel *)ch)->freeing = ch->head; /* in this order */
    ((volatile channel *)ch)->head = f->next;
    lmp_heap_free(f, &ch->freeing);
  }
  lmp_guard_destroy(&ch->g);
}

static int chan_owns(lmp_obj *o, lmp_off blk) {
  lmp_off at;
  for (at = ((channel *)o)->head; at != 0;
       at = ((flight *)LMP_PTR(at))->next)
    if (at == blk) return 1;
  return 0;
}

static void chan_release(lmp_obj *o, lmp_off blk) {
  flight *f = LMP_PTR(blk);
  (void)o;
  if (f->magic == FLIGHT_MAGIC) release_flight(f);
}

static const lmp_type chan_type = {
  .name = "channel", .dtor = chan_dtor, .guard = offsetof(channel, g),
  .owns = chan_owns, .release = chan_release,
};

static void conn_make(lua_State *L, int fd, unsigned flags, lmp_off chan);

static void pipe_open(void) {
  lmp_type_set(LMP_T_CHANNEL, &chan_type);
  lmp_codec_handed_maker(conn_make);
}

typedef struct collect {
  flight *f;
} collect;

static void take_ref(lmp_obj *o, void *ud) {
  flight *f = ((collect *)ud)->f;
  uint64_t k = atomic_load(&f->refs);
  if (k >= f->n) return;
  f->obj[k] = LMP_OFF(o);
  lmp_obj_incref_counted(o, &f->refs);
}

/* Records a message of nobj objects sent on ch, taking their references:
 * its id, or 0 when the arena is exhausted. */
static uint64_t flight_add(channel *ch, const char *p, size_t n,
                           size_t nobj) {
  collect c;
  uint64_t id;
  c.f = lmp_alloc_pending(&ch->h, sizeof(flight) + nobj * sizeof(lmp_off),
                          LMP_PEND_IN);
  if (c.f == NULL) return 0;
  c.f->n = (uint32_t)nobj;
  c.f->next = 0;
  atomic_store(&c.f->refs, 0);
  c.f->magic = FLIGHT_MAGIC;
  lmp_msg_walk(p, n, take_ref, &c);
  lmp_guard_lock(&ch->g, &ch->h);
  id = c.f->id = ++ch->last_id;
  c.f->next = ch->head;
  ch->head = LMP_OFF(c.f); /* the commit */
  lmp_pending_clear(LMP_PEND_IN);
  lmp_guard_unlock(&ch->g);
  return id;
}

/* The message of flight id has arrived (or will never leave): drops its
 * record and the references it holds. */
static void flight_drop(channel *ch, uint64_t id) {
  lmp_off *at;
  flight *f = NULL;
  lmp_guard_lock(&ch->g, &ch->h);
  for (at = &ch->head; *at != 0; at = &((flight *)LMP_PTR(*at))->next) {
    if (((flight *)LMP_PTR(*at))->id == id) {
      f = LMP_PTR(*at);
      lmp_pending_set(&ch->h, f, LMP_PEND_OUT);
      *at = f->next; /* the commit */
      break;
    }
  }
  lmp_guard_unlock(&ch->g);
  if (f == NULL) return;
  release_flight(f);
  lmp_free_pending(f, LMP_PEND_OUT);
}

typedef struct conn {
  int fd;
  int readable, writable;
  int sock; /* a socket (duplex): MSG_NOSIGNAL works */
  channel *ch; /* held by this handle; NULL once closed, or none */
  /* Its peer is outside the family: plain data only (OUTSIDE), or, once
   * authenticated, functions too (TRUSTED); never a shared object. */
  int plain;
  unsigned char hdr[20]; /* the header of the message being read */
  size_t hgot;           /* its bytes read so far */
  uint64_t flight;       /* the id it carries, 0 if none */
  char *buf;             /* the body: got of n bytes read */
  size_t got, n, cap;
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
  c->hgot = c->got = c->n = c->cap = 0;
  if (c->ch != NULL) lmp_unhold(&c->ch->h);
  c->ch = NULL;
}

static conn *newconn(lua_State *L, int fd, int readable, int writable,
                     channel *ch) {
  conn *c = lmp_newhandle(L, &conn_class, sizeof *c, 1);
  c->fd = -1;
  c->enc = lmp_buf_new(L);
  lua_setiuservalue(L, -2, 1);
  if (ch != NULL && lmp_hold(&ch->h) == 0) c->ch = ch;
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
  lmp_off off = lmp_channel_new();
  channel *ch = off != 0 ? (channel *)LMP_PTR(off) : NULL;
  if (ch == NULL) return lmp_nomem(L, sizeof(channel));
  if (duplex) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) {
      lmp_obj_discard(&ch->h);
      return luaL_error(L, "cannot make a pipe: %s", strerror(errno));
    }
  } else if (pipe2(fds, O_CLOEXEC) < 0) {
    lmp_obj_discard(&ch->h);
    return luaL_error(L, "cannot make a pipe: %s", strerror(errno));
  }
  nonblock(fds[0]);
  nonblock(fds[1]);
  /* Make both handles before anything can fail, so the fds are owned. */
  newconn(L, fds[0], 1, duplex, ch)->sock = duplex;
  newconn(L, fds[1], duplex, 1, ch)->sock = duplex;
  if (((conn *)lua_touserdata(L, -1))->ch == NULL ||
      ((conn *)lua_touserdata(L, -2))->ch == NULL)
    return lmp_nomem(L, 64); /* the handles close what they hold */
  return 2;
}

/* A duplex Connection, on the top of L, of fd: a connected stream
 * socket, which the Connection owns once this returns. */
enum { FAMILY = 0, OUTSIDE, TRUSTED };

void lmp_conn_push(lua_State *L, int fd, int trusted, lmp_off chan) {
  conn *c;
  channel *ch = chan != 0 ? (channel *)LMP_PTR(chan) : NULL;
  nonblock(fd);
  c = newconn(L, fd, 1, 1, ch);
  c->sock = 1;
  if (ch != NULL && c->ch == NULL) lmp_nomem(L, 64); /* the handle owns fd */
  c->plain = ch != NULL ? FAMILY : trusted ? TRUSTED : OUTSIDE;
}

lmp_off lmp_channel_new(void) {
  channel *ch = (channel *)lmp_obj_new(LMP_T_CHANNEL, 0, sizeof(channel));
  if (ch == NULL) return 0;
  lmp_guard_init(&ch->g);
  return LMP_OFF(ch);
}

int lmp_channel_check(lmp_off off) {
  return off != 0 && lmp_obj_check(off, LMP_T_CHANNEL);
}

/* ------------------------------------------------------------- writing */

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
        int rc = lmp_wait_fd(L, c->fd, POLLOUT, -1);
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
static int send_frame(lua_State *L, conn *c, const char *p, size_t n,
                      uint64_t flight) {
  unsigned char hdr[20];
  struct iovec iov[2];
  size_t h = 4, sent;
  int rc;
  if (flight != 0) {
    int i;
    memset(hdr, 0xff, 4);
    hdr[3] = 0xfe;
    for (i = 0; i < 8; i++) {
      hdr[4 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
      hdr[12 + i] = (unsigned char)(flight >> (56 - 8 * i));
    }
    h = 20;
  } else if (n < 0xfffffffeu) {
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
  rc = i > j ? send_frame(L, c, s, 0, 0)
             : send_frame(L, c, s + i - 1, (size_t)(j - i + 1), 0);
  if (rc < 0) return send_failed(L, rc);
  return 0;
}

/* send(v): sends v through the codec; one that names shared objects
 * goes as a flight. */
static int conn_send(lua_State *L) {
  conn *c = checkwritable(L);
  channel *ch = c->ch;
  uint64_t flight = 0;
  size_t nobj;
  lmp_buf *b;
  int rc;
  luaL_checkany(L, 2);
  b = lmp_buf_claim(L, c->enc, LMP_FRAME());
  /* (what cannot be sent is raised at the caller's line) */
  if (c->plain) /* a shared object raises, with its path */
    nobj = lmp_encode_wire_at(L, 2, "value", b,
                              "a shared %s cannot leave its process family",
                              1);
  else
    nobj = lmp_encode_bare_at(L, 2, "value", b, 1);
  if (nobj > 0 && (ch == NULL
                   || (flight = flight_add(ch, b->data, b->len, nobj)) == 0))
    return lmp_nomem(L, sizeof(flight) + nobj * sizeof(lmp_off));
  rc = send_frame(L, c, b->data, b->len, flight);
  lmp_buf_unclaim(b);
  if (rc < 0) { /* the message never left: its references go */
    if (flight != 0) flight_drop(ch, flight);
    return send_failed(L, rc);
  }
  return 0;
}

/* ------------------------------------------------------------- reading */

/* The length a complete header gives, or 0 while it is incomplete
 * (*want: the header bytes still to read). */
static int header_done(conn *c, uint64_t *n, size_t *want) {
  uint64_t v;
  int i;
  if (c->hgot < 4) {
    *want = 4 - c->hgot;
    return 0;
  }
  v = ((uint64_t)c->hdr[0] << 24) | ((uint64_t)c->hdr[1] << 16) |
      ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
  c->flight = 0;
  if (v >= 0xfffffffeu) {
    size_t h = v == 0xffffffffu ? 12 : 20;
    if (c->hgot < h) {
      *want = h - c->hgot;
      return 0;
    }
    for (v = 0, i = 0; i < 8; i++) v = (v << 8) | c->hdr[4 + i];
    if (h == 20)
      for (i = 0; i < 8; i++) c->flight = (c->flight << 8) | c->hdr[12 + i];
  }
  *n = v;
  return 1;
}

/* The first room made for a body: a header alone claims no more than
 * this, so that a peer announcing a huge message makes the reader hold
 * only as much as has come; the room doubles as the bytes arrive. */
#define FIRST_ROOM ((size_t)1 << 20)

/* Gives c->buf room for at least `need` bytes of the body of c->n (need
 * <= c->n); the bytes already read stay.  On failure the stream is out of
 * step for good: the connection is closed and this raises. */
static void grow_room(lua_State *L, conn *c, uint64_t need) {
  size_t cap = c->cap > 256 ? c->cap : 256;
  char *nb;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
  if (c->n > 256 && (uint64_t)cap > c->n) cap = (size_t)c->n;
  nb = (uint64_t)cap < need ? NULL : realloc(c->buf, cap);
  if (nb == NULL) {
    lua_Integer n = (lua_Integer)c->n;
    conn_free(c);
    luaL_error(L, "not enough memory for a message of %I bytes", n);
  }
  c->buf = nb;
  c->cap = cap;
}

/* Makes room in c->buf for the start of the body of c->n bytes whose
 * header was just read. */
static void make_room(lua_State *L, conn *c) {
  uint64_t need = c->n < FIRST_ROOM ? c->n : FIRST_ROOM;
  c->got = 0;
  if (c->buf == NULL || c->cap < need) grow_room(L, c, need);
}

/* Whether c's descriptor has bytes (or the end of the stream, or an
 * error) to read now: a reader's spin before it sleeps.  A process put to
 * sleep in poll and woken by the peer's write takes tens of microseconds
 * to run again on a virtual machine; a peer on another core that answers
 * within the spin costs a few polls instead. */
static int readable_now(void *ud) {
  return lmp_fd_ready(((conn *)ud)->fd, POLLIN) != 0;
}

/* The same spin while no byte of a message has come: each round tries to
 * read its header instead of polling, so that the read that finds the
 * message has taken its header too, a system call fewer on the way of
 * every message.  It reads no further than the header (no byte of the
 * next message is taken), and is ready when it read some, or met the end
 * of the stream or an error (which read_frame's own read meets next). */
static int header_now(void *ud) {
  conn *c = ud;
  ssize_t r = read(c->fd, c->hdr + c->hgot, 4 - c->hgot);
  if (r > 0) {
    c->hgot += (size_t)r;
    return 1;
  }
  return r == 0 || (errno != EAGAIN && errno != EINTR);
}

static lmp_spinner recv_spinner; /* this process's, for every connection */

/* Reads one whole message from the descriptor, and no byte beyond it: on
 * return its c->n bytes are at c->buf, and the connection is ready for
 * the next.  Raises EOFError at the end of the stream. */
static void read_frame(lua_State *L, conn *c) {
  for (;;) {
    size_t want;
    char *dst;
    ssize_t r;
    int body = header_done(c, &c->n, &want);
    if (body && c->got == 0 && c->plain == OUTSIDE &&
        memcmp(c->hdr, "LMPA", 4) == 0)
      /* a Listener's challenge (see listener.c), to a Client without a
       * key, where a length should be */
      lmp_throw(L, "AuthenticationError", "the peer asks for an authkey, "
                "and this connection has none");
    if (body) {
      if (c->got == c->n) { /* whole (an empty body at once) */
        c->hgot = c->got = 0;
        return;
      }
      if (c->got == c->cap) grow_room(L, c, c->got + 1);
      dst = c->buf + c->got;
      want = (c->n < c->cap ? (size_t)c->n : c->cap) - c->got;
    } else {
      dst = (char *)c->hdr + c->hgot;
    }
    r = read(c->fd, dst, want);
    if (r > 0) {
      if (body) {
        c->got += (size_t)r;
      } else {
        c->hgot += (size_t)r;
        if (header_done(c, &c->n, &want)) make_room(L, c);
      }
      continue;
    }
    if (r == 0) {
      int begun = c->hgot > 0;
      c->hgot = c->got = c->n = 0;
      if (!begun)
        lmp_throw(L, "EOFError", "the other end of the connection is closed");
      lmp_throw(L, "EOFError", "connection closed in the middle of a message");
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) lmp_raise_errno(L, -errno, "cannot receive");
    if (!body && c->hgot < 4) {
      size_t had = c->hgot;
      if (lmp_spin(header_now, c, &recv_spinner, LMP_SPIN_PIPE, 1)) {
        if (c->hgot > had && header_done(c, &c->n, &want)) make_room(L, c);
        continue;
      }
    } else if (lmp_spin(readable_now, c, &recv_spinner, LMP_SPIN_PIPE, 1)) {
      continue;
    }
    {
      int rc = lmp_wait_fd(L, c->fd, POLLIN, -1);
      if (rc < 0) lmp_raise_errno(L, rc, "cannot receive");
    }
  }
}

/* The message just read is in: the objects its flight kept alive (if it
 * had one) are let go of, the receiver's own handles holding them now. */
static void landed(conn *c) {
  if (c->flight != 0 && c->ch != NULL) flight_drop(c->ch, c->flight);
  c->flight = 0;
}

static conn *checkreadable(lua_State *L) {
  conn *c = checkconn(L);
  if (!c->readable) luaL_error(L, "connection is write-only");
  return c;
}

/* recv_bytes([maxlength]) -> string.  A longer message is read and
 * dropped (the stream stays in step) and raises. */
static int conn_recv_bytes(lua_State *L) {
  conn *c = checkreadable(L);
  lua_Integer maxlen = luaL_optinteger(L, 2, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || maxlen >= 0, 2,
                "maxlength must be non-negative");
  read_frame(L, c);
  landed(c);
  if (maxlen >= 0 && c->n > (uint64_t)maxlen)
    return luaL_error(L, "message too long (%I bytes; maxlength is %I)",
                      (lua_Integer)c->n, maxlen);
  lua_pushlstring(L, c->buf, (size_t)c->n);
  return 1;
}

/* recv_bytes_into(array, [offset]) -> the number of bytes: the next
 * message's bytes written into a shared Array from byte offset on.  One
 * that does not fit raises BufferTooShort, whose `value` is the message
 * (it is not lost). */
static int conn_recv_bytes_into(lua_State *L) {
  conn *c = checkreadable(L);
  size_t size;
  char *to = lmp_array_bytes(L, 2, &size);
  lua_Integer off = luaL_optinteger(L, 3, 0);
  luaL_argexpected(L, to != NULL, 2, "luamp.Array");
  luaL_argcheck(L, off >= 0 && (size_t)off <= size, 3,
                "offset out of range");
  read_frame(L, c);
  landed(c);
  if (c->n > size - (size_t)off) {
    lua_pushlstring(L, c->buf, (size_t)c->n);
    return lmp_throw_value(L, "BufferTooShort", -1,
                           "message of %I bytes does not fit in %I",
                           (lua_Integer)c->n,
                           (lua_Integer)(size - (size_t)off));
  }
  memcpy(to + off, c->buf, (size_t)c->n);
  lua_pushinteger(L, (lua_Integer)c->n);
  return 1;
}

/* recv() -> value.  The decoding may run Lua (a finalizer the collector
 * runs as it allocates) that reads from c too: the message's bytes are
 * lent out meanwhile, so that such a read fills a buffer of its own, and
 * decoded under lua_pcall, so that they are not lost to an error.  A
 * message that send did not make (one sent with send_bytes: frames do not
 * tell them apart, so that recv_bytes reads either, as in Python) is
 * known by its first byte, which is not the codec's version: it is taken
 * and dropped, and raises saying so. */
static int conn_recv(lua_State *L) {
  conn *c = checkreadable(L);
  uint64_t flight;
  char *body;
  size_t n, cap;
  int rc;
  read_frame(L, c);
  if (c->n == 0 || c->buf[0] != LMP_CODEC_VERSION) {
    landed(c);
    return luaL_error(L, "cannot receive a value: the message (%I bytes) "
                      "is not one that send makes (sent with send_bytes? "
                      "recv_bytes reads it)", (lua_Integer)c->n);
  }
  flight = c->flight;
  c->flight = 0;
  if (c->plain == TRUSTED) { /* its functions signed here, and no object */
    rc = lmp_msg_resign(c->buf, (size_t)c->n);
    if (rc == -2)
      return luaL_error(L, "cannot receive value: it names a shared object "
                        "of another process family");
    if (rc < 0) return luaL_error(L, "malformed message");
  }
  body = c->buf;
  n = (size_t)c->n;
  cap = c->cap;
  c->buf = NULL;
  c->cap = 0;
  if (c->plain == OUTSIDE) /* not authenticated: data, nothing else */
    rc = lmp_decode_plain_protected(L, body, n);
  else
    rc = lmp_decode_protected(L, body, n);
  if (c->buf == NULL && c->fd >= 0) { /* its own again */
    c->buf = body;
    c->cap = cap;
  } else {
    free(body);
  }
  if (flight != 0 && c->ch != NULL) flight_drop(c->ch, flight);
  if (rc != LUA_OK) return lua_error(L);
  return 1;
}

/* poll([timeout]) -> whether data (or the end of the stream) is there to
 * read.  No argument: don't wait.  It takes nothing. */
static int conn_poll(lua_State *L) {
  conn *c = checkreadable(L);
  double deadline = lua_isnone(L, 2) ? 0 : lmp_opt_deadline(L, 2);
  int rc = lmp_fd_ready(c->fd, POLLIN); /* asks the kernel: takes nothing */
  if (rc == 0 && deadline != 0) {
    rc = lmp_wait_fd(L, c->fd, POLLIN, deadline);
    if (rc > 0) rc = 1;
  }
  if (rc < 0) return lmp_raise_errno(L, rc, "cannot poll");
  lua_pushboolean(L, rc);
  return 1;
}

/* For mp.wait: 1 when there is something to read, else 0 with the
 * descriptor to poll; -1 if it cannot be read from. */
static int conn_ready(void *h, int *fd) {
  conn *c = h;
  if (c->fd < 0 || !c->readable) return -1;
  *fd = c->fd;
  return lmp_fd_ready(c->fd, POLLIN) > 0;
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

/*
 * Handing.  A process started from a message (spawn, forkserver) is handed
 * the descriptor of every Connection its Process object names, and the
 * message says, for each, its flags and its channel: the child makes the
 * Connection again from them, holding the channel as any handle does.
 */
enum { H_READ = 1, H_WRITE = 2, H_SOCK = 4, H_PLAIN = 8 /* 2 bits */ };

static const char *conn_handed(void *h, int *fd, unsigned *flags,
                               lmp_obj **chan) {
  conn *c = h;
  if (c->fd < 0) return "a closed connection";
  if (c->hgot > 0) return "a connection in the middle of a message";
  *fd = c->fd;
  *flags = (c->readable ? H_READ : 0) | (c->writable ? H_WRITE : 0) |
           (c->sock ? H_SOCK : 0) | (unsigned)c->plain * H_PLAIN;
  *chan = c->ch != NULL ? &c->ch->h : NULL;
  return NULL;
}

static void conn_make(lua_State *L, int fd, unsigned flags, lmp_off chan) {
  channel *ch = lmp_channel_check(chan) ? (channel *)LMP_PTR(chan) : NULL;
  conn *c;
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  nonblock(fd);
  c = newconn(L, fd, (flags & H_READ) != 0, (flags & H_WRITE) != 0, ch);
  c->sock = (flags & H_SOCK) != 0;
  c->plain = (int)(flags / H_PLAIN) & 3;
  if (ch != NULL && c->ch == NULL) lmp_nomem(L, 64); /* the handle owns fd */
}

static const lmp_class conn_class = {
  .name = CONN, .what = "connection", .size = sizeof(conn), .nuv = 1,
  .meth = conn_meth, .getters = conn_getters, .tostring = conn_tostring,
  .close = conn_free, .closed = conn_closed, .ready = conn_ready,
  .handed = conn_handed,
};

static const lmp_class *const pipe_classes[] = {&conn_class, NULL};

static const luaL_Reg pipe_funcs[] = {{"Pipe", pipe_new}, {NULL, NULL}};

const lmp_family lmp_pipe_family = {pipe_classes, pipe_funcs, pipe_open};
