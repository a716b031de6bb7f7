/* encode.c -- the encoder: Lua values to messages (the format is in
 * codec.h), and what it refuses to send, named by the path of the value.
 */

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define MAXPATH 200 /* bytes of path in an error message */

static const char NAMES_KEY = 'n'; /* registry: value -> encoded name */
static const char DUMPS_KEY = 'd'; /* registry: function -> len, MAC, dump */

/* encode() builds its message in a C array of LOCALBUF bytes, moving to
 * an lmp_buf in a stack slot only when that overflows.  Strings and
 * Messages of ROPEMIN bytes or more it does not copy at all: it leaves a
 * gap for each of the first ROPEMAX of them, which is filled as the result
 * is made (a string by lua_concat; a Message, or what a queue or pipe
 * carries, by lmp_pieces_copy), so that their bytes are copied once,
 * straight into the message. */
#define LOCALBUF 1024
#define ROPEMIN LMP_PIECES_MIN
#define ROPEMAX LMP_PIECES_MAX

/* ------------------------------------------------------------ encoding */

/* A table, function or upvalue already met.  For a table or function, idx
 * is its number and pos the offset of its tag; for an upvalue, idx and pos
 * are those of the first function seen closing over it, and n its index
 * there. */
typedef struct seen {
  const void *p;
  size_t pos;
  uint32_t idx, n;
} seen;

/* How the encoder went down one level, kept so that an error can name the
 * path to the bad value without costing anything on success. */
typedef struct frame {
  int kind; /* F_* */
  int idx;  /* stack index of the key, or of the function */
  lua_Integer i; /* array index, or upvalue number */
} frame;

enum { F_INDEX, F_FIELD, F_KEY, F_UPVAL };

#define NINLINE 8 /* seen entries before the encoder allocates a hash */

typedef struct enc {
  lua_State *L;
  lmp_buf *b;          /* the caller's, &local, or the one in slot + 3 */
  lmp_buf local;       /* encode()'s C array, before it overflows */
  const char *root;
  const void *globals; /* the globals table, NULL until needed */
  int slot; /* stack: slot = scratch memory, +1 names cache, +2 dumps,
             * +3 the buffer encode() moves to, +4 what fills the gaps */
  int rope;  /* gaps made so far, or -1 when there are to be none */
  size_t gaps[ROPEMAX]; /* where each gap is in b */
  const char *gstrs[ROPEMAX]; /* the bytes that fill each gap, kept alive */
  size_t glens[ROPEMAX];      /* by what the rope table (slot + 4) holds */
  int depth;  /* tables and functions entered */
  int rebuilt; /* the names cache was built during this call */
  const char *wire; /* no shared object may be written: why, a format of
                     * the class's name (NULL: any may) */
  struct names *names; /* the names cache, NULL until needed */
  int conns; /* stack index of the table collecting the handed handles
              * (Connections), or 0: they cannot be sent */
  int where; /* the level whose position an error names (as error(msg,
              * level) would), counted from the C function that encodes;
              * 0: none */
  uint32_t nref;  /* tables and functions numbered */
  size_t nobj;    /* objects written */
  seen *ents;
  size_t nents, cap;
  uint32_t *hash; /* index + 1 into ents; NULL while cap == NINLINE */
  seen inl[NINLINE];
  frame frames[LMP_CODEC_MAXDEPTH];
} enc;

static void encvalue(enc *e, int idx);
static void encother(enc *e, int idx, int t);
static int enchanded(enc *e, int idx);

void lmp_codec_raise(lua_State *L, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_error(L);
  __builtin_unreachable();
}

/* Raises the message on the top of the stack, after the position of
 * level e->where when there is one. */
static __attribute__((noreturn)) void raise_at(enc *e) {
  lua_State *L = e->L;
  if (e->where > 0) {
    luaL_where(L, e->where);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  lua_error(L);
  __builtin_unreachable();
}

static __attribute__((noreturn)) void nomem(enc *e) {
  lua_pushliteral(e->L, "not enough memory");
  raise_at(e);
}

static int isident(const char *s, size_t n) {
  static const char *const reserved[] = {
    "and", "break", "do", "else", "elseif", "end", "false", "for",
    "function", "goto", "if", "in", "local", "nil", "not", "or", "repeat",
    "return", "then", "true", "until", "while", NULL
  };
  size_t i;
  int k;
  if (n == 0 || n > 40 || (s[0] >= '0' && s[0] <= '9')) return 0;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9')))
      return 0;
  }
  for (k = 0; reserved[k] != NULL; k++)
    if (strlen(reserved[k]) == n && memcmp(reserved[k], s, n) == 0) return 0;
  return 1;
}

/* Writes "[key]", or ".key" for a name, for the key at idx into tmp (at
 * least 128 bytes); returns the length. */
static size_t keytext(lua_State *L, int idx, char *tmp) {
  const size_t sz = 128;
  int n;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t len, i;
      const char *s = lua_tolstring(L, idx, &len);
      if (isident(s, len)) return (size_t)snprintf(tmp, sz, ".%s", s);
      n = 0;
      tmp[n++] = '[';
      tmp[n++] = '"';
      for (i = 0; i < len && n < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
          tmp[n++] = '\\';
          tmp[n++] = (char)c;
        } else if (c == '\n') {
          tmp[n++] = '\\';
          tmp[n++] = 'n';
        } else if (c < 32 || c == 127) {
          n += snprintf(tmp + n, sz - (size_t)n, "\\%d", c);
        } else {
          tmp[n++] = (char)c;
        }
      }
      if (i < len) n += snprintf(tmp + n, sz - (size_t)n, "...");
      n += snprintf(tmp + n, sz - (size_t)n, "\"]");
      break;
    }
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        n = snprintf(tmp, sz, "[" LUA_INTEGER_FMT "]",
                     (LUAI_UACINT)lua_tointeger(L, idx));
      else
        n = snprintf(tmp, sz, "[" LUA_NUMBER_FMT "]",
                     (LUAI_UACNUMBER)lua_tonumber(L, idx));
      break;
    case LUA_TBOOLEAN:
      n = snprintf(tmp, sz, "[%s]", lua_toboolean(L, idx) ? "true" : "false");
      break;
    default:
      n = snprintf(tmp, sz, "[<%s>]", luaL_typename(L, idx));
      break;
  }
  return (size_t)n;
}

