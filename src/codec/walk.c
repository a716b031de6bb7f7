/* walk.c -- finding the shared objects a message names, without Lua: to
 * take and drop the references a message owns.  It reads a message as the
 * decoder does (the format is in codec.h), checking bounds and depth, and
 * skips everything but the objects.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

typedef struct walker {
  const unsigned char *p, *end;
  void (*fn)(lmp_obj *, void *);
  void *ud;
  /* Re-signing (lmp_msg_resign): every function's MAC is rewritten, every
   * embedded message is entered, and objects are counted, not visited. */
  int resign;
  size_t nobj;
} walker;

static int wvarint(walker *w, uint64_t *v) {
  return lmp_varint_read(&w->p, w->end, v);
}

static int wskip(walker *w, uint64_t n) {
  if (n > (uint64_t)(w->end - w->p)) return -1;
  w->p += n;
  return 0;
}

static int wlen(walker *w) {
  uint64_t n;
  return wvarint(w, &n) < 0 ? -1 : wskip(w, n);
}

static int wvalue(walker *w, int depth) {
  uint64_t n, k, i;
  int tag;
  if (w->p == w->end) return -1;
  tag = *w->p++;
  if (tag >= LMP_TAG_FIXINT) return 0;
  if (tag >= LMP_TAG_SHORTSTR)
    return wskip(w, (uint64_t)(tag - LMP_TAG_SHORTSTR));
  switch (tag) {
    case LMP_TAG_NIL: case LMP_TAG_FALSE: case LMP_TAG_TRUE:
    case LMP_TAG_GLOBALS:
      return 0;
    case LMP_TAG_INT: case LMP_TAG_REF:
      return wvarint(w, &n);
    case LMP_TAG_FLOAT:
      return wskip(w, 8);
    case LMP_TAG_STR: case LMP_TAG_MODULE:
      return wlen(w);
    case LMP_TAG_NAME:
      return wlen(w) < 0 ? -1 : wlen(w);
    case LMP_TAG_TABLE:
    case LMP_TAG_TABLE | LMP_TAG_KEEP:
      if (depth >= LMP_CODEC_MAXDEPTH || wvarint(w, &n) < 0 || wskip(w, 1) < 0)
        return -1;
      for (i = 0; i < n; i++)
        if (wvalue(w, depth + 1) < 0) return -1;
      for (;;) {
        if (w->p == w->end) return -1;
        if (*w->p == LMP_TAG_NIL) return wskip(w, 1);
        if (*w->p == LMP_TAG_METANAME) {
          w->p++;
          if (wlen(w) < 0) return -1;
          continue;
        }
        if (*w->p == LMP_TAG_META) {
          w->p++;
          if (wvalue(w, depth + 1) < 0) return -1;
          continue;
        }
        if (wvalue(w, depth + 1) < 0 || wvalue(w, depth + 1) < 0) return -1;
      }
    case LMP_TAG_FUNC:
    case LMP_TAG_FUNC | LMP_TAG_KEEP:
      if (depth >= LMP_CODEC_MAXDEPTH || wvarint(w, &n) < 0 || n > 255 ||
          wvarint(w, &k) < 0 || k > (uint64_t)(w->end - w->p) ||
          (uint64_t)(w->end - w->p) - k < 8)
        return -1;
      if (w->resign) { /* a peer's bytecode, taken as ours if well made */
        int ok;
        uint64_t mac;
        if (lmp_codecheck((const char *)w->p + 8, (size_t)k) < 0) return -1;
        mac = lmp_codemac((const char *)w->p + 8, k, &ok);
        if (!ok) return -1;
        memcpy((unsigned char *)w->p, &mac, 8); /* the caller's own copy */
      }
      w->p += 8 + k;
      for (i = 0; i < n; i++) {
        if (w->p < w->end && *w->p == LMP_TAG_JOIN) {
          w->p++;
          if (wvarint(w, &k) < 0 || wvarint(w, &k) < 0) return -1;
        } else if (wvalue(w, depth + 1) < 0) {
          return -1;
        }
      }
      return 0;
    case LMP_TAG_MSG: { /* see through it: its objects are the message's */
      walker in;
      if (depth >= LMP_CODEC_MAXDEPTH || wvarint(w, &k) < 0 ||
          wvarint(w, &n) < 0 || n > (uint64_t)(w->end - w->p) || n == 0 ||
          *w->p != LMP_CODEC_VERSION)
        return -1;
      if (k == 0 && !w->resign) { /* it names none: nothing to see */
        w->p += n;
        return 0;
      }
      in.p = w->p + 1;
      in.end = w->p + n;
      in.fn = w->fn;
      in.ud = w->ud;
      in.resign = w->resign;
      in.nobj = 0;
      w->p += n;
      if (wvalue(&in, depth + 1) < 0 || in.p != in.end) return -1;
      w->nobj += in.nobj;
      return 0;
    }
    case LMP_TAG_CONN: /* its descriptor's number and flags, then as OBJ */
      if (wvarint(w, &k) < 0 || wvarint(w, &k) < 0) return -1;
      if (wvarint(w, &k) < 0 || wvarint(w, &n) < 0) return -1;
      if (k == 0) return 0; /* no channel */
      w->nobj++;
      if (w->resign) return 0;
      if (k < LMP_T_MAX && lmp_obj_check(n, (int)k)) w->fn(LMP_PTR(n), w->ud);
      return 0;
    case LMP_TAG_OBJ:
    case LMP_TAG_OBJ | LMP_TAG_KEEP:
      if (wvarint(w, &k) < 0 || wvarint(w, &n) < 0) return -1;
      w->nobj++;
      if (w->resign) return 0;
      if (k > 0 && k < LMP_T_MAX && lmp_obj_check(n, (int)k))
        w->fn(LMP_PTR(n), w->ud);
      return 0;
    default:
      return -1;
  }
}

