/* luamp.h -- public API of libluamp: a Lua 5.4 host whose workers are forks.
 *
 * An application embeds luamp by creating a host, reaching its lua_State,
 * running code in it and closing it.  Every luamp process of the family
 * (the host and all the processes it forks, transitively) shares one arena
 * of shared memory, made when the first host or module starts.
 */
#ifndef LUAMP_H
#define LUAMP_H

#include <stddef.h>

#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LUAMP_BUILDING)
#define LUAMP_EXPORT __attribute__((visibility("default")))
#else
#define LUAMP_EXPORT
#endif

#define LUAMP_VERSION_MAJOR 0
#define LUAMP_VERSION_MINOR 1
#define LUAMP_VERSION_PATCH 0
#define LUAMP_VERSION "0.1.0"

/* Options for luamp_new.  Zero-initialise and set what you need. */
typedef struct luamp_config {
  /* Bytes of shared arena to reserve; 0 means $LUAMP_ARENA or the default
   * (1 GiB).  The reservation is virtual: pages are touched lazily.  Only
   * the first host or module of a process sets it. */
  size_t arena_size;
  /* A libuv loop (uv_loop_t *) the host should use instead of making its
   * own; NULL for the host's own.  The caller keeps ownership. */
  void *loop;
  /* Leave the standard libraries out of the new state (the caller opens
   * what it wants before requiring luamp); 0 opens them all. */
  int no_stdlibs;
} luamp_config;

typedef struct luamp_host luamp_host;

/* Creates a host: a fresh lua_State with the standard libraries and the
 * luamp module loaded (global `luamp` is not set; scripts `require` it).
 * Returns NULL on failure with a message in *err (static storage) when err
 * is not NULL. */
LUAMP_EXPORT luamp_host *luamp_new(const luamp_config *cfg, const char **err);

/* The host's Lua state.  Register C functions here before forking: every
 * worker is a fork of this process and can call them. */
LUAMP_EXPORT lua_State *luamp_state(luamp_host *h);

/* Runs a file (NULL for stdin) or a string under a traceback handler.
 * Returns LUA_OK, or an error status with the message and traceback on the
 * top of the stack (the caller pops it).  The chunk's results are
 * discarded. */
LUAMP_EXPORT int luamp_dofile(luamp_host *h, const char *path);
LUAMP_EXPORT int luamp_dostring(luamp_host *h, const char *code,
                                const char *chunkname);

/* Ends the host: joins non-daemon children, terminates daemon children,
 * closes the state and frees the host.  Returns the number of children that
 * had to be terminated, or -1 when Ctrl-C interrupted the wait (every
 * child has then been ended).  Never raises. */
LUAMP_EXPORT int luamp_close(luamp_host *h);

/* True (non-zero) once SIGINT has interrupted the host's code. */
LUAMP_EXPORT int luamp_interrupted(void);

/* The module opener, for `require "luamp"` from a stock lua5.4. */
LUAMP_EXPORT int luaopen_luamp(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