/* Why the value at idx cannot be sent, in words, written into buf. */
static const char *reason(lua_State *L, int idx, char *buf, size_t sz) {
  switch (lua_type(L, idx)) {
    case LUA_TLIGHTUSERDATA:
      return "light userdata";
    case LUA_TFUNCTION:
      return "C function not named in package.loaded";
    case LUA_TUSERDATA: {
      const lmp_class *c = lmp_classof(L, idx);
      int closed = c != NULL && c->type != 0; /* else a process-local one */
      if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING) {
        snprintf(buf, sz, closed ? "closed %.80s" : "userdata (%.80s)",
                 lua_tostring(L, -1));
        lua_pop(L, 1);
        return buf;
      }
      if (luaL_getmetafield(L, idx, "__name") != LUA_TNIL) lua_pop(L, 1);
      return "userdata";
    }
    default:
      return luaL_typename(L, idx);
  }
}

/* Raises "cannot send <root><path>: <why>"; why NULL means the value at
 * idx is of a kind that cannot be sent. */
static __attribute__((noreturn)) void fail(enc *e, int idx, const char *why) {
  lua_State *L = e->L;
  char buf[128], path[MAXPATH + 4], tmp[128];
  size_t n = 0, k = 0;
  int d;
  lua_checkstack(L, 8); /* if it fails, the message is all that is lost */
  for (d = 0; d < e->depth; d++) {
    frame *f = &e->frames[d];
    switch (f->kind) {
      case F_INDEX:
        k = (size_t)snprintf(tmp, sizeof tmp, "[" LUA_INTEGER_FMT "]",
                             (LUAI_UACINT)f->i);
        break;
      case F_FIELD:
        k = keytext(L, f->idx, tmp);
        break;
      case F_KEY:
        k = (size_t)snprintf(tmp, sizeof tmp, "[<key>]");
        break;
      case F_UPVAL: {
        const char *name = lua_getupvalue(L, f->idx, (int)f->i);
        lua_pop(L, 1); /* the name lives in the function's prototype */
        k = (size_t)snprintf(tmp, sizeof tmp, "<upvalue %.40s>",
                             *name ? name : "?");
        break;
      }
    }
    if (n + k > MAXPATH) { /* cut at a whole step */
      memcpy(path + n, "...", 3);
      n += 3;
      break;
    }
    memcpy(path + n, tmp, k);
    n += k;
  }
  if (why == NULL) why = reason(L, idx, buf, sizeof buf);
  lua_pushfstring(L, "cannot send %s", e->root);
  lua_pushlstring(L, path, n);
  lua_pushfstring(L, ": %s", why);
  lua_concat(L, 3);
  raise_at(e);
}

/* Makes room for n more bytes.  A message outgrowing encode()'s C array
 * moves to a buffer in a stack slot, which an error frees. */
static void grow(enc *e, size_t n) {
  lmp_buf *b = e->b;
  if (b == &e->local) {
    b = lmp_buf_new(e->L);
    lua_replace(e->L, e->slot + 3);
    if (lmp_buf_reserve(b, 2 * e->local.cap + n) != 0) nomem(e);
    memcpy(b->data, e->local.data, e->local.len);
    b->len = e->local.len;
    e->b = b;
  }
  if (lmp_buf_reserve(b, n) != 0) nomem(e);
}

static inline void need(enc *e, size_t n) {
  if (e->b->cap - e->b->len < n) grow(e, n);
}


static inline void putbyte(enc *e, int c) {
  need(e, 1);
  e->b->data[e->b->len++] = (char)c;
}

/* Appends a tag and a varint. */
static void puttagv(enc *e, int tag, uint64_t v) {
  char *p;
  need(e, 11);
  p = e->b->data + e->b->len;
  *p++ = (char)tag;
  e->b->len = (size_t)(lmp_varint_put(p, v) - e->b->data);
}

static void putbytes(enc *e, const char *s, size_t n) {
  need(e, n);
  memcpy(e->b->data + e->b->len, s, n);
  e->b->len += n;
}

static size_t hashptr(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (size_t)x;
}

static seen *findseen(enc *e, const void *p) {
  size_t i, m;
  if (e->hash == NULL) {
    for (i = 0; i < e->nents; i++)
      if (e->ents[i].p == p) return &e->ents[i];
    return NULL;
  }
  m = 2 * e->cap - 1;
  for (i = hashptr(p) & m; e->hash[i] != 0; i = (i + 1) & m)
    if (e->ents[e->hash[i] - 1].p == p) return &e->ents[e->hash[i] - 1];
  return NULL;
}

static void hashin(enc *e, size_t k) {
  size_t m = 2 * e->cap - 1, i = hashptr(e->ents[k].p) & m;
  while (e->hash[i] != 0) i = (i + 1) & m;
  e->hash[i] = (uint32_t)(k + 1);
}

/* Doubles the seen table.  Its memory is a userdata in the scratch slot, so
 * that an error raised anywhere in the encoder frees it. */
static void growseen(enc *e) {
  lua_State *L = e->L;
  size_t cap = e->cap * 2, k;
  seen *ents;
  if (cap > UINT32_MAX / 2) nomem(e);
  ents = lua_newuserdatauv(L, cap * (sizeof(seen) + 2 * sizeof(uint32_t)), 0);
  memcpy(ents, e->ents, e->nents * sizeof(seen));
  e->ents = ents;
  e->cap = cap;
  e->hash = (uint32_t *)(ents + cap);
  memset(e->hash, 0, 2 * cap * sizeof(uint32_t));
  for (k = 0; k < e->nents; k++) hashin(e, k);
  lua_replace(L, e->slot); /* drops the old memory */
}

static void addseen(enc *e, const void *p, size_t pos, uint32_t idx,
                    uint32_t n) {
  seen *s;
  if (e->nents == e->cap) growseen(e);
  s = &e->ents[e->nents];
  s->p = p;
  s->pos = pos;
  s->idx = idx;
  s->n = n;
  if (e->hash != NULL) hashin(e, e->nents);
  e->nents++;
}

/* Enters a table or function: checks depth and stack room. */
static void enter(enc *e) {
  if (e->depth >= LMP_CODEC_MAXDEPTH) fail(e, 0, "nesting too deep");
  if (e->depth >= LMP_CODEC_PRESTACK &&
      !lua_checkstack(e->L, LMP_CODEC_LEVELSTACK + 8))
    fail(e, 0, "stack overflow");
  e->depth++;
}

/* Writes a ref to s, marking its first occurrence kept. */
static void putref(enc *e, const seen *s) {
  e->b->data[s->pos] |= LMP_TAG_KEEP;
  puttagv(e, LMP_TAG_REF, s->idx);
}

/* Writes the header hdr (hl bytes) and leaves a gap for the n bytes at s,
 * which belong to the value at idx (a string, or a Message), when they are
 * long enough and gaps may still be made: the value goes into the rope
 * table, which keeps the bytes alive until the message is written out.
 * Returns whether it did. */
