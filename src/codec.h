/* codec.h -- what the encoder (codec.c) and the decoder (decode.c) share:
 * the tags and limits of the message format, which the block comment at the
 * top of codec.c describes, and the few functions both sides call.
 */
#ifndef LUAMP_CODEC_H
#define LUAMP_CODEC_H

#include "internal.h"

#define VERSION 1
#define MAXDEPTH 200 /* nested tables and functions, as LUAI_MAXCCALLS */

/* Stack room: each level of nesting holds at most LEVELSTACK slots (a key
 * and a value, or a table, key and value), and any level may push 8 more
 * for a moment.  The first PRESTACK levels are reserved on entry, with the
 * 5 slots the encoder keeps, so that small messages check the stack once. */
#define LEVELSTACK 3
#define PRESTACK 16
#define ENTRYSTACK (5 + 8 + PRESTACK * LEVELSTACK)

enum {
  T_NIL = 0x00, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_TABLE, T_FUNC,
  T_REF, T_JOIN, T_GLOBALS, T_NAME, T_MODULE, T_OBJ, T_INDEX, T_META,
  T_KEEP = 0x10,     /* on T_TABLE or T_FUNC: a ref or join names it */
  T_SHORTSTR = 0x40, /* 0x40..0x7f */
  T_FIXINT = 0x80    /* 0x80..0xff */
};

#define NORETURN __attribute__((noreturn))

/* Raises a message without a position, unlike luaL_error: the codec's
 * errors are about a value, and its callers are mostly C. */
NORETURN void lmp_codec_raise(lua_State *L, const char *fmt, ...);

/* The MAC of a function's bytecode (SipHash-2-4 under the family's key),
 * or 0 with *ok cleared when there is no arena and so no key. */
uint64_t lmp_codemac(const char *code, size_t n, int *ok);

/* Walks the message [p, p+n) without Lua, calling fn on every object it
 * names that lmp_obj_check accepts.  Returns 0, or -1 at the first thing it
 * cannot read (having called fn on the objects before it). */
int lmp_msg_walk(const char *p, size_t n, void (*fn)(lmp_obj *));

#endif
