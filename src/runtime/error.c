/* error.c -- error objects made in C, and the arena-exhausted error: what
 * every binding raises besides Lua's own argument errors.
 */
#include <stdarg.h>
#include <string.h>

#include "runtime.h"

#define ERROR_MT "luamp.Error"

/* __tostring of an error object: "luamp.<type>: <message>". */
static int error_tostring(lua_State *L) {
  const char *type, *message;
  lua_getfield(L, 1, "type");
  type = luaL_optstring(L, -1, "Error");
  lua_getfield(L, 1, "message");
  message = luaL_tolstring(L, -1, NULL);
  lua_pushfstring(L, "luamp.%s: %s", type, message);
  return 1;
}

void lmp_error_open(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

int lmp_throw(lua_State *L, const char *type, const char *fmt, ...) {
  va_list ap;
  lua_createtable(L, 0, 2);
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_setfield(L, -2, "message");
  lmp_error_open(L);
  luaL_setmetatable(L, ERROR_MT);
  return lua_error(L);
}

int lmp_throw_with(lua_State *L, const char *type, const char *field,
                   const char *msg) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  lua_pushstring(L, msg);
  lua_setfield(L, -2, "message");
  lua_rotate(L, -2, 1);
  lua_setfield(L, -2, field);
  lmp_error_open(L);
  luaL_setmetatable(L, ERROR_MT);
  return lua_error(L);
}

int lmp_is_error(lua_State *L, int idx, const char *type) {
  int is;
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  lua_pushliteral(L, "type");
  lua_rawget(L, idx < 0 ? idx - 1 : idx);
  is = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), type) == 0;
  lua_pop(L, 1);
  return is;
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
