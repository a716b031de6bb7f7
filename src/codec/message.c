/* message.c -- Message: an encoded value that owns its bytes and holds
 * every shared object it names, so that it can be kept, travel inside
 * another message or through a queue or pipe, and still name live objects
 * when it is decoded, whatever its sender did meanwhile.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "codec.h"

#define MESSAGE "luamp.Message"

/*
 * A Message is one userdata: a header and the bytes.  Its holds are this
 * process's, in its hold table (lmp_hold), one per object the bytes name,
 * embedded messages included: so close, __gc, __close and the reaper of a
 * killed process all release them.  `nobj` counts them, so that closing a
 * message that names no object (most do not) costs no walk, and such a
 * message has no __gc at all (lmp_newhandle_plain): the collector frees
 * its bytes with it.
 */
typedef struct message {
  size_t len;
  size_t nobj; /* holds taken */
  int open;
  char data[];
} message;

typedef struct holding {
  size_t n, limit;
  int failed;
} holding;

static void hold_one(lmp_obj *o, void *ud) {
  holding *h = ud;
  if (h->failed || h->n == h->limit) return;
  if (lmp_hold(o) < 0) h->failed = 1;
  else h->n++;
}

static void unhold_one(lmp_obj *o, void *ud) {
  holding *h = ud;
  if (h->n < h->limit) {
    h->n++;
    lmp_unhold(o);
  }
}

static void msg_close(void *ud) {
  message *m = ud;
  if (!m->open) return;
  m->open = 0;
  lmp_msg_unhold(m->data, m->len, m->nobj);
  m->nobj = 0;
}

static int msg_closed(void *ud) { return !((message *)ud)->open; }

static int msg_len(lua_State *L) {
  message *m = lmp_checkhandle(L, 1);
  lua_pushinteger(L, (lua_Integer)m->len);
  return 1;
}

static int msg_tostring(lua_State *L) {
  message *m = lua_touserdata(L, 1);
  lua_pushfstring(L, MESSAGE " (%I bytes)", (lua_Integer)m->len);
  return 1;
}

static const luaL_Reg msg_metameth[] = {{"__len", msg_len}, {NULL, NULL}};

/* bytes() -> the message's bytes as a string (a key for messages alike) */
static int msg_bytes(lua_State *L) {
  message *m = lmp_checkhandle(L, 1);
  if (!m->open) return luaL_error(L, "attempt to use a closed message");
  lua_pushlstring(L, m->data, m->len);
  return 1;
}

/* objects() -> how many shared objects the message names */
static int msg_objects(lua_State *L) {
  message *m = lmp_checkhandle(L, 1);
  if (!m->open) return luaL_error(L, "attempt to use a closed message");
  lua_pushinteger(L, (lua_Integer)m->nobj);
  return 1;
}

static const luaL_Reg msg_meth[] = {
  {"bytes", msg_bytes}, {"objects", msg_objects}, {NULL, NULL}
};

const lmp_class lmp_message_class = {
  .name = MESSAGE, .what = "message", .size = sizeof(message),
  .meth = msg_meth, .metameth = msg_metameth, .tostring = msg_tostring,
  .close = msg_close, .closed = msg_closed, .plain = 1,
};

char *lmp_msg_new(lua_State *L, size_t n, size_t nobj) {
  /* A message that names no object holds nothing but its bytes: it needs
   * no finalizer. */
  message *m = nobj == 0
    ? lmp_newhandle_plain(L, &lmp_message_class, sizeof(message) + n)
    : lmp_newhandle(L, &lmp_message_class, sizeof(message) + n, 0);
  m->len = n;
  return m->data;
}

int lmp_msg_hold(const char *p, size_t n, size_t *held) {
  holding h = {0, SIZE_MAX, 0};
  lmp_msg_walk(p, n, hold_one, &h);
  if (h.failed) {
    lmp_msg_unhold(p, n, h.n);
    return -ENOMEM;
  }
  *held = h.n;
  return 0;
}

void lmp_msg_unhold(const char *p, size_t n, size_t nobj) {
  holding h = {0, nobj, 0};
  if (nobj > 0) lmp_msg_walk(p, n, unhold_one, &h);
}

void lmp_msg_open(lua_State *L, size_t nobj) {
  message *m = lua_touserdata(L, -1);
  m->nobj = 0;
  if (nobj > 0 && lmp_msg_hold(m->data, m->len, &m->nobj) < 0)
    lmp_nomem(L, 0);
  m->open = 1;
}

void lmp_msg_push(lua_State *L, const char *p, size_t n, size_t nobj) {
  memcpy(lmp_msg_new(L, n, nobj), p, n);
  lmp_msg_open(L, nobj);
}

const char *lmp_tomsg(lua_State *L, int idx, size_t *n, size_t *nobj) {
  message *m;
  if (lmp_classof(L, idx) != &lmp_message_class) return NULL;
  m = lua_touserdata(L, idx);
  if (!m->open) luaL_error(L, "attempt to use a closed message");
  *n = m->len;
  if (nobj != NULL) *nobj = m->nobj;
  return m->data;
}

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  for (; v >= 0x80; v >>= 7) n++;
  return n;
}

/* The bytes an array of n Messages takes: its head (the version, the
 * table's tag and count, no pairs), each message's head and bytes, and
 * the end. */
static size_t array_size(const lmp_span *s, int n) {
  size_t total = 2 + varint_len((uint64_t)n) + 1 + 1;
  int i;
  for (i = 0; i < n; i++)
    total += 1 + varint_len(s[i].nobj) + varint_len(s[i].n) + s[i].n;
  return total;
}

void lmp_msg_push_array(lua_State *L, const lmp_span *s, int n) {
  size_t nobj = 0;
  char *p;
  int i;
  for (i = 0; i < n; i++) nobj += s[i].nobj;
  p = lmp_msg_new(L, array_size(s, n), nobj);
  *p++ = LMP_CODEC_VERSION;
  *p++ = LMP_TAG_TABLE;
  p = lmp_varint_put(p, (uint64_t)n);
  *p++ = 0; /* no pairs */
  for (i = 0; i < n; i++) {
    *p++ = LMP_TAG_MSG;
    p = lmp_varint_put(lmp_varint_put(p, s[i].nobj), s[i].n);
    memcpy(p, s[i].p, s[i].n);
    p += s[i].n;
  }
  *p = LMP_TAG_NIL;
  lmp_msg_open(L, nobj);
}
