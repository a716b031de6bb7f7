/* equal.c -- are two messages' values equal?  Without Lua: numbers as Lua
 * compares them, strings by their bytes, shared objects by identity,
 * functions by their encoding, tables as maps, whatever order their keys
 * were set in (the format is in codec.h).
 *
 * A message is first scanned for the positions of its tables and
 * functions, which refs name.  Two tables are equal when their keys pair
 * off with equal values: scalar keys are sorted and met in step; tables
 * and functions as keys are matched one against each, as they are rare.
 * Cycles and shared parts are taken care of by the pairs of positions
 * being compared: a pair met again is taken as equal, and the pairs a
 * comparison assumed are forgotten when it fails.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

typedef const unsigned char *pos;

typedef struct side {
  pos base, end;
  pos *nodes; /* the tables and functions, in order: what ref k names */
  size_t nnodes, cap;
} side;

typedef struct pair {
  uint32_t a, b; /* offsets in each message */
  uint32_t next; /* the pair before it in its bucket, or NOPAIR */
} pair;

#define NOPAIR UINT32_MAX

typedef struct eq {
  side s[2];
  pair *pairs; /* assumed or found equal, most recent last */
  size_t npairs, cap;
  uint32_t *bucket;
  size_t nbucket; /* a power of 2 */
} eq;

/* The deepest a comparison goes, refs followed and all. */
#define MAXDEPTH (2 * LMP_CODEC_MAXDEPTH)

/* ------------------------------------------------------------ reading */

static int rdvarint(const side *s, pos *p, uint64_t *v) {
  return lmp_varint_read(p, s->end, v);
}

static int rdskip(const side *s, pos *p, uint64_t n) {
  if (n > (uint64_t)(s->end - *p)) return -1;
  *p += n;
  return 0;
}

static int rdlen(const side *s, pos *p) {
  uint64_t n;
  return rdvarint(s, p, &n) < 0 ? -1 : rdskip(s, p, n);
}

static int record(side *s, pos p) {
  if (s->nnodes == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 16;
    pos *nodes = realloc(s->nodes, cap * sizeof *nodes);
    if (nodes == NULL) return -1;
    s->nodes = nodes;
    s->cap = cap;
  }
  s->nodes[s->nnodes++] = p;
  return 0;
}

/* Moves *p past one value; numbers its tables and functions when rec is
 * set (the first pass).  -1 on anything it cannot read. */
static int skipvalue(side *s, pos *p, int depth, int rec) {
  uint64_t n, k, i;
  pos at = *p;
  int tag;
  if (*p >= s->end) return -1;
  tag = *(*p)++;
  if (tag >= LMP_TAG_FIXINT) return 0;
  if (tag >= LMP_TAG_SHORTSTR)
    return rdskip(s, p, (uint64_t)(tag - LMP_TAG_SHORTSTR));
  switch (tag) {
    case LMP_TAG_NIL: case LMP_TAG_FALSE: case LMP_TAG_TRUE:
    case LMP_TAG_GLOBALS:
      return 0;
    case LMP_TAG_INT: case LMP_TAG_REF:
      return rdvarint(s, p, &n);
    case LMP_TAG_FLOAT:
      return rdskip(s, p, 8);
    case LMP_TAG_STR: case LMP_TAG_MODULE:
      return rdlen(s, p);
    case LMP_TAG_NAME:
      return rdlen(s, p) < 0 ? -1 : rdlen(s, p);
    case LMP_TAG_OBJ:
    case LMP_TAG_OBJ | LMP_TAG_KEEP:
      return rdvarint(s, p, &k) < 0 ? -1 : rdvarint(s, p, &n);
    case LMP_TAG_CONN:
      return rdvarint(s, p, &k) < 0 || rdvarint(s, p, &k) < 0 ||
             rdvarint(s, p, &k) < 0 ? -1 : rdvarint(s, p, &n);
    case LMP_TAG_MSG:
      return rdvarint(s, p, &k) < 0 ? -1 : rdlen(s, p);
    case LMP_TAG_TABLE:
    case LMP_TAG_TABLE | LMP_TAG_KEEP:
      if (depth >= LMP_CODEC_MAXDEPTH || (rec && record(s, at) < 0) ||
          rdvarint(s, p, &n) < 0 || rdskip(s, p, 1) < 0)
        return -1;
      for (i = 0; i < n; i++)
        if (skipvalue(s, p, depth + 1, rec) < 0) return -1;
      for (;;) {
        if (*p >= s->end) return -1;
        tag = **p;
        if (tag == LMP_TAG_NIL) return rdskip(s, p, 1);
        if (tag == LMP_TAG_METANAME) {
          (*p)++;
          if (rdlen(s, p) < 0) return -1;
        } else if (tag == LMP_TAG_META) {
          (*p)++;
          if (skipvalue(s, p, depth + 1, rec) < 0) return -1;
        } else if (skipvalue(s, p, depth + 1, rec) < 0 ||
                   skipvalue(s, p, depth + 1, rec) < 0) {
          return -1;
        }
      }
    case LMP_TAG_FUNC:
    case LMP_TAG_FUNC | LMP_TAG_KEEP:
      if (depth >= LMP_CODEC_MAXDEPTH || (rec && record(s, at) < 0) ||
          rdvarint(s, p, &n) < 0 || n > 255 || rdvarint(s, p, &k) < 0 ||
          rdskip(s, p, 8) < 0 || rdskip(s, p, k) < 0)
        return -1;
      for (i = 0; i < n; i++) {
        if (*p < s->end && **p == LMP_TAG_JOIN) {
          (*p)++;
          if (rdvarint(s, p, &k) < 0 || rdvarint(s, p, &k) < 0) return -1;
        } else if (skipvalue(s, p, depth + 1, rec) < 0) {
          return -1;
        }
      }
      return 0;
    default:
      return -1;
  }
}

