/* value.c -- Value and Array: typed C data in the arena with Python's
 * typecodes, an optional lock, and atomic add and compare-and-swap.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "types.h"

/*
 * Every element is read and written with one atomic access of its size,
 * so a reader never sees a torn value even without the lock; the lock
 * (an RLock by default, as in Python) is there for the caller's
 * read-modify-write sequences, and `add` and `cas` make most of those
 * unnecessary for integers.
 */

#define VALUE "luamp.Value"
#define ARRAY "luamp.Array"

typedef struct shval {
  lmp_obj h;
  char tc;
  uint8_t esize;
  uint8_t is_array;
  uint8_t pad;
  uint32_t pad2;
  uint64_t n; /* elements */
  lmp_off lock;               /* a Lock or RLock, referenced, or 0 */
  _Atomic uint64_t lock_refs; /* 1 while it holds that reference */
  _Alignas(8) char data[];
} shval;

static int esize(char tc) {
  switch (tc) {
    case 'b': case 'B': case 'c': case '?': return 1;
    case 'h': case 'H': return 2;
    case 'i': case 'I': case 'f': return 4;
    case 'l': case 'L': case 'q': case 'Q': case 'd': return 8;
    default: return 0;
  }
}

static int is_int(char tc) { return strchr("bBhHiIlLqQ", tc) != NULL; }

static void *elem(shval *v, uint64_t i) { return v->data + i * v->esize; }

static uint64_t load(shval *v, uint64_t i) {
  void *p = elem(v, i);
  switch (v->esize) {
    case 1: return __atomic_load_n((uint8_t *)p, __ATOMIC_SEQ_CST);
    case 2: return __atomic_load_n((uint16_t *)p, __ATOMIC_SEQ_CST);
    case 4: return __atomic_load_n((uint32_t *)p, __ATOMIC_SEQ_CST);
    default: return __atomic_load_n((uint64_t *)p, __ATOMIC_SEQ_CST);
  }
}

static void store(shval *v, uint64_t i, uint64_t bits) {
  void *p = elem(v, i);
  switch (v->esize) {
#define STORE(T) __atomic_store_n((T *)p, (T)bits, __ATOMIC_SEQ_CST)
    case 1: STORE(uint8_t); break;
    case 2: STORE(uint16_t); break;
    case 4: STORE(uint32_t); break;
    default: STORE(uint64_t); break;
#undef STORE
  }
}

/* The bits of an element as a Lua value. */
static void push_bits(lua_State *L, char tc, uint64_t bits) {
  switch (tc) {
    case 'b': lua_pushinteger(L, (int8_t)bits); break;
    case 'B': lua_pushinteger(L, (uint8_t)bits); break;
    case 'h': lua_pushinteger(L, (int16_t)bits); break;
    case 'H': lua_pushinteger(L, (uint16_t)bits); break;
    case 'i': lua_pushinteger(L, (int32_t)bits); break;
    case 'I': lua_pushinteger(L, (uint32_t)bits); break;
    case 'l': case 'q': case 'L': case 'Q':
      lua_pushinteger(L, (lua_Integer)bits); /* Q wraps as in C */
      break;
    case 'f': {
      float f;
      uint32_t b = (uint32_t)bits;
      memcpy(&f, &b, sizeof f);
      lua_pushnumber(L, (lua_Number)f);
      break;
    }
    case 'd': {
      double d;
      memcpy(&d, &bits, sizeof d);
      lua_pushnumber(L, d);
      break;
    }
    case '?': lua_pushboolean(L, (uint8_t)bits != 0); break;
    default: { /* 'c' */
      char c = (char)bits;
      lua_pushlstring(L, &c, 1);
    }
  }
}

/* Raises argument `arg`'s error for the value at idx, which does not fit
 * typecode tc (`expected` says what would); item > 0 names the item of a
 * table argument. */
