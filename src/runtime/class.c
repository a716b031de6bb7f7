/* class.c -- the class builder: every Lua-visible type of luamp is declared
 * once (an lmp_class) and bound here, in one metatable shape (see
 * runtime.h), with one close, one __tostring and one __eq; and the handles
 * of shared objects, which the codec makes and reads through this file.
 */
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "runtime.h"

/* Upvalues of every closure the builder makes. */
#define UV_METHODS lua_upvalueindex(1)
#define UV_CLASS lua_upvalueindex(2)
#define UV_FIRSTMT 3 /* the family's metatables, from here */
#define MAXFAMILY 3


/* The class of each kind of each type of shared object, for
 * lmp_pushobj.  The same in every state: classes are static. */
#define MAXKIND 4
static const lmp_class *bytype[LMP_T_MAX][MAXKIND];

/* Every class bound, for lmp_classof to know a mark it reads. */
#define MAXCLASSES 64
static const lmp_class *known[MAXCLASSES];
static int nknown;

/*
 * Marks.  A handle's last MARK bytes hold its class's address XORed with
 * a random key of the process (inherited by its forks, as the handles
 * are).  Reading a mark needs only the userdata's address and length;
 * the key keeps a mark from being forged by any bytes a userdata of
 * another library happens to end with.  A light userdata has no length
 * and so no mark.
 */
#define MARK sizeof(uintptr_t)
static uintptr_t mark_key;

static void make_key(void) {
  uintptr_t k = 0;
  if (getrandom(&k, sizeof k, GRND_NONBLOCK) != (ssize_t)sizeof k)
    k = (uintptr_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uintptr_t)getpid() ^
        (uintptr_t)&k;
  mark_key = k | 1; /* never 0: a zeroed userdata has no mark */
}

static inline const lmp_class *markof(lua_State *L, int idx, void *h) {
  size_t n = lua_rawlen(L, idx);
  uintptr_t m;
  if (n < MARK) return NULL;
  memcpy(&m, (char *)h + n - MARK, MARK);
  return (const lmp_class *)(m ^ mark_key);
}

/* ------------------------------------------------------------ checking */

/* The handle at idx if its class is the running closure's, or its
 * metatable one of the closure's family upvalues, else NULL; inlined into
 * the checks, which every method makes. */
static inline __attribute__((always_inline)) void *tohandle(lua_State *L,
                                                           int idx) {
  void *h = lua_touserdata(L, idx);
  int i;
  if (h == NULL) return NULL;
  if (markof(L, idx, h) == lua_touserdata(L, UV_CLASS)) return h;
  /* Another class's handle: its class's metatable (not the handle's own,
   * which may be one of its own: see own_metatable). */
  {
    const lmp_class *c = lmp_classof(L, idx);
    if (c == NULL) return NULL;
    lua_rawgetp(L, LUA_REGISTRYINDEX, c);
  }
  /* An upvalue past the closure's last is none, and equal to nothing. */
  for (i = UV_FIRSTMT; i < UV_FIRSTMT + MAXFAMILY; i++) {
    if (lua_rawequal(L, -1, lua_upvalueindex(i))) {
      lua_pop(L, 1);
      return h;
    }
  }
  lua_pop(L, 1);
  return NULL;
}

static int typeerror(lua_State *L, int idx) {
  const lmp_class *c = lua_touserdata(L, UV_CLASS);
  return luaL_typeerror(L, idx, c->name);
}

void *lmp_tohandle(lua_State *L, int idx) { return tohandle(L, idx); }

void *lmp_checkhandle(lua_State *L, int idx) {
  void *h = tohandle(L, idx);
  if (h == NULL) typeerror(L, idx);
  return h;
}

static int closed(const lmp_class *c, void *h) {
  return c->type != 0 ? ((lmp_handle *)h)->obj == NULL : c->closed(h);
}

lmp_obj *lmp_checkobj(lua_State *L, int idx) {
  lmp_handle *h = tohandle(L, idx);
  if (h == NULL) typeerror(L, idx);
  if (h->obj == NULL) {
    const lmp_class *c = lua_touserdata(L, UV_CLASS);
    luaL_error(L, "attempt to use a closed %s", c->what);
  }
  return h->obj;
}

const lmp_class *lmp_classof(lua_State *L, int idx) {
  void *h = lua_touserdata(L, idx);
  const lmp_class *c;
  int i;
  if (h == NULL || (c = markof(L, idx, h)) == NULL) return NULL;
  for (i = 0; i < nknown; i++)
    if (known[i] == c) return c;
  return NULL;
}

lmp_obj *lmp_toobj(lua_State *L, int idx) {
  const lmp_class *c = lmp_classof(L, idx);
  if (c == NULL || c->type == 0) return NULL;
  return ((lmp_handle *)lua_touserdata(L, idx))->obj;
}