static int putgap(enc *e, int idx, const char *hdr, size_t hl, const char *s,
                  size_t n) {
  lua_State *L = e->L;
  if (n < ROPEMIN || e->rope < 0 || e->rope >= ROPEMAX) return 0;
  if (e->rope == 0) {
    lua_createtable(L, ROPEMAX, 0);
    lua_replace(L, e->slot + 4);
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, e->slot + 4, e->rope + 1);
  putbytes(e, hdr, hl);
  e->gaps[e->rope] = e->b->len;
  e->gstrs[e->rope] = s;
  e->glens[e->rope++] = n;
  return 1;
}

/* A string of 64 bytes or more: its length is reserved exactly, and the
 * bytes are copied once (or not at all, in a gap). */
static void putlong(enc *e, int idx, const char *s, size_t n) {
  char hdr[11], *p;
  size_t hl;
  hdr[0] = LMP_TAG_STR;
  hl = (size_t)(lmp_varint_put(hdr + 1, n) - hdr);
  if (putgap(e, idx, hdr, hl, s, n)) return;
  need(e, hl + n);
  p = e->b->data + e->b->len;
  memcpy(p, hdr, hl);
  memcpy(p + hl, s, n);
  e->b->len += hl + n;
}

/* Writes the value at idx, of type t.  The scalars are written here, with
 * as few calls into Lua as their values need, since a message is mostly
 * made of them. */
static inline __attribute__((always_inline)) void encany(enc *e, int idx,
                                                        int t) {
  lua_State *L = e->L;
  char *p;
  switch (t) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (n >= 64) {
        putlong(e, idx, s, n);
        break;
      }
      need(e, 64);
      p = e->b->data + e->b->len;
      *p = (char)(LMP_TAG_SHORTSTR + n);
      memcpy(p + 1, s, n);
      e->b->len += n + 1;
      break;
    }
    case LUA_TNUMBER:
      need(e, 11);
      p = e->b->data + e->b->len;
      if (lua_isinteger(L, idx)) {
        lua_Integer v = lua_tointeger(L, idx);
        uint64_t z = (uint64_t)v << 1;
        if (v >= 0 && v < 128) {
          *p++ = (char)(LMP_TAG_FIXINT + v);
        } else {
          *p++ = LMP_TAG_INT;
          p = lmp_varint_put(p, v < 0 ? ~z : z);
        }
      } else {
        lua_Number v = lua_tonumber(L, idx);
        *p++ = LMP_TAG_FLOAT;
        memcpy(p, &v, 8);
        p += 8;
      }
      e->b->len = (size_t)(p - e->b->data);
      break;
    case LUA_TBOOLEAN:
      putbyte(e, lua_toboolean(L, idx) ? LMP_TAG_TRUE : LMP_TAG_FALSE);
      break;
    case LUA_TNIL:
      putbyte(e, LMP_TAG_NIL);
      break;
    default:
      encother(e, idx, t);
  }
}

/* ---- names: C functions and modules */

