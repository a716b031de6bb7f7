/* mac.c -- the MAC that signs a function's bytecode in a message:
 * SipHash-2-4 under the family's secret key, so that the decoder loads
 * only bytecode a process of the family wrote.
 */
#include "codec.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                         \
  do {                                                                   \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);            \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                               \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                               \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);            \
  } while (0)

static uint64_t le64(const unsigned char *p) {
  uint64_t v = 0;
  int i;
  for (i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* SipHash-2-4 (Aumasson and Bernstein) of in[0..n) under a 16-byte key. */
static uint64_t siphash(const uint8_t *key, const unsigned char *in,
                        size_t n) {
  uint64_t k0 = le64(key), k1 = le64(key + 8), m, b = (uint64_t)n << 56;
  uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
  uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
  const unsigned char *end = in + (n & ~(size_t)7);
  int i;
  for (; in != end; in += 8) {
    m = le64(in);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
  }
  for (i = (int)(n & 7) - 1; i >= 0; i--) b |= (uint64_t)in[i] << (8 * i);
  v3 ^= b;
  SIPROUND;
  SIPROUND;
  v0 ^= b;
  v2 ^= 0xff;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  SIPROUND;
  return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t lmp_codemac(const char *code, size_t n, int *ok) {
  *ok = lmp_arena_ready();
  return *ok ? siphash(lmp_arena_key(), (const unsigned char *)code, n) : 0;
}

