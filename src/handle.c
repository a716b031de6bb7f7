/* handle.c -- Lua handles to shared objects: creation, the per-type
 * pushers the codec uses, closing, and the plain Blob object.
 */
#include <string.h>

#include "internal.h"

static lmp_pusher pushers[LMP_T_MAX];

void lmp_settypepusher(int type, lmp_pusher f) { pushers[type] = f; }

lmp_handle *lmp_newhandle(lua_State *L, size_t size, const char *tname) {
  lmp_handle *h = lua_newuserdatauv(L, size, 1);
  memset(h, 0, size);
  luaL_setmetatable(L, tname);
  return h;
}

lmp_obj *lmp_toobj(lua_State *L, int idx) {
  lmp_handle *h = lua_touserdata(L, idx);
  int is;
  if (h == NULL || lua_islightuserdata(L, idx) || !lua_getmetatable(L, idx))
    return NULL;
  is = lua_getfield(L, -1, "__luamp") == LUA_TBOOLEAN;
  lua_pop(L, 2);
  return is ? h->obj : NULL;
}

/* __eq of every luamp handle: two handles are equal when they name the
 * same shared object (one received through a queue, say, and the one
 * that was sent). */
int lmp_handle_eq(lua_State *L) {
  lmp_obj *a = lmp_toobj(L, 1), *b = lmp_toobj(L, 2);
  lua_pushboolean(L, a != NULL && a == b);
  return 1;
}

void lmp_pushobj(lua_State *L, lmp_obj *o) {
  if (o->type >= LMP_T_MAX || pushers[o->type] == NULL)
    luaL_error(L, "cannot receive a shared %s here", lmp_obj_typename(o->type));
  pushers[o->type](L, o);
}

/* Makes h (on the top of the stack) a handle of o for this process. */
void lmp_bind(lua_State *L, lmp_handle *h, lmp_obj *o) {
  if (lmp_hold(o) < 0) lmp_nomem(L, 64);
  h->obj = o;
}

void lmp_unbind(lmp_handle *h) {
  if (h->obj != NULL) {
    lmp_obj *o = h->obj;
    h->obj = NULL;
    lmp_unhold(o);
  }
}

int lmp_nomem(lua_State *L, size_t want) {
  lmp_arena_stats st;
  lmp_arena_stats_get(&st);
  if (want > 0)
    return luaL_error(L,
                      "shared memory exhausted: %I bytes wanted, %I of %I in "
                      "use (raise the arena size with --arena, LUAMP_ARENA or "
                      "luamp_config.arena_size)",
                      (lua_Integer)want, (lua_Integer)st.used,
                      (lua_Integer)st.size);
  return luaL_error(L,
                    "shared memory exhausted: %I of %I bytes in use (raise "
                    "the arena size with --arena, LUAMP_ARENA or "
                    "luamp_config.arena_size)",
                    (lua_Integer)st.used, (lua_Integer)st.size);
}

/* ----------------------------------------------------------------- Blob */

/* A Blob is the simplest shared object: a fixed number of shared bytes.
 * The test suite uses it to check reference counting and reclamation. */

#define BLOB "luamp.Blob"

typedef struct blob {
  lmp_obj h;
  uint64_t size;
  char data[];
} blob;

static blob *checkblob(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, BLOB);
  if (h->obj == NULL) luaL_error(L, "attempt to use a closed blob");
  return (blob *)h->obj;
}

static void push_blob(lua_State *L, lmp_obj *o) {
  lmp_handle *h = lmp_newhandle(L, sizeof *h, BLOB);
  lmp_bind(L, h, o);
}

static int blob_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  blob *b;
  luaL_argcheck(L, n >= 0, 1, "size must be non-negative");
  b = (blob *)lmp_obj_new(LMP_T_BLOB, sizeof(blob) + (size_t)n);
  if (b == NULL) return lmp_nomem(L, sizeof(blob) + (size_t)n);
  b->size = (uint64_t)n;
  push_blob(L, &b->h);
  return 1;
}

static int blob_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkblob(L)->size);
  return 1;
}

static int blob_get(lua_State *L) {
  blob *b = checkblob(L);
  lua_pushlstring(L, b->data, b->size);
  return 1;
}

static int blob_set(lua_State *L) {
  blob *b = checkblob(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  luaL_argcheck(L, n <= b->size, 2, "string longer than the blob");
  memcpy(b->data, s, n);
  return 0;
}

static int blob_refs(lua_State *L) {
  lua_pushinteger(L, atomic_load(&checkblob(L)->h.refs));
  return 1;
}

static int blob_close(lua_State *L) {
  lmp_unbind(luaL_checkudata(L, 1, BLOB));
  return 0;
}

static int blob_tostring(lua_State *L) {
  lmp_handle *h = luaL_checkudata(L, 1, BLOB);
  if (h->obj == NULL) lua_pushliteral(L, BLOB " (closed)");
  else lua_pushfstring(L, BLOB " (%p)", (void *)h->obj);
  return 1;
}

static const luaL_Reg blob_meth[] = {
  {"len", blob_len}, {"get", blob_get}, {"set", blob_set},
  {"refs", blob_refs}, {"close", blob_close}, {NULL, NULL}
};

static const luaL_Reg blob_metameth[] = {
  {"__index", NULL},  {"__gc", blob_close}, {"__close", blob_close},
  {"__eq", lmp_handle_eq},
  {"__len", blob_len}, {"__tostring", blob_tostring}, {NULL, NULL}
};

int lmp_open_blob(lua_State *L) {
  if (luaL_newmetatable(L, BLOB)) {
    luaL_setfuncs(L, blob_metameth, 0);
    luaL_newlibtable(L, blob_meth);
    luaL_setfuncs(L, blob_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "__luamp");
  }
  lua_pop(L, 1);
  lmp_obj_settype(LMP_T_BLOB, "blob", NULL);
  lmp_settypepusher(LMP_T_BLOB, push_blob);
  lua_pushcfunction(L, blob_new);
  lua_setfield(L, -2, "blob");
  return 0;
}