/* ------------------------------------------------------------ pairs */

static uint32_t hashpair(const eq *e, uint32_t a, uint32_t b) {
  uint64_t h = ((uint64_t)a << 32 | b) * 0x9e3779b97f4a7c15u;
  return (uint32_t)(h >> 32) & (uint32_t)(e->nbucket - 1);
}

static int known(const eq *e, uint32_t a, uint32_t b) {
  uint32_t i;
  if (e->nbucket == 0) return 0;
  for (i = e->bucket[hashpair(e, a, b)]; i != NOPAIR; i = e->pairs[i].next)
    if (e->pairs[i].a == a && e->pairs[i].b == b) return 1;
  return 0;
}

static int addpair(eq *e, uint32_t a, uint32_t b) {
  size_t i;
  if (e->npairs == e->cap) {
    size_t cap = e->cap ? 2 * e->cap : 64;
    pair *pairs = realloc(e->pairs, cap * sizeof *pairs);
    uint32_t *bucket = malloc(cap * sizeof *bucket);
    if (pairs == NULL || bucket == NULL || cap >= NOPAIR) {
      if (pairs != NULL) e->pairs = pairs;
      free(bucket);
      return -1;
    }
    free(e->bucket);
    e->pairs = pairs;
    e->cap = cap;
    e->bucket = bucket;
    e->nbucket = cap;
    for (i = 0; i < cap; i++) bucket[i] = NOPAIR;
    for (i = 0; i < e->npairs; i++) { /* in order: the latest heads */
      uint32_t h = hashpair(e, e->pairs[i].a, e->pairs[i].b);
      e->pairs[i].next = bucket[h];
      bucket[h] = (uint32_t)i;
    }
  }
  i = e->npairs++;
  e->pairs[i].a = a;
  e->pairs[i].b = b;
  e->pairs[i].next = e->bucket[hashpair(e, a, b)];
  e->bucket[hashpair(e, a, b)] = (uint32_t)i;
  return 0;
}

/* Forgets the pairs added since there were `mark`: latest first, so each
 * heads its bucket. */
static void forget(eq *e, size_t mark) {
  while (e->npairs > mark) {
    pair *q = &e->pairs[--e->npairs];
    e->bucket[hashpair(e, q->a, q->b)] = q->next;
  }
}

/* ------------------------------------------------------------ values */

static int eqvalue(eq *e, pos a, pos b, int depth);

/* Follows a ref to the table or function it names; NULL if bad. */
static pos deref(side *s, pos p) {
  uint64_t k;
  if (*p != LMP_TAG_REF) return p;
  p++;
  if (rdvarint(s, &p, &k) < 0 || k == 0 || k > s->nnodes) return NULL;
  return s->nodes[k - 1];
}

/* A number at p: 1 (integer in *i), 2 (float in *f) or 0 (not one). */
static int number(const side *s, pos p, lua_Integer *i, lua_Number *f) {
  uint64_t z;
  if (*p >= LMP_TAG_FIXINT) {
    *i = *p - LMP_TAG_FIXINT;
    return 1;
  }
  if (*p == LMP_TAG_INT) {
    p++;
    if (rdvarint(s, &p, &z) < 0) return 0;
    *i = lmp_unzigzag(z);
    return 1;
  }
  if (*p == LMP_TAG_FLOAT && s->end - p >= 9) {
    memcpy(f, p + 1, 8);
    return 2;
  }
  return 0;
}

