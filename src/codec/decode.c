/* decode.c -- the decoder: untrusted bytes back into Lua values (the
 * format, and what the decoder refuses, is in codec.h).
 */

#include <ctype.h>
#include <string.h>

#include "codec.h"

/* ------------------------------------------------------------ decoding */

typedef struct dec {
  lua_State *L;
  const unsigned char *p, *end;
  int depth;
  int base;          /* stack index of the first value pushed */
  int refs;          /* stack index of the kept values, 0 until needed */
  lua_Integer count; /* tables and functions decoded */
  int plain;         /* data only: no code, names, objects or metatables */
  int requires;      /* require a module named and not loaded here */
} dec;

static void decvalue(dec *d);
static void decother(dec *d, int tag);

static __attribute__((noreturn)) void bad(dec *d, const char *what) {
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
  if (d->depth >= LMP_CODEC_MAXDEPTH) bad(d, "nesting too deep");
  if (d->depth >= LMP_CODEC_PRESTACK &&
      !lua_checkstack(d->L, LMP_CODEC_LEVELSTACK + 8))
    lmp_codec_raise(d->L, "stack overflow");
  d->depth++;
}

/* The table of kept values: refs by their numbers, objects met again by
 * -(offset + 1). */
static void refs(dec *d) {
  if (d->refs == 0) { /* slip it in under everything decoded so far */
    lua_newtable(d->L);
    lua_insert(d->L, d->base);
    d->refs = d->base;
  }
}

/* Numbers the table or function on the top and keeps it if a ref or join
 * will name it. */