static int badvalue(lua_State *L, int idx, int arg, lua_Integer item,
                    char tc, const char *expected) {
  const char *got = luaL_typename(L, idx);
  if (lua_type(L, idx) == LUA_TNUMBER && lua_isinteger(L, idx) == 0 &&
      strcmp(expected, "integer") == 0)
    got = lua_pushfstring(L, "float %s", lua_tostring(L, idx));
  if (tc == 'c')
    lua_pushfstring(L, "string of length 1 expected for typecode 'c'");
  else
    lua_pushfstring(L, "%s expected for typecode '%c', got %s", expected, tc,
                    got);
  if (item > 0) lua_pushfstring(L, "%s (item %I)", lua_tostring(L, -1), item);
  return luaL_argerror(L, arg, lua_tostring(L, -1));
}

/* The Lua value at idx as element bits for tc; raises argument `arg`'s
 * error (of its item `item`, if > 0) if it does not fit the typecode's
 * kind (integers wrap, as in C). */
static uint64_t to_bits(lua_State *L, int idx, char tc, int arg,
                        lua_Integer item) {
  if (is_int(tc)) {
    if (!lua_isinteger(L, idx)) badvalue(L, idx, arg, item, tc, "integer");
    return (uint64_t)lua_tointeger(L, idx);
  }
  switch (tc) {
    case 'f': case 'd': {
      lua_Number x;
      if (lua_type(L, idx) != LUA_TNUMBER)
        badvalue(L, idx, arg, item, tc, "number");
      x = lua_tonumber(L, idx);
      if (tc == 'f') {
        float f = (float)x;
        uint32_t b;
        memcpy(&b, &f, sizeof b);
        return b;
      } else {
        uint64_t b;
        double d = (double)x;
        memcpy(&b, &d, sizeof b);
        return b;
      }
    }
    case '?':
      if (!lua_isboolean(L, idx)) badvalue(L, idx, arg, item, tc, "boolean");
      return (uint64_t)lua_toboolean(L, idx);
    default: { /* 'c' */
      size_t n;
      const char *s =
          lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
      if (s == NULL || n != 1) badvalue(L, idx, arg, item, tc, "string");
      return (uint8_t)s[0];
    }
  }
}

#define checkval(L) ((shval *)lmp_checkobj(L, 1))

static void shval_dtor(lmp_obj *o) {
  shval *v = (shval *)o;
  if (atomic_load(&v->lock_refs) > 0)
    lmp_obj_decref_counted(LMP_PTR(v->lock), &v->lock_refs);
}

/* A handle keeps a handle of the lock, if there is one, as its user
 * value: get_lock returns it. */
static void shval_bind(lua_State *L, lmp_obj *o) {
  shval *v = (shval *)o;
  if (v->lock) {
    lmp_pushobj(L, LMP_PTR(v->lock));
    lua_setiuservalue(L, -2, 1);
  }
}

/* Makes a Value or Array of n elements; the lock argument is at idx:
 * nil/true (a new RLock), false (none) or a Lock/RLock. */
static shval *make(lua_State *L, char tc, uint64_t n, int is_array,
                   int lockidx) {
  int es = esize(tc);
  lmp_obj *lk = NULL;
  shval *v;
  size_t size;
  if (es == 0 || tc == '\0')
    luaL_argerror(L, 1, "bad typecode (expected one of b B h H i I l L q Q "
                  "f d c ?)");
  if (lua_isnoneornil(L, lockidx) ||
      (lua_isboolean(L, lockidx) && lua_toboolean(L, lockidx))) {
    lmp_lock *nl = lmp_lock_new(1);
    if (nl == NULL) lmp_nomem(L, sizeof(lmp_lock));
    lk = &nl->h;
    /* Held from here (the handle goes with the stack): while the Value is
     * made, the slot names the Value, not the lock. */
    lmp_pushnew(L, lk);
  } else if (!lua_isboolean(L, lockidx)) {
    const lmp_class *lc = lmp_classof(L, lockidx);
    lk = lmp_toobj(L, lockidx);
    luaL_argcheck(L, lk != NULL || lc == NULL || lc->type != LMP_T_LOCK,
                  lockidx, "the lock given is closed");
    luaL_argcheck(L, lk != NULL && lk->type == LMP_T_LOCK, lockidx,
                  "lock must be a boolean, a Lock or an RLock");
  }
  size = sizeof(shval) + (size_t)n * (size_t)es;
  if (n > ((uint64_t)1 << 40)) luaL_argerror(L, 2, "array too large");
  v = (shval *)lmp_obj_new(is_array ? LMP_T_ARRAY : LMP_T_VALUE, 0, size);
  if (v == NULL) lmp_nomem(L, size);
  v->tc = tc;
  v->esize = (uint8_t)es;
  v->is_array = (uint8_t)is_array;
  v->n = n;
  if (lk != NULL) {
    v->lock = LMP_OFF(lk);
    lmp_obj_incref_counted(lk, &v->lock_refs);
  }
  return v;
}

