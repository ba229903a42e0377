/*-------------------------------------------------------------------------
 *
 * crypto.c
 *		SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104) and Base64 (RFC 4648),
 *		just enough to check a Naver Cloud SENS x-ncp-apigw-signature-v2 and
 *		courier's Courier-Signature on subscriber requests.
 *
 * What it does not do: anything secret-keeping, constant-time, or fast.
 * It exists so that the mock TMS builds with libmicrohttpd alone, without
 * linking OpenSSL's libcrypto (one package less on a fresh Debian).
 *
 * IDENTIFICATION
 *	  test/mock_tms/crypto.c
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "mock_tms.h"

#define SHA256_BLOCK_BYTES		64

typedef struct Sha256
{
	uint32_t	h[8];
	uint64_t	bytes;			/* message length so far */
	unsigned char block[SHA256_BLOCK_BYTES];
	size_t		used;			/* bytes waiting in block */
} Sha256;

static void sha256_init(Sha256 *s);
static void sha256_update(Sha256 *s, const unsigned char *p, size_t n);
static void sha256_final(Sha256 *s, unsigned char out[SHA256_DIGEST_BYTES]);
static void sha256_compress(Sha256 *s, const unsigned char *block);

static const uint32_t sha256_k[64] = {
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
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

#define ROTR(x, n)	(((x) >> (n)) | ((x) << (32 - (n))))

static void
sha256_init(Sha256 *s)
{
	static const uint32_t h0[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
	};

	memcpy(s->h, h0, sizeof(h0));
	s->bytes = 0;
	s->used = 0;
}

/* sha256_compress: one 64-byte block into the state. */
static void
sha256_compress(Sha256 *s, const unsigned char *block)
{
	uint32_t	w[64];
	uint32_t	a,
				b,
				c,
				d,
				e,
				f,
				g,
				h;
	int			i;

	for (i = 0; i < 16; i++)
		w[i] = ((uint32_t) block[i * 4] << 24) |
			((uint32_t) block[i * 4 + 1] << 16) |
			((uint32_t) block[i * 4 + 2] << 8) |
			(uint32_t) block[i * 4 + 3];
	for (i = 16; i < 64; i++)
	{
		uint32_t	s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t	s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);

		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0];
	b = s->h[1];
	c = s->h[2];
	d = s->h[3];
	e = s->h[4];
	f = s->h[5];
	g = s->h[6];
	h = s->h[7];
	for (i = 0; i < 64; i++)
	{
		uint32_t	s1 = ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25);
		uint32_t	ch = (e & f) ^ (~e & g);
		uint32_t	t1 = h + s1 + ch + sha256_k[i] + w[i];
		uint32_t	s0 = ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22);
		uint32_t	maj = (a & b) ^ (a & c) ^ (b & c);
		uint32_t	t2 = s0 + maj;

		h = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	s->h[0] += a;
	s->h[1] += b;
	s->h[2] += c;
	s->h[3] += d;
	s->h[4] += e;
	s->h[5] += f;
	s->h[6] += g;
	s->h[7] += h;
}

static void
sha256_update(Sha256 *s, const unsigned char *p, size_t n)
{
	s->bytes += n;
	while (n > 0)
	{
		size_t		take = SHA256_BLOCK_BYTES - s->used;

		if (take > n)
			take = n;
		memcpy(s->block + s->used, p, take);
		s->used += take;
		p += take;
		n -= take;
		if (s->used == SHA256_BLOCK_BYTES)
		{
			sha256_compress(s, s->block);
			s->used = 0;
		}
	}
}

/* sha256_final: pad with 0x80, zeros and the bit length, then emit. */
static void
sha256_final(Sha256 *s, unsigned char out[SHA256_DIGEST_BYTES])
{
	uint64_t	bits = s->bytes * 8;
	unsigned char pad = 0x80;
	unsigned char zero = 0;
	unsigned char len[8];
	int			i;

	sha256_update(s, &pad, 1);
	while (s->used != SHA256_BLOCK_BYTES - 8)
		sha256_update(s, &zero, 1);
	for (i = 0; i < 8; i++)
		len[i] = (unsigned char) (bits >> (56 - 8 * i));
	sha256_update(s, len, 8);
	for (i = 0; i < 8; i++)
	{
		out[i * 4] = (unsigned char) (s->h[i] >> 24);
		out[i * 4 + 1] = (unsigned char) (s->h[i] >> 16);
		out[i * 4 + 2] = (unsigned char) (s->h[i] >> 8);
		out[i * 4 + 3] = (unsigned char) s->h[i];
	}
}

/* hmac_sha256: HMAC of one message; see hmac_sha256_parts. */
void
hmac_sha256(const unsigned char *key, size_t key_len,
			const unsigned char *msg, size_t msg_len,
			unsigned char out[SHA256_DIGEST_BYTES])
{
	hmac_sha256_parts(key, key_len, &msg, &msg_len, 1, out);
}

/*
 * hmac_sha256_parts: HMAC per RFC 2104 with a 64-byte block of the message
 * made of nparts pieces laid end to end, so that a signature over
 * "<t>.<body>" needs no copy of a body that may be 64 MB.  A key longer than
 * a block is hashed first.
 */
void
hmac_sha256_parts(const unsigned char *key, size_t key_len,
				  const unsigned char *const *parts, const size_t *part_lens,
				  int nparts, unsigned char out[SHA256_DIGEST_BYTES])
{
	unsigned char k[SHA256_BLOCK_BYTES];
	unsigned char pad[SHA256_BLOCK_BYTES];
	unsigned char inner[SHA256_DIGEST_BYTES];
	Sha256		s;
	int			i;

	memset(k, 0, sizeof(k));
	if (key_len > SHA256_BLOCK_BYTES)
	{
		sha256_init(&s);
		sha256_update(&s, key, key_len);
		sha256_final(&s, k);
	}
	else
		memcpy(k, key, key_len);

	for (i = 0; i < SHA256_BLOCK_BYTES; i++)
		pad[i] = k[i] ^ 0x36;
	sha256_init(&s);
	sha256_update(&s, pad, sizeof(pad));
	for (i = 0; i < nparts; i++)
		sha256_update(&s, parts[i], part_lens[i]);
	sha256_final(&s, inner);

	for (i = 0; i < SHA256_BLOCK_BYTES; i++)
		pad[i] = k[i] ^ 0x5c;
	sha256_init(&s);
	sha256_update(&s, pad, sizeof(pad));
	sha256_update(&s, inner, sizeof(inner));
	sha256_final(&s, out);
}

/*
 * base64_encode: standard alphabet with '=' padding, NUL-terminated.  out
 * must hold 4 * ((len + 2) / 3) + 1 bytes.  Returns the encoded length.
 */
size_t
base64_encode(const unsigned char *in, size_t len, char *out)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t		i;
	size_t		o = 0;

	for (i = 0; i + 2 < len; i += 3)
	{
		uint32_t	v = ((uint32_t) in[i] << 16) | ((uint32_t) in[i + 1] << 8) | in[i + 2];

		out[o++] = alphabet[(v >> 18) & 63];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = alphabet[(v >> 6) & 63];
		out[o++] = alphabet[v & 63];
	}
	if (i < len)
	{
		uint32_t	v = (uint32_t) in[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t) in[i + 1] << 8;
		out[o++] = alphabet[(v >> 18) & 63];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}
