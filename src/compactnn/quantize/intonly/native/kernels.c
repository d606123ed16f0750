/* Native kernels of compactnn's integer-only engine (Jacob et al., CVPR 2018; TFLite uint8 arithmetic).

   Convolution kernels here; pooling, Add, concat and layout in ops.c. Integer buffers only: uint8 activation codes in NHWC layout, int8 weights, int32/int64 per-channel constants.
   No floating-point type appears in this file. Compiled on the running machine (-O3 -march=native) by
   compactnn/quantize/intonly/native.py and loaded with ctypes.

   Convolution = direct "segment GEMM": an output pixel's receptive field is kh segments of kw*C contiguous bytes
   (NHWC, dilation 1 along W) or kh*kw segments of C bytes; each segment is read in 4-byte groups (its length is
   padded to a multiple of 4 with zero weights, so the few bytes read past a segment are multiplied by 0).
   Accumulators: acc = sum q*w (u8 x s8 -> s32, exact while K*255*127 < 2^31, checked by the caller); the input
   zero point is folded into the int64 per-channel bias: bias = b - Z_in * sum(w).

   Requantization (TFLite MultiplyByQuantizedMultiplier, double rounding), per output channel c, in int64:
     v = acc + bias[c]                          (must lie in int32, else *ovf is set: the reference raises)
     x = sat32(v << left[c])
     r = (x*M0[c] + 2^30) >> 31                  (= SRDHM: nearest, ties toward +inf; M0 >= 0 so no saturation)
     r = (r + half[c] - [r < 0]*neg[c]) >> right[c]  (= RoundingDivideByPOT: ties away from zero)
     y = clamp(r + Z_out, qmin, qmax)
   with half = 2^(right-1), neg = 1 when right > 0, else both 0. */

#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    !defined(CNN_GENERIC)
#define CNN_VNNI 1
#include <immintrin.h>
#else
#define CNN_VNNI 0
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define I32MIN (-2147483647LL - 1)
#define I32MAX 2147483647LL

typedef struct {           /* per-channel requantization constants, arrays of length npad (multiple of 16) */
    const int64_t *bias, *m0, *left, *right, *half, *neg;
    int64_t zp, qmin, qmax;
    int64_t fast32;        /* 1: no left shift and every bias fits int32, so the int32 arrays below are valid */
    const int32_t *b32, *m32, *r32, *mask32;   /* bias, M0, right shift, 2^right - 1 */
} Requant;

typedef struct {
    int64_t h, w, c;                 /* input image (NHWC, uint8 codes); the batch size is an argument */
    int64_t o, ho, wo;               /* output channels and size */
    int64_t kh, kw, sh, sw, ph, pw, dh, dw;
    int64_t nseg, seglen;            /* segments per pixel and their padded length (multiple of 4) */
    int64_t zin;                     /* input zero point (padding value) */
    const int8_t *wp;                /* packed weights: [ceil(o/16)][nseg*seglen/4][16][4] */
    Requant rq;
} Conv;

int cnn_simd(void) { return CNN_VNNI ? 2 : 0; }

int cnn_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline uint8_t requant1(int64_t acc, int64_t c, const Requant *r, int *ovf) {
    int64_t v = acc + r->bias[c];
    if (v < I32MIN || v > I32MAX) { *ovf = 1; v = clamp64(v, I32MIN, I32MAX); }
    int64_t x = clamp64(v * ((int64_t)1 << r->left[c]), I32MIN, I32MAX);
    int64_t p = (x * r->m0[c] + ((int64_t)1 << 30)) >> 31;
    p = (p + r->half[c] - (p < 0 ? r->neg[c] : 0)) >> r->right[c];
    return (uint8_t)clamp64(p + r->zp, r->qmin, r->qmax);
}

#if CNN_VNNI
/* 16 accumulators of channels [c0, c0+16) -> 16 uint8 codes, in int32 lanes (r->fast32): SRDHM by two 32x32->64 multiplies (even and odd lanes), RDBPOT as
   gemmlowp: (x >> e) + ((x & mask) > (mask >> 1) + [x < 0]); an int32 overflow of acc + bias sets the flag. */
