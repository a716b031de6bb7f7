/* main.c -- the `luamp` command: lua(1)'s interface over a luamp host.
 *
 *   luamp [options] [script [args]]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "luamp.h"

static const char *progname = "luamp";
static luamp_host *host;

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] [script [args]]\n"
          "       %s worker URL [-c N] [options]   run broker pools' tasks\n"
          "       %s workers URL                   list live workers\n"
          "       %s keygen                        print a new authkey\n"
          "Available options are:\n"
          "  -e stat       execute string 'stat'\n"
          "  -i            enter interactive mode after executing 'script'\n"
          "  -l mod        require library 'mod' into global 'mod'\n"
          "  -l g=mod      require library 'mod' into global 'g'\n"
          "  -v            show version information\n"
          "  -E            ignore environment variables\n"
          "  -W            turn warnings on\n"
          "  --arena SIZE  size of the shared arena (e.g. 256M, 4G)\n"
          "  -h, --help    show this help and exit\n"
          "  --            stop handling options\n"
          "  -             stop handling options and execute stdin\n"
          "luamp %s (%s)\n",
          progname, progname, progname, progname, LUAMP_VERSION,
          LUA_RELEASE);
  fflush(f);
}

/* As lua.c: what was wrong, then the usage, on stderr. */
static void print_usage(const char *badoption) {
  fprintf(stderr, "%s: ", progname);
  if (badoption[1] == 'e' || badoption[1] == 'l')
    fprintf(stderr, "'%s' needs argument\n", badoption);
  else
    fprintf(stderr, "unrecognized option '%s'\n", badoption);
  usage(stderr);
}

/* Exactly lua(1)'s line: luamp's own version is in the usage. */
static void print_version(void) {
  printf("%s\n", LUA_COPYRIGHT);
  fflush(stdout);
}

/* "progname: msg", or only "msg" with no progname (in the REPL). */
static void l_message(const char *pname, const char *msg) {
  if (pname != NULL) fprintf(stderr, "%s: ", pname);
  fprintf(stderr, "%s\n", msg);
  fflush(stderr);
}

/* Prints an error message, one line for load errors, a traceback else. */
static int report(lua_State *L, int status) {
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg == NULL) msg = "(error object is not a string)";
    l_message(progname, msg);
    lua_pop(L, 1);
  }
  return status;
}

/* Builds the global `arg` as lua.c does: script at 0, options below. */
static void createargtable(lua_State *L, char **argv, int argc, int script) {
  int i, narg;
  if (script == argc) script = 0; /* no script: arg[0] is the command */
  narg = argc - (script + 1);
  lua_createtable(L, narg, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

static int pushargs(lua_State *L) {
  int i, n;
  if (lua_getglobal(L, "arg") != LUA_TTABLE)
    luaL_error(L, "'arg' is not a table");
  n = (int)luaL_len(L, -1);
  luaL_checkstack(L, n + 3, "too many arguments to script");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -i);
  return n;
}

static int dochunk(lua_State *L, int status) {
  if (status == LUA_OK) status = luamp_pcall(host, 0, 0);
  report(L, status);
  return status;
}

/* -l g=mod: g = require "mod"; -l mod: mod = require "mod". */
static int dolibrary(lua_State *L, char *globname) {
  int status;
  char *modname = strchr(globname, '=');
  if (modname == NULL) {
    modname = globname;
  } else {
    *modname = '\0';
    modname++;
  }
  lua_getglobal(L, "require");
  lua_pushstring(L, modname);
  status = luamp_pcall(host, 1, 1);
  if (status == LUA_OK) lua_setglobal(L, globname);
  return report(L, status);
}

static int handle_script(lua_State *L, char **argv) {
  int status;
  const char *fname = argv[0];
  if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0) fname = NULL;
  status = luaL_loadfile(L, fname);
  if (status == LUA_OK) {
    int n = pushargs(L);
    status = luamp_pcall(host, n, LUA_MULTRET);
  }
  report(L, status);
  return status;
}

/* ------------------------------------------------------------ the REPL */

#define MAXINPUT 512 /* as lua.c: a longer line is read in pieces */

