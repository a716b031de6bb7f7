/* embed.c -- an application that embeds luamp: it registers a C function,
 * and a forked Process calls it, since workers are forks of the
 * application.  Built and run by the test suite. */
#include <stdio.h>
#include <unistd.h>

#include <lauxlib.h>

#include <luamp.h>

/* answer() -> 42, and the pid of the process that ran it. */
static int answer(lua_State *L) {
  lua_pushinteger(L, 42);
  lua_pushinteger(L, getpid());
  return 2;
}

static const char *job =
  "local mp = require 'luamp'\n"
  "local p = mp.Process{target = function()\n"
  "  local n, pid = app.answer()\n"
  "  print(('child says: %d from %d'):format(n, pid))\n"
  "  os.exit(n == 42 and pid ~= app.host_pid and 7 or 1)\n"
  "end}\n"
  "p:start()\n"
  "p:join()\n"
  "assert(p.exitcode == 7, 'exitcode ' .. tostring(p.exitcode))\n"
  "print('PASS')\n";

int main(void) {
  const char *err;
  luamp_config cfg = {0};
  luamp_host *h;
  lua_State *L;
  int status;

  cfg.arena_size = 64u << 20;
  h = luamp_new(&cfg, &err);
  if (h == NULL) {
    fprintf(stderr, "embed: %s\n", err);
    return 1;
  }
  L = luamp_state(h);
  lua_newtable(L);
  lua_pushcfunction(L, answer);
  lua_setfield(L, -2, "answer");
  lua_pushinteger(L, getpid());
  lua_setfield(L, -2, "host_pid");
  lua_setglobal(L, "app");

  status = luamp_dostring(h, job, "=job");
  if (status != LUA_OK) {
    fprintf(stderr, "embed: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  luamp_close(h);
  return status == LUA_OK ? 0 : 1;
}
