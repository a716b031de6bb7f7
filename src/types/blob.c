/* blob.c -- Blob, the simplest shared object: a fixed number of shared
 * bytes.  The test suite uses it to check reference counting and
 * reclamation.
 */
#include <string.h>

#include "types.h"

#define BLOB "luamp.Blob"

typedef struct blob {
  lmp_obj h;
  uint64_t size;
  char data[];
} blob;

#define checkblob(L) ((blob *)lmp_checkobj(L, 1))

/* blob(n): a new Blob of n zero bytes. */
static int blob_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  blob *b;
  luaL_argcheck(L, n >= 0, 1, "size must be non-negative");
  b = (blob *)lmp_obj_new(LMP_T_BLOB, 0, sizeof(blob) + (size_t)n);
  if (b == NULL) return lmp_nomem(L, sizeof(blob) + (size_t)n);
  b->size = (uint64_t)n;
  lmp_pushnew(L, &b->h);
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
  lua_pushinteger(L, lmp_obj_refs(&checkblob(L)->h));
  return 1;
}

static const luaL_Reg blob_meth[] = {
  {"len", blob_len}, {"get", blob_get}, {"set", blob_set},
  {"refs", blob_refs}, {NULL, NULL}
};

static const luaL_Reg blob_metameth[] = {{"__len", blob_len}, {NULL, NULL}};

static const lmp_type blob_type = {.name = "blob"};

static const lmp_class blob_class = {
  .name = BLOB, .what = "blob", .type = LMP_T_BLOB, .obj = &blob_type,
  .size = sizeof(lmp_handle), .meth = blob_meth, .metameth = blob_metameth,
};

static const lmp_class *const blob_classes[] = {&blob_class, NULL};

static const luaL_Reg blob_funcs[] = {{"blob", blob_new}, {NULL, NULL}};

const lmp_family lmp_blob_family = {blob_classes, blob_funcs, NULL};