static inline __m128i requant16_32(__m512i acc, const Requant *r, int64_t c0, __mmask16 *ovf) {
    const __m512i b = _mm512_loadu_si512(r->b32 + c0), m = _mm512_loadu_si512(r->m32 + c0);
    const __m512i rnd = _mm512_set1_epi64((int64_t)1 << 30);
    __m512i v = _mm512_add_epi32(acc, b);
    *ovf |= _mm512_movepi32_mask(_mm512_and_si512(_mm512_xor_si512(acc, v), _mm512_xor_si512(b, v)));
    __m512i pe = _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, m), rnd), 31);
    __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(v, 32), _mm512_srli_epi64(m, 32));
    po = _mm512_slli_epi64(_mm512_add_epi64(po, rnd), 1);
    __m512i x = _mm512_mask_blend_epi32(0xAAAA, pe, po);
    const __m512i mask = _mm512_loadu_si512(r->mask32 + c0);
    __m512i thr = _mm512_sub_epi32(_mm512_srli_epi32(mask, 1), _mm512_srai_epi32(x, 31));
    __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, mask), thr);
    __m512i y = _mm512_srav_epi32(x, _mm512_loadu_si512(r->r32 + c0));
    y = _mm512_mask_sub_epi32(y, up, y, _mm512_set1_epi32(-1));
    y = _mm512_add_epi32(y, _mm512_set1_epi32((int32_t)r->zp));
    y = _mm512_min_epi32(_mm512_max_epi32(y, _mm512_set1_epi32((int32_t)r->qmin)), _mm512_set1_epi32((int32_t)r->qmax));
    return _mm512_cvtepi32_epi8(y);
}

/* 16 accumulators of channels [c0, c0+16) -> 16 uint8 codes (int64 lanes unless r->fast32). */
static inline __m128i requant16(__m512i acc, const Requant *r, int64_t c0, __mmask8 *ovf) {
    if (r->fast32) {
        __mmask16 o = 0;
        __m128i y = requant16_32(acc, r, c0, &o);
        if (o) *ovf = 1;
        return y;
    }
    const __m512i mn = _mm512_set1_epi64(I32MIN), mx = _mm512_set1_epi64(I32MAX);
    const __m512i rnd = _mm512_set1_epi64((int64_t)1 << 30);
    __m128i out[2];
    for (int hlf = 0; hlf < 2; hlf++) {
        int64_t c = c0 + 8 * hlf;
        __m256i a32 = hlf ? _mm512_extracti64x4_epi64(acc, 1) : _mm512_castsi512_si256(acc);
        __m512i v = _mm512_add_epi64(_mm512_cvtepi32_epi64(a32), _mm512_loadu_si512(r->bias + c));
        *ovf |= _mm512_cmpgt_epi64_mask(v, mx) | _mm512_cmplt_epi64_mask(v, mn);
        v = _mm512_min_epi64(_mm512_max_epi64(v, mn), mx);
        __m512i x = _mm512_sllv_epi64(v, _mm512_loadu_si512(r->left + c));
        x = _mm512_min_epi64(_mm512_max_epi64(x, mn), mx);
        __m512i p = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, _mm512_loadu_si512(r->m0 + c)), rnd), 31);
        __m512i ng = _mm512_and_si512(_mm512_srai_epi64(p, 63), _mm512_loadu_si512(r->neg + c));
        p = _mm512_sub_epi64(_mm512_add_epi64(p, _mm512_loadu_si512(r->half + c)), ng);
        p = _mm512_srav_epi64(p, _mm512_loadu_si512(r->right + c));
        p = _mm512_add_epi64(p, _mm512_set1_epi64(r->zp));
        p = _mm512_min_epi64(_mm512_max_epi64(p, _mm512_set1_epi64(r->qmin)), _mm512_set1_epi64(r->qmax));
        out[hlf] = _mm512_cvtepi64_epi8(p);
    }
    return _mm_unpacklo_epi64(out[0], out[1]);
}