static inline void keep(dec *d, int tag) {
  lua_State *L = d->L;
  d->count++;
  if (!(tag & LMP_TAG_KEEP)) return;
  refs(d);
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
  if (tag >= LMP_TAG_SHORTSTR) {
    size_t n = (size_t)(tag - LMP_TAG_SHORTSTR);
    if (tag >= LMP_TAG_FIXINT) {
      lua_pushinteger(L, tag - LMP_TAG_FIXINT);
      return;
    }
    if (n > (size_t)(d->end - d->p)) bad(d, "truncated");
    lua_pushlstring(L, (const char *)d->p, n);
    d->p += n;
    return;
  }
  switch (tag) {
    case LMP_TAG_FALSE:
    case LMP_TAG_TRUE:
      lua_pushboolean(L, tag == LMP_TAG_TRUE);
      break;
    case LMP_TAG_INT: {
      uint64_t z = getvarint(d);
      lua_pushinteger(L, lmp_unzigzag(z));
      break;
    }
    case LMP_TAG_FLOAT: {
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

static void printable(char *buf, size_t sz, const unsigned char *s, size_t n);

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
  while ((tag = gettag(d)) != LMP_TAG_NIL) {
    if (d->plain && (tag == LMP_TAG_METANAME || tag == LMP_TAG_META))
      lmp_codec_raise(L, "cannot receive a metatable from outside the "
                      "process family");
    if (tag == LMP_TAG_METANAME) { /* a metatable registered by name */
      size_t n = getlen(d);
      char name[64];
      lua_pushlstring(L, (const char *)d->p, n);
      d->p += n;
      /* Only one that is its own name's and has no finalizer, as the
       * encoder sends: the bytes may name any key of the registry. */
      if (lua_rawget(L, LUA_REGISTRYINDEX) != LUA_TTABLE ||
          lua_getfield(L, -1, "__gc") != LUA_TNIL ||
          lua_getfield(L, -2, "__name") != LUA_TSTRING ||
          lua_rawlen(L, -1) != n ||
          memcmp(lua_tostring(L, -1), d->p - n, n) != 0) {
        printable(name, sizeof name, d->p - n, n);
        lmp_codec_raise(L, "cannot receive metatable %s: not registered here",
                        name);
      }
      lua_pop(L, 2);
      lua_setmetatable(L, -2);
      continue;
    }
    if (tag == LMP_TAG_META) { /* the metatable itself */
      decany(d, gettag(d));
      if (!lua_istable(L, -1)) bad(d, "bad metatable");
      lua_setmetatable(L, -2);
      continue;
    }
    if (tag == LMP_TAG_FLOAT && d->end - d->p >= 8) {
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
    if (d->p < d->end && *d->p == LMP_TAG_JOIN) {
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

/* Whether this process requires the modules a message names and it has
 * not loaded, as unpickling imports: a process started from a message
 * (spawn, forkserver) has loaded nothing of its parent's; a fork has all
 * its parent loaded, and a name it lacks is refused. */
static int requires_modules;

/* Requires the module a message names and this process has not loaded:
 * 1 if it loaded, 0 if it is no module name or would not load. */
static int require_module(lua_State *L, const unsigned char *mod,
                          size_t mlen) {
  size_t i;
  if (mlen == 0 || mlen > 128) return 0;
  for (i = 0; i < mlen; i++)
    if (!(isalnum(mod[i]) || mod[i] == '_' || mod[i] == '.' ||
          mod[i] == '-'))
      return 0;
  if (lua_getglobal(L, "require") != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushlstring(L, (const char *)mod, mlen);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* The handles made of the descriptors this process was handed, in the
 * registry under HANDED_KEY, by number. */
static lmp_handed_make handed_make;
static const char HANDED_KEY = 'h';

void lmp_codec_handed_maker(lmp_handed_make make) { handed_make = make; }

/* LMP_TAG_CONN: the handle of the k-th descriptor handed. */
static void dechanded(dec *d) {
  lua_State *L = d->L;
  uint64_t k = getvarint(d), flags = getvarint(d);
  uint64_t type = getvarint(d), off = getvarint(d);
  if (d->plain) bad(d, "a connection from outside the process family");
  if (type != 0 && (type >= LMP_T_MAX || !lmp_obj_check(off, (int)type)))
    bad(d, "bad object reference");
  if (handed_make == NULL || k >= LMP_MAX_HANDED)
    bad(d, "bad connection");
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &HANDED_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 4, 0);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &HANDED_KEY);
  }
  if (lua_rawgeti(L, -1, (lua_Integer)k + 1) == LUA_TNIL) {
    int fd = lmp_handed_take(k);
    lua_pop(L, 1);
    if (fd < 0)
      lmp_codec_raise(L, "cannot receive a connection: %s", fd == -1 ?
                      "only the process it starts is handed one" :
                      "its descriptor was taken");
    handed_make(L, fd, (unsigned)flags, type != 0 ? off : 0);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, (lua_Integer)k + 1);
  }
  lua_remove(L, -2);
}

/* LMP_TAG_NAME and LMP_TAG_MODULE: resolve the name in this process's
 * package.loaded (requiring the module if it is not there and the decode
 * asks). */
static void decname(dec *d, int tag) {
  lua_State *L = d->L;
  const unsigned char *mod, *field = NULL;
  size_t mlen, flen = 0;
  char m[64], f[64];
  int t, tries;
  mlen = getlen(d);
  mod = d->p;
  d->p += mlen;
  if (tag == LMP_TAG_NAME) {
    flen = getlen(d);
    field = d->p;
    d->p += flen;
  }
  for (tries = 0; tries < 2; tries++) {
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      break;
    }
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
    lua_pop(L, 2);
    if (t != LUA_TNIL || tries > 0 || !d->requires ||
        !require_module(L, mod, mlen))
      break;
  }
  printable(m, sizeof m, mod, mlen);
  if (field == NULL)
    lmp_codec_raise(L, "cannot receive module %s: not loaded here", m);
  printable(f, sizeof f, field, flen);
  lmp_codec_raise(L, "cannot receive C function %s.%s: not loaded here", m, f);
}

/* An object; one that comes again in the message (kept) is the same
 * handle each time. */
static void decobject(dec *d, int kept) {
  lua_State *L = d->L;
  uint64_t type = getvarint(d), off = getvarint(d);
  lua_Integer key = -(lua_Integer)off - 1;
  if (type == 0 || type >= LMP_T_MAX || !lmp_obj_check(off, (int)type))
    bad(d, "bad object reference");
  if (d->refs != 0 && !kept) {
    if (lua_rawgeti(L, d->refs, key) != LUA_TNIL) return;
    lua_pop(L, 1);
  }
  lmp_pushobj(L, LMP_PTR(off));
  if (kept) {
    refs(d);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->refs, key);
  }
}

/* Tables, functions, names, objects, refs and the rarer scalars. */
static void decother(dec *d, int tag) {
  lua_State *L = d->L;
  if (d->plain && tag != LMP_TAG_NIL && tag != LMP_TAG_STR &&
      (tag & ~LMP_TAG_KEEP) != LMP_TAG_TABLE && tag != LMP_TAG_REF)
    lmp_codec_raise(L, "cannot receive a function, a name or a shared "
                    "object from outside the process family");
  switch (tag) {
    case LMP_TAG_NIL:
      lua_pushnil(L);
      break;
    case LMP_TAG_STR: {
      size_t n = getlen(d);
      lua_pushlstring(L, (const char *)d->p, n);
      d->p += n;
      break;
    }
    case LMP_TAG_TABLE:
    case LMP_TAG_TABLE | LMP_TAG_KEEP:
      dectable(d, tag);
      break;
    case LMP_TAG_FUNC:
    case LMP_TAG_FUNC | LMP_TAG_KEEP:
      decfunction(d, tag);
      break;
    case LMP_TAG_REF:
      getref(d, getvarint(d));
      break;
    case LMP_TAG_GLOBALS:
      lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
      break;
    case LMP_TAG_NAME:
    case LMP_TAG_MODULE:
      decname(d, tag);
      break;
    case LMP_TAG_OBJ:
    case LMP_TAG_OBJ | LMP_TAG_KEEP:
      decobject(d, tag & LMP_TAG_KEEP);
      break;
    case LMP_TAG_CONN:
      dechanded(d);
      break;
    case LMP_TAG_MSG: { /* a Message again, holding what it names */
      uint64_t nobj = getvarint(d);
      size_t n = getlen(d);
      if (n == 0 || *d->p != LMP_CODEC_VERSION) bad(d, "bad message");
      lmp_msg_push(L, (const char *)d->p, n, nobj > 0);
      d->p += n;
      break;
    }
    default:
      bad(d, "unknown tag");
  }
}

/* Readies d to read the message [p, p+n), past its version byte. */
static void decinit(dec *d, lua_State *L, const char *p, size_t n) {
  if (!lua_checkstack(L, LMP_CODEC_ENTRYSTACK))
    lmp_codec_raise(L, "stack overflow");
  d->L = L;
  d->p = (const unsigned char *)p;
  d->end = d->p + n;
  d->depth = 0;
  d->count = 0;
  d->plain = 0;
  d->requires = requires_modules;
  d->refs = 0;
  if (n == 0) bad(d, "empty");
  if (*d->p++ != LMP_CODEC_VERSION) bad(d, "unknown version");
  d->base = lua_gettop(L) + 1;
}

static void decdone(dec *d) {
  if (d->p != d->end) bad(d, "trailing bytes");
  if (d->refs != 0) lua_remove(d->L, d->refs);
}

/* Decodes the value of p[0..n) onto the stack, or as plain data only. */
static void decode(lua_State *L, const char *p, size_t n, int plain) {
  dec d;
  decinit(&d, L, p, n);
  d.plain = plain;
  if (plain) d.requires = 0;
  decvalue(&d);
  decdone(&d);
}

void lmp_decode(lua_State *L, const char *p, size_t n) {
  decode(L, p, n, 0);
}

void lmp_decode_plain(lua_State *L, const char *p, size_t n) {
  decode(L, p, n, 1);
}

/* Decodes a message that is a table into the table at idx: its array items
 * go to t[at], t[at+1]... (raw, holes skipped), its other fields are read
 * and dropped.  Returns the number of array items. */
static lua_Integer decode_into(lua_State *L, const char *p, size_t n, int idx,
                               lua_Integer at, uint64_t skip) {
  dec d;
  uint64_t narr, i;
  int tag;
  decinit(&d, L, p, n);
  tag = gettag(&d);
  if ((tag & ~LMP_TAG_KEEP) != LMP_TAG_TABLE) bad(&d, "not a table");
  narr = getvarint(&d);
  if (narr > (uint64_t)(d.end - d.p)) bad(&d, "truncated");
  if (d.p == d.end) bad(&d, "truncated");
  d.p++; /* the size hint */
  denter(&d);
  lua_pushvalue(L, idx); /* what a ref to the message's table names */
  keep(&d, tag);
  lua_pop(L, 1);
  for (i = 0; i < narr && i < skip; i++) {
    decany(&d, gettag(&d));
    lua_pop(L, 1);
  }
  for (; i < narr; i++) {
    decany(&d, gettag(&d));
    lua_rawseti(L, idx, (lua_Integer)((lua_Unsigned)at + i - skip)); /* wraps */
  }
  while ((tag = gettag(&d)) != LMP_TAG_NIL) {
    if (tag == LMP_TAG_METANAME) {
      d.p += getlen(&d);
      continue;
    } else if (tag == LMP_TAG_META) {
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
  return (lua_Integer)(narr > skip ? narr - skip : 0);
}

lua_Integer lmp_decode_into(lua_State *L, const char *p, size_t n, int idx,
                            lua_Integer at, int skip) {
  return decode_into(L, p, n, lua_absindex(L, idx), at,
                     skip > 0 ? (uint64_t)skip : 0);
}

lua_Integer lmp_decode_head(const char *p, size_t n, lua_Integer *v, int k) {
  const unsigned char *q = (const unsigned char *)p, *end = q + n;
  uint64_t narr, z;
  int i;
  if (n < 3 || *q++ != LMP_CODEC_VERSION
      || (*q >= 0x80 || (*q & ~LMP_TAG_KEEP) != LMP_TAG_TABLE))
    return -1;
  q++;
  if (lmp_varint_read(&q, end, &narr) < 0 || narr < (uint64_t)k
      || narr > (uint64_t)(end - q) || q == end)
    return -1; /* (each item takes a byte at least) */
  q++; /* the size hint */
  for (i = 0; i < k; i++) {
    int tag;
    if (q == end) return -1;
    tag = *q++;
    if (tag >= LMP_TAG_FIXINT) {
      v[i] = tag - LMP_TAG_FIXINT;
    } else if (tag == LMP_TAG_INT && lmp_varint_read(&q, end, &z) == 0) {
      v[i] = lmp_unzigzag(z);
    } else {
      return -1;
    }
  }
  return (lua_Integer)narr; /* no more than n */
}

static int decode_raw(lua_State *L) {
  lmp_decode(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

static int decode_plain_raw(lua_State *L) {
  lmp_decode_plain(L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

/* Runs decoder f on [p, p+n) under lua_pcall. */
static int protected(lua_State *L, lua_CFunction f, const char *p,
                     size_t n) {
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, (void *)p);
  lua_pushinteger(L, (lua_Integer)n);
  return lua_pcall(L, 2, 1, 0);
}

int lmp_decode_protected(lua_State *L, const char *p, size_t n) {
  return protected(L, decode_raw, p, n);
}

int lmp_decode_plain_protected(lua_State *L, const char *p, size_t n) {
  return protected(L, decode_plain_raw, p, n);
}

int lmp_hold_copy(_Atomic uint64_t *refs, const char *p, size_t n,
                  size_t *held) {
  *held = 0;
  return atomic_load(refs) == 0 ? 0 : lmp_msg_hold(p, n, held);
}

int lmp_held_decode_status(lua_State *L, const char *p, size_t n,
                           size_t held) {
  int rc;
  if (held == 0) { /* nothing to let go of: no protected call */
    lmp_decode(L, p, n);
    return LUA_OK;
  }
  rc = lmp_decode_protected(L, p, n);
  lmp_msg_unhold(p, n, held);
  return rc;
}

void lmp_held_decode(lua_State *L, const char *p, size_t n, size_t held) {
  if (lmp_held_decode_status(L, p, n, held) != LUA_OK) lua_error(L);
}

void lmp_take_decode(lua_State *L, const char *p, size_t n, void *blk,
                     _Atomic uint64_t *count) {
  int rc = lmp_decode_protected(L, p, n);
  if (count != NULL) lmp_msg_unretain_counted(p, n, count);
  else lmp_msg_release(p, n);
  if (blk != NULL) lmp_free_pending(blk, LMP_PEND_OUT);
  if (rc != LUA_OK) lua_error(L);
}

/* ------------------------------------------------------------ bindings */

/* The Message or string at idx: its bytes. */
static const char *checkbytes(lua_State *L, int idx, size_t *n) {
  const char *p = lmp_tomsg(L, idx, n, NULL);
  return p != NULL ? p : luaL_checklstring(L, idx, n);
}

/* decode(m) -> value. */
int lmp_codec_decode(lua_State *L) {
  size_t n;
  const char *s = checkbytes(L, 1, &n);
  decode(L, s, n, 0);
  return 1;
}

/* require_modules(): from now on this process requires the modules that
 * the messages it decodes name and it has not loaded (a process started
 * from a message calls it first). */
int lmp_codec_require_modules(lua_State *L) {
  (void)L;
  requires_modules = 1;
  return 0;
}

/* decode_into(s, t, at) -> n: the array items of the table that s encodes,
 * stored in t from index at on, without making that table. */
int lmp_codec_decode_into(lua_State *L) {
  size_t n;
  const char *s = checkbytes(L, 1, &n);
  lua_Integer at;
  luaL_checktype(L, 2, LUA_TTABLE);
  at = luaL_checkinteger(L, 3);
  lua_pushinteger(L, decode_into(L, s, n, 2, at, 0));
  return 1;
}