int lmp_msg_walk(const char *p, size_t n, void (*fn)(lmp_obj *, void *),
                 void *ud) {
  walker w;
  if (n == 0 || p[0] != LMP_CODEC_VERSION) return -1;
  w.p = (const unsigned char *)p + 1;
  w.end = (const unsigned char *)p + n;
  w.fn = fn;
  w.ud = ud;
  w.resign = 0;
  w.nobj = 0;
  return wvalue(&w, 0);
}

int lmp_msg_resign(char *p, size_t n) {
  walker w;
  if (n == 0 || p[0] != LMP_CODEC_VERSION) return -1;
  w.p = (const unsigned char *)p + 1;
  w.end = (const unsigned char *)p + n;
  w.fn = NULL;
  w.ud = NULL;
  w.resign = 1;
  w.nobj = 0;
  if (wvalue(&w, 0) < 0 || w.p != w.end) return -1;
  return w.nobj > 0 ? -2 : 0;
}

static void release_one(lmp_obj *o, void *ud) {
  (void)ud;
  lmp_obj_decref(o);
}

void lmp_msg_release(const char *p, size_t n) {
  lmp_msg_walk(p, n, release_one, NULL);
}

static void retain_plain(lmp_obj *o, void *ud) {
  (void)ud;
  lmp_obj_incref(o);
}

void lmp_msg_retain(const char *p, size_t n) {
  lmp_msg_walk(p, n, retain_plain, NULL);
}

/*
 * Counted references: a message stored in a shared structure (a dict's
 * entry, a list's item) takes its references after it is there, and
 * counts each in the structure as it takes it, so that a process killed
 * half-way through taking (or dropping) them leaves a count its reaper can
 * trust (lmp_obj_incref_counted): the references of the first `count`
 * objects the message names, exactly.
 */

static void retain_one(lmp_obj *o, void *ud) {
  lmp_obj_incref_counted(o, ud);
}

void lmp_msg_retain_counted(const char *p, size_t n, _Atomic uint64_t *count) {
  lmp_msg_walk(p, n, retain_one, (void *)count);
}