static const void *globals(enc *e) {
  if (e->globals == NULL) {
    lua_rawgeti(e->L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    e->globals = lua_topointer(e->L, -1);
    lua_pop(e->L, 1);
  }
  return e->globals;
}

/* The names cache, registry[NAMES_KEY]: a userdata holding a set of the
 * addresses of module tables, so that telling an ordinary table from a
 * module costs no Lua call, with the map value -> where its encoded name
 * lies in the text (position << 32 | length) as its first user value and
 * the text, one block, as its second.  The map's keys are strong, so no
 * address in the set can be reused by a new table while the cache lives.
 * Building it makes no new string: a forked child that builds its own
 * adds nothing to the string table it shares with its parent, whose
 * growth would rewrite every string in it, and so copy every page that
 * holds one. */
typedef struct names {
  size_t mask;
  const char *text; /* the encoded names (user value 2) */
  lua_Integer nloaded; /* entries of package.loaded when it was made */
  int recheck; /* made before a fork: compare nloaded at the next encode */
  const void *mods[1]; /* open addressing, mask + 1 slots */
} names;

static int ismodule(const names *nm, const void *p) {
  size_t i;
  for (i = hashptr(p) & nm->mask; nm->mods[i] != NULL; i = (i + 1) & nm->mask)
    if (nm->mods[i] == p) return 1;
  return 0;
}

/* Appends n bytes at s to the names' text b. */
static void addtext(lua_State *L, lmp_buf *b, const char *s, size_t n) {
  if (lmp_buf_reserve(b, n) < 0) lmp_codec_raise(L, "not enough memory");
  memcpy(b->data + b->len, s, n);
  b->len += n;
}

/* Records map[value at v] = the encoding of module[.field], unless the
 * value already has a name. */
static void addname(lua_State *L, int map, lmp_buf *t, int v, const char *mod,
                    size_t mlen, const char *field, size_t flen) {
  char tmp[24];
  size_t at = t->len;
  lua_pushvalue(L, v);
  if (lua_rawget(L, map) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  tmp[0] = field ? LMP_TAG_NAME : LMP_TAG_MODULE;
  addtext(L, t, tmp, (size_t)(lmp_varint_put(tmp + 1, mlen) - tmp));
  addtext(L, t, mod, mlen);
  if (field) {
    addtext(L, t, tmp, (size_t)(lmp_varint_put(tmp, flen) - tmp));
    addtext(L, t, field, flen);
  }
  if (t->len - at > 0xffffffffu || at > 0x7fffffffu) { /* not nameable */
    t->len = at;
    return;
  }
  lua_pushvalue(L, v);
  lua_pushinteger(L, (lua_Integer)((uint64_t)at << 32 | (t->len - at)));
  lua_rawset(L, map);
}

/* The number of entries of package.loaded. */
static lua_Integer loadedcount(lua_State *L) {
  lua_Integer n = 0;
  if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      n++;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return n;
}

/* Whether names cache nm was made from a package.loaded of another size. */
static int stale(lua_State *L, const names *nm) {
  return nm->nloaded != loadedcount(L);
}

/* Which pass of makenames names the values of module mod: 0 for Lua's
 * own libraries and luamp, which every process has, 1 for the other
 * modules, 2 for _G.  A value gets the first name found, so a function
 * reachable under two names goes by the one a receiver surely has
 * (string.format, not a module's alias of it), whatever order lua_next
 * takes. */
static int namepass(const char *mod, size_t mlen) {
  static const char *const own[] = {
    "string", "table", "math", "io", "os", "coroutine", "utf8", "debug",
    "package", "luamp", NULL
  };
  int i;
  if (mlen == 2 && memcmp(mod, "_G", 2) == 0) return 2;
  for (i = 0; own[i] != NULL; i++)
    if (strlen(own[i]) == mlen && memcmp(own[i], mod, mlen) == 0) return 0;
  return 1;
}

/* Makes the names cache from package.loaded, stores it in the registry
 * and pushes it, the modules in the order namepass says. */
static names *makenames(lua_State *L) {
  int map, text, loaded, pass;
  size_t nmods = 0, cap = 8;
  const void *g;
  names *nm;
  lmp_buf *t;
  luaL_checkstack(L, 16, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  g = lua_topointer(L, -1);
  lua_pop(L, 1);
  lua_createtable(L, 0, 256);
  map = lua_gettop(L);
  t = lmp_buf_new(L);
  text = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE) == LUA_TTABLE) {
    loaded = lua_gettop(L);
    for (pass = 0; pass < 3; pass++) {
      lua_pushnil(L);
      while (lua_next(L, loaded)) {
        size_t mlen;
        const char *mod;
        int vt = lua_type(L, -1);
        if (lua_type(L, -2) != LUA_TSTRING) {
          lua_pop(L, 1);
          continue;
        }
        mod = lua_tolstring(L, -2, &mlen);
        if (namepass(mod, mlen) != pass) {
          lua_pop(L, 1);
          continue;
        }
        if ((vt == LUA_TTABLE && lua_topointer(L, -1) != g) ||
            lua_iscfunction(L, -1))
          addname(L, map, t, lua_gettop(L), mod, mlen, NULL, 0);
        if (vt == LUA_TTABLE) {
          int m = lua_gettop(L);
          /* luamp's own Lua functions go by name too: a copy would carry
           * the sender's state (mp.current_process would answer the
           * sender's process), and every process has luamp. */
          int own = mlen == 5 && memcmp(mod, "luamp", 5) == 0;
          nmods++;
          lua_pushnil(L);
          while (lua_next(L, m)) {
            if (lua_type(L, -2) == LUA_TSTRING &&
                (lua_iscfunction(L, -1) ||
                 (own && lua_type(L, -1) == LUA_TFUNCTION))) {
              size_t flen;
              const char *field = lua_tolstring(L, -2, &flen);
              addname(L, map, t, lua_gettop(L), mod, mlen, field, flen);
            }
            lua_pop(L, 1);
          }
        }
        lua_pop(L, 1);
      }
    }
  }
  lua_pop(L, 1); /* package.loaded */
  while (cap < 2 * nmods) cap *= 2;
  nm = lua_newuserdatauv(L, offsetof(names, mods) + cap * sizeof(void *), 2);
  nm->mask = cap - 1;
  nm->text = t->data; /* it grows no more */
  nm->nloaded = loadedcount(L);
  nm->recheck = 0;
  memset(nm->mods, 0, cap * sizeof(void *));
  lua_pushnil(L);
  while (lua_next(L, map)) {
    if (lua_type(L, -2) == LUA_TTABLE) { /* only modules are table keys */
      const void *p = lua_topointer(L, -2);
      size_t i = hashptr(p) & nm->mask;
      while (nm->mods[i] != NULL) i = (i + 1) & nm->mask;
      nm->mods[i] = p;
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, map);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, text);
  lua_setiuservalue(L, -2, 2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &NAMES_KEY);
  lua_replace(L, map);
  lua_pop(L, 1); /* the text */
  return nm;
}

/* Builds the names cache into the names slot. */
static void buildnames(enc *e) {
  if (!lua_checkstack(e->L, 16)) nomem(e);
  e->names = makenames(e->L);
  lua_replace(e->L, e->slot + 1);
  e->rebuilt = 1;
}

void lmp_codec_before_fork(lua_State *L) {
  names *nm = NULL;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &NAMES_KEY) == LUA_TUSERDATA)
    nm = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (nm == NULL || stale(L, nm)) {
    nm = makenames(L);
    lua_pop(L, 1);
  }
  /* Written only when it changes: after a fork the cache's page is its
   * child's too, and a write would copy it, in every fork of a loop that
   * sends nothing between them. */
  if (!nm->recheck) nm->recheck = 1;
}

/* Whether package.loaded still has the table at idx under the module name
 * `text` (the name as written, n bytes: its tag, length and bytes). */
static int still_loaded(lua_State *L, int idx, const char *text, size_t n) {
  size_t i = 1;
  int same;
  while (i < n && (text[i] & 0x80)) i++; /* the length's varint */
  if (++i > n) return 0;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushlstring(L, text + i, n - i);
  same = lua_istable(L, -2) && lua_rawget(L, -2) != LUA_TNIL &&
         lua_rawequal(L, -1, idx);
  lua_pop(L, 2);
  return same;
}

/* Writes the name of the value at idx (at address p) and returns 1, or
 * returns 0 when it has none.  For a table that is not a module this costs
 * no Lua call.  A module table is sent by its name only while
 * package.loaded has it there: one that was replaced or unloaded since the
 * names were read has the names read again, and travels as a table if it
 * is none of them now. */
static int putname(enc *e, int idx, const void *p, int table) {
  lua_State *L = e->L;
  if (e->names == NULL) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &NAMES_KEY) == LUA_TUSERDATA) {
      e->names = lua_touserdata(L, -1);
      lua_replace(L, e->slot + 1);
      if (e->names->recheck) { /* made before a fork: still whole? */
        if (!lua_checkstack(L, 4)) nomem(e);
        e->names->recheck = 0;
        if (stale(L, e->names)) buildnames(e);
      }
    } else {
      lua_pop(L, 1);
      buildnames(e);
    }
  }
  if (table && !ismodule(e->names, p)) return 0;
  lua_getiuservalue(L, e->slot + 1, 1);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) == LUA_TNUMBER) {
    uint64_t at = (uint64_t)lua_tointeger(L, -1);
    const char *text = e->names->text + (at >> 32);
    size_t n = (size_t)(at & 0xffffffffu);
    lua_pop(L, 2);
    if (table && !still_loaded(L, idx, text, n)) {
      if (e->rebuilt) return 0;
      buildnames(e);
      return putname(e, idx, p, table);
    }
    putbytes(e, text, n);
    return 1;
  }
  lua_pop(L, 2);
  return 0;
}

static void enccfunction(enc *e, int idx) {
  if (putname(e, idx, NULL, 0)) return;
  if (!e->rebuilt) {
    buildnames(e);
    if (putname(e, idx, NULL, 0)) return;
  }
  fail(e, idx, NULL);
}

/* ---- tables */

/* Rewrites the varint at pos, `width` bytes long, to hold v (v fits). */
static void patchvarint(enc *e, size_t pos, uint64_t v, size_t width) {
  char *p = e->b->data + pos;
  size_t i;
  for (i = 0; i + 1 < width; i++, v >>= 7) p[i] = (char)((v & 0x7f) | 0x80);
  p[i] = (char)v;
}