/* MR output pixels x NB blocks of 16 channels. rows[i]: first byte of pixel i's receptive field. */
static inline __attribute__((always_inline)) void kern(const int MR, const int NB, const uint8_t *const *rows,
                                                       uint8_t *const *outs, const Conv *d, int64_t b0,
                                                       const int64_t *segoff, __mmask8 *ovf) {
    __m512i acc[12][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_si512();
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4;
    const int8_t *w = d->wp + b0 * k4 * 64;
    for (int64_t s = 0; s < d->nseg; s++) {
        const int64_t so = segoff[s];
        for (int64_t t = 0; t < sl4; t++) {
            const int64_t kk = s * sl4 + t;
            __m512i wv[4];
            for (int j = 0; j < NB; j++) wv[j] = _mm512_loadu_si512(w + (j * k4 + kk) * 64);
            for (int i = 0; i < MR; i++) {
                int32_t av;
                memcpy(&av, rows[i] + so + 4 * t, 4);
                __m512i a = _mm512_set1_epi32(av);
                for (int j = 0; j < NB; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, wv[j]);
            }
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NB; j++) {
            int64_t c0 = (b0 + j) * 16;
            __m128i y = requant16(acc[i][j], &d->rq, c0, ovf);
            int64_t rem = d->o - c0;
            if (rem >= 16) _mm_storeu_si128((__m128i *)(outs[i] + c0), y);
            else _mm_mask_storeu_epi8(outs[i] + c0, (__mmask16)((1u << rem) - 1), y);
        }
}

static void rows_block(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs, int64_t m,
                       const int64_t *segoff, int *ovf) {
    __mmask8 ov = 0;
    const int64_t nb = (d->o + 15) / 16;
    for (int64_t b0 = 0; b0 < nb;) {
        const int64_t NB = nb - b0 >= 4 ? 4 : nb - b0;
        int64_t i = 0;
#define KERN_ROWS(MRV, NBV) for (; m - i >= MRV; i += MRV) kern(MRV, NBV, rows + i, outs + i, d, b0, segoff, &ov)
        switch (NB) {  /* <= 24 accumulators in registers */
        case 1: KERN_ROWS(12, 1); KERN_ROWS(6, 1); KERN_ROWS(1, 1); break;
        case 2: KERN_ROWS(12, 2); KERN_ROWS(6, 2); KERN_ROWS(1, 2); break;
        case 3: KERN_ROWS(6, 3); KERN_ROWS(1, 3); break;
        default: KERN_ROWS(6, 4); KERN_ROWS(1, 4); break;
        }
#undef KERN_ROWS
        b0 += NB;
    }
    if (ov) *ovf = 1;
}

/* 2x2 max pool fused before requantization (requantization is non-decreasing, so max then requantize equals
   requantize then max): rows[0..3] are one pooled pixel's window, out is its output row. */
static inline __attribute__((always_inline)) void kern_pool4(const int NB, const uint8_t *const *rows, uint8_t *out,
                                                             const Conv *d, int64_t b0, const int64_t *segoff,
                                                             __mmask8 *ovf) {
    __m512i acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < NB; j++) acc[i][j] = _mm512_setzero_si512();
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4;
    const int8_t *w = d->wp + b0 * k4 * 64;
    for (int64_t s = 0; s < d->nseg; s++) {
        const int64_t so = segoff[s];
        for (int64_t t = 0; t < sl4; t++) {
            const int64_t kk = s * sl4 + t;
            __m512i wv[4];
            for (int j = 0; j < NB; j++) wv[j] = _mm512_loadu_si512(w + (j * k4 + kk) * 64);
            for (int i = 0; i < 4; i++) {
                int32_t av;
                memcpy(&av, rows[i] + so + 4 * t, 4);
                __m512i a = _mm512_set1_epi32(av);
                for (int j = 0; j < NB; j++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, wv[j]);
            }
        }
    }
    for (int j = 0; j < NB; j++) {
        __m512i m = _mm512_max_epi32(_mm512_max_epi32(acc[0][j], acc[1][j]), _mm512_max_epi32(acc[2][j], acc[3][j]));
        int64_t c0 = (b0 + j) * 16;
        __m128i y = requant16(m, &d->rq, c0, ovf);
        int64_t rem = d->o - c0;
        if (rem >= 16) _mm_storeu_si128((__m128i *)(out + c0), y);
        else _mm_mask_storeu_epi8(out + c0, (__mmask16)((1u << rem) - 1), y);
    }
}

static void pool4_block(const Conv *d, const uint8_t *const *rows, uint8_t *out, const int64_t *segoff, int *ovf) {
    __mmask8 ov = 0;
    const int64_t nb = (d->o + 15) / 16;
    for (int64_t b0 = 0; b0 < nb;) {
        int64_t left = nb - b0;
        if (left >= 4) { kern_pool4(4, rows, out, d, b0, segoff, &ov); b0 += 4; }
        else if (left == 3) { kern_pool4(3, rows, out, d, b0, segoff, &ov); b0 += 3; }
        else if (left == 2) { kern_pool4(2, rows, out, d, b0, segoff, &ov); b0 += 2; }
        else { kern_pool4(1, rows, out, d, b0, segoff, &ov); b0 += 1; }
    }
    if (ov) *ovf = 1;
}
#define MR_TILE 12
#else
/* Portable path: the same packed layout, plain loops. */
static void rows_block(const Conv *d, const uint8_t *const *rows, uint8_t *const *outs, int64_t m,
                       const int64_t *segoff, int *ovf) {
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4, nb = (d->o + 15) / 16;
    for (int64_t i = 0; i < m; i++)
        for (int64_t b = 0; b < nb; b++) {
            int32_t acc[16] = {0};
            const int8_t *w = d->wp + b * k4 * 64;
            for (int64_t s = 0; s < d->nseg; s++)
                for (int64_t t = 0; t < sl4; t++) {
                    const uint8_t *a = rows[i] + segoff[s] + 4 * t;
                    const int8_t *wv = w + (s * sl4 + t) * 64;
                    for (int l = 0; l < 16; l++)
                        acc[l] += a[0] * wv[4 * l] + a[1] * wv[4 * l + 1] + a[2] * wv[4 * l + 2] + a[3] * wv[4 * l + 3];
                }
            for (int l = 0; l < 16 && b * 16 + l < d->o; l++) outs[i][b * 16 + l] = requant1(acc[l], b * 16 + l, &d->rq, ovf);
        }
}

static void pool4_block(const Conv *d, const uint8_t *const *rows, uint8_t *out, const int64_t *segoff, int *ovf) {
    const int64_t k4 = d->nseg * d->seglen / 4, sl4 = d->seglen / 4, nb = (d->o + 15) / 16;
    for (int64_t b = 0; b < nb; b++) {
        int32_t best[16];
        for (int i = 0; i < 4; i++) {
            int32_t acc[16] = {0};
            const int8_t *w = d->wp + b * k4 * 64;
            for (int64_t s = 0; s < d->nseg; s++)
                for (int64_t t = 0; t < sl4; t++) {
                    const uint8_t *a = rows[i] + segoff[s] + 4 * t;
                    const int8_t *wv = w + (s * sl4 + t) * 64;
                    for (int l = 0; l < 16; l++)
                        acc[l] += a[0] * wv[4 * l] + a[1] * wv[4 * l + 1] + a[2] * wv[4 * l + 2] + a[3] * wv[4 * l + 3];
                }
            for (int l = 0; l < 16; l++) best[l] = i == 0 || acc[l] > best[l] ? acc[l] : best[l];
        }
        for (int l = 0; l < 16 && b * 16 + l < d->o; l++) out[b * 16 + l] = requant1(best[l], b * 16 + l, &d->rq, ovf);
    }
}
#define MR_TILE 6
#endif

/* Byte offset of every weight segment (one kernel row, or one kernel tap) in a padded NHWC image of width wpd. */
static int seg_offsets(const Conv *d, int64_t wpd, int64_t *segoff) {
    if (d->nseg > 4096) return -1;
    for (int64_t s = 0; s < d->nseg; s++) {
        int64_t i = d->nseg == d->kh ? s : s / d->kw, j = d->nseg == d->kh ? 0 : s % d->kw;
        segoff[s] = (i * d->dh * wpd + j * d->dw) * d->c;
    }
    return 0;
}

/* How the n images x pix output pixels are split: with padding, items are (image, band of pixels) and *bands is set;
   without, items are ranges of pixels over the whole batch. Returns the number of items. */
static int64_t work_items(int pad, int64_t n, int64_t pix, int nthreads, int64_t *bands) {
    *bands = 1;
    if (pad) {
        if (n < 2 * nthreads) *bands = (2 * nthreads + n - 1) / n;
        if (*bands > pix) *bands = pix;
        return n * *bands;
    }
    int64_t items = nthreads == 1 ? 1 : 8 * nthreads;
    return items > n * pix ? n * pix : items;
}

/* Pixel range [*p0, *p1) of work item it; with padding, pads its image into this thread's scratch (filled with the
   input zero point) and returns it, else returns x. */
static const uint8_t *item_span(const Conv *d, int pad, const uint8_t *x, uint8_t *scratch, int tid, int64_t it,
                                int64_t n, int64_t pix, int64_t bands, int64_t items, int64_t *p0, int64_t *p1) {
    if (!pad) {
        *p0 = n * pix * it / items;
        *p1 = n * pix * (it + 1) / items;
        return x;
    }
    const int64_t wpd = d->w + 2 * d->pw, c = d->c, imgsz = d->h * d->w * c;
    const int64_t b = it / bands, band = it % bands;
    *p0 = b * pix + pix * band / bands;
    *p1 = b * pix + pix * (band + 1) / bands;
    uint8_t *sp = scratch + tid * ((d->h + 2 * d->ph) * wpd * c + 64);
    memset(sp, (int)d->zin, (d->h + 2 * d->ph) * wpd * c);
    for (int64_t r = 0; r < d->h; r++)
        memcpy(sp + ((r + d->ph) * wpd + d->pw) * c, x + b * imgsz + r * d->w * c, d->w * c);
    return sp;
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Convolution (groups == 1) on uint8 NHWC codes; a linear layer is a 1x1 conv on (rows, 1, 1, K).
   x: input (n images); y: output (n, ho, wo, o); scratch: nthreads * (hp*wp*c + 64) bytes for padded images.
   With padding, work items are (image, band of output pixels) and each thread pads its image into its scratch;
   without, items are ranges of output pixels over the whole batch (tiles may span images). */
int cnn_conv(const Conv *d, int64_t n, const uint8_t *x, uint8_t *y, uint8_t *scratch, int nthreads) {
    const int64_t wpd = d->w + 2 * d->pw, c = d->c, pix = d->ho * d->wo, imgsz = d->h * d->w * c;
    const int pad = d->ph || d->pw;
    int64_t segoff[4096], bands;
    if (seg_offsets(d, wpd, segoff)) return -1;
    if (n * pix * d->o * d->nseg * d->seglen < 300000) nthreads = 1;
    const int64_t items = work_items(pad, n, pix, nthreads, &bands);
    int ovf = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    for (int64_t it = 0; it < items; it++) {
        int64_t p0, p1;
        const uint8_t *img = item_span(d, pad, x, scratch, thread_id(), it, n, pix, bands, items, &p0, &p1);
        const uint8_t *rows[MR_TILE];
        uint8_t *outs[MR_TILE];
        int64_t b = p0 / pix, oh = (p0 % pix) / d->wo, ow = (p0 % pix) % d->wo;  /* advanced row by row */
        for (int64_t p = p0; p < p1; p += MR_TILE) {
            int64_t m = p1 - p < MR_TILE ? p1 - p : MR_TILE;
            for (int64_t i = 0; i < m; i++) {
                rows[i] = (pad ? img : x + b * imgsz) + (oh * d->sh * wpd + ow * d->sw) * c;
                outs[i] = y + (p + i) * d->o;
                if (++ow == d->wo) { ow = 0; if (++oh == d->ho) { oh = 0; b++; } }
            }
            rows_block(d, rows, outs, m, segoff, &ovf);
        }
    }
    return ovf;
}

/* Convolution followed by a 2x2 / stride 2 max pool (no pool padding), pooled before requantization.
   y: pooled output (n, ho/2, wo/2, o). Same work split as cnn_conv, over pooled pixels. */
int cnn_conv_pool2(const Conv *d, int64_t n, const uint8_t *x, uint8_t *y, uint8_t *scratch, int nthreads) {
    const int64_t wpd = d->w + 2 * d->pw, c = d->c, imgsz = d->h * d->w * c;
    const int64_t pwo = d->wo / 2, pix = (d->ho / 2) * pwo;
    const int pad = d->ph || d->pw;
    int64_t segoff[4096], bands;
    if (seg_offsets(d, wpd, segoff)) return -1;
    if (n * pix * 4 * d->o * d->nseg * d->seglen < 300000) nthreads = 1;
    const int64_t items = work_items(pad, n, pix, nthreads, &bands);
    int ovf = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    for (int64_t it = 0; it < items; it++) {
        int64_t p0, p1;
        const uint8_t *img = item_span(d, pad, x, scratch, thread_id(), it, n, pix, bands, items, &p0, &p1);
        const uint8_t *rows[4];
        for (int64_t p = p0; p < p1; p++) {
            const int64_t b = p / pix, q = p % pix, oh = 2 * (q / pwo), ow = 2 * (q % pwo);
            const uint8_t *src = pad ? img : x + b * imgsz;
            for (int i = 0; i < 4; i++)
                rows[i] = src + ((oh + i / 2) * d->sh * wpd + (ow + i % 2) * d->sw) * c;
            pool4_block(d, rows, y + p * d->o, segoff, &ovf);
        }
    }
    return ovf;
}

/* Grouped / depthwise convolution, plain loops (weights (o, kh, kw, cg) int8, unpacked). */
int cnn_conv_grouped(const Conv *d, int64_t n, int64_t groups, const int8_t *w, const uint8_t *x, uint8_t *y, int nthreads) {
    const int64_t cg = d->c / groups, og = d->o / groups;
    int ovf = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(| : ovf) if (nthreads > 1)
    for (int64_t r = 0; r < n * d->ho; r++) {
        const int64_t b = r / d->ho, oh = r % d->ho;
        for (int64_t ow = 0; ow < d->wo; ow++)
            for (int64_t oc = 0; oc < d->o; oc++) {
                const int64_t g = oc / og;
                int64_t acc = 0;
                for (int64_t i = 0; i < d->kh; i++) {
                    const int64_t ih = oh * d->sh - d->ph + i * d->dh;
                    for (int64_t j = 0; j < d->kw; j++) {
                        const int64_t iw = ow * d->sw - d->pw + j * d->dw;
                        const int8_t *wk = w + ((oc * d->kh + i) * d->kw + j) * cg;
                        if (ih < 0 || ih >= d->h || iw < 0 || iw >= d->w) {
                            for (int64_t k = 0; k < cg; k++) acc += d->zin * wk[k];
                        } else {
                            const uint8_t *xp = x + ((b * d->h + ih) * d->w + iw) * d->c + g * cg;
                            for (int64_t k = 0; k < cg; k++) acc += xp[k] * wk[k];
                        }
                    }
                }
                y[((b * d->ho + oh) * d->wo + ow) * d->o + oc] = requant1(acc, oc, &d->rq, &ovf);
            }
    }
    return ovf;
}