/* A float equal to an integer, as Lua's == sees it: exactly. */
static int floatint(lua_Number f, lua_Integer *i) {
  return floor(f) == f && lua_numbertointeger(f, i);
}

static int eqnumber(int ka, lua_Integer ia, lua_Number fa, int kb,
                    lua_Integer ib, lua_Number fb) {
  if (ka == 1 && kb == 1) return ia == ib;
  if (ka == 2 && kb == 2) return fa == fb;
  if (ka == 2) return floatint(fa, &ia) && ia == ib;
  return floatint(fb, &ib) && ia == ib;
}

/* A string at p: its bytes, or NULL. */
static pos string(const side *s, pos p, size_t *n) {
  uint64_t len;
  if (*p >= LMP_TAG_SHORTSTR && *p < LMP_TAG_FIXINT) {
    *n = (size_t)(*p - LMP_TAG_SHORTSTR);
    return p + 1;
  }
  if (*p != LMP_TAG_STR) return NULL;
  p++;
  if (rdvarint(s, &p, &len) < 0 || len > (uint64_t)(s->end - p)) return NULL;
  *n = (size_t)len;
  return p;
}

/* The same value written the same way (names, objects, messages): the
 * values at a and b, whose tags are the same but for KEEP, are written
 * the same past their tags. */
static int samebytes(eq *e, pos a, pos b) {
  pos ea = a, eb = b;
  if (skipvalue(&e->s[0], &ea, 0, 0) < 0 || skipvalue(&e->s[1], &eb, 0, 0) < 0)
    return 0;
  return ea - a == eb - b && memcmp(a + 1, b + 1, (size_t)(ea - a - 1)) == 0;
}

/* ------------------------------------------------------------ tables */

enum { K_INT, K_FLOAT, K_BOOL, K_STR, K_OBJ, K_BYTES, K_NODE };

typedef struct entry {
  int kind;
  uint64_t num; /* K_INT, K_FLOAT (its bits), K_BOOL */
  pos s;        /* K_STR, K_OBJ (past its tag), K_BYTES */
  size_t len;
  pos k, v;     /* the key (NULL for one of the array part) and value */
} entry;

typedef struct tview {
  entry *ent;
  size_t n, nnode;  /* entries, and how many at the end have node keys */
  pos meta[4];      /* the metatable items (METANAME, META) */
  int nmeta;
} tview;

static int addentry(tview *t, size_t *cap, const entry *x) {
  if (t->n == *cap) {
    size_t c = *cap ? 2 * *cap : 8;
    entry *ent = realloc(t->ent, c * sizeof *ent);
    if (ent == NULL) return -1;
    t->ent = ent;
    *cap = c;
  }
  t->ent[t->n++] = *x;
  return 0;
}

/* Classifies the key at x->k. */
static void keykind(const side *s, entry *x) {
  lua_Integer i;
  lua_Number f;
  int k = number(s, x->k, &i, &f);
  if (k == 2 && floatint(f, &i)) k = 1;
  if (k == 1) {
    x->kind = K_INT;
    x->num = (uint64_t)i;
  } else if (k == 2) {
    x->kind = K_FLOAT;
    memcpy(&x->num, &f, 8);
  } else if (*x->k == LMP_TAG_FALSE || *x->k == LMP_TAG_TRUE) {
    x->kind = K_BOOL;
    x->num = *x->k == LMP_TAG_TRUE;
  } else if ((x->s = string(s, x->k, &x->len)) != NULL) {
    x->kind = K_STR;
  } else if ((*x->k & ~LMP_TAG_KEEP) == LMP_TAG_TABLE ||
             (*x->k & ~LMP_TAG_KEEP) == LMP_TAG_FUNC ||
             *x->k == LMP_TAG_REF) {
    x->kind = K_NODE;
  } else if ((*x->k & ~LMP_TAG_KEEP) == LMP_TAG_OBJ) {
    x->kind = K_OBJ; /* (KEEP or not: readtable sets len) */
    x->s = x->k + 1;
  } else { /* names, messages: as written (readtable sets len) */
    x->kind = K_BYTES;
    x->s = x->k;
  }
}