/* The first `want` objects a message names, into objs (want > 0). */
typedef struct collect {
  lmp_obj **objs;
  uint64_t n, want;
} collect;

static void collect_one(lmp_obj *o, void *ud) {
  collect *c = ud;
  if (c->n < c->want) c->objs[c->n++] = o;
}

/* Only the `want`-th (from 1) object a message names, in objs[0]. */
static void collect_nth(lmp_obj *o, void *ud) {
  collect *c = ud;
  if (++c->n == c->want) c->objs[0] = o;
}

#define UNRETAIN_STACK 64

/* Dropped last first, so that at every step those still held are the
 * first *count, which is what a reaper that finds the drop cut short
 * releases (lmp_msg_release_counted).  Without memory for the list of
 * objects, one walk finds each. */
void lmp_msg_unretain_counted(const char *p, size_t n,
                              _Atomic uint64_t *count) {
  lmp_obj *stack[UNRETAIN_STACK], **objs = stack;
  uint64_t k = atomic_load(count);
  collect c;
  if (k == 0) return;
  if (k > UNRETAIN_STACK)
    objs = k <= SIZE_MAX / sizeof *objs ? malloc(k * sizeof *objs) : NULL;
  if (objs == NULL) {
    lmp_obj *one;
    while ((k = atomic_load(count)) > 0) {
      c.objs = &one;
      c.n = 0;
      c.want = k;
      one = NULL;
      lmp_msg_walk(p, n, collect_nth, &c);
      if (one == NULL) return; /* a count the message cannot hold */
      lmp_obj_decref_counted(one, count);
    }
    return;
  }
  c.objs = objs;
  c.n = 0;
  c.want = k;
  lmp_msg_walk(p, n, collect_one, &c);
  while (c.n > 0) lmp_obj_decref_counted(objs[--c.n], count);
  if (objs != stack) free(objs);
}

static void release_some(lmp_obj *o, void *ud) {
  uint64_t *left = ud;
  if (*left > 0) {
    (*left)--;
    lmp_obj_decref(o);
  }
}

void lmp_msg_release_counted(const char *p, size_t n, uint64_t count) {
  lmp_msg_walk(p, n, release_some, &count);
}

/* ------------------------------------------------ counted message blocks */

#define CMSG_MAGIC 0x67736d706d6cull /* "lmpmsg" */

lmp_cmsg *lmp_cmsg_alloc(lmp_obj *o, size_t n, int which) {
  lmp_cmsg *m = lmp_alloc_pending(o, sizeof(lmp_cmsg) + n, which);
  if (m == NULL) return NULL;
  /* (The heap zeroed magic and len: a reaper finds no message yet.) */
  atomic_store(&m->refs, 0);
  m->len = n;
  return m;
}

lmp_cmsg *lmp_cmsg_alloc_at(size_t n, lmp_off *where) {
  lmp_cmsg *m = lmp_alloc_at(sizeof(lmp_cmsg) + n, where);
  if (m == NULL) return NULL;
  atomic_store(&m->refs, 0);
  m->len = n;
  return m;
}

void lmp_cmsg_seal(lmp_cmsg *m, size_t nobj) {
  ((volatile lmp_cmsg *)m)->magic = CMSG_MAGIC; /* after the bytes */
  if (nobj > 0) lmp_msg_retain_counted(m->data, m->len, &m->refs);
}

void lmp_cmsg_drop(lmp_cmsg *m, lmp_off *clear) {
  lmp_msg_unretain_counted(m->data, m->len, &m->refs);
  lmp_heap_free(m, clear);
}

void lmp_cmsg_release(lmp_obj *o, lmp_off blk) {
  lmp_cmsg *m = LMP_PTR(blk);
  (void)o;
  if (m->magic == CMSG_MAGIC)
    lmp_msg_release_counted(m->data, m->len, atomic_load(&m->refs));
}