static char checktc(lua_State *L) {
  size_t n;
  const char *tc = luaL_checklstring(L, 1, &n);
  if (n != 1 || esize(tc[0]) == 0)
    luaL_argerror(L, 1, "bad typecode (expected one of b B h H i I l L q Q "
                  "f d c ?)");
  return tc[0];
}

/* Value(typecode, [init], [lock]) */
static int shared_Value(lua_State *L) {
  char tc = checktc(L);
  shval *v;
  uint64_t bits = 0;
  if (!lua_isnoneornil(L, 2)) bits = to_bits(L, 2, tc, 2, 0);
  v = make(L, tc, 1, 0, 3);
  store(v, 0, bits);
  lmp_pushnew(L, &v->h);
  return 1;
}

/* Array(typecode, size_or_table, [lock]) */
static int shared_Array(lua_State *L) {
  char tc = checktc(L);
  shval *v;
  uint64_t n, i;
  if (lua_type(L, 2) == LUA_TTABLE) {
    n = (uint64_t)luaL_len(L, 2);
    for (i = 1; i <= n; i++) { /* check every value before allocating */
      lua_geti(L, 2, (lua_Integer)i);
      to_bits(L, -1, tc, 2, (lua_Integer)i);
      lua_pop(L, 1);
    }
    v = make(L, tc, n, 1, 3);
    for (i = 1; i <= n; i++) {
      lua_geti(L, 2, (lua_Integer)i);
      store(v, i - 1, to_bits(L, -1, tc, 2, (lua_Integer)i));
      lua_pop(L, 1);
    }
  } else if (lua_type(L, 2) == LUA_TSTRING && tc == 'c') {
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    v = make(L, tc, len, 1, 3);
    memcpy(v->data, s, len);
  } else {
    lua_Integer k = luaL_checkinteger(L, 2);
    luaL_argcheck(L, k >= 0, 2, "size must be non-negative");
    v = make(L, tc, (uint64_t)k, 1, 3);
  }
  lmp_pushnew(L, &v->h);
  return 1;
}

/* Element index at idx (1-based) -> 0-based, or -1 when out of range. */
static int64_t index_of(lua_State *L, shval *v, int idx) {
  lua_Integer i;
  int isint;
  if (lua_type(L, idx) != LUA_TNUMBER) return -2;
  i = lua_tointegerx(L, idx, &isint); /* 2.0 is 2, as in a table */
  if (!isint) return -2;
  if (i < 1 || (uint64_t)i > v->n) return -1;
  return i - 1;
}

static int checkindex(lua_State *L, shval *v, int idx) {
  int64_t i = index_of(L, v, idx);
  if (i == -2) luaL_typeerror(L, idx, "integer index");
  if (i < 0)
    luaL_argerror(L, idx, lua_pushfstring(L, "index %I out of range (array "
                  "has %I elements)", lua_tointeger(L, idx),
                  (lua_Integer)v->n));
  return (int)i;
}