static int cmpentry(const void *pa, const void *pb) {
  const entry *a = pa, *b = pb;
  int c;
  if (a->kind != b->kind) return a->kind < b->kind ? -1 : 1;
  switch (a->kind) {
    case K_INT:
      return (lua_Integer)a->num < (lua_Integer)b->num ? -1
             : (lua_Integer)a->num > (lua_Integer)b->num;
    case K_FLOAT: case K_BOOL:
      return a->num < b->num ? -1 : a->num > b->num;
    case K_STR: case K_OBJ: case K_BYTES:
      c = memcmp(a->s, b->s, a->len < b->len ? a->len : b->len);
      return c != 0 ? c : a->len < b->len ? -1 : a->len > b->len;
    default:
      return 0;
  }
}

/* Reads the table at p into t, its entries sorted by key. */
static int readtable(side *s, pos p, tview *t) {
  uint64_t narr, i;
  size_t cap = 0;
  entry x;
  t->ent = NULL;
  t->n = t->nnode = 0;
  t->nmeta = 0;
  p++;
  if (rdvarint(s, &p, &narr) < 0 || rdskip(s, &p, 1) < 0) return -1;
  for (i = 1; i <= narr; i++) {
    x.kind = K_INT;
    x.num = i;
    x.k = NULL;
    x.v = p;
    if (skipvalue(s, &p, 0, 0) < 0 || addentry(t, &cap, &x) < 0) return -1;
  }
  for (;;) {
    if (p >= s->end) return -1;
    if (*p == LMP_TAG_NIL) break;
    if (*p == LMP_TAG_METANAME || *p == LMP_TAG_META) {
      if (t->nmeta == 4) return -1;
      t->meta[t->nmeta++] = p;
      if (*p++ == LMP_TAG_METANAME ? rdlen(s, &p) < 0
                                   : skipvalue(s, &p, 0, 0) < 0)
        return -1;
      continue;
    }
    x.k = p;
    if (skipvalue(s, &p, 0, 0) < 0 || p >= s->end) return -1;
    x.v = p;
    if (skipvalue(s, &p, 0, 0) < 0) return -1;
    keykind(s, &x);
    if (x.kind == K_OBJ || x.kind == K_BYTES) x.len = (size_t)(x.v - x.s);
    if (x.kind == K_NODE) t->nnode++;
    if (addentry(t, &cap, &x) < 0) return -1;
  }
  if (t->n > 1) qsort(t->ent, t->n, sizeof *t->ent, cmpentry);
  return 0;
}

/* The metatable items at a and b: alike. */
static int eqmeta(eq *e, pos a, pos b, int depth) {
  pos ea = a + 1, eb = b + 1;
  if (*a != *b) return 0;
  if (*a != LMP_TAG_METANAME) return eqvalue(e, a + 1, b + 1, depth);
  if (rdlen(&e->s[0], &ea) < 0 || rdlen(&e->s[1], &eb) < 0) return 0;
  return ea - a == eb - b && memcmp(a, b, (size_t)(ea - a)) == 0;
}

static int eqtable(eq *e, pos a, pos b, int depth) {
  tview ta, tb;
  unsigned char *used = NULL;
  size_t i, j, nscalar;
  int r = 0;
  if (readtable(&e->s[0], a, &ta) < 0) {
    free(ta.ent);
    return 0;
  }
  if (readtable(&e->s[1], b, &tb) < 0 || ta.n != tb.n ||
      ta.nnode != tb.nnode || ta.nmeta != tb.nmeta)
    goto done;
  for (i = 0; i < (size_t)ta.nmeta; i++)
    if (!eqmeta(e, ta.meta[i], tb.meta[i], depth)) goto done;
  nscalar = ta.n - ta.nnode;
  for (i = 0; i < nscalar; i++)
    if (cmpentry(&ta.ent[i], &tb.ent[i]) != 0 ||
        !eqvalue(e, ta.ent[i].v, tb.ent[i].v, depth))
      goto done;
  if (ta.nnode > 0) { /* tables and functions as keys: each against each */
    if ((used = calloc(ta.nnode, 1)) == NULL) goto done;
    for (i = nscalar; i < ta.n; i++) {
      for (j = nscalar; j < tb.n; j++)
        if (!used[j - nscalar] &&
            eqvalue(e, ta.ent[i].k, tb.ent[j].k, depth) &&
            eqvalue(e, ta.ent[i].v, tb.ent[j].v, depth))
          break;
      if (j == tb.n) goto done;
      used[j - nscalar] = 1;
    }
  }
  r = 1;
done:
  free(used);
  free(ta.ent);
  free(tb.ent);
  return r;
}

/* ------------------------------------------------------------ functions */

