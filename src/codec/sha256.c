/* sha256.c -- SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104), for the
 * challenge and response that authenticate a connection by its key.
 */
#include <string.h>

#include "codec.h"

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
  0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
  0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
  0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
  0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
  0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
  0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

/* One 64-byte block into the state. */
static void compress(uint32_t h[8], const unsigned char *p) {
  uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
  int i;
  for (i = 0; i < 16; i++, p += 4)
    w[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
  for (; i < 64; i++) {
    uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = h[0], b = h[1], c = h[2], d = h[3];
  e = h[4], f = h[5], g = h[6], k = h[7];
  for (i = 0; i < 64; i++) {
    t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) +
         K[i] + w[i];
    t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) +
         ((a & b) ^ (a & c) ^ (b & c));
    k = g, g = f, f = e, e = d + t1;
    d = c, c = b, b = a, a = t1 + t2;
  }
  h[0] += a, h[1] += b, h[2] += c, h[3] += d;
  h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void lmp_sha256_init(lmp_sha256 *s) {
  static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372,
                                 0xa54ff53a, 0x510e527f, 0x9b05688c,
                                 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, h0, sizeof h0);
  s->len = 0;
}

void lmp_sha256_update(lmp_sha256 *s, const void *data, size_t n) {
  const unsigned char *p = data;
  size_t have = (size_t)(s->len & 63);
  s->len += n;
  if (have) {
    size_t take = 64 - have < n ? 64 - have : n;
    memcpy(s->buf + have, p, take);
    p += take, n -= take;
    if (have + take < 64) return;
    compress(s->h, s->buf);
  }
  for (; n >= 64; p += 64, n -= 64) compress(s->h, p);
  memcpy(s->buf, p, n);
}

void lmp_sha256_final(lmp_sha256 *s, unsigned char out[LMP_SHA256_SIZE]) {
  uint64_t bits = s->len * 8;
  size_t have = (size_t)(s->len & 63);
  int i;
  s->buf[have++] = 0x80;
  if (have > 56) {
    memset(s->buf + have, 0, 64 - have);
    compress(s->h, s->buf);
    have = 0;
  }
  memset(s->buf + have, 0, 56 - have);
  for (i = 0; i < 8; i++) s->buf[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
  compress(s->h, s->buf);
  for (i = 0; i < 32; i++)
    out[i] = (unsigned char)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

void lmp_hmac_sha256_parts(const void *key, size_t keylen, int nparts,
                           const void *const *parts, const size_t *lens,
                           unsigned char out[LMP_SHA256_SIZE]) {
  unsigned char k[64] = {0}, pad[64];
  lmp_sha256 s;
  int i;
  if (keylen > 64) {
    lmp_sha256_init(&s);
    lmp_sha256_update(&s, key, keylen);
    lmp_sha256_final(&s, k);
  } else if (keylen > 0) {
    memcpy(k, key, keylen);
  }
  for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
  lmp_sha256_init(&s);
  lmp_sha256_update(&s, pad, 64);
  for (i = 0; i < nparts; i++) lmp_sha256_update(&s, parts[i], lens[i]);
  lmp_sha256_final(&s, out);
  for (i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
  lmp_sha256_init(&s);
  lmp_sha256_update(&s, pad, 64);
  lmp_sha256_update(&s, out, LMP_SHA256_SIZE);
  lmp_sha256_final(&s, out);
}

void lmp_hmac_sha256(const void *key, size_t keylen, const void *msg,
                     size_t n, unsigned char out[LMP_SHA256_SIZE]) {
  lmp_hmac_sha256_parts(key, keylen, 1, &msg, &n, out);
}
