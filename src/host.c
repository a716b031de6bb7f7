/* host.c -- the embedding API of include/luamp.h: a host is a Lua state
 * with luamp loaded, its allocator, and the promise to wait for its
 * children at the end.  Everything a host owns lives in it, so that a host
 * made after another was closed starts afresh.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>
#include <string.h>
#include <unistd.h>

#include <lualib.h>

#include "luamp.h"
#include "runtime/runtime.h"

/*
 * The host's allocator: Lua's own (realloc and free), except that a few
 * large blocks freed by Lua are kept for the next large allocation.  A
 * program that receives big messages makes a big string for each; glibc
 * gives every allocation of that size fresh pages from the kernel, which
 * must be faulted in and zeroed, at a cost several times the copy itself.
 * A kept block has its pages already.  A block that grows by
 * LMP_POPULATE_MIN or more into fresh pages (the heap's growth, or a
 * mapping of its own) has them faulted in at once (lmp_populate_grown),
 * since Lua writes all of it (a table's slots, a string's bytes, a
 * message's), rather than in a trap for each page as it writes: a
 * 200k-item map's table of results is some 800 pages.
 */
#define BIG_BLOCK ((size_t)1 << 20)
#define KEEP_BLOCKS 4
#define KEEP_BYTES ((size_t)256 << 20)

struct luamp_host {
  lua_State *L;
  int interrupted; /* the last error it raised was a Ctrl-C */
  struct {
    void *p;
    size_t size;
  } kept[KEEP_BLOCKS];
  size_t kept_bytes;
};

static luamp_host *last_host; /* keeps the state reachable for leak checks */
static int nhosts;            /* alive: the last to close ends the runtime */

static void *take_kept(luamp_host *h, size_t n) {
  int i, best = -1;
  void *p;
  for (i = 0; i < KEEP_BLOCKS; i++) {
    if (h->kept[i].p != NULL && h->kept[i].size >= n &&
        h->kept[i].size / 2 <= n &&
        (best < 0 || h->kept[i].size < h->kept[best].size))
      best = i;
  }
  if (best < 0) return NULL;
  h->kept_bytes -= h->kept[best].size;
  p = h->kept[best].p;
  h->kept[best].p = NULL;
  h->kept[best].size = 0;
  return p;
}

static void keep_or_free(luamp_host *h, void *p) {
  size_t n = malloc_usable_size(p);
  int i;
  if (n + h->kept_bytes <= KEEP_BYTES) {
    for (i = 0; i < KEEP_BLOCKS; i++) {
      if (h->kept[i].p == NULL) {
        h->kept[i].p = p;
        h->kept[i].size = n;
        h->kept_bytes += n;
        return;
      }
    }
  }
  free(p);
}

static void free_kept(luamp_host *h) {
  int i;
  for (i = 0; i < KEEP_BLOCKS; i++) {
    free(h->kept[i].p);
    h->kept[i].p = NULL;
    h->kept[i].size = 0;
  }
  h->kept_bytes = 0;
}

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  luamp_host *h = ud;
  if (nsize == 0) {
    if (ptr != NULL && osize >= BIG_BLOCK) keep_or_free(h, ptr);
    else free(ptr);
    return NULL;
  }
  if (ptr == NULL && nsize >= BIG_BLOCK) {
    void *p = take_kept(h, nsize);
    if (p != NULL) return p;
  }
  /* (For a new block, osize is the kind of object.) */
  return lmp_realloc_fresh(lmp_realloc_plain, NULL, ptr, osize,
                           ptr == NULL ? 0 : osize, nsize);
}

/* The message handler: a traceback for strings, tostring for objects; it
 * notes in its host (upvalue 1) whether the error was a Ctrl-C. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  luamp_host *h = lua_touserdata(L, lua_upvalueindex(1));
  h->interrupted = lmp_is_interrupt(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

LUAMP_EXPORT int luamp_pcall(luamp_host *h, int narg, int nres) {
  lua_State *L = h->L;
  int status, base = lua_gettop(L) - narg;
  lua_pushlightuserdata(L, h);
  lua_pushcclosure(L, msghandler, 1);
  lua_insert(L, base);
  h->interrupted = 0;
  status = lua_pcall(L, narg, nres, base);
  lua_remove(L, base);
  return status;
}

LUAMP_EXPORT int luamp_interrupted(luamp_host *h) { return h->interrupted; }

LUAMP_EXPORT int luamp_parse_size(const char *s, size_t *out) {
  return lmp_parse_size(s, out) < 0 ? -1 : 0;
}

/* luamp.set_start_method(method): 0, or -1 with the error on the stack. */
static int set_method(luamp_host *h, const char *method) {
  lua_State *L = h->L;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "luamp");
  lua_getfield(L, -1, "set_start_method");
  lua_remove(L, -2);
  lua_remove(L, -2);
  lua_pushstring(L, method);
  lua_pushboolean(L, 1);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) return -1;
  return 0;
}