static int incomplete(lua_State *L, int status) {
  if (status == LUA_ERRSYNTAX) {
    size_t lmsg;
    const char *msg = lua_tolstring(L, -1, &lmsg);
    if (lmsg >= 5 && strcmp(msg + lmsg - 5, "<eof>") == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

/* The prompt: tostring of _PROMPT or _PROMPT2, else the default; one
 * value is left on the stack either way. */
static const char *get_prompt(lua_State *L, int firstline) {
  const char *p;
  if (lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2") == LUA_TNIL)
    return firstline ? "> " : ">> ";
  p = luaL_tolstring(L, -1, NULL);
  lua_remove(L, -2);
  return p;
}

#define DROPPED (-2) /* loadline: Ctrl-C dropped the statement */

static int noop(lua_State *L) {
  (void)L;
  return 0;
}

/* Ctrl-C at the prompt drops what was typed, as Python's and a shell's
 * prompts do.  The interrupt it left pending is taken here, by a call
 * that it interrupts, so that it does not fall on the next line's code. */
static void drop_interrupt(lua_State *L) {
  lua_pushcfunction(L, noop);
  if (luamp_pcall(host, 0, 0) != LUA_OK) lua_pop(L, 1);
  fputs("\n", stdout);
  fflush(stdout);
}

/* Reads a line and pushes it, a leading '=' made "return": 1; 0 at the
 * end of input; DROPPED after a Ctrl-C.  Input that is not a terminal is
 * echoed after the prompt, as readline does for lua(1), so that a
 * transcript reads the same. */
static int pushline(lua_State *L, int firstline) {
  char b[MAXINPUT];
  size_t l;
  const char *prmt = get_prompt(L, firstline);
  fputs(prmt, stdout);
  fflush(stdout);
  if (fgets(b, sizeof b, stdin) == NULL) {
    int interrupted = ferror(stdin) && errno == EINTR;
    lua_pop(L, 1);
    if (!interrupted) return 0;
    clearerr(stdin);
    drop_interrupt(L);
    return DROPPED;
  }
  lua_pop(L, 1);
  l = strlen(b);
  if (!isatty(STDIN_FILENO)) {
    fputs(b, stdout);
    if (l == 0 || b[l - 1] != '\n') fputs("\n", stdout);
    fflush(stdout);
  }
  if (l > 0 && b[l - 1] == '\n') b[--l] = '\0';
  if (firstline && b[0] == '=')
    lua_pushfstring(L, "return %s", b + 1);
  else
    lua_pushlstring(L, b, l);
  return 1;
}

/* Tries the line as "return <line>;", so that an expression is echoed. */
static int addreturn(lua_State *L) {
  const char *line = lua_tostring(L, -1);
  const char *retline = lua_pushfstring(L, "return %s;", line);
  int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
  if (status == LUA_OK) lua_remove(L, -2);
  else lua_pop(L, 2);
  return status;
}

/* Reads continuation lines while the statement is incomplete. */
static int multiline(lua_State *L) {
  for (;;) {
    size_t len;
    const char *line = lua_tolstring(L, 1, &len);
    int status = luaL_loadbuffer(L, line, len, "=stdin"), more;
    if (!incomplete(L, status)) return status;
    if ((more = pushline(L, 0)) != 1) return more == DROPPED ? more : status;
    lua_pushliteral(L, "\n");
    lua_insert(L, -2);
    lua_concat(L, 3);
  }
}

static int loadline(lua_State *L) {
  int status;
  lua_settop(L, 0);
  if ((status = pushline(L, 1)) != 1) return status == DROPPED ? status : -1;
  if ((status = addreturn(L)) != LUA_OK) status = multiline(L);
  lua_remove(L, 1);
  return status;
}

static void l_print(lua_State *L) {
  int n = lua_gettop(L);
  if (n > 0) {
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
      l_message(progname, lua_pushfstring(L, "error calling 'print' (%s)",
                                          lua_tostring(L, -1)));
  }
}

/* Errors in the REPL are printed without the program's name. */
static void doREPL(lua_State *L) {
  int status;
  const char *oldprogname = progname;
  progname = NULL;
  while ((status = loadline(L)) != -1) {
    if (status == DROPPED) continue;
    if (status == LUA_OK) status = luamp_pcall(host, 0, LUA_MULTRET);
    if (status == LUA_OK) l_print(L);
    else report(L, status);
  }
  lua_settop(L, 0);
  fputs("\n", stdout);
  fflush(stdout);
  progname = oldprogname;
}

/* ------------------------------------------------------------------ main */

#define has_error 1 /* bad option */
#define has_i 2     /* -i */
#define has_v 4     /* -v (or -i) */
#define has_e 8     /* -e */
#define has_E 16    /* -E */
#define has_h 32    /* -h, --help */

/* Reads the --arena option at argv[*i] (taking its value from the next
 * argument when it has no "="); 0, or -1 after saying what is wrong. */
static int arena_option(char **argv, int *i, size_t *size) {
  const char *a = argv[*i];
  const char *v = a[7] == '=' ? a + 8 : argv[++*i];
  if (v == NULL || luamp_parse_size(v, size) < 0 || *size == 0) {
    fprintf(stderr, "%s: --arena needs a size such as 256M or 4G\n",
            progname);
    return -1;
  }
  return 0;
}

/* As lua.c's collectargs: the options before the script, *first the index
 * of the script (argc if none, or of the bad option); with luamp's own
 * --arena, -h and --help. */
static int collectargs(char **argv, int *first, luamp_config *cfg) {
  int args = 0, i;
  for (i = 1; argv[i] != NULL; i++) {
    *first = i;
    if (argv[i][0] != '-') return args;
    switch (argv[i][1]) {
      case '-':
        if (argv[i][2] == '\0') {
          *first = i + 1;
          return args;
        }
        if (strcmp(argv[i], "--help") == 0) return args | has_h;
        if (strncmp(argv[i], "--arena", 7) == 0 &&
            (argv[i][7] == '\0' || argv[i][7] == '=')) {
          if (arena_option(argv, &i, &cfg->arena_size) < 0) return -1;
          continue;
        }
        return has_error;
      case '\0':
        return args;
      case 'E':
        if (argv[i][2] != '\0') return has_error;
        args |= has_E;
        break;
      case 'W':
        if (argv[i][2] != '\0') return has_error;
        break;
      case 'h':
        if (argv[i][2] != '\0') return has_error;
        return args | has_h;
      case 'i':
        args |= has_i; /* FALLTHROUGH */
      case 'v':
        if (argv[i][2] != '\0') return has_error;
        args |= has_v;
        break;
      case 'e':
        args |= has_e; /* FALLTHROUGH */
      case 'l':
        if (argv[i][2] == '\0') {
          i++;
          if (argv[i] == NULL || argv[i][0] == '-') return has_error;
        }
        break;
      default:
        return has_error;
    }
  }
  *first = i;
  return args;
}

/* -e, -l and -W in order; 0 after an error. */
static int runargs(lua_State *L, char **argv, int n) {
  int i;
  for (i = 1; i < n; i++) {
    int option = argv[i][1];
    if (option == '-') { /* "--" before the script, or --arena */
      if (strcmp(argv[i], "--arena") == 0) i++;
      continue;
    }
    if (option == 'e' || option == 'l') {
      int status;
      char *extra = argv[i] + 2;
      if (*extra == '\0') extra = argv[++i];
      status = option == 'e'
                   ? dochunk(L, luaL_loadbuffer(L, extra, strlen(extra),
                                                "=(command line)"))
                   : dolibrary(L, extra);
      if (status != LUA_OK) return 0;
    } else if (option == 'W') {
      lua_warning(L, "@on", 0);
    }
  }
  return 1;
}

static int handle_luainit(lua_State *L) {
  const char *name = "=LUA_INIT_5_4";
  const char *init = getenv(name + 1);
  if (init == NULL) {
    name = "=LUA_INIT";
    init = getenv(name + 1);
  }
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return dochunk(L, luaL_loadfile(L, init + 1));
  return dochunk(L, luaL_loadbuffer(L, init, strlen(init), name));
}

/* -E: the paths lua(1) would have with no LUA_PATH and LUA_CPATH. */
static void default_paths(lua_State *L) {
  if (lua_getglobal(L, "package") == LUA_TTABLE) {
    lua_pushliteral(L, LUA_PATH_DEFAULT);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, LUA_CPATH_DEFAULT);
    lua_setfield(L, -2, "cpath");
  }
  lua_pop(L, 1);
}

/* The command line, for pmain. */
static struct {
  int argc, args, script;
  char **argv;
} cmd;

/* The collector runs in generational mode, as lua(1)'s does: most of what
 * a job makes (a task's arguments, a message, its decoded values) dies
 * young.  Every process of the program starts so: this one, its forks, the
 * children it spawns and the broker's workers.  A script may switch back
 * with collectgarbage("incremental"). */
static void collect_generational(lua_State *L) {
  lua_gc(L, LUA_GCGEN, 0, 0);
}

/* As lua.c's pmain, and like it run as a protected C function, so that
 * tracebacks end as lua(1)'s do; true if all went well. */
static int pmain(lua_State *L) {
  int argc = cmd.argc, args = cmd.args, script = cmd.script;
  char **argv = cmd.argv;
  int optlim = script < argc ? script : argc;
  collect_generational(L);
  if (args & has_E) default_paths(L);
  createargtable(L, argv, argc, script);
  if (!(args & has_E) && handle_luainit(L) != LUA_OK) return 0;
  if (!runargs(L, argv, optlim)) return 0;
  if (script < argc && handle_script(L, argv + script) != LUA_OK) return 0;
  if (args & has_i) {
    doREPL(L);
  } else if (script == argc && !(args & (has_e | has_v))) {
    if (isatty(STDIN_FILENO)) {
      print_version();
      doREPL(L);
    } else if (dochunk(L, luaL_loadfile(L, NULL)) != LUA_OK) {
      return 0;
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* luamp worker|workers|keygen ARGS: luamp.worker's main, under a
 * traceback; its exit status. */
static int subcommand(lua_State *L) {
  int i;
  collect_generational(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "luamp.worker");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_pushstring(L, cmd.argv[1]);
  lua_createtable(L, cmd.argc - 2, 0);
  for (i = 2; i < cmd.argc; i++) {
    lua_pushstring(L, cmd.argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_call(L, 2, 1);
  return 1;
}

static int is_subcommand(const char *a) {
  return a != NULL && (strcmp(a, "worker") == 0 ||
                       strcmp(a, "workers") == 0 || strcmp(a, "keygen") == 0);
}

/* Makes the host for argv; its state, or NULL having said why. */
static lua_State *start_host(luamp_config *cfg, int argc, char **argv) {
  const char *err = NULL;
  host = luamp_new(cfg, &err);
  if (host == NULL) {
    l_message(progname, err);
    return NULL;
  }
  cmd.argc = argc;
  cmd.argv = argv;
  return luamp_state(host);
}

static int run_subcommand(int argc, char **argv) {
  luamp_config cfg;
  lua_State *L;
  int status, code;
  memset(&cfg, 0, sizeof cfg);
  if ((L = start_host(&cfg, argc, argv)) == NULL) return EXIT_FAILURE;
  lua_pushcfunction(L, subcommand);
  status = luamp_pcall(host, 0, 1);
  code = status == LUA_OK ? (int)luaL_optinteger(L, -1, 0) : EXIT_FAILURE;
  if (status != LUA_OK) report(L, status);
  lua_settop(L, 0);
  if (luamp_close(host) < 0 && code == 0) code = 130;
  return code;
}

int main(int argc, char **argv) {
  luamp_config cfg;
  lua_State *L;
  int args, script = argc, status, ok, exitcode;

  /* A spawned child does not return. */
  luamp_child_main(argc, argv, collect_generational);
  memset(&cfg, 0, sizeof cfg);
  if (argv[0] != NULL && argv[0][0] != '\0') progname = argv[0];
  if (argc > 1 && is_subcommand(argv[1])) return run_subcommand(argc, argv);
  args = collectargs(argv, &script, &cfg);
  if (args < 0) return EXIT_FAILURE;
  if (args == has_error) {
    print_usage(argv[script]);
    return EXIT_FAILURE;
  }
  if (args & has_h) {
    usage(stdout);
    return EXIT_SUCCESS;
  }
  if (args & has_v) print_version();
  if (args & has_E) unsetenv("LUAMP_ARENA");
  if ((L = start_host(&cfg, argc, argv)) == NULL) return EXIT_FAILURE;
  cmd.args = args;
  cmd.script = script;
  lua_pushcfunction(L, pmain);
  status = lua_pcall(L, 0, 1, 0);
  ok = status == LUA_OK && lua_toboolean(L, -1);
  report(L, status);
  lua_settop(L, 0);
  exitcode = ok ? EXIT_SUCCESS : EXIT_FAILURE;
  /* Ctrl-C ended the script: every child goes now (luamp_close sees to
   * it), and the status says why, as a shell reports a job killed by
   * SIGINT. */
  if (!ok && luamp_interrupted(host)) exitcode = 130;
  if (luamp_close(host) < 0) exitcode = 130;
  return exitcode;
}
