/* bytecode.c -- the shape of a function's bytecode from another machine
 * or another family, checked before it is signed as this family's own.
 *
 * Lua's loader takes a binary chunk's counts as they come: in Lua 5.4.4 a
 * chunk whose count of upvalue names exceeds its count of upvalues makes
 * the loader write past the upvalue array, and one whose closure byte
 * disagrees with its prototype makes lua_setupvalue reach past the
 * closure.  Bytecode this family wrote is signed and never checked; what
 * a peer sent is read here once, the way lundump.c reads it, and refused
 * unless every count agrees with the structure it sizes.  What the code
 * then does when called is the sender's, as with any function received.
 */
#include <limits.h>

#include "codec.h"

/* A dump's header: the signature, version and format bytes, LUAC_DATA,
 * three sizes, LUAC_INT and LUAC_NUM.  The loader checks its bytes. */
#define HEADER_SIZE (4 + 1 + 1 + 6 + 3 + 8 + 8)

/* As deep as the parser lets functions nest (LUAI_MAXCCALLS). */
#define MAX_NESTING 200

typedef struct {
  const unsigned char *p, *end;
} rd;

/* The dump's sizes: 7 bits a byte, most significant group first, the
 * high bit set on the last byte.  -1 when truncated or beyond limit. */
static int rdsize(rd *r, size_t limit, size_t *v) {
  size_t x = 0;
  unsigned b;
  limit >>= 7;
  do {
    if (r->p == r->end || x >= limit) return -1;
    b = *r->p++;
    x = (x << 7) | (b & 0x7f);
  } while ((b & 0x80) == 0);
  *v = x;
  return 0;
}

static int rdint(rd *r, size_t *v) { return rdsize(r, INT_MAX, v); }

/* A count of things of a byte or more each: no more than the bytes left,
 * so that the loader never sizes a vector beyond what the chunk holds. */
static int rdcount(rd *r, size_t *v) {
  return rdint(r, v) < 0 || *v > (size_t)(r->end - r->p) ? -1 : 0;
}

static int rdskip(rd *r, size_t n) {
  if (n > (size_t)(r->end - r->p)) return -1;
  r->p += n;
  return 0;
}

/* A string: 0 for none, else its length plus one, and its bytes. */
static int rdstring(rd *r) {
  size_t n;
  if (rdsize(r, ~(size_t)0, &n) < 0) return -1;
  return n == 0 ? 0 : rdskip(r, n - 1);
}

/* The constants' type tags (lobject.h's variants). */
enum { K_NIL = 0, K_FALSE = 1, K_TRUE = 17, K_INT = 3, K_FLT = 19,
       K_SHRSTR = 4, K_LNGSTR = 20 };

/* One function, as lundump.c's loadFunction reads it; *nups is set to its
 * count of upvalues. */
static int rdfunction(rd *r, int depth, size_t *nups) {
  size_t ncode, n, i, sub;
  if (depth > MAX_NESTING) return -1;
  if (rdstring(r) < 0 || rdint(r, &n) < 0 || rdint(r, &n) < 0 ||
      rdskip(r, 3) < 0) /* source, lines, numparams, is_vararg, stack */
    return -1;
  if (rdint(r, &ncode) < 0 || ncode > (size_t)(r->end - r->p) / 4 ||
      rdskip(r, ncode * 4) < 0)
    return -1;
  if (rdcount(r, &n) < 0) return -1;
  for (i = 0; i < n; i++) {
    if (r->p == r->end) return -1;
    switch (*r->p++) {
      case K_NIL: case K_FALSE: case K_TRUE: break;
      case K_INT: case K_FLT:
        if (rdskip(r, 8) < 0) return -1;
        break;
      case K_SHRSTR: case K_LNGSTR:
        if (rdstring(r) < 0) return -1;
        break;
      default: return -1;
    }
  }
  if (rdint(r, nups) < 0 || *nups > (size_t)(r->end - r->p) / 3 ||
      rdskip(r, *nups * 3) < 0) /* instack, idx, kind */
    return -1;
  if (rdcount(r, &n) < 0) return -1;
  for (i = 0; i < n; i++)
    if (rdfunction(r, depth + 1, &sub) < 0) return -1;
  /* Debug information: line deltas, one per instruction or none. */
  if (rdint(r, &n) < 0 || (n != 0 && n != ncode) || rdskip(r, n) < 0)
    return -1;
  if (rdcount(r, &n) < 0) return -1; /* absolute lines: pc, line */
  for (i = 0; i < n; i++)
    if (rdint(r, &sub) < 0 || rdint(r, &sub) < 0) return -1;
  if (rdcount(r, &n) < 0) return -1; /* locals: name, startpc, endpc */
  for (i = 0; i < n; i++)
    if (rdstring(r) < 0 || rdint(r, &sub) < 0 || rdint(r, &sub) < 0)
      return -1;
  /* Upvalue names: one for each upvalue, or none. */
  if (rdcount(r, &n) < 0 || (n != 0 && n != *nups)) return -1;
  for (i = 0; i < n; i++)
    if (rdstring(r) < 0) return -1;
  return 0;
}

int lmp_codecheck(const char *code, size_t n) {
  rd r;
  size_t nups;
  unsigned closure;
  r.p = (const unsigned char *)code;
  r.end = r.p + n;
  if (rdskip(&r, HEADER_SIZE) < 0 || r.p == r.end) return -1;
  closure = *r.p++; /* the main closure's upvalues */
  if (rdfunction(&r, 0, &nups) < 0 || nups != closure || r.p != r.end)
    return -1;
  return 0;
}