/* Loads luamp into h's new state as cfg says: NULL, or why it could not.
 * With no_stdlibs, luamp's own Lua (which needs the standard libraries)
 * is left to the caller's `require "luamp"`, once it has opened them. */
static const char *load_luamp(luamp_host *h, const luamp_config *cfg) {
  static char msg[200];
  lua_State *L = h->L;
  if (cfg->no_stdlibs) {
    if (cfg->start_method != NULL)
      return "a start method cannot be set with no_stdlibs (set it once "
             "luamp is required)";
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_luamp);
    lua_setfield(L, -2, "luamp");
    lua_pop(L, 1);
    return NULL;
  }
  luaL_openlibs(L);
  lua_pushcfunction(L, luaopen_luamp);
  lua_pushliteral(L, "luamp");
  if (luamp_pcall(h, 1, 1) != LUA_OK) {
    snprintf(msg, sizeof msg, "cannot load the luamp module: %s",
             lua_tostring(L, -1));
    return msg;
  }
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "luamp");
  lua_pop(L, 2);
  if (cfg->start_method != NULL && set_method(h, cfg->start_method) < 0) {
    snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
    return msg;
  }
  return NULL;
}

LUAMP_EXPORT luamp_host *luamp_new(const luamp_config *cfg, const char **err) {
  static const luamp_config defaults;
  const char *why;
  luamp_host *h;
  int rc;
  if (cfg == NULL) cfg = &defaults;
  rc = lmp_arena_init(cfg->arena_size);
  if (rc < 0) {
    static char msg[160];
    if (rc == -EINVAL)
      snprintf(msg, sizeof msg, "bad LUAMP_ARENA '%.40s' (expected a size "
               "such as 256M or 4G)", getenv("LUAMP_ARENA"));
    else
      snprintf(msg, sizeof msg, "cannot reserve the shared arena (set a "
               "smaller size with --arena or LUAMP_ARENA)");
    if (err != NULL) *err = msg;
    return NULL;
  }
  if (lmp_runtime_init(cfg->loop) < 0) {
    if (err != NULL) *err = "cannot start the event loop";
    return NULL;
  }
  h = calloc(1, sizeof *h);
  if (h == NULL || (h->L = luaL_newstate()) == NULL) {
    free(h);
    if (err != NULL) *err = "not enough memory";
    return NULL;
  }
  lua_setallocf(h->L, host_alloc, h);
  lua_pushboolean(h->L, 1);
  lua_setfield(h->L, LUA_REGISTRYINDEX, LMP_HOSTED);
  if ((why = load_luamp(h, cfg)) != NULL) {
    if (err != NULL) *err = why;
    lua_close(h->L);
    free(h);
    return NULL;
  }
  lmp_sigint_own();
  last_host = h;
  nhosts++;
  return h;
}

LUAMP_EXPORT lua_State *luamp_state(luamp_host *h) { return h->L; }

/* The host of a child started by exec (spawn, or the forkserver that
 * forks the others): luamp loaded, then the application's own functions
 * (its `open`).  The runtime does the rest: the family's arena and slot
 * before, the child's message or the server's requests after. */
static lua_State *open_child_host(void *ud) {
  const char *err = NULL;
  void (*open)(lua_State *L) = *(void (**)(lua_State *))ud;
  luamp_host *h = luamp_new(NULL, &err);
  if (h == NULL) {
    lmp_spawn_fail(err);
    return NULL;
  }
  if (open != NULL) open(h->L);
  return h->L;
}

LUAMP_EXPORT int luamp_child_main(int argc, char **argv,
                                  void (*open)(lua_State *L)) {
  return lmp_child_main(argc, argv, open_child_host, &open);
}

LUAMP_EXPORT int luamp_dofile(luamp_host *h, const char *path) {
  int status = luaL_loadfile(h->L, path);
  if (status == LUA_OK) status = luamp_pcall(h, 0, 0);
  return status;
}

LUAMP_EXPORT int luamp_dostring(luamp_host *h, const char *code,
                                const char *chunkname) {
  int status = luaL_loadbuffer(h->L, code, strlen(code),
                               chunkname != NULL ? chunkname : code);
  if (status == LUA_OK) status = luamp_pcall(h, 0, 0);
  return status;
}

LUAMP_EXPORT int luamp_close(luamp_host *h) {
  int n;
  if (h == NULL) return 0;
  /* Ctrl-C ended its code: every child goes now, not at its own pace. */
  if (h->interrupted) lmp_terminate_children(0.5, 0);
  n = lmp_run_atexit(h->L);
  if (n >= 0) n += lmp_terminate_children(0.5, 0);
  lmp_sigint_forget();
  lua_close(h->L);
  free_kept(h);
  if (last_host == h) last_host = NULL;
  free(h);
  if (--nhosts == 0) lmp_runtime_end();
  return n;
}