/* Tables are walked once with lua_next, which yields the array part first
 * and in order: the leading run of keys 1, 2, 3... goes as the array part,
 * everything after it as pairs.  Its length is patched in at the end, in
 * the width written for lua_rawlen, which is a border and so at least as
 * long as any run that starts at 1. */
static void enctable(enc *e, int idx) {
  lua_State *L = e->L;
  const void *tp = lua_topointer(L, idx);
  const seen *s;
  lua_Unsigned n, m = 0;
  size_t pos, hintpos, npairs = 0;
  int top, run;
  frame *f;
  if (tp == globals(e)) {
    putbyte(e, LMP_TAG_GLOBALS);
    return;
  }
  if ((s = findseen(e, tp)) != NULL) {
    putref(e, s);
    return;
  }
  if (putname(e, idx, tp, 1)) return;
  switch (luaL_getmetafield(L, idx, "__send")) { /* a class may refuse */
    case LUA_TNIL:
      break;
    case LUA_TBOOLEAN:
      if (!lua_toboolean(L, -1)) {
        char why[128];
        const char *name = luaL_getmetafield(L, idx, "__name") ==
            LUA_TSTRING ? lua_tostring(L, -1) : "such";
        snprintf(why, sizeof why, "%.80s objects cannot be passed "
                 "between processes", name);
        fail(e, idx, why);
      }
      /* fallthrough */
    default:
      lua_pop(L, 1);
  }
  enter(e);
  f = &e->frames[e->depth - 1];
  pos = e->b->len;
  addseen(e, tp, pos, ++e->nref, 0);
  n = lua_rawlen(L, idx);
  puttagv(e, LMP_TAG_TABLE, n);
  hintpos = e->b->len;
  putbyte(e, 0);
  run = n > 0;
  top = lua_gettop(L) + 2; /* where lua_next leaves the value */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (run) {
      if (lua_isinteger(L, top - 1) &&
          lua_tointeger(L, top - 1) == (lua_Integer)(m + 1)) {
        f->kind = F_INDEX;
        f->i = (lua_Integer)++m;
        encany(e, top, lua_type(L, top));
        lua_settop(L, top - 1);
        continue;
      }
      run = 0;
    }
    f->kind = F_KEY;
    encany(e, top - 1, lua_type(L, top - 1));
    f->kind = F_FIELD;
    f->idx = top - 1;
    encany(e, top, lua_type(L, top));
    lua_settop(L, top - 1);
    npairs++;
  }
  if (lua_getmetatable(L, idx)) {
    if (lua_getfield(L, -1, "__name") == LUA_TSTRING &&
        luaL_getmetatable(L, lua_tostring(L, -1)) == LUA_TTABLE &&
        lua_rawequal(L, -1, -3) &&
        lua_getfield(L, -1, "__gc") == LUA_TNIL) { /* registered by name */
      lua_pop(L, 1);
      size_t n;
      const char *name = lua_tolstring(L, -2, &n);
      puttagv(e, LMP_TAG_METANAME, n);
      putbytes(e, name, n);
      lua_settop(L, top - 2);
      goto done;
    }
    /* Any other: the table itself, sent with the value (a class, with
     * M.__index == M; an environment's {__index = _G}; a __call). */
    lua_settop(L, top - 1);
    putbyte(e, LMP_TAG_META);
    f->kind = F_FIELD;
    lua_pushliteral(L, "(metatable)");
    f->idx = lua_gettop(L);
    encany(e, top - 1, LUA_TTABLE);
    lua_settop(L, top - 2);
  }
done:
  putbyte(e, LMP_TAG_NIL);
  if (m != n) patchvarint(e, pos + 1, m, hintpos - pos - 1);
  e->b->data[hintpos] = (char)(npairs > 255 ? 255 : npairs);
  e->depth--;
}

/* ---- Lua functions */

static int dumpwriter(lua_State *L, const void *p, size_t n, void *ud) {
  lmp_buf *b = ud;
  (void)L;
  if (lmp_buf_reserve(b, n) != 0) return 1;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

/* Appends "varint len, MAC, bytecode" for the function at idx, from the
 * dump cache when it has it.  Bytecode depends only on the prototype, so a
 * closure's dump can be reused for as long as the closure lives. */
static void putcode(enc *e, int idx) {
  lua_State *L = e->L;
  lmp_buf *b;
  size_t start, n, hl;
  char hdr[18];
  uint64_t mac;
  int ok;
  if (lua_isnil(L, e->slot + 2)) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &DUMPS_KEY) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_createtable(L, 0, 4);
      lua_createtable(L, 0, 1);
      lua_pushliteral(L, "k");
      lua_setfield(L, -2, "__mode");
      lua_setmetatable(L, -2);
      lua_pushvalue(L, -1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &DUMPS_KEY);
    }
    lua_replace(L, e->slot + 2);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->slot + 2) == LUA_TSTRING) {
    const char *s = lua_tolstring(L, -1, &n);
    putbytes(e, s, n);
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  /* A miss: dump it.  dumpwriter reallocs, so the message must leave the
   * stack buffer first (only now: a hit costs no buffer at all). */
  if (e->b == &e->local) grow(e, e->local.cap);
  b = e->b;
  start = b->len;
  lua_pushvalue(L, idx);
  ok = lua_dump(L, dumpwriter, b, 0) == 0;
  lua_pop(L, 1);
  if (!ok) nomem(e);
  n = b->len - start;
  mac = lmp_codemac(b->data + start, n, &ok);
  if (!ok) fail(e, idx, "function (no shared arena to sign it with)");
  hl = (size_t)(lmp_varint_put(hdr, n) - hdr);
  memcpy(hdr + hl, &mac, 8);
  hl += 8;
  need(e, hl);
  memmove(b->data + start + hl, b->data + start, n);
  memcpy(b->data + start, hdr, hl);
  b->len += hl;
  lua_pushvalue(L, idx);
  lua_pushlstring(L, b->data + start, b->len - start);
  lua_rawset(L, e->slot + 2);
}