/* ------------------------------------------------------------- handles */

/*
 * Hot handles.  A class with fields (v.value, a[i], d[k]) has a function
 * for __index, so that a method call on its handle costs two calls into C,
 * the lookup's and the method's, where a string's costs one.  Its handles
 * count their method lookups, in a word past their struct (countof); at
 * the HOT-th, a handle gets a metatable of its own (its class's, copied),
 * whose __index is a table of its own: its cache.  Lua finds there, with
 * no call, each method the handle has looked up since; what the cache
 * lacks goes to the __index of the cache's own metatable, a closure over
 * the handle (UV_SELF) and the cache (UV_CACHE) that looks up as the
 * class's __index does and keeps a method it finds.  A field read then
 * costs a table lookup more, so a hot handle counts those, and after COLD
 * of them it takes its class's metatable back and counts its lookups
 * again.  Going hot makes three tables and a closure (1 to 2 us): a handle
 * used a few times makes none, and one read more than called pays little.
 */
#define HOT 64
#define COLD (8 * HOT)
#define UV_SELF (UV_FIRSTMT + MAXFAMILY)
#define UV_CACHE (UV_SELF + 1)

static int indexed(const lmp_class *c) {
  return c->field != NULL || c->getters != NULL;
}

/* The count of a handle of c, past its struct (a class with fields makes
 * its handles of its own size). */
static inline intptr_t *countof(void *h, const lmp_class *c) {
  return (intptr_t *)((char *)h + ((c->size + MARK - 1) & ~(MARK - 1)));
}

static int cache_index(lua_State *L);

/* Gives the handle at 1, of class c, a metatable of its own with a cache,
 * if it has its class's (or the class's plain one); called from the
 * class's __index, whose upvalues the cache's __index shares. */
static void own_metatable(lua_State *L, const lmp_class *c) {
  int i, mt, top = lua_gettop(L);
  if (!lua_getmetatable(L, 1)) return;
  mt = lua_gettop(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, c) != LUA_TTABLE ||
      (!lua_rawequal(L, mt, -1) &&
       (lua_rawgetp(L, LUA_REGISTRYINDEX, &c->plain) != LUA_TTABLE ||
        !lua_rawequal(L, mt, -1)))) {
    lua_settop(L, top);
    return;
  }
  lua_settop(L, mt);
  lua_createtable(L, 0, 12);
  lua_pushnil(L);
  while (lua_next(L, mt)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_createtable(L, 0, 4); /* the cache */
  lua_createtable(L, 0, 1); /* its metatable */
  for (i = 1; i < UV_SELF; i++) lua_pushvalue(L, lua_upvalueindex(i));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -(UV_SELF + 2)); /* the cache */
  lua_pushcclosure(L, cache_index, UV_CACHE);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, 1);
  lua_settop(L, top);
}

/* The handle at 1 (UV_SELF's, of class c), read COLD times while hot,
 * takes its class's metatable back (the plain one if it has no __gc). */
static void own_no_more(lua_State *L, const lmp_class *c) {
  int top = lua_gettop(L);
  if (!lua_getmetatable(L, 1)) return;
  lua_rawgetp(L, LUA_REGISTRYINDEX,
              lua_getfield(L, -1, "__gc") == LUA_TNIL ? (const void *)&c->plain
                                                      : (const void *)c);
  if (lua_istable(L, -1)) lua_setmetatable(L, 1);
  lua_settop(L, top);
}

/* A new marked handle of class c, with the metatable the registry keeps
 * at `key`.  Its first c->size bytes (the class's struct) are zeroed; what
 * lies beyond, in a handle of variable size (a Message's bytes), is the
 * caller's to fill. */
static void *newhandle(lua_State *L, const lmp_class *c, size_t size, int nuv,
                       const void *key) {
  size_t at = (size + MARK - 1) & ~(MARK - 1);
  size_t count = indexed(c) ? sizeof(intptr_t) : 0; /* at countof */
  uintptr_t m = (uintptr_t)c ^ mark_key;
  char *h = lua_newuserdatauv(L, at + count + MARK, nuv);
  memset(h, 0, c->size < at ? c->size : at);
  memset(h + at, 0, count);
  memcpy(h + at + count, &m, MARK);
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_setmetatable(L, -2);
  return h;
}

void *lmp_newhandle(lua_State *L, const lmp_class *c, size_t size, int nuv) {
  return newhandle(L, c, size, nuv, c);
}

/* The plain metatable of a class is kept in the registry under the
 * address of its `plain` field. */
void *lmp_newhandle_plain(lua_State *L, const lmp_class *c, size_t size) {
  return newhandle(L, c, size, 0, &c->plain);
}

