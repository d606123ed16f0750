/* Types and scalar helpers shared by the integer kernels (kernels.c, conv.c). Integer types only.

   Requantization (TFLite MultiplyByQuantizedMultiplier, double rounding), per output channel c, in int64:
     v = acc + bias[c]                          (must lie in int32, else *ovf is set: the reference raises)
     x = sat32(v << left[c])
     r = (x*M0[c] + 2^30) >> 31                  (= SRDHM: nearest, ties toward +inf; M0 >= 0 so no saturation)
     r = (r + half[c] - [r < 0]*neg[c]) >> right[c]  (= RoundingDivideByPOT: ties away from zero)
     y = clamp(r + Z_out, qmin, qmax)
   with half = 2^(right-1), neg = 1 when right > 0, else both 0.

   The folded form (Requant.fast, set by the caller only when it is exact for the layer: no left shift,
   1 <= right <= 23, acc + bias provably inside int32 for every input, so nothing can overflow): with e = right,
     y = clamp((x*M0 + C - [x*M0 < 0]*2^31) >> (31 + e), qmin, qmax),  C = 2^30 + 2^(e-1)*2^31 + Z_out*2^(31+e)
   in int64. It equals the definition: floor(floor(a / 2^31) + k) / 2^e) = floor((a + k*2^31) / 2^(31+e)) for
   integer k, and [r < 0] may be replaced by [x*M0 < 0] because r < 0 implies x*M0 < 0, and when x*M0 < 0 but
   r = 0 both give (half - 1 or half) >> e = 0. The [.] term is skipped when qmin >= Z_out (a negative r clamps
   to qmin either way). The same form (per tensor, e >= 0; e = 0 has no half and no [.] term) rescales the two
   inputs and the output of a fused Add. */

#ifndef CNN_KERNELS_H
#define CNN_KERNELS_H
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && !defined(CNN_GENERIC)
#define CNN_VNNI 1
#define CNN_AVX2 0
#include <immintrin.h>
#elif defined(__AVX2__) && !defined(CNN_GENERIC)
#define CNN_VNNI 0
#define CNN_AVX2 1
#include <immintrin.h>
#else
#define CNN_VNNI 0
#define CNN_AVX2 0
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define I32MIN (-2147483647LL - 1)
#define I32MAX 2147483647LL

typedef struct {           /* per-channel requantization constants, arrays of length npad (multiple of 16) */
    const int64_t *bias, *m0, *left, *right, *half, *neg;
    int64_t zp, qmin, qmax;
    int64_t fast;          /* 1: the folded form applies (see above); the arrays below are valid */
    int64_t fneg;          /* 1: apply its [x*M0 < 0] term (qmin < Z_out) */
    const int32_t *b32;    /* bias as int32: the accumulators' start value */
    const int64_t *fm, *fc, *fs;  /* per block of 16 channels: 8 lanes of the even channels, 8 of the odd ones:
                                     M0, C, and the shift (31 + e for even lanes, e - 1 for odd ones) */
} Requant;

typedef struct {           /* TFLite Add fused into a conv: "s" = the conv's own output, "r" = the residual input */
    const uint8_t *table;  /* 256 x 256 output codes, index (a << 8) | b, built with the reference */
    int64_t conv_is_a;     /* the conv output is the Add's first input */
    int64_t fast;          /* 1: the folded form below was checked equal to table on all 65536 pairs */
    int64_t zs, zr, ls;    /* zero points, input left shift */
    int64_t ms, cs, ss, ns, mr, cr, sr, nr, my, cy, sy, ny;  /* M0, C, 31 + e, [.] term (2^31 or 0) */
    int64_t alpha_s, alpha_r;  /* != 0: that input's rescaled value is exactly (q - z) * alpha for all 256 codes */
    int64_t mhs, mls, k0s, kns, shs, mhr, mlr, k0r, knr, shr;  /* shs / shr != 0: the int32 split form (program.py) */
    int64_t qmin, qmax;
} AddFuse;

typedef struct {
    int64_t h, w, c;                 /* input image (NHWC, uint8 codes); the batch size is an argument */
    int64_t o, ho, wo;               /* output channels and size */
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t nseg, seglen;            /* segments per pixel and their padded length (multiple of 4) */
    int64_t zin;                     /* input zero point (padding value) */
    const int8_t *wp;                /* packed weights: [ceil(o/16)][nseg*seglen/4][16][4] */
    Requant rq;
    const AddFuse *add;              /* NULL, or the Add whose output this conv writes instead of its own */
    Requant rqn;                     /* leaky: the negative side's constants (same bias arrays as rq) */
    int64_t leaky;                   /* 1: fused LeakyReLU: rqn where acc + bias < 0, else rq (never with add) */
    int64_t raw;                     /* 1: write the int32 accumulators (no bias; rq.fast = 0), 4*o bytes a pixel */
    const int16_t *wp16;             /* the AVX2 path's weights (NULL on the others): [ceil(o/16)][nseg*seglen/4]
                                        [4][8][2] int16: per group of 4 bytes, channels 0-7 then 8-15, each as the
                                        even (bytes 0, 2) then the odd (bytes 1, 3) weight pairs of every channel */
    int64_t u7;                      /* 1: every input code (padding included) is <= 127, so the AVX2 path may
                                        multiply 8-bit values (vpmaddubsw cannot saturate); wp16 is then NULL */
} Conv;

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* The definition above, one value (the portable path and the grouped conv). */
static inline uint8_t requant1(int64_t acc, int64_t c, const Requant *r, int *ovf) {
    int64_t v = acc + r->bias[c];
    if (v < I32MIN || v > I32MAX) { *ovf = 1; v = clamp64(v, I32MIN, I32MAX); }
    int64_t x = clamp64(v * ((int64_t)1 << r->left[c]), I32MIN, I32MAX);
    int64_t p = (x * r->m0[c] + ((int64_t)1 << 30)) >> 31;
    p = (p + r->half[c] - (p < 0 ? r->neg[c] : 0)) >> r->right[c];
    return (uint8_t)clamp64(p + r->zp, r->qmin, r->qmax);
}

/* The conv's requantization of one accumulator (no bias in acc): with a fused LeakyReLU, the negative side's
   constants where acc + bias < 0 (the reference's leaky_requantize). */
static inline uint8_t requant1c(const Conv *d, int64_t acc, int64_t c, int *ovf) {
    if (d->leaky && acc + d->rq.bias[c] < 0) return requant1(acc, c, &d->rqn, ovf);
    return requant1(acc, c, &d->rq, ovf);
}

/* The fused Add on one code pair through its table. */
static inline uint8_t add1(const AddFuse *a, uint8_t own, uint8_t res) {
    return a->table[a->conv_is_a ? ((unsigned)own << 8) | res : ((unsigned)res << 8) | own];
}

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
#endif
