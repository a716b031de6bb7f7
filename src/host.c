/* host.c -- the embedding API of include/luamp.h: a host is a Lua state
 * with luamp loaded, and the promise to wait for its children at the end.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>
#include <string.h>

#include <lualib.h>

#include "internal.h"
#include "luamp.h"

struct luamp_host {
  lua_State *L;
};

static luamp_host *last_host; /* keeps the state reachable for leak checks */

/*
 * The host's allocator: Lua's own (realloc and free), except that a few
 * large blocks freed by Lua are kept for the next large allocation.  A
 * program that receives big messages makes a big string for each; glibc
 * gives every allocation of that size fresh pages from the kernel, which
 * must be faulted in and zeroed, at a cost several times the copy itself.
 * A kept block has its pages already.
 */
#define BIG_BLOCK ((size_t)1 << 20)
#define KEEP_BLOCKS 4
#define KEEP_BYTES ((size_t)256 << 20)

static struct {
  void *p;
  size_t size;
} kept[KEEP_BLOCKS];
static size_t kept_bytes;

static void *take_kept(size_t n) {
  int i, best = -1;
  void *p;
  for (i = 0; i < KEEP_BLOCKS; i++) {
    if (kept[i].p != NULL && kept[i].size >= n && kept[i].size / 2 <= n &&
        (best < 0 || kept[i].size < kept[best].size))
      best = i;
  }
  if (best < 0) return NULL;
  kept_bytes -= kept[best].size;
  p = kept[best].p;
  kept[best].p = NULL;
  kept[best].size = 0;
  return p;
}

static void keep_or_free(void *p) {
  size_t n = malloc_usable_size(p);
  int i;
  if (n + kept_bytes <= KEEP_BYTES) {
    for (i = 0; i < KEEP_BLOCKS; i++) {
      if (kept[i].p == NULL) {
        kept[i].p = p;
        kept[i].size = n;
        kept_bytes += n;
        return;
      }
    }
  }
  free(p);
}

static void free_kept(void) {
  int i;
  for (i = 0; i < KEEP_BLOCKS; i++) {
    free(kept[i].p);
    kept[i].p = NULL;
    kept[i].size = 0;
  }
  kept_bytes = 0;
}

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    if (ptr != NULL && osize >= BIG_BLOCK) keep_or_free(ptr);
    else free(ptr);
    return NULL;
  }
  if (ptr == NULL && nsize >= BIG_BLOCK) {
    void *p = take_kept(nsize);
    if (p != NULL) return p;
  }
  return realloc(ptr, nsize);
}
int lmp_error_was_interrupt;

/* The message handler: a traceback for strings, tostring for objects. */
static int msghandler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  lmp_error_was_interrupt = lmp_is_interrupt(L, 1);
  if (msg == NULL) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static int docall(lua_State *L, int narg, int nres) {
  int status, base = lua_gettop(L) - narg;
  lua_pushcfunction(L, msghandler);
  lua_insert(L, base);
  status = lua_pcall(L, narg, nres, base);
  lua_remove(L, base);
  return status;
}

LUAMP_EXPORT luamp_host *luamp_new(const luamp_config *cfg, const char **err) {
  static const luamp_config defaults;
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
  lua_setallocf(h->L, host_alloc, NULL);
  if (!cfg->no_stdlibs) luaL_openlibs(h->L);
  lmp_mark_hosted(h->L);
  lua_pushcfunction(h->L, luaopen_luamp);
  lua_pushliteral(h->L, "luamp");
  if (docall(h->L, 1, 1) != LUA_OK) {
    if (err != NULL) *err = "cannot load the luamp module";
    lua_close(h->L);
    free(h);
    return NULL;
  }
  luaL_getsubtable(h->L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(h->L, -2);
  lua_setfield(h->L, -2, "luamp");
  lua_pop(h->L, 2);
  lmp_sigint_own();
  last_host = h;
  return h;
}

LUAMP_EXPORT lua_State *luamp_state(luamp_host *h) { return h->L; }

LUAMP_EXPORT int luamp_dofile(luamp_host *h, const char *path) {
  int status = luaL_loadfile(h->L, path);
  if (status == LUA_OK) status = docall(h->L, 0, 0);
  return status;
}

LUAMP_EXPORT int luamp_dostring(luamp_host *h, const char *code,
                                const char *chunkname) {
  int status = luaL_loadbuffer(h->L, code, strlen(code),
                               chunkname != NULL ? chunkname : code);
  if (status == LUA_OK) status = docall(h->L, 0, 0);
  return status;
}

/* The traceback-producing call, for main.c. */
int lmp_host_docall(lua_State *L, int narg, int nres) {
  return docall(L, narg, nres);
}

LUAMP_EXPORT int luamp_close(luamp_host *h) {
  int n;
  if (h == NULL) return 0;
  n = lmp_run_atexit(h->L);
  if (n >= 0) n += lmp_terminate_children(0.5, 0);
  lmp_sigint_forget();
  lua_close(h->L);
  free_kept();
  if (last_host == h) last_host = NULL;
  free(h);
  return n;
}

LUAMP_EXPORT int luamp_interrupted(void) { return lmp_interrupted_flag != 0; }
