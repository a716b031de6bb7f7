/* embed.c -- the Lua front of luamp (the files of lua/luamp), compiled into the
 * binary at build time and offered to `require` through package.preload.
 */
#include "internal.h"
#include "luamp_lua.h" /* generated: lmp_lua_files[] */

static int load_embedded(lua_State *L) {
  const lmp_lua_file *f = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, f->src, f->len, f->chunkname) != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, 1); /* module name */
  lua_call(L, 1, 1);
  return 1;
}

int lmp_open_embedded(lua_State *L) {
  const lmp_lua_file *f;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (f = lmp_lua_files; f->name != NULL; f++) {
    lua_pushlightuserdata(L, (void *)f);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, f->name);
  }
  lua_pop(L, 1);
  return 0;
}