/* What reads or writes more than one element at once (a 'c' array's
 * string, totable) holds v's lock meanwhile, as Python's synchronized
 * arrays do, so that two such never interleave: this takes it, unless v
 * has none or this process holds it already, and returns what to let go
 * of (NULL for nothing).  Nothing may run Lua while it is held. */
static lmp_lock *hold_whole(lua_State *L, shval *v) {
  lmp_lock *l;
  int died, rc;
  if (v->lock == 0) return NULL;
  l = (lmp_lock *)LMP_PTR(v->lock);
  if (lmp_lock_owned(l)) return NULL;
  rc = lmp_lock_acquire(L, l, -1, &died);
  if (rc < 0) lmp_raise_errno(L, rc, "cannot acquire");
  return l;
}

static void release_whole(lmp_lock *l) {
  if (l != NULL) lmp_lock_release(l);
}

/* The 'c' array as a string: .value stops at the first NUL, as Python's
 * c_char arrays do; :raw() is every byte. */
static void push_cstring(lua_State *L, shval *v, int whole) {
  size_t n = (size_t)v->n;
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n);
  lmp_lock *l = hold_whole(L, v);
  memcpy(p, v->data, n);
  release_whole(l);
  if (!whole) {
    const char *z = memchr(p, '\0', n);
    if (z != NULL) n = (size_t)(z - p);
  }
  luaL_pushresultsize(&b, n);
}

/* v.value; a.value, for a 'c' array: the string up to its first NUL. */
static int val_value(lua_State *L) {
  shval *v = checkval(L);
  if (!v->is_array) push_bits(L, v->tc, load(v, 0));
  else if (v->tc == 'c') push_cstring(L, v, 0);
  else return luaL_error(L, "only 'c' arrays have a value field");
  return 1;
}

static int val_typecode(lua_State *L) {
  lua_pushlstring(L, &checkval(L)->tc, 1);
  return 1;
}

/* a[i]: nil outside 1..#a, as with a table (ipairs stops there). */
static int val_field(lua_State *L) {
  shval *v = checkval(L);
  int64_t i;
  if (!v->is_array || (i = index_of(L, v, 2)) < 0) return 0;
  push_bits(L, v->tc, load(v, (uint64_t)i));
  return 1;
}

static int is_value_key(lua_State *L, int idx) {
  size_t n;
  const char *k;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  k = lua_tolstring(L, idx, &n);
  return n == 5 && memcmp(k, "value", 5) == 0;
}

/* v.value = (the value at idx) */
static int set_value(lua_State *L, shval *v, int idx) {
  if (!v->is_array) {
    store(v, 0, to_bits(L, idx, v->tc, idx, 0));
  } else if (v->tc == 'c') {
    size_t n;
    const char *s = luaL_checklstring(L, idx, &n);
    if (n > v->n)
      return luaL_argerror(L, idx, lua_pushfstring(L, "string too long (%I "
                           "bytes for %I)", (lua_Integer)n,
                           (lua_Integer)v->n));
    lmp_lock *l = hold_whole(L, v);
    memcpy(v->data, s, n);
    if (n < v->n) v->data[n] = '\0';
    release_whole(l);
  } else {
    return luaL_error(L, "only 'c' arrays have a value field");
  }
  return 0;
}

static int val_newindex(lua_State *L) {
  shval *v = checkval(L);
  if (is_value_key(L, 2)) return set_value(L, v, 3);
  if (v->is_array && lua_type(L, 2) == LUA_TNUMBER) {
    int i = checkindex(L, v, 2);
    store(v, (uint64_t)i, to_bits(L, 3, v->tc, 3, 0));
    return 0;
  }
  return luaL_argerror(L, 2, lua_pushfstring(L, "%s has no field %s to set",
                       v->is_array ? ARRAY : VALUE,
                       luaL_tolstring(L, 2, NULL)));
}

static int val_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkval(L)->n);
  return 1;
}