static int eqfunction(eq *e, pos a, pos b, int depth) {
  side *sa = &e->s[0], *sb = &e->s[1];
  uint64_t na, nb, la, lb, i, x, y;
  a++;
  b++;
  if (rdvarint(sa, &a, &na) < 0 || rdvarint(sb, &b, &nb) < 0 || na != nb ||
      rdvarint(sa, &a, &la) < 0 || rdvarint(sb, &b, &lb) < 0 || la != lb ||
      la > (uint64_t)(sa->end - a) - 8 || lb > (uint64_t)(sb->end - b) - 8 ||
      sa->end - a < 8 || sb->end - b < 8 ||
      memcmp(a, b, (size_t)la + 8) != 0)
    return 0;
  a += la + 8;
  b += lb + 8;
  for (i = 0; i < na; i++) {
    if (a >= sa->end || b >= sb->end) return 0;
    if (*a == LMP_TAG_JOIN || *b == LMP_TAG_JOIN) { /* the same join */
      if (*a != *b) return 0;
      a++;
      b++;
      if (rdvarint(sa, &a, &x) < 0 || rdvarint(sb, &b, &y) < 0 || x != y ||
          rdvarint(sa, &a, &x) < 0 || rdvarint(sb, &b, &y) < 0 || x != y)
        return 0;
      continue;
    }
    if (!eqvalue(e, a, b, depth)) return 0;
    if (skipvalue(sa, &a, 0, 0) < 0 || skipvalue(sb, &b, 0, 0) < 0) return 0;
  }
  return 1;
}

/* ------------------------------------------------------------ values */

static int eqvalue(eq *e, pos a, pos b, int depth) {
  lua_Integer ia = 0, ib = 0;
  lua_Number fa = 0, fb = 0;
  int ka, kb, ta, tb;
  pos sa, sb;
  size_t na = 0, nb = 0, mark;
  if (depth >= MAXDEPTH) return 0;
  if ((a = deref(&e->s[0], a)) == NULL || (b = deref(&e->s[1], b)) == NULL)
    return 0;
  ka = number(&e->s[0], a, &ia, &fa);
  kb = number(&e->s[1], b, &ib, &fb);
  if (ka != 0 || kb != 0)
    return ka != 0 && kb != 0 && eqnumber(ka, ia, fa, kb, ib, fb);
  sa = string(&e->s[0], a, &na);
  sb = string(&e->s[1], b, &nb);
  if (sa != NULL || sb != NULL)
    return sa != NULL && sb != NULL && na == nb && memcmp(sa, sb, na) == 0;
  ta = *a & ~LMP_TAG_KEEP;
  tb = *b & ~LMP_TAG_KEEP;
  if (ta != tb) return 0;
  if (ta != LMP_TAG_TABLE && ta != LMP_TAG_FUNC) return samebytes(e, a, b);
  /* A pair met again (a cycle, a shared part) is taken as equal. */
  if (known(e, (uint32_t)(a - e->s[0].base), (uint32_t)(b - e->s[1].base)))
    return 1;
  mark = e->npairs;
  if (addpair(e, (uint32_t)(a - e->s[0].base),
              (uint32_t)(b - e->s[1].base)) < 0)
    return 0;
  if (ta == LMP_TAG_TABLE ? eqtable(e, a, b, depth + 1)
                          : eqfunction(e, a, b, depth + 1))
    return 1;
  forget(e, mark); /* what it assumed no longer holds */
  return 0;
}

/* ------------------------------------------------------------ entry */

static int scan(side *s, const char *p, size_t n) {
  pos q;
  s->base = (pos)p;
  s->end = (pos)p + n;
  s->nodes = NULL;
  s->nnodes = s->cap = 0;
  if (n < 2 || p[0] != LMP_CODEC_VERSION || n > UINT32_MAX) return -1;
  q = s->base + 1;
  return skipvalue(s, &q, 0, 1) < 0 || q != s->end ? -1 : 0;
}

int lmp_msg_equal(const char *p, size_t n, const char *q, size_t m) {
  eq e;
  int r = 0;
  /* The same bytes hold the same value, unless a NaN may be among them. */
  if (n == m && n > 1 && p[0] == LMP_CODEC_VERSION && memcmp(p, q, n) == 0 &&
      memchr(p, LMP_TAG_FLOAT, n) == NULL)
    return 1;
  memset(&e, 0, sizeof e);
  if (scan(&e.s[0], p, n) == 0 && scan(&e.s[1], q, m) == 0)
    r = eqvalue(&e, e.s[0].base + 1, e.s[1].base + 1, 0);
  free(e.s[0].nodes);
  free(e.s[1].nodes);
  free(e.pairs);
  free(e.bucket);
  return r;
}
