/* buf.c -- lmp_buf, the growable byte buffer messages are built in, and
 * the handles that keep one.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define BUF "luamp.buf"

/* The buffer doubles, so that a message built from many small appends
 * copies each byte a bounded number of times; but an append that doubling
 * would not hold gets exactly the room it asks for, so that a big string is
 * copied in once and carries no slack.  Fresh room is faulted in at once
 * (lmp_populate_grown): a message fills at least half of it. */
int lmp_buf_reserve(lmp_buf *b, size_t extra) {
  size_t cap;
  char *p;
  if (b->cap - b->len >= extra) return 0;
  if (extra > SIZE_MAX / 2 - b->len) return -ENOMEM;
  cap = b->cap ? b->cap * 2 : 128;
  if (cap < b->len + extra) cap = b->len + extra;
  p = lmp_realloc_fresh(lmp_realloc_plain, NULL, b->data, b->cap, b->cap, cap);
  if (p == NULL) return -ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

void lmp_buf_free(lmp_buf *b) {
  lmp_buf *n = b->next;
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
  b->claim = 0;
  b->next = NULL;
  while (n != NULL) {
    lmp_buf *next = n->next;
    free(n->data);
    free(n);
    n = next;
  }
}

lmp_buf *lmp_buf_claim(lua_State *L, lmp_buf *b, void *frame) {
  uintptr_t f = (uintptr_t)frame;
  while (b->claim > f) { /* an operation this one runs inside */
    if (b->next == NULL && (b->next = calloc(1, sizeof *b)) == NULL)
      luaL_error(L, "not enough memory");
    b = b->next;
  }
  b->claim = f;
  b->len = 0;
  return b;
}

static int buf_close(lua_State *L) {
  lmp_buf_free(luaL_checkudata(L, 1, BUF));
  return 0;
}

static int buf_tostring(lua_State *L) {
  lmp_buf *b = luaL_checkudata(L, 1, BUF);
  lua_pushfstring(L, BUF " (%I bytes)", (lua_Integer)b->len);
  return 1;
}

static const luaL_Reg buf_metameth[] = {
  {"__gc", buf_close}, {"__close", buf_close},
  {"__tostring", buf_tostring}, {NULL, NULL}
};

lmp_buf *lmp_buf_new(lua_State *L) {
  lmp_buf *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  if (luaL_newmetatable(L, BUF)) luaL_setfuncs(L, buf_metameth, 0);
  lua_setmetatable(L, -2);
  return b;
}


void lmp_bufhandle_bind(lua_State *L, lmp_obj *o) {
  lmp_bufhandle *h = lua_touserdata(L, -1);
  (void)o;
  h->buf = lmp_buf_new(L);
  lua_setiuservalue(L, -2, 1);
}