/* totable(): every element, read together under the lock. */
/* totable([i], [j]) -> the elements from position i to position j (as
 * string.sub counts them: 1 and -1 by default), in a table from 1: Python's
 * a[i:j], read at once under the lock. */
static int val_totable(lua_State *L) {
  shval *v = checkval(L);
  lua_Integer i = luaL_optinteger(L, 2, 1), j = luaL_optinteger(L, 3, -1);
  uint64_t k, from, to, *snap;
  lmp_lock *l;
  from = lmp_pos_from(i, v->n);
  to = lmp_pos_to(j, v->n);
  if (to < from) to = from;
  luaL_argcheck(L, to - from <= (uint64_t)INT_MAX, 1, "array too large");
  snap = lua_newuserdatauv(L, (size_t)(to - from) * sizeof *snap + 1, 0);
  l = hold_whole(L, v);
  for (k = from; k < to; k++) snap[k - from] = load(v, k);
  release_whole(l);
  lua_createtable(L, (int)(to - from), 0);
  for (k = 0; k < to - from; k++) {
    push_bits(L, v->tc, snap[k]);
    lua_rawseti(L, -2, (lua_Integer)k + 1);
  }
  return 1;
}

static int val_raw(lua_State *L) {
  shval *v = checkval(L);
  luaL_argcheck(L, v->tc == 'c', 1, "only 'c' arrays have raw bytes");
  push_cstring(L, v, 1);
  return 1;
}

static int val_get_lock(lua_State *L) {
  shval *v = checkval(L);
  if (v->lock == 0)
    return luaL_error(L, "this %s has no lock (it was made without one)",
                      v->is_array ? "Array" : "Value");
  lua_getiuservalue(L, 1, 1);
  return 1;
}

/* get() and set(x): `value` read and written, as a Manager's ValueProxy
 * has them in Python. */
static int val_get(lua_State *L) {
  lua_settop(L, 1);
  return val_value(L);
}

static int val_set(lua_State *L) {
  shval *v = checkval(L);
  luaL_checkany(L, 2);
  return set_value(L, v, 2);
}

/* acquire(...), release(), with(fn, ...): its lock's (get_lock), as
 * Python's synchronized wrapper has them. */