static void encfunction(enc *e, int idx) {
  lua_State *L = e->L;
  const void *fp = lua_topointer(L, idx);
  const seen *s;
  lua_Debug ar;
  uint32_t fidx;
  size_t pos;
  int i;
  frame *f;
  if ((s = findseen(e, fp)) != NULL) {
    putref(e, s);
    return;
  }
  if (putname(e, idx, NULL, 0)) return; /* one of luamp's own */
  pos = e->b->len;
  fidx = ++e->nref;
  addseen(e, fp, pos, fidx, 0);
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  puttagv(e, LMP_TAG_FUNC, ar.nups);
  putcode(e, idx);
  enter(e);
  f = &e->frames[e->depth - 1];
  f->kind = F_UPVAL;
  f->idx = idx;
  for (i = 1; i <= ar.nups; i++) {
    const void *id = lua_upvalueid(L, idx, i);
    if ((s = findseen(e, id)) != NULL) {
      char *p;
      e->b->data[s->pos] |= LMP_TAG_KEEP;
      need(e, 21);
      p = e->b->data + e->b->len;
      *p++ = LMP_TAG_JOIN;
      p = lmp_varint_put(p, s->idx);
      e->b->len = (size_t)(lmp_varint_put(p, s->n) - e->b->data);
      continue;
    }
    addseen(e, id, pos, fidx, (uint32_t)i);
    lua_getupvalue(L, idx, i);
    f->i = i;
    encvalue(e, lua_gettop(L));
    lua_pop(L, 1);
  }
  e->depth--;
}

/* Tables, functions, userdata and what cannot be sent. */
static void encother(enc *e, int idx, int t) {
  lua_State *L = e->L;
  switch (t) {
    case LUA_TTABLE:
      enctable(e, idx);
      break;
    case LUA_TFUNCTION:
      if (lua_iscfunction(L, idx))
        enccfunction(e, idx);
      else
        encfunction(e, idx);
      break;
    case LUA_TUSERDATA: {
      size_t n, nobj;
      const char *m = lmp_tomsg(L, idx, &n, &nobj);
      lmp_obj *o;
      char *p;
      if (m != NULL && e->wire != NULL && nobj > 0) {
        char why[128];
        snprintf(why, sizeof why, e->wire, "Message's object");
        fail(e, idx, why);
      }
      if (m != NULL) { /* a Message: as it is, a long one in a gap */
        char hdr[21];
        size_t hl;
        hdr[0] = LMP_TAG_MSG;
        hl = (size_t)(lmp_varint_put(lmp_varint_put(hdr + 1, nobj), n) - hdr);
        if (!putgap(e, idx, hdr, hl, m, n)) {
          putbytes(e, hdr, hl);
          putbytes(e, m, n);
        }
        e->nobj += nobj;
        break;
      }
      if (e->conns != 0 && enchanded(e, idx)) break;
      if ((o = lmp_toobj(L, idx)) == NULL) fail(e, idx, NULL);
      if (e->wire != NULL) {
        char why[128];
        const char *name = lmp_classof(L, idx)->name;
        if (strncmp(name, "luamp.", 6) == 0) name += 6;
        snprintf(why, sizeof why, e->wire, name);
        fail(e, idx, why);
      }
      need(e, 21);
      { /* Met again, it is marked at its first place, where the decoder
         * keeps the handle it makes for every later one: one object is one
         * handle in a message, as a table is one table. */
        const seen *s = findseen(e, o);
        if (s != NULL) e->b->data[s->pos] |= LMP_TAG_KEEP;
        else addseen(e, o, e->b->len, 0, 0);
      }
      p = e->b->data + e->b->len;
      *p++ = LMP_TAG_OBJ;
      p = lmp_varint_put(p, o->type);
      e->b->len = (size_t)(lmp_varint_put(p, LMP_OFF(o)) - e->b->data);
      e->nobj++;
      break;
    }
    default:
      fail(e, idx, NULL);
  }
}

static void encvalue(enc *e, int idx) { encany(e, idx, lua_type(e->L, idx)); }

/* A handle with a descriptor (a Connection), in a message that starts a
 * process: it goes as the number of its descriptor among those handed
 * with the message (the collecting table maps each handle to it, and
 * lists them from 1), its flags and its channel, an object the message
 * names.  Returns 0 if the value is no such handle. */
static int enchanded(enc *e, int idx) {
  lua_State *L = e->L;
  const lmp_class *c = lmp_classof(L, idx);
  lmp_obj *chan = NULL;
  unsigned flags;
  lua_Integer k;
  const char *why;
  char *p;
  int fd;
  if (c == NULL || c->handed == NULL) return 0;
  why = c->handed(lua_touserdata(L, idx), &fd, &flags, &chan);
  if (why != NULL) fail(e, idx, why);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->conns) == LUA_TNUMBER) {
    k = lua_tointeger(L, -1);
  } else {
    k = (lua_Integer)lua_rawlen(L, e->conns);
    if (k >= LMP_MAX_HANDED) {
      char why[80];
      snprintf(why, sizeof why, "more than %d connections in one start",
               LMP_MAX_HANDED);
      fail(e, idx, why);
    }
    lua_pushvalue(L, idx);
    lua_rawseti(L, e->conns, k + 1);
    lua_pushvalue(L, idx);
    lua_pushinteger(L, k);
    lua_rawset(L, e->conns);
  }
  lua_pop(L, 1);
  need(e, 41);
  p = e->b->data + e->b->len;
  *p++ = LMP_TAG_CONN;
  p = lmp_varint_put(p, (uint64_t)k);
  p = lmp_varint_put(p, flags);
  p = lmp_varint_put(p, chan != NULL ? (uint64_t)chan->type : 0);
  e->b->len = (size_t)(lmp_varint_put(p, chan != NULL ? LMP_OFF(chan) : 0) -
                       e->b->data);
  if (chan != NULL) e->nobj++;
  return 1;
}

/* Opens the array part of a table of n items, entered as an index path,
 * with `hint` pairs to follow; returns its frame. */
static frame *openarray(enc *e, uint64_t n, int hint) {
  frame *f;
  enter(e);
  f = &e->frames[e->depth - 1];
  f->kind = F_INDEX;
  e->nref++; /* the decoder numbers this table, as any other */
  puttagv(e, LMP_TAG_TABLE, n);
  putbyte(e, hint);
  return f;
}

/* The array of the n values on the stack from index first: {...} with its
 * nils kept in the array part, and no field n. */
static void encstack(enc *e, int first, int n) {
  frame *f = openarray(e, (uint64_t)n, 0);
  int c;
  for (c = 0; c < n; c++) {
    f->i = c + 1;
    encany(e, first + c, lua_type(e->L, first + c));
  }
  putbyte(e, LMP_TAG_NIL);
  e->depth--;
}

/* Writes the value at idx as the item of a table under the key at key,
 * entered as that table's index or field path, as encvalue would write
 * it there. */
static void encitem(enc *e, int idx, int key) {
  frame *f;
  enter(e);
  f = &e->frames[e->depth - 1];
  if (lua_isinteger(e->L, key)) {
    f->kind = F_INDEX;
    f->i = lua_tointeger(e->L, key);
  } else {
    f->kind = F_FIELD;
    f->idx = key;
  }
  encvalue(e, idx);
  e->depth--;
}