void lmp_pushobj(lua_State *L, lmp_obj *o) {
  const lmp_class *c = o->type < LMP_T_MAX && o->kind < MAXKIND
                           ? bytype[o->type][o->kind] : NULL;
  lmp_handle *h;
  if (c == NULL)
    luaL_error(L, "cannot receive a shared %s here", lmp_type_name(o->type));
  h = lmp_newhandle(L, c, c->size, c->nuv);
  if (lmp_hold(o) < 0) lmp_nomem(L, 64);
  h->obj = o;
  if (c->bind != NULL) c->bind(L, o);
}

void lmp_snapshot(lua_State *L, int idx, const lmp_class *c) {
  idx = lua_absindex(L, idx);
  if (lmp_classof(L, idx) != c) return;
  lua_getfield(L, idx, "totable"); /* the method, with its upvalues */
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  lua_replace(L, idx);
}

/* Pushes o, freeing it if that raises. */
static int pushnew(lua_State *L) {
  lmp_pushobj(L, lua_touserdata(L, 1));
  return 1;
}

void lmp_pushnew(lua_State *L, lmp_obj *o) {
  lua_pushcfunction(L, pushnew);
  lua_pushlightuserdata(L, o);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    /* A handle that did take its hold lets go of it when collected;
     * one that did not leaves the object unheld. */
    if (lmp_obj_refs(o) == 0) lmp_obj_discard(o);
    lua_error(L);
  }
}

/* -------------------------------------------------------- metamethods */

/* close(), __gc and __close: idempotent. */
static int class_close(lua_State *L) {
  const lmp_class *c = lua_touserdata(L, UV_CLASS);
  void *h = lmp_checkhandle(L, 1);
  if (c->type != 0) {
    lmp_handle *sh = h;
    lmp_obj *o = sh->obj;
    if (o != NULL) {
      sh->obj = NULL;
      lmp_unhold(o);
    }
  } else {
    c->close(h);
  }
  return 0;
}

static int class_tostring(lua_State *L) {
  void *h = lmp_checkhandle(L, 1);
  const lmp_class *c = lmp_classof(L, 1);
  if (closed(c, h)) {
    lua_pushfstring(L, "%s (closed)", c->name);
  } else if (c->tostring != NULL) {
    return c->tostring(L);
  } else if (c->describe != NULL) {
    lua_pushfstring(L, "%s (%p, ", c->name,
                    c->type != 0 ? (void *)((lmp_handle *)h)->obj : h);
    c->describe(L, h);
    lua_pushliteral(L, ")");
    lua_concat(L, 3);
  } else {
    lua_pushfstring(L, "%s (%p)", c->name,
                    c->type != 0 ? (void *)((lmp_handle *)h)->obj : h);
  }
  return 1;
}

/* __eq: two handles of the same shared object (one received through a
 * queue, say, and the one that was sent). */
static int class_eq(lua_State *L) {
  lmp_obj *a = lmp_toobj(L, 1), *b = lmp_toobj(L, 2);
  lua_pushboolean(L, a != NULL && a == b);
  return 1;
}

/* __index of a class with fields.  One lookup in the methods table finds
 * a method, or a getter (a light userdata: its luaL_Reg); another string
 * that names neither, or any other key (a[i]), goes to the field function.
 * Getters and field functions find the handle and the key at 1 and 2 and
 * return what they push last. */
static int class_index(lua_State *L) {
  const lmp_class *c;
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2); /* __index is called with the handle and the key */
    switch (lua_rawget(L, UV_METHODS)) {
      case LUA_TNIL:
        break;
      case LUA_TLIGHTUSERDATA:
        return ((const luaL_Reg *)lua_touserdata(L, -1))->func(L);
      default: {
        /* (checked by its mark: __index can be handed anything) */
        void *h = lua_touserdata(L, 1);
        c = lua_touserdata(L, UV_CLASS);
        if (h != NULL && markof(L, 1, h) == c && ++*countof(h, c) == HOT)
          own_metatable(L, c);
        return 1;
      }
    }
  }
  c = lua_touserdata(L, UV_CLASS);
  return c->field != NULL ? c->field(L) : 0;
}

/* __index of a hot handle's cache (see own_metatable): the cache at 1 and
 * the key at 2. */
