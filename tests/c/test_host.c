/* test_host.c -- the embedding API as an application uses it: a host that
 * runs a Pool and is closed, then a second host in the same process, whose
 * blocking calls, Pool and children must work as the first one's did. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include <luamp.h>

static int failures;

/* Runs code in h; it must return the string `want`. */
static void expect(luamp_host *h, const char *code, const char *want) {
  lua_State *L = luamp_state(h);
  int top = lua_gettop(L);
  if (luaL_loadstring(L, code) != LUA_OK ||
      luamp_pcall(h, 0, 1) != LUA_OK) {
    fprintf(stderr, "FAIL %s\n  raised: %s\n", code, lua_tostring(L, -1));
    failures++;
  } else if (lua_type(L, -1) != LUA_TSTRING ||
             strcmp(lua_tostring(L, -1), want) != 0) {
    fprintf(stderr, "FAIL %s\n  returned: %s\n  expected: %s\n", code,
            luaL_tolstring(L, -1, NULL), want);
    failures++;
  }
  lua_settop(L, top);
}

static const char *pool =
    "local mp = require 'luamp'\n"
    "local pool <close> = mp.Pool(2)\n"
    "local r = pool:map(function(x) return x * x end, {1, 2, 3})\n"
    "local got = {}\n"
    "pool:apply_async(function() return 7 end, nil,\n"
    "                 function(v) got[#got + 1] = v end):wait(5)\n"
    "return table.concat(r, ' ') .. ' / ' .. table.concat(got, ' ')";

/* Blocking calls that wake up at least once before they return. */
static const char *waits =
    "local mp = require 'luamp'\n"
    "local q = mp.Queue()\n"
    "local ok, e = pcall(q.get, q, true, 0.05)\n"
    "mp.sleep(0.02)\n"
    "local p = mp.Process{target = function() q:put('from the child') end}\n"
    "p:start()\n"
    "local v = q:get(true, 5)\n"
    "p:join()\n"
    "return tostring(ok) .. ' ' .. e.type .. ' ' .. v .. ' ' .. p.exitcode";

int main(void) {
  luamp_config cfg;
  const char *err = NULL;
  int round;
  memset(&cfg, 0, sizeof cfg);
  cfg.arena_size = 64u << 20;
  for (round = 1; round <= 2; round++) {
    luamp_host *h = luamp_new(&cfg, &err);
    if (h == NULL) {
      fprintf(stderr, "FAIL host %d: %s\n", round, err);
      return 1;
    }
    /* The waits first: nothing of the first host's Pool may reach them. */
    expect(h, waits, "false Empty from the child 0");
    expect(h, pool, "1 4 9 / 7");
    expect(h, "return tostring(require('luamp').stats().children)", "0");
    if (luamp_close(h) != 0) {
      fprintf(stderr, "FAIL host %d: children left at close\n", round);
      failures++;
    }
  }
  printf("test_host: %s\n", failures ? "FAILED" : "all passed");
  return failures != 0;
}