/* Writes the n items t[i], t[i+1]... (t at idx) as a table of n array
 * items, holes kept as nils, and the field n: what table.pack would make of
 * those values.  An item that cannot be sent is named by its index in t, so
 * a path reads root[k] for the k-th item of the whole table. */
static void encslice(enc *e, int idx, lua_Integer i, lua_Integer n) {
  lua_State *L = e->L;
  lua_Integer c;
  int top = lua_gettop(L) + 1;
  frame *f = openarray(e, (uint64_t)n, 1);
  for (c = 0; c < n; c++) {
    f->i = i + c;
    encany(e, top, lua_rawgeti(L, idx, i + c));
    lua_settop(L, top - 1);
  }
  putbyte(e, LMP_TAG_SHORTSTR + 1);
  putbyte(e, 'n');
  lua_pushinteger(L, n);
  encany(e, top, LUA_TNUMBER);
  lua_settop(L, top - 1);
  putbyte(e, LMP_TAG_NIL);
  e->depth--;
}

/* Pushes the message in b as a string, filling its gaps (a Message's
 * bytes are copied into a string first: lua_concat joins strings). */
static void pushmsg(enc *e) {
  lua_State *L = e->L;
  size_t at = 0;
  int i;
  if (!lua_checkstack(L, 2 * e->rope + 1)) nomem(e);
  for (i = 0; i < e->rope; i++) {
    lua_pushlstring(L, e->b->data + at, e->gaps[i] - at);
    if (lua_rawgeti(L, e->slot + 4, i + 1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushlstring(L, e->gstrs[i], e->glens[i]);
    }
    at = e->gaps[i];
  }
  lua_pushlstring(L, e->b->data + at, e->b->len - at);
  lua_concat(L, 2 * e->rope + 1);
}

/* Describes the gaps left in b for pc; the rope table (slot + 4) keeps
 * what fills them alive. */
static void fillpieces(const enc *e, lmp_pieces *pc) {
  int i;
  pc->n = e->rope;
  pc->total = e->b->len;
  for (i = 0; i < e->rope; i++) {
    pc->gaps[i] = e->gaps[i];
    pc->strs[i] = e->gstrs[i];
    pc->lens[i] = e->glens[i];
    pc->total += e->glens[i];
  }
}

/* The same, leaving at e->slot what keeps the pieces alive. */
static void pieces(enc *e, lmp_pieces *pc) {
  fillpieces(e, pc);
  lua_copy(e->L, e->slot + 4, e->slot);
}

/* Appends the encoding of the value at idx to b and returns how many
 * objects it names, whose references the caller takes or does not.  With
 * b NULL it pushes the message as a string instead, or, with asmsg, as a
 * Message.  With pc, long strings are left out of b (see lmp_pieces), and
 * what keeps them is pushed.  With slice, the value at idx is a table of
 * which only slice[1] items from index slice[0] are written (encslice);
 * with slice and idx 0, the slice[1] values on the stack from index
 * slice[0] are written as an array (encstack). */
static size_t encode(lua_State *L, int idx, const char *root, lmp_buf *b,
                     const lua_Integer *slice, int asmsg, lmp_pieces *pc,
                     const char *wire, int conns, int where, int key) {
  enc e;
  char local[LOCALBUF];
  if (b != NULL && slice == NULL) {
    int t = lua_type(L, idx);
    if (t == LUA_TNUMBER || t == LUA_TBOOLEAN || t == LUA_TNIL ||
        (t == LUA_TSTRING && (pc == NULL || lua_rawlen(L, idx) < ROPEMIN))) {
      /* a scalar alone needs no stack and no tables */
      e.L = L;
      e.b = b;
      e.rope = -1;
      e.wire = wire;
      e.conns = 0;
      e.where = where;
      putbyte(&e, LMP_CODEC_VERSION);
      encany(&e, idx, t);
      if (pc != NULL) {
        pc->n = 0;
        pc->total = b->len;
        lua_pushnil(L); /* nothing to keep */
      }
      return 0;
    }
  }
  if (idx != 0) idx = lua_absindex(L, idx);
  if (!lua_checkstack(L, LMP_CODEC_ENTRYSTACK))
    lmp_codec_raise(L, "stack overflow");
  e.L = L;
  e.local.data = local;
  e.local.len = 0;
  e.local.cap = sizeof local;
  e.b = b ? b : &e.local;
  e.rope = b != NULL && pc == NULL ? -1 : 0;
  e.root = root ? root : "value";
  e.globals = NULL;
  e.depth = e.rebuilt = 0;
  e.wire = wire;
  e.conns = conns;
  e.where = where;
  e.names = NULL;
  e.nref = 0;
  e.nobj = 0;
  e.ents = e.inl;
  e.nents = 0;
  e.cap = NINLINE;
  e.hash = NULL;
  e.slot = lua_gettop(L) + 1;
  lua_settop(L, e.slot + 4); /* see enc.slot */
  putbyte(&e, LMP_CODEC_VERSION);
  if (slice != NULL && idx == 0)
    encstack(&e, (int)slice[0], (int)slice[1]);
  else if (slice != NULL)
    encslice(&e, idx, slice[0], slice[1]);
  else if (key != 0)
    encitem(&e, idx, lua_absindex(L, key));
  else
    encvalue(&e, idx);
  if (pc != NULL) {
    pieces(&e, pc);
    lua_settop(L, e.slot);
  } else if (b != NULL) {
    lua_settop(L, e.slot - 1);
  } else if (asmsg) { /* a Message of the bytes, wherever they are */
    lmp_pieces mp;
    fillpieces(&e, &mp);
    lmp_pieces_copy(&mp, e.b, lmp_msg_new(L, mp.total, e.nobj));
    lmp_msg_open(L, e.nobj);
    lua_replace(L, e.slot);
    lua_settop(L, e.slot);
  } else if (e.b == &e.local && e.rope == 0) { /* nothing on the stack */
    lua_settop(L, e.slot - 1);
    lua_pushlstring(L, local, e.local.len);
  } else {
    pushmsg(&e);
    lua_replace(L, e.slot);
    lua_settop(L, e.slot);
  }
  return e.nobj;
}

size_t lmp_encode(lua_State *L, int idx, const char *root, lmp_buf *b) {
  size_t start = b->len;
  size_t nobj = encode(L, idx, root, b, NULL, 0, NULL, NULL, 0, 0, 0);
  /* Only now that nothing can fail does the message own its objects. */
  if (nobj > 0) lmp_msg_retain(b->data + start, b->len - start);
  return nobj;
}

size_t lmp_encode_bare(lua_State *L, int idx, const char *root, lmp_buf *b) {
  return encode(L, idx, root, b, NULL, 0, NULL, NULL, 0, 0, 0);
}

size_t lmp_encode_bare_item(lua_State *L, int idx, int key, const char *root,
                            lmp_buf *b) {
  return encode(L, idx, root, b, NULL, 0, NULL, NULL, 0, 0, key);
}

size_t lmp_encode_wire(lua_State *L, int idx, const char *root, lmp_buf *b,
                       const char *why) {
  return encode(L, idx, root, b, NULL, 0, NULL, why, 0, 0, 0);
}

size_t lmp_encode_bare_at(lua_State *L, int idx, const char *root,
                          lmp_buf *b, int where) {
  return encode(L, idx, root, b, NULL, 0, NULL, NULL, 0, where, 0);
}

size_t lmp_encode_wire_at(lua_State *L, int idx, const char *root,
                          lmp_buf *b, const char *why, int where) {
  return encode(L, idx, root, b, NULL, 0, NULL, why, 0, where, 0);
}

size_t lmp_encode_pieces(lua_State *L, int idx, const char *root, lmp_buf *b,
                         lmp_pieces *pc) {
  return encode(L, idx, root, b, NULL, 0, pc, NULL, 0, 0, 0);
}

size_t lmp_encode_pieces_at(lua_State *L, int idx, const char *root,
                            lmp_buf *b, lmp_pieces *pc, int where) {
  return encode(L, idx, root, b, NULL, 0, pc, NULL, 0, where, 0);
}

size_t lmp_encode_array_pieces(lua_State *L, int first, int n,
                               const char *root, lmp_buf *b,
                               lmp_pieces *pc) {
  lua_Integer slice[2];
  slice[0] = lua_absindex(L, first);
  slice[1] = n;
  return encode(L, 0, root, b, slice, 0, pc, NULL, 0, 0, 0);
}

void lmp_pieces_copy(const lmp_pieces *pc, const lmp_buf *b, char *dst) {
  size_t at = 0;
  int i;
  for (i = 0; i < pc->n; i++) {
    memcpy(dst, b->data + at, pc->gaps[i] - at);
    dst += pc->gaps[i] - at;
    memcpy(dst, pc->strs[i], pc->lens[i]);
    dst += pc->lens[i];
    at = pc->gaps[i];
  }
  memcpy(dst, b->data + at, b->len - at);
}

/* ------------------------------------------------------------ bindings */

/* encode(v) -> string.  The string owns no references: it can be decoded
 * only while the objects it names are still alive elsewhere. */
int lmp_codec_encode(lua_State *L) {
  luaL_checkany(L, 1);
  encode(L, 1, luaL_optstring(L, 2, "value"), NULL, NULL, 0, NULL, NULL,
         0, 0, 0);
  return 1;
}

/* Reads encode_slice's arguments into slice: the first index and the
 * count. */
static void checkslice(lua_State *L, lua_Integer slice[2]) {
  lua_Integer j;
  luaL_checktype(L, 1, LUA_TTABLE);
  slice[0] = luaL_checkinteger(L, 2);
  j = luaL_checkinteger(L, 3);
  slice[1] = 0;
  if (j >= slice[0]) {
    lua_Unsigned n = (lua_Unsigned)j - (lua_Unsigned)slice[0] + 1;
    luaL_argcheck(L, n > 0 && n <= INT_MAX, 3, "too many items");
    slice[1] = (lua_Integer)n;
  }
}

/* encode_slice(t, i, j, [root]) -> string: the message of
 * table.pack(table.unpack(t, i, j)), read with raw access, without making
 * that table. */
int lmp_codec_encode_slice(lua_State *L) {
  lua_Integer slice[2];
  checkslice(L, slice);
  encode(L, 1, luaL_optstring(L, 4, "value"), NULL, slice, 0, NULL, NULL,
         0, 0, 0);
  return 1;
}

/* Pushes a Message of the value at 1 (or of its slice). */
static int message(lua_State *L, const char *root, const lua_Integer *slice,
                   int conns) {
  encode(L, 1, root, NULL, slice, 1, NULL, NULL, conns, 0, 0);
  return 1;
}

/* message(v, [root], [handed]) -> Message.  With the table handed, the
 * message may name Connections, which are listed there (see enchanded):
 * a message that starts a process, handed its descriptors with it. */
int lmp_codec_message(lua_State *L) {
  luaL_checkany(L, 1);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  return message(L, luaL_optstring(L, 2, "value"), NULL,
                 lua_istable(L, 3) ? 3 : 0);
}

/* message_slice(t, i, j, [root]) -> Message of table.pack(table.unpack(t,
 * i, j)), as encode_slice. */
int lmp_codec_message_slice(lua_State *L) {
  lua_Integer slice[2];
  checkslice(L, slice);
  return message(L, luaL_optstring(L, 4, "value"), slice, 0);
}

/* ---- single numbers, for Dict.incr */

/* The number a message holds when it is one number and nothing else:
 * returns 1 (an integer in *i), 2 (a float in *f), or 0. */
int lmp_msg_number(const char *msg, size_t n, lua_Integer *i, lua_Number *f) {
  const unsigned char *p = (const unsigned char *)msg, *end = p + n;
  uint64_t z;
  if (n < 2 || p[0] != LMP_CODEC_VERSION) return 0;
  if (p[1] >= LMP_TAG_FIXINT) {
    *i = p[1] - LMP_TAG_FIXINT;
    return n == 2;
  }
  if (p[1] == LMP_TAG_FLOAT) {
    if (n != 10) return 0;
    memcpy(f, p + 2, 8);
    return 2;
  }
  if (p[1] != LMP_TAG_INT) return 0;
  p += 2;
  if (lmp_varint_read(&p, end, &z) < 0) return 0;
  *i = lmp_unzigzag(z);
  return p == end;
}

/* Writes the message of one number into out (16 bytes at least); returns
 * its length. */
size_t lmp_msg_put_number(char *out, int isint, lua_Integer i, lua_Number f) {
  char *p = out;
  *p++ = LMP_CODEC_VERSION;
  if (isint) {
    uint64_t z = (uint64_t)i << 1;
    if (i >= 0 && i < 128) {
      *p++ = (char)(LMP_TAG_FIXINT + i);
    } else {
      *p++ = LMP_TAG_INT;
      p = lmp_varint_put(p, i < 0 ? ~z : z);
    }
  } else {
    *p++ = LMP_TAG_FLOAT;
    memcpy(p, &f, 8);
    p += 8;
  }
  return (size_t)(p - out);
}