static int cache_index(lua_State *L) {
  const lmp_class *c = lua_touserdata(L, UV_CLASS);
  int t = LUA_TNIL;
  intptr_t *n;
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_pushvalue(L, 2);
    t = lua_rawget(L, UV_METHODS);
    if (t != LUA_TNIL && t != LUA_TLIGHTUSERDATA) {
      lua_pushvalue(L, 2);
      lua_pushvalue(L, -2);
      lua_rawset(L, lua_upvalueindex(UV_CACHE));
      return 1;
    }
  }
  lua_pushvalue(L, lua_upvalueindex(UV_SELF));
  lua_replace(L, 1);
  n = countof(lua_touserdata(L, 1), c);
  if (++*n >= COLD) {
    *n = 0;
    own_no_more(L, c);
  }
  if (t == LUA_TLIGHTUSERDATA)
    return ((const luaL_Reg *)lua_touserdata(L, 3))->func(L);
  lua_settop(L, 2);
  return c->field != NULL ? c->field(L) : 0;
}

/* ------------------------------------------------------------ building */

/* Pushes the upvalues of c's closures: methods table (at `methods`, or
 * nil), class, the metatables of the classes of its group. */
static int pushups(lua_State *L, const lmp_class *c, int methods,
                   const lmp_family *f) {
  int i, n;
  if (methods != 0) lua_pushvalue(L, methods);
  else lua_pushnil(L);
  lua_pushlightuserdata(L, (void *)c);
  for (i = 0, n = 0; f->classes[i] != NULL; i++) {
    if (f->classes[i]->group != c->group) continue;
    luaL_getmetatable(L, f->classes[i]->name);
    n++;
  }
  return n + 2;
}

static void setclosure(lua_State *L, int t, const char *name,
                       lua_CFunction fn, const lmp_class *c, int methods,
                       const lmp_family *f) {
  lua_pushcclosure(L, fn, pushups(L, c, methods, f));
  lua_setfield(L, t, name);
}

static void setfuncs(lua_State *L, int t, const luaL_Reg *r,
                     const lmp_class *c, int methods, const lmp_family *f) {
  for (; r != NULL && r->name != NULL; r++)
    setclosure(L, t, r->name, r->func, c, methods, f);
}

static void build(lua_State *L, const lmp_class *c, const lmp_family *f) {
  int mt, methods = 0;
  luaL_getmetatable(L, c->name);
  mt = lua_gettop(L);
  lua_pushvalue(L, mt); /* found by the class too, with no string */
  lua_rawsetp(L, LUA_REGISTRYINDEX, c);
  if (c->meth != NULL) {
    lua_newtable(L);
    methods = lua_gettop(L);
    setfuncs(L, methods, c->meth, c, 0, f);
    setclosure(L, methods, "close", class_close, c, 0, f);
  } else {
    lua_newtable(L); /* no methods: every key is a field */
    methods = lua_gettop(L);
  }
  if (c->getters != NULL) {
    const luaL_Reg *g;
    for (g = c->getters; g->name != NULL; g++) {
      lua_pushlightuserdata(L, (void *)g);
      lua_setfield(L, methods, g->name);
    }
  }
  if (indexed(c)) {
    setclosure(L, mt, "__index", class_index, c, methods, f);
  } else {
    lua_pushvalue(L, methods);
    lua_setfield(L, mt, "__index");
  }
  setclosure(L, mt, "__gc", class_close, c, methods, f);
  setclosure(L, mt, "__close", class_close, c, methods, f);
  setclosure(L, mt, "__tostring", class_tostring, c, methods, f);
  if (c->type != 0) {
    lua_pushcfunction(L, class_eq);
    lua_setfield(L, mt, "__eq");
  }
  setfuncs(L, mt, c->metameth, c, methods, f);
  if (c->plain) { /* the same metatable but for __gc */
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, mt)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
    lua_pushnil(L);
    lua_setfield(L, -2, "__gc");
    lua_rawsetp(L, LUA_REGISTRYINDEX, &c->plain);
  }
  lua_settop(L, mt - 1);
}

void lmp_family_open(lua_State *L, const lmp_family *f) {
  int i, k;
  if (mark_key == 0) make_key();
  /* Every metatable exists before any closure captures it. */
  for (i = 0; f->classes != NULL && f->classes[i] != NULL; i++) {
    const lmp_class *c = f->classes[i];
    luaL_newmetatable(L, c->name);
    lua_pop(L, 1);
    for (k = 0; k < nknown && known[k] != c; k++) continue;
    if (k == nknown) {
      if (nknown == MAXCLASSES)
        luaL_error(L, "too many classes (raise MAXCLASSES)");
      known[nknown++] = c;
    }
    if (c->type > 0 && c->type < LMP_T_MAX && c->kind < MAXKIND) {
      bytype[c->type][c->kind] = c;
      if (c->obj != NULL) lmp_type_set(c->type, c->obj);
    }
  }
  for (i = 0; f->classes != NULL && f->classes[i] != NULL; i++)
    build(L, f->classes[i], f);
  if (f->open != NULL) f->open();
  if (f->funcs != NULL) luaL_setfuncs(L, f->funcs, 0);
}