static int lock_call(lua_State *L, const char *name) {
  int n = lua_gettop(L);
  val_get_lock(L);
  lua_replace(L, 1);
  lua_getfield(L, 1, name);
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

static int val_acquire(lua_State *L) { return lock_call(L, "acquire"); }
static int val_release(lua_State *L) { return lock_call(L, "release"); }
static int val_with(lua_State *L) { return lock_call(L, "with"); }

/* get_obj() -> the Value or Array itself.  Python's synchronized wrapper
 * gives its raw object; here each element is read and written atomically
 * through the handle already, and the lock is only for compound steps, so
 * the raw object is the same one. */
static int val_get_obj(lua_State *L) {
  checkval(L);
  lua_settop(L, 1);
  return 1;
}

/* The element add/cas act on: a Value's only one, or the Array's i-th
 * (argument 2, shifting the rest by one). */
static int target(lua_State *L, shval *v, int *arg) {
  if (!is_int(v->tc))
    luaL_error(L, "add and cas need an integer typecode, not '%c'", v->tc);
  if (!v->is_array) {
    *arg = 2;
    return 0;
  }
  *arg = 3;
  return checkindex(L, v, 2);
}

#define ATOMIC_ADD(T)                                                      \
  push_bits(L, v->tc,                                                      \
            (uint64_t)(T)__atomic_add_fetch((T *)elem(v, (uint64_t)i),     \
                                            (T)d, __ATOMIC_SEQ_CST))

/* add(n) / add(i, n) -> the new value */
static int val_add(lua_State *L) {
  shval *v = checkval(L);
  int arg, i = target(L, v, &arg);
  lua_Integer d = luaL_checkinteger(L, arg);
  switch (v->esize) {
    case 1: ATOMIC_ADD(uint8_t); break;
    case 2: ATOMIC_ADD(uint16_t); break;
    case 4: ATOMIC_ADD(uint32_t); break;
    default: ATOMIC_ADD(uint64_t); break;
  }
  return 1;
}

#define ATOMIC_CAS(T)                                                      \
  do {                                                                     \
    T e = (T)old;                                                          \
    ok = __atomic_compare_exchange_n((T *)elem(v, (uint64_t)i), &e,       \
                                     (T) new, 0, __ATOMIC_SEQ_CST,         \
                                     __ATOMIC_SEQ_CST);                    \
  } while (0)

/* cas(old, new) / cas(i, old, new) -> whether it swapped */
static int val_cas(lua_State *L) {
  shval *v = checkval(L);
  int arg, i = target(L, v, &arg), ok;
  uint64_t old = to_bits(L, arg, v->tc, arg, 0);
  uint64_t new = to_bits(L, arg + 1, v->tc, arg + 1, 0);
  switch (v->esize) {
    case 1: ATOMIC_CAS(uint8_t); break;
    case 2: ATOMIC_CAS(uint16_t); break;
    case 4: ATOMIC_CAS(uint32_t); break;
    default: ATOMIC_CAS(uint64_t); break;
  }
  lua_pushboolean(L, ok);
  return 1;
}

static int val_tostring(lua_State *L) {
  shval *v = (shval *)((lmp_handle *)lua_touserdata(L, 1))->obj;
  const char *name = v->is_array ? ARRAY : VALUE;
  if (!v->is_array) {
    push_bits(L, v->tc, load(v, 0));
    lua_pushfstring(L, "%s('%c', %s)", name, v->tc,
                    luaL_tolstring(L, -1, NULL));
  } else {
    lua_pushfstring(L, "%s('%c', %I)", name, v->tc, (lua_Integer)v->n);
  }
  return 1;
}

static const luaL_Reg val_meth[] = {
  {"totable", val_totable}, {"get_lock", val_get_lock},
  {"add", val_add},         {"cas", val_cas},
  {"raw", val_raw},         {"get_obj", val_get_obj},
  {"acquire", val_acquire}, {"release", val_release},
  {"with", val_with},       {"get", val_get},
  {"set", val_set},         {NULL, NULL}
};

static const luaL_Reg val_metameth[] = {
  {"__newindex", val_newindex}, {"__len", val_len}, {NULL, NULL}
};

static const luaL_Reg val_getters[] = {
  {"value", val_value}, {"typecode", val_typecode}, {NULL, NULL}
};

static const lmp_type value_type = {.name = "value", .dtor = shval_dtor};
static const lmp_type array_type = {.name = "array", .dtor = shval_dtor};

#define SHVAL(cname, w, t, ot)                                             \
  {.name = cname, .what = w, .type = t, .group = 1, .obj = ot,             \
   .size = sizeof(lmp_handle), .nuv = 1, .meth = val_meth,                 \
   .metameth = val_metameth, .getters = val_getters, .field = val_field,   \
   .bind = shval_bind,                                                     \
   .tostring = val_tostring}

static const lmp_class value_class =
    SHVAL(VALUE, "value", LMP_T_VALUE, &value_type);
static const lmp_class array_class =
    SHVAL(ARRAY, "array", LMP_T_ARRAY, &array_type);

char *lmp_array_bytes(lua_State *L, int idx, size_t *size) {
  shval *v;
  if (lmp_classof(L, idx) != &array_class) return NULL;
  v = (shval *)((lmp_handle *)lua_touserdata(L, idx))->obj;
  if (v == NULL) luaL_error(L, "attempt to use a closed array");
  *size = (size_t)(v->n * v->esize);
  return v->data;
}

static const lmp_class *const value_classes[] = {
  &value_class, &array_class, NULL
};

static const luaL_Reg value_funcs[] = {
  {"Value", shared_Value}, {"Array", shared_Array}, {NULL, NULL}
};

const lmp_family lmp_value_family = {value_classes, value_funcs, NULL};
