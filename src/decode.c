/* decode.c -- the message decoder, which reads untrusted bytes back into
 * Lua values, and the walker that releases a message's objects without Lua.
 * The format, and what the decoder refuses, is described at the top of
 * codec.c.
 */

#include <string.h>

#include "codec.h"

/* ------------------------------------------------------------- SipHash */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                         \
  do {                                                                   \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);            \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                               \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                               \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);            \
  } while (0)

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  int i;
  for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* SipHash-2-4 (Aumasson and Bernstein) of in[0..n) under a 16-byte key. */
static uint64_t siphash(const uint8_t *key, const unsigned char *in,
                        size_t n) {
  uint64_t k0 = le64(key), k1 = le64(key + 8), m, b = (uint64_t)n << 56;
  uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
  const unsigned char *end = in + (n & ~(size_t)7);
  int i;
  for (; in != end; in += 8) {
    m = le64(in);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  for (i = (int)(n & 7) - 1; i >= 0; i--) b |= (uint64_t)in[i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t lmp_codemac(const char *code, size_t n, int *ok) {
  *ok = lmp_arena_ready();
  return *ok ? siphash(lmp_arena_key(), (const unsigned char *)code, n) : 0;
}

/* ------------------------------------------------------------ decoding */

typedef struct dec {
  lua_State *L;
  const unsigned char *p, *end;
  int depth;
  int base;          /* stack index of the first value pushed */
  int refs;          /* stack index of the kept values, 0 until needed */
  lua_Integer count; /* tables and functions decoded */
} dec;

static void decvalue(dec *d);
static void decother(dec *d, int tag);

static NORETURN void bad(dec *d, const char *what) {
  lmp_codec_raise(d->L, "malformed message: %s", what);
}

static uint64_t longvarint(dec *d) {
  uint64_t v = 0;
  int shift;
  for (shift = 0;; shift += 7) {
    unsigned c;
    if (d->p == d->end) bad(d, "truncated");
    c = *d->p++;
    if (shift == 63 && c > 1) bad(d, "integer out of range");
    v |= (uint64_t)(c & 0x7f) << shift;
    if (c < 0x80) return v;
  }
}

/* Most varints are one byte. */
static inline uint64_t getvarint(dec *d) {
  if (d->p != d->end && *d->p < 0x80) return *d->p++;
  return longvarint(d);
}

/* A length: no more than the bytes left. */
static size_t getlen(dec *d) {
  uint64_t n = getvarint(d);
  if (n > (uint64_t)(d->end - d->p)) bad(d, "truncated");
  return (size_t)n;
}

static inline void denter(dec *d) {
  if (d->depth >= MAXDEPTH) bad(d, "nesting too deep");
  if (d->depth >= PRESTACK && !lua_checkstack(d->L, LEVELSTACK + 8))
    lmp_codec_raise(d->L, "stack overflow");
  d->depth++;
}

/* Numbers the table or function on the top and keeps it if a ref or join
 * will name it. */
static inline void keep(dec *d, int tag) {
  lua_State *L = d->L;
  d->count++;
  if (!(tag & T_KEEP)) return;
  if (d->refs == 0) { /* slip it in under everything decoded so far */
    lua_newtable(L);
    lua_insert(L, d->base);
    d->refs = d->base;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->refs, d->count);
}

/* Pushes kept value k. */
static void getref(dec *d, uint64_t k) {
  if (d->refs == 0 || k == 0 || k > (uint64_t)d->count ||
      lua_rawgeti(d->L, d->refs, (lua_Integer)k) == LUA_TNIL)
    bad(d, "bad reference");
}

/* Reads the tag of the next value. */
static inline int gettag(dec *d) {
  if (d->p == d->end) bad(d, "truncated");
  return *d->p++;
}

/* Pushes the value whose tag has just been read.  The scalars are read
 * here, inlined into the loops that need them, since a message is mostly
 * made of them. */
static inline __attribute__((always_inline)) void decany(dec *d, int tag) {
  lua_State *L = d->L;
  if (tag >= T_SHORTSTR) {
    size_t n = (size_t)(tag - T_SHORTSTR);
    if (tag >= T_FIXINT) {
      lua_pushinteger(L, tag - T_FIXINT);
      return;
    }
    if (n > (size_t)(d->end - d->p)) bad(d, "truncated");
    lua_pushlstring(L, (const char *)d->p, n);
    d->p += n;
    return;
  }
  switch (tag) {
    case T_FALSE:
    case T_TRUE:
      lua_pushboolean(L, tag == T_TRUE);
      break;
    case T_INT: {
      uint64_t z = getvarint(d);
      lua_pushinteger(L, (lua_Integer)((z & 1) ? ~(z >> 1) : z >> 1));
      break;
    }
    case T_FLOAT: {
      lua_Number v;
      if (d->end - d->p < 8) bad(d, "truncated");
      memcpy(&v, d->p, 8);
      d->p += 8;
      lua_pushnumber(L, v);
      break;
    }
    default:
      decother(d, tag);
  }
}

static void decvalue(dec *d) { decany(d, gettag(d)); }

static void dectable(dec *d, int tag) {
  lua_State *L = d->L;
  uint64_t narr = getvarint(d), i;
  int nhash;
  if (narr > (uint64_t)(d->end - d->p)) bad(d, "truncated");
  if (d->p == d->end) bad(d, "truncated");
  nhash = *d->p++;
  denter(d);
  /* Presize, but let a huge claimed array grow as it really arrives. */
  lua_createtable(L, narr > (1 << 20) ? 1 << 20 : (int)narr, nhash);
  keep(d, tag);
  for (i = 1; i <= narr; i++) {
    decany(d, gettag(d));
    lua_rawseti(L, -2, (lua_Integer)i);
  }
  while ((tag = gettag(d)) != T_NIL) {
    if (tag == T_META) { /* a class: the metatable itself */
      decany(d, gettag(d));
      if (!lua_istable(L, -1)) bad(d, "bad metatable");
      lua_setmetatable(L, -2);
      continue;
    }
    if (tag == T_INDEX) { /* the metatable {__index = V} */
      lua_createtable(L, 0, 1);
      decany(d, gettag(d));
      if (!lua_istable(L, -1) && !lua_isfunction(L, -1))
        bad(d, "bad metatable");
      lua_setfield(L, -2, "__index");
      lua_setmetatable(L, -2);
      continue;
    }
    if (tag == T_FLOAT && d->end - d->p >= 8) {
      lua_Number k;
      memcpy(&k, d->p, 8);
      if (k != k) bad(d, "bad table key"); /* NaN */
    }
    decany(d, tag); /* no other tag decodes to nil or NaN */
    decany(d, gettag(d));
    lua_rawset(L, -3);
  }
  d->depth--;
}

typedef struct reader {
  const char *p;
  size_t n;
} reader;

static const char *readcode(lua_State *L, void *ud, size_t *n) {
  reader *r = ud;
  const char *p = r->p;
  (void)L;
  *n = r->n;
  r->n = 0;
  return *n ? p : NULL;
}

static int nups(lua_State *L, int idx) {
  lua_Debug ar;
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  return ar.nups;
}

/* Compares a MAC in constant time, and so that no single comparison of
 * the stored bytes with the expected ones can be observed (by timing, or
 * by a fuzzer tracing comparisons). */
static int same_mac(uint64_t mac, const unsigned char *stored) {
  unsigned char want[8];
  volatile unsigned diff = 0;
  int i;
  memcpy(want, &mac, 8);
  for (i = 0; i < 8; i++) diff |= (unsigned)(want[i] ^ stored[i]);
  return diff == 0;
}

static void decfunction(dec *d, int tag) {
  lua_State *L = d->L;
  uint64_t n = getvarint(d), mac;
  size_t len = getlen(d);
  reader r;
  int i, ok;
  if (n > 255) bad(d, "bad function");
  if ((size_t)(d->end - d->p) < 8 || len > (size_t)(d->end - d->p) - 8)
    bad(d, "truncated");
  r.p = (const char *)d->p + 8;
  r.n = len;
  mac = lmp_codemac(r.p, len, &ok);
  if (!ok || !same_mac(mac, d->p)) bad(d, "bad function signature");
  d->p += 8 + len;
  denter(d);
  if (lua_load(L, readcode, &r, "=message", "b") != LUA_OK) {
    lua_pop(L, 1);
    bad(d, "bad function");
  }
  if (nups(L, -1) != (int)n) bad(d, "bad function");
  keep(d, tag);
  for (i = 1; i <= (int)n; i++) {
    if (d->p < d->end && *d->p == T_JOIN) {
      uint64_t k, j;
      d->p++;
      k = getvarint(d);
      j = getvarint(d);
      getref(d, k);
      if (!lua_isfunction(L, -1) || lua_iscfunction(L, -1) || j == 0 ||
          j > (uint64_t)nups(L, -1))
        bad(d, "bad upvalue join");
      lua_upvaluejoin(L, -2, i, -1, (int)j);
      lua_pop(L, 1);
    } else {
      decvalue(d);
      lua_setupvalue(L, -2, i);
    }
  }
  d->depth--;
}

/* Copies s for an error message, making unprintable bytes '?'. */
static void printable(char *buf, size_t sz, const unsigned char *s, size_t n) {
  size_t i;
  if (n > sz - 1) n = sz - 1;
  for (i = 0; i < n; i++)
    buf[i] = (s[i] >= 32 && s[i] < 127) ? (char)s[i] : '?';
  buf[n] = '\0';
}

/* T_NAME and T_MODULE: resolve the name in this process's package.loaded. */
static void decname(dec *d, int tag) {
  lua_State *L = d->L;
  const unsigned char *mod, *field = NULL;
  size_t mlen, flen = 0;
  char m[64], f[64];
  int t;
  mlen = getlen(d);
  mod = d->p;
  d->p += mlen;
  if (tag == T_NAME) {
    flen = getlen(d);
    field = d->p;
    d->p += flen;
  }
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_pushlstring(L, (const char *)mod, mlen);
    t = lua_rawget(L, -2);
    if (field != NULL && t == LUA_TTABLE) {
      lua_pushlstring(L, (const char *)field, flen);
      t = lua_rawget(L, -2);
      lua_remove(L, -2);
      if (t == LUA_TFUNCTION) {
        lua_remove(L, -2);
        return;
      }
    } else if (field == NULL && (t == LUA_TTABLE || t == LUA_TFUNCTION)) {
      lua_remove(L, -2);
      return;
    }
  }
  printable(m, sizeof m, mod, mlen);
  if (field == NULL)
    lmp_codec_raise(L, "cannot receive module %s: not loaded here", m);
  printable(f, sizeof f, field, flen);
  lmp_codec_raise(L, "cannot receive C function %s.%s: not loaded here", m, f);
}

static void decobject(dec *d) {
  uint64_t type = getvarint(d), off = getvarint(d);
  if (type == 0 || type >= LMP_T_MAX || !lmp_obj_check(off, (int)type))
    bad(d, "bad object reference");
  lmp_pushobj(d->L, LMP_PTR(off));
}

/* Tables, functions, names, objects, refs and the rarer scalars. */
static void decother(dec *d, int tag) {
  lua_State *L = d->L;
  switch (tag) {
    case T_NIL:
      lua_pushnil(L);
      break;
    case T_STR: {
      size_t n = getlen(d);
      lua_pushlstring(L, (const char *)d->p, n);
      d->p += n;
      break;
    }
    case T_TABLE:
    case T_TABLE | T_KEEP:
      dectable(d, tag);
      break;
    case T_FUNC:
    case T_FUNC | T_KEEP:
      decfunction(d, tag);
      break;
    case T_REF:
      getref(d, getvarint(d));
      break;
    case T_GLOBALS:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      break;
    case T_NAME:
    case T_MODULE:
      decname(d, tag);
      break;
    case T_OBJ:
      decobject(d);
      break;
    default:
      bad(d, "unknown tag");
  }
}

/* Readies d to read the message [p, p+n), past its version byte. */
static void decinit(dec *d, lua_State *L, const char *p, size_t n) {
  if (!lua_checkstack(L, ENTRYSTACK)) lmp_codec_raise(L, "stack overflow");
  d->L = L;
  d->p = (const unsigned char *)p;
  d->end = d->p + n;
  d->depth = 0;
  d->count = 0;
  d->refs = 0;
  if (n == 0) bad(d, "empty");
  if (*d->p++ != VERSION) bad(d, "unknown version");
  d->base = lua_gettop(L) + 1;
}

static void decdone(dec *d) {
  if (d->p != d->end) bad(d, "trailing bytes");
  if (d->refs != 0) lua_remove(d->L, d->refs);
}

void lmp_decode(lua_State *L, const char *p, size_t n) {
  dec d;
  decinit(&d, L, p, n);
  decvalue(&d);
  decdone(&d);
}

/* Decodes a message that is a table into the table at idx: its array items
 * go to t[at], t[at+1]... (raw, holes skipped), its other fields are read
 * and dropped.  Returns the number of array items. */
static lua_Integer decode_into(lua_State *L, const char *p, size_t n, int idx,
                               lua_Integer at) {
  dec d;
  uint64_t narr, i;
  int tag;
  decinit(&d, L, p, n);
  tag = gettag(&d);
  if ((tag & ~T_KEEP) != T_TABLE) bad(&d, "not a table");
  narr = getvarint(&d);
  if (narr > (uint64_t)(d.end - d.p)) bad(&d, "truncated");
  if (d.p == d.end) bad(&d, "truncated");
  d.p++; /* the size hint */
  denter(&d);
  lua_pushvalue(L, idx); /* what a ref to the message's table names */
  keep(&d, tag);
  lua_pop(L, 1);
  for (i = 0; i < narr; i++) {
    decany(&d, gettag(&d));
    lua_rawseti(L, idx, (lua_Integer)((lua_Unsigned)at + i)); /* wraps */
  }
  while ((tag = gettag(&d)) != T_NIL) {
    if (tag == T_META || tag == T_INDEX) {
      decany(&d, gettag(&d));
    } else {
      decany(&d, tag);
      decany(&d, gettag(&d));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  d.depth--;
  decdone(&d);
  return (lua_Integer)narr;
}

/* ------------------------------------------------------------- walking */

/* lmp_msg_walk reads a message as the decoder does, without Lua: it only
 * needs to find the objects, so it checks bounds and depth and skips the
 * rest. */

typedef struct walker {
  const unsigned char *p, *end;
  void (*fn)(lmp_obj *);
} walker;

static int wvarint(walker *w, uint64_t *v) {
  int shift;
  *v = 0;
  for (shift = 0; shift < 64; shift += 7) {
    unsigned c;
    if (w->p == w->end) return -1;
    c = *w->p++;
    *v |= (uint64_t)(c & 0x7f) << shift;
    if (c < 0x80) return 0;
  }
  return -1;
}

static int wskip(walker *w, uint64_t n) {
  if (n > (uint64_t)(w->end - w->p)) return -1;
  w->p += n;
  return 0;
}

static int wlen(walker *w) {
  uint64_t n;
  return wvarint(w, &n) < 0 ? -1 : wskip(w, n);
}

static int wvalue(walker *w, int depth) {
  uint64_t n, k, i;
  int tag;
  if (w->p == w->end) return -1;
  tag = *w->p++;
  if (tag >= T_FIXINT) return 0;
  if (tag >= T_SHORTSTR) return wskip(w, (uint64_t)(tag - T_SHORTSTR));
  switch (tag) {
    case T_NIL: case T_FALSE: case T_TRUE: case T_GLOBALS:
      return 0;
    case T_INT: case T_REF:
      return wvarint(w, &n);
    case T_FLOAT:
      return wskip(w, 8);
    case T_STR: case T_MODULE:
      return wlen(w);
    case T_NAME:
      return wlen(w) < 0 ? -1 : wlen(w);
    case T_TABLE:
    case T_TABLE | T_KEEP:
      if (depth >= MAXDEPTH || wvarint(w, &n) < 0 || wskip(w, 1) < 0)
        return -1;
      for (i = 0; i < n; i++)
        if (wvalue(w, depth + 1) < 0) return -1;
      for (;;) {
        if (w->p == w->end) return -1;
        if (*w->p == T_NIL) return wskip(w, 1);
        if (*w->p == T_INDEX || *w->p == T_META) {
          w->p++;
          if (wvalue(w, depth + 1) < 0) return -1;
          continue;
        }
        if (wvalue(w, depth + 1) < 0 || wvalue(w, depth + 1) < 0) return -1;
      }
    case T_FUNC:
    case T_FUNC | T_KEEP:
      if (depth >= MAXDEPTH || wvarint(w, &n) < 0 || n > 255 ||
          wvarint(w, &k) < 0 || wskip(w, 8) < 0 || wskip(w, k) < 0)
        return -1;
      for (i = 0; i < n; i++) {
        if (w->p < w->end && *w->p == T_JOIN) {
          w->p++;
          if (wvarint(w, &k) < 0 || wvarint(w, &k) < 0) return -1;
        } else if (wvalue(w, depth + 1) < 0) {
          return -1;
        }
      }
      return 0;
    case T_OBJ:
      if (wvarint(w, &k) < 0 || wvarint(w, &n) < 0) return -1;
      if (k > 0 && k < LMP_T_MAX && lmp_obj_check(n, (int)k))
        w->fn(LMP_PTR(n));
      return 0;
    default:
      return -1;
  }
}

int lmp_msg_walk(const char *p, size_t n, void (*fn)(lmp_obj *)) {
  walker w;
  if (n == 0 || p[0] != VERSION) return -1;
  w.p = (const unsigned char *)p + 1;
  w.end = (const unsigned char *)p + n;
  w.fn = fn;
  return wvalue(&w, 0);
}

static int decode_raw(lua_State *L) {
  lmp_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

int lmp_decode_protected(lua_State *L, const char *p, size_t n) {
  lua_pushcfunction(L, decode_raw);
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, (lua_Integer)n);
  return lua_pcall(L, 2, 1, 0);
}

void lmp_msg_release(const char *p, size_t n) {
  lmp_msg_walk(p, n, lmp_obj_decref);
}

/* Counted references: *counter says how many of the message's objects,
 * in walk order, have been taken, so that a process killed half-way
 * through taking them leaves a count its reaper can trust. */
static _Atomic uint64_t *walk_counter;
static uint64_t walk_limit;

static void retain_one(lmp_obj *o) {
  lmp_obj_incref(o);
  atomic_fetch_add(walk_counter, 1);
}

static void release_one(lmp_obj *o) {
  if (walk_limit > 0) {
    walk_limit--;
    lmp_obj_decref(o);
  }
}

void lmp_msg_retain_counted(const char *p, size_t n, _Atomic uint64_t *count) {
  walk_counter = count;
  lmp_msg_walk(p, n, retain_one);
}

/* Drops the references counted in *count, lowering the count before each
 * drop: a process killed half-way leaves a count its reaper can trust
 * (at worst one reference too many is left, never one dropped twice). */
static void unretain_one(lmp_obj *o) {
  if (atomic_load(walk_counter) > 0) {
    atomic_fetch_sub(walk_counter, 1);
    lmp_obj_decref(o);
  }
}

void lmp_msg_unretain_counted(const char *p, size_t n,
                              _Atomic uint64_t *count) {
  walk_counter = count;
  lmp_msg_walk(p, n, unretain_one);
}

void lmp_msg_release_counted(const char *p, size_t n, uint64_t count) {
  walk_limit = count;
  lmp_msg_walk(p, n, release_one);
}

/* ------------------------------------------------------------ bindings */

/* decode(s) -> value */
int lmp_codec_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lmp_decode(L, s, n);
  return 1;
}

/* decode_into(s, t, at) -> n: the array items of the table that s encodes,
 * stored in t from index at on, without making that table. */
int lmp_codec_decode_into(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer at;
  luaL_checktype(L, 2, LUA_TTABLE);
  at = luaL_checkinteger(L, 3);
  lua_pushinteger(L, decode_into(L, s, n, 2, at));
  return 1;
}
